"""Fused top-k cross-entropy on the CPU (numba): preselection, network, loss and gradient in one pass.

The CPU twin of :mod:`fastsort.kernels.topk_loss` (docs/design.md, "Top-k
cross-entropy and preselection"), with the same launchers' contract.  Rows run
in blocks of :data:`RB` (blocks in parallel, :func:`~fastsort.kernels.cpu_network.run_parallel`);
for each row of ``logits [B, C]``:

1. **Preselection** (:func:`_preselect`, per row): wire 0 is the label's logit,
   wires ``1 .. m - 1`` the ``m - 1`` largest other logits in descending order.
   Ties: among exactly equal logits the lower column comes first (and is kept);
   ``torch.topk``'s order among ties is unspecified, so the torch path may pick
   and order tied logits differently (the same loss; a network's gradient split
   differently among them).  NaN ranks above every number, as in ``torch.topk``.
2. **The network on the m wires**, the block's rows side by side (the loops over
   them vectorise), carrying the row vector ``a = e_0^T L_1 ... L_l`` along (the
   same mix as the values), so that ``q_net = e_0^T X v = a . v`` needs no sweep;
   ``v`` holds the rank weights ``c_r`` at position ``m - 1 - r``.  ``-inf``
   logits (masked classes) enter the network as ``-1e30`` (``alpha`` exactly 0 or
   1 against them) and get no gradient through it, as the torch path's ``clamp``.
3. **The loss** for ``top1_mode`` (``sm``: ``q = p_1 softmax_0 + q_net``;
   ``smce``: ``p_1`` times the cross-entropy plus ``p_rest`` times the network
   term; ``sort``: the network alone; the softmax over the m wires), with
   ``loss = -log(q (1 - 2e-7) + 1e-7)``, and when a gradient is needed **its
   gradient w.r.t. the m wires** by the reverse pass: ``u`` (the backward sweep
   of ``v``) and the values adjoint ``g`` walk the layers backwards; a
   comparator's ``dL/dalpha`` is ``(g_lo - g_hi)(x_lo - x_hi) + g_q (u_lo - u_hi)(a_lo - a_hi)``
   (up to its direction's sign), sent through the relaxation's slope to its two wires.

The layers' inputs, ``a`` and ``alpha`` of a block stay in a float64 scratch
(``3 D m RB`` numbers) and the arithmetic is float64, except that a comparator's
difference is rounded to float32 before its relaxation, as in the float32 torch
path and the Triton kernel (``cauchy`` then uses the vectorising float32-accurate
``atan``); the loss and the gradient are stored as float32.  An out-of-range
label gives a NaN loss and gradient (as the Triton kernel).  The backward
(:func:`topk_ce_bwd`) writes the dense ``dlogits`` once: zeros and the ``m``
scaled values per row.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numba
import numpy as np
import torch

from .cpu_network import comparators, run_parallel
from .cpu_relaxations import alphas, check_code, relaxation_code, slopes

__all__ = ["DENSE_GRADIENT", "MODE_CODES", "loss_terms", "preselect", "topk_ce_fwd", "topk_ce_bwd"]

#: the forward takes ``dense`` / ``dense_scale`` and fills the logits' dense gradient while it runs
#: (``fastsort/_fused_loss.py`` asks for it in an eager step with a reduced loss)
DENSE_GRADIENT = True
#: top1_mode -> the kernel's integer code (the Triton kernel's ``MODE`` values)
MODE_CODES = {"sm": 0, "smce": 1, "sort": 2}
#: -inf logits are sorted as this finite value
NEG_BIG = -1e30
_SHRINK = 1.0 - 2e-7  # loss = -log(q * _SHRINK + 1e-7)


# --------------------------------------------------------------------------- kernels
#: rows per block of the network part (the innermost loops run over a block's rows and vectorise;
#: with m = 16 wires, 32 rows ran ~1.4x faster than 8, one thread, B = 500, C = 1000)
RB = 32
_JIT = dict(cache=True, error_model="numpy")  # numpy's: IEEE division, no zero checks in the loops
_INLINE = dict(_JIT, inline="always")


@numba.njit(**_INLINE)
def loss_terms(q_net, sm0, ce, mode, p_first, p_rest):
    """``(loss, dloss/dq_net)`` of ``top1_mode`` code ``mode`` (:data:`MODE_CODES`) from the network
    part ``q_net = sum_r c_r P[r, 0]``, the label's softmax probability ``sm0`` over the wires (``sm``)
    and its cross-entropy ``ce`` (``smce``; the other modes ignore them)."""
    if mode == 0:  # sm
        den = (p_first * sm0 + q_net) * _SHRINK + 1e-7
        return -math.log(den), -_SHRINK / den
    if mode == 1:  # smce
        den = q_net * _SHRINK + 1e-7
        return p_first * ce - p_rest * math.log(den), -p_rest * _SHRINK / den
    if mode == 2:  # sort
        den = q_net * _SHRINK + 1e-7
        return -math.log(den), -_SHRINK / den
    raise ValueError("unknown top1_mode code (expected 0..2)")


@numba.njit(**_INLINE)
def _ranks_above(a, b):
    """Whether logit ``a`` is picked before ``b``: greater, or NaN against a number."""
    return a > b or (a != a and b == b)


@numba.njit(**_JIT)
def _insert(x, col, pos, val, c):
    """Insert logit ``val`` of column ``c`` into the descending list ``x[1 : pos + 1]`` (whose slot
    ``pos`` is free or holds the dropped last entry), after the entries that it does not rank above."""
    while pos > 1 and _ranks_above(val, x[pos - 1]):
        x[pos] = x[pos - 1]
        col[pos] = col[pos - 1]
        pos -= 1
    x[pos] = val
    col[pos] = c


@numba.njit(**_JIT)
def _order_key(bits):
    """An int32 that orders like the float32 whose bits are ``bits`` (NaN above +inf, -NaN below -inf)."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@numba.njit(**_INLINE)
