"""Compiled CPU kernels (numba) of the permutahedron projections: sort, PAV, and the backward.

The math is the torch reference's (:mod:`fastsort.permutahedron`; docs/design.md,
"Projection onto the permutahedron"), the launchers' contract that of the Triton
launchers (:mod:`fastsort.kernels.isotonic`): ``isotonic_fwd`` returns the output
and the saved ``(sigma, last, q)``, ``isotonic_bwd`` the input gradient.  One
compiled loop per row does what torchsort spreads over a dozen torch ops and two
extension calls (sort, gathers, an inverse-permutation scatter, PAV, a second
pass to rebuild the blocks from the solution), in parallel over rows (the CPU kernels' one
launch helper, :func:`fastsort.kernels.cpu_network.run_parallel`).

Per row:

1. **Sort**, stable, by an LSD radix sort of 32-bit keys: the float's bits made
   order-preserving as an unsigned integer (negative: all bits flipped, else the
   sign bit set; ``-0.0`` becomes ``+0.0`` first), complemented for a decreasing
   order, shifted above the element's index in one 64-bit word (a pass moves one
   word per element, the index read back from the low bits is the
   permutation, and the high bits decode back to the sorted values: no
   gather from ``x``).  Three passes of 11 bits (8-bit passes below 4096 keys), each
   skipped when all keys share that digit: ``O(n)``, ~5 ns per element at
   ``n = 5000`` (numba's ``argsort``: ~32 ns at ``n = 1000``), and equal keys keep
   their input order, as ``torch.sort(stable=True)`` of the torch backend.  Rows
   of at most ``INSERTION_ROW`` elements are sorted by the library's bitonic
   network table (:func:`sort_network`), ``NETWORK_ROWS`` rows side by side (each
   comparator a vectorised min and max over the rows; the index in the keys' low
   bits makes every key distinct, so any correct sort is the stable one), or by
   insertion where only a few rows or fewer than ``NETWORK_MIN`` elements make a block;
   rows shorter than ``SHORT_ROW`` several at a time, the row number as the keys'
   highest bits (one more pass), so that the passes' fixed cost (their counters)
   is shared.
2. **PAV** with a stack of blocks (the sequential algorithm: push the next
   element, then pool the top two blocks while they violate the order): at most
   ``n - 1`` pushes and ``n - 1`` pools.  A block keeps its first sorted position,
   its value and one accumulated number in float64: ``l2``: ``sum(s_B)``; ``kl``:
   ``S_B = sum_B exp(s_j - s_f)``, scaled by the block's first and largest element
   ``s_f`` (plus, for the kl sort, the geometric series ``sum_{j<|B|} exp(-j / eps)``
   of the weights), so that a pool costs one ``exp`` and a value one ``log`` and
   nothing overflows; the weights' part of a value is a closed form of the block's
   bounds (``mean(rho_B)``, the top-k count, ``log sum(rho_B)``).
3. **Outputs**: walk the blocks, write the output through ``sigma`` (rank, top-k)
   or in sorted order (sort), each in a form without cancellation of the large
   terms (``n / eps``, ``|x| / eps``), and, when a gradient is needed, ``sigma``,
   each position's block end ``last`` and the weight ``q`` (``1/|B|`` or
   ``softmax(s_B)``).

A row holding a NaN gives a NaN output row and NaN weights (hence NaN gradients).
Infinities: the soft sort's are blocks of their own behind barriers, as on the
other backends; for the rank and top-k mask these kernels put in the finite
stand-ins that the other backends get from ``fastsort.functional.finite_stand_ins``
(the same float32 values), found while the keys are made, so that the public ops
skip their host-side finiteness test for this backend
(``Permutahedron.handles_infinities``), and mark each stand-in's saved weight
with the sign bit: no gradient, as the stand-in is a constant on those paths.

Precision: inputs, outputs and saved weights are float32; the sums, scaled sums
and block values are float64 (``x / eps`` rounded to float32 as torch does).
Compiled once on first use and cached on disk by numba (``cache=True``);
:func:`numba_status` tells the dispatcher whether numba imports at all.
Threads: ``run_parallel``'s (``numba.get_num_threads()`` of them, claiming runs of rows, so a
thread the OS has not scheduled delays nothing); a forward of fewer than 16384 elements, a
backward of fewer than 65536, or one row, runs on the calling thread (:func:`_work`).
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import numpy as np
import torch

from .._dispatch import _numba_status as numba_status  # the one "does numba import here" check
from ..functional import STAND_IN_GAP  # (imported when the kernels first run: fastsort is loaded by then)

try:
    import numba
except Exception:  # pragma: no cover - depends on the platform; numba_status() says why
    numba = None
else:
    from .cpu_memory import rows  # (the launchers pass tensors by address: ~1.5 us less each)

__all__ = ["isotonic_fwd", "isotonic_bwd", "numba_status", "OP_CODES", "REG_CODES"]

#: integer codes of the operators and regularizations, as the kernels take them
OP_CODES = {"sort": 0, "rank": 1, "topk_mask": 2}
REG_CODES = {"l2": 0, "kl": 1}


def _jit(inline: bool = False):
    """``numba.njit(cache=True, nogil=True)`` (compiled on first call, cached on disk; the GIL released,
    so that ``run_parallel``'s threads run at once); without numba the plain function, which is never
    called: the launchers check :func:`numba_status` first.  ``inline``: the per-row functions,
    inlined into their caller's loop (a call passes every array argument with its reference count,
    ~0.5 us per row of ten arrays: more than the work of a row of 16)."""
    def wrap(fn):
        if numba is None:
            return fn
        return numba.njit(cache=True, nogil=True, inline="always" if inline else "never")(fn)
    return wrap


# --------------------------------------------------------------------------- row functions
@_jit()
def _radix_sort(keys, keys2, count, lo_bit, nbits, dbits):
    """Stable LSD radix sort of ``keys`` (uint64, increasing) by their bits ``lo_bit .. lo_bit + nbits - 1``
    (nothing is set above them), ``dbits`` bits per pass; ``keys2`` is scratch of the same size,
    ``count`` int32 ``[passes, 2 ** dbits]`` scratch.  The low ``lo_bit`` bits (the element's index) ride
    along in the same word: a pass moves one 8-byte word per element.  A pass whose digit is the same
    in every key (often the high bits of values in a narrow range) is skipped."""
    m = keys.shape[0]
    passes = (nbits + dbits - 1) // dbits  # 3 to 6 (32 to 47 bits of 8 or 11 bits each)
    nb = 1 << dbits
    mask = np.uint64(nb - 1)
    count[:passes, :nb] = 0
    # every pass's counts in one read of the keys, the passes written out (a loop over them inside the
    # loop over the keys ran twice as long: 11 against 5 us at m = 5000)
    d1, d2, d3, d4, d5 = (np.uint64(dbits), np.uint64(2 * dbits), np.uint64(3 * dbits), np.uint64(4 * dbits),
                          np.uint64(5 * dbits))
    for i in range(m):
        key = keys[i] >> np.uint64(lo_bit)
        count[0, key & mask] += 1
        count[1, (key >> d1) & mask] += 1
        count[2, (key >> d2) & mask] += 1
        if passes > 3:
            count[3, (key >> d3) & mask] += 1
            if passes > 4:
                count[4, (key >> d4) & mask] += 1
                if passes > 5:
                    count[5, (key >> d5) & mask] += 1
    src, dst = keys, keys2
    moved = 0
    for d in range(passes):
        shift = np.uint64(lo_bit + dbits * d)
        if count[d, (src[0] >> shift) & mask] == m:  # every key has this digit
            continue
        total = 0
        for b in range(nb):
            c = count[d, b]
            count[d, b] = total
            total += c
        for i in range(m):
            key = src[i]
            b = (key >> shift) & mask
            pos = count[d, b]
            count[d, b] = pos + 1
            dst[pos] = key
        src, dst = dst, src
        moved += 1
    if moved % 2:  # an odd number of passes ran: the result is in the scratch buffer
        for i in range(m):
            keys[i] = src[i]


@_jit(inline=True)
def _insertion_sort(keys, lo, hi):
    """Insertion sort of ``keys[lo:hi]`` (increasing; the index in the low bits makes it stable): ``O(n^2)``,
    but for rows of at most ``INSERTION_ROW`` elements cheaper than the radix passes (about ``n / 4``
    moves per element against four passes of a joint sort whose keys carry the row)."""
    for i in range(lo + 1, hi):
        key = keys[i]
        j = i - 1
        while j >= lo and keys[j] > key:
            keys[j + 1] = keys[j]
            j -= 1
        keys[j + 1] = key


@_jit(inline=True)
def _network_sort(keys, kt, cnt, n, net):
    """Rows ``t < cnt`` of ``keys`` (``keys[t * n:(t + 1) * n]``, ``n <= INSERTION_ROW``) sorted increasing by
    the comparators ``net [C, 2]`` (``(a, b)``: the smaller key to wire ``a``; :func:`sort_network`),
    ``NETWORK_ROWS`` rows at a time side by side in the scratch ``kt`` (uint64 ``[INSERTION_ROW,
    NETWORK_ROWS]``, element ``j`` of the block's row ``t`` at ``kt[j, t]``): each comparator is one
    minimum and maximum loop over the block's rows."""
    for b0 in range(0, cnt, NETWORK_ROWS):
        rows = min(NETWORK_ROWS, cnt - b0)
        for t in range(rows):
            for j in range(n):
                kt[j, t] = keys[(b0 + t) * n + j]
        for q in range(net.shape[0]):
            ra = kt[net[q, 0]]
            rb = kt[net[q, 1]]
            for t in range(rows):
                u = ra[t]
                v = rb[t]
                ra[t] = min(u, v)
                rb[t] = max(u, v)
        for t in range(rows):
            for j in range(n):
                keys[(b0 + t) * n + j] = kt[j, t]


@_jit(inline=True)
def _row_keys(x, r, op, c, zf, keys, at, tag, ib):
    """The sort keys of row ``r`` into ``keys[at:at + n]``: ``tag << (32 + ib)``, plus the uint32 whose order
    is the float32 order of ``x * c`` decreasing (rank, top-k) or of ``x`` increasing (sort) shifted by
    ``ib``, plus the element's index ``i < 2 ** ib``; ``zf`` is float32 scratch ``[n]``.  Returns whether
    the row holds a NaN or an infinity (:func:`_special_row` tells which).  An infinity's key is the
    key its finite stand-in would have relative to the row's other keys (beyond all of them, equal to
    the other infinities of its sign), so the rank and top-k sort it as the stand-in."""
    n = x.shape[1]
    special = False
    for i in range(n):
        v = x[r, i]
        if v - v != 0.0:  # NaN or +-inf (0 for every finite v)
            special = True
        if op != 0:
            v = v * np.float32(c)  # float32 x * (1 / eps), the torch backend's (and torchsort's) rounding
        zf[i] = v + np.float32(0.0)  # -0.0 + 0.0 = +0.0: both zeros get one key
    bits = zf.view(np.uint32)
    high = np.uint64(tag) << np.uint64(32 + ib)
    flip = np.uint64(0xFFFFFFFF) if op != 0 else np.uint64(0)  # complemented for a decreasing order
    for i in range(n):  # order-preserving unsigned bits: negative -> all bits flipped, else the sign bit set
        b = np.uint64(bits[i])
        b = (b ^ np.uint64(0xFFFFFFFF)) if b & np.uint64(0x80000000) else (b | np.uint64(0x80000000))
        keys[at + i] = high | ((b ^ flip) << np.uint64(ib)) | np.uint64(i)
    return special


@_jit(inline=True)
def _key_bits(key, ib, flip):
    """The float32 bits (uint32) whose order-preserving image :func:`_row_keys` put above bit ``ib`` of
    ``key`` (``flip``: its complement for a decreasing order): the inverse of its map."""
    u = np.uint32((key >> np.uint64(ib)) & np.uint64(0xFFFFFFFF)) ^ flip
    return (u & np.uint32(0x7FFFFFFF)) if u & np.uint32(0x80000000) else (u ^ np.uint32(0xFFFFFFFF))


#: ``fastsort.functional``'s stand-ins for infinities, in float32: ``+-(M + clamp(4 M, GAP, BIG))`` (its gap)
_STAND_IN_GAP = np.float32(STAND_IN_GAP)
_STAND_IN_BIG = np.float32(np.finfo(np.float32).max / 16)


@_jit(inline=True)
def _special_row(x, r):
    """``(has_nan, bound)`` of a row that :func:`_row_keys` found special: whether it holds a NaN, and the
    magnitude ``M + clamp(4 M, 1e30, max / 16)`` (``M`` its largest finite magnitude, float32 as
    ``fastsort.functional.finite_stand_ins`` computes it) of the stand-in for its infinities."""
    has_nan = False
    m = np.float32(0.0)
    for i in range(x.shape[1]):
        v = x[r, i]
        if v != v:
            has_nan = True
        elif not math.isinf(v) and abs(v) > m:
            m = abs(v)
    return has_nan, m + min(max(np.float32(4.0) * m, _STAND_IN_GAP), _STAND_IN_BIG)


@_jit(inline=True)
def _block_value(a, g, sf, f, e, n, op, reg, c, k):
    """``v_B`` of the block of sorted positions ``[f, e]`` from what the stack keeps of it: ``a``
    (``l2``: ``sum(s_B)``; ``kl``: ``S_B = sum_B exp(s_j - s_f)``), ``g`` (``kl`` sort:
    ``G_B = sum_{j < |B|} exp(-j c)``) and ``sf = s_f``, the block's largest value; ``c = 1 / eps``."""
    cnt = e - f + 1.0
    mean_rho = n - (f + e) / 2.0  # rho_i = n - i
    if reg == 0:
        if op == 1:  # rank
            return a / cnt - mean_rho
        if op == 2:  # top-k mask: w = k ones, then zeros
            return (a - max(min(e, k - 1) - f + 1.0, 0.0)) / cnt
        return mean_rho * c - a / cnt  # sort: y = rho / eps - s
    if op == 1:  # LSE(s_B) - log sum(rho_B)
        return sf + math.log(a / (cnt * mean_rho))
    return (n - f) * c - sf + math.log(g / a)  # sort: LSE(rho_B / eps) - LSE(s_B)


@_jit(inline=True)
def _pav_row(r, x, idx, zs, special, out, perm_out, last_out, q_out, op, reg, c, k, need_grad, log_rho,
             s, acc, geo, bfirst, bval):
    """PAV and the outputs of row ``r`` whose stable sort is ``idx`` (int32 ``[n]``, already saved as
    ``perm_out[r]`` when a gradient is needed), ``zs`` the sorted values ``x * c`` (rank, top-k) or ``x``
    (sort) in float32, as the caller decoded them from the sort keys (float32 ``[n]``; for a
    ``special`` row, one holding a NaN or an infinity, filled here from ``x``).  The arrays after ``log_rho`` (``log(n - i)``, for the kl ranks'
    singletons) are per-thread scratch.

    Infinities: the soft sort's are blocks of their own behind barriers (no pooling across them,
    weight 0); the rank and top-k mask see each infinity as its finite stand-in (the torch and Triton
    paths get the same stand-ins from ``fastsort.functional.finite_stand_ins``; here the host's
    finiteness test is not needed), and its saved weight ``q`` carries the sign bit: the backward
    gives it no gradient, as the stand-in is a constant there."""
    n = x.shape[1]
    has_nan = False
    bound = np.float32(0.0)
    if special:
        has_nan, bound = _special_row(x, r)
    stand_ins = special and op != 0 and not has_nan
    # the soft sort's infinities need the checks below (a special row without NaN holds one); other
    # rows skip them (a NaN row's output is NaN whatever its infinities do)
    inf_row = op == 0 and special and not has_nan
    if special:  # the sort keys of its infinities are not their stand-ins' bits: the values from x
        for j in range(n):
            v = x[r, idx[j]]
            if stand_ins and math.isinf(v):
                v = bound if v > 0 else -bound
            zs[j] = v * np.float32(c) if op != 0 else v
    for j in range(n):  # the sorted values, and each one's value as a block of its own (for the pushes)
        sj = np.float64(zs[j]) if op != 0 else -np.float64(zs[j])
        s[j] = sj
        if reg == 1:
            bval[j] = sj - log_rho[j] if op == 1 else (n - j) * c - sj
        elif op == 1:
            bval[j] = sj - (n - j)
        elif op == 2:
            bval[j] = sj - (1.0 if j < k else 0.0)
        else:
            bval[j] = (n - j) * c - sj
    # PAV: block b of the stack covers sorted positions bfirst[b] .. bfirst[b + 1] - 1 (the top: .. i).
    # kl blocks keep their sum of exponentials scaled by their first (largest) element, so a pool costs
    # one exp (two for the sort's geometric series) and a value one log, and nothing overflows.
    # The top block lives in registers (first tf, sum ta, series tg, value tv), the blocks below it in
    # the arrays (0 .. top): a pool's sum then never waits for a store to memory to be read back
    # (that store-to-load chain took ~3 ns an element; in registers ~1).
    top = -1
    tf = 0
    tv = bval[0]
    ta = s[0] if reg == 0 else 1.0
    tg = 1.0
    for i in range(1, n):
        si = s[i]
        vi = bval[i]
        # the soft sort's infinities: blocks of their own, no pooling across them
        barrier = inf_row and (math.isinf(si) or math.isinf(s[i - 1]))
        if tv <= vi and not barrier:  # element i pools into the top block ...
            if reg == 0:
                ta += si
            else:
                ta += math.exp(si - s[tf])
                if op == 0:
                    tg += math.exp(-(i - tf) * c)
            tv = _block_value(ta, tg, s[tf], tf, i, n, op, reg, c, k)
            # ... and the top block with the ones below while they violate the order
            while top >= 0 and bval[top] <= tv and not (inf_row and math.isinf(s[tf - 1])):
                f0 = bfirst[top]
                if reg == 0:
                    ta += acc[top]
                else:
                    ta = acc[top] + ta * math.exp(s[tf] - s[f0])
                    if op == 0:
                        tg = geo[top] + tg * math.exp(-(tf - f0) * c)
                tf = f0
                top -= 1
                tv = _block_value(ta, tg, s[tf], tf, i, n, op, reg, c, k)
        else:  # the top block goes to the stack (top <= i - 1: bval[i:] is not overwritten)
            top += 1
            bfirst[top] = tf
            bval[top] = tv
            acc[top] = ta
            geo[top] = tg
            tf = i
            tv = vi
            ta = si if reg == 0 else 1.0
            tg = 1.0
    top += 1
    bfirst[top] = tf
    bval[top] = tv
    acc[top] = ta
    geo[top] = tg
    for b in range(top + 1):
        f = bfirst[b]
        e = bfirst[b + 1] - 1 if b < top else n - 1
        cnt = e - f + 1.0
        a = acc[b]
        # each output in a form without cancellation of large terms (n / eps, |x| / eps); with a
        # gradient, the saved sigma, block end and weight in the same pass
        if reg == 0:
            inv = 1.0 if e == f else 1.0 / cnt  # (singletons, often most blocks: no division)
            q = np.float32(inv)
            mean_s = a * inv
            if op == 0:  # v_B - rho_j / eps = (j - mean position) / eps - mean(s_B)
                if need_grad and inf_row and math.isinf(s[f]):  # an infinity of the soft sort: its own block, no gradient
                    q = np.float32(0.0)
                base = -(f + e) / 2.0 * c - mean_s
                if e == f:  # a singleton (often most blocks) without the loops' set-up: ~1.3x faster
                    out[r, f] = base + f * c
                    if need_grad:
                        q_out[r, f] = q
                        last_out[r, f] = e
                    continue
                for j in range(f, e + 1):
                    out[r, j] = base + j * c
                if need_grad:
                    for j in range(f, e + 1):
                        q_out[r, j] = q
                        last_out[r, j] = e
            else:  # rank: (s_j - mean(s_B)) + mean(rho_B); top-k: (s_j - mean(s_B)) + mean(w_B)
                # (s_j - mean(s_B)) first: both are of size |x| / eps, the weights' mean of size n or 1
                if op == 1:
                    mean_w = n - (f + e) / 2.0
                else:
                    mean_w = max(min(e, k - 1) - f + 1.0, 0.0) * inv
                if e == f:  # (as for the sort)
                    p = idx[f]
                    out[r, p] = (s[f] - mean_s) + mean_w
                    if need_grad:
                        q_out[r, f] = -q if stand_ins and math.isinf(x[r, p]) else q
                        last_out[r, f] = e
                    continue
                for j in range(f, e + 1):
                    out[r, idx[j]] = (s[j] - mean_s) + mean_w
                if need_grad:
                    for j in range(f, e + 1):
                        q_out[r, j] = -q if stand_ins and math.isinf(x[r, idx[j]]) else q
                        last_out[r, j] = e
        else:
            sf = s[f]
            if op == 0:  # LSE(rho_B / eps) - rho_j / eps - LSE(s_B) = (j - f) / eps + log(G_B / S_B) - s_f
                base = math.log(geo[b] / a) - f * c - sf
                for j in range(f, e + 1):
                    out[r, j] = base + j * c
                if need_grad:
                    for j in range(f, e + 1):
                        q_out[r, j] = 0.0 if inf_row and math.isinf(sf) else math.exp(s[j] - sf) / a  # softmax(s_B)_j
                        last_out[r, j] = e
            else:  # kl ranks: exp(s_j - v_B) = q_j sum(rho_B)
                w_b = cnt * (n - (f + e) / 2.0)
                for j in range(f, e + 1):
                    q = math.exp(s[j] - sf) / a
                    out[r, idx[j]] = q * w_b
                    if need_grad:
                        q_out[r, j] = -q if stand_ins and math.isinf(x[r, idx[j]]) else q
                        last_out[r, j] = e
    if has_nan:  # NaN in, NaN out (and NaN weights: NaN gradients)
        for j in range(n):
            out[r, j] = np.nan
            if need_grad:
                q_out[r, j] = np.nan


#: rows of fewer elements are sorted together, several rows in one radix sort (the row as the key's
#: highest bits): a sort's fixed cost (its passes' counters) would dominate a short row
SHORT_ROW = 512
#: rows of at most this many elements are sorted without radix passes: by a sorting network, or by insertion
INSERTION_ROW = 32
#: rows the sorting network sorts side by side (their keys, transposed, stay in the L1 cache: 32 KB at 32
#: elements; 256 rows ran 1.1-2x slower, 32 rows 1.2-1.4x, at n = 16 and 32)
NETWORK_ROWS = 128
#: the network sorts blocks of at least this many rows of at least this many elements; insertion the
#: others (at n = 5 it was the faster: 1.2 against 1.5 us for 100 rows)
NETWORK_MIN = 8
#: elements of one such joint sort (its scratch: 16 bytes each)
JOINT_SORT_ELEMS = 32768


@functools.lru_cache(maxsize=64)
def sort_network(n: int) -> np.ndarray:
    """The comparators :func:`_sort_block` sorts rows of ``n`` elements by (int64 ``[C, 2]``: the smaller key
    to wire ``C[:, 0]``): the library's bitonic network (:func:`fastsort.networks.network_layers`, any
    ``n``; its descending comparators written the other way round) for ``NETWORK_MIN <= n <=
    INSERTION_ROW``, none otherwise (insertion or radix passes sort those rows).  The merge network
    of Batcher's odd-even sort has fewer comparators (63 against 80 at ``n = 16``) but measured the
    same (22.7 against 23.4 us for 500 rows of 16), so the one table serves."""
    if not NETWORK_MIN <= n <= INSERTION_ROW:
        return np.empty((0, 2), dtype=np.int64)
    from ..networks import network_layers

    pairs = [(hi, lo) if desc else (lo, hi) for layer in network_layers("bitonic", n) for lo, hi, desc in layer]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


@_jit(inline=True)
def _sort_scratch(rows_left, n):
    """``(rows, ib, keys, keys2, count, zf, special)``: how many rows :func:`_sort_block` sorts at once
    (rows shorter than ``SHORT_ROW`` several at a time, up to ``JOINT_SORT_ELEMS`` elements), the bits
    ``ib`` of an element's index in its row, and the scratch of such a block (for rows of at most
    ``INSERTION_ROW`` elements ``keys2`` is the sorting network's ``[INSERTION_ROW, NETWORK_ROWS]``, flattened)."""
    rows = max(1, min(rows_left, JOINT_SORT_ELEMS // n)) if n < SHORT_ROW else 1
    ib = 1
    while (1 << ib) < n:
        ib += 1
    keys = np.empty(rows * n, dtype=np.uint64)
    keys2 = np.empty(INSERTION_ROW * NETWORK_ROWS if n <= INSERTION_ROW else rows * n, dtype=np.uint64)
    count = np.empty((6, 2048), dtype=np.int32)
    zf = np.empty(n, dtype=np.float32)
    special = np.empty(rows, dtype=np.bool_)
    return rows, ib, keys, keys2, count, zf, special


@_jit(inline=True)
def _sort_block(x, r0, cnt, op, c, zf, keys, keys2, count, ib, special, net):
    """Sort rows ``r0 .. r0 + cnt - 1`` of ``x`` (the order of :func:`_row_keys`): afterwards row ``t``'s keys
    are ``keys[t * n:(t + 1) * n]`` in order, each element's index in their low ``ib`` bits, and
    ``special[t]`` says whether the row holds a NaN or an infinity.  Rows of at most ``INSERTION_ROW``
    elements by the comparators ``net`` (:func:`sort_network`, :func:`_network_sort`) or, in small
    blocks or without comparators, by insertion, each by itself; longer ones in one joint radix sort,
    the row as the keys' highest bits."""
    n = x.shape[1]
    joint = n > INSERTION_ROW and cnt > 1
    for t in range(cnt):
        special[t] = _row_keys(x, r0 + t, op, c, zf, keys, t * n, t if joint else 0, ib)
    if n <= INSERTION_ROW:
        if cnt >= NETWORK_MIN and net.shape[0]:  # the rows side by side through the network
            _network_sort(keys, keys2.reshape(INSERTION_ROW, NETWORK_ROWS), cnt, n, net)
        else:  # each row by itself
            for t in range(cnt):
                _insertion_sort(keys, t * n, (t + 1) * n)
    else:
        mm = cnt * n
        tag_bits = 0
        while (1 << tag_bits) < cnt:
            tag_bits += 1
        # 11-bit digits (32-bit keys: 3 passes) once the 2048 counters per pass are worth it
        _radix_sort(keys[:mm], keys2[:mm], count, ib, 32 + tag_bits, 11 if mm >= 4096 else 8)


@_jit(inline=True)
def _forward_rows(lo, hi, x, out, perm_out, last_out, q_out, op, reg, c, k, need_grad, log_rho, net):
    """Rows ``lo .. hi - 1``, with one set of scratch arrays; inlined into one compiled function per
    operator and regularization (below), so that its branches on them are resolved at compile time (a
    fifth faster than reading ``op`` and ``reg`` at run time)."""
    n = x.shape[1]
    rows, ib, keys, keys2, count, zf, special_rows = _sort_scratch(hi - lo, n)
    imask = np.uint64((1 << ib) - 1)
    flip = np.uint32(0xFFFFFFFF) if op != 0 else np.uint32(0)
    zu = zf.view(np.uint32)
    idx = np.empty(n, dtype=np.int32)
    s = np.empty(n, dtype=np.float64)
    acc = np.empty(n, dtype=np.float64)
    geo = np.empty(n, dtype=np.float64)
    bval = np.empty(n, dtype=np.float64)
    bfirst = np.empty(n, dtype=np.int64)
    for r0 in range(lo, hi, rows):
        cnt = min(rows, hi - r0)
        _sort_block(x, r0, cnt, op, c, zf, keys, keys2, count, ib, special_rows, net)
        for t in range(cnt):  # the row is the keys' high part: row t is at t * n .. t * n + n
            r = r0 + t
            # the permutation, and the sorted values x * c (or x) decoded from the keys' bits (the inverse of
            # _row_keys' map): read in order, where gathering them from x took a random access each
            # (rank, l2, n = 5000: 53 -> 44 us for the whole forward)
            for j in range(n):
                key = keys[t * n + j]
                p = np.int32(key & imask)
                idx[j] = p
                if need_grad:
                    perm_out[r, j] = p  # (the saved sigma)
                zu[j] = _key_bits(key, ib, flip)
            _pav_row(r, x, idx, zf, special_rows[t], out, perm_out, last_out, q_out, op, reg,
                     c, k, need_grad, log_rho, s, acc, geo, bfirst, bval)


@_jit()
def sort_rows_decreasing(x, top, top_idx, ties, net, first, last):
    """Rows ``first .. last - 1`` of finite float32 rows ``x [R, n]`` sorted decreasing by the sort above
    (stable; ``-0.0`` equal to ``+0.0``): ``top[r]`` the values (float32), ``top_idx[r]`` their columns
    (int64), ``ties[r]`` whether two of the row's values are equal (where ``torch.sort``, not stable,
    may order their columns otherwise); ``net``: :func:`sort_network` of ``n``.  The SoftSort kernels' sort
    (:mod:`fastsort.kernels.cpu_softsort`)."""
    n = x.shape[1]
    rows, ib, keys, keys2, count, zf, special = _sort_scratch(last - first, n)
    imask = np.uint64((1 << ib) - 1)
    for r0 in range(first, last, rows):
        cnt = min(rows, last - r0)
        _sort_block(x, r0, cnt, 1, 1.0, zf, keys, keys2, count, ib, special, net)
        for t in range(cnt):
            r = r0 + t
            tie = False
            prev = np.uint64(0)
            for j in range(n):
                key = keys[t * n + j]
                col = np.int64(key & imask)
                top_idx[r, j] = col
                top[r, j] = x[r, col]
                v = key >> np.uint64(ib)  # (the row's tag and the value's bits)
                tie = tie or (j > 0 and v == prev)
                prev = v
            ties[r] = tie


@_jit(inline=True)
def _forward_arrays(x, out, perm_out, last_out, q_out, R, n, need_grad):
    """The forward's arrays ``[R, n]`` from the launcher's addresses (:mod:`fastsort.kernels.cpu_memory`):
    ``x``, ``out`` float32, ``sigma``, ``last`` int32 and ``q`` float32 (these three ``[0, 0]`` without
    ``need_grad``: never written)."""
    g = R if need_grad else 0
    return (rows(x, R, n, numba.float32), rows(out, R, n, numba.float32), rows(perm_out, g, n, numba.int32),
            rows(last_out, g, n, numba.int32), rows(q_out, g, n, numba.float32))


@_jit()
def _forward_sort_l2(lo, hi, x, out, perm_out, last_out, q_out, R, n, c, k, need_grad, log_rho, net):
    x, out, perm_out, last_out, q_out = _forward_arrays(x, out, perm_out, last_out, q_out, R, n, need_grad)
    _forward_rows(lo, hi, x, out, perm_out, last_out, q_out, 0, 0, c, k, need_grad, log_rho, net)


@_jit()
def _forward_sort_kl(lo, hi, x, out, perm_out, last_out, q_out, R, n, c, k, need_grad, log_rho, net):
    x, out, perm_out, last_out, q_out = _forward_arrays(x, out, perm_out, last_out, q_out, R, n, need_grad)
    _forward_rows(lo, hi, x, out, perm_out, last_out, q_out, 0, 1, c, k, need_grad, log_rho, net)


@_jit()
def _forward_rank_l2(lo, hi, x, out, perm_out, last_out, q_out, R, n, c, k, need_grad, log_rho, net):
    x, out, perm_out, last_out, q_out = _forward_arrays(x, out, perm_out, last_out, q_out, R, n, need_grad)
    _forward_rows(lo, hi, x, out, perm_out, last_out, q_out, 1, 0, c, k, need_grad, log_rho, net)


@_jit()
def _forward_rank_kl(lo, hi, x, out, perm_out, last_out, q_out, R, n, c, k, need_grad, log_rho, net):
    x, out, perm_out, last_out, q_out = _forward_arrays(x, out, perm_out, last_out, q_out, R, n, need_grad)
    _forward_rows(lo, hi, x, out, perm_out, last_out, q_out, 1, 1, c, k, need_grad, log_rho, net)


@_jit()
def _forward_topk_l2(lo, hi, x, out, perm_out, last_out, q_out, R, n, c, k, need_grad, log_rho, net):
    x, out, perm_out, last_out, q_out = _forward_arrays(x, out, perm_out, last_out, q_out, R, n, need_grad)
    _forward_rows(lo, hi, x, out, perm_out, last_out, q_out, 2, 0, c, k, need_grad, log_rho, net)


#: the compiled forward of each (operator, regularization)
_FORWARDS = {("sort", "l2"): _forward_sort_l2, ("sort", "kl"): _forward_sort_kl, ("rank", "l2"): _forward_rank_l2,
             ("rank", "kl"): _forward_rank_kl, ("topk_mask", "l2"): _forward_topk_l2}


@_jit(inline=True)
def _block_sum(g, r, perm, j, e, gathered):
    """``sum(g[r, perm[r, i]])`` (``gathered``) or ``sum(g[r, i])`` over ``i`` in ``j .. e``, in float64 by four
    partial sums (one running sum waits an addition's latency per element: 5 of the backward's 13 us at
    ``n = 5000`` in one block)."""
    t0 = 0.0
    t1 = 0.0
    t2 = 0.0
    t3 = 0.0
    i = j
    while i + 3 <= e:
        if gathered:
            t0 += g[r, perm[r, i]]
            t1 += g[r, perm[r, i + 1]]
            t2 += g[r, perm[r, i + 2]]
            t3 += g[r, perm[r, i + 3]]
        else:
            t0 += g[r, i]
            t1 += g[r, i + 1]
            t2 += g[r, i + 2]
            t3 += g[r, i + 3]
        i += 4
    while i <= e:
        t0 += g[r, perm[r, i]] if gathered else g[r, i]
        i += 1
    return (t0 + t1) + (t2 + t3)


@_jit(inline=True)
def _backward_row(r, g, perm, last, q, dx, op, reg, c):
    """Row ``r`` of the backward: per block, one sum and one write per element."""
    n = g.shape[1]
    j = 0
    while j < n:
        e = min(max(last[r, j], j), n - 1)  # a valid block end even from a corrupted input
        if e == j and reg == 0:  # a singleton block (often most of them) without the loops' set-up
            p = perm[r, j]
            qj = q[r, j]
            if op == 0:
                dx[r, p] = qj * np.float64(g[r, j])
            else:
                dx[r, p] = 0.0 if qj < 0.0 else (g[r, p] - qj * np.float64(g[r, p])) * c
            j += 1
            continue
        if op == 0:
            total = _block_sum(g, r, perm, j, e, False)
            for i in range(j, e + 1):
                dx[r, perm[r, i]] = q[r, i] * total
        elif reg == 0:  # rank / top-k, l2: (g - q bs(g)) / eps; a negative q: an infinity's stand-in, no gradient
            total = _block_sum(g, r, perm, j, e, True)
            for i in range(j, e + 1):
                p = perm[r, i]
                qi = q[r, i]
                dx[r, p] = 0.0 if qi < 0.0 else (g[r, p] - qi * total) * c
        else:  # rank, kl: q W_B (g - bs(q g)) / eps (a negative q as for l2)
            total = 0.0
            for i in range(j, e + 1):
                total += abs(q[r, i]) * np.float64(g[r, perm[r, i]])
            w_b = (e - j + 1.0) * (n - (j + e) / 2.0) * c
            for i in range(j, e + 1):
                p = perm[r, i]
                qi = q[r, i]
                dx[r, p] = 0.0 if qi < 0.0 else qi * w_b * (g[r, p] - total)
        j = e + 1


@_jit()
def _backward_rows(lo, hi, g, perm, last, q, dx, R, n, op, reg, c):
    """Rows ``lo .. hi - 1`` of the backward; the arrays ``[R, n]`` by address (as the forward's)."""
    g, dx = rows(g, R, n, numba.float32), rows(dx, R, n, numba.float32)
    perm, last, q = rows(perm, R, n, numba.int32), rows(last, R, n, numba.int32), rows(q, R, n, numba.float32)
    for r in range(lo, hi):
        _backward_row(r, g, perm, last, q, dx, op, reg, c)


# --------------------------------------------------------------------------- launchers
@functools.lru_cache(maxsize=None)
def _run_parallel():
    """``cpu_network.run_parallel``, imported on the first launch (it imports numba: only once
    :func:`numba_status` said numba imports), then looked up once per call, not imported."""
    from .cpu_network import run_parallel

    return run_parallel


def _check_available() -> None:
    problem = numba_status()
    if problem is not None:
        raise RuntimeError(f"fastsort: the numba kernels cannot run: {problem}")


def _work(R: int, n: int, backward: bool = False) -> int:
    """The work of a launch in ``run_parallel``'s unit (below its ``SERIAL_WORK = 65536`` a launch runs
    on the calling thread): a forward element ~20 ns counts 4, a backward one (~3 ns) 1, so forwards
    of fewer than 16384 elements and backwards of fewer than 65536 stay serial (handing rows to other
    threads costs tens of microseconds)."""
    return R * n * (1 if backward else 4)


@functools.lru_cache(maxsize=16)
def _log_rho(n: int) -> np.ndarray:
    """``log(n - i)`` for the sorted positions ``i`` (the kl ranks' singleton blocks), per row length."""
    return np.log(np.arange(n, 0, -1, dtype=np.float64))


def isotonic_fwd(x: torch.Tensor, op: str, regularization: str, strength: float, k: int, need_grad: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, sigma, last, q)`` for float32 CPU rows ``x [R, n]`` (see :mod:`fastsort.permutahedron`);
    without ``need_grad`` the last three are empty placeholders."""
    _check_available()
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2:
        raise ValueError(f"the numba kernels take float32 CPU rows [R, n], got {x.dtype} {tuple(x.shape)} "
                         f"on {x.device}")
    x = x.contiguous()
    R, n = x.shape
    # torch allocations (memory profiles see them; outputs of a custom op may not alias), by empty_like
    # of the contiguous rows: ~1 us a tensor against ~2-4 us for torch.empty with a shape and a dtype
    out = torch.empty_like(x)
    if need_grad:
        perm, last = torch.empty_like(x, dtype=torch.int32), torch.empty_like(x, dtype=torch.int32)
        q = torch.empty_like(x)
        saved = (perm.data_ptr(), last.data_ptr(), q.data_ptr())
    else:
        perm, last, q = x.new_empty(0, dtype=torch.int32), x.new_empty(0, dtype=torch.int32), x.new_empty(0)
        saved = (0, 0, 0)  # (arrays [0, n]: never written)
    if R and n:
        forward = _FORWARDS[op, regularization]
        # every tensor by its address (fastsort.kernels.cpu_memory): contiguous, of the kernels' dtypes,
        # alive until the call returns
        args = (x.data_ptr(), out.data_ptr(), *saved, R, n, 1.0 / float(strength), int(k), bool(need_grad),
                _log_rho(n), sort_network(n))
        _run_parallel()(lambda first, last: forward(first, last, *args), R, _work(R, n))
    return out, perm, last, q


def isotonic_bwd(grad: torch.Tensor, perm: torch.Tensor, last: torch.Tensor, q: torch.Tensor, op: str,
                 regularization: str, strength: float) -> torch.Tensor:
    """``dL/dx [R, n]`` from ``dL/dout`` and what :func:`isotonic_fwd` saved."""
    _check_available()
    g = grad if grad.dtype == torch.float32 and grad.is_contiguous() else grad.to(torch.float32).contiguous()
    R, n = q.shape
    if (g.shape != q.shape or perm.shape != q.shape or last.shape != q.shape or q.dtype != torch.float32
            or perm.dtype != torch.int32 or last.dtype != torch.int32 or g.device.type != "cpu"):
        raise ValueError(f"isotonic_bwd takes the saved int32 sigma and last and float32 q of isotonic_fwd and a "
                         f"gradient of their shape, got {perm.dtype} {tuple(perm.shape)}, {last.dtype} "
                         f"{tuple(last.shape)}, {q.dtype} {tuple(q.shape)} and {tuple(g.shape)}")
    dx = torch.empty_like(g)  # (g: float32, contiguous, [R, n])
    if R and n:
        perm, last, q = perm.contiguous(), last.contiguous(), q.contiguous()
        args = (g.data_ptr(), perm.data_ptr(), last.data_ptr(), q.data_ptr(), dx.data_ptr(), R, n,
                OP_CODES[op], REG_CODES[regularization], 1.0 / float(strength))
        _run_parallel()(lambda first, last: _backward_rows(first, last, *args), R, _work(R, n, backward=True))
    return dx
