"""Fused top-k cross-entropy of NeuralSort and SoftSort on the CPU (numba): one pass per row.

The networks' fused loss (:mod:`fastsort.kernels.cpu_topk_loss`) for the two
methods whose relaxed permutation is a stack of softmax rows (docs/design.md,
"Top-k cross-entropy and preselection" and "NeuralSort and SoftSort"), under
the same launcher contract: ``out [B, 1 + m]`` (the loss, then its gradient
w.r.t. the ``m`` wires) and ``idx [B, m]`` (the wires' columns), which
:func:`~fastsort.kernels.cpu_topk_loss.topk_ce_bwd` scatters into the dense
``dlogits`` (its GPU twin: :func:`fastsort.kernels.topk_loss.rows_ce_fwd`, the same
math).  Per row of ``logits [B, C]``, with ``c = 1 / tau`` and ``K`` rank
weights ``c_r``:

1. **Preselection**: the networks' (:func:`~fastsort.kernels.cpu_topk_loss._preselect`):
   wire 0 the label's logit, wires ``1 .. m - 1`` the ``m - 1`` largest others.
2. **The ``R = min(K, n_f)`` rows of ``P``** over the ``n_f`` finite wires
   (``-inf`` wires are masked classes: weight 0 in those rows, as the torch
   path's), in one ``[(1 + K), m]`` block of float32 logits whose exponential
   runs at once (SoftSort's vectorising :func:`~fastsort.kernels.cpu_softsort.exp_nonpositive_row`);
   block row 0 is the softmax over the wires of ``top1_mode``:

   * NeuralSort: ``z_rj = c ((n_f - 1 - 2 r) s_j - a_j)``, ``a_j = sum_l |s_j - s_l|``
     over the finite wires (packed in front; ``O(n_f)`` from their decreasing order,
     which the preselection already gives apart from the label's wire:
     :func:`_sorted_abs_sums`, float64 sums, stored float32), less the row maximum;
   * SoftSort: ``z_rj = -c |t_r - s_j|`` with ``t`` the wires in decreasing order
     (wire 0 placed among the already ordered others; its maximum, 0, needs no pass).

   Ranks ``r >= n_f`` spread evenly over the ``-inf`` wires (their limit): the
   label gets ``1 / n_neg`` there when it is masked itself, 0 otherwise, with no
   gradient.
3. **The loss** ``q_net = sum_r c_r P[r, 0]`` through :func:`~fastsort.kernels.cpu_topk_loss.loss_terms`
   (the networks' ``top1_mode`` terms), and its **gradient w.r.t. the wires**:
   ``w_rj = g_q c_r P_r0 ([j = 0] - P_rj)`` (``dloss/dz_rj``), then

   * NeuralSort: ``ds_l = c (sum_r (n_f - 1 - 2 r) w_rl - sum_j sign(s_l - s_j) (W_l + W_j))``,
     ``W_j = sum_r w_rj`` (the derivative of ``a`` with ``sign(0) = 0``, in ``O(n_f)``
     from the same order, runs of tied wires together: :func:`_sorted_sign_sums`;
     tied wires get equal gradients);
   * SoftSort: ``ds_j += c w_rj sign(t_r - s_j)``, and their sum leaves the wire
     that ``t_r`` came from;

   plus the softmax terms of ``top1_mode``; ``-inf`` wires get none through
   the rows.

A row holding NaN or ``+inf`` among its wires (preselection ranks NaN above
every number and ``+inf`` above every finite value, so they are there when the
row has them), or an out-of-range label, gets a NaN loss and gradient, as the
torch path.  Arithmetic is float64 apart from the float32 logits, NeuralSort's ``a_j`` and
the exponential of the block; the loss and gradient are stored as float32.
One row is ~16 x (1 + K) exponentials and ``O(m K)`` other work (the sorted sign sums: 553 against
571-583 us for the launcher with the ``O(m^2)`` ones, ``[500, 1000]``, ``m = 16``, one thread); the
preselection's pass over the ``C`` logits dominates at ``C = 1000``.
"""
from __future__ import annotations

import math
from typing import Optional

import numba
import numpy as np
import torch

from .cpu_network import run_parallel
from .cpu_softsort import exp_nonpositive_row
from .cpu_topk_loss import MODE_CODES, _dense_rows, _dense_view, _preselect, loss_terms

__all__ = ["DENSE_GRADIENT", "KIND_CODES", "rows_ce_fwd"]

