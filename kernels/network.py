"""Fused relaxed sorting networks: forward, reverse sweep, and hand-written backward.

One set of table-driven kernels serves every network (odd-even, bitonic,
splitter selection) and every relaxation (a ``constexpr`` switch in
:mod:`fastsort.kernels.relaxations`).  The math is the torch backend's
(:mod:`fastsort._torch_network`); per row, with ``p`` the partner wire::

    forward  x_i   <- w_i x_i + (1 - w_i) x_p         layers 1..D   (values)
    sweep    S_i   <- w_i S_i + (1 - w_i) S_p         layers D..1   (S = X S^D)
    sweep^T  gW_i   = <g_i, S_i - S_p>,  g <- mix(g)  layers 1..D
    values^T gw_i   = g_i (x_i - x_p) + gW_i, g <- mix(g),
             g_lo  -= g'(d) * dalpha,  g_hi += g'(d) * dalpha        layers D..1

A program owns a tile of rows (several rows per program when ``n`` is small)
padded to a power of two ``NP`` lanes and kept in registers; a layer reads its
row of the partner table and exchanges values with ``tl.gather``.  Pad lanes
are their own partners, so they pass through every layer untouched.

The forward writes the per-layer mixing weights ``W [R, D, n]`` and layer
inputs ``XIN [R, D, n]`` once (only when a gradient is needed); the backward
reads them instead of recomputing the network.

Sweep tiles hold ``CB`` of the ``C`` columns of ``S^D`` per row ("lines").
When ``C`` is split over several programs (the full permutation matrix), the
backward reduces ``gW`` with atomics.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .launch import MAX_LANES, next_pow2, num_warps, rows_per_program
from .relaxations import relax


# --------------------------------------------------------------------------- device functions
@triton.jit
def layer_lanes(LANES, l, n, cols, cmask):
    """Partner lane, descending flag, and lane masks of layer ``l`` (``[1, NP]``).

    ``LANES [D, n]`` holds ``partner | desc << 16`` per wire.
    """
    code = tl.load(LANES + l * n + cols, mask=cmask, other=0)
    p = tl.where(cmask, code & 0xFFFF, cols)  # pad lanes are their own partners
    desc = (code >> 16) != 0
    return p, desc, p > cols, p == cols


@triton.jit
def partner_lanes(LANES, l, n, cols, cmask, LINES: tl.constexpr, NP: tl.constexpr):
    """Layer ``l``'s partner lane for every element of a ``[LINES, NP]`` tile."""
    code = tl.load(LANES + l * n + cols, mask=cmask, other=0)
    return tl.broadcast_to(tl.where(cmask, code & 0xFFFF, cols), (LINES, NP))


@triton.jit
def comparator_adjoint(g, gw, x, xp, idx, desc, is_lo, keep, steepness, art_lambda, DIST: tl.constexpr):
    """Add the comparators' share to the input gradient ``g``.

    ``gw`` is ``dL/dw`` per wire; both wires of a comparator share ``alpha``,
    so ``dL/dalpha = +-(gw_i + gw_p)``, and ``d = x[hi] - x[lo]`` sends
    ``g'(d) dL/dalpha`` to the high wire and its negative to the low wire.
    """
    dalpha = gw + tl.gather(gw, idx, axis=1)
    dalpha = tl.where(desc, -dalpha, dalpha)
    d = tl.where(is_lo, xp - x, x - xp)
    _, slope = relax(d, steepness, art_lambda, DIST)
    dd = dalpha * slope
    return g + tl.where(keep, 0.0, tl.where(is_lo, -dd, dd))


