"""Fused top-k cross-entropy: one pass over the logits for the loss and its gradient.

For each row of ``logits [B, C]`` one program (several rows per program):

1. **Top-m preselection in registers.**  Every logit becomes an ``int64`` key
   whose high 32 bits order like the float value and whose low 32 bits hold
   the column, so one ``tl.max`` finds value and column at once.  The row is
   read in blocks of ``BLOCK_C`` columns; the ``m - 1`` largest keys other
   than the label are extracted by repeated maxima from the union of the
   block and the running list (``O(C m)``, no sort of the whole row; any ``C``).
2. **The network on the m wires** (label on wire 0, then the others in
   descending order, exactly difftopk's layout), walking the same layer
   tables as :mod:`fastsort.kernels.network`.  The loss needs only
   ``q_net = e_0^T X v`` with ``v`` the per-position weights of ``P_K``, so the
   row vector ``a = e_0^T L_1 ... L_l`` is carried along the forward pass:
   no sweep, no k rows, ``O(m D)``.
3. **The loss** for ``top1_mode`` (``sm`` adds ``p_1 softmax_0``, ``smce`` a
   ``p_1`` cross-entropy term; both over the m preselected logits, as difftopk)
   and, when a gradient is needed, **its gradient w.r.t. the m wires** by the
   reverse pass: ``dq/dw_j = u_j (a_j - a_p)`` with ``u`` the backward sweep of
   ``v``, plus the values adjoint through the relaxation's derivative.

The per-layer ``x``, ``w`` and ``a`` live in a small per-row scratch between
the forward and the reverse loop (``3 D m`` floats).

Only ``m`` gradient entries per row are non-zero, so the forward stores them
(``[B, m]`` values and columns) and the backward writes the dense
``dlogits`` once (:func:`_topk_ce_bwd_kernel`: zeros, then the ``m`` values,
already scaled by ``grad_output`` and the reduction's ``1/B``): the logits are
read once and their gradient is written once, in two launches per step.

Tensors travel as addresses (:mod:`fastsort.kernels.launch`).  The design and
its measurements: docs/design.md, "Top-k cross-entropy and preselection" and
"Kernel design and the measurements behind it".
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .launch import TL_DTYPES, address, aligned, as_pointer, cdiv, column_block, interpreting, next_pow2, \
    num_warps, on_tensor_device, rows_per_program
from .._cache import device_constant
from ..networks import sweep_init
from ..relaxations import RELAXATIONS
from .network import comparator_adjoint, layer_lanes
from .relaxations import dist_code, relax

MODE_CODES = {"sm": 0, "smce": 1, "sort": 2}
#: the forwards take no ``dense`` buffer: the backward's scatter kernel writes ``dlogits`` (one launch)
DENSE_GRADIENT = False
#: -inf logits are sorted as this finite value (alpha exactly 0 or 1 against it)
NEG_BIG = tl.constexpr(-1e30)
KEY_MIN = tl.constexpr(-9223372036854775808)


@triton.jit
def _key(val, col):
    """int64 key ordered like ``val`` (float32) with the column in the low bits."""
    bits = val.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed-int order == float order
    return (ordered.to(tl.int64) << 32) | col.to(tl.int64)


@triton.jit
def _unkey(key):
    ordered = (key >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), (key & 0xFFFFFFFF).to(tl.int32)


@triton.jit
def _preselect_wires(X, LABELS, rows, rmask, lanes, C, m, stride_x, ROWS: tl.constexpr, MP: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """``(x, idx, x_label, bad_label)``: the ``m`` wires ``[ROWS, MP]`` of each row (the label's logit,
    then the ``m - 1`` largest others by repeated maxima of int64 keys; lanes ``>= m`` hold garbage)
    and their columns, the label's logit ``[ROWS, 1]`` and whether the label is out of range."""
    label = tl.load(LABELS + rows, mask=rmask, other=0)
    bad_label = (label < 0) | (label >= C)
    label = tl.where(bad_label, 0, label)

    # ---- 1. top-(m-1) of the other logits: running list of keys on lanes 1..m-1
    top = tl.full((ROWS, MP), KEY_MIN, tl.int64)
    cols = tl.arange(0, BLOCK_C)[None, :]
    for start in range(0, C, BLOCK_C):
        c = start + cols
        ok = rmask & (c < C) & (c != label)
        val = tl.load(X + rows * stride_x + c, mask=ok, other=0.0).to(tl.float32)
        keys = tl.where(ok, _key(val, c), KEY_MIN)
        old = top
        top = tl.full((ROWS, MP), KEY_MIN, tl.int64)
        for r in range(1, m):
            best = tl.maximum(tl.max(keys, axis=1), tl.max(old, axis=1))[:, None]
            top = tl.where(lanes == r, best, top)
            keys = tl.where(keys == best, KEY_MIN, keys)
            old = tl.where(old == best, KEY_MIN, old)

    xv, idx = _unkey(top)
    x_label = tl.load(X + rows * stride_x + label, mask=rmask, other=0.0).to(tl.float32)
    x = tl.where(lanes == 0, x_label, xv)  # the m wires: label first
    idx = tl.where(lanes == 0, label.to(tl.int32), idx)

    return x, idx, x_label, bad_label