def _key_value(k, key):
    """The float32 whose order key is ``k`` (:func:`_order_key` is its own inverse), through the int32
    scratch ``key [1]``."""
    key[0] = _order_key(k)
    return key.view(np.float32)[0]


@numba.njit(**_INLINE)
def _lane_key(bits):
    """:func:`_order_key`, except that every NaN (either sign) gets the largest key: the lanes' maxima
    then show each NaN, which ranks above every number in the preselection."""
    k = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return np.int32(0x7FFFFFFF) if (bits & 0x7FFFFFFF) > 0x7F800000 else k


@numba.njit(**_JIT)
def _lane_maxima(keys, W, top):
    """``top[j]`` = the largest :func:`_lane_key` of the columns ``i = j (mod W)`` of ``keys [C]``
    (the int32 bits of a float32 row, ``C >= W``), for ``j < W``: one pass whose loop over a run of
    ``W`` columns updates ``W`` running maxima (it vectorises; a run of 16 ran in the vectoriser's
    scalar remainder, 3x slower at ``C = 1000``)."""
    C = keys.shape[0]
    for j in range(W):
        top[j] = np.int32(-0x80000000)
    runs = C // W
    for r in range(runs):
        base = r * W
        for j in range(W):
            top[j] = max(top[j], _lane_key(keys[base + j]))
    for i in range(runs * W, C):  # column i's lane is i mod W, as in the runs
        top[i - runs * W] = max(top[i - runs * W], _lane_key(keys[i]))


