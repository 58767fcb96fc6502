"""
Sinkhorn sorting in Triton
==========================

Fused kernels for the Sinkhorn soft sort / ranks / permutation / top-k of
``fastsort.sinkhorn`` (see that module and docs/design.md, "Sinkhorn sorting", for the
maths). This file is written in the literate style of Triton's tutorials.

Layout
------
One program owns a tile of ``ROWS`` rows. For each row, the ``n`` sources live
along axis 2 and the ``m`` targets along axis 1 of a ``[ROWS, BLOCK_M,
BLOCK_N]`` register tile (power-of-two blocks with masks). Several rows per
program keep the GPU busy when ``n`` is small (top-k has ``m = k + 1``).
Sources last: a thread then holds every target of its sources, so the sums
over targets stay in registers (docs/design.md, "Kernel design and the
measurements behind it").

* The cost ``C_ij = (z_i - t_j)^2`` is never stored: it is recomputed from the
  squashed inputs ``z`` (in registers) and the targets ``t_j = j / (m - 1)``
  (from the index) every time it is needed.
* All reductions accumulate in float32 (log-sum-exp with the max subtracted).
* Every row stops on its own: a converged row is masked out of the updates
  (``tl.where``) and the loop runs while any row of the tile is active.
* Below ``epsilon = 1e-2`` the iterations scale epsilon down from 1 to the
  target (``fastsort.sinkhorn.anneal_schedule``: iteration ``c < A`` at
  ``eps0 * decay^c``), in the log domain; the checks start after iteration ``A``.
* After the iterations the kernel writes each row's marginal error (the L1
  error of both marginals of the plan it reads the outputs from), which the
  caller turns into a warning or an error (``fastsort.sinkhorn.report_convergence``).
* The squash is scale-safe and skips infinities exactly as the torch reference
  (``_row_stats``: statistics over the entries that are not ``+-inf``, in units
  of the power of two at or below the row's largest magnitude).

Forward kernel: squash -> (DualSort init) -> Sinkhorn iterations -> outputs.

The iterations run in one of two exact reformulations of the same updates:

* **log domain** (always safe): ``g_j = eps log b_j - eps LSE_i (f_i - C_ij) / eps``
  and its twin for ``f``, an ``exp`` per plan entry and half-iteration;
* **scaling domain** (Cuturi 2013; OTT's ``lse_mode=False``): with
  ``K_ij = exp(-C_ij / eps)`` computed once, ``u = exp(f / eps)`` and
  ``v = exp(g / eps)``, the same updates read ``v_j = b_j / (K^T u)_j`` and
  ``u_i = a_i / (K v)_i``: two multiply-add sweeps per iteration and no ``exp``.

The scaling domain is used when ``max C_ij / eps <= SCALING_MAX`` (20: every
``K_ij >= exp(-20)``, so float32 keeps the sums well away from underflow),
else the log domain.  With squashed inputs ``C <= 1``, so the launcher decides
from ``epsilon`` alone (``DOMAIN`` 1 or 0: the kernel holds only one loop and
needs fewer registers); without squashing the kernel checks each tile's costs
(``DOMAIN`` 2).
Backward kernel: the implicit-differentiation system of the torch reference,
solved per row by conjugate gradients on the ``m x m`` Schur complement, all in
registers, then the chain rule to ``x``.

``_launch_config`` holds every launch heuristic; ``aot_variants`` lists the
compile variants for the shared ahead-of-time compile test.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import sinkhorn as _reference
from .launch import TL_DTYPES, address, aligned, as_pointer, cdiv, next_pow2, on_tensor_device
from .launch import num_warps as launch_num_warps

# The algorithm's constants are the torch reference's (one definition), as constexprs for the kernels.
CHECK_EVERY = tl.constexpr(_reference.CHECK_EVERY)
DUALSORT_MAX_ITER = tl.constexpr(_reference.DUALSORT_MAX_ITER)
DUALSORT_TOL = tl.constexpr(_reference.DUALSORT_TOL)
STD_EPS = tl.constexpr(_reference.STD_EPS)
# Largest register tile (ROWS * BLOCK_N * BLOCK_M elements) one program holds.
MAX_TILE = 16384
# Scaling-domain iterations when max C_ij / eps <= SCALING_MAX (see the module docstring).
SCALING_MAX = 20.0

# the operators' readout codes (``fastsort.sinkhorn.Operator.readout``)
OUT_SORT = tl.constexpr(_reference.OUT_SORT)
OUT_RANK = tl.constexpr(_reference.OUT_RANK)


# %%
# Shared helpers
# --------------
# The squash of one tile of rows, and the cost recomputed from ``z`` and ``t``.


@triton.jit
def _row_tile(R, n, m, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's rows and the masks of its ``[ROWS, BLOCK_N]`` inputs and ``[BLOCK_M]`` targets."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < R
    ii = tl.arange(0, BLOCK_N)
    jj = tl.arange(0, BLOCK_M)
    nmask = rmask[:, None] & (ii[None, :] < n)  # [ROWS, BLOCK_N]
    jmask = jj < m  # [BLOCK_M]
    return rows, rmask, ii, jj, nmask, jmask, rows.to(tl.int64)


@triton.jit
def _plan_columns(BASE, rows64, ii, jj, nmask, jmask, n, m, ncol, col0, FLIP: tl.constexpr):
    """Pointers and mask of the plan columns kept in an output ``[R, ncol, n]``:
    target ``j`` goes to column ``m - 1 - j`` (FLIP: top-k, largest first) or ``j - col0``."""
    if FLIP:
        col = m - 1 - jj
    else:
        col = jj - col0
    cmask = jmask & (col >= 0) & (col < ncol)
    ptr = BASE + rows64[:, None, None] * ncol * n + col[None, :, None] * n + ii[None, None, :]
    return ptr, nmask[:, None, :] & cmask[None, :, None]


@triton.jit
def _row_stats(x, nmask):
    """Per row, over the entries that are not ``+-inf`` (``keep``), in units of the power of two ``s`` at or
    below their largest magnitude (dividing by it is exact; 1 for a row of zeros or subnormals): the
    centred values ``xc``, their count ``nk`` (at least 1), ``sd`` and ``sc = sd + STD_EPS / s``, and the
    smallest / largest kept value ``lo`` / ``hi`` (0 when none), as ``fastsort.sinkhorn._squash_stats``."""
    pos = nmask & (x == float("inf"))
    neg = nmask & (x == float("-inf"))
    keep = nmask & (x != float("inf")) & (x != float("-inf"))
    amax = tl.max(tl.where(keep, tl.abs(x), 0.0), axis=1)
    s = (amax.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    s = tl.where(s > 0.0, s, 1.0)
    count = tl.sum(keep.to(tl.int32), axis=1)
    nk = tl.maximum(count, 1).to(tl.float32)
    xs = tl.where(keep, x / s[:, None], 0.0)
    mu = tl.sum(xs, axis=1) / nk
    xc = tl.where(keep, xs - mu[:, None], 0.0)
    sd = tl.sqrt(tl.sum(xc * xc, axis=1) / nk)
    sc = sd + STD_EPS / s
    lo = tl.where(count > 0, tl.min(tl.where(keep, x, float("inf")), axis=1), 0.0)
    hi = tl.where(count > 0, tl.max(tl.where(keep, x, float("-inf")), axis=1), 0.0)
    return keep, pos, neg, s, nk, xc, sd, sc, lo, hi


@triton.jit
def _squash(x, nmask, SQUASH: tl.constexpr):
    """``(z, xr)``: z = sigmoid((x - mean) / (std + STD_EPS)) per row (population std; ``+-inf`` at 1 / 0),
    or x itself (``+-inf`` at ``max(1, hi)`` / ``min(0, lo)``); xr = the values the sorted output reads
    (``+-inf`` as the largest / smallest finite value)."""
    keep, pos, neg, s, nk, xc, sd, sc, lo, hi = _row_stats(x, nmask)
    if SQUASH:
        z = tl.sigmoid(xc / sc[:, None])
        z = tl.where(pos, 1.0, tl.where(neg, 0.0, z))
    else:
        z = tl.where(pos, tl.maximum(hi, 1.0)[:, None], tl.where(neg, tl.minimum(lo, 0.0)[:, None], x))
    xr = tl.where(pos, hi[:, None], tl.where(neg, lo[:, None], x))
    return tl.where(nmask, z, 0.0), tl.where(nmask, xr, 0.0)


@triton.jit
def _still_active(active, c, err, threshold, anneal_iters):
    """Rows keep iterating until a check (every ``CHECK_EVERY`` iterations once epsilon scaling is
    over) finds their marginal error ``err`` below ``threshold`` (or NaN)."""
    check = (c > anneal_iters) & (c % CHECK_EVERY == 0)
    return active & ((check & ((err < threshold) | (err != err))) == 0)


@triton.jit
def _cost(z, t):
    d = z[:, None, :] - t[None, :, None]
    return d * d


# %%
# Forward kernel
# --------------


@triton.jit
def _sinkhorn_fwd_kernel(
    X, Z, F, G, OUT, LOGB, ERR,
    R, n, m, ncol, col0,
    eps, threshold, max_iter, scaling_max, eps0, ln_decay, anneal_iters,
    X_DTYPE: tl.constexpr, SQUASH: tl.constexpr, INIT_SORT: tl.constexpr, OUT_KIND: tl.constexpr, FLIP: tl.constexpr,
    DOMAIN: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # tensors arrive as addresses (fastsort.kernels.launch)
    X, Z, F, G = as_pointer(X, X_DTYPE), as_pointer(Z, tl.float32), as_pointer(F, tl.float32), \
        as_pointer(G, tl.float32)
    OUT, LOGB, ERR = as_pointer(OUT, tl.float32), as_pointer(LOGB, tl.float32), as_pointer(ERR, tl.float32)
    rows, rmask, ii, jj, nmask, jmask, rows64 = _row_tile(R, n, m, ROWS, BLOCK_N, BLOCK_M)

    # -- load and squash the rows; keep z for the backward pass
    x = tl.load(X + rows64[:, None] * n + ii[None, :], mask=nmask, other=0.0).to(tl.float32)
    z, xr = _squash(x, nmask, SQUASH)
    tl.store(Z + rows64[:, None] * n + ii[None, :], z, mask=nmask)

    # -- targets t_j = linspace(0, 1, m) and log weights
    t = jj.to(tl.float32) / tl.maximum(m - 1, 1).to(tl.float32)
    logb = tl.load(LOGB + jj, mask=jmask, other=0.0)
    bw = tl.where(jmask, tl.exp(logb), 0.0)
    loga = -tl.log(n.to(tl.float32))
    cost = _cost(z, t)                                   # recomputed from z, t
    f = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)

    # -- DualSort initialisation of f (OTT's SortingInitializer, m == n only):
    #    f_i <- min_j (C_ij - C_jj + f_j), while sum (df)^2 > tol, at most 100 times.
    if INIT_SORT:
        eye = jj[:, None] == ii[None, :]                 # [BLOCK_M, BLOCK_N]
        ds_active = rmask
        it = 0
        while (it < DUALSORT_MAX_ITER) & (tl.sum(ds_active.to(tl.int32), axis=0) > 0):
            diag = tl.sum(tl.where(eye[None, :, :], cost, 0.0), axis=2)      # C_jj  [ROWS, BLOCK_M]
            fj = tl.sum(tl.where(eye[None, :, :], f[:, None, :], 0.0), axis=2)  # f_j
            cand = cost - diag[:, :, None] + fj[:, :, None]
            cand = tl.where(jmask[None, :, None], cand, float("inf"))
            nf = tl.min(cand, axis=1)
            diff = tl.sum(tl.where(nmask, (nf - f) * (nf - f), 0.0), axis=1)
            f = tl.where(ds_active[:, None] & nmask, nf, f)
            ds_active = ds_active & (diff > DUALSORT_TOL)
            it += 1
        fmean = tl.sum(tl.where(nmask, f, 0.0), axis=1) / n
        f = tl.where(nmask, f - fmean[:, None], 0.0)

    # -- Sinkhorn iterations: g update, (error check), f update
    g = tl.zeros((ROWS, BLOCK_M), dtype=tl.float32)
    active = rmask
    c = 0
    valid = nmask[:, None, :] & jmask[None, :, None]
    if DOMAIN == 2:  # decided per tile from its costs
        cmax = tl.max(tl.max(tl.where(valid, cost, 0.0), axis=1), axis=1)
        scaling = tl.max(cmax, axis=0) <= scaling_max * eps
    else:  # decided by the launcher (squashed inputs: C <= 1)
        scaling: tl.constexpr = DOMAIN == 1
    if scaling:
        # scaling domain: K once, then only multiply-adds (the same iterates as below)
        K = tl.where(valid, tl.exp(-cost / eps), 0.0)
        u = tl.where(nmask, tl.exp(f / eps), 0.0)
        v = tl.where(jmask[None, :], 1.0, 0.0) + g
        a = 1.0 / n.to(tl.float32)
        bmask = rmask[:, None] & jmask[None, :]
        while (c < max_iter) & (tl.sum(active.to(tl.int32), axis=0) > 0):
            Ktu = tl.sum(K * u[:, None, :], axis=2)
            vn = tl.where(bmask, bw[None, :] / tl.where(bmask, Ktu, 1.0), 0.0)
            # column marginal of the current (u, v): v_j (K^T u)_j
            err = tl.sum(tl.where(jmask[None, :], tl.abs(v * Ktu - bw[None, :]), 0.0), axis=1)
            active = _still_active(active, c, err, threshold, anneal_iters)
            Kv = tl.sum(K * vn[:, :, None], axis=1)
            un = tl.where(nmask, a / tl.where(nmask, Kv, 1.0), 0.0)
            v = tl.where(active[:, None], vn, v)
            u = tl.where(active[:, None] & nmask, un, u)
            c += 1
        f = tl.where(nmask, eps * tl.log(tl.where(nmask, u, 1.0)), 0.0)
        g = tl.where(bmask, eps * tl.log(tl.where(bmask, v, 1.0)), 0.0)
        # the plan T_ij = u_i K_ij v_j (scaled by n); `cost` is dead after K: fewer registers
        plan = u[:, None, :] * K * v[:, :, None] * n
    else:
        while (c < max_iter) & (tl.sum(active.to(tl.int32), axis=0) > 0):
            # this iteration's epsilon: eps0 decay^c while scaling epsilon down (c < anneal_iters), then eps
            ce = tl.where(c < anneal_iters, eps0 * tl.exp(c.to(tl.float32) * ln_decay), eps)
            # g_j = eps log b_j - eps LSE_i (f_i - C_ij) / eps   (padded sources masked out)
            s = (f[:, None, :] - cost) / ce
            s = tl.where((ii < n)[None, None, :], s, float("-inf"))
            smax = tl.max(s, axis=2)
            lse = smax + tl.log(tl.sum(tl.exp(s - smax[:, :, None]), axis=2))
            gn = ce * logb[None, :] - ce * lse
            # column-marginal L1 error of the current state: b_j exp((g_j - gn_j)/eps) (read at checks only)
            marg = bw[None, :] * tl.exp((g - gn) / eps)
            err = tl.sum(tl.where(jmask[None, :], tl.abs(marg - bw[None, :]), 0.0), axis=1)
            active = _still_active(active, c, err, threshold, anneal_iters)
            # f_i = eps log a_i - eps LSE_j (g_j - C_ij) / eps   (padded targets masked out)
            s = (gn[:, :, None] - cost) / ce
            s = tl.where(jmask[None, :, None], s, float("-inf"))
            smax = tl.max(s, axis=1)
            lse = smax + tl.log(tl.sum(tl.exp(s - smax[:, None, :]), axis=1))
            fn = ce * loga - ce * lse
            g = tl.where(active[:, None], gn, g)
            f = tl.where(active[:, None] & nmask, fn, f)
            c += 1
        # the plan T_ij = exp((f_i + g_j - C_ij) / eps), scaled by n
        plan = tl.where(valid, tl.exp((f[:, None, :] + g[:, :, None] - cost) / eps), 0.0) * n

    tl.store(F + rows64[:, None] * n + ii[None, :], f, mask=nmask)
    gmask = rmask[:, None] & jmask[None, :]
    tl.store(G + rows64[:, None] * m + jj[None, :], g, mask=gmask)

    # -- the marginal error of the plan the outputs read: sum_j |T^T 1 - b|_j + sum_i |T 1 - 1/n|_i
    inv_n = 1.0 / n.to(tl.float32)
    col_err = tl.where(jmask[None, :], tl.abs(tl.sum(plan, axis=2) * inv_n - bw[None, :]), 0.0)
    row_err = tl.where(nmask, tl.abs(tl.sum(plan, axis=1) * inv_n - inv_n), 0.0)
    tl.store(ERR + rows64, tl.sum(col_err, axis=1) + tl.sum(row_err, axis=1), mask=rmask)

    # -- outputs from the plan n T
    if OUT_KIND == OUT_SORT:
        # sorted values  n T^T x  -> [R, m]  (x with +-inf read as the finite extremes)
        sv = tl.sum(plan * xr[:, None, :], axis=2)
        tl.store(OUT + rows64[:, None] * m + jj[None, :], sv, mask=gmask)
    elif OUT_KIND == OUT_RANK:
        # ranks  n T [0..m-1] + 1 -> [R, n]
        rk = tl.sum(plan * jj.to(tl.float32)[None, :, None], axis=1) + 1.0
        tl.store(OUT + rows64[:, None] * n + ii[None, :], rk, mask=nmask)
    else:
        # plan columns -> OUT[r, col, i]; col = m-1-j (FLIP) or j - col0
        ptr, pmask = _plan_columns(OUT, rows64, ii, jj, nmask, jmask, n, m, ncol, col0, FLIP)
        tl.store(ptr, plan, mask=pmask)


# %%
# Backward kernel
# ---------------
# With T recomputed once in registers and G = dL/dT built from the output
# cotangent, solve (diag(b) - n T^T T + 11^T/m) mu = v - n T^T u by conjugate
# gradients (the Schur complement of the implicit system; see
# fastsort/sinkhorn.py), lam = n (u - T mu), dC = T (lam + mu - G) / eps,
# dz = 2 sum_j dC_ij (z_i - t_j), then the squash's chain rule.


@triton.jit
def _sinkhorn_bwd_kernel(
    DOUT, X, Z, F, G, LOGB, DX,
    R, n, m, ncol, col0,
    eps, cg_iters,
    SQUASH: tl.constexpr, OUT_KIND: tl.constexpr, FLIP: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    DOUT, X, Z, F = as_pointer(DOUT, tl.float32), as_pointer(X, tl.float32), as_pointer(Z, tl.float32), \
        as_pointer(F, tl.float32)
    G, LOGB, DX = as_pointer(G, tl.float32), as_pointer(LOGB, tl.float32), as_pointer(DX, tl.float32)
    rows, rmask, ii, jj, nmask, jmask, rows64 = _row_tile(R, n, m, ROWS, BLOCK_N, BLOCK_M)
    gmask = rmask[:, None] & jmask[None, :]
    valid = nmask[:, None, :] & jmask[None, :, None]
    nf = n.to(tl.float32)

    x = tl.load(X + rows64[:, None] * n + ii[None, :], mask=nmask, other=0.0).to(tl.float32)
    z = tl.load(Z + rows64[:, None] * n + ii[None, :], mask=nmask, other=0.0)
    f = tl.load(F + rows64[:, None] * n + ii[None, :], mask=nmask, other=0.0)
    g = tl.load(G + rows64[:, None] * m + jj[None, :], mask=gmask, other=0.0)
    t = jj.to(tl.float32) / tl.maximum(m - 1, 1).to(tl.float32)
    bw = tl.where(jmask, tl.exp(tl.load(LOGB + jj, mask=jmask, other=0.0)), 0.0)
    jf = jj.to(tl.float32)

    cost = _cost(z, t)
    T = tl.where(valid, tl.exp((f[:, None, :] + g[:, :, None] - cost) / eps), 0.0)
    keep, pos, neg, s, nk, xc, sd, sc, lo, hi = _row_stats(x, nmask)

    # -- G = dL/dT from the output cotangent; for the sorted values in units of the row scale s (the
    #    system is linear in G: this keeps the conjugate gradients' squares in range for |x| ~ 1e30)
    if OUT_KIND == OUT_SORT:
        ds = tl.load(DOUT + rows64[:, None] * m + jj[None, :], mask=gmask, other=0.0).to(tl.float32)
        xr = tl.where(pos, hi[:, None], tl.where(neg, lo[:, None], x))  # what the sorted values read
        Gc = nf * (xr / s[:, None])[:, None, :] * ds[:, :, None]
        gunit = s
    elif OUT_KIND == OUT_RANK:
        dr = tl.load(DOUT + rows64[:, None] * n + ii[None, :], mask=nmask, other=0.0).to(tl.float32)
        Gc = nf * dr[:, None, :] * jf[None, :, None]
        gunit = tl.full((ROWS,), 1.0, dtype=tl.float32)
    else:
        ptr, pmask = _plan_columns(DOUT, rows64, ii, jj, nmask, jmask, n, m, ncol, col0, FLIP)
        Gc = nf * tl.load(ptr, mask=pmask, other=0.0).to(tl.float32)
        gunit = tl.full((ROWS,), 1.0, dtype=tl.float32)
    Gc = tl.where(valid, Gc, 0.0)
    GT = Gc * T
    u = tl.sum(GT, axis=1)                       # [ROWS, BLOCK_N]
    v = tl.sum(GT, axis=2)                       # [ROWS, BLOCK_M]

    # -- conjugate gradients on S mu = rhs, S = diag(b) - n T^T T + 11^T / m
    rhs = v - nf * tl.sum(T * u[:, None, :], axis=2)
    rhs = tl.where(gmask, rhs, 0.0)
    inv_m = 1.0 / m.to(tl.float32)
    mu = tl.zeros((ROWS, BLOCK_M), dtype=tl.float32)
    r = rhs
    p = r
    rr = tl.sum(r * r, axis=1)
    tol = 1e-12 * tl.sum(rhs * rhs, axis=1)
    # stops once every row of the tile has converged (the iterations after that were no-ops)
    it = 0
    while (it < cg_iters) & (tl.sum((rr > tol).to(tl.int32), axis=0) > 0):
        it += 1
        Tp = tl.sum(T * p[:, :, None], axis=1)
        Sp = bw[None, :] * p - nf * tl.sum(T * Tp[:, None, :], axis=2) + tl.sum(p, axis=1)[:, None] * inv_m
        Sp = tl.where(gmask, Sp, 0.0)
        pSp = tl.sum(p * Sp, axis=1)
        go = rr > tol
        alpha = tl.where(go & (pSp > 0), rr / tl.where(pSp > 0, pSp, 1.0), 0.0)
        mu = mu + alpha[:, None] * p
        r = r - alpha[:, None] * Sp
        rr_new = tl.sum(r * r, axis=1)
        beta = tl.where(go, rr_new / tl.where(rr > 0, rr, 1.0), 0.0)
        p = tl.where(go[:, None], r + beta[:, None] * p, p)
        rr = tl.where(go, rr_new, rr)
    lam = nf * (u - tl.sum(T * mu[:, :, None], axis=1))

    # -- dC, dz, squash chain rule
    dC = T * (lam[:, None, :] + mu[:, :, None] - Gc) / eps
    dC = tl.where(valid, dC, 0.0)
    dz = 2.0 * (z * tl.sum(dC, axis=1) - tl.sum(dC * t[None, :, None], axis=1))
    dz = tl.where(nmask, dz, 0.0)
    if SQUASH:
        # over the kept entries, in units of s (as the forward's squash): dx = dxs / s, 0 at +-inf
        dy = tl.where(keep, dz * z * (1.0 - z), 0.0)
        dsd = tl.where(sd[:, None] > 0, xc / (nk * tl.where(sd > 0, sd, 1.0))[:, None], 0.0)
        dxs = (dy - (tl.sum(dy, axis=1) / nk)[:, None]) / sc[:, None] \
            - (tl.sum(dy * xc, axis=1) / (sc * sc))[:, None] * dsd
        dx = tl.where(keep, dxs * (gunit / s)[:, None], 0.0)
    else:
        dx = tl.where(keep, dz * gunit[:, None], 0.0)
    if OUT_KIND == OUT_SORT:
        # the direct term n T ds; an infinity's share goes to the finite extreme it reads (split among ties)
        dxr = nf * tl.sum(T * ds[:, :, None], axis=1)
        at_hi = keep & (x == hi[:, None])
        at_lo = keep & (x == lo[:, None])
        hi_share = tl.sum(tl.where(pos, dxr, 0.0), axis=1) / tl.maximum(tl.sum(at_hi.to(tl.float32), axis=1), 1.0)
        lo_share = tl.sum(tl.where(neg, dxr, 0.0), axis=1) / tl.maximum(tl.sum(at_lo.to(tl.float32), axis=1), 1.0)
        dx = dx + tl.where(keep, dxr, 0.0) + tl.where(at_hi, hi_share[:, None], 0.0) \
            + tl.where(at_lo, lo_share[:, None], 0.0)
    tl.store(DX + rows64[:, None] * n + ii[None, :], dx, mask=nmask)


# %%
# Launch heuristics
# -----------------


def _launch_config(n: int, m: int):
    """(ROWS, BLOCK_N, BLOCK_M, num_warps) for a row length ``n`` and ``m`` targets."""
    block_n = next_pow2(max(n, 2))
    block_m = next_pow2(max(m, 2))
    tile = block_n * block_m
    if tile > MAX_TILE:
        raise ValueError(
            f"sinkhorn Triton kernels hold a row's n x m = {n} x {m} plan in registers "
            f"(at most {MAX_TILE} elements after padding to powers of two); use backend='torch'"
        )
    rows = max(1, min(32, 4096 // tile))
    # ~16 elements per thread, 4 to 16 warps: fewer registers per thread and more warps per SM;
    # 32 warps would make the backward spill at the largest tile (docs/design.md, "Kernel design and the measurements behind it")
    num_warps = max(4, launch_num_warps(rows * tile, 16, max_per_thread=32))
    return rows, block_n, block_m, num_warps


def supports(n: int, m: int) -> bool:
    """Whether the register-tile kernels handle a row of ``n`` inputs and ``m`` targets."""
    return next_pow2(max(n, 2)) * next_pow2(max(m, 2)) <= MAX_TILE


@on_tensor_device
def sinkhorn_fwd(x, *, kind, k, b, epsilon, max_iter, threshold, squash, out=None, logb=None):
    """Run the fused forward. Returns ``(out, z, f, g, err)`` (``err [R]``: each row's plan marginal
    error, float32); ``out`` may be passed pre-allocated, ``logb`` (float32 ``log b``) precomputed."""
    R, n = x.shape
    m = b.shape[0]
    rows, block_n, block_m, num_warps = _launch_config(n, m)
    op = _reference.OPERATORS[kind]
    out_kind, flip, ncol, col0 = op.readout(n, k)
    suffix = op.out_suffix(n, k)
    dev = x.device
    xf = aligned(x)
    z = torch.empty(R, n, device=dev, dtype=torch.float32)
    f = torch.empty(R, n, device=dev, dtype=torch.float32)
    g = torch.empty(R, m, device=dev, dtype=torch.float32)
    err = torch.empty(R, device=dev, dtype=torch.float32)
    if out is None:
        out = torch.empty((R,) + suffix, device=dev, dtype=torch.float32)
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError("out must be a contiguous float32 tensor")
    logb = aligned(b.to(torch.float32).log() if logb is None else logb)
    grid = (cdiv(R, rows),)
    eps0, anneal_iters = _reference.anneal_schedule(epsilon)
    if R > 0:
        # squashed inputs give costs <= 1: the iteration domain follows from epsilon alone; epsilon
        # scaling runs in the log domain
        domain = (1 if 1.0 <= SCALING_MAX * float(epsilon) else 0) if squash else 2
        if anneal_iters:
            domain = 0
        _sinkhorn_fwd_kernel[grid](
            address(xf), address(z), address(f), address(g), address(out), address(logb), address(err),
            R, n, m, ncol, col0, float(epsilon), float(threshold), int(max_iter), float(SCALING_MAX),
            float(eps0), math.log(_reference.ANNEAL_DECAY), int(anneal_iters),
            X_DTYPE=TL_DTYPES[xf.dtype], SQUASH=bool(squash), INIT_SORT=_reference.uses_sort_init(kind, k, n),
            OUT_KIND=out_kind, FLIP=flip,
            DOMAIN=domain, ROWS=rows, BLOCK_N=block_n, BLOCK_M=block_m, num_warps=num_warps,
        )
    dt = x.dtype
    return out.to(dt), z.to(dt), f.to(dt), g.to(dt), err


@on_tensor_device
def sinkhorn_bwd(grad, x, z, f, g, b, *, kind, k, epsilon, squash, logb=None):
    """Fused implicit backward; returns ``dL/dx`` (dtype of ``x``)."""
    R, n = x.shape
    m = b.shape[0]
    rows, block_n, block_m, num_warps = _launch_config(n, m)
    out_kind, flip, ncol, col0 = _reference.OPERATORS[kind].readout(n, k)
    dx = torch.empty(R, n, device=x.device, dtype=torch.float32)
    logb = aligned(b.to(torch.float32).log() if logb is None else logb)
    # float32 copies only where needed; kept in locals until the launch returns (addresses)
    grad, x32, z, f, g = (aligned(a.to(torch.float32)) for a in (grad, x, z, f, g))
    grid = (cdiv(R, rows),)
    if R > 0:
        _sinkhorn_bwd_kernel[grid](
            address(grad), address(x32), address(z), address(f), address(g), address(logb), address(dx),
            R, n, m, ncol, col0,
            float(epsilon), int(2 * m + 10),
            SQUASH=bool(squash), OUT_KIND=out_kind, FLIP=flip,
            ROWS=rows, BLOCK_N=block_n, BLOCK_M=block_m, num_warps=num_warps,
        )
    return dx.to(x.dtype)


# %%
# Ahead-of-time compile variants
# ------------------------------


def aot_variants():
    """Every constexpr variant the launchers use, with representative block shapes."""
    fwd_sig = {
        "X": "i64", "Z": "i64", "F": "i64", "G": "i64", "OUT": "i64", "LOGB": "i64", "ERR": "i64",
        "R": "i32", "n": "i32", "m": "i32", "ncol": "i32", "col0": "i32",
        "eps": "fp32", "threshold": "fp32", "max_iter": "i32", "scaling_max": "fp32",
        "eps0": "fp32", "ln_decay": "fp32", "anneal_iters": "i32",
    }
    bwd_sig = {
        "DOUT": "i64", "X": "i64", "Z": "i64", "F": "i64", "G": "i64", "LOGB": "i64", "DX": "i64",
        "R": "i32", "n": "i32", "m": "i32", "ncol": "i32", "col0": "i32", "eps": "fp32", "cg_iters": "i32",
    }
    fwd_const = ("X_DTYPE", "SQUASH", "INIT_SORT", "OUT_KIND", "FLIP", "DOMAIN", "ROWS", "BLOCK_N", "BLOCK_M")
    bwd_const = ("SQUASH", "OUT_KIND", "FLIP", "ROWS", "BLOCK_N", "BLOCK_M")
    # (kind, n, k) -> (OUT_KIND, FLIP, INIT_SORT, m)
    cases = [("sort", 33, None), ("rank", 33, None), ("perm", 16, None), ("topk", 100, 5), ("topk", 8, 8),
             ("mask", 100, 5), ("topk", 4096, 1)]
    variants = []
    for kind, n, k in cases:
        op = _reference.OPERATORS[kind]
        rows, bn, bm, _ = _launch_config(n, op.n_targets(n, k))
        out_kind, flip, _, _ = op.readout(n, k)
        for squash in (True, False):
            tag = f"{kind}_n{n}_k{k}_{'sq' if squash else 'nosq'}"
            # squashed: the log or scaling domain from epsilon; unsquashed: per tile (2), or the log domain
            # (0) while epsilon scaling
            for domain in ((0, 1) if squash else (0, 2)):
                cf = dict(zip(fwd_const, (tl.float32, squash, _reference.uses_sort_init(kind, k, n), out_kind, flip,
                                          domain, rows, bn, bm)))
                variants.append((f"sinkhorn_fwd_{tag}_domain{domain}", _sinkhorn_fwd_kernel,
                                 {**fwd_sig, **{c: "constexpr" for c in fwd_const}}, cf))
            cb = dict(zip(bwd_const, (squash, out_kind, flip, rows, bn, bm)))
            variants.append((f"sinkhorn_bwd_{tag}", _sinkhorn_bwd_kernel,
                             {**bwd_sig, **{c: "constexpr" for c in bwd_const}}, cb))
    return variants
