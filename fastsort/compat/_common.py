"""What ``fastsort.compat.diffsort`` and ``fastsort.compat.difftopk`` share.

* the exception classes (:class:`CompatError`, :class:`UnsupportedOptionError`) and
  :func:`compat_errors`, which turns the ``ValueError`` of a shared check of
  :mod:`fastsort._validate` into a :class:`CompatError` (the reference fails an ``assert`` there);
* the relaxation arguments as the references read them (:func:`resolve_distribution`,
  :func:`require_distribution`, :func:`relaxation_params`: ``art_lambda`` is only read by
  ``'logistic_phi'``, so ``art_lambda=None`` works with every other distribution);
* :func:`run_network`, the one call of fastsort's network op behind every compat network;
* the references' **network descriptions** (per layer ``split_a [C, n]``, ``split_b [C, n]``,
  ``combine_min [n, C]``, ``combine_max [n, C]``, difftopk's sparse layers with four index
  arrays more), written from fastsort's own tables (:func:`fastsort.networks.network_layers`) and
  read back (:func:`network_kind`): a description is accepted wherever the references take
  one, as long as it is one of fastsort's networks;
* :class:`NetworkModule`, the base of ``DiffSortNet`` and ``DiffTopkNet`` (constructor options,
  the lazily built ``sorting_network`` attribute).
"""
from __future__ import annotations

import contextlib
import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._cache import device_constant
from .._dispatch import choose_backend
from .._validate import as_positive_int, as_real, compute_dtype
from ..networks import network_depth, network_layers, sweep_init
from ..registry import METHODS
from ..relaxations import DISTRIBUTIONS, check_distribution

__all__ = [
    "CompatError",
    "UnsupportedOptionError",
    "compat_errors",
    "resolve_distribution",
    "require_distribution",
    "relaxation_params",
    "check_vectors",
    "run_network",
    "dense_description",
    "sparse_description",
    "description_to_torch",
    "sparsify_description",
    "network_kind",
    "NetworkModule",
    "missing_attribute",
    "DISTRIBUTIONS",
]


# --------------------------------------------------------------------------- exceptions
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


@contextlib.contextmanager
def compat_errors(cls=CompatError):
    """Run shared checks of :mod:`fastsort._validate` with their ``ValueError`` raised as ``cls``
    (same message; ``TypeError`` passes unchanged, as the references raise one there too)."""
    try:
        yield
    except ValueError as err:
        if isinstance(err, (CompatError, UnsupportedOptionError)):
            raise
        raise cls(str(err)) from None


def missing_attribute(module: str, name: str) -> AttributeError:
    """The error for a name of the reference modules that compat does not provide (their private
    relaxation helpers), naming the fastsort function to use instead."""
    hints = {
        "s_best": "fastsort.relaxations.relax_alpha(d, 'optimal', steepness, art_lambda)",
        "NormalCDF": "fastsort.relaxations.relax_alpha(d, 'gaussian', steepness, art_lambda)",
    }
    if name in hints:
        return AttributeError(f"module {module!r} has no attribute {name!r}: fastsort computes the relaxations in its "
                              f"kernels; the same function is {hints[name]} (d = x[hi] - x[lo])")
    return AttributeError(f"module {module!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- relaxation arguments
def resolve_distribution(distribution: Optional[str], interpolation_type: Optional[str], warn: bool) -> Optional[str]:
    """The references' handling of the deprecated ``interpolation_type``.

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


def require_distribution(distribution) -> str:
    """``distribution`` if it names one of fastsort's relaxations (checked by
    :func:`fastsort.relaxations.check_distribution`), else an :class:`UnsupportedOptionError`."""
    if distribution is None:
        raise UnsupportedOptionError(
            f"distribution is None: the reference implementation would fail at the first forward with "
            f"\"softmax method `None` unknown\"; pass distribution= one of {DISTRIBUTIONS} (e.g. 'cauchy')"
        )
    with compat_errors(UnsupportedOptionError):
        return check_distribution(distribution)


def _scalar(value):
    """A one-element tensor without gradient as a Python number (the references compute with
    whatever they are given; a tensor from a schedule is common), anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
        return value.item()
    return value


def relaxation_params(steepness, distribution, art_lambda) -> dict:
    """The network parameters ``(steepness, distribution, art_lambda)`` of a forward call.

    ``art_lambda`` is only read by ``'logistic_phi'`` (as in the references, where any value,
    ``None`` included, works with the other distributions); with ``'logistic_phi'`` it must be a
    number, a ``TypeError`` at the call otherwise (where the references fail too).  The values
    themselves are checked by the method's ``parse``.
    """
    distribution = require_distribution(distribution)
    if distribution == "logistic_phi":
        if art_lambda is None:
            raise TypeError("art_lambda is None, but distribution='logistic_phi' needs it (the lambda of its "
                            "adaptive relaxation, e.g. art_lambda=0.25); the reference packages fail at the "
                            "first call as well")
        art_lambda = as_real(_scalar(art_lambda), "art_lambda")
    else:
        art_lambda = 0.25  # unused by the other relaxations
    return dict(steepness=_scalar(steepness), distribution=distribution, art_lambda=art_lambda)