#: the forward fills the dense gradient itself, as the networks' CPU kernel (its ``DENSE_GRADIENT``)
DENSE_GRADIENT = True
#: the method -> the kernel's integer code
KIND_CODES = {"neuralsort": 0, "softsort": 1}
#: reassociation lets the row sums vectorise (no assumption about NaN or infinities: the kernel routes them)
_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})


@numba.njit(inline="always", **_JIT)
def _wire_order(fs, nf, lab, so):
    """``so[:nf]`` = the packed finite wires ``fs[:nf]`` in decreasing order: they are already, apart
    from the label's (``lab``: it is finite and ``fs[0]``), which goes after the others above it."""
    if not lab:
        for i in range(nf):
            so[i] = i
        return
    p = 1
    while p < nf and fs[p] > fs[0]:
        p += 1
    for i in range(1, p):
        so[i - 1] = i
    so[p - 1] = 0
    for i in range(p, nf):
        so[i] = i


@numba.njit(inline="always", **_JIT)
def _sorted_abs_sums(fs, nf, so, fa, c):
    """``fa[i] = c sum_l |s_i - s_l|`` over the packed wires ``s = fs[:nf]`` (float64, stored float32) in
    ``O(n_f)`` from their decreasing order ``so``: at sorted position ``q``, with ``u = s - min(s) >= 0``,
    ``sum_l |u_q - u_l| = 2 U_q + (n_f - 2 q) u_q - U`` (``U_q`` the sum of ``u`` over the positions
    before ``q``, ``U`` over all; equal wires get equal sums).  The shift by the minimum keeps the
    cancellation to the row's spread, not its magnitude (the ``O(n_f^2)`` direct sum,
    :func:`~fastsort.kernels.cpu_neuralsort._abs_sums`, agrees to float32 rounding; the tests compare it)."""
    if nf == 0:
        return
    lo = np.float64(fs[so[nf - 1]])
    tot = 0.0
    for i in range(nf):
        tot += np.float64(fs[i]) - lo
    run = 0.0
    for q in range(nf):
        i = so[q]
        u = np.float64(fs[i]) - lo
        fa[i] = np.float32(c * (2.0 * run + (nf - 2 * q) * u - tot))
        run += u


@numba.njit(inline="always", **_JIT)
def _sorted_sign_sums(fs, nf, so, dv, h, fds):
    """``fds[i] = dv[i] + sum_l sign(s_i - s_l) (h_i + h_l)`` (float64, stored float32; ``sign(0) = 0``) in
    ``O(n_f)`` from the decreasing order ``so``: for a run of equal wires at sorted positions
    ``g0 .. g1``, ``G = g0`` wires are above, ``L = n_f - 1 - g1`` below, and the sum is
    ``h_i (L - G) + H_below - H_above`` (the sums of ``h`` over those wires)."""
    total = 0.0
    for i in range(nf):
        total += h[i]
    above = 0.0
    q = 0
    while q < nf:
        v = fs[so[q]]
        g1 = q
        run = h[so[q]]
        while g1 + 1 < nf and fs[so[g1 + 1]] == v:
            g1 += 1
            run += h[so[g1]]
        below = total - above - run
        d = np.float64((nf - 1 - g1) - q)
        for t in range(q, g1 + 1):
            i = so[t]
            fds[i] = np.float32(dv[i] + h[i] * d + (below - above))
        above += run
        q = g1 + 1


