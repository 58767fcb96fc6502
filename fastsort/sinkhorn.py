"""Sinkhorn sorting: soft sort, ranks, permutation, top-k and top-k mask.

Cuturi, Teboul and Vert, "Differentiable Ranks and Sorting using Optimal
Transport" (NeurIPS 2019). The semantics follow ``ott.tools.soft_sort`` of
ott-jax (``sort``, ``ranks``, ``topk_mask``); see docs/design.md, "Sinkhorn sorting".

Per row ``x`` of length ``n``:

* squash (``squash=True``): ``z = sigmoid((x - mean(x)) / (std(x) + 1e-10))``
  with the *population* standard deviation (``jnp.std``, ``ddof=0``, as OTT);
  ``squash=False`` uses ``z = x``;
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

``max_iter`` defaults to 2000, OTT's ``Sinkhorn.max_iterations``.

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
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from ._cache import device_constant
from ._kernel_op import KernelOp
from ._validate import as_int, as_positive, as_real
from .method import RowsMethod

__all__ = [
    "DEFAULT_MAX_ITER",
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

def _kernels():
    """The Triton kernels, imported lazily (no import-time side effect)."""
    from .kernels import sinkhorn as _ks

    return _ks


# ----------------------------------------------------------------------------
# validation and problem set-up
# ----------------------------------------------------------------------------


def _validate(x: torch.Tensor, epsilon, max_iter, threshold, k=None):
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [rows, n], got {getattr(x, 'shape', type(x))}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    as_positive(epsilon, "epsilon")
    if as_int(max_iter, "max_iter") < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not as_real(threshold, "threshold") > 0:
        raise ValueError(f"threshold must be a number > 0, got {threshold!r}")
    n = x.shape[1]
    if n < 1:
        raise ValueError("x must have at least one element per row (n >= 1)")
    if k is not None:
        if not (1 <= as_int(k, "k") <= n):
            raise ValueError(f"k must be an integer with 1 <= k <= n = {n}, got {k!r}")


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


def squash_forward(x: torch.Tensor, squash: bool) -> torch.Tensor:
    """``z = sigmoid((x - mean) / (std + 1e-10))`` per row (population std), or ``x``."""
    if not squash:
        return x
    mu = x.mean(-1, keepdim=True)
    sd = (x - mu).square().mean(-1, keepdim=True).sqrt()
    return torch.sigmoid((x - mu) / (sd + STD_EPS))


def squash_backward(x: torch.Tensor, z: torch.Tensor, dz: torch.Tensor, squash: bool) -> torch.Tensor:
    """Vector-Jacobian product of :func:`squash_forward` (std' taken as 0 where std = 0)."""
    if not squash:
        return dz
    n = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    sd = xc.square().mean(-1, keepdim=True).sqrt()
    s = sd + STD_EPS
    dy = dz * z * (1 - z)  # y = xc / s
    # y_i = xc_i / s:  dx = (dy - mean(dy)) / s - (sum_k dy_k xc_k / s^2) * dsd/dx
    dsd = torch.where(sd > 0, xc / (n * sd.clamp_min(torch.finfo(x.dtype).tiny)), torch.zeros_like(xc))
    return (dy - dy.mean(-1, keepdim=True)) / s - (dy * xc).sum(-1, keepdim=True) / (s * s) * dsd


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


def sinkhorn_potentials_torch(z, t, b, epsilon, max_iter, threshold, f0=None):
    """Log-domain Sinkhorn per row with per-row early stopping.

    ``z`` [R, n], ``t`` [m], ``b`` [m]. Returns ``f`` [R, n], ``g`` [R, m] and the
    number of iterations each row ran. Only the rows still running are computed
    in an iteration; the cost is recomputed from ``z`` and ``t`` each time.
    """
    R, n = z.shape
    m = t.shape[0]
    eps = float(epsilon)
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
        cost = (za[:, :, None] - t) ** 2  # [r, n, m], recomputed every iteration
        gn = eps * logb - eps * torch.logsumexp((fa[:, :, None] - cost) / eps, dim=1)
        if c > 0 and c % CHECK_EVERY == 0:
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
        fn = eps * loga - eps * torch.logsumexp((gn[:, None, :] - cost) / eps, dim=2)
        fa, ga = fn, gn
    if active.numel():
        f[active] = fa
        g[active] = ga
    return f, g, iters


def _plan(z, t, f, g, epsilon):
    """Transport plan ``T`` [R, n, m] from potentials (cost recomputed)."""
    cost = (z[:, :, None] - t) ** 2
    return torch.exp((f[:, :, None] + g[:, None, :] - cost) / epsilon)


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
    G = OPERATORS[kind].cotangent(grad, x, T, n, k)
    GT = G * T
    u, v = GT.sum(2), GT.sum(1)
    lam, mu = implicit_duals_torch(T, b, u, v)
    dC = T * (lam[:, :, None] + mu[:, None, :] - G) / epsilon
    dz = 2 * (z * dC.sum(2) - dC @ t)
    dx = squash_backward(x, z, dz, squash)
    if kind == "sort":
        dx = dx + n * (T @ grad[:, :, None])[:, :, 0]
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
             backend: str, need_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, z, f, g)``: the operator's output, the squashed inputs and the potentials (``k = 0``: no k)."""
    k = k or None
    n = x.shape[1]
    b, t, logb = _target_tensors(kind, n, k, x.dtype, x.device)
    if _backend_for(backend, kind, n, k) == "triton":
        out, z, f, g = _kernels().sinkhorn_fwd(x, kind=kind, k=k, b=b, epsilon=epsilon, max_iter=max_iter,
                                              threshold=threshold, squash=squash, logb=logb)
    else:
        z = squash_forward(x, squash)
        f0 = dualsort_init_torch(z, t) if uses_sort_init(kind, k, n) else None
        f, g, _ = sinkhorn_potentials_torch(z, t, b, epsilon, max_iter, threshold, f0)
        out = OPERATORS[kind].output(_plan(z, t, f, g, epsilon), x, n, k)
    # outputs may not alias the input (z is x itself without squashing) nor be views (the torch
    # path's plan columns are a transposed one)
    return out.contiguous(), (z.clone() if z is x else z), f, g


