"""
Projection onto the permutahedron in Triton: sequential PAV, parallel outputs and backward
==========================================================================================

Kernels for the soft sort, soft ranks and sparse top-k mask of
:mod:`fastsort.permutahedron` (docs/design.md, "Projection onto the
permutahedron"), written in the literate style of Triton's tutorials.  The
launchers sort the rows with ``torch.sort`` (stable) first; everything after the
sort runs here, in three kernels: the isotonic regression by
pool-adjacent-violators (PAV), the outputs scattered back through the
permutation with the saved block structure, and the backward.

PAV: one lane per row, sequential
---------------------------------
A program owns ``ROWS`` rows (a warp: one row per thread) and gives each its own
lane of every register vector.  Each lane runs the sequential stack PAV on its
row as a state machine, one step per loop iteration: **pool** the top two blocks
when they violate the order, else **push** the next sorted element.  A row takes
at most ``n - 1`` pushes and ``n - 1`` pools, so the loop runs at most ``2n - 2``
times whatever the input.  The top two blocks live in registers; the blocks
below them go to a scratch stack in global memory (one store per push, one load
per pool), and every step flags block starts in ``START`` (1 when a block is
pushed, 0 when it is pooled away).

Why not a data-parallel PAV (the row in registers, each round pooling every
violating pair of adjacent blocks at once, block sums from prefix sums and block
bounds by pointer jumping): compiled for sm_90 (``n = 1024``, 4 warps) one such
round is 922 SASS instructions per thread (388 shared-memory accesses, 51
barriers, 128 registers), ~3.7K warp instructions per row and round, and the
number of rounds is the depth of PAV's longest pooling cascade: measured with
the torch reference on ``randn`` rows of 1000, 1 to 60 rounds for ranks and 123
for the top-k mask at strength 10, 349 for kl ranks at ``n = 10000``.  A step of
the sequential kernel is 101 SASS instructions (rank, l2; 139 for kl ranks, 148
for the kl sort) for a warp of 32 rows, 52-58 registers, no spills: ~6K warp
instructions per row of 1000 in all, 20x fewer than 30 rounds, and a bound of
``2n - 2`` steps whatever the input.  docs/design.md has the comparison.

Outputs and backward: a flat tile of rows in registers
------------------------------------------------------
Every sorted position at once: its block is the running count of block starts,
the block's data comes from the stack by that index.  The backward's Jacobian is
block diagonal (block means for ``l2``, block softmax weights ``q`` for ``kl``),
so it is a per-block sum broadcast back to the block: a float64 prefix sum per
row, differences of it at each block's ends (``tl.gather`` on the 1-D tile), the
block's first position found by pointer jumping over ``first[j] = first[j - 1]``
inside a block (``log2(NP)`` gathers).

Saved tensors (the KernelOp's contract): ``sigma`` (int64, from ``torch.sort``),
``last`` (int32, each sorted position's block end), ``q`` (float32).  Rows with a
NaN give NaN outputs and NaN ``q``, hence NaN gradients.  ``aot_variants`` lists
the compile variants for the shared ahead-of-time compile test.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import MAX_LANES, address, aligned, as_pointer, cdiv, interpreting, next_pow2, num_warps, \
    on_tensor_device, rows_per_program

__all__ = ["isotonic_fwd", "isotonic_bwd", "aot_variants", "OP_CODES", "REG_CODES"]

#: integer codes of the operators and regularizations (the kernels' ``OP`` / ``REG`` constexprs)
OP_CODES = {"sort": 0, "rank": 1, "topk_mask": 2}
REG_CODES = {"l2": 0, "kl": 1}


# %%
# Block values
# ------------
# A block of sorted positions ``[f, e]`` is kept as ``a`` (``l2``: ``sum(s_B)``; ``kl``:
# ``sum_B exp(s_j - s_f)``, scaled by its first and largest element ``sf = s_f``) and ``g``
# (``kl`` sort: ``sum_{j < |B|} exp(-j / eps)``).  The weights' part of its value is a closed form
# of ``f`` and ``e``; ``c = 1 / eps``.


@triton.jit
def _value(a, g, sf, f, e, n, c, k, OP: tl.constexpr, REG: tl.constexpr):
    cnt = (e - f + 1).to(tl.float32)
    mean_rho = n - (f + e).to(tl.float32) * 0.5  # rho_i = n - i
    if REG == 0:
        if OP == 1:  # rank: mean(s_B) - mean(rho_B)
            v = a / cnt - mean_rho
        elif OP == 2:  # top-k mask: (sum(s_B) - #{i in B: i < k}) / |B|
            v = (a - tl.maximum(tl.minimum(e, k - 1) - f + 1, 0).to(tl.float32)) / cnt
        else:  # sort: mean(rho_B) / eps - mean(s_B)
            v = mean_rho * c - a / cnt
    else:
        if OP == 1:  # LSE(s_B) - log sum(rho_B)
            v = sf + tl.log(a / (cnt * mean_rho))
        else:  # LSE(rho_B / eps) - LSE(s_B)
            v = (n - f).to(tl.float32) * c - sf + tl.log(g / a)
    return v


@triton.jit
def _sorted(XS, base, j, mask, c, OP: tl.constexpr):
    """Sorted value ``j`` of each lane's row: ``x * c`` decreasing (rank, top-k) or ``-x`` (sort)."""
    x = tl.load(XS + base + j, mask=mask, other=0.0)
    if OP == 0:
        s = -x
    else:
        s = x * c
    return s