@numba.njit(**_JIT)
def _lane_maxima_float(row, W, top):
    """:func:`_lane_maxima` of a row without NaN, by a float32 maximum (a compare and a blend per
    column, no key arithmetic: 500 rows of ``C = 1000``, ``W = 128``, 47 against 125 us), the ``W``
    maxima then turned into keys; returns ``False`` (and ``top`` is not the lanes' keys) where the row
    holds a NaN.  A lane holding both zeros may keep ``-0.0`` as its maximum: its key is then one
    below ``+0.0``'s, which :func:`_preselect`'s zero bound allows for."""
    C = row.shape[0]
    topf = top.view(np.float32)
    for j in range(W):
        topf[j] = -np.inf
    runs = C // W
    nan = np.int32(0)
    for r in range(runs):
        base = r * W
        for j in range(W):
            v = row[base + j]
            t = topf[j]
            topf[j] = v if v > t else t  # (a NaN never wins: the flag below catches it)
            nan |= np.int32(v != v)
    base = runs * W
    for j in range(C - base):  # column i's lane is i mod W, as in the runs
        v = row[base + j]
        t = topf[j]
        topf[j] = v if v > t else t
        nan |= np.int32(v != v)
    for j in range(W):
        top[j] = _order_key(top[j])
    return nan == 0


@numba.njit(error_model="numpy", cache=True, fastmath={"reassoc"}, inline="always")
def _count_at_least(top, W, v):
    """How many of ``top [W]`` are ``>= v``, counted in float32 (16 to a vector: an int32 count is
    widened to int64 by numba, half the lanes)."""
    ge = np.float32(0.0)
    for j in range(W):
        ge += np.float32(1.0) if top[j] >= v else np.float32(0.0)
    return ge


@numba.njit(error_model="numpy", cache=True, fastmath={"reassoc"})
def _lane_bound(top, W, G):
    """A key ``T`` with at least ``G`` of ``top [W]`` (``G <= W``) ``>= T``, and as few as the keys
    allow: bisection on the key between the least entry (``W >= G`` reach it) and one above the
    largest (none does), stopped as soon as exactly ``G`` entries reach the midpoint (then it
    selects the same entries as the ``G``-th largest).  ~10 vectorised counts of the ``W`` keys:
    ~40 ns for ``W = 64`` where the ``W^2`` rank count took ~270 ns."""
    lo = np.int64(top[0])
    hi = np.int64(top[0])
    for j in range(W):
        lo = min(lo, np.int64(top[j]))
        hi = max(hi, np.int64(top[j]))
    hi += 1  # (int64: one above the largest int32 key)
    g = np.float32(G)
    while hi - lo > 1:  # count(top >= lo) >= G > count(top >= hi)
        mid = (lo + hi) // 2
        c = _count_at_least(top, W, np.int32(mid))
        if c >= g:
            lo = mid
            if c == g:
                break
        else:
            hi = mid
    return np.int32(lo)


