"""Sinkhorn sorting: soft sort, ranks, permutation, top-k and top-k mask.

Cuturi, Teboul and Vert, "Differentiable Ranks and Sorting using Optimal
Transport" (NeurIPS 2019). The semantics follow ``ott.tools.soft_sort`` of
ott-jax (``sort``, ``ranks``, ``topk_mask``); see docs/design.md, "Sinkhorn sorting".

Per row ``x`` of length ``n``:

* squash (``squash=True``): ``z = sigmoid((x - mean(x)) / (std(x) + 1e-10))``
  with the *population* standard deviation (``jnp.std``, ``ddof=0``, as OTT),
  evaluated scale-safely: ``x`` is first divided by the power of two ``s`` at
  or just below ``max |x|`` (and ``1e-10`` by ``s`` too), which changes no bit
  of the result for ordinary inputs but keeps ``(x - mean)^2`` from
  overflowing float32 for ``|x| >= ~1e19``; ``squash=False`` uses ``z = x``;
* ``m`` targets ``t = linspace(0, 1, m)`` with weights ``b``, sources with
  weights ``a = 1/n``, cost ``C_ij = (z_i - t_j)^2``;
* log-domain Sinkhorn from ``f = g = 0``; one iteration updates ``g`` and then
  ``f`` (OTT's order)::

      g_j = eps log b_j - eps LSE_i((f_i - C_ij) / eps)
      f_i = eps log a_i - eps LSE_j((g_j - C_ij) / eps)

  so after every iteration the row marginals of the plan
  ``T_ij = exp((f_i + g_j - C_ij) / eps)`` are exact;
* stopping, as OTT (``inner_iterations=10``, ``norm_error=1``): after every
  10th iteration the L1 error of the column marginal, ``sum_j |T^T 1 - b|_j``,
  is compared with ``threshold``; a row whose error is below it (or NaN) stops
  and keeps its potentials, the others go on, up to ``max_iter`` iterations.
  The error costs nothing extra: the column marginal of the current state is
  ``b_j exp((g_j - g_new_j) / eps)``, read off the next ``g`` update.

* epsilon scaling (as ott-jax's ``Epsilon`` schedule offers) for a target
  ``epsilon < 1e-2``: iteration ``c`` runs at ``max(epsilon, 1 * 0.9^c)``, from
  the cost's own scale (squashed costs are at most 1) down to the target,
  the potentials carried over (warm start); the checks start once the target
  is reached.  From ``epsilon >= 1e-2`` on (the default included) every
  iteration runs at ``epsilon`` itself, so those results are unchanged.

``max_iter`` is the budget of all iterations; by default (``None``) it is
``2000`` (OTT's ``Sinkhorn.max_iterations``) at ``epsilon >= 1e-2`` and grows
as ``1 / epsilon`` below (``2000 * 1e-2 / epsilon``, at most 20000), plus the
epsilon-scaling iterations.

Convergence is reported, never assumed: after the iterations the marginal
error of the plan the outputs are read from (``sum_j |T^T 1 - b|_j + sum_i
|T 1 - a|_i``, recomputed from the final potentials) must be at most
``2 * threshold`` (the iterations stop on a cheaper estimate of the column
error alone; the factor leaves room for rounding between the two).  A row
with finite inputs that misses it raises a :class:`SinkhornConvergenceWarning`
(once per call site: the message is stable, the rows and their errors are the
warning's attributes), or a :class:`SinkhornConvergenceError` with
``strict=True``.  Both backends measure and report it the same way.  In float32
the plan cannot resolve ``epsilon`` much below ``1e-5`` (the potentials'
rounding, ``~6e-8``, is divided by ``epsilon`` in the exponent): use float64
inputs there.

Initialisation, as OTT: ``g = 0`` and ``f = 0``, except for the operators
built on OTT's full ``sort`` (sorted values, the permutation, and top-k with
``k == n``), where OTT uses its ``SortingInitializer`` (DualSort of Thornton and
Cuturi 2022): starting from ``f = 0``, iterate
``f_i <- min_j (C_ij - C_jj + f_j)`` while ``sum (f_new - f)^2 > 1e-2``, at most
100 times, then centre ``f``. The hand-checked OTT values (``x = [1, 8, -1, 9,
5]``: sort ``[-0.829, 0.846, 5.026, 8.189, 8.768]``, 0-based ranks ``[0.919,
3.216, 0.086, 3.775, 2.010]``) are reproduced to 3 decimals only with this
initialisation for ``sort`` and the zero one for ``ranks`` (the iterations stop
at ``threshold`` before full convergence, so the start matters at that level).

Outputs (``P = n T^T``, rows = targets ascending, columns = inputs):

* full sort (``m = n``, ``b = 1/n``): sorted values ``P x``, ranks
  ``n T [0..n-1] + 1`` (1 = smallest; OTT's 0-based ranks plus one), the
  permutation ``P`` itself;
* top-k (``m = k + 1``, ``b = [(n-k)/n, 1/n, ..., 1/n]``): the last ``k`` rows
  of ``P``, reordered largest first, at ``O(n k)`` per iteration;
* top-k mask (``m = 2``, ``b = [1 - k/n, k/n]``): ``n T[:, 1]``.

Backward: implicit differentiation at the fixed point
-----------------------------------------------------
Every output is a function of ``T`` (and of ``x`` for the sorted values). At
the fixed point ``T 1 = a`` and ``T^T 1 = b``; differentiating
``T_ij = exp((f_i + g_j - C_ij) / eps)`` and both constraints gives, for a
cotangent ``G = dL/dT``, with ``u = (G * T) 1`` and ``v = (G * T)^T 1``::

    [diag(a)  T      ] [lam]   [u]
    [T^T      diag(b)] [mu ] = [v]          (symmetric PSD, null space (1, -1))

    dL/dC_ij = T_ij (lam_i + mu_j - G_ij) / eps
    dL/dz_i  = 2 sum_j dL/dC_ij (z_i - t_j)

and then the squash's own chain rule. Eliminating ``lam = n (u - T mu)``
leaves the ``m x m`` Schur system ``(diag(b) - n T^T T) mu = v - n T^T u``,
singular along ``1`` with a right side orthogonal to ``1``; adding ``1 1^T / m``
makes it positive definite without changing the solution's relevant part.

Why implicit and not a reverse sweep: the forward runs up to thousands of
iterations and stops per row; a reverse sweep would have to store (or
recompute in checkpoints) every iterate, while the implicit gradient needs only
the final ``f``, ``g`` and ``z`` (``O(n + m)`` per row), its cost does not
depend on the iteration count, and it is exact at the fixed point (which is
what finite differences at convergence measure). For top-k and the mask the
system is tiny (``m = k + 1`` and ``m = 2``). The torch reference solves it
directly (in float64); the Triton backward kernel runs the same system with a
fused conjugate-gradient solve that recomputes ``T`` from ``f``, ``g``, ``z``
(see ``kernels/sinkhorn.py``). The Triton kernels hold one row's ``n x m``
plan in registers (at most 16384 elements after padding to powers of two:
top-k up to n = 2048 with k <= 7, full sort up to n = 128); larger rows run
the torch reference even with ``backend="triton"``.

Special cases: ``k == n`` for top-k is the full sort (flipped); the top-k mask
with ``k == n`` is all ones. Rows of equal values give ``z = 1/2``, ``T = a
b^T`` after one iteration, so finite outputs (the mean, the middle rank).
NaN in a row gives NaN out for that row (the row stops at its first check).

Infinities: the squash's mean and standard deviation run over the entries
that are not ``+-inf``, and ``+inf`` / ``-inf`` squash to ``z = 1`` / ``0``
(the ends of the targets; with ``squash=False``, ``max(1, largest finite)`` and
``min(0, smallest finite)``), so they are transported to the top / bottom
targets like any value there.  The sorted values read ``+-inf`` as the row's
largest / smallest finite value (``fastsort.soft_sort`` then writes the
infinities themselves at the extreme positions).  Infinite entries get zero
gradient; a masked (``-inf``) logit in the top-k loss is handled this way.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Tuple

import torch

from ._cache import device_constant
from ._kernel_op import KernelOp
from ._validate import as_int, as_positive, as_real
from .method import RowsMethod

__all__ = [
    "DEFAULT_MAX_ITER",
    "SinkhornConvergenceWarning",
    "SinkhornConvergenceError",
    "auto_max_iter",
    "sinkhorn_sort",
    "sinkhorn_rank",
    "sinkhorn_permutation",
    "sinkhorn_topk",
    "sinkhorn_topk_mask",
]

DEFAULT_EPSILON = 1e-2
DEFAULT_MAX_ITER = 2000  # ott-jax Sinkhorn.max_iterations
DEFAULT_THRESHOLD = 1e-3
CHECK_EVERY = 10  # ott-jax Sinkhorn.inner_iterations: error checked every 10 iterations
DUALSORT_MAX_ITER = 100  # ott-jax SortingInitializer defaults
DUALSORT_TOL = 1e-2
STD_EPS = 1e-10
# epsilon scaling (module docstring): below ANNEAL_BELOW, iteration c runs at max(eps, ANNEAL_START * ANNEAL_DECAY^c)
ANNEAL_BELOW = DEFAULT_EPSILON
ANNEAL_START = 1.0
ANNEAL_DECAY = 0.9
# the automatic budget (max_iter=None): DEFAULT_MAX_ITER * DEFAULT_EPSILON / eps, between these two
MAX_AUTO_ITER = 20000
# a row has converged when its plan's marginal L1 error is at most CONVERGED_SLACK * threshold
CONVERGED_SLACK = 2.0


class SinkhornConvergenceWarning(RuntimeWarning):
    """Some rows of a Sinkhorn op did not converge: their plan's marginal error is above ``2 * threshold``.

    The message is the same for every call with the same parameters (so Python shows it once per
    call site); :attr:`rows` holds the indices of the offending (flattened) rows and :attr:`errors`
    their marginal errors.
    """

    def __init__(self, message: str, rows=(), errors=()):
        super().__init__(message)
        self.rows = tuple(rows)
        self.errors = tuple(errors)


class SinkhornConvergenceError(RuntimeError):
    """Raised instead of :class:`SinkhornConvergenceWarning` when the op was called with ``strict=True``."""

    def __init__(self, message: str, rows=(), errors=()):
        super().__init__(message)
        self.rows = tuple(rows)
        self.errors = tuple(errors)


def anneal_schedule(epsilon: float) -> Tuple[float, int]:
    """``(eps0, A)``: iteration ``c < A`` runs at ``eps0 * ANNEAL_DECAY^c``, the others at ``epsilon``
    (``A = 0``: no epsilon scaling, for ``epsilon >= ANNEAL_BELOW``)."""
    eps = float(epsilon)
    if eps >= ANNEAL_BELOW:
        return eps, 0
    A, e = 0, ANNEAL_START
    while e > eps:
        A += 1
        e = ANNEAL_START * ANNEAL_DECAY ** A
    return ANNEAL_START, A


def auto_max_iter(epsilon: float) -> int:
    """The iteration budget for ``max_iter=None``: 2000 at ``epsilon >= 1e-2``, growing as ``1 / epsilon``
    below (at most 20000), plus the epsilon-scaling iterations."""
    eps = float(epsilon)
    base = min(MAX_AUTO_ITER, max(DEFAULT_MAX_ITER, math.ceil(DEFAULT_MAX_ITER * DEFAULT_EPSILON / eps)))
    return base + anneal_schedule(eps)[1]


def check_max_iter(max_iter, epsilon) -> int:
    """``max_iter`` as an int >= 1; ``None`` is :func:`auto_max_iter`."""
    if max_iter is None:
        return auto_max_iter(epsilon)
    max_iter = as_int(max_iter, "max_iter")
    if max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1 (or None for the automatic budget), got {max_iter!r}")
    return max_iter


def check_strict(strict) -> bool:
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool (True raises SinkhornConvergenceError instead of warning), "
                        f"got {type(strict).__name__}")
    return strict


def _call_site_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside fastsort and torch (the caller's own line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        package = frame.f_globals.get("__name__", "").split(".")[0]
        if package not in ("fastsort", "torch"):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def report_convergence(x: torch.Tensor, err: torch.Tensor, kind: str, epsilon: float, max_iter: int,
                       threshold: float, strict: bool) -> None:
    """Warn (or raise, ``strict``) when a row of finite-or-infinite inputs has a plan marginal error
    ``err`` above ``CONVERGED_SLACK * threshold`` (or NaN).  Rows holding a NaN are NaN by design."""
    if err.numel() == 0:
        return
    bad = ~(err <= CONVERGED_SLACK * threshold) & ~torch.isnan(x).any(-1)
    if not bool(bad.any()):  # one host sync per call
        return
    rows = bad.nonzero().flatten().tolist()
    errors = err[bad].tolist()
    msg = (f"fastsort: Sinkhorn ({kind}) did not converge at epsilon={epsilon:g} within max_iter={max_iter} "
           f"iterations: some rows' marginal error (the L1 error of the plan's row and column sums) is above "
           f"{CONVERGED_SLACK:g} * threshold = {CONVERGED_SLACK * threshold:g}, so their outputs are not a "
           f"transport plan's. "
           f"Fix: a larger epsilon, a larger max_iter (max_iter=None scales it with 1/epsilon), a larger "
           f"threshold, or float64 inputs (float32 cannot resolve epsilon much below 1e-5); strict=True raises "
           f"instead of warning")
    if strict:
        raise SinkhornConvergenceError(
            msg + f"; rows {rows[:10]}{' ...' if len(rows) > 10 else ''} have errors "
                  f"{[float(f'{e:.3g}') for e in errors[:10]]}", rows, errors)
    warnings.warn(SinkhornConvergenceWarning(msg + " (the warning's rows and errors attributes name them)",
                                             rows, errors), stacklevel=_call_site_stacklevel())


def _kernels():
    """The Triton kernels, imported lazily (no import-time side effect)."""
    from .kernels import sinkhorn as _ks

    return _ks


# ----------------------------------------------------------------------------
# validation and problem set-up
# ----------------------------------------------------------------------------


def _validate(x: torch.Tensor, epsilon, max_iter, threshold, k=None, strict=False) -> int:
    """Check the standalone functions' arguments; returns ``max_iter`` resolved (``None``: automatic)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [rows, n], got {getattr(x, 'shape', type(x))}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    epsilon = as_positive(epsilon, "epsilon")
    max_iter = check_max_iter(max_iter, epsilon)
    if not as_real(threshold, "threshold") > 0:
        raise ValueError(f"threshold must be a number > 0, got {threshold!r}")
    check_strict(strict)
    n = x.shape[1]
    if n < 1:
        raise ValueError("x must have at least one element per row (n >= 1)")
    if k is not None:
        if not (1 <= as_int(k, "k") <= n):
            raise ValueError(f"k must be an integer with 1 <= k <= n = {n}, got {k!r}")
    return max_iter