# %%
# Forward: the PAV kernel
# -----------------------


@triton.jit
def _isotonic_fwd_kernel(
    XS, SA, SG, SV, SF, START, NAN,
    R, n, c, k,
    OP: tl.constexpr, REG: tl.constexpr, ROWS: tl.constexpr, STEPS: tl.constexpr,
):
    """PAV on ``ROWS`` sorted rows ``XS [R, n]`` (one lane each).

    Leaves each row's blocks, in order, in the stack ``SA`` (float64: a block's sum stays exact for
    ties of huge values, e.g. the stand-ins of tied infinities), ``SG`` (float32; for the kl sort
    only) and ``SF`` (int32, first positions) ``[R, n]``, with ``START [R, n]`` (int8) flagging each
    block's first position and ``NAN [R]`` (int32) the rows holding a NaN.  ``SV`` (float32) is the
    stack's block values, needed while pooling.

    The loop body is written out (no device-function calls, 64-bit integers): in Triton's
    interpreter a call or a checked 32-bit integer op costs milliseconds, and this loop runs up to
    ``2n - 2`` times.
    """
    XS = as_pointer(XS, tl.float32)
    SA, SG, SV, SF = as_pointer(SA, tl.float64), as_pointer(SG, tl.float32), as_pointer(SV, tl.float32), \
        as_pointer(SF, tl.int32)
    START, NAN = as_pointer(START, tl.int8), as_pointer(NAN, tl.int32)
    KL_SORT: tl.constexpr = REG == 1 and OP == 0
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < R
    base = rows.to(tl.int64) * n
    nn = n.to(tl.int64)
    kk = k.to(tl.int64)
    zero = tl.zeros((ROWS,), dtype=tl.int64)
    one = tl.full((ROWS,), 1.0, tl.float32)
    ones8 = tl.full((ROWS,), 1, tl.int8)
    zeros8 = tl.zeros((ROWS,), dtype=tl.int8)

    # -- each lane's state: the top block (t*), the block below it (s*; valid when has2), the number
    #    of blocks in the scratch stack below those two, and the next sorted position to push
    x0 = tl.load(XS + base, mask=live, other=0.0)
    s0 = -x0 if OP == 0 else x0 * c
    has_nan = s0 != s0
    tl.store(START + base, ones8, mask=live)
    ta = (s0 if REG == 0 else one).to(tl.float64)  # the block sums in float64 (a tie of huge values stays exact)
    tg = one
    tsf = s0
    tf = zero
    tv = _value(ta, tg, tsf, tf, tf, nn, c, kk, OP, REG).to(tl.float32)
    sa, sg, ssf, sv, sfirst = ta, tg, tsf, tv, tf
    has2 = live & False
    barred = live & False  # (sort) the top block may not pool: it starts at or just after an infinity
    depth = zero
    i = zero + 1
    active = live & (i < nn)
    while tl.max(active.to(tl.int32), axis=0) > 0:
        for _ in range(STEPS):  # steps between two checks of the loop condition (a reduction)
            pool = active & has2 & (sv <= tv) & ~barred  # ties pool too
            push = active & ~pool & (i < nn)
            pop = pool & (depth > 0)
            top_of_stack = base + depth
            # pool: the top absorbs the block below it, whose place the next block of the stack takes;
            # push: the block below goes to the stack, the top moves down, sorted element i comes in
            pa = tl.load(SA + top_of_stack - 1, mask=pop, other=0.0)
            pv = tl.load(SV + top_of_stack - 1, mask=pop, other=0.0)
            pf = tl.load(SF + top_of_stack - 1, mask=pop, other=0).to(tl.int64)
            spill = push & has2
            tl.store(SA + top_of_stack, sa, mask=spill)
            tl.store(SV + top_of_stack, sv, mask=spill)
            tl.store(SF + top_of_stack, sfirst.to(tl.int32), mask=spill)
            if KL_SORT:
                pg = tl.load(SG + top_of_stack - 1, mask=pop, other=1.0)
                tl.store(SG + top_of_stack, sg, mask=spill)
            else:
                pg = sg
            tl.store(START + base + tf, zeros8, mask=pool)
            tl.store(START + base + i, ones8, mask=push)
            # one load serves both: the pushed element, or (kl) the first element of the popped block
            xl = tl.load(XS + base + tl.where(pool, pf, i), mask=push | pop, other=0.0)
            sl = -xl if OP == 0 else xl * c
            has_nan = has_nan | (push & (sl != sl))
            # the new top block [nf, ne] and its accumulators
            if REG == 0:
                na = tl.where(pool, sa + ta, sl)
                ng = sg
            else:
                na = tl.where(pool, sa + ta * tl.exp(tsf - ssf), one)  # tsf <= ssf: a factor <= 1
                if KL_SORT:
                    ng = tl.where(pool, sg + tg * tl.exp((sfirst - tf).to(tl.float32) * c), one)
                else:
                    ng = sg
            if REG == 1:
                nsf = tl.where(pool, ssf, sl)
            else:
                nsf = ssf  # the l2 values do not use a block's first element
            ii = tl.minimum(i, nn - 1)  # (a finished lane, i = n, computes a value it never uses)
            nf = tl.where(pool, sfirst, ii)
            ne = tl.where(pool, i - 1, ii)
            # its value (the body of _value, written out)
            cnt = (ne - nf + 1).to(tl.float32)
            mean_rho = nn - (nf + ne).to(tl.float32) * 0.5
            if REG == 0:
                if OP == 1:
                    nv = na / cnt - mean_rho
                elif OP == 2:
                    nv = (na - tl.maximum(tl.minimum(ne, kk - 1) - nf + 1, 0).to(tl.float32)) / cnt
                else:
                    nv = mean_rho * c - na / cnt
            else:
                if OP == 1:
                    nv = nsf + tl.log(na / (cnt * mean_rho))
                else:
                    nv = (nn - nf).to(tl.float32) * c - nsf + tl.log(ng / na)
            nv = nv.to(tl.float32)  # the values in float32, as the torch reference compares them
            # the new state: pooled, pushed, or unchanged (a finished lane); what an operator does not
            # use is not carried
            moved = pool | push
            n_sa = tl.where(pool, pa, tl.where(push, ta, sa))
            n_sv = tl.where(pool, pv, tl.where(push, tv, sv))
            n_sfirst = tl.where(pool, pf, tl.where(push, tf, sfirst))
            if REG == 1:
                n_ssf = tl.where(pool, sl, tl.where(push, tsf, ssf))
                tsf = tl.where(moved, nsf, tsf)
                ssf = n_ssf
            if KL_SORT:
                n_sg = tl.where(pool, pg, tl.where(push, tg, sg))
                tg = tl.where(moved, ng, tg)
                sg = n_sg
            has2 = tl.where(pool, depth > 0, has2 | push)
            ta = tl.where(moved, na, ta)
            tv = tl.where(moved, nv, tv)
            tf = tl.where(moved, nf, tf)
            sa, sv, sfirst = n_sa, n_sv, n_sfirst
            depth = depth - pop.to(tl.int64) + spill.to(tl.int64)
            i = i + push.to(tl.int64)
            if OP == 0:  # the soft sort's infinities are blocks of their own: no pool across one
                x_f = tl.load(XS + base + tf, mask=live, other=0.0)
                x_l = tl.load(XS + base + tf - 1, mask=live & (tf > 0), other=0.0)
                barred = (tl.abs(x_f) == float("inf")) | (tl.abs(x_l) == float("inf"))
            active = live & ((has2 & (sv <= tv) & ~barred) | (i < nn))

    # -- flush the two register blocks: the stack then holds all blocks of the row, in order
    top_of_stack = base + depth
    tl.store(SA + top_of_stack, sa, mask=live & has2)
    tl.store(SF + top_of_stack, sfirst.to(tl.int32), mask=live & has2)
    if KL_SORT:
        tl.store(SG + top_of_stack, sg, mask=live & has2)
    top_of_stack += has2.to(tl.int64)
    tl.store(SA + top_of_stack, ta, mask=live)
    tl.store(SF + top_of_stack, tf.to(tl.int32), mask=live)
    if KL_SORT:
        tl.store(SG + top_of_stack, tg, mask=live)
    tl.store(NAN + rows, has_nan.to(tl.int32), mask=live)