def _forward_fake(x, kind, k, epsilon, max_iter, threshold, squash, backend, need_grad):
    R, n = x.shape
    op = OPERATORS[kind]
    m = op.n_targets(n, k or None)
    return x.new_empty((R,) + op.out_suffix(n, k or None)), x.new_empty((R, n)), x.new_empty((R, n)), \
        x.new_empty((R, m))


def _backward(grad: torch.Tensor, x: torch.Tensor, z: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
              kind: str, k: int, epsilon: float, max_iter: int, threshold: float, squash: bool,
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


def _backward_fake(grad, x, z, f, g, kind, k, epsilon, max_iter, threshold, squash, backend):
    return torch.empty_like(x)


# the output, then the saved state ``z, f, g``; the input ``x`` is saved too
SINKHORN_OP = KernelOp("sinkhorn", _forward, _backward, forward_fake=_forward_fake, backward_fake=_backward_fake,
                       n_outputs=1, save_inputs=(0,))


def _run(kind, x, k, epsilon, max_iter, threshold, squash, backend):
    _validate(x, epsilon, max_iter, threshold, k if kind in ("topk", "mask") else None)
    if backend == "auto":
        from ._dispatch import resolve_backend

        backend = resolve_backend(x, backend)
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch', 'triton' or 'auto', got {backend!r}")
    return _apply(kind, x, k, epsilon, max_iter, threshold, squash, backend)


def _apply(kind, x, k, epsilon, max_iter, threshold, squash, backend):
    """Operator ``kind`` on checked rows ``x [R, n]`` and parameters, for a resolved backend."""
    if kind == "mask" and k == x.shape[1]:
        return torch.ones_like(x) + 0 * x  # everything is in the top n; NaN stays NaN
    return SINKHORN_OP(x.contiguous(), kind, int(k or 0), float(epsilon), int(max_iter), float(threshold),
                       bool(squash), backend)


class Sinkhorn(RowsMethod):
    """Sinkhorn sorting (ott-jax's ``soft_sort``): parameters ``epsilon=1e-2`` (``1 / inverse_temperature``
    in the loss), ``max_iter=2000``, ``threshold=1e-3``, ``squash=True``."""

    defaults = {"epsilon": DEFAULT_EPSILON, "max_iter": DEFAULT_MAX_ITER, "threshold": DEFAULT_THRESHOLD,
                "squash": True}
    kernels = ("triton",)

    def check(self, p):
        p["epsilon"] = as_positive(p["epsilon"], "epsilon")
        if p["max_iter"] is None:
            p["max_iter"] = DEFAULT_MAX_ITER
        p["max_iter"] = as_int(p["max_iter"], "max_iter")
        if p["max_iter"] < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {p['max_iter']!r}")
        p["threshold"] = as_real(p["threshold"], "threshold")
        if not p["threshold"] > 0:
            raise ValueError(f"threshold must be a number > 0, got {p['threshold']!r}")
        p["squash"] = bool(p["squash"])
        return p

    def loss_params(self, inverse_temperature, distribution, art_lambda):
        return self.parse(dict(epsilon=1.0 / inverse_temperature))

    def _op(self, kind, x, k, p, backend):
        return _apply(kind, x, k, p["epsilon"], p["max_iter"], p["threshold"], p["squash"], backend)

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


def sinkhorn_sort(x, *, epsilon=DEFAULT_EPSILON, max_iter=DEFAULT_MAX_ITER, threshold=DEFAULT_THRESHOLD,
                  squash=True, backend="torch"):
    """Soft sorted values ``[R, n]`` (ascending) of ``x`` ``[R, n]``: ``n T^T x``."""
    return _run("sort", x, None, epsilon, max_iter, threshold, squash, backend)


def sinkhorn_rank(x, *, epsilon=DEFAULT_EPSILON, max_iter=DEFAULT_MAX_ITER, threshold=DEFAULT_THRESHOLD,
                  squash=True, backend="torch"):
    """Soft ranks ``[R, n]`` in ``[1, n]``, 1 = smallest (OTT's 0-based ranks + 1)."""
    return _run("rank", x, None, epsilon, max_iter, threshold, squash, backend)


def sinkhorn_permutation(x, *, epsilon=DEFAULT_EPSILON, max_iter=DEFAULT_MAX_ITER, threshold=DEFAULT_THRESHOLD,
                         squash=True, backend="torch"):
    """Soft permutation ``[R, n, n]``: row ``j`` = output position ``j`` (ascending), columns = inputs."""
    return _run("perm", x, None, epsilon, max_iter, threshold, squash, backend)


def sinkhorn_topk(x, k, *, epsilon=DEFAULT_EPSILON, max_iter=DEFAULT_MAX_ITER, threshold=DEFAULT_THRESHOLD,
                  squash=True, backend="torch"):
    """Top-k rows of the soft permutation ``[R, k, n]``: row ``r`` = rank ``r + 1`` (row 0 = largest).

    Uses ``k + 1`` targets with weights ``[(n-k)/n, 1/n, ..., 1/n]`` (``O(n k)`` per iteration).
    """
    return _run("topk", x, k, epsilon, max_iter, threshold, squash, backend)


def sinkhorn_topk_mask(x, k, *, epsilon=DEFAULT_EPSILON, max_iter=DEFAULT_MAX_ITER, threshold=DEFAULT_THRESHOLD,
                       squash=True, backend="torch"):
    """Soft probability ``[R, n]`` that each element is among the ``k`` largest (OTT's ``topk_mask``)."""
    return _run("mask", x, k, epsilon, max_iter, threshold, squash, backend)