# ----------------------------------------------------------------------------
# the operators: their targets and how their output reads the plan
# ----------------------------------------------------------------------------
# The kernels' readout codes: the sorted values, the ranks, or columns of the plan.
OUT_SORT, OUT_RANK, OUT_PLAN = 0, 1, 2


class Operator:
    """One Sinkhorn operator: its ``m`` targets with weights ``b``, its initialisation, and how its
    output reads the plan ``T [R, n, m]`` (forward) and maps a cotangent back onto it (backward).
    Every per-operator decision lives in these classes (and :data:`OPERATORS`)."""

    def n_targets(self, n: int, k) -> int:
        return n

    def weights(self, n: int, k, dtype, device) -> torch.Tensor:
        return torch.full((self.n_targets(n, k),), 1.0 / n, dtype=dtype, device=device)

    def sort_init(self, n: int, k) -> bool:
        """OTT's full ``sort`` starts from the DualSort initialiser; ranks and top-k (k < n) from zero."""
        return False

    def out_suffix(self, n: int, k) -> tuple:
        return (n,)

    def readout(self, n: int, k) -> tuple:
        """The kernels' view: ``(OUT_KIND, FLIP, ncol, col0)``."""
        raise NotImplementedError(f"{type(self).__name__} must define its kernel readout")

    def output(self, T, x, n: int, k):
        raise NotImplementedError(f"{type(self).__name__} must define its output")

    def cotangent(self, grad, x, T, n: int, k):
        """``G = dL/dT [R, n, m]`` for an output cotangent ``grad``."""
        raise NotImplementedError(f"{type(self).__name__} must define its cotangent")


