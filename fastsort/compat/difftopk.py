"""Drop-in replacement for ``difftopk`` (0.2.0): ``from fastsort.compat import difftopk``.

Same classes, arguments and outputs as the reference package:

* :class:`DiffTopkNet` -- ``forward(vectors [B, n])`` returns ``(None, X_topk [B, n, k])``,
  the last ``k`` columns of diffsort's relaxed permutation matrix (ascending:
  column ``-1`` is rank 1).  ``sparse=True`` gives the same numbers without
  ``torch_sparse``; ``'splitter_selection'`` is accepted with either value of ``sparse``.
* :class:`TopKCrossEntropyLoss` -- the differentiable top-k loss, computed by
  :func:`fastsort.topk_cross_entropy` (only the weighted label column of the
  top ``K`` rows is ever formed; fused Triton kernel on CUDA).
* :class:`NeuralSort`, :class:`SoftSort` -- the relaxed permutation modules with
  the reference's output layouts (incl. ``hard=True`` straight-through).
* :class:`SmoothTopKLoss`, :class:`SmoothHardTopKLoss` -- the smooth top-k SVM
  losses of Berrada et al., computed by :mod:`fastsort.smooth_topk`.

The reference computes every network layer as dense ``n x n`` products
(``O(n^2 D)`` for the top-k); fastsort runs the network once and sweeps only
the ``k`` needed columns back (``O(n k D)``), with hand-written backward
passes.  Differences that cannot break working code: modules hold no network
tensors and are device-agnostic (``device=`` is accepted and ignored);
``float16``/``bfloat16`` are computed in float32 and float64 works throughout;
invalid arguments raise at construction with a clear message
(:class:`~fastsort.compat.diffsort.CompatError` where the reference fails an
``assert``, :class:`~fastsort.compat.diffsort.UnsupportedOptionError` where it
raises ``NotImplementedError`` -- both are ``ValueError``\\ s and subclasses of
the reference's exception); the deprecation notice of ``interpolation_type``
is a ``DeprecationWarning`` instead of a ``print``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .._validate import compute_dtype
from ..softmax_sorts import neuralsort_rows, softsort_rows
from ..losses import TOP1_MODES, topk_cross_entropy
from .diffsort import (
    CompatError,
    UnsupportedOptionError,
    check_distribution,
    check_size,
    check_vectors,
    init_network_options,
    run_network,
)

__all__ = [
    "DiffTopkNet",
    "TopKCrossEntropyLoss",
    "NeuralSort",
    "SoftSort",
    "SmoothTopKLoss",
    "SmoothHardTopKLoss",
    "CompatError",
    "UnsupportedOptionError",
    "TOPK_NETWORKS",
    "DIFFSORT_METHODS",
    "TOP1_MODES",
]

#: Network types of :class:`DiffTopkNet`.
TOPK_NETWORKS = ("bitonic", "odd_even", "splitter_selection")
#: ``diffsort_method`` of :class:`TopKCrossEntropyLoss` -> fastsort method.
DIFFSORT_METHODS = {
    "bitonic": "bitonic",  # difftopk: sparse bitonic (same numbers)
    "splitter_selection": "splitter_selection",
    "bitonic__non_sparse": "bitonic",
    "odd_even": "odd_even",
    "neuralsort": "neuralsort",
    "softsort": "softsort",
}


def _check_k(k, size: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise CompatError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= size:
        raise CompatError(f"k must satisfy 1 <= k <= size = {size}, got k={k}")
    return k


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not (v > 0 and math.isfinite(v)):
        raise CompatError(f"{name} must be a finite number > 0, got {value}")
    return v


def _check_scores(scores) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise CompatError(f"scores must be 2-D [batch, n], got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got dtype {scores.dtype}; use scores.float()")


# --------------------------------------------------------------------------- DiffTopkNet
class DiffTopkNet(torch.nn.Module):
    """Top-k columns of a relaxed sorting / selection network; same as ``difftopk.DiffTopkNet``.

    Args:
        sorting_network_type: ``'bitonic'``, ``'odd_even'`` or ``'splitter_selection'``
            (Borgelt's selection network; difftopk only has it with ``sparse=True``,
            here it works with either).
        size: ``n``, the number of elements per row.
        k: the number of top positions, ``1 <= k <= n``.
        sparse: accepted for compatibility; the result is the same either way
            (difftopk's sparse path needs ``torch_sparse``, this one does not).
        device: accepted for compatibility; ignored (the module is device-agnostic).
        steepness, art_lambda, distribution: the relaxed comparator (see
            :class:`fastsort.compat.diffsort.DiffSortNet`); read at every call.
        interpolation_type: deprecated alias of ``distribution`` (warns, with the oracle's conflict check).

    ``forward(vectors [B, size])`` returns ``(None, X_topk [B, size, k])``:
    ``X_topk[b, i, j]`` is the weight of input ``i`` at ascending output
    position ``size - k + j`` (column ``-1`` = the largest).  Cost ``O(n k D)``.

    Example:
        >>> from fastsort.compat import difftopk
        >>> net = difftopk.DiffTopkNet("bitonic", 5, k=2, steepness=100.0)
        >>> _, P = net(torch.tensor([[1., 8., -1., 9., 5.]]))
        >>> P.shape, P.argmax(1)
        (torch.Size([1, 5, 2]), tensor([[1, 3]]))
    """

    def __init__(
        self,
        sorting_network_type: str,
        size: int,
        k: int,
        sparse: bool = False,
        device: str = "cpu",
        steepness: float = 10.0,
        art_lambda: float = 0.25,
        interpolation_type: Optional[str] = None,
        distribution: Optional[str] = "cauchy",
    ):
        super().__init__()
        init_network_options(self, sorting_network_type, TOPK_NETWORKS, "DiffTopkNet", size, device, steepness,
                             art_lambda, interpolation_type, distribution, warn=True)
        self.k = _check_k(k, self.size)
        self.sparse = bool(sparse)

    def forward(self, vectors: torch.Tensor) -> Tuple[None, torch.Tensor]:
        check_vectors(vectors, self.size)
        _, X = run_network(vectors, self.sorting_network_type, self.k, self.steepness, self.art_lambda,
                           self.distribution, k=self.k)
        return None, X

    def extra_repr(self) -> str:
        return (f"{self.sorting_network_type!r}, size={self.size}, k={self.k}, sparse={self.sparse}, "
                f"steepness={self.steepness}, art_lambda={self.art_lambda}, distribution={self.distribution!r}")


# --------------------------------------------------------------------------- TopKCrossEntropyLoss
class TopKCrossEntropyLoss(torch.nn.Module):
    """Differentiable top-k cross-entropy loss; same as ``difftopk.TopKCrossEntropyLoss``.

    Args:
        diffsort_method: ``'bitonic'`` (difftopk: sparse bitonic), ``'splitter_selection'``,
            ``'bitonic__non_sparse'``, ``'odd_even'``, ``'neuralsort'`` or ``'softsort'``.
        inverse_temperature: steepness of the networks; ``tau = 1 / inverse_temperature``
            for NeuralSort and SoftSort.
        p_k: probabilities of ``k = 1..K`` (must sum to 1), e.g. ``[0.5, 0, 0, 0, 0.5]``.
        n: the number of classes.
        m: optional top-``m`` preselection (``K < m < n``): only the true logit and the
            ``m - 1`` largest others are sorted.
        distribution: the networks' relaxation.  Like difftopk the default is ``None``,
            with which difftopk's network methods fail at the first call; here a network
            method with ``distribution=None`` raises at construction (pass e.g. ``'cauchy'``).
            Unused by ``neuralsort``/``softsort``.
        art_lambda: for ``distribution='logistic_phi'``.
        device: accepted for compatibility; ignored.
        top1_mode: ``'sm'`` (softmax for k = 1, default), ``'smce'`` (extra cross-entropy) or ``'sort'``.

    ``forward(outputs [B, n], labels [B])`` returns the mean loss (a scalar).
    The parameters are read from the attributes (``inverse_temperature``,
    ``distribution``, ``art_lambda``, ``p_k``, ``m``, ``top1_mode``) at every call.

    Example:
        >>> from fastsort.compat import difftopk
        >>> crit = difftopk.TopKCrossEntropyLoss("odd_even", 2.0, [0.5, 0.5], n=10, distribution="cauchy")
        >>> loss = crit(torch.randn(4, 10, requires_grad=True), torch.tensor([1, 2, 3, 4]))
        >>> loss.backward()
    """

    def __init__(
        self,
        diffsort_method: str,
        inverse_temperature: float,
        p_k: List[float],
        n: int,
        m: Optional[int] = None,
        distribution: Optional[str] = None,
        art_lambda: float = 0.25,
        device: str = "cpu",
        top1_mode: str = "sm",
    ):
        super().__init__()
        if diffsort_method not in DIFFSORT_METHODS:
            raise UnsupportedOptionError(
                f"diffsort_method must be one of {tuple(DIFFSORT_METHODS)}, got {diffsort_method!r}"
            )
        self.diffsort_method = diffsort_method
        self.inverse_temperature = _positive("inverse_temperature", inverse_temperature)
        p_k = [float(v) for v in (p_k.detach().cpu().tolist() if isinstance(p_k, torch.Tensor) else p_k)]
        if not p_k or not 0.9999 < sum(p_k) < 1.0001:
            raise CompatError(f"P_K does not sum up to 1: {p_k} sums up to {sum(p_k)}.")
        self.p_k = p_k
        self.k = len(p_k)
        self.device = device
        if top1_mode not in TOP1_MODES:
            raise CompatError(f"top1_mode must be one of {TOP1_MODES}, got {top1_mode!r}")
        self.top1_mode = top1_mode
        self.n = check_size(n, "n")
        if m is not None:
            m = check_size(m, "m")
            if not self.k < m:
                raise CompatError(f"m must be larger than K = len(p_k) = {self.k}, got m={m}")
            if not m < self.n:
                raise CompatError(f"m must be smaller than the number of classes n = {self.n}, got m={m}")
        elif self.k > self.n:
            raise CompatError(f"len(p_k) = {self.k} must not exceed the number of classes n = {self.n}")
        self.m = m
        self.art_lambda = art_lambda
        self.distribution = distribution
        if self._is_network:
            check_distribution(distribution)

    @property
    def _is_network(self) -> bool:
        return DIFFSORT_METHODS[self.diffsort_method] not in ("neuralsort", "softsort")

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
            raise CompatError(f"outputs must be a 2-D tensor [batch, n], got {getattr(outputs, 'shape', outputs)}")
        method = DIFFSORT_METHODS[self.diffsort_method]
        if self._is_network:
            distribution = check_distribution(self.distribution)
            if self.m is None and outputs.shape[1] != self.n:
                raise CompatError(
                    f"outputs.shape[1] = {outputs.shape[1]} does not match n = {self.n} the loss was built with"
                )
        else:
            distribution = "cauchy"  # unused by neuralsort / softsort
        return topk_cross_entropy(
            outputs, labels, self.p_k, method, m=self.m, inverse_temperature=float(self.inverse_temperature),
            distribution=distribution, art_lambda=float(self.art_lambda), top1_mode=self.top1_mode,
            reduction="mean",
        )

    def extra_repr(self) -> str:
        return (f"{self.diffsort_method!r}, inverse_temperature={self.inverse_temperature}, p_k={self.p_k}, "
                f"n={self.n}, m={self.m}, distribution={self.distribution!r}, top1_mode={self.top1_mode!r}")


# --------------------------------------------------------------------------- NeuralSort / SoftSort
def _straight_through(P_hat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One-hot of ``index`` along the last dim in the forward, gradient of ``P_hat`` in the backward."""
    P = torch.zeros_like(P_hat).scatter_(-1, index, 1)
    return (P - P_hat).detach() + P_hat


class NeuralSort(torch.nn.Module):
    """NeuralSort (Grover et al., ICLR 2019); same as ``difftopk.NeuralSort``.

    ``forward(scores [B, n])`` returns ``P_hat [B, n, n]`` in diffsort's layout:
    ``P_hat[b, i, j]`` is the weight of input ``i`` at *ascending* position
    ``j`` (difftopk sorts the negated scores in descending order and transposes),
    so ``P_hat[:, :, -k:]`` are the top-``k`` columns, the largest last.

    With ``hard=True`` the forward value is, as in difftopk, the one-hot of the
    argmax of each row of ``P_hat`` (per *input*, over positions) and the
    gradient is that of the soft ``P_hat`` (straight-through).

    Computed from fastsort's NeuralSort rows (``A_s 1`` in ``O(n log n)``);
    half precision is computed in float32, float64 is supported.
    """

    def __init__(self, tau: float = 1.0, hard: bool = False):
        super().__init__()
        self.hard = hard
        self.tau = tau

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        _check_scores(scores)
        x = scores.to(compute_dtype(scores.dtype))
        rows = neuralsort_rows(x, x.shape[1], _positive("tau", self.tau))  # rank order, the largest first
        P_hat = rows.flip(-2).transpose(-2, -1)
        if self.hard:
            P_hat = _straight_through(P_hat, P_hat.argmax(-1, keepdim=True))
        return P_hat.to(scores.dtype)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}"


class SoftSort(torch.nn.Module):
    """SoftSort (Prillo and Eisenschlos, ICML 2020); same as ``difftopk.SoftSort``.

    ``forward(scores [B, n])`` returns ``P_hat [B, n, n]`` with row ``r`` = rank
    ``r + 1`` (descending: row 0 = the largest) and columns = inputs, i.e.
    ``softmax(-|sort(s, desc)_r - s| ** pow / tau)``.  ``hard=True``: one-hot of
    each row's maximum in the forward, soft gradient (straight-through).
    """

    def __init__(self, tau: float = 1.0, hard: bool = False, pow: float = 1.0):
        super().__init__()
        self.hard = hard
        self.tau = tau
        self.pow = pow

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        _check_scores(scores)
        x = scores.to(compute_dtype(scores.dtype))
        P_hat = softsort_rows(x, x.shape[1], _positive("tau", self.tau), _positive("pow", self.pow))
        if self.hard:
            P_hat = _straight_through(P_hat, P_hat.topk(1, -1)[1])
        return P_hat.to(scores.dtype)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}, pow={self.pow}"