@triton.jit
def sweep_tile(pid, cid, R, n, C, ROWS: tl.constexpr, CB: tl.constexpr, NP: tl.constexpr):
    """Indices of a sweep tile: ``CB`` columns ("lines") of ``ROWS`` rows, ``NP`` lanes each."""
    line = tl.arange(0, ROWS * CB)[:, None]
    rows = (pid * ROWS + line // CB).to(tl.int64)
    c = cid * CB + line % CB
    cols = tl.arange(0, NP)[None, :]
    cmask = cols < n
    rmask = (rows < R) & cmask
    return rows, c, cols, cmask, rmask, rmask & (c < C)


# --------------------------------------------------------------------------- kernels


@triton.jit
def network_forward_kernel(
    X, Y, W, XIN, LANES,
    R, n, D, steepness, art_lambda,
    DIST: tl.constexpr, SAVE_W: tl.constexpr, SAVE_X: tl.constexpr, ROWS: tl.constexpr, NP: tl.constexpr,
):
    """Soft values after the network; optionally the per-layer ``w`` (for a sweep or
    the backward) and the per-layer inputs (for the backward)."""
    pid = tl.program_id(0)
    rows = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    cols = tl.arange(0, NP)[None, :]
    cmask = cols < n
    mask = (rows < R) & cmask
    x = tl.load(X + rows * n + cols, mask=mask, other=0.0).to(tl.float32)
    for l in range(D):
        p, desc, is_lo, keep = layer_lanes(LANES, l, n, cols, cmask)
        xp = tl.gather(x, tl.broadcast_to(p, (ROWS, NP)), axis=1)
        d = tl.where(is_lo, xp - x, x - xp)  # x[hi] - x[lo], the same on both wires
        alpha, _ = relax(d, steepness, art_lambda, DIST)
        w = tl.where(keep, 1.0, tl.where(desc, 1.0 - alpha, alpha))
        off = rows * D * n + l * n + cols
        if SAVE_X:
            tl.store(XIN + off, x, mask=mask)
        if SAVE_W:
            tl.store(W + off, w, mask=mask)
        x = tl.where(keep, x, w * x + (1.0 - w) * xp)
    tl.store(Y + rows * n + cols, x.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def network_sweep_kernel(
    W, INIT, S0, SHIST, LANES,
    R, n, D, C,
    SAVE: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr, NP: tl.constexpr,
):
    """Reverse sweep ``S^0 = X S^D`` for ``CB`` columns of ``INIT [C, n]`` per row."""
    rows, c, cols, cmask, rmask, mask = sweep_tile(tl.program_id(0), tl.program_id(1), R, n, C, ROWS, CB, NP)
    S = tl.load(INIT + c * n + cols, mask=mask, other=0.0).to(tl.float32)
    for i in range(D):
        l = D - 1 - i
        idx = partner_lanes(LANES, l, n, cols, cmask, ROWS * CB, NP)
        w = tl.load(W + rows * D * n + l * n + cols, mask=rmask, other=1.0).to(tl.float32)
        if SAVE:
            tl.store(SHIST + ((rows * D + l) * C + c) * n + cols, S, mask=mask)
        S = w * S + (1.0 - w) * tl.gather(S, idx, axis=1)
    tl.store(S0 + (rows * C + c) * n + cols, S.to(S0.dtype.element_ty), mask=mask)


@triton.jit
def network_sweep_backward_kernel(
    GS0, W, SHIST, GW, LANES,
    R, n, D, C,
    ATOMIC: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr, NP: tl.constexpr,
):
    """Adjoint of the sweep: ``GW [R, D, n]`` (summed over the ``C`` columns)."""
    pid = tl.program_id(0)
    rows, c, cols, cmask, rmask, mask = sweep_tile(pid, tl.program_id(1), R, n, C, ROWS, CB, NP)
    rows2 = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    mask2 = (rows2 < R) & cmask
    g = tl.load(GS0 + (rows * C + c) * n + cols, mask=mask, other=0.0).to(tl.float32)
    for l in range(D):
        idx = partner_lanes(LANES, l, n, cols, cmask, ROWS * CB, NP)
        S = tl.load(SHIST + ((rows * D + l) * C + c) * n + cols, mask=mask, other=0.0)
        contrib = g * (S - tl.gather(S, idx, axis=1))
        gw = tl.sum(tl.reshape(contrib, (ROWS, CB, NP)), axis=1)
        if ATOMIC:
            tl.atomic_add(GW + rows2 * D * n + l * n + cols, gw, mask=mask2)
        else:
            tl.store(GW + rows2 * D * n + l * n + cols, gw, mask=mask2)
        w = tl.load(W + rows * D * n + l * n + cols, mask=rmask, other=1.0).to(tl.float32)
        g = w * g + (1.0 - w) * tl.gather(g, idx, axis=1)


@triton.jit
def network_backward_kernel(
    GY, GW, W, XIN, GX, LANES,
    R, n, D, steepness, art_lambda,
    DIST: tl.constexpr, HAS_GY: tl.constexpr, HAS_GW: tl.constexpr, ROWS: tl.constexpr, NP: tl.constexpr,
):
    """Gradient w.r.t. the network input from ``dL/dy`` and ``dL/dW``."""
    pid = tl.program_id(0)
    rows = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    cols = tl.arange(0, NP)[None, :]
    cmask = cols < n
    mask = (rows < R) & cmask
    if HAS_GY:
        g = tl.load(GY + rows * n + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((ROWS, NP), dtype=tl.float32)
    for i in range(D):
        l = D - 1 - i
        p, desc, is_lo, keep = layer_lanes(LANES, l, n, cols, cmask)
        idx = tl.broadcast_to(p, (ROWS, NP))
        off = rows * D * n + l * n + cols
        x = tl.load(XIN + off, mask=mask, other=0.0)
        w = tl.load(W + off, mask=mask, other=1.0)
        xp = tl.gather(x, idx, axis=1)
        gw = g * (x - xp)
        if HAS_GW:
            gw += tl.load(GW + off, mask=mask, other=0.0)
        g = w * g + (1.0 - w) * tl.gather(g, idx, axis=1)
        g = comparator_adjoint(g, gw, x, xp, idx, desc, is_lo, keep, steepness, art_lambda, DIST)
    tl.store(GX + rows * n + cols, g.to(GX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers
def _dist_code(distribution: str) -> int:
    from ..relaxations import DISTRIBUTION_CODES

    return DISTRIBUTION_CODES[distribution]


def check_size(n: int) -> None:
    if n > MAX_LANES:
        raise ValueError(f"the Triton network kernels hold a row in registers: n={n} > {MAX_LANES}; use backend='torch'")


def _sweep_blocks(R: int, C: int, NP: int):
    """(ROWS, CB, column programs) for a sweep over ``C`` columns of ``NP`` lanes."""
    CP = next_pow2(C)
    CB = max(1, min(CP, rows_per_program(CP, NP)))
    ROWS = rows_per_program(R, CB * NP) if CB == CP else 1
    return ROWS, CB, triton.cdiv(C, CB)


def network_apply(x: torch.Tensor, table, init: Optional[torch.Tensor], relax_params, need_grad: bool):
    """Triton forward: ``(y, S0, saved)`` like ``fastsort._torch_network.network_apply``.

    ``x [R, n]`` float32 (contiguous); ``init [C, n]``.
    """
    distribution, steepness, art_lambda = relax_params
    R, n = x.shape
    check_size(n)
    D = table.depth
    NP = next_pow2(n)
    x = x.contiguous()
    y = torch.empty_like(x)
    if R == 0:  # nothing to launch
        C = 0 if init is None else init.shape[0]
        return y, (None if init is None else x.new_empty((0, C, n))), (x.new_empty(0), x.new_empty(0), x.new_empty(0))
    save_w = need_grad or init is not None
    W = x.new_empty((R, D, n)) if save_w else x.new_empty(0)
    XIN = x.new_empty((R, D, n)) if need_grad else x.new_empty(0)
    ROWS = rows_per_program(R, NP)
    network_forward_kernel[(triton.cdiv(R, ROWS),)](
        x, y, W, XIN, table.lanes,
        R, n, D, float(steepness), float(art_lambda),
        DIST=_dist_code(distribution), SAVE_W=save_w, SAVE_X=need_grad, ROWS=ROWS, NP=NP,
        num_warps=num_warps(ROWS * NP),
    )
    S0 = SHIST = None
    if init is not None:
        C = init.shape[0]
        init = init.to(torch.float32).contiguous()
        S0 = x.new_empty((R, C, n))
        SHIST = x.new_empty((R, D, C, n)) if need_grad else x.new_empty(0)
        ROWS_S, CB, n_cprog = _sweep_blocks(R, C, NP)
        network_sweep_kernel[(triton.cdiv(R, ROWS_S), n_cprog)](
            W, init, S0, SHIST, table.lanes,
            R, n, D, C,
            SAVE=need_grad, ROWS=ROWS_S, CB=CB, NP=NP,
            num_warps=num_warps(ROWS_S * CB * NP),
        )
    return y, S0, (W, XIN, SHIST)


def network_apply_backward(saved, table, relax_params, gy: Optional[torch.Tensor], gS0: Optional[torch.Tensor]):
    """Triton backward: ``dL/dx [R, n]`` from ``dL/dy`` and ``dL/dS0`` (either may be None)."""
    distribution, steepness, art_lambda = relax_params
    W, XIN, SHIST = saved
    R, D, n = XIN.shape
    NP = next_pow2(n)
    GW = None
    if gS0 is not None:
        C = gS0.shape[1]
        gS0 = gS0.to(torch.float32).contiguous()
        ROWS_S, CB, n_cprog = _sweep_blocks(R, C, NP)
        GW = (torch.zeros if n_cprog > 1 else torch.empty)((R, D, n), device=W.device, dtype=torch.float32)
        network_sweep_backward_kernel[(triton.cdiv(R, ROWS_S), n_cprog)](
            gS0, W, SHIST, GW, table.lanes,
            R, n, D, C,
            ATOMIC=n_cprog > 1, ROWS=ROWS_S, CB=CB, NP=NP,
            num_warps=num_warps(ROWS_S * CB * NP),
        )
    gx = torch.empty((R, n), device=W.device, dtype=torch.float32)
    if gy is not None:
        gy = gy.to(torch.float32).contiguous()
    ROWS = rows_per_program(R, NP)
    network_backward_kernel[(triton.cdiv(R, ROWS),)](
        gy if gy is not None else gx, GW if GW is not None else W, W, XIN, gx, table.lanes,
        R, n, D, float(steepness), float(art_lambda),
        DIST=_dist_code(distribution), HAS_GY=gy is not None, HAS_GW=GW is not None, ROWS=ROWS, NP=NP,
        num_warps=num_warps(ROWS * NP),
    )
    return gx


# --------------------------------------------------------------------------- AOT compilation
def aot_variants():
    """Every ``constexpr`` variant the launchers use, for ahead-of-time compilation checks.

    Returns ``(test_id, jit_fn, signature, constexprs)`` tuples.
    """
    out = []
    fwd_sig = {"X": "*fp32", "Y": "*fp32", "W": "*fp32", "XIN": "*fp32", "LANES": "*i32",
               "R": "i32", "n": "i32", "D": "i32", "steepness": "fp32", "art_lambda": "fp32",
               "DIST": "constexpr", "SAVE_W": "constexpr", "SAVE_X": "constexpr", "ROWS": "constexpr",
               "NP": "constexpr"}
    bwd_sig = {"GY": "*fp32", "GW": "*fp32", "W": "*fp32", "XIN": "*fp32", "GX": "*fp32", "LANES": "*i32",
               "R": "i32", "n": "i32", "D": "i32", "steepness": "fp32", "art_lambda": "fp32",
               "DIST": "constexpr", "HAS_GY": "constexpr", "HAS_GW": "constexpr", "ROWS": "constexpr",
               "NP": "constexpr"}
    from ..relaxations import DISTRIBUTIONS

    for code, name in enumerate(DISTRIBUTIONS):
        for save_w, save_x in ((False, False), (True, False), (True, True)):
            out.append((f"network_forward_kernel-{name}-savew{int(save_w)}-savex{int(save_x)}",
                        network_forward_kernel, fwd_sig,
                        dict(DIST=code, SAVE_W=save_w, SAVE_X=save_x, ROWS=8, NP=128)))
        for has_gy, has_gw in ((True, True), (True, False), (False, True)):
            out.append((f"network_backward_kernel-{name}-gy{int(has_gy)}-gw{int(has_gw)}", network_backward_kernel,
                        bwd_sig, dict(DIST=code, HAS_GY=has_gy, HAS_GW=has_gw, ROWS=8, NP=128)))
    sw_sig = {"W": "*fp32", "INIT": "*fp32", "S0": "*fp32", "SHIST": "*fp32", "LANES": "*i32",
              "R": "i32", "n": "i32", "D": "i32", "C": "i32",
              "SAVE": "constexpr", "ROWS": "constexpr", "CB": "constexpr", "NP": "constexpr"}
    swb_sig = {"GS0": "*fp32", "W": "*fp32", "SHIST": "*fp32", "GW": "*fp32", "LANES": "*i32",
               "R": "i32", "n": "i32", "D": "i32", "C": "i32",
               "ATOMIC": "constexpr", "ROWS": "constexpr", "CB": "constexpr", "NP": "constexpr"}
    for save in (False, True):
        out.append((f"network_sweep_kernel-save{int(save)}", network_sweep_kernel, sw_sig,
                    dict(SAVE=save, ROWS=2, CB=8, NP=128)))
    for atomic in (False, True):
        out.append((f"network_sweep_backward_kernel-atomic{int(atomic)}", network_sweep_backward_kernel, swb_sig,
                    dict(ATOMIC=atomic, ROWS=2, CB=8, NP=128)))
    return out