class _Sort(Operator):
    def sort_init(self, n, k):
        return True

    def readout(self, n, k):
        return OUT_SORT, False, n, 0

    def output(self, T, x, n, k):
        return n * torch.einsum("rij,ri->rj", T, x)

    def cotangent(self, grad, x, T, n, k):
        return n * x[:, :, None] * grad[:, None, :]


class _Rank(Operator):
    def readout(self, n, k):
        return OUT_RANK, False, n, 0

    def output(self, T, x, n, k):
        r = torch.arange(T.shape[2], dtype=T.dtype, device=T.device)
        return n * (T @ r) + 1

    def cotangent(self, grad, x, T, n, k):
        r = torch.arange(T.shape[2], dtype=T.dtype, device=T.device)
        return n * grad[:, :, None] * r


class _Permutation(_Sort):
    def out_suffix(self, n, k):
        return (n, n)

    def readout(self, n, k):
        return OUT_PLAN, False, n, 0

    def output(self, T, x, n, k):
        return n * T.transpose(1, 2)

    def cotangent(self, grad, x, T, n, k):
        return n * grad.transpose(1, 2)


class _TopK(Operator):
    """``k + 1`` targets weighted ``[(n-k)/n, 1/n, ..., 1/n]`` (the full sort when ``k == n``)."""

    def n_targets(self, n, k):
        return n if k == n else k + 1

    def weights(self, n, k, dtype, device):
        b = torch.full((self.n_targets(n, k),), 1.0 / n, dtype=dtype, device=device)
        if k < n:
            b[0] = (n - k) / n
        return b

    def sort_init(self, n, k):
        return k == n

    def out_suffix(self, n, k):
        return (k, n)

    def readout(self, n, k):
        return OUT_PLAN, True, k, 0

    def output(self, T, x, n, k):
        return n * T[:, :, T.shape[2] - k:].flip(-1).transpose(1, 2)

    def cotangent(self, grad, x, T, n, k):
        G = torch.zeros_like(T)
        G[:, :, T.shape[2] - k:] = n * grad.flip(1).transpose(1, 2)
        return G