@triton.jit
def _loss_terms(q_net, sm0, ce, MODE: tl.constexpr, p_first, p_rest):
    """``(loss, dloss/dq_net)`` of ``top1_mode`` code ``MODE`` from the network / rows part ``q_net``, the
    label's softmax probability ``sm0`` over the wires (``sm``) and its cross-entropy ``ce`` (``smce``)."""
    if MODE == 0:  # sm
        den = (p_first * sm0 + q_net) * (1.0 - 2e-7) + 1e-7
        loss = -tl.log(den)
        g_net = -(1.0 - 2e-7) / den
    elif MODE == 1:  # smce
        den = q_net * (1.0 - 2e-7) + 1e-7
        loss = p_first * ce - p_rest * tl.log(den)
        g_net = -p_rest * (1.0 - 2e-7) / den
    else:  # sort
        den = q_net * (1.0 - 2e-7) + 1e-7
        loss = -tl.log(den)
        g_net = -(1.0 - 2e-7) / den
    return loss, g_net


@triton.jit
def _topk_ce_fwd_kernel(
    X, LABELS, TAB, OUT, IDX, SCR,
    B, C, m, D, stride_x, steepness, art_lambda, p_first, p_rest,
    X_DTYPE: tl.constexpr, DIST: tl.constexpr, MODE: tl.constexpr, NEED_GRAD: tl.constexpr,
    ROWS: tl.constexpr, MP: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Arguments (addresses, see :mod:`fastsort.kernels.launch`):

    * ``X`` ``[B, C]`` logits in ``X_DTYPE`` (row stride ``stride_x``); ``LABELS`` int64 ``[B]``;
    * ``TAB`` int32 ``[D m + m]``: the layer lanes (``partner | desc << 16``)
      then the position weights ``v`` as float32 bits;
    * ``OUT`` float32 ``[B, 1 + m]`` (``[B, 1]`` without gradient): the loss,
      then ``dloss/dwire``; ``IDX`` int64 ``[B, m]``: the wires' columns;
    * ``SCR`` float32 ``[3, B, D, MP]``: per-layer ``x``, ``w``, ``a`` scratch.
    """
    X, LABELS, TAB = as_pointer(X, X_DTYPE), as_pointer(LABELS, tl.int64), as_pointer(TAB, tl.int32)
    OUT, IDX, SCR = as_pointer(OUT, tl.float32), as_pointer(IDX, tl.int64), as_pointer(SCR, tl.float32)
    pid = tl.program_id(0)
    rows = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]  # [ROWS, 1]
    rmask = rows < B
    lanes = tl.arange(0, MP)[None, :]  # wires
    lmask = lanes < m
    mask = rmask & lmask

    x, idx, x_label, bad_label = _preselect_wires(X, LABELS, rows, rmask, lanes, C, m, stride_x, ROWS, MP,
                                                  BLOCK_C)

    # ---- softmax over the m preselected logits (difftopk's top-1 terms)
    xs = tl.where(lmask, x, float("-inf"))
    mx = tl.max(xs, axis=1)[:, None]
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    e = tl.exp(xs - mx)
    se = tl.sum(e, axis=1)[:, None]
    sm = e / se
    sm0 = tl.sum(tl.where(lanes == 0, sm, 0.0), axis=1)[:, None]

    # ---- 2. network forward on the wires, carrying a = e_0^T L_1 ... L_l
    xn = tl.maximum(x, NEG_BIG)
    xn = tl.where(x != x, x, xn)  # keep NaN
    a = tl.where(lanes == 0, 1.0, 0.0) + tl.zeros((ROWS, MP), tl.float32)
    plane = (rows * 0 + B) * D * MP  # int64 offset between the three scratch planes
    for l in range(D):
        p, desc, is_lo, keep = layer_lanes(TAB, l, m, lanes, lmask)
        pi = tl.broadcast_to(p, (ROWS, MP))
        xp = tl.gather(xn, pi, axis=1)
        d = tl.where(is_lo, xp - xn, xn - xp)
        alpha, _ = relax(d, steepness, art_lambda, DIST)
        w = tl.where(keep, 1.0, tl.where(desc, 1.0 - alpha, alpha))
        if NEED_GRAD:
            off = rows * D * MP + l * MP + lanes
            tl.store(SCR + off, xn, mask=rmask)
            tl.store(SCR + plane + off, w, mask=rmask)
            tl.store(SCR + 2 * plane + off, a, mask=rmask)
        xn = tl.where(keep, xn, w * xn + (1.0 - w) * xp)
        a = w * a + (1.0 - w) * tl.gather(a, pi, axis=1)
    v = tl.load(TAB + D * m + lanes, mask=lmask, other=0).to(tl.float32, bitcast=True)
    q_net = tl.sum(a * v, axis=1)[:, None]

    # ---- 3. the loss and dloss/dq
    loss, g_net = _loss_terms(q_net, sm0, tl.log(se) + mx - x_label, MODE, p_first, p_rest)
    if MODE == 0:  # sm
        g_x = g_net * p_first * sm0 * (tl.where(lanes == 0, 1.0, 0.0) - sm)
    elif MODE == 1:  # smce
        g_x = p_first * (sm - tl.where(lanes == 0, 1.0, 0.0))
    else:  # sort
        g_x = tl.zeros((ROWS, MP), tl.float32)
    loss = tl.where(bad_label, float("nan"), loss)
    width = 1 + m if NEED_GRAD else 1
    tl.store(OUT + rows * width, loss, mask=rmask)

    if NEED_GRAD:
        tl.debug_barrier()
        # ---- reverse pass: u = backward sweep of v, g = adjoint of the values
        u = v + tl.zeros((ROWS, MP), tl.float32)
        g = tl.zeros((ROWS, MP), tl.float32)
        for i in range(D):
            l = D - 1 - i
            p, desc, is_lo, keep = layer_lanes(TAB, l, m, lanes, lmask)
            pi = tl.broadcast_to(p, (ROWS, MP))
            off = rows * D * MP + l * MP + lanes
            xl = tl.load(SCR + off, mask=rmask, other=0.0)
            w = tl.load(SCR + plane + off, mask=rmask, other=1.0)
            al = tl.load(SCR + 2 * plane + off, mask=rmask, other=0.0)
            xp = tl.gather(xl, pi, axis=1)
            gw = g * (xl - xp) + g_net * u * (al - tl.gather(al, pi, axis=1))
            g = w * g + (1.0 - w) * tl.gather(g, pi, axis=1)
            u = w * u + (1.0 - w) * tl.gather(u, pi, axis=1)
            g = comparator_adjoint(g, gw, xl, xp, pi, desc, is_lo, keep, steepness, art_lambda, DIST, 1)
        # -inf logits were clamped: no gradient flows to them
        g = tl.where(x < NEG_BIG, 0.0, g) + g_x
        g = tl.where(bad_label, float("nan"), g)
        tl.store(OUT + rows * width + 1 + lanes, g, mask=mask)
        tl.store(IDX + rows * m + lanes, idx.to(tl.int64), mask=mask)


@triton.jit
def _topk_ce_bwd_kernel(
    OUT, IDX, G, DX,
    B, C, m, stride_out, col0, scale,
    G_DTYPE: tl.constexpr, DX_DTYPE: tl.constexpr, G_PER_ROW: tl.constexpr,
    ROWS: tl.constexpr, MP: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Dense ``dlogits [B, C]`` (``DX_DTYPE``): ``scale * g * OUT[:, col0:col0 + m]`` at the columns
    ``IDX [B, m]``, zero elsewhere.  ``g`` is ``G [B]`` (``G_PER_ROW``) or the scalar ``G [1]``.

    Every element is written once with zero, then (after a barrier: the zeros of
    another thread may cover the same addresses) the ``m`` values of each row.
    """
    OUT, IDX = as_pointer(OUT, tl.float32), as_pointer(IDX, tl.int64)
    G, DX = as_pointer(G, G_DTYPE), as_pointer(DX, DX_DTYPE)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    rmask = rows < B
    cols = tl.arange(0, BLOCK_C)[None, :]
    zero = tl.zeros((ROWS, BLOCK_C), DX_DTYPE)
    for start in range(0, C, BLOCK_C):
        tl.store(DX + rows * C + start + cols, zero, mask=rmask & (start + cols < C))
    tl.debug_barrier()
    lanes = tl.arange(0, MP)[None, :]
    mask = rmask & (lanes < m)
    if G_PER_ROW:
        g = tl.load(G + rows, mask=rmask, other=0.0).to(tl.float32)
    else:
        g = tl.load(G).to(tl.float32)
    gsel = tl.load(OUT + rows * stride_out + col0 + lanes, mask=mask, other=0.0)
    idx = tl.load(IDX + rows * m + lanes, mask=mask, other=0)
    tl.store(DX + rows * C + idx, (gsel * (g * scale)).to(DX_DTYPE), mask=mask)



# --------------------------------------------------------------------------- NeuralSort / SoftSort
#: the rows methods -> ``KIND`` (``fastsort.kernels.cpu_rows_loss``'s codes)
KIND_CODES = {"neuralsort": 0, "softsort": 1}


@triton.jit
def _lane(v, lanes, j):
    """Column ``j`` (an int or a ``[ROWS, 1]`` tensor of lanes) of ``v [ROWS, MP]``, as ``[ROWS, 1]``."""
    return tl.sum(tl.where(lanes == j, v, 0.0), axis=1)[:, None]


@triton.jit
def _rank_row(r, sv, fin, a, nf, ic, lanes, p0, KIND: tl.constexpr):
    """``(P_r [ROWS, MP], source lane [ROWS, 1])`` of rank ``r`` (0-based) over the finite wires: NeuralSort's
    ``softmax(ic ((n_f - 1 - 2 r) s - a))`` or SoftSort's ``softmax(-ic |t_r - s|)`` (``t_r`` on the
    source lane; NeuralSort's source is unused); 0 for ranks ``r >= n_f`` and on ``-inf`` wires."""
    live = nf > r
    if KIND == 0:
        z = ic * ((nf - 1.0 - 2.0 * r) * sv - a)
        src = lanes * 0
    else:
        src = tl.where(r < p0, r + 1, tl.where(r == p0, 0, r))  # wire 0 placed among the ordered others
        z = -ic * tl.abs(_lane(sv, lanes, src) - sv)
    z = tl.where(fin, z, float("-inf"))
    zmax = tl.max(z, axis=1)[:, None]
    e = tl.where(fin & live, tl.exp(z - tl.where(live, zmax, 0.0)), 0.0)
    tot = tl.sum(e, axis=1)[:, None]
    return e / tl.where(live, tot, 1.0), src


@triton.jit
def _rows_ce_fwd_kernel(
    X, LABELS, CW, OUT, IDX,
    B, C, m, K, stride_x, ic, p_first, p_rest,
    X_DTYPE: tl.constexpr, KIND: tl.constexpr, MODE: tl.constexpr, NEED_GRAD: tl.constexpr,
    ROWS: tl.constexpr, MP: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The fused NeuralSort / SoftSort loss (``KIND`` 0 / 1), the math of
    :mod:`fastsort.kernels.cpu_rows_loss`: ``CW`` float32 ``[K]`` the rank weights ``c_r``, ``ic = 1 / tau``;
    ``OUT`` / ``IDX`` as :func:`_topk_ce_fwd_kernel`'s.  The ``K`` rows of ``P`` are recomputed for the
    gradient (``O(K m)`` registers, no scratch); NeuralSort's ``a_j`` and its sign sums loop over the
    ``m`` wires (``O(m^2)`` per row, no ``[m, m]`` tile)."""
    X, LABELS = as_pointer(X, X_DTYPE), as_pointer(LABELS, tl.int64)
    CW, OUT, IDX = as_pointer(CW, tl.float32), as_pointer(OUT, tl.float32), as_pointer(IDX, tl.int64)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    rmask = rows < B
    lanes = tl.arange(0, MP)[None, :]
    lmask = lanes < m
    mask = rmask & lmask
    x, idx, s0, bad = _preselect_wires(X, LABELS, rows, rmask, lanes, C, m, stride_x, ROWS, MP, BLOCK_C)
    # a NaN or +inf wire makes the row NaN (preselection puts them among the wires)
    bad = bad | (tl.sum(tl.where(lmask & ((x != x) | (x == float("inf"))), 1, 0), axis=1)[:, None] > 0)
    fin = lmask & (x > float("-inf")) & (x < float("inf"))  # (NaN fails both)
    finf = tl.where(fin, 1.0, 0.0)
    sv = tl.where(fin, x, 0.0)
    nf = tl.sum(finf, axis=1)[:, None]
    n_neg = m - nf
    # the wires' softmax (top1_mode's terms); every wire masked: 0 / 0, torch's NaN
    xs = tl.where(fin, x, float("-inf"))
    mx = tl.max(xs, axis=1)[:, None]
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    e = tl.where(fin, tl.exp(xs - mx), 0.0)
    se = tl.sum(e, axis=1)[:, None]
    sm = e / se
    sm0 = _lane(sm, lanes, 0)
    if KIND == 0:  # a_j = sum_l |s_j - s_l| over the finite wires
        a = tl.zeros((ROWS, MP), tl.float32)
        for l in range(m):
            a += _lane(finf, lanes, l) * tl.abs(sv - _lane(sv, lanes, l))
        p0 = tl.zeros((ROWS, 1), tl.int32)
    else:
        a = sv
        p0 = tl.sum(tl.where(fin & (lanes > 0) & (x > s0), 1, 0), axis=1)[:, None]  # wire 0's place
    spread = tl.where(s0 == float("-inf"), 1.0 / tl.maximum(n_neg, 1.0), 0.0)  # ranks past the finite ones
    q_net = tl.zeros((ROWS, 1), tl.float32)
    for r in range(K):
        P, _ = _rank_row(r, sv, fin, a, nf, ic, lanes, p0, KIND)
        q_net += tl.load(CW + r) * tl.where(nf > r, _lane(P, lanes, 0), spread)
    loss, g_q = _loss_terms(q_net, sm0, tl.log(se) + mx - s0, MODE, p_first, p_rest)
    loss = tl.where(bad, float("nan"), loss)
    width = 1 + m if NEED_GRAD else 1
    tl.store(OUT + rows * width, loss, mask=rmask)
    if NEED_GRAD:
        first = tl.where(lanes == 0, 1.0, 0.0)
        gr = tl.zeros((ROWS, MP), tl.float32)
        V = tl.zeros((ROWS, MP), tl.float32)
        W = tl.zeros((ROWS, MP), tl.float32)
        for r in range(K):
            P, src = _rank_row(r, sv, fin, a, nf, ic, lanes, p0, KIND)
            w = g_q * tl.load(CW + r) * _lane(P, lanes, 0) * (first - P)  # dloss/dz_rj (0 past n_f)
            if KIND == 0:
                V += (nf - 1.0 - 2.0 * r) * w
                W += w
            else:
                d = _lane(sv, lanes, src) - sv
                ww = ic * w * (tl.where(d > 0, 1.0, 0.0) - tl.where(d < 0, 1.0, 0.0))
                gr += ww - tl.where(lanes == src, tl.sum(ww, axis=1)[:, None], 0.0)
        if KIND == 0:
            tot = V
            for j in range(m):
                d = sv - _lane(sv, lanes, j)
                sg = tl.where(d > 0, 1.0, 0.0) - tl.where(d < 0, 1.0, 0.0)
                tot -= _lane(finf, lanes, j) * sg * (W + _lane(W, lanes, j))
            gr = ic * tot * finf
        if MODE == 0:
            gr += g_q * p_first * sm0 * (first - sm)
        elif MODE == 1:
            gr += p_first * (sm - first)
        gr = tl.where(bad, float("nan"), gr)
        tl.store(OUT + rows * width + 1 + lanes, gr, mask=mask)
        tl.store(IDX + rows * m + lanes, idx.to(tl.int64), mask=mask)


# --------------------------------------------------------------------------- launchers
def _config(B: int, C: int, MP: int):
    """``(ROWS, BLOCK_C, num_warps)`` of the fused kernel.

    On a GPU one warp owns one row: the ``m - 1`` rounds of maxima of the
    preselection then reduce with warp shuffles only (no shared memory, no
    barrier).  The interpreter takes many rows per program instead.
    """
    BLOCK_C = column_block(C)
    if interpreting():
        return rows_per_program(B, BLOCK_C), BLOCK_C, 1
    return 1, BLOCK_C, 1


_TABS = {}


def _loss_table(table, c: Tuple[float, ...], m: int) -> torch.Tensor:
    """``TAB``: the layer lanes and the position weights (``c[r]`` at position ``m - 1 - r``) in one
    int32 tensor, cached by what they are."""
    device = table.lanes.device

    def build():
        v = sweep_init("weights", m, len(c), torch.float32, device, tuple(c))
        return torch.cat([table.lanes.reshape(-1), v.reshape(-1).view(torch.int32)])

    return device_constant(_TABS, (table.kind, table.n, table.k, str(device), tuple(c)), build)


@on_tensor_device
def topk_ce_fwd(logits, labels, c, table, relax_params, m: int, mode: str, p_first: float, p_rest: float,
                need_grad: bool):
    """``(out, idx)`` for ``logits [B, C]`` (any float dtype): ``out [B, 1 + m]`` float32 holds
    the loss (column 0) and its gradient w.r.t. the ``m`` wires, whose columns are ``idx [B, m]``
    (int64).  Without ``need_grad``: ``out [B, 1]`` and ``idx [B, 0]``.  ``c``: the rank weights
    ``c_r`` of the network part of the loss (``fastsort.losses.rank_weights``).
    """
    distribution, steepness, art_lambda = relax_params
    if logits.stride(1) != 1 or logits.data_ptr() % 16:
        logits = aligned(logits)  # rows may keep a stride; the start must be 16-byte aligned
    B, C = logits.shape
    labels = aligned(labels.to(torch.int64))
    D = table.depth
    MP = next_pow2(m)
    dev = logits.device
    out = torch.empty((B, 1 + m if need_grad else 1), device=dev, dtype=torch.float32)
    if need_grad:
        idx = torch.empty((B, m), device=dev, dtype=torch.int64)
        scratch = torch.empty((3, B, D, MP), device=dev, dtype=torch.float32)
    else:
        idx = scratch = out  # not written
    ROWS, BLOCK_C, warps = _config(B, C, MP)
    _topk_ce_fwd_kernel[(cdiv(B, ROWS),)](
        address(logits), address(labels), address(_loss_table(table, c, m)), address(out), address(idx),
        address(scratch),
        B, C, m, D, logits.stride(0), float(steepness), float(art_lambda), float(p_first), float(p_rest),
        X_DTYPE=TL_DTYPES[logits.dtype], DIST=dist_code(distribution), MODE=MODE_CODES[mode],
        NEED_GRAD=need_grad,
        ROWS=ROWS, MP=MP, BLOCK_C=BLOCK_C, num_warps=warps,
    )
    return out, (idx if need_grad else torch.empty((B, 0), device=dev, dtype=torch.int64))


@on_tensor_device
def topk_ce_bwd(out, idx, grad_out, C: int, dtype, scale: float = 1.0, col0: int = 0):
    """Dense ``dlogits [B, C]`` in ``dtype``: ``scale * grad_out * out[:, col0:col0 + m]`` at the columns
    ``idx [B, m]``, 0 elsewhere, in one launch (``grad_out``: a scalar or ``[B]`` tensor, any float dtype;
    ``out``: float32 with unit column stride, e.g. the fused forward's ``[B, 1 + m]`` with ``col0 = 1``).
    """
    B, m = idx.shape
    dx = torch.empty((B, C), device=idx.device, dtype=dtype)
    if B == 0 or C == 0:
        return dx
    if out.stride(1) != 1 or out.data_ptr() % 16:
        out, col0 = aligned(out[:, col0:col0 + m]), 0
    idx = aligned(idx)
    g = aligned(grad_out.reshape(-1))
    BLOCK_C = column_block(C)
    MP = next_pow2(m)
    ROWS = rows_per_program(B, BLOCK_C)
    _topk_ce_bwd_kernel[(cdiv(B, ROWS),)](
        address(out), address(idx), address(g), address(dx),
        B, C, m, out.stride(0), col0, float(scale),
        G_DTYPE=TL_DTYPES[g.dtype], DX_DTYPE=TL_DTYPES[dtype],
        G_PER_ROW=grad_out.dim() > 0, ROWS=ROWS, MP=MP, BLOCK_C=BLOCK_C,
        num_warps=num_warps(ROWS * BLOCK_C),
    )
    return dx


_CWS = {}


@on_tensor_device
def rows_ce_fwd(logits, labels, c, kind: str, inv_tau: float, m: int, mode: str, p_first: float, p_rest: float,
                need_grad: bool):
    """The fused NeuralSort / SoftSort loss (``kind``) on the GPU, the contract of
    :func:`fastsort.kernels.cpu_rows_loss.rows_ce_fwd`: ``(out [B, 1 + m], idx [B, m])``, whose
    :func:`topk_ce_bwd` makes ``dlogits``."""
    if kind not in KIND_CODES:
        raise ValueError(f"the fused rows loss serves {tuple(KIND_CODES)}, got {kind!r}")
    if mode not in MODE_CODES:
        raise ValueError(f"top1_mode must be one of {tuple(MODE_CODES)}, got {mode!r}")
    B, C = logits.shape
    K = len(c)
    if not 1 <= m <= C or K > m:
        raise ValueError(f"m = {m} wires need 1 <= m <= n_classes = {C} and at most m rank weights (got {K})")
    if logits.stride(1) != 1 or logits.data_ptr() % 16:
        logits = aligned(logits)
    labels = aligned(labels.to(torch.int64))
    dev = logits.device
    cw = device_constant(_CWS, (tuple(float(v) for v in c), str(dev)),
                         lambda: torch.tensor([float(v) for v in c], dtype=torch.float32, device=dev))
    out = torch.empty((B, 1 + m if need_grad else 1), device=dev, dtype=torch.float32)
    idx = torch.empty((B, m), device=dev, dtype=torch.int64) if need_grad else out  # (not written)
    MP = next_pow2(m)
    ROWS, BLOCK_C, warps = _config(B, C, MP)
    _rows_ce_fwd_kernel[(cdiv(B, ROWS),)](
        address(logits), address(labels), address(cw), address(out), address(idx),
        B, C, m, K, logits.stride(0), float(inv_tau), float(p_first), float(p_rest),
        X_DTYPE=TL_DTYPES[logits.dtype], KIND=KIND_CODES[kind], MODE=MODE_CODES[mode], NEED_GRAD=need_grad,
        ROWS=ROWS, MP=MP, BLOCK_C=BLOCK_C, num_warps=warps,
    )
    return out, (idx if need_grad else torch.empty((B, 0), device=dev, dtype=torch.int64))


def aot_variants():
    """Every ``constexpr`` variant the launchers use: ``(test_id, jit_fn, signature, constexprs)``."""

    sig = {"X": "i64", "LABELS": "i64", "TAB": "i64", "OUT": "i64", "IDX": "i64", "SCR": "i64",
           "B": "i32", "C": "i32", "m": "i32", "D": "i32", "stride_x": "i32", "steepness": "fp32",
           "art_lambda": "fp32", "p_first": "fp32", "p_rest": "fp32", "X_DTYPE": "constexpr",
           "DIST": "constexpr", "MODE": "constexpr", "NEED_GRAD": "constexpr", "ROWS": "constexpr",
           "MP": "constexpr", "BLOCK_C": "constexpr"}
    out = []
    for name, (code, *_) in RELAXATIONS.items():
        for mode, mcode in MODE_CODES.items():
            for need_grad in (False, True):
                out.append((f"_topk_ce_fwd_kernel-{name}-{mode}-grad{int(need_grad)}", _topk_ce_fwd_kernel, sig,
                            dict(X_DTYPE=tl.float32, DIST=code, MODE=mcode, NEED_GRAD=need_grad, ROWS=1, MP=16,
                                 BLOCK_C=1024)))
    for name, dt in (("bf16", tl.bfloat16), ("fp16", tl.float16)):
        out.append((f"_topk_ce_fwd_kernel-{name}-input", _topk_ce_fwd_kernel, sig,
                    dict(X_DTYPE=dt, DIST=4, MODE=0, NEED_GRAD=True, ROWS=1, MP=16, BLOCK_C=1024)))
    rows_sig = {"X": "i64", "LABELS": "i64", "CW": "i64", "OUT": "i64", "IDX": "i64", "B": "i32", "C": "i32",
                "m": "i32", "K": "i32", "stride_x": "i32", "ic": "fp32", "p_first": "fp32", "p_rest": "fp32",
                "X_DTYPE": "constexpr", "KIND": "constexpr", "MODE": "constexpr", "NEED_GRAD": "constexpr",
                "ROWS": "constexpr", "MP": "constexpr", "BLOCK_C": "constexpr"}
    for kind, kcode in KIND_CODES.items():
        for mode, mcode in MODE_CODES.items():
            for need_grad in (False, True):
                out.append((f"_rows_ce_fwd_kernel-{kind}-{mode}-grad{int(need_grad)}", _rows_ce_fwd_kernel,
                            rows_sig, dict(X_DTYPE=tl.float32, KIND=kcode, MODE=mcode, NEED_GRAD=need_grad,
                                           ROWS=1, MP=16, BLOCK_C=1024)))
        out.append((f"_rows_ce_fwd_kernel-{kind}-bf16-input", _rows_ce_fwd_kernel, rows_sig,
                    dict(X_DTYPE=tl.bfloat16, KIND=kcode, MODE=0, NEED_GRAD=True, ROWS=1, MP=16, BLOCK_C=1024)))
    scatter_sig = {"OUT": "i64", "IDX": "i64", "G": "i64", "DX": "i64", "B": "i32", "C": "i32", "m": "i32",
                   "stride_out": "i32", "col0": "i32", "scale": "fp32", "G_DTYPE": "constexpr",
                   "DX_DTYPE": "constexpr", "G_PER_ROW": "constexpr", "ROWS": "constexpr", "MP": "constexpr",
                   "BLOCK_C": "constexpr"}
    for name, dt in (("fp32", tl.float32), ("bf16", tl.bfloat16), ("fp16", tl.float16)):
        for per_row in (False, True):
            out.append((f"_topk_ce_bwd_kernel-{name}-perrow{int(per_row)}", _topk_ce_bwd_kernel, scatter_sig,
                        dict(G_DTYPE=dt, DX_DTYPE=dt, G_PER_ROW=per_row, ROWS=4, MP=16, BLOCK_C=1024)))
    return out