@numba.njit(**_JIT)
def _rows_ce_run(logits, labels, cw, kind, ic, mode, p_first, p_rest, need_grad, m, out, idx, first, last):
    """Rows ``first .. last - 1`` of the fused loss (module docstring): ``logits [B, C]`` float32,
    ``labels [B]`` int64, ``cw [K]`` float64 the rank weights ``c_r``, ``ic = 1 / tau``; writes
    ``out [B, 1 + m]`` (``[B, 1]`` without ``need_grad``) and ``idx [B, m]``."""
    B, C = logits.shape
    K = cw.shape[0]
    if kind < 0 or kind > 1:
        raise ValueError("unknown rows-method code (expected 0: neuralsort, 1: softsort)")
    if mode < 0 or mode > 2:
        raise ValueError("unknown top1_mode code (expected 0..2)")
    row_x = np.empty(m)
    row_c = np.empty(m, dtype=np.int64)
    key = np.empty(1, dtype=np.int32)
    cand = np.empty(2 * C, dtype=np.int32)  # the preselection's scratch
    E = np.empty((1 + K) * m, dtype=np.float32)  # block row 0: softmax of the wires, 1 + r: rank r
    bits = np.empty((1 + K) * m, dtype=np.int32)
    scale = bits.view(np.float32)
    # NeuralSort on the n_f finite wires packed in front (A_s 1 and its derivative by the sorted sums
    # above, from their decreasing order ``so``): their values, wires,
    # a_j / tau, and the gradient's sum_r (n_f - 1 - 2 r) w_rj / tau and -sum_r w_rj / tau
    fs = np.empty(m, dtype=np.float32)
    fpos = np.empty(m, dtype=np.int64)
    fa = np.empty(m, dtype=np.float32)
    dv = np.empty(m)
    h = np.empty(m)
    fds = np.empty(m, dtype=np.float32)
    gr = np.empty(m)
    fin = np.empty(m)  # 1 for a finite wire, 0 for a -inf one
    sv = np.empty(m)  # the wires, -inf as 0
    order = np.empty(m, dtype=np.int64)  # SoftSort: the wires in decreasing order
    so = np.empty(m, dtype=np.int64)  # NeuralSort: the packed finite wires in decreasing order
    inv = np.empty(1 + K)
    accs = np.empty(K)  # SoftSort: each rank's term for the wire its value came from
    for b in range(first, last):
        label = labels[b]
        bad = label < 0 or label >= C
        _preselect(logits[b], 0 if bad else label, row_x, row_c, key, cand)
        n_neg = 0
        mx = -math.inf
        for j in range(m):
            v = row_x[j]
            if v != v or v == math.inf:
                bad = True
            elif v == -math.inf:
                n_neg += 1
            elif v > mx:
                mx = v
        nf = m - n_neg
        if bad:
            out[b, 0] = math.nan
            if need_grad:
                for j in range(m):
                    out[b, 1 + j] = math.nan
                    idx[b, j] = row_c[j]
            continue
        R = min(K, nf)
        s0 = row_x[0]
        # the loops below are branch-free (selects on ``fin``: they vectorise); a -inf wire reads as 0
        for j in range(m):
            f = row_x[j] != -math.inf
            fin[j] = 1.0 if f else 0.0
            sv[j] = row_x[j] if f else 0.0
            E[j] = np.float32(row_x[j] - mx) if f else -np.inf  # block row 0: the wires' softmax
        for i in range(m, (1 + K) * m):
            E[i] = -np.inf
        if kind == 0:  # NeuralSort
            nfi = 0
            for j in range(m):
                if fin[j] != 0.0:
                    fs[nfi] = np.float32(row_x[j])
                    fpos[nfi] = j
                    nfi += 1
            _wire_order(fs, nf, fin[0] != 0.0, so)
            _sorted_abs_sums(fs, nf, so, fa, ic)  # a_j / tau
            for r in range(R):
                sc = ic * (nf - 1 - 2 * r)
                zmax = -math.inf
                for i in range(nf):
                    zmax = max(zmax, sc * fs[i] - fa[i])
                for i in range(nf):
                    E[(1 + r) * m + fpos[i]] = np.float32(sc * fs[i] - fa[i] - zmax)
        else:  # SoftSort
            p0 = 0  # wire 0's place: after the others above it (they are in decreasing order)
            while p0 + 1 < m and row_x[p0 + 1] > s0:
                p0 += 1
            for r in range(m):
                order[r] = r + 1 if r < p0 else (0 if r == p0 else r)
            for r in range(R):
                t = row_x[order[r]]  # (finite: r < n_f)
                for j in range(m):
                    z = np.float32(-ic * abs(t - sv[j]))
                    E[(1 + r) * m + j] = z if fin[j] != 0.0 else -np.inf
        exp_nonpositive_row(E, scale, bits, (1 + K) * m)
        for i in range(1 + R):
            tot = 0.0
            for j in range(m):
                tot += E[i * m + j]
            inv[i] = 1.0 / tot
        # ---- the loss
        q_net = 0.0
        for r in range(K):
            if r < R:
                q_net += cw[r] * (E[(1 + r) * m] * inv[1 + r])
            elif s0 == -math.inf:
                q_net += cw[r] / n_neg
        if nf == 0:  # every wire masked: the softmax is 0 / 0 (torch's NaN)
            sm0 = math.nan
            se = 0.0
        else:
            sm0 = E[0] * inv[0]
            se = 1.0 / inv[0]
        loss, g_q = loss_terms(q_net, sm0, math.log(se) + mx - s0, mode, p_first, p_rest)
        out[b, 0] = loss
        if not need_grad:
            continue
        # ---- the gradient w.r.t. the wires
        for j in range(m):
            gr[j] = 0.0
        if kind == 0:
            for i in range(nf):
                dv[i] = 0.0
                h[i] = 0.0
            for r in range(R):
                ir = inv[1 + r]
                coef = g_q * cw[r] * (E[(1 + r) * m] * ir)
                sc = ic * (nf - 1 - 2 * r)
                for i in range(nf):
                    j = fpos[i]
                    w = coef * ((1.0 if j == 0 else 0.0) - E[(1 + r) * m + j] * ir)
                    dv[i] += sc * w
                    h[i] -= ic * w
            _sorted_sign_sums(fs, nf, so, dv, h, fds)  # (-inf wires: none through the rows)
            for i in range(nf):
                gr[fpos[i]] = fds[i]
        else:
            for r in range(R):
                ir = inv[1 + r]
                coef = g_q * cw[r] * (E[(1 + r) * m] * ir)
                t = row_x[order[r]]
                acc = 0.0
                for j in range(m):
                    d = t - sv[j]  # (a -inf wire has P = 0 and j > 0, or a zero coef: w = 0)
                    w = ic * coef * ((1.0 if j == 0 else 0.0) - E[(1 + r) * m + j] * ir) * (
                        np.float64(d > 0) - np.float64(d < 0))
                    gr[j] += w
                    acc += w
                accs[r] = acc
            # (after the loop: a scalar store into gr between its vector loops stalled the next one's loads)
            for r in range(R):
                gr[order[r]] -= accs[r]
        for j in range(m):
            gj = gr[j]
            sj = E[j] * inv[0] if nf else math.nan
            if mode == 0:
                gj += g_q * p_first * sm0 * ((1.0 if j == 0 else 0.0) - sj)
            elif mode == 1:
                gj += p_first * (sj - (1.0 if j == 0 else 0.0))
            out[b, 1 + j] = gj
            idx[b, j] = row_c[j]


