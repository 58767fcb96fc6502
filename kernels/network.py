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

Tiles are *flat* 1-D tensors (element ``f`` is lane ``f % NP`` of the tile's
row ``f // NP``) and the partner index is ``f - lane + partner``.  This is a
performance choice, not a style one: Triton lowers a 1-D ``tl.gather`` through
shared memory (one store, a barrier, one load per element), while a gather
along an axis of a 2-D tensor gets a warp-local layout whose shuffle count
grows with the square of the axis length (docs/design.md, "Kernel design and
the measurements behind it").

The forward writes the per-layer mixing weights ``W [R, D, n]`` and layer
inputs ``XIN [R, D, n]`` once (only when a gradient is needed); the backward
reads them instead of recomputing the network.  Why not recompute: the
backward walks the layers in reverse and needs each layer's input, and
``D x n`` values per row do not fit in registers, so a recomputing backward
would first rerun the forward writing the same ``XIN`` to scratch -- the same
memory traffic plus a second chain of ``D`` dependent layers (the latency that
bounds these kernels on small batches).  The cost of saving is activation
memory: ``8 D n`` bytes per row, next to difftopk's dense ``n x n`` matrices
per layer.

Sweep tiles hold ``CB`` of the ``C`` columns of ``S^D`` per row ("lines").
When ``C`` is split over several programs (the full permutation matrix), the
backward reduces ``gW`` with atomics.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .launch import MAX_LANES, address, aligned, as_pointer, cdiv, next_pow2, num_warps, on_tensor_device, \
    rows_per_program
from ..relaxations import RELAXATIONS
from .relaxations import dist_code, relax


# --------------------------------------------------------------------------- device functions
@triton.jit
def layer_lanes(LANES, l, n, cols, cmask):
    """Partner lane, descending flag, and lane masks of layer ``l`` for lanes ``cols`` (any shape).

    ``LANES [D, n]`` holds ``partner | desc << 16`` per wire.
    """
    code = tl.load(LANES + l * n + cols, mask=cmask, other=0)
    p = tl.where(cmask, code & 0xFFFF, cols)  # pad lanes are their own partners
    desc = (code >> 16) != 0
    return p, desc, p > cols, p == cols


@triton.jit
def comparator_adjoint(g, gw, x, xp, idx, desc, is_lo, keep, steepness, art_lambda, DIST: tl.constexpr,
                       AXIS: tl.constexpr):
    """Add the comparators' share to the input gradient ``g``.

    ``gw`` is ``dL/dw`` per wire; both wires of a comparator share ``alpha``,
    so ``dL/dalpha = +-(gw_i + gw_p)``, and ``d = x[hi] - x[lo]`` sends
    ``g'(d) dL/dalpha`` to the high wire and its negative to the low wire.
    ``idx`` indexes the partner along ``AXIS``.
    """
    dalpha = gw + tl.gather(gw, idx, axis=AXIS)
    dalpha = tl.where(desc, -dalpha, dalpha)
    d = tl.where(is_lo, xp - x, x - xp)
    _, slope = relax(d, steepness, art_lambda, DIST)
    dd = dalpha * slope
    return g + tl.where(keep, 0.0, tl.where(is_lo, -dd, dd))


@triton.jit
def row_tile(pid, R, n, ROWS: tl.constexpr, NP: tl.constexpr):
    """A flat tile of ``ROWS`` rows: per element its row (int64), lane, the flat index of its
    row's lane 0, the lane mask and the element mask."""
    f = tl.arange(0, ROWS * NP)
    lane = f % NP
    rows = (pid * ROWS + f // NP).to(tl.int64)
    lmask = lane < n
    return rows, lane, f - lane, lmask, (rows < R) & lmask


@triton.jit
def sweep_tile(pid, cid, R, n, C, ROWS: tl.constexpr, CB: tl.constexpr, NP: tl.constexpr):
    """A flat sweep tile: ``CB`` columns ("lines") of ``ROWS`` rows, ``NP`` lanes each.

    Per element: row (int64), column ``c`` of ``S``, lane, flat index of its
    line's lane 0, lane mask, row mask and element mask.
    """
    f = tl.arange(0, ROWS * CB * NP)
    lane = f % NP
    line = f // NP
    rows = (pid * ROWS + line // CB).to(tl.int64)
    c = cid * CB + line % CB
    lmask = lane < n
    rmask = (rows < R) & lmask
    return rows, c, lane, f - lane, lmask, rmask, rmask & (c < C)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _network_fwd_kernel(
    X, Y, W, XIN, LANES,
    R, n, D, steepness, art_lambda,
    DIST: tl.constexpr, SAVE_W: tl.constexpr, SAVE_X: tl.constexpr, ROWS: tl.constexpr, NP: tl.constexpr,
):
    """Soft values after the network; optionally the per-layer ``w`` (for a sweep or
    the backward) and the per-layer inputs (for the backward).  Tensors arrive as
    addresses (see :mod:`fastsort.kernels.launch`)."""
    X, Y, W, XIN = as_pointer(X, tl.float32), as_pointer(Y, tl.float32), as_pointer(W, tl.float32), \
        as_pointer(XIN, tl.float32)
    LANES = as_pointer(LANES, tl.int32)
    rows, lane, base, lmask, mask = row_tile(tl.program_id(0), R, n, ROWS, NP)
    x = tl.load(X + rows * n + lane, mask=mask, other=0.0).to(tl.float32)
    for l in range(D):
        p, desc, is_lo, keep = layer_lanes(LANES, l, n, lane, lmask)
        xp = tl.gather(x, base + p, axis=0)
        d = tl.where(is_lo, xp - x, x - xp)  # x[hi] - x[lo], the same on both wires
        alpha, _ = relax(d, steepness, art_lambda, DIST)
        w = tl.where(keep, 1.0, tl.where(desc, 1.0 - alpha, alpha))
        off = rows * D * n + l * n + lane
        if SAVE_X:
            tl.store(XIN + off, x, mask=mask)
        if SAVE_W:
            tl.store(W + off, w, mask=mask)
        x = tl.where(keep, x, w * x + (1.0 - w) * xp)
    tl.store(Y + rows * n + lane, x, mask=mask)


@triton.jit
def _sweep_fwd_kernel(
    W, INIT, S0, SHIST, LANES,
    R, n, D, C,
    SAVE: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr, NP: tl.constexpr,
):
    """Reverse sweep ``S^0 = X S^D`` for ``CB`` columns of ``INIT [C, n]`` per row."""
    W, INIT, S0, SHIST = as_pointer(W, tl.float32), as_pointer(INIT, tl.float32), as_pointer(S0, tl.float32), \
        as_pointer(SHIST, tl.float32)
    LANES = as_pointer(LANES, tl.int32)
    rows, c, lane, base, lmask, rmask, mask = sweep_tile(tl.program_id(0), tl.program_id(1), R, n, C, ROWS, CB, NP)
    S = tl.load(INIT + c * n + lane, mask=mask, other=0.0).to(tl.float32)
    for i in range(D):
        l = D - 1 - i
        p, _, _, _ = layer_lanes(LANES, l, n, lane, lmask)
        w = tl.load(W + rows * D * n + l * n + lane, mask=rmask, other=1.0).to(tl.float32)
        if SAVE:
            tl.store(SHIST + ((rows * D + l) * C + c) * n + lane, S, mask=mask)
        S = w * S + (1.0 - w) * tl.gather(S, base + p, axis=0)
    tl.store(S0 + (rows * C + c) * n + lane, S, mask=mask)


@triton.jit
def _sweep_bwd_kernel(
    GS0, W, SHIST, GW, LANES,
    R, n, D, C, PART,
    ATOMIC: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr, NP: tl.constexpr,
):
    """Adjoint of the sweep: ``GW [R, D, n]`` (summed over the ``C`` columns).

    With the columns split over several programs (``program_id(1)``), either all add into
    ``GW`` (``ATOMIC``) or, for deterministic results, each writes its own partial ``GW`` at
    ``GW + program_id(1) * PART`` and the launcher sums them."""
    GS0, W, SHIST, GW = as_pointer(GS0, tl.float32), as_pointer(W, tl.float32), as_pointer(SHIST, tl.float32), \
        as_pointer(GW, tl.float32)
    LANES = as_pointer(LANES, tl.int32)
    pid, cid = tl.program_id(0), tl.program_id(1)
    rows, c, lane, base, lmask, rmask, mask = sweep_tile(pid, cid, R, n, C, ROWS, CB, NP)
    GW += cid.to(tl.int64) * PART  # this program's partial sum (PART = 0: the one GW)
    # the reduced [ROWS, NP] tile of GW
    rows2 = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    lane2 = tl.arange(0, NP)[None, :]
    mask2 = (rows2 < R) & (lane2 < n)
    g = tl.load(GS0 + (rows * C + c) * n + lane, mask=mask, other=0.0).to(tl.float32)
    for l in range(D):
        p, _, _, _ = layer_lanes(LANES, l, n, lane, lmask)
        idx = base + p
        S = tl.load(SHIST + ((rows * D + l) * C + c) * n + lane, mask=mask, other=0.0)
        contrib = g * (S - tl.gather(S, idx, axis=0))
        gw = tl.sum(tl.reshape(contrib, (ROWS, CB, NP)), axis=1)
        if ATOMIC:
            tl.atomic_add(GW + rows2 * D * n + l * n + lane2, gw, mask=mask2)
        else:
            tl.store(GW + rows2 * D * n + l * n + lane2, gw, mask=mask2)
        w = tl.load(W + rows * D * n + l * n + lane, mask=rmask, other=1.0).to(tl.float32)
        g = w * g + (1.0 - w) * tl.gather(g, idx, axis=0)


@triton.jit
def _network_bwd_kernel(
    GY, GW, W, XIN, GX, LANES,
    R, n, D, steepness, art_lambda,
    DIST: tl.constexpr, HAS_GY: tl.constexpr, HAS_GW: tl.constexpr, ROWS: tl.constexpr, NP: tl.constexpr,
):
    """Gradient w.r.t. the network input from ``dL/dy`` and ``dL/dW``."""
    GY, GW, W, XIN = as_pointer(GY, tl.float32), as_pointer(GW, tl.float32), as_pointer(W, tl.float32), \
        as_pointer(XIN, tl.float32)
    GX, LANES = as_pointer(GX, tl.float32), as_pointer(LANES, tl.int32)
    rows, lane, base, lmask, mask = row_tile(tl.program_id(0), R, n, ROWS, NP)
    if HAS_GY:
        g = tl.load(GY + rows * n + lane, mask=mask, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((ROWS * NP,), dtype=tl.float32)
    for i in range(D):
        l = D - 1 - i
        p, desc, is_lo, keep = layer_lanes(LANES, l, n, lane, lmask)
        idx = base + p
        off = rows * D * n + l * n + lane
        x = tl.load(XIN + off, mask=mask, other=0.0)
        w = tl.load(W + off, mask=mask, other=1.0)
        xp = tl.gather(x, idx, axis=0)
        gw = g * (x - xp)
        if HAS_GW:
            gw += tl.load(GW + off, mask=mask, other=0.0)
        g = w * g + (1.0 - w) * tl.gather(g, idx, axis=0)
        g = comparator_adjoint(g, gw, x, xp, idx, desc, is_lo, keep, steepness, art_lambda, DIST, 0)
    tl.store(GX + rows * n + lane, g, mask=mask)


# --------------------------------------------------------------------------- launchers
#: elements per thread: the layers run one after the other, so a row gets more warps than a
#: throughput kernel would give it (a shorter chain of dependent work per layer)
_PER_THREAD = 8


def _warps(tile: int, programs: int) -> int:
    """Warps of a network kernel: 8 elements per thread (fewer on small grids, never more)."""
    return num_warps(tile, _PER_THREAD, programs, max_per_thread=_PER_THREAD)


def check_size(n: int) -> None:
    if n > MAX_LANES:
        raise ValueError(f"the Triton network kernels hold a row in registers: n={n} > {MAX_LANES}; use backend='torch'")


def _sweep_blocks(R: int, C: int, NP: int):
    """(ROWS, CB, column programs) for a sweep over ``C`` columns of ``NP`` lanes: a program
    takes whole rows (all columns, no atomics in the backward) when its share of the
    ``R x C`` lines allows, else ``CB`` columns of one row."""
    CP = next_pow2(C)
    lines = rows_per_program(R * CP, NP)
    if lines >= CP:
        return lines // CP, CP, 1
    return 1, lines, cdiv(C, lines)


@on_tensor_device
def network_fwd(x: torch.Tensor, table, init: Optional[torch.Tensor], relax_params, need_grad: bool):
    """Triton forward: ``(y, S0, saved)`` like ``fastsort._torch_network.network_fwd``.

    ``x [R, n]`` float32 (contiguous); ``init [C, n]``.
    """
    distribution, steepness, art_lambda = relax_params
    R, n = x.shape
    check_size(n)
    D = table.depth
    NP = next_pow2(n)
    x = aligned(x.to(torch.float32))
    y = torch.empty_like(x)
    save_w = need_grad or init is not None
    W = x.new_empty((R, D, n)) if save_w else x.new_empty(0)
    XIN = x.new_empty((R, D, n)) if need_grad else x.new_empty(0)
    ROWS = rows_per_program(R, NP)
    if R:  # an empty batch launches nothing; its buffers keep their shapes for the backward
        grid = (cdiv(R, ROWS),)
        _network_fwd_kernel[grid](
            address(x), address(y), address(W), address(XIN), address(table.lanes),
            R, n, D, float(steepness), float(art_lambda),
            DIST=dist_code(distribution), SAVE_W=save_w, SAVE_X=need_grad, ROWS=ROWS, NP=NP,
            num_warps=_warps(ROWS * NP, grid[0]),
        )
    S0 = SHIST = None
    if init is not None:
        C = init.shape[0]
        init = aligned(init.to(torch.float32))
        S0 = x.new_empty((R, C, n))
        SHIST = x.new_empty((R, D, C, n)) if need_grad else x.new_empty(0)
        ROWS_S, CB, n_cprog = _sweep_blocks(R, C, NP)
        grid = (cdiv(R, ROWS_S), n_cprog)
        if R:
            _sweep_fwd_kernel[grid](
                address(W), address(init), address(S0), address(SHIST), address(table.lanes),
                R, n, D, C,
                SAVE=need_grad, ROWS=ROWS_S, CB=CB, NP=NP,
                num_warps=_warps(ROWS_S * CB * NP, grid[0] * grid[1]),
            )
    return y, S0, (W, XIN, SHIST)


@on_tensor_device
def network_bwd(saved, table, relax_params, gy: Optional[torch.Tensor], gS0: Optional[torch.Tensor]):
    """Triton backward: ``dL/dx [R, n]`` from ``dL/dy`` and ``dL/dS0`` (either may be None)."""
    distribution, steepness, art_lambda = relax_params
    W, XIN, SHIST = saved
    R, D, n = XIN.shape
    NP = next_pow2(n)
    if R == 0:  # an empty batch: nothing to launch
        return XIN.new_empty((0, n))
    GW = None
    if gS0 is not None:
        C = gS0.shape[1]
        gS0 = aligned(gS0.to(torch.float32))
        ROWS_S, CB, n_cprog = _sweep_blocks(R, C, NP)
        split = n_cprog > 1
        # split columns add into GW with atomics (run-to-run rounding differences), unless torch is
        # asked for deterministic algorithms: then one partial GW per column program, summed by torch
        partials = split and torch.are_deterministic_algorithms_enabled()
        shape = (n_cprog, R, D, n) if partials else (R, D, n)
        GW = (torch.zeros if split and not partials else torch.empty)(shape, device=W.device, dtype=torch.float32)
        grid = (cdiv(R, ROWS_S), n_cprog)
        _sweep_bwd_kernel[grid](
            address(gS0), address(W), address(SHIST), address(GW), address(table.lanes),
            R, n, D, C, R * D * n if partials else 0,
            ATOMIC=split and not partials, ROWS=ROWS_S, CB=CB, NP=NP,
            num_warps=_warps(ROWS_S * CB * NP, grid[0] * grid[1]),
        )
        if partials:
            GW = GW.sum(0)
    gx = torch.empty((R, n), device=W.device, dtype=torch.float32)
    if gy is not None:
        gy = aligned(gy.to(torch.float32))
    ROWS = rows_per_program(R, NP)
    grid = (cdiv(R, ROWS),)
    _network_bwd_kernel[grid](
        address(gy if gy is not None else gx), address(GW if GW is not None else W), address(W), address(XIN),
        address(gx), address(table.lanes),
        R, n, D, float(steepness), float(art_lambda),
        DIST=dist_code(distribution), HAS_GY=gy is not None, HAS_GW=GW is not None, ROWS=ROWS, NP=NP,
        num_warps=_warps(ROWS * NP, grid[0]),
    )
    return gx


# --------------------------------------------------------------------------- AOT compilation
def aot_variants():
    """Every ``constexpr`` variant the launchers use, for ahead-of-time compilation checks.

    Returns ``(test_id, jit_fn, signature, constexprs)`` tuples.  Tensors are addresses (``i64``); an
    unused one is an empty tensor whose address 0 the JIT types as ``i32``, and so does the signature.
    """
    out = []
    fwd_sig = {"X": "i64", "Y": "i64", "W": "i64", "XIN": "i64", "LANES": "i64",
               "R": "i32", "n": "i32", "D": "i32", "steepness": "fp32", "art_lambda": "fp32",
               "DIST": "constexpr", "SAVE_W": "constexpr", "SAVE_X": "constexpr", "ROWS": "constexpr",
               "NP": "constexpr"}
    bwd_sig = {"GY": "i64", "GW": "i64", "W": "i64", "XIN": "i64", "GX": "i64", "LANES": "i64",
               "R": "i32", "n": "i32", "D": "i32", "steepness": "fp32", "art_lambda": "fp32",
               "DIST": "constexpr", "HAS_GY": "constexpr", "HAS_GW": "constexpr", "ROWS": "constexpr",
               "NP": "constexpr"}
    for name, (code, *_) in RELAXATIONS.items():
        for save_w, save_x in ((False, False), (True, False), (True, True)):
            sig = dict(fwd_sig, W="i64" if save_w else "i32", XIN="i64" if save_x else "i32")
            out.append((f"_network_fwd_kernel-{name}-savew{int(save_w)}-savex{int(save_x)}",
                        _network_fwd_kernel, sig,
                        dict(DIST=code, SAVE_W=save_w, SAVE_X=save_x, ROWS=8, NP=128)))
        for has_gy, has_gw in ((True, True), (True, False), (False, True)):
            out.append((f"_network_bwd_kernel-{name}-gy{int(has_gy)}-gw{int(has_gw)}", _network_bwd_kernel,
                        bwd_sig, dict(DIST=code, HAS_GY=has_gy, HAS_GW=has_gw, ROWS=8, NP=128)))
    sw_sig = {"W": "i64", "INIT": "i64", "S0": "i64", "SHIST": "i64", "LANES": "i64",
              "R": "i32", "n": "i32", "D": "i32", "C": "i32",
              "SAVE": "constexpr", "ROWS": "constexpr", "CB": "constexpr", "NP": "constexpr"}
    swb_sig = {"GS0": "i64", "W": "i64", "SHIST": "i64", "GW": "i64", "LANES": "i64",
               "R": "i32", "n": "i32", "D": "i32", "C": "i32", "PART": "i32",
               "ATOMIC": "constexpr", "ROWS": "constexpr", "CB": "constexpr", "NP": "constexpr"}
    for save in (False, True):
        out.append((f"_sweep_fwd_kernel-save{int(save)}", _sweep_fwd_kernel,
                    dict(sw_sig, SHIST="i64" if save else "i32"),
                    dict(SAVE=save, ROWS=2, CB=8, NP=128)))
    for atomic in (False, True):
        out.append((f"_sweep_bwd_kernel-atomic{int(atomic)}", _sweep_bwd_kernel, swb_sig,
                    dict(ATOMIC=atomic, ROWS=2, CB=8, NP=128)))
    return out