@numba.njit(**_JIT)
def _preselect(row, label, x, col, key, cand):
    """``x[0], col[0]`` = the label's logit and column; ``x[1:], col[1:]`` = the ``K = m - 1``
    largest other logits of ``row [C]`` (float32; descending, lower column first among ties, NaN
    first).  Scratch: ``key`` int32 ``[1]``, ``cand`` int32 ``[2 C]``.

    1. **Lanes.** ``W`` lanes, lane ``j`` the columns ``i = j (mod W)`` (``W`` = ``L``, ``2 L``, ``4 L``
       or ``8 L`` as the row allows, ``L`` = ``K + 1`` rounded up to 16: 128 lanes of ~8 columns at
       ``m = 16``, ``C = 1000``), and each lane's maximum in one vectorised pass: a float32 maximum
       that skips NaN, with a flag that sees them (:func:`_lane_maxima_float`); a row holding a NaN
       takes a second pass over int32 keys that order like the floats, every NaN above ``+inf``
       (:func:`_lane_maxima`: an integer max vectorises, a float max with NaN semantics does not).
    2. **The bound** ``T``: a key that at least ``K + 1`` lane maxima reach, found by bisection
       (:func:`_lane_bound`; it reads the same lanes as the ``(K + 1)``-th largest maximum).  Those
       lanes hold ``K + 1`` distinct logits ``>= T``, at most one of them the label's, so ``T`` is at
       most the ``K``-th largest other logit: every logit kept is ``>= T``, and lies in a lane whose
       maximum is ``>= T``.
    3. **The candidates**: the columns of those lanes (~16 of 128) not below ``T`` (ties at the bound
       and NaN pass), listed in column order (run by run, the lanes in order) by a pass without
       branches (each column is written to the list, which only advances past a candidate): ~18 a
       row for random rows at ``m = 16``, ``C = 1000``, from ~125 columns read.
    4. The candidates inserted into a sorted list; once it is full, only those above its last
       entry (or NaN).

    Rows shorter than ``L`` take the bound from ``K + 1`` contiguous groups instead and list every
    column not below it.  (500 rows of ``C = 1000``, ``m = 16``, one thread, 2026-12-07: 289-297 us;
    the earlier designs' numbers are in docs/changelog.md.)
    """
    C = row.shape[0]
    m = x.shape[0]
    K = m - 1
    x[0] = row[label]
    col[0] = label
    if K == 0:
        return
    if cand.shape[0] < 2 * C:
        raise ValueError("the preselection's scratch needs 2 C entries")
    keys = row.view(np.int32)
    L = 16 * ((K + 16) // 16)
    n_cand = 0
    if C >= L:
        W = L
        while W < 8 * L and 2 * W <= C:
            W *= 2
        top = cand[C:C + W]
        if not _lane_maxima_float(row, W, top):  # a NaN: the keys' pass, where every NaN is a maximum
            _lane_maxima(keys, W, top)
        bound = _lane_bound(top, W, K + 1)
        T = _key_value(bound, key)
        if bound == 0:  # T = +0.0: a lane whose maximum is -0.0 holds logits equal to it
            bound = np.int32(-1)
        nq = 0  # the lanes to read, in order (top[:nq])
        for j in range(W):
            reach = top[j] >= bound
            top[nq] = j
            nq += reach
        runs = C // W
        for r in range(runs):
            base = r * W
            for q in range(nq):
                i = base + top[q]
                cand[n_cand] = i
                n_cand += not (row[i] < T)
        tail = runs * W
        for q in range(nq):
            if top[q] < C - tail:
                i = tail + top[q]
                cand[n_cand] = i
                n_cand += not (row[i] < T)
    else:
        G = K + 1  # <= C: every group has a column
        bound = np.int32(0x7FFFFFFF)
        for grp in range(G):
            top1 = np.int32(-0x80000000)
            for i in range(grp * C // G, (grp + 1) * C // G):
                top1 = max(top1, _lane_key(keys[i]))
            bound = min(bound, top1)
        T = _key_value(bound, key)
        for i in range(C):  # (a NaN T takes every column)
            cand[n_cand] = i
            n_cand += not (row[i] < T)
    filled = 0
    last = np.float32(0.0)
    for t in range(n_cand):
        i = cand[t]
        if i == label:
            continue
        v = row[i]
        if filled < K:
            filled += 1
            _insert(x, col, filled, np.float64(v), i)
            if filled == K:
                last = np.float32(x[K])
        elif not (v <= last):
            val = np.float64(v)
            if _ranks_above(val, x[K]):
                _insert(x, col, K, val, i)
                last = np.float32(x[K])


@numba.njit(**_JIT)
def _loss_block(b0, logits, labels, v, comps, count, out, idx, code, steepness, art_lambda, mode, p_first, p_rest,
                need_grad, X, A, AL, xn, a, sm, g, cols, row_x, row_c, key, cand, lane, d, t):
    """Rows ``b0 .. b0 + RB - 1`` of :func:`_topk_ce_run` (those below ``B``), side by side: the
    network runs on ``[m, RB]`` blocks whose innermost loops (over the rows) vectorise.

    Scratch (float64 unless said): ``X`` / ``A [D, m, RB]`` every layer's input values and ``a``,
    ``AL [D, M, RB]`` the comparators' ``alpha``; ``xn``, ``a``, ``sm`` (the softmax), ``g``
    ``[m, RB]``; ``cols`` int64 ``[m, RB]``; one row's ``row_x [m]`` / ``row_c`` int64 ``[m]`` (and
    the preselection's ``key`` and ``cand``);
    per row ``lane [5, RB]`` (``max``, ``sum exp``, ``dloss/dq_net``, the label's logit, bad label);
    ``d`` float32 / ``t [RB]`` the relaxation's differences and results.
    """
    B, C = logits.shape
    m, RB = xn.shape
    D = comps.shape[0]
    rows = min(RB, B - b0)
    # ---- 1. per row: the preselection and the softmax over its m wires
    for k in range(RB):
        bad = True
        if k < rows:
            label = labels[b0 + k]
            bad = label < 0 or label >= C
            _preselect(logits[b0 + k], 0 if bad else label, row_x, row_c, key, cand)
        else:  # a padding row: finite values, results dropped
            for j in range(m):
                row_x[j] = 0.0
                row_c[j] = 0
        mx = -math.inf
        for j in range(m):
            if row_x[j] > mx:
                mx = row_x[j]
        if mx == -math.inf:
            mx = 0.0
        se = 0.0
        for j in range(m):
            sm[j, k] = math.exp(row_x[j] - mx)
            se += sm[j, k]
        for j in range(m):
            sm[j, k] /= se
            xn[j, k] = NEG_BIG if row_x[j] < NEG_BIG else row_x[j]  # (NaN stays NaN)
            a[j, k] = 1.0 if j == 0 else 0.0
            cols[j, k] = row_c[j]
        lane[0, k] = mx
        lane[1, k] = se
        lane[3, k] = row_x[0]
        lane[4, k] = 1.0 if bad else 0.0

    # ---- 2. the network on the wires, carrying a = e_0^T L_1 ... L_l
    for l in range(D):
        for j in range(m):
            for k in range(RB):
                X[l, j, k] = xn[j, k]
                A[l, j, k] = a[j, k]
        for j in range(count[l]):
            lo = comps[l, j, 0]
            hi = comps[l, j, 1]
            de = comps[l, j, 2] != 0
            for k in range(RB):
                d[k] = xn[hi, k] - xn[lo, k]  # rounded to float32, as the float32 paths
            alphas(d, t, code, steepness, art_lambda)
            for k in range(RB):
                tk = t[k]
                AL[l, j, k] = tk
                w = 1.0 - tk if de else tk
                om = tk if de else 1.0 - tk
                xa = xn[lo, k]
                xb = xn[hi, k]
                xn[lo, k] = w * xa + om * xb
                xn[hi, k] = w * xb + om * xa
                aa = a[lo, k]
                ab = a[hi, k]
                a[lo, k] = w * aa + om * ab
                a[hi, k] = w * ab + om * aa

    # ---- 3. per row: the loss and dloss/dq_net
    for k in range(rows):
        b = b0 + k
        q_net = 0.0
        for j in range(m):
            q_net += a[j, k] * v[j]
        loss, g_q = loss_terms(q_net, sm[0, k], math.log(lane[1, k]) + lane[0, k] - lane[3, k], mode, p_first,
                               p_rest)
        lane[2, k] = g_q
        out[b, 0] = math.nan if lane[4, k] else loss
    if not need_grad:
        return

    # ---- 4. reverse pass: u = backward sweep of v (in a), g = values adjoint
    u = a
    for j in range(m):
        for k in range(RB):
            u[j, k] = v[j]
            g[j, k] = 0.0
    for l in range(D - 1, -1, -1):
        for j in range(count[l]):
            lo = comps[l, j, 0]
            hi = comps[l, j, 1]
            de = comps[l, j, 2] != 0
            for k in range(RB):
                d[k] = X[l, hi, k] - X[l, lo, k]
            slopes(d, t, code, steepness, art_lambda)
            for k in range(RB):
                tk = AL[l, j, k]
                w = 1.0 - tk if de else tk
                om = tk if de else 1.0 - tk
                gl = g[lo, k]
                gh = g[hi, k]
                ul = u[lo, k]
                uh = u[hi, k]
                gw = (gl - gh) * (X[l, lo, k] - X[l, hi, k]) + lane[2, k] * (ul - uh) * (A[l, lo, k] - A[l, hi, k])
                dd = (-gw if de else gw) * t[k]  # w = 1 - alpha on a descending comparator
                g[lo, k] = w * gl + om * gh - dd
                g[hi, k] = w * gh + om * gl + dd
                u[lo, k] = w * ul + om * uh
                u[hi, k] = w * uh + om * ul

    # ---- 5. per row: the gradient w.r.t. the m wires (plus the softmax terms') and their columns
    for k in range(rows):
        b = b0 + k
        bad = lane[4, k] != 0.0
        g_q = lane[2, k]
        sm0 = sm[0, k]
        for j in range(m):
            c = cols[j, k]
            gj = 0.0 if logits[b, c] < NEG_BIG else g[j, k]  # clamped (-inf) logits: none through the network
            if mode == 0:
                gj += g_q * p_first * sm0 * ((1.0 if j == 0 else 0.0) - sm[j, k])
            elif mode == 1:
                gj += p_first * (sm[j, k] - (1.0 if j == 0 else 0.0))
            out[b, 1 + j] = math.nan if bad else gj
            idx[b, j] = c


@numba.njit(nogil=True, **_JIT)
def _topk_ce_run(logits, labels, v, comps, count, out, idx, code, steepness, art_lambda, mode, p_first, p_rest,
                 need_grad, first, last):
    """The fused loss for the blocks of ``RB`` rows ``first .. last - 1`` of ``logits [B, C]`` (float32),
    ``labels [B]`` (int64) and the position weights ``v [m]`` (float64): ``out [B, 1 + m]`` (loss,
    then dloss/dwire; ``[B, 1]`` without ``need_grad``) and ``idx [B, m]`` (the wires' columns),
    a block at a time (:func:`_loss_block`) with one scratch."""
    check_code(code)
    if mode < 0 or mode > 2:
        raise ValueError("unknown top1_mode code (expected 0..2)")
    m = v.shape[0]
    D, M = comps.shape[0], comps.shape[1]
    X = np.empty((D, m, RB))
    A = np.empty((D, m, RB))
    AL = np.empty((D, M, RB))
    xn = np.empty((m, RB))
    a = np.empty((m, RB))
    sm = np.empty((m, RB))
    g = np.empty((m, RB))
    cols = np.empty((m, RB), dtype=np.int64)
    row_x = np.empty(m)
    row_c = np.empty(m, dtype=np.int64)
    key = np.empty(1, dtype=np.int32)
    cand = np.empty(2 * logits.shape[1], dtype=np.int32)
    lane = np.empty((5, RB))
    d = np.empty(RB, dtype=np.float32)
    t = np.empty(RB)
    for blk in range(first, last):
        _loss_block(blk * RB, logits, labels, v, comps, count, out, idx, code, steepness, art_lambda, mode, p_first,
                    p_rest, need_grad, X, A, AL, xn, a, sm, g, cols, row_x, row_c, key, cand, lane, d, t)


@numba.njit(nogil=True, **_JIT)
def _preselect_run(logits, labels, idx, first, last):
    """Rows ``first .. last - 1``: ``idx[b]`` = the columns of :func:`_preselect`'s wires."""
    m = idx.shape[1]
    row_x = np.empty(m)
    row_c = np.empty(m, dtype=np.int64)
    key = np.empty(1, dtype=np.int32)
    cand = np.empty(2 * logits.shape[1], dtype=np.int32)
    for b in range(first, last):
        _preselect(logits[b], labels[b], row_x, row_c, key, cand)
        for j in range(m):
            idx[b, j] = row_c[j]


@numba.njit(inline="always", **_JIT)
def _scatter_row(out, col0, idx, f, dx, b):
    """Row ``b`` of the gradient's non-zero entries: ``dx[b, idx[b, j]] = f * out[b, col0 + j]``."""
    for j in range(idx.shape[1]):
        dx[b, idx[b, j]] = out[b, col0 + j] * f


@numba.njit(nogil=True, **_JIT)
def _scatter_run(out, col0, idx, g, per_row, scale, dx, first, last):
    """Rows ``first .. last - 1`` of ``dx [B, C]`` (zeros): ``dx[b, idx[b, j]] = scale * g_b * out[b, col0 + j]``
    (``g_b = g[b]`` when ``per_row``, else ``g[0]``)."""
    for b in range(first, last):
        _scatter_row(out, col0, idx, scale * (g[b] if per_row else g[0]), dx, b)


@numba.njit(nogil=True, **_JIT)
def _dense_rows(out, idx, scale, dx, first, last):
    """Rows ``first .. last - 1`` (those below ``B``) of the dense gradient ``dx [B, C]``, written
    whole: 0, then ``dx[b, idx[b, j]] = scale * out[b, 1 + j]``.  The forward kernels call it on the
    rows they have just made, while those rows are in cache and on every thread (the backward's
    zeroing ran on one, 20-80 us at ``[500, 1000]``); the entries are :func:`_scatter_run`'s."""
    for b in range(first, min(last, dx.shape[0])):
        dx[b, :] = 0.0
        _scatter_row(out, 1, idx, scale, dx, b)


# --------------------------------------------------------------------------- launchers
def _dense_view(dense: Optional[torch.Tensor], B: int, C: int):
    """The numpy view of a forward's ``dense [B, C]`` gradient buffer (``None`` for ``None``)."""
    if dense is None:
        return None
    if dense.shape != (B, C) or dense.dtype not in (torch.float32, torch.float64) or not dense.is_contiguous() \
            or dense.device.type != "cpu":
        raise ValueError(f"dense must be a contiguous float32 / float64 CPU tensor of shape {(B, C)}, got "
                         f"{dense.dtype} {tuple(dense.shape)} on {dense.device}")
    return dense.detach().numpy()


_WEIGHTS: Dict[tuple, np.ndarray] = {}


def _position_weights(c, m: int) -> np.ndarray:
    """``v [m]`` float64: ``c[r]`` at position ``m - 1 - r`` (cached), or ``c`` itself when it is
    already the ``[1, m]`` / ``[m]`` weight tensor."""
    if isinstance(c, torch.Tensor):
        v = c.detach().reshape(-1).to(torch.float64).numpy()
        if v.shape[0] != m:
            raise ValueError(f"position weights of {v.shape[0]} wires for m = {m}")
        return v
    key = (tuple(float(r) for r in c), m)
    hit = _WEIGHTS.get(key)
    if hit is None:
        if len(key[0]) > m:
            raise ValueError(f"{len(key[0])} rank weights for m = {m} wires")
        hit = np.zeros(m)
        hit[m - len(key[0]):] = key[0][::-1]
        _WEIGHTS[key] = hit
    return hit


def preselect(logits: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    """The columns of the ``m`` wires of each row, ``[B, m]`` int64: the label's, then the ``m - 1``
    largest other logits in descending order (lower column first among ties, NaN first), as the
    fused kernel picks them; for the loss's torch ops (the methods without a fused kernel), which
    gather their wires through it.  ``logits [B, C]`` float32 CPU, ``labels [B]`` in ``[0, C)``
    (checked by the caller), ``1 <= m <= C``."""
    B, C = logits.shape
    if logits.dtype != torch.float32 or logits.device.type != "cpu" or not 1 <= m <= C:
        raise ValueError(f"preselect takes float32 CPU logits [B, C] and 1 <= m <= C, got {logits.dtype} "
                         f"{tuple(logits.shape)} on {logits.device}, m = {m}")
    x = logits.detach().contiguous()
    lab = labels.detach().to(torch.int64).contiguous()
    idx = torch.empty((B, m), dtype=torch.int64)
    args = (x.numpy(), lab.numpy(), idx.numpy())
    run_parallel(lambda first, last: _preselect_run(*args, first, last), B, B * C // 4)
    return idx


def topk_ce_fwd(logits: torch.Tensor, labels: torch.Tensor, c, table, relax_params, m: int, mode: str,
                p_first: float, p_rest: float, need_grad: bool, dense: Optional[torch.Tensor] = None,
                dense_scale: float = 1.0):
    """``(out, idx)`` for ``logits [B, C]`` (float32 CPU; other dtypes are cast): ``out [B, 1 + m]``
    float32 holds the loss (column 0) and its gradient w.r.t. the ``m`` wires, whose columns are
    ``idx [B, m]`` (int64).  Without ``need_grad``: ``out [B, 1]`` and ``idx [B, 0]``.  With
    ``need_grad``, a ``dense [B, C]`` float32 / float64 contiguous tensor is filled with the gradient
    of ``dense_scale * sum_b loss_b`` w.r.t. the logits (:func:`topk_ce_bwd`'s result for that scale
    and ``grad_out = 1``) by the forward's threads.

    ``c``: the rank weights ``c_r`` of the network part of the loss (``fastsort.losses.rank_weights``),
    as the Triton launcher takes them, or the position-weight tensor ``v [1, m]`` they make;
    ``table``: the network of ``m`` wires; ``mode``: ``sm``, ``smce`` or ``sort``; ``p_first`` =
    ``P_K(1)``, ``p_rest`` = ``P_K(k > 1)``.
    """
    distribution, steepness, art_lambda = relax_params
    code = relaxation_code(distribution)
    if mode not in MODE_CODES:
        raise ValueError(f"top1_mode must be one of {tuple(MODE_CODES)}, got {mode!r}")
    B, C = logits.shape
    if not 1 <= m <= C or table.n != m:
        raise ValueError(f"m = {m} wires need 1 <= m <= n_classes = {C} and a table of m wires (got {table.n})")
    logits = logits.detach().to(torch.float32).contiguous()
    labels = labels.detach().to(torch.int64).contiguous()
    v = _position_weights(c, m)
    comps, count = comparators(table)
    out = torch.empty((B, 1 + m if need_grad else 1), dtype=torch.float32)
    idx = torch.empty((B, m if need_grad else 0), dtype=torch.int64)
    dx = _dense_view(dense, B, C) if need_grad else None
    out_np, idx_np = out.numpy(), idx.numpy()
    args = (logits.numpy(), labels.numpy(), v, comps, count, out_np, idx_np, code, float(steepness),
            float(art_lambda), MODE_CODES[mode], float(p_first), float(p_rest), bool(need_grad))
    scale = float(dense_scale)

    def run(first, last):  # blocks of RB rows, then those rows' dense gradient
        _topk_ce_run(*args, first, last)
        if dx is not None:
            _dense_rows(out_np, idx_np, scale, dx, first * RB, last * RB)
    run_parallel(run, -(-B // RB), B * (C // 4 + 3 * int(count.sum())))  # (a logit read ~ 1/4 comparator)
    return out, idx


def topk_ce_bwd(out: torch.Tensor, idx: torch.Tensor, grad_out: torch.Tensor, C: int, dtype, scale: float = 1.0,
                col0: int = 0) -> torch.Tensor:
    """Dense ``dlogits [B, C]`` in ``dtype``: ``scale * grad_out * out[:, col0:col0 + m]`` at the columns
    ``idx [B, m]``, 0 elsewhere (``grad_out``: a scalar or ``[B]`` tensor, any float dtype; ``out``:
    the forward's float32 ``[B, 1 + m]`` with ``col0 = 1``, or any float32 ``[B, >= col0 + m]``).
    float32 and float64 are written directly, other dtypes through a float32 copy.
    """
    B, m = idx.shape
    direct = dtype in (torch.float32, torch.float64)
    # torch's memset zeroes the 2 MB of a [500, 1000] gradient in ~12 us, a compiled loop took ~30
    dx = torch.zeros((B, C), dtype=dtype if direct else torch.float32)
    if B and C:
        out = out.detach()
        if out.dtype != torch.float32 or not out.is_contiguous():
            out = out.to(torch.float32).contiguous()
        g = grad_out.detach().reshape(-1).to(torch.float64)
        args = (out.numpy(), int(col0), idx.contiguous().numpy(), g.numpy(), grad_out.dim() > 0, float(scale),
                dx.numpy())
        _scatter_run(*args, 0, B)  # (B m writes: one thread)
    return dx if direct else dx.to(dtype)