# %%
# Forward: the output kernel
# --------------------------
# Every sorted position at once (a flat tile of rows, as the backward): its block is the running
# count of block starts, its block's data comes from the stack by that index.


@triton.jit
def _isotonic_out_kernel(
    XS, PERM, SA, SG, SF, START, NAN, OUT, QO, LASTO,
    R, n, c, k,
    OP: tl.constexpr, REG: tl.constexpr, NEED_GRAD: tl.constexpr, ROWS: tl.constexpr, NP: tl.constexpr,
):
    """``OUT [R, n]`` (through ``PERM`` for rank and top-k) and, with ``NEED_GRAD``, the backward's
    weights ``QO`` and block ends ``LASTO`` (sorted order) from what :func:`_isotonic_fwd_kernel` left."""
    XS, PERM, SA, SG = as_pointer(XS, tl.float32), as_pointer(PERM, tl.int64), as_pointer(SA, tl.float64), \
        as_pointer(SG, tl.float32)
    SF, START, NAN = as_pointer(SF, tl.int32), as_pointer(START, tl.int8), as_pointer(NAN, tl.int32)
    OUT, QO, LASTO = as_pointer(OUT, tl.float32), as_pointer(QO, tl.float32), as_pointer(LASTO, tl.int32)
    t = tl.arange(0, ROWS * NP)
    lane = t % NP
    row0 = t - lane
    rows = (tl.program_id(0) * ROWS + t // NP).to(tl.int64)
    mask = (rows < R) & (lane < n)
    base = rows * n
    starts = tl.load(START + base + lane, mask=mask, other=0).to(tl.int32)
    running = tl.cumsum(starts, axis=0)  # over the flat tile: subtract the count before each row
    b = running - tl.gather(running, row0, axis=0)  # lane 0 always starts a block: b = 0 there
    nb = tl.gather(b, row0 + n - 1, axis=0) + 1
    f = tl.load(SF + base + b, mask=mask, other=0)
    e = tl.where(b + 1 < nb, tl.load(SF + base + b + 1, mask=mask & (b + 1 < nb), other=1), n) - 1
    a = tl.load(SA + base + b, mask=mask, other=1.0)
    cnt = (e - f + 1).to(tl.float32)
    sj = _sorted(XS, base, lane, mask, c, OP)
    j = lane.to(tl.float32)
    # each output in a form without cancellation of large terms (n / eps, |x| / eps)
    if REG == 0:
        q = 1.0 / cnt
        if OP == 0:  # (j - mean position of B) / eps - mean(s_B)
            o = (j - (f + e).to(tl.float32) * 0.5) * c - a / cnt
        elif OP == 1:  # (s_j - mean(s_B)) + mean(rho_B)
            o = (sj - a / cnt) + (n - (f + e).to(tl.float32) * 0.5)
        else:  # (s_j - mean(s_B)) + mean(w_B)
            o = (sj - a / cnt) + tl.maximum(tl.minimum(e, k - 1) - f + 1, 0).to(tl.float32) / cnt
    else:
        sf = _sorted(XS, base, f, mask, c, OP)
        q = tl.exp(sj - sf) / a  # softmax(s_B)_j
        if OP == 0:  # LSE(rho_B / eps) - rho_j / eps - LSE(s_B)
            g = tl.load(SG + base + b, mask=mask, other=1.0)
            o = (j - f.to(tl.float32)) * c + tl.log(g / a) - sf
        else:  # kl ranks: exp(s_j - v_B) = q_j sum(rho_B)
            o = q * (cnt * (n - (f + e).to(tl.float32) * 0.5))
    if OP == 0:  # an infinity of the soft sort: a block of its own, no gradient
        q = tl.where(tl.abs(sj) == float("inf"), 0.0, q)
    o = o.to(tl.float32)  # (float64 where it used the block's sum)
    q = q.to(tl.float32)
    bad = tl.load(NAN + rows, mask=mask, other=0) != 0
    o = tl.where(bad, float("nan"), o)
    if OP == 0:
        tl.store(OUT + base + lane, o, mask=mask)
    else:
        p = tl.load(PERM + base + lane, mask=mask, other=0)
        tl.store(OUT + base + p, o, mask=mask)
    if NEED_GRAD:
        tl.store(QO + base + lane, tl.where(bad, float("nan"), q), mask=mask)
        tl.store(LASTO + base + lane, e, mask=mask)


# %%
# Backward kernel
# ---------------


@triton.jit
def _isotonic_bwd_kernel(
    G, PERM, LAST, Q, DX,
    R, n, c,
    OP: tl.constexpr, REG: tl.constexpr, ROWS: tl.constexpr, NP: tl.constexpr, LOG_NP: tl.constexpr,
):
    """``DX [R, n]`` from the output gradient ``G`` and the saved ``PERM, LAST, Q`` (sorted order).

    A flat tile of ``ROWS`` rows of ``NP`` lanes (element ``t`` is lane ``t % NP`` of row ``t // NP``):
    per sorted position ``j``, with ``B`` its block, ``tot = sum_B h`` (``h = g``, or ``q g`` for the
    kl ranks) from a float64 prefix sum, then the block-diagonal vector-Jacobian product.
    """
    G, PERM, LAST = as_pointer(G, tl.float32), as_pointer(PERM, tl.int64), as_pointer(LAST, tl.int32)
    Q, DX = as_pointer(Q, tl.float32), as_pointer(DX, tl.float32)
    t = tl.arange(0, ROWS * NP)
    lane = t % NP
    row0 = t - lane  # flat index of lane 0 of this element's row
    rows = (tl.program_id(0) * ROWS + t // NP).to(tl.int64)
    mask = (rows < R) & (lane < n)
    base = rows * n
    last = tl.load(LAST + base + lane, mask=mask, other=0)
    last = tl.minimum(tl.maximum(last, lane), n - 1)  # a valid block end (and the lane itself off the row)
    prev = tl.load(LAST + base + lane - 1, mask=mask & (lane > 0), other=-1)
    start = (lane == 0) | (prev != last) | ~mask
    q = tl.load(Q + base + lane, mask=mask, other=0.0)
    p = tl.load(PERM + base + lane, mask=mask, other=0)
    if OP == 0:
        gj = tl.load(G + base + lane, mask=mask, other=0.0)
    else:
        gj = tl.load(G + base + p, mask=mask, other=0.0)
    if OP == 1 and REG == 1:
        h = q * gj
    else:
        h = gj
    # each block's first lane, by pointer jumping: a block start points at itself, any other lane at its
    # predecessor; log2(NP) rounds of ptr <- ptr[ptr] reach the start from anywhere in a block
    ptr = tl.where(start, t, t - 1)
    for _ in tl.static_range(LOG_NP):
        ptr = tl.gather(ptr, ptr, axis=0)
    # the prefix sums per row (a [ROWS, NP] view): a NaN row must not reach the next row's sums
    h64 = h.to(tl.float64)
    incl = tl.reshape(tl.cumsum(tl.reshape(h64, (ROWS, NP)), axis=1), (ROWS * NP,))
    excl = incl - h64
    tot = (tl.gather(incl, row0 + last, axis=0) - tl.gather(excl, ptr, axis=0)).to(tl.float32)
    if OP == 0:  # sort: q bs(g)
        d = q * tot
    elif REG == 0:  # rank / top-k, l2: (g - q bs(g)) / eps
        d = (gj - q * tot) * c
    else:  # rank, kl: q sum(rho_B) (g - bs(q g)) / eps
        first = ptr - row0
        w_b = (last - first + 1).to(tl.float32) * (n - (first + last).to(tl.float32) * 0.5)
        d = q * w_b * (gj - tot) * c
    tl.store(DX + base + p, d, mask=mask)


# %%
# Launchers
# ---------


def _check(x: torch.Tensor) -> None:
    if x.dim() != 2 or x.dtype != torch.float32:
        raise ValueError(f"the Triton permutahedron kernels take float32 rows [R, n], got {x.dtype} {tuple(x.shape)}")
    if x.shape[-1] > MAX_LANES:
        raise ValueError(f"the Triton permutahedron backward holds a row in registers: n={x.shape[-1]} > "
                         f"{MAX_LANES}; use backend='torch'")


#: rows (lanes) per PAV program on a GPU: one warp, one row per thread.  Never fewer: a lane's
#: scratch-stack store and its later load of the same address must come from the same thread
#: (with fewer rows than threads, Triton replicates a lane over several threads, stores from one
#: of them and loads from all, and nothing orders the two across threads).
PAV_ROWS = 32
#: PAV steps between two checks whether any lane of a program is still busy (a finished lane idles)
PAV_STEPS = 8


def _fwd_rows(R: int) -> int:
    """Rows (lanes) per PAV program: :data:`PAV_ROWS` on a GPU; in the interpreter all rows in one
    program (each program instance costs interpreter time, each lane nothing)."""
    if interpreting():
        return next_pow2(min(max(R, 1), 4096))
    return PAV_ROWS


def _tile(R: int, n: int):
    """(ROWS, NP, grid, num_warps) of the flat-tile kernels (outputs, backward)."""
    NP = next_pow2(n)
    ROWS = rows_per_program(R, NP)
    grid = cdiv(R, ROWS)
    return ROWS, NP, grid, num_warps(ROWS * NP, programs=grid)


@on_tensor_device
def isotonic_fwd(x: torch.Tensor, op: str, regularization: str, strength: float, k: int, need_grad: bool):
    """``(out, sigma, last, q)`` for float32 rows ``x [R, n]`` (see :mod:`fastsort.permutahedron`);
    without ``need_grad`` the last three are empty placeholders."""
    _check(x)
    R, n = x.shape
    dev = x.device
    if op == "sort":  # -x decreasing == x increasing
        xs, perm = torch.sort(x, dim=-1, stable=True)
    else:  # x * (1 / eps) decreasing has x's order; the kernels scale
        xs, perm = torch.sort(x, dim=-1, descending=True, stable=True)
    xs, perm = aligned(xs), aligned(perm)
    out = torch.empty((R, n), device=dev, dtype=torch.float32)
    if need_grad:
        q = torch.empty((R, n), device=dev, dtype=torch.float32)
        last = torch.empty((R, n), device=dev, dtype=torch.int32)
    else:
        q, last = x.new_empty(0), x.new_empty(0, dtype=torch.int32)
    kl_sort = regularization == "kl" and op == "sort"
    # the scratch stack (its values only while pooling) and the block starts
    sa = torch.empty((R, n), device=dev, dtype=torch.float64)
    sv = torch.empty((R, n), device=dev, dtype=torch.float32)
    sf = torch.empty((R, n), device=dev, dtype=torch.int32)
    sg = torch.empty((R, n), device=dev, dtype=torch.float32) if kl_sort else x.new_empty(0)
    start = torch.empty((R, n), device=dev, dtype=torch.int8)
    nan = torch.empty((R,), device=dev, dtype=torch.int32)
    if R and n:
        codes = dict(OP=OP_CODES[op], REG=REG_CODES[regularization])
        c = 1.0 / float(strength)
        rows = _fwd_rows(R)
        _isotonic_fwd_kernel[(cdiv(R, rows),)](
            address(xs), address(sa), address(sg), address(sv), address(sf), address(start), address(nan),
            R, n, c, int(k), **codes, ROWS=rows, STEPS=PAV_STEPS, num_warps=1,
        )
        ROWS, NP, grid, warps = _tile(R, n)
        _isotonic_out_kernel[(grid,)](
            address(xs), address(perm), address(sa), address(sg), address(sf), address(start), address(nan),
            address(out), address(q), address(last),
            R, n, c, int(k), **codes, NEED_GRAD=bool(need_grad), ROWS=ROWS, NP=NP, num_warps=warps,
        )
    if not need_grad:
        return out, perm.new_empty(0), last, q
    return out, perm, last, q


@on_tensor_device
def isotonic_bwd(grad: torch.Tensor, perm: torch.Tensor, last: torch.Tensor, q: torch.Tensor, op: str,
                 regularization: str, strength: float) -> torch.Tensor:
    """``dL/dx [R, n]`` from ``dL/dout`` and what :func:`isotonic_fwd` saved."""
    R, n = q.shape
    g = aligned(grad.to(torch.float32))
    perm, last, q = aligned(perm), aligned(last), aligned(q)
    dx = torch.empty((R, n), device=q.device, dtype=torch.float32)
    if R and n:
        ROWS, NP, grid, warps = _tile(R, n)
        _isotonic_bwd_kernel[(grid,)](
            address(g), address(perm), address(last), address(q), address(dx),
            R, n, 1.0 / float(strength),
            OP=OP_CODES[op], REG=REG_CODES[regularization], ROWS=ROWS, NP=NP, LOG_NP=NP.bit_length() - 1,
            num_warps=warps,
        )
    return dx


# %%
# Ahead-of-time compile variants
# ------------------------------


def aot_variants():
    """Every constexpr variant the launchers use, at representative block shapes:
    ``(test_id, jit_fn, signature, constexprs)``.  Tensors are addresses (``i64``); an unused one
    (an empty tensor) has address 0, which the JIT types ``i32``."""
    fwd_sig = {"XS": "i64", "SA": "i64", "SG": "i64", "SV": "i64", "SF": "i64", "START": "i64", "NAN": "i64",
               "R": "i32", "n": "i32", "c": "fp32", "k": "i32",
               "OP": "constexpr", "REG": "constexpr", "ROWS": "constexpr", "STEPS": "constexpr"}
    out_sig = {"XS": "i64", "PERM": "i64", "SA": "i64", "SG": "i64", "SF": "i64", "START": "i64", "NAN": "i64",
               "OUT": "i64", "QO": "i64", "LASTO": "i64", "R": "i32", "n": "i32", "c": "fp32", "k": "i32",
               "OP": "constexpr", "REG": "constexpr", "NEED_GRAD": "constexpr", "ROWS": "constexpr",
               "NP": "constexpr"}
    bwd_sig = {"G": "i64", "PERM": "i64", "LAST": "i64", "Q": "i64", "DX": "i64", "R": "i32", "n": "i32",
               "c": "fp32", "OP": "constexpr", "REG": "constexpr", "ROWS": "constexpr", "NP": "constexpr",
               "LOG_NP": "constexpr"}
    variants = []
    for op, oc in OP_CODES.items():
        for reg, rc in REG_CODES.items():
            if op == "topk_mask" and reg == "kl":
                continue  # rejected by the method: the sparse top-k is the l2 projection
            sg = "i64" if (op == "sort" and reg == "kl") else "i32"
            codes = dict(OP=oc, REG=rc)
            variants.append((f"isotonic_fwd-{op}-{reg}", _isotonic_fwd_kernel, dict(fwd_sig, SG=sg),
                             dict(codes, ROWS=PAV_ROWS, STEPS=PAV_STEPS)))
            for need_grad in (False, True):
                grad = "i64" if need_grad else "i32"
                variants.append((f"isotonic_out-{op}-{reg}-grad{int(need_grad)}", _isotonic_out_kernel,
                                 dict(out_sig, SG=sg, QO=grad, LASTO=grad),
                                 dict(codes, NEED_GRAD=need_grad, ROWS=1, NP=1024)))
            variants.append((f"isotonic_bwd-{op}-{reg}", _isotonic_bwd_kernel, bwd_sig,
                             dict(codes, ROWS=1, NP=1024, LOG_NP=10)))
    return variants