def rows_ce_fwd(logits: torch.Tensor, labels: torch.Tensor, c, kind: str, inv_tau: float, m: int, mode: str,
                p_first: float, p_rest: float, need_grad: bool, dense: Optional[torch.Tensor] = None,
                dense_scale: float = 1.0):
    """``(out, idx)`` of the fused NeuralSort / SoftSort loss (``kind``) for ``logits [B, C]`` (float32
    CPU; other dtypes are cast), ``labels [B]``, the rank weights ``c`` (``K`` floats, ``K <= m``,
    ``fastsort.losses.rank_weights``) and ``inv_tau = 1 / tau``: ``out [B, 1 + m]`` float32 (the loss,
    then its gradient w.r.t. the ``m`` wires) and ``idx [B, m]`` int64 (their columns); without
    ``need_grad`` ``out [B, 1]`` and ``idx [B, 0]``; with ``need_grad``, ``dense [B, C]`` (optional) is
    filled with the gradient of ``dense_scale * sum_b loss_b``.  The contract of
    :func:`fastsort.kernels.cpu_topk_loss.topk_ce_fwd`, whose ``topk_ce_bwd`` makes ``dlogits``."""
    if kind not in KIND_CODES:
        raise ValueError(f"the fused rows loss serves {tuple(KIND_CODES)}, got {kind!r}")
    if mode not in MODE_CODES:
        raise ValueError(f"top1_mode must be one of {tuple(MODE_CODES)}, got {mode!r}")
    B, C = logits.shape
    cw = np.asarray([float(v) for v in c], dtype=np.float64)
    if not 1 <= m <= C or cw.shape[0] > m:
        raise ValueError(f"m = {m} wires need 1 <= m <= n_classes = {C} and at most m rank weights (got "
                         f"{cw.shape[0]})")
    logits = logits.detach().to(torch.float32).contiguous()
    labels = labels.detach().to(torch.int64).contiguous()
    out = torch.empty((B, 1 + m if need_grad else 1), dtype=torch.float32)
    idx = torch.empty((B, m if need_grad else 0), dtype=torch.int64)
    dx = _dense_view(dense, B, C) if need_grad else None
    out_np, idx_np = out.numpy(), idx.numpy()
    args = (logits.numpy(), labels.numpy(), cw, KIND_CODES[kind], float(inv_tau), MODE_CODES[mode], float(p_first),
            float(p_rest), bool(need_grad), int(m), out_np, idx_np)
    scale = float(dense_scale)

    def run(first, last):  # the rows, then their dense gradient
        _rows_ce_run(*args, first, last)
        if dx is not None:
            _dense_rows(out_np, idx_np, scale, dx, first, last)
    run_parallel(run, B, B * (C // 4 + m * (m + len(cw))))
    return out, idx