# --------------------------------------------------------------------------- running a network
def check_vectors(vectors, size: Optional[int], name: str = "vectors") -> None:
    """diffsort's ``assert len(vectors.shape) == 2`` and ``assert vectors.shape[1] == size`` (``size``
    ``None``: any), and a floating dtype."""
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(vectors).__name__}")
    if vectors.dim() != 2:
        raise CompatError(f"{name} must be 2-D [batch, size], got shape {tuple(vectors.shape)}")
    if size is not None and vectors.shape[1] != size:
        raise CompatError(
            f"{name}.shape[1] = {vectors.shape[1]} does not match the network size {size} "
            f"(the network was built with size={size}); got shape {tuple(vectors.shape)}"
        )
    if not vectors.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {vectors.dtype}; use {name}.float()")


_INITS: dict = {}


def _ascending_unit_rows(n: int, columns: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The sweep block of the unit rows of the positions ``n - columns .. n - 1`` in ascending order
    (the reverse of :func:`fastsort.networks.sweep_init`'s ``topk`` block), cached per device."""
    return device_constant(_INITS, (n, columns, dtype, str(device)),
                           lambda: sweep_init("topk", n, columns, dtype, device).flip(0).contiguous())


def run_network(vectors: torch.Tensor, kind: str, columns: int, steepness, art_lambda,
                distribution, k: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run fastsort's relaxed network ``kind`` on ``vectors [B, n]`` once.

    Returns ``(values [B, n], X[:, :, n - columns:] [B, n, columns])`` in the
    input dtype: the last ``columns`` columns of diffsort's ``X`` (ascending
    positions), computed as one reverse sweep of the unit rows of those
    positions (never a dense per-layer product).  ``k`` selects the
    ``splitter_selection`` network.
    """
    x = vectors.to(compute_dtype(vectors.dtype))
    network = METHODS[kind]
    p = network.parse(relaxation_params(steepness, distribution, art_lambda))
    init = _ascending_unit_rows(x.shape[1], columns, x.dtype, x.device)
    y, S0 = network.sweep(x, p, init, choose_backend(x, "auto", network.kernels), k)
    # S0[b, r, i] = weight of input i at position n - columns + r; diffsort's layout is inputs x positions
    return y.to(vectors.dtype), S0.transpose(1, 2).contiguous().to(vectors.dtype)


# --------------------------------------------------------------------------- network descriptions
# one row of a description layer: (wire a, wire b, descending); a == b is a pass-through row
Row = Tuple[int, int, bool]


@functools.lru_cache(maxsize=64)
def _description_rows(kind: str, n: int, k: Optional[int]) -> Tuple[Tuple[Row, ...], ...]:
    """The rows of each layer of network ``kind`` in the order of the references' builders.

    Every wire has one row: its comparator's, or a pass-through row.  ``bitonic`` lists the
    pass-through rows (the wires whose partner is one of the virtual wires above ``n``) first,
    ascending, then the comparators; ``odd_even`` the comparators, then the idle edge wires,
    ascending; ``splitter_selection`` the comparators, then the idle wires in the order of
    difftopk's set difference.
    """
    rows = []
    for layer in network_layers(kind, n, k):
        comparators = [(int(lo), int(hi), bool(d)) for lo, hi, d in layer]
        used = [w for lo, hi, _ in comparators for w in (lo, hi)]
        if kind == "splitter_selection":
            idle = list(set(range(n)) - set(used))  # difftopk's order (CPython's set iteration)
        else:
            idle = sorted(set(range(n)) - set(used))
        passes = [(w, w, False) for w in idle]
        rows.append(tuple(passes + comparators if kind == "bitonic" else comparators + passes))
    return tuple(rows)


def _dense_layer(rows: Sequence[Row], n: int):
    """``(split_a, split_b, combine_min, combine_max)`` (numpy float64) of one layer's rows."""
    r = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    C = r.shape[0]
    a, b, desc = r[:, 0], r[:, 1], r[:, 2].astype(bool)
    idx = np.arange(C)
    split_a, split_b = np.zeros((C, n)), np.zeros((C, n))
    combine_min, combine_max = np.zeros((n, C)), np.zeros((n, C))
    split_a[idx, a] = 1.0
    split_b[idx, b] = 1.0
    weight = np.where(a == b, 0.5, 1.0)  # a pass-through row splits the wire in two halves
    combine_min[np.where(desc, b, a), idx] = weight
    combine_max[np.where(desc, a, b), idx] = weight
    return split_a, split_b, combine_min, combine_max


def _sparse_indices(rows: Sequence[Row]):
    """difftopk's ``(alpha_idxs, one_minus_alpha_idxs, remain_idxs, alpha_mask)`` of one layer."""
    alpha, one_minus, remain, mask = [], [], [], []
    for c, (a, b, desc) in enumerate(rows):
        if a == b:
            remain.append([a, a])
        elif desc:  # the minimum goes to the higher wire
            alpha += [[b, a], [a, b]]
            one_minus += [[b, b], [a, a]]
            mask.append([c])
        else:
            alpha += [[a, a], [b, b]]
            one_minus += [[a, b], [b, a]]
            mask.append([c])
    return np.array(alpha), np.array(one_minus), np.array(remain), np.array(mask)


def dense_description(kind: str, n: int, k: Optional[int] = None) -> List[tuple]:
    """The dense description of network ``kind`` (diffsort's ``bitonic_network`` / ``odd_even_network``
    format): one ``(split_a, split_b, combine_min, combine_max)`` tuple of numpy arrays per layer."""
    n = as_positive_int(n, "n")
    return [_dense_layer(rows, n) for rows in _description_rows(kind, n, k)]


def sparse_description(kind: str, n: int, k: Optional[int] = None) -> List[tuple]:
    """The sparse description of network ``kind`` (difftopk's ``sparse_bitonic_network`` format):
    the four dense matrices and difftopk's four index arrays per layer (numpy)."""
    n = as_positive_int(n, "n")
    return [_dense_layer(rows, n) + _sparse_indices(rows) for rows in _description_rows(kind, n, k)]


def description_to_torch(description, device) -> List[List[torch.Tensor]]:
    """The references' ``matrix_to_torch``: every array as a float32 tensor on ``device``."""
    return [[torch.from_numpy(np.asarray(m)).float().to(device) for m in layer] for layer in description]


def sparsify_description(description) -> List[list]:
    """difftopk's ``get_sparse_net``: the four matrices of each layer transposed and stored as
    coalesced sparse COO tensors, the index arrays unchanged."""
    return [[m.t().to_sparse().coalesce() for m in layer[:4]] + list(layer[4:]) for layer in description]


def _as_dense(m, transposed: bool) -> torch.Tensor:
    t = m if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m))
    if t.is_sparse:
        t = t.to_dense()
    t = t.detach().to("cpu", torch.float64)
    return t.t() if transposed else t


