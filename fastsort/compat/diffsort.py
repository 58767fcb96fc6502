"""Drop-in replacement for ``diffsort`` (0.2.0): ``from fastsort.compat import diffsort``.

:class:`DiffSortNet` takes the same arguments and returns the same tensors as
``diffsort.DiffSortNet``::

    sorter = diffsort.DiffSortNet("bitonic", size=n, steepness=10.0, distribution="cauchy")
    sorted_values, X = sorter(vectors)          # [B, n], [B, n, n]

with ``X[b, i, j]`` the weight of input ``i`` at (ascending) output position
``j``, so ``sorted_values == (vectors.unsqueeze(1) @ X).squeeze(1)``.

What differs is only how it is computed: diffsort multiplies a dense
``[B, n, n]`` matrix by dense per-layer matrices (``O(n^3 D)``); here one
pass of fastsort's network kernel computes the mixing weights and a single
reverse sweep of the identity gives ``X`` (``O(n^2 D)``, Triton on CUDA), with
a hand-written backward.  Further differences, all harmless for working code:

* the module holds no network tensors and is device-agnostic: ``device=`` is
  accepted and ignored, inputs may live on any device;
* ``float16``/``bfloat16`` inputs are computed in float32 (returned in the
  input dtype); float64 stays float64;
* diffsort's ``assert``\\ s and its ``NotImplementedError`` for unknown
  options are raised at construction as :class:`CompatError` /
  :class:`UnsupportedOptionError`, which are ``ValueError``\\ s (and still
  ``AssertionError`` / ``NotImplementedError`` so that code catching the
  oracle's exceptions keeps working).

The parameters ``steepness``, ``art_lambda`` and ``distribution`` are plain
attributes read at every call, so annealing ``sorter.steepness`` works as in
diffsort.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._dispatch import choose_backend
from .._validate import compute_dtype
from ..networks import sweep_init
from ..registry import METHODS
from ..relaxations import DISTRIBUTIONS

__all__ = ["DiffSortNet", "CompatError", "UnsupportedOptionError", "SORTING_NETWORKS", "DISTRIBUTIONS"]

#: The sorting networks of ``diffsort.DiffSortNet``.
SORTING_NETWORKS = ("bitonic", "odd_even")


class CompatError(ValueError, AssertionError):
    """An invalid argument where diffsort/difftopk would fail an ``assert``.

    A ``ValueError``; also an ``AssertionError`` so that code written against
    the reference packages keeps catching it.
    """


class UnsupportedOptionError(ValueError, NotImplementedError):
    """An unknown network type, method or distribution.

    A ``ValueError``; also a ``NotImplementedError``, which is what the
    reference packages raise for these.
    """


# --------------------------------------------------------------------------- shared helpers (also used by difftopk)
def resolve_distribution(distribution: Optional[str], interpolation_type: Optional[str], warn: bool) -> Optional[str]:
    """The oracle's handling of the deprecated ``interpolation_type``.

    When given, it replaces ``distribution``, which must then be ``None``,
    the default ``'cauchy'`` or the same value.
    """
    if interpolation_type is None:
        return distribution
    if not (distribution is None or distribution == "cauchy" or distribution == interpolation_type):
        raise CompatError(
            f"Two different distributions have been set (distribution={distribution} and "
            f"interpolation_type={interpolation_type}); however, they have the same interpretation and "
            f"interpolation_type is a deprecated argument: pass only distribution={interpolation_type!r}"
        )
    if warn:
        import warnings

        warnings.warn(
            "`interpolation_type` is a deprecated argument, please use `distribution` instead.",
            DeprecationWarning,
            stacklevel=3,
        )
    return interpolation_type


def check_distribution(distribution) -> str:
    if distribution is None:
        raise UnsupportedOptionError(
            f"distribution is None: the reference implementation would fail at the first forward with "
            f"\"softmax method `None` unknown\"; pass distribution= one of {DISTRIBUTIONS} (e.g. 'cauchy')"
        )
    if distribution not in DISTRIBUTIONS:
        raise UnsupportedOptionError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def check_size(size, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise CompatError(f"{name} must be an int (the number of elements to sort), got {type(size).__name__}")
    if size < 1:
        raise CompatError(f"{name} must be >= 1, got {size}")
    return size


def init_network_options(module: torch.nn.Module, sorting_network_type: str, supported, owner: str, size,
                         device, steepness, art_lambda, interpolation_type, distribution, warn: bool) -> None:
    """Check and store on ``module`` the constructor arguments that ``DiffSortNet`` and
    ``difftopk.DiffTopkNet`` share (``warn``: whether ``interpolation_type`` is deprecated there)."""
    if sorting_network_type not in supported:
        raise UnsupportedOptionError(f"Sorting network `{sorting_network_type}` unknown: {owner} supports {supported}")
    module.sorting_network_type = sorting_network_type
    module.size = check_size(size)
    module.device = device
    distribution = resolve_distribution(distribution, interpolation_type, warn=warn)
    check_distribution(distribution)
    module.steepness = steepness
    module.art_lambda = art_lambda
    module.distribution = distribution


def check_vectors(vectors, size: int) -> None:
    """diffsort's ``assert len(vectors.shape) == 2`` and ``assert vectors.shape[1] == size``."""
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"vectors must be a torch.Tensor, got {type(vectors).__name__}")
    if vectors.dim() != 2:
        raise CompatError(f"vectors must be 2-D [batch, size], got shape {tuple(vectors.shape)}")
    if vectors.shape[1] != size:
        raise CompatError(
            f"vectors.shape[1] = {vectors.shape[1]} does not match the network size {size} "
            f"(the module was built with size={size}); got shape {tuple(vectors.shape)}"
        )
    if not vectors.is_floating_point():
        raise TypeError(f"vectors must be a floating-point tensor, got dtype {vectors.dtype}; use vectors.float()")


