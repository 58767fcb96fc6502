"""Sinkhorn sorting: soft sort, ranks, permutation, top-k and top-k mask.

Cuturi, Teboul and Vert, "Differentiable Ranks and Sorting using Optimal
Transport" (NeurIPS 2019). The semantics follow ``ott.tools.soft_sort`` of
ott-jax (``sort``, ``ranks``, ``topk_mask``); see SPEC.md, "Sinkhorn sorting".

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
from torch.autograd.function import once_differentiable

from ._cache import device_constant
from ._validate import as_int, as_positive, as_real

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

KINDS = ("sort", "rank", "perm", "topk", "mask")


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


def _target_weights(kind: str, n: int, k: int, dtype, device) -> torch.Tensor:
    """The target weights ``b`` (length ``m``) of an operator."""
    if kind == "topk" and k < n:
        b = torch.full((k + 1,), 1.0 / n, dtype=dtype, device=device)
        b[0] = (n - k) / n
        return b
    if kind == "mask":
        return torch.tensor([1.0 - k / n, k / n], dtype=dtype, device=device)
    return torch.full((n,), 1.0 / n, dtype=dtype, device=device)


_TARGETS = {}


def _target_tensors(kind: str, n: int, k: int, dtype, device):
    """``(b, t, log b in float32)`` of an operator, built once per device and dtype (a training step
    then sends nothing from the host)."""
    def build():
        b = _target_weights(kind, n, k, dtype, device)
        return b, _targets(b.shape[0], dtype, device), b.to(torch.float32).log()

    return device_constant(_TARGETS, (kind, n, k, dtype, str(device)), build, limit=1024)


def uses_sort_init(kind: str, k, n: int) -> bool:
    """OTT's full ``sort`` starts from the DualSort initialiser; ranks and top-k (k < n) from zero."""
    return kind in ("sort", "perm") or (kind == "topk" and k == n)


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


def _outputs_from_plan(kind, T, x, n, k):
    if kind == "sort":
        return n * torch.einsum("rij,ri->rj", T, x)
    if kind == "rank":
        r = torch.arange(T.shape[2], dtype=T.dtype, device=T.device)
        return n * (T @ r) + 1
    if kind == "perm":
        return n * T.transpose(1, 2)
    if kind == "topk":
        return n * T[:, :, T.shape[2] - k:].flip(-1).transpose(1, 2)
    if kind == "mask":
        return n * T[:, :, 1]
    raise ValueError(kind)


def _plan_cotangent(kind, grad, x, T, n, k):
    """``G = dL/dT`` [R, n, m] for an output cotangent ``grad``."""
    R, _, m = T.shape
    if kind == "sort":
        return n * x[:, :, None] * grad[:, None, :]
    if kind == "rank":
        r = torch.arange(m, dtype=T.dtype, device=T.device)
        return n * grad[:, :, None] * r
    if kind == "perm":
        return n * grad.transpose(1, 2)
    G = torch.zeros_like(T)
    if kind == "topk":
        G[:, :, m - k:] = n * grad.flip(1).transpose(1, 2)
    else:  # mask
        G[:, :, 1] = n * grad
    return G


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
    G = _plan_cotangent(kind, grad, x, T, n, k)
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
# autograd Function shared by both backends
# ----------------------------------------------------------------------------


def _n_targets(kind: str, n: int, k) -> int:
    """``m``, the number of target bins of an operator (the length of its ``b``)."""
    if kind == "topk" and k < n:
        return k + 1
    return 2 if kind == "mask" else n


def _backend_for(backend: str, kind: str, n: int, k) -> str:
    """The register-tile kernels hold a row's ``n x m`` plan: larger rows run on the torch reference."""
    if backend == "triton" and not _kernels().supports(n, _n_targets(kind, n, k)):
        return "torch"
    return backend


def _forward_impl(x, kind, k, epsilon, max_iter, threshold, squash, backend):
    """``(out, z, f, g, backend used)``: the operator's output, the squashed inputs and the potentials."""
    n = x.shape[1]
    b, t, logb = _target_tensors(kind, n, k, x.dtype, x.device)
    backend = _backend_for(backend, kind, n, k)
    if backend == "triton":
        out, z, f, g = _kernels().sinkhorn_forward(
            x, kind=kind, k=k, b=b, epsilon=epsilon, max_iter=max_iter, threshold=threshold, squash=squash,
            logb=logb,
        )
    else:
        z = squash_forward(x, squash)
        f0 = dualsort_init_torch(z, t) if uses_sort_init(kind, k, n) else None
        f, g, _ = sinkhorn_potentials_torch(z, t, b, epsilon, max_iter, threshold, f0)
        out = _outputs_from_plan(kind, _plan(z, t, f, g, epsilon), x, n, k)
    return out, z, f, g, backend