def _read_layer(layer, n: Optional[int]) -> Tuple[int, frozenset]:
    """``(n, comparators)`` of one description layer, checked to be comparator / pass-through rows."""
    if not isinstance(layer, (list, tuple)) or len(layer) < 4:
        raise UnsupportedOptionError("every layer of a sorting network must hold at least the four matrices "
                                     "(split_a, split_b, combine_min, combine_max)")
    transposed = isinstance(layer[0], torch.Tensor) and layer[0].is_sparse  # difftopk's get_sparse_net
    sa, sb, cmin, cmax = (_as_dense(m, transposed) for m in layer[:4])
    C, width = sa.shape if sa.dim() == 2 else (0, -1)
    if n is not None and width != n or sb.shape != (C, width) or cmin.shape != (width, C) \
            or cmax.shape != (width, C):
        raise UnsupportedOptionError(f"inconsistent layer shapes {tuple(sa.shape)}, {tuple(sb.shape)}, "
                                     f"{tuple(cmin.shape)}, {tuple(cmax.shape)} for a network of {n or width} wires")
    a, b = sa.argmax(1), sb.argmax(1)
    eye = torch.eye(width, dtype=torch.float64)
    desc = cmin[b, torch.arange(C)] == 1
    weight = torch.where(a == b, 0.5, 1.0).to(torch.float64)
    expect_min, expect_max = torch.zeros(width, C, dtype=torch.float64), torch.zeros(width, C, dtype=torch.float64)
    expect_min[torch.where(desc, b, a), torch.arange(C)] = weight
    expect_max[torch.where(desc, a, b), torch.arange(C)] = weight
    wires = torch.cat([a, b[a != b]])
    if not (torch.equal(sa, eye[a]) and torch.equal(sb, eye[b]) and torch.equal(cmin, expect_min)
            and torch.equal(cmax, expect_max) and bool((a <= b).all())
            and torch.equal(torch.bincount(wires, minlength=width), torch.ones(width, dtype=torch.long))):
        raise UnsupportedOptionError("a layer of the sorting network is not made of comparators and pass-through "
                                     "rows in the diffsort format")
    comparators = frozenset((int(x), int(y), bool(d)) for x, y, d in zip(a.tolist(), b.tolist(), desc.tolist())
                            if x != y)
    return width, comparators