def _as_float(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None


def run_network(vectors: torch.Tensor, kind: str, columns: int, steepness, art_lambda,
                distribution, k: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run fastsort's relaxed network ``kind`` on ``vectors [B, n]`` once.

    Returns ``(values [B, n], X[:, :, n - columns:] [B, n, columns])`` in the
    input dtype: the last ``columns`` columns of diffsort's ``X`` (ascending
    positions), computed as one reverse sweep of the unit rows of those
    positions (never a dense per-layer product).  ``k`` selects the
    ``splitter_selection`` network.
    """
    x2 = vectors.to(compute_dtype(vectors.dtype))
    network = METHODS[kind]
    p = network.parse(dict(steepness=_as_float("steepness", steepness), distribution=check_distribution(distribution),
                           art_lambda=_as_float("art_lambda", art_lambda)))
    n = x2.shape[1]
    init = sweep_init("topk", n, columns, x2.dtype, x2.device)  # unit rows of the top positions, largest first
    y, S0 = network.sweep(x2, p, init, choose_backend(x2, "auto", network.kernels), k)
    # S0[b, r, i] = weight of input i at position n - 1 - r; diffsort's layout is inputs x ascending positions
    return y.to(vectors.dtype), S0.flip(1).transpose(1, 2).contiguous().to(vectors.dtype)


# --------------------------------------------------------------------------- the module
class DiffSortNet(torch.nn.Module):
    """Relaxed sorting network; same interface and outputs as ``diffsort.DiffSortNet``.

    Args:
        sorting_network_type: ``'bitonic'`` or ``'odd_even'``.
        size: ``n``, the number of elements per row.
        device: accepted for compatibility; ignored (the module is device-agnostic).
        steepness: inverse temperature of the relaxed comparators (default 10).
        art_lambda: the ``lambda`` of ``distribution='logistic_phi'`` (default 0.25).
        interpolation_type: deprecated alias of ``distribution`` (the oracle's conflict check applies).
        distribution: ``'cauchy'`` (default), ``'logistic'``, ``'logistic_phi'``, ``'gaussian'``,
            ``'reciprocal'`` or ``'optimal'``.

    ``forward(vectors [B, size])`` returns ``(sorted_values [B, size], X [B, size, size])``
    with ``X[b, i, j]`` = weight of input ``i`` at ascending output position ``j``
    (fastsort's :func:`~fastsort.soft_permutation` transposed).

    Example:
        >>> from fastsort.compat import diffsort
        >>> sorter = diffsort.DiffSortNet("bitonic", 4, steepness=100.0)
        >>> values, X = sorter(torch.tensor([[3., 1., 4., 2.]]))
        >>> X.argmax(1)
        tensor([[1, 3, 0, 2]])
    """

    def __init__(
        self,
        sorting_network_type: str,
        size: int,
        device: str = "cpu",
        steepness: float = 10.0,
        art_lambda: float = 0.25,
        interpolation_type: Optional[str] = None,
        distribution: Optional[str] = "cauchy",
    ):
        super().__init__()
        init_network_options(self, sorting_network_type, SORTING_NETWORKS, "diffsort.DiffSortNet", size, device,
                             steepness, art_lambda, interpolation_type, distribution, warn=False)

    def forward(self, vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        check_vectors(vectors, self.size)
        return run_network(vectors, self.sorting_network_type, self.size, self.steepness, self.art_lambda,
                           self.distribution)

    def extra_repr(self) -> str:
        return (f"{self.sorting_network_type!r}, size={self.size}, steepness={self.steepness}, "
                f"art_lambda={self.art_lambda}, distribution={self.distribution!r}")