class _Mask(Operator):
    """Two targets weighted ``[1 - k/n, k/n]``: the mass each input sends to the upper one."""

    def n_targets(self, n, k):
        return 2

    def weights(self, n, k, dtype, device):
        return torch.tensor([1.0 - k / n, k / n], dtype=dtype, device=device)

    def readout(self, n, k):
        return OUT_PLAN, False, 1, 1

    def output(self, T, x, n, k):
        return n * T[:, :, 1]

    def cotangent(self, grad, x, T, n, k):
        G = torch.zeros_like(T)
        G[:, :, 1] = n * grad
        return G


#: operator name -> its definition (the ``kind`` argument everywhere in this module and the kernels)
OPERATORS = {"sort": _Sort(), "rank": _Rank(), "perm": _Permutation(), "topk": _TopK(), "mask": _Mask()}
KINDS = tuple(OPERATORS)


def uses_sort_init(kind: str, k, n: int) -> bool:
    """Whether operator ``kind`` starts from OTT's DualSort initialiser."""
    return OPERATORS[kind].sort_init(n, k)


_TARGETS = {}


def _target_tensors(kind: str, n: int, k: int, dtype, device):
    """``(b, t, log b in float32)`` of an operator, built once per device and dtype (a training step
    then sends nothing from the host)."""
    def build():
        b = OPERATORS[kind].weights(n, k, dtype, device)
        return b, _targets(b.shape[0], dtype, device), b.to(torch.float32).log()

    return device_constant(_TARGETS, (kind, n, k, dtype, str(device)), build, limit=1024)