# --------------------------------------------------------------------------- smooth top-k SVM losses
class SmoothTopKLoss(torch.nn.Module):
    """Smooth top-k SVM loss (Berrada et al., ICLR 2018); same as ``difftopk.SmoothTopKLoss``.

    Args:
        num_classes: the number of classes ``C`` (``forward`` checks ``x.shape[1] == C``).
        k: top-k size, ``1 <= k < C``.
        tau: temperature ``> 0``.
        device: accepted for compatibility; ignored.

    ``forward(x [B, C], y [B])`` returns the sum of the per-sample losses divided
    by ``B``.  Computed by :func:`fastsort.smooth_topk.smooth_topk_svm_loss`
    (log-space elementary symmetric polynomials, plain autograd), so the
    gradient is exact: difftopk's hand-written backward is not for ``k = 1``
    (it adds ``-1/B`` to the gradient of every non-label logit; finite
    differences agree with fastsort) and, for large score gaps, uses a
    truncated expansion (errors ~1e-5).  The loss values agree.
    """

    _hard = False

    def __init__(self, num_classes: int, k: int, tau: float = 1, device: str = "cpu"):
        super().__init__()
        self.num_classes = check_size(num_classes, "num_classes")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < self.num_classes:
            raise CompatError(f"k must be an int with 1 <= k < num_classes = {self.num_classes}, got {k!r}")
        self.k = k
        self.tau = _positive("tau", tau)
        self.device = device

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from ..smooth_topk import smooth_topk_svm_loss  # lazy: the module is optional at import time

        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] != self.num_classes:
            raise CompatError(f"x.shape[1] = {x.shape[1]} does not match num_classes = {self.num_classes}")
        return smooth_topk_svm_loss(x, y, self.k, tau=self.tau, alpha=1.0, hard=self._hard, reduction="mean")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, k={self.k}, tau={self.tau}"


class SmoothHardTopKLoss(SmoothTopKLoss):
    """Smooth top-k SVM loss with the per-sample hard switch; same as ``difftopk.SmoothHardTopKLoss``.

    Samples whose k-th and (k+1)-th largest scores differ by at least
    ``k * tau * log(1000)`` use the hard top-k SVM loss.  Same arguments as
    :class:`SmoothTopKLoss`.
    """

    _hard = True
    thresh = 1e3
