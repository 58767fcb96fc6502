"""NeuralSort and SoftSort, computing only the rows that are asked for.

Both return rows of the relaxed permutation matrix in *descending* rank order
(row ``r`` = rank ``r + 1``, the largest first), columns = inputs.

* NeuralSort (Grover et al., ICLR 2019): row ``i`` (1-based) is
  ``softmax(((n + 1 - 2 i) s - A_s 1) / tau)`` with ``(A_s 1)_j = sum_l |s_j - s_l|``,
  computed in ``O(n log n)`` from the sorted values and their prefix sums.
* SoftSort (Prillo and Eisenschlos, ICML 2020): row ``i`` is
  ``softmax(-|sort(s, desc)_i - s| ** pow / tau)``.

Cost ``O(n k)`` for ``k`` rows, never an ``n x n`` intermediate unless all
rows are requested.  Plain autograd is exact and memory-light here, so these
torch ops run on any device (docs/design.md, "NeuralSort and SoftSort");
Both have compiled CPU kernels besides (:mod:`fastsort.kernels.cpu_softsort`,
:mod:`fastsort.kernels.cpu_neuralsort`, picked by ``backend="auto"`` for finite
float32 CPU rows: SoftSort's with ``pow = 1``, NeuralSort's for ``n <= 256``),
which do in a few passes per row what the elementwise ops do in eight.

What they guarantee: every row of ``P`` is a softmax, so it sums to 1 and the
soft sorted values (``P x``) stay within ``[min x, max x]``; the *columns* do
not sum to 1 (``P`` is not doubly stochastic), so soft ranks
(``sum_r (n + 1 - r) P[r, i]``) may leave ``[1, n]`` and a top-k mask
(``sum_{r <= k} P[r, i]``) may exceed 1.  NeuralSort's math is difftopk's.

Infinities are the limit of an ever larger (or smaller) finite value, which
both formulas reach exactly: the ``b`` entries at ``+inf`` take ranks ``1..b``
and the ``a`` at ``-inf`` the last ``a`` ranks, each of those rows spread
evenly over its tied infinities, with weight exactly 0 on finite entries (and
finite rows exactly 0 on infinite entries); the finite entries are ranked
among themselves, as if the infinities were not there.  Infinite entries get
zero gradient.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from ._dispatch import finite_on_host
from ._kernel_op import KernelOp
from ._validate import as_positive
from .method import RowsMethod


def abs_row_sums(s: torch.Tensor, finite: bool = False):
    """``(A_s 1)_j = sum_l |s_j - s_l|`` over the finite entries of ``s [R, n]``, in ``O(n log n)``.

    With the finite values sorted ascending, the one at finite position ``p``
    has ``sum_l |v - s_l| = v (2 p - n_f) + S - 2 P_p`` (``n_f`` finite values,
    ``S`` their total, ``P_p`` the sum of the ``p`` smaller ones).  ``+-inf``
    entries (masked classes) are left out: returns ``(sums, n_f [R, 1], infinite)``
    (the sums at infinite entries are meaningless).  ``finite=True``: the caller
    knows ``s`` holds no infinity, and the bookkeeping for them is skipped
    (``n_f`` is then the int ``n`` and ``infinite`` None).
    """
    n = s.shape[-1]
    sv, order = s.sort(dim=-1)  # -inf first, then the finite values, then +inf
    pos = torch.arange(n, device=s.device, dtype=s.dtype)
    if finite:
        infinite, n_f, sv0 = None, n, sv
    else:
        infinite = torch.isinf(s)
        n_f = (~infinite).sum(-1, keepdim=True).to(s.dtype)
        pos = pos - (s == -math.inf).sum(-1, keepdim=True).to(s.dtype)  # position among the finite values
        sv0 = torch.where(torch.isinf(sv), torch.zeros_like(sv), sv)
    prefix = sv0.cumsum(-1) - sv0
    sums_sorted = sv0 * (2 * pos - n_f) + sv0.sum(-1, keepdim=True) - 2 * prefix
    return torch.empty_like(sums_sorted).scatter(-1, order, sums_sorted), n_f, infinite


def _nan_rows(s: torch.Tensor) -> torch.Tensor:
    """``[R, 1, 1]``: NaN for a row holding a NaN, else 0 (added to logits: NaN in, NaN out, gradients too)."""
    nan = torch.isnan(s).any(-1)
    return torch.where(nan, torch.full_like(nan, math.nan, dtype=s.dtype), torch.zeros_like(nan, dtype=s.dtype))[
        :, None, None]


def neuralsort_rows(s: torch.Tensor, k: int, tau: float, backend: str = "torch", transposed: bool = False
                    ) -> torch.Tensor:
    """Top ``k`` rows of NeuralSort's ``P`` for ``s [R, n]``: ``[R, k, n]``.

    ``transposed``: the caller will use the transpose ``[R, n, k]``: the compiled kernels then
    write that layout (the result is the transposed view of a contiguous ``[R, n, k]``, whose
    ``.transpose(-2, -1)`` is contiguous; the same values), the torch ops ignore it.

    ``+-inf`` entries are the limit of an ever larger / smaller value: the ``b``
    entries at ``+inf`` take ranks ``1..b`` (each such row spread evenly over them),
    the ones at ``-inf`` the last ranks, and the finite entries get NeuralSort of
    the finite entries alone, shifted by ``b`` ranks (masked classes get probability
    0 in the top rows).

    ``backend="numba"`` (float32 CPU rows): finite rows of at most
    :data:`fastsort.kernels.cpu_neuralsort.MAX_N` entries run the compiled kernels (the same
    formula with ``A_s 1`` summed directly, its hand-written backward; at exact ties its gradient
    is the symmetric one of ``|d|``'s derivative 0 at 0, where the sort-based torch ops give tied
    entries different shares), anything else these torch ops.
    """
    finite = finite_on_host(s)  # (one pass over the rows, for both choices below)
    if finite and backend == "numba" and s.dtype == torch.float32 and s.dim() == 2 \
            and s.shape[-1] <= NEURALSORT_KERNEL_MAX_N:
        if transposed:
            return neuralsort_op(s, k, float(tau), True).transpose(-2, -1)
        return neuralsort_op(s, k, float(tau), False)
    if finite:
        return _neuralsort_rows_finite(s, k, tau)
    a1, n_f, infinite = abs_row_sums(s)
    pos, neg = s == math.inf, s == -math.inf
    s0 = torch.where(infinite, torch.zeros_like(s), s)
    i = torch.arange(1, k + 1, device=s.device, dtype=s.dtype)  # the rank of each row
    n_pos = pos.sum(-1, keepdim=True).to(s.dtype)
    rank_f = i - n_pos  # [R, k]: the rank among the finite entries
    scale = (n_f + 1 - 2 * rank_f).unsqueeze(-1)  # [R, k, 1]
    logits = (scale * s0.unsqueeze(-2) - a1.unsqueeze(-2)) / tau
    logits = logits.masked_fill(infinite.unsqueeze(-2), -math.inf)
    # the ranks of the infinities: rows spread over the tied +inf (first) or -inf (last) entries
    spread = torch.zeros_like(s)
    logits = torch.where((i <= n_pos).unsqueeze(-1), spread.masked_fill(~pos, -math.inf).unsqueeze(-2), logits)
    logits = torch.where((i > n_pos + n_f).unsqueeze(-1), spread.masked_fill(~neg, -math.inf).unsqueeze(-2), logits)
    return torch.softmax(logits + _nan_rows(s), dim=-1)


def _neuralsort_rows_finite(s: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """:func:`neuralsort_rows` for rows known to be finite: the same formula with no special values to
    route, the ``[R, k, n]`` logits made by one fused ``addcmul`` and then the softmax (two passes
    over the ``n k`` entries, forward and backward, against six with the special-value handling)."""
    n = s.shape[-1]
    a1 = abs_row_sums(s, finite=True)[0]
    c = 1.0 / tau
    scale = ((n + 1 - 2 * torch.arange(1, k + 1, device=s.device, dtype=s.dtype)) * c).unsqueeze(-1)  # [k, 1]
    logits = torch.addcmul((a1 * -c).unsqueeze(-2), scale, s.unsqueeze(-2))  # scale_i s_j / tau - a1_j / tau
    return torch.softmax(logits, dim=-1)


#: rows the NeuralSort kernels take (``fastsort.kernels.cpu_neuralsort.MAX_N``, repeated here so that
#: dispatch needs no numba import; a test checks that the two agree)
NEURALSORT_KERNEL_MAX_N = 256


def _neuralsort_fwd(s: torch.Tensor, k: int, tau: float, transposed: bool, need_grad: bool) -> Tuple[torch.Tensor]:
    from .kernels.cpu_neuralsort import neuralsort_fwd

    return (neuralsort_fwd(s, k, tau, transposed),)


def _neuralsort_fwd_fake(s: torch.Tensor, k: int, tau: float, transposed: bool, need_grad: bool
                         ) -> Tuple[torch.Tensor]:
    R, n = s.shape
    return (s.new_empty((R, n, k) if transposed else (R, k, n)),)


def _neuralsort_bwd(grad: torch.Tensor, s: torch.Tensor, P: torch.Tensor, k: int, tau: float, transposed: bool
                    ) -> torch.Tensor:
    from .kernels.cpu_neuralsort import neuralsort_bwd

    return neuralsort_bwd(grad, s, P, tau, transposed)


def _neuralsort_bwd_fake(grad: torch.Tensor, s: torch.Tensor, P: torch.Tensor, k: int, tau: float,
                         transposed: bool) -> torch.Tensor:
    return torch.empty_like(s)


#: NeuralSort's rows by the compiled CPU kernels (finite float32 rows of at most
#: NEURALSORT_KERNEL_MAX_N entries), ``P [R, k, n]`` or with ``transposed`` its transpose ``[R, n, k]``
#: (contiguous); the backward reads the rows and ``P``
neuralsort_op = KernelOp("neuralsort", _neuralsort_fwd, _neuralsort_bwd, forward_fake=_neuralsort_fwd_fake,
                         backward_fake=_neuralsort_bwd_fake, n_outputs=1, save_inputs=(0,), save_outputs=(0,))


def _softsort_fwd(s: torch.Tensor, k: int, tau: float, need_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    from .kernels.cpu_softsort import softsort_fwd

    return softsort_fwd(s, k, tau)


def _softsort_fwd_fake(s: torch.Tensor, k: int, tau: float, need_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return s.new_empty((s.shape[0], k, s.shape[1])), s.new_empty((s.shape[0], k), dtype=torch.int64)


def _softsort_bwd(grad: torch.Tensor, s: torch.Tensor, P: torch.Tensor, top_idx: torch.Tensor, k: int, tau: float
                  ) -> torch.Tensor:
    from .kernels.cpu_softsort import softsort_bwd

    return softsort_bwd(grad, s, P, top_idx, tau)


def _softsort_bwd_fake(grad: torch.Tensor, s: torch.Tensor, P: torch.Tensor, top_idx: torch.Tensor, k: int,
                       tau: float) -> torch.Tensor:
    return torch.empty_like(s)


#: SoftSort's rows by the compiled CPU kernels (finite float32 rows, ``pow = 1``): the forward's
#: outputs are ``P`` and the columns of the sorted values; the backward reads the rows, ``P`` (the
#: output, kept as ``torch.softmax`` keeps its own) and those columns
softsort_op = KernelOp("softsort", _softsort_fwd, _softsort_bwd, forward_fake=_softsort_fwd_fake,
                       backward_fake=_softsort_bwd_fake, n_outputs=1, save_inputs=(0,), save_outputs=(0,))


def softsort_rows(s: torch.Tensor, k: int, tau: float, pow: float, backend: str = "torch") -> torch.Tensor:
    """Top ``k`` rows of SoftSort's ``P`` for ``s [R, n]``: ``[R, k, n]``.

    Equal entries (equal infinities included) are at distance 0; an infinity is at
    distance ``inf`` from everything else, so its rows and columns are exactly 0
    against finite entries.  ``|d| ** pow`` is given gradient 0 at ``d = 0`` (its
    derivative is infinite there for ``pow < 1``, where the diagonal would
    otherwise make every gradient NaN) and at ``d = inf``.

    ``backend="numba"`` (float32 CPU rows): finite rows with ``pow = 1`` run the compiled
    kernels of :mod:`fastsort.kernels.cpu_softsort` (the same formula, its hand-written
    backward), anything else these torch ops.
    """
    finite = pow == 1.0 and finite_on_host(s)  # (one pass over the rows, for both choices below)
    if finite and backend == "numba" and s.dtype == torch.float32 and s.dim() == 2:
        return softsort_op(s, k, float(tau))
    top = s.topk(k, dim=-1, sorted=True).values if k < s.shape[-1] else s.sort(dim=-1, descending=True).values
    if finite:  # no inf - inf to route: three passes over the n k entries
        return torch.softmax((s.unsqueeze(-2) - top.unsqueeze(-1)).abs() * (-1.0 / tau), dim=-1)
    u = s.unsqueeze(-2) - top.unsqueeze(-1)
    tie = s.unsqueeze(-2) == top.unsqueeze(-1)  # inf - inf would be NaN
    diff = torch.where(tie, torch.zeros_like(u), u).abs()
    if pow != 1.0:
        flat = (diff == 0) | torch.isinf(diff)
        safe = torch.where(flat, torch.ones_like(diff), diff)
        diff = torch.where(flat, diff, safe.pow(pow))
    return torch.softmax(-diff / tau, dim=-1)


class NeuralSort(RowsMethod):
    """NeuralSort (Grover et al., ICLR 2019); parameter ``tau=1.0`` (``1 / inverse_temperature`` in the loss).

    Rows of ``P`` sum to 1, columns need not: soft ranks may leave ``[1, n]`` and the top-k mask may
    exceed 1 (module docstring)."""

    defaults = {"tau": 1.0}
    kernels = ("numba",)
    #: the fused top-k loss has a Triton kernel too (``fastsort/kernels/topk_loss.py``)
    loss_kernels = ("triton", "numba")
    #: handles ``+-inf`` itself (module docstring); ``fastsort.soft_sort`` writes the infinities back
    native_infinities = True

    def check(self, p):
        p["tau"] = as_positive(p["tau"], "tau")
        return p

    def loss_params(self, inverse_temperature, distribution, art_lambda):
        return self.parse(dict(tau=1.0 / inverse_temperature))

    def fused_loss(self, p, backend):
        # fastsort/kernels/cpu_rows_loss.py and topk_loss.py's rows kernel: ``steepness`` = 1 / tau
        return ("none", 1.0 / p["tau"], 0.0) if backend in self.loss_kernels else None

    def topk(self, x, k, p, backend):
        return neuralsort_rows(x, k, p["tau"], backend)

    def sort(self, x, p, backend):
        # P x, with +-inf read as 0: a finite rank's row is exactly 0 on them (an infinity's own
        # position is then 0 here and gets its infinity back in fastsort.soft_sort)
        n = x.shape[-1]
        x0 = torch.where(torch.isinf(x), torch.zeros_like(x), x)
        return (self.topk(x, n, p, backend) @ x0.unsqueeze(-1)).squeeze(-1).flip(-1)


class SoftSort(NeuralSort):
    """SoftSort (Prillo and Eisenschlos, ICML 2020); parameters ``tau=1.0``, ``pow=1.0``."""

    defaults = {"tau": 1.0, "pow": 1.0}
    kernels = ("numba",)

    def check(self, p):
        p = super().check(p)
        p["pow"] = as_positive(p["pow"], "pow")
        return p

    def fused_loss(self, p, backend):
        return super().fused_loss(p, backend) if p["pow"] == 1.0 else None  # (the kernel's |d|)

    def topk(self, x, k, p, backend):
        return softsort_rows(x, k, p["tau"], p["pow"], backend)