@functools.lru_cache(maxsize=64)
def _layer_sets(kind: str, n: int, k: Optional[int]) -> Tuple[frozenset, ...]:
    return tuple(frozenset((int(lo), int(hi), bool(d)) for lo, hi, d in layer) for layer in network_layers(kind, n, k))


def network_kind(sorting_network, n: int, kinds: Sequence[str], k: Optional[int] = None) -> Tuple[str, Optional[int]]:
    """Which of fastsort's networks the description ``sorting_network`` is: ``(kind, k)`` (``k``
    only for ``splitter_selection``, tried with the given ``k``), for ``n`` wires.

    Accepts the dense and the sparse format (as built by the references or by compat), any
    dtype and device; raises an :class:`UnsupportedOptionError` for anything else (fastsort
    runs its own network tables, not arbitrary matrices).
    """
    if not isinstance(sorting_network, (list, tuple)):
        raise TypeError(f"sorting_network must be a list of layers, got {type(sorting_network).__name__}")
    layers = []
    for layer in sorting_network:
        n, comparators = _read_layer(layer, n)
        layers.append(comparators)
    layers = tuple(layers)
    depth = len(layers)
    for kind in kinds:
        kk = k if kind == "splitter_selection" else None
        if kind == "splitter_selection" and (k is None or not 1 <= k <= n):
            continue
        # the depth first (cheap); network_depth counts a network without comparators as one layer
        if depth in (0, network_depth(kind, n, kk)) and _layer_sets(kind, n, kk) == layers:
            return kind, kk
    raise UnsupportedOptionError(
        f"sorting_network ({depth} layers, {n} wires) is not one of fastsort's networks {tuple(kinds)}"
        + (f" (splitter_selection with k={k})" if "splitter_selection" in kinds else "")
        + ": fastsort runs its own network tables, not arbitrary matrices; build the description with "
          "get_sorting_network(...) or use the module / fastsort.soft_permutation / fastsort.soft_topk"
    )


# --------------------------------------------------------------------------- the modules' base
class NetworkModule(torch.nn.Module):
    """What ``DiffSortNet`` and ``DiffTopkNet`` share: the constructor options and ``sorting_network``.

    ``sorting_network`` is the reference's network description (see :func:`dense_description`),
    built on first access only (it takes ``O(n^2 D)`` memory: ~0.45 GB at ``n = 1024``, which the
    references build in their constructors) and never used by the forward, which runs fastsort's
    table of the same network.  Assigning a description (e.g. a float64 copy) is checked to be one
    of fastsort's networks for this size; the forward then runs that one.
    """

    _owner = "DiffSortNet"
    _kinds: Tuple[str, ...] = ()

    def _init_options(self, sorting_network_type: str, size, device, steepness, art_lambda, interpolation_type,
                      distribution, warn: bool) -> None:
        """Check and store the options (``warn``: whether ``interpolation_type`` is deprecated there)."""
        if sorting_network_type not in self._kinds:
            raise UnsupportedOptionError(
                f"Sorting network `{sorting_network_type}` unknown: {self._owner} supports {self._kinds}")
        self.sorting_network_type = sorting_network_type
        with compat_errors():
            self.size = as_positive_int(size, "size")
        self.device = device
        distribution = resolve_distribution(distribution, interpolation_type, warn=warn)
        require_distribution(distribution)
        self.steepness = steepness
        self.art_lambda = art_lambda
        self.distribution = distribution
        self._sorting_network = None  # the description, built on first access
        self._assigned = None  # (kind, k) of an assigned description

    def _network(self) -> Tuple[str, Optional[int]]:
        """``(kind, k)`` of the network the forward runs (``k`` for ``splitter_selection``)."""
        return self._assigned or self._default_network()

    def _default_network(self) -> Tuple[str, Optional[int]]:
        return self.sorting_network_type, None

    def _build_description(self):
        kind, k = self._default_network()
        return description_to_torch(dense_description(kind, self.size, k), self.device)

    @property
    def sorting_network(self):
        """The reference's description of the network (built on first access; see the class)."""
        if self._sorting_network is None:
            self._sorting_network = self._build_description()
        return self._sorting_network

    @sorting_network.setter
    def sorting_network(self, value) -> None:
        self._assigned = network_kind(value, self.size, self._kinds, getattr(self, "k", None))
        self._sorting_network = value

    def _run(self, vectors: torch.Tensor, columns: int) -> Tuple[torch.Tensor, torch.Tensor]:
        check_vectors(vectors, self.size)
        kind, k = self._network()
        return run_network(vectors, kind, columns, self.steepness, self.art_lambda, self.distribution, k)

    def extra_repr(self) -> str:
        return (f"{self.sorting_network_type!r}, size={self.size}, steepness={self.steepness}, "
                f"art_lambda={self.art_lambda}, distribution={self.distribution!r}")