def _targets(m: int, dtype, device) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, m, dtype=dtype, device=device)


def _exponent_mask(dtype):
    return (torch.int64, 0x7FF0000000000000) if dtype == torch.float64 else (torch.int32, 0x7F800000)


def row_scale(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per row ``[R, 1]``, the power of two at or just below ``max |x|`` over the ``keep`` entries (1 for a row
    of zeros or subnormals): dividing by it is exact, and keeps the squash's squares in range."""
    amax = torch.where(keep, x.abs(), torch.zeros_like(x)).amax(-1, keepdim=True)
    itype, mask = _exponent_mask(x.dtype)
    s = (amax.view(itype) & mask).view(x.dtype)
    return torch.where(s > 0, s, torch.ones_like(s))


def finite_range(x: torch.Tensor, keep: torch.Tensor):
    """``(lo, hi)`` ``[R, 1]``: the smallest and largest ``keep`` entry of each row (0 and 0 when none)."""
    any_kept = keep.any(-1, keepdim=True)
    inf = torch.full_like(x, math.inf)
    lo = torch.where(keep, x, inf).amin(-1, keepdim=True)
    hi = torch.where(keep, x, -inf).amax(-1, keepdim=True)
    zero = torch.zeros_like(lo)
    return torch.where(any_kept, lo, zero), torch.where(any_kept, hi, zero)


def _squash_stats(x: torch.Tensor, keep: torch.Tensor):
    """``(s, xc, nf, sd + STD_EPS / s, sd)`` over the ``keep`` entries of each row, in units of ``s``."""
    s = row_scale(x, keep)
    xs = torch.where(keep, x / s, torch.zeros_like(x))
    nf = keep.sum(-1, keepdim=True).clamp_min(1).to(x.dtype)
    mu = xs.sum(-1, keepdim=True) / nf
    xc = torch.where(keep, xs - mu, torch.zeros_like(x))
    sd = (xc.square().sum(-1, keepdim=True) / nf).sqrt()
    return s, xc, nf, sd + STD_EPS / s, sd


def squash_forward(x: torch.Tensor, squash: bool) -> torch.Tensor:
    """``z = sigmoid((x - mean) / (std + 1e-10))`` per row (population std, over the entries that are not
    ``+-inf``, which squash to 1 and 0), in units of :func:`row_scale`; or ``x`` itself (infinities at
    ``max(1, largest finite)`` / ``min(0, smallest finite)``)."""
    pos, neg = x == math.inf, x == -math.inf
    keep = ~(pos | neg)
    if not squash:
        lo, hi = finite_range(x, keep)
        return torch.where(pos, hi.clamp_min(1.0), torch.where(neg, lo.clamp_max(0.0), x))
    s, xc, nf, sc, sd = _squash_stats(x, keep)
    z = torch.sigmoid(xc / sc)
    return torch.where(pos, torch.ones_like(z), torch.where(neg, torch.zeros_like(z), z))


def squash_backward(x: torch.Tensor, z: torch.Tensor, dz: torch.Tensor, squash: bool) -> torch.Tensor:
    """Vector-Jacobian product of :func:`squash_forward` (std' taken as 0 where std = 0; 0 at ``+-inf``)."""
    keep = (x != math.inf) & (x != -math.inf)
    if not squash:
        return torch.where(keep, dz, torch.zeros_like(dz))
    s, xc, nf, sc, sd = _squash_stats(x, keep)
    dy = torch.where(keep, dz * z * (1 - z), torch.zeros_like(dz))  # y = xc / sc, xc in units of s
    # y_i = xc_i / sc:  dxs = (dy - mean(dy)) / sc - (sum_k dy_k xc_k / sc^2) * dsd/dxs
    dsd = torch.where(sd > 0, xc / (nf * sd.clamp_min(torch.finfo(x.dtype).tiny)), torch.zeros_like(xc))
    dxs = (dy - dy.sum(-1, keepdim=True) / nf) / sc - (dy * xc).sum(-1, keepdim=True) / (sc * sc) * dsd
    return torch.where(keep, dxs / s, torch.zeros_like(dxs))


def readout_values(x: torch.Tensor) -> torch.Tensor:
    """The values the sorted output reads: ``+-inf`` as the row's largest / smallest finite value."""
    pos, neg = x == math.inf, x == -math.inf
    lo, hi = finite_range(x, ~(pos | neg))
    return torch.where(pos, hi.expand_as(x), torch.where(neg, lo.expand_as(x), x))


def readout_backward(x: torch.Tensor, dxr: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian product of :func:`readout_values`: an infinity's share goes to the finite extreme it
    reads (split evenly among ties)."""
    pos, neg = x == math.inf, x == -math.inf
    keep = ~(pos | neg)
    lo, hi = finite_range(x, keep)
    zero = torch.zeros_like(dxr)
    dx = torch.where(keep, dxr, zero)
    for inf_mask, extreme in ((pos, hi), (neg, lo)):
        share = torch.where(inf_mask, dxr, zero).sum(-1, keepdim=True)
        at = keep & (x == extreme)
        dx = dx + torch.where(at, share / at.sum(-1, keepdim=True).clamp_min(1).to(x.dtype), zero)
    return dx


# ----------------------------------------------------------------------------
# torch reference: forward
# ----------------------------------------------------------------------------


def dualsort_init_torch(z, t):
    """OTT's ``SortingInitializer`` (DualSort) for ``f`` when ``m == n``; cost recomputed per step."""
    diag = (z - t) ** 2  # C_jj
    f = torch.zeros_like(z)
    active = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    for _ in range(DUALSORT_MAX_ITER):
        nf = ((z[:, :, None] - t) ** 2 - diag[:, None, :] + f[:, None, :]).amin(-1)
        diff = (nf - f).square().sum(-1)
        f = torch.where(active[:, None], nf, f)
        active = active & (diff > DUALSORT_TOL)
        if not bool(active.any()):
            break
    return f - f.mean(-1, keepdim=True)


def sinkhorn_potentials_torch(z, t, b, epsilon, max_iter, threshold, f0=None, anneal=None):
    """Log-domain Sinkhorn per row with per-row early stopping.

    ``z`` [R, n], ``t`` [m], ``b`` [m]. Returns ``f`` [R, n], ``g`` [R, m] and the
    number of iterations each row ran. Only the rows still running are computed
    in an iteration; the cost is recomputed from ``z`` and ``t`` each time.
    ``anneal = (eps0, A)`` (:func:`anneal_schedule`, the default): iteration ``c < A`` runs at
    ``eps0 * ANNEAL_DECAY^c`` instead of ``epsilon``, and the checks start after iteration ``A``.
    """
    R, n = z.shape
    m = t.shape[0]
    eps = float(epsilon)
    eps0, A = anneal_schedule(eps) if anneal is None else anneal
    f = torch.zeros(R, n, dtype=z.dtype, device=z.device) if f0 is None else f0.clone()
    g = torch.zeros(R, m, dtype=z.dtype, device=z.device)
    iters = torch.full((R,), max_iter, dtype=torch.int64, device=z.device)
    loga = -math.log(n)
    logb = b.log()
    active = torch.arange(R, device=z.device)
    za, fa, ga = z, f, g
    for c in range(max_iter):
        if active.numel() == 0:
            break
        e = eps0 * ANNEAL_DECAY ** c if c < A else eps  # epsilon scaling, then the target
        cost = (za[:, :, None] - t) ** 2  # [r, n, m], recomputed every iteration
        gn = e * logb - e * torch.logsumexp((fa[:, :, None] - cost) / e, dim=1)
        if c > A and c % CHECK_EVERY == 0:  # (A = 0: every 10th iteration from the 10th on)
            # column marginal of the current state (fa, ga) is b * exp((ga - gn) / eps)
            err = (b * torch.expm1((ga - gn) / eps)).abs().sum(-1)
            stop = (err < threshold) | torch.isnan(err)
            if bool(stop.any()):
                keep = ~stop
                f[active] = fa
                g[active] = ga
                iters[active[stop]] = c
                active, za, gn, cost = active[keep], za[keep], gn[keep], cost[keep]
                if active.numel() == 0:
                    break
        fn = e * loga - e * torch.logsumexp((gn[:, None, :] - cost) / e, dim=2)
        fa, ga = fn, gn
    if active.numel():
        f[active] = fa
        g[active] = ga
    return f, g, iters


def _plan(z, t, f, g, epsilon):
    """Transport plan ``T`` [R, n, m] from potentials (cost recomputed)."""
    cost = (z[:, :, None] - t) ** 2
    return torch.exp((f[:, :, None] + g[:, None, :] - cost) / epsilon)


def plan_error(T: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Marginal error per row ``[R]``: ``sum_j |T^T 1 - b|_j + sum_i |T 1 - 1/n|_i`` (what convergence means)."""
    n = T.shape[1]
    return (T.sum(1) - b).abs().sum(-1) + (T.sum(2) - 1.0 / n).abs().sum(-1)


def implicit_duals_torch(T, b, u, v):
    """Solve the Schur system for ``(lam, mu)`` (float64 internally)."""
    dtype = T.dtype
    T64, b64, u64, v64 = T.double(), b.double(), u.double(), v.double()
    n, m = T.shape[1], T.shape[2]
    S = torch.diag_embed(b64.expand(T.shape[0], m)) - n * T64.transpose(1, 2) @ T64
    S = S + 1.0 / m
    rhs = v64 - n * (T64.transpose(1, 2) @ u64[:, :, None])[:, :, 0]
    mu = torch.linalg.solve(S, rhs[:, :, None])[:, :, 0]
    lam = n * (u64 - (T64 @ mu[:, :, None])[:, :, 0])
    return lam.to(dtype), mu.to(dtype)


def backward_torch(kind, grad, x, z, t, b, f, g, epsilon, n, k, squash):
    """Hand-written implicit backward of the torch reference; returns dL/dx."""
    T = _plan(z, t, f, g, epsilon)
    G = OPERATORS[kind].cotangent(grad, readout_values(x), T, n, k)
    GT = G * T
    u, v = GT.sum(2), GT.sum(1)
    lam, mu = implicit_duals_torch(T, b, u, v)
    dC = T * (lam[:, :, None] + mu[:, None, :] - G) / epsilon
    dz = 2 * (z * dC.sum(2) - dC @ t)
    dx = squash_backward(x, z, dz, squash)
    if kind == "sort":
        dx = dx + readout_backward(x, n * (T @ grad[:, :, None])[:, :, 0])
    return dx


# ----------------------------------------------------------------------------
# the kernel-backed op (both backends)
# ----------------------------------------------------------------------------


def _backend_for(backend: str, kind: str, n: int, k) -> str:
    """The register-tile kernels hold a row's ``n x m`` plan: larger rows run on the torch reference."""
    if backend == "triton" and not _kernels().supports(n, OPERATORS[kind].n_targets(n, k)):
        return "torch"
    return backend


def _forward(x: torch.Tensor, kind: str, k: int, epsilon: float, max_iter: int, threshold: float, squash: bool,
             strict: bool, backend: str, need_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """``(out, z, f, g)``: the operator's output, the squashed inputs and the potentials (``k = 0``: no k).
    Rows that did not converge are reported (:func:`report_convergence`) before anything is returned."""
    k = k or None
    n = x.shape[1]
    b, t, logb = _target_tensors(kind, n, k, x.dtype, x.device)
    if _backend_for(backend, kind, n, k) == "triton":
        out, z, f, g, err = _kernels().sinkhorn_fwd(x, kind=kind, k=k, b=b, epsilon=epsilon, max_iter=max_iter,
                                                   threshold=threshold, squash=squash, logb=logb)
    else:
        z = squash_forward(x, squash)
        f0 = dualsort_init_torch(z, t) if uses_sort_init(kind, k, n) else None
        f, g, _ = sinkhorn_potentials_torch(z, t, b, epsilon, max_iter, threshold, f0)
        T = _plan(z, t, f, g, epsilon)
        err = plan_error(T, b)
        out = OPERATORS[kind].output(T, readout_values(x), n, k)
    report_convergence(x, err, kind, epsilon, max_iter, threshold, strict)
    # outputs may not alias the input (z is x itself without squashing) nor be views (the torch
    # path's plan columns are a transposed one)
    return out.contiguous(), (z.clone() if z is x else z), f, g


def _forward_fake(x, kind, k, epsilon, max_iter, threshold, squash, strict, backend, need_grad):
    R, n = x.shape
    op = OPERATORS[kind]
    m = op.n_targets(n, k or None)
    return x.new_empty((R,) + op.out_suffix(n, k or None)), x.new_empty((R, n)), x.new_empty((R, n)), \
        x.new_empty((R, m))


def _backward(grad: torch.Tensor, x: torch.Tensor, z: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
              kind: str, k: int, epsilon: float, max_iter: int, threshold: float, squash: bool, strict: bool,
              backend: str) -> torch.Tensor:
    """``dL/dx`` by implicit differentiation at the potentials ``f, g``."""
    k = k or None
    n = x.shape[1]
    b, t, logb = _target_tensors(kind, n, k, x.dtype, x.device)
    grad = grad.contiguous()
    if _backend_for(backend, kind, n, k) == "triton":  # as the forward decided
        return _kernels().sinkhorn_bwd(grad, x, z, f, g, b, kind=kind, k=k, epsilon=epsilon, squash=squash,
                                       logb=logb)
    return backward_torch(kind, grad, x, z, t, b, f, g, epsilon, n, k, squash)


def _backward_fake(grad, x, z, f, g, kind, k, epsilon, max_iter, threshold, squash, strict, backend):
    return torch.empty_like(x)


# the output, then the saved state ``z, f, g``; the input ``x`` is saved too
SINKHORN_OP = KernelOp("sinkhorn", _forward, _backward, forward_fake=_forward_fake, backward_fake=_backward_fake,
                       n_outputs=1, save_inputs=(0,))


def _run(kind, x, k, epsilon, max_iter, threshold, squash, backend, strict):
    max_iter = _validate(x, epsilon, max_iter, threshold, k if kind in ("topk", "mask") else None, strict)
    if backend == "auto":
        from ._dispatch import resolve_backend

        backend = resolve_backend(x, backend)
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch', 'triton' or 'auto', got {backend!r}")
    return _apply(kind, x, k, epsilon, max_iter, threshold, squash, backend, strict)


def _apply(kind, x, k, epsilon, max_iter, threshold, squash, backend, strict=False):
    """Operator ``kind`` on checked rows ``x [R, n]`` and parameters, for a resolved backend."""
    if kind == "mask" and k == x.shape[1]:
        # everything is in the top n: ones, a NaN anywhere in the row makes the row NaN (no gradient)
        finite_sum = torch.where(torch.isinf(x), torch.zeros_like(x), x).sum(-1, keepdim=True)
        return torch.ones_like(x) + 0 * finite_sum
    return SINKHORN_OP(x.contiguous(), kind, int(k or 0), float(epsilon), int(max_iter), float(threshold),
                       bool(squash), bool(strict), backend)


class Sinkhorn(RowsMethod):
    """Sinkhorn sorting (ott-jax's ``soft_sort``): parameters ``epsilon=1e-2`` (``1 / inverse_temperature``
    in the loss), ``max_iter=None`` (the automatic budget, :func:`auto_max_iter`: 2000 at ``epsilon >= 1e-2``,
    growing as ``1 / epsilon`` below), ``threshold=1e-3``, ``squash=True`` and ``strict=False`` (``True``:
    a row that does not converge raises :class:`SinkhornConvergenceError` instead of warning)."""

    defaults = {"epsilon": DEFAULT_EPSILON, "max_iter": None, "threshold": DEFAULT_THRESHOLD,
                "squash": True, "strict": False}
    kernels = ("triton",)
    #: handles ``+-inf`` itself (module docstring); ``fastsort.soft_sort`` writes the infinities back
    native_infinities = True

    def check(self, p):
        p["epsilon"] = as_positive(p["epsilon"], "epsilon")
        p["max_iter"] = check_max_iter(p["max_iter"], p["epsilon"])
        p["threshold"] = as_real(p["threshold"], "threshold")
        if not p["threshold"] > 0:
            raise ValueError(f"threshold must be a number > 0, got {p['threshold']!r}")
        p["squash"] = bool(p["squash"])
        p["strict"] = check_strict(p["strict"])
        return p

    def loss_params(self, inverse_temperature, distribution, art_lambda):
        return self.parse(dict(epsilon=1.0 / inverse_temperature))

    def _op(self, kind, x, k, p, backend):
        return _apply(kind, x, k, p["epsilon"], p["max_iter"], p["threshold"], p["squash"], backend, p["strict"])

    def sort(self, x, p, backend):
        return self._op("sort", x, None, p, backend)

    def rank(self, x, p, backend):
        return self._op("rank", x, None, p, backend)

    def permutation(self, x, p, backend):
        return self._op("perm", x, None, p, backend)

    def topk(self, x, k, p, backend):
        return self._op("topk", x, k, p, backend)

    def topk_mask(self, x, k, p, backend):
        return self._op("mask", x, k, p, backend)


def sinkhorn_sort(x, *, epsilon=DEFAULT_EPSILON, max_iter=None, threshold=DEFAULT_THRESHOLD,
                  squash=True, backend="torch", strict=False):
    """Soft sorted values ``[R, n]`` (ascending) of ``x`` ``[R, n]``: ``n T^T x``.

    ``epsilon``, ``threshold``, ``squash``: see the module docstring; ``max_iter=None`` is the automatic
    budget (:func:`auto_max_iter`). Rows that do not converge warn (:class:`SinkhornConvergenceWarning`)
    or, with ``strict=True``, raise :class:`SinkhornConvergenceError`. The other ``sinkhorn_*``
    functions take the same parameters.
    """
    return _run("sort", x, None, epsilon, max_iter, threshold, squash, backend, strict)


def sinkhorn_rank(x, *, epsilon=DEFAULT_EPSILON, max_iter=None, threshold=DEFAULT_THRESHOLD,
                  squash=True, backend="torch", strict=False):
    """Soft ranks ``[R, n]`` in ``[1, n]``, 1 = smallest (OTT's 0-based ranks + 1)."""
    return _run("rank", x, None, epsilon, max_iter, threshold, squash, backend, strict)


def sinkhorn_permutation(x, *, epsilon=DEFAULT_EPSILON, max_iter=None, threshold=DEFAULT_THRESHOLD,
                         squash=True, backend="torch", strict=False):
    """Soft permutation ``[R, n, n]``: row ``j`` = output position ``j`` (ascending), columns = inputs."""
    return _run("perm", x, None, epsilon, max_iter, threshold, squash, backend, strict)


def sinkhorn_topk(x, k, *, epsilon=DEFAULT_EPSILON, max_iter=None, threshold=DEFAULT_THRESHOLD,
                  squash=True, backend="torch", strict=False):
    """Top-k rows of the soft permutation ``[R, k, n]``: row ``r`` = rank ``r + 1`` (row 0 = largest).

    Uses ``k + 1`` targets with weights ``[(n-k)/n, 1/n, ..., 1/n]`` (``O(n k)`` per iteration).
    """
    return _run("topk", x, k, epsilon, max_iter, threshold, squash, backend, strict)


def sinkhorn_topk_mask(x, k, *, epsilon=DEFAULT_EPSILON, max_iter=None, threshold=DEFAULT_THRESHOLD,
                       squash=True, backend="torch", strict=False):
    """Soft probability ``[R, n]`` that each element is among the ``k`` largest (OTT's ``topk_mask``)."""
    return _run("mask", x, k, epsilon, max_iter, threshold, squash, backend, strict)