def _backward_impl(grad, x, z, f, g, kind, k, epsilon, squash, backend):
    """``dL/dx`` by implicit differentiation at the potentials ``f, g`` (``backend`` as used forward)."""
    n = x.shape[1]
    b, t, logb = _target_tensors(kind, n, k, x.dtype, x.device)
    grad = grad.contiguous()
    if backend == "triton":
        return _kernels().sinkhorn_backward(grad, x, z, f, g, b, kind=kind, k=k, epsilon=epsilon, squash=squash,
                                            logb=logb)
    return backward_torch(kind, grad, x, z, t, b, f, g, epsilon, n, k, squash)


class _SinkhornFunction(torch.autograd.Function):
    """Eager mode: one Function for both backends (``torch.compile`` uses the custom ops below)."""

    @staticmethod
    def forward(ctx, x, kind, k, epsilon, max_iter, threshold, squash, backend):
        out, z, f, g, backend = _forward_impl(x, kind, k, epsilon, max_iter, threshold, squash, backend)
        ctx.save_for_backward(x, z, f, g)
        ctx.cfg = (kind, k, epsilon, squash, backend)
        return out

    @staticmethod
    @once_differentiable  # the implicit backward is not itself differentiable: raise, never a silent 0
    def backward(ctx, grad):
        x, z, f, g = ctx.saved_tensors
        dx = _backward_impl(grad, x, z, f, g, *ctx.cfg)
        return dx, None, None, None, None, None, None, None


# The same computation as custom ops, for torch.compile: opaque to the tracer (the iterations stop
# on data-dependent convergence, and the Triton launchers pass raw addresses), with shapes from
# the fake implementations.  ``k = 0`` stands for "no k".


@torch.library.custom_op("fastsort::sinkhorn_forward", mutates_args=())
def _sinkhorn_forward_op(x: torch.Tensor, kind: str, k: int, epsilon: float, max_iter: int, threshold: float,
                         squash: bool, backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out, z, f, g, _ = _forward_impl(x, kind, k or None, epsilon, max_iter, threshold, squash, backend)
    # outputs may not alias the input (z is x itself without squashing) nor be views (the torch
    # path's plan columns are a transposed one)
    return out.contiguous(), (z.clone() if z is x else z), f, g


@_sinkhorn_forward_op.register_fake
def _(x, kind, k, epsilon, max_iter, threshold, squash, backend):
    R, n = x.shape
    m = _n_targets(kind, n, k or None)
    suffix = {"sort": (n,), "rank": (n,), "mask": (n,), "perm": (n, n), "topk": (k, n)}[kind]
    return x.new_empty((R,) + suffix), x.new_empty((R, n)), x.new_empty((R, n)), x.new_empty((R, m))


@torch.library.custom_op("fastsort::sinkhorn_backward", mutates_args=())
def _sinkhorn_backward_op(grad: torch.Tensor, x: torch.Tensor, z: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
                          kind: str, k: int, epsilon: float, squash: bool, backend: str) -> torch.Tensor:
    backend = _backend_for(backend, kind, x.shape[1], k or None)  # as the forward decided
    return _backward_impl(grad, x, z, f, g, kind, k or None, epsilon, squash, backend)


@_sinkhorn_backward_op.register_fake
def _(grad, x, z, f, g, kind, k, epsilon, squash, backend):
    return torch.empty_like(x)


def _sinkhorn_setup_context(ctx, inputs, output):
    x, kind, k, epsilon, max_iter, threshold, squash, backend = inputs
    _, z, f, g = output
    ctx.save_for_backward(x, z, f, g)
    ctx.cfg = (kind, k, epsilon, squash, backend)


def _sinkhorn_op_backward(ctx, grad, gz, gf, gg):
    x, z, f, g = ctx.saved_tensors
    return _sinkhorn_backward_op(grad, x, z, f, g, *ctx.cfg), None, None, None, None, None, None, None


_sinkhorn_forward_op.register_autograd(_sinkhorn_op_backward, setup_context=_sinkhorn_setup_context)


def _run(kind, x, k, epsilon, max_iter, threshold, squash, backend):
    _validate(x, epsilon, max_iter, threshold, k if kind in ("topk", "mask") else None)
    if backend == "auto":
        from ._dispatch import resolve_backend

        backend = resolve_backend(x, backend)
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch', 'triton' or 'auto', got {backend!r}")
    n = x.shape[1]
    if kind == "mask" and k == n:
        return torch.ones_like(x) + 0 * x  # everything is in the top n; NaN stays NaN
    if kind == "topk" and k == n:
        k = n  # full sort, m = n targets of weight 1/n
    x = x.contiguous()
    args = (kind, k, float(epsilon), int(max_iter), float(threshold), bool(squash), backend)
    if torch.compiler.is_compiling():
        return _sinkhorn_forward_op(x, kind, int(k or 0), *args[2:])[0]
    return _SinkhornFunction.apply(x, *args)


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
