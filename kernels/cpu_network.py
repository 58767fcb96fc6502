"""Compiled CPU kernels (numba) of the relaxed sorting networks: forward, reverse sweep, backward.

The math is the torch backend's (:mod:`fastsort.networks.reference`; docs/design.md,
"Networks as tables" and "The reverse sweep"), the launchers' contract that of the
Triton launchers (:mod:`fastsort.kernels.network`).  On the CPU the torch backend
is bound by per-op overhead (a handful of whole-tensor ops per layer and
direction); here compiled loops run the whole network, parallel over rows.

Per row, for each comparator ``(lo, hi)`` of layer ``l`` (``d = x_hi - x_lo``,
``alpha = g(d)``; ``w = alpha`` ascending, ``1 - alpha`` descending, shared by
both wires)::

    forward  x_lo, x_hi <- w x_lo + (1 - w) x_hi,  w x_hi + (1 - w) x_lo     l = 1..D
    sweep    S_lo, S_hi <- the same mix, per column of S^D [C, n]           l = D..1
    sweep^T  gw = <g_lo - g_hi, S_lo - S_hi> (summed over C), g <- mix(g)   l = 1..D
    values^T gw += (g_lo - g_hi)(x_lo - x_hi);  g <- mix(g);
             dd = +-gw g'(d) (- on a descending comparator);
             g_lo -= dd,  g_hi += dd                                       l = D..1

Layout.  The kernels walk comparators, not wires (:func:`comparators`): ``alpha``
is evaluated once per comparator, both wires are updated in place, and a
pass-through wire costs nothing.  ``gw`` above is the sum of the two wires'
``dL/dw``, so the backward keeps one number per comparator and layer.  Rows run
``RB`` at a time side by side (:func:`block_rows`): a block is ``[n, RB]`` (wire
``i`` of its rows contiguous), so every comparator's loop runs over the block's
rows and vectorises, the relaxation included (:func:`~.cpu_relaxations.alphas`).
Each comparator's ``alpha`` is stored as one number of the values' dtype that
keeps both ``alpha`` and ``1 - alpha`` to its relative precision (:func:`_weights`).

The backward recomputes the forward of its rows instead of reading saved
layers.  What it needs of a block (per comparator and layer: ``alpha``, the
difference ``x_hi - x_lo``, and ``S_lo - S_hi`` per sweep column) lives in a
per-thread scratch that stays in the caches, while saved tensors of the whole batch would
be written once and read once from memory: ``W`` and ``XIN`` for soft ranks of
``[256, 1000]`` rows (bitonic, ``D = 55``) are 2 x 56 MB, and a fresh allocation
of that size is first-touch page faults (~50 ms per 56 MB on the benchmark
machine), more than the recomputed forward costs.  So ``saved`` is the op's
input ``x [R, n]`` and its sweep block ``S^D [C, n]`` (shared by the rows), in
the op's three saved slots (the first empty; the fake implementation gives
these shapes for this backend).  The recomputation runs the same code on the same input, so
it reproduces the forward bit for bit.  Sweeps with many columns (the full
permutation matrix) run in chunks of columns (:data:`_SWEEP_BYTES`).

Precision: the values and the sweep blocks are in the input's dtype (float32,
or float64), rounded after every layer as in the torch backend; the relaxations
(:mod:`fastsort.kernels.cpu_relaxations`) and the adjoints' arithmetic are
float64, except the default relaxation, cauchy, whose comparator runs as one
fused loop in the values' precision (:func:`~.cpu_relaxations.cauchy_encoded`,
:func:`~.cpu_relaxations.cauchy_slope`: float32 arithmetic for float32 rows,
8 lanes per vector; docs/design.md, "atan on each backend").  Both dtypes compile once each, on first use, cached on disk
(``cache=True``).  numba keys its cache by each function's own source file:
after editing ``cpu_relaxations.py``, delete ``kernels/__pycache__/cpu_*.nbi`` /
``.nbc`` so that the kernels recompile.

Threads: :func:`run_parallel` splits the row blocks over ``numba.get_num_threads()``
threads (all cores by default), independent of ``torch.get_num_threads()``.
Importing this module imports numba (not triton).
"""
from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional, Tuple

import numba
import numpy as np
import torch

from .cpu_relaxations import CAUCHY, alphas, cauchy_encoded, cauchy_slope, check_code, relaxation_code, slopes

__all__ = ["network_fwd", "network_bwd", "comparators"]


# --------------------------------------------------------------------------- tables
_COMPARATORS: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}


def comparators(table) -> Tuple[np.ndarray, np.ndarray]:
    """The comparators of each layer of a :class:`~fastsort.networks.NetworkTable` (cached).

    Returns ``(comps, count)``: ``comps`` int32 ``[D, M, 3]`` holds ``(lo, hi, desc)`` of
    comparator ``j < count[l]`` of layer ``l`` (``lo < hi``; ``M`` the most comparators of
    any layer, at least 1), ``count`` int64 ``[D]``.  Wires in no comparator pass through.
    """
    key = (table.kind, table.n, table.k)  # what the table is (get_network caches it anyway)
    hit = _COMPARATORS.get(key)
    if hit is None:
        partner = table.partner.detach().cpu().numpy().astype(np.int64)
        desc = table.desc.detach().cpu().numpy()
        D, n = partner.shape
        is_lo = partner > np.arange(n)
        count = is_lo.sum(1).astype(np.int64)
        comps = np.zeros((D, max(int(count.max(initial=0)), 1), 3), dtype=np.int32)
        for l in range(D):
            lo = np.nonzero(is_lo[l])[0]
            comps[l, :lo.size, 0] = lo
            comps[l, :lo.size, 1] = partner[l, lo]
            comps[l, :lo.size, 2] = desc[l, lo]
        hit = _COMPARATORS[key] = (comps, count)
    return hit


# --------------------------------------------------------------------------- kernels
#: rows per block, by batch size: the kernels run a block's RB rows side by side, the innermost
#: loops (over those rows) vectorise (a block is [n, RB]: wire i of its rows is contiguous).  16
#: rows ran ~1.8x faster per row than 8 (bitonic, n = 1000, one thread), 32 no faster (the
#: scratch outgrows the caches), 4 ~3x slower; a small batch keeps 8 (more blocks, for more
#: threads).  RB is a runtime value, which the loops read from the scratch's shape: with a
#: constant trip count LLVM unrolls the loops instead of vectorising them (numba does not run
#: LLVM's SLP vectoriser)
RB_SMALL, RB_LARGE = 8, 16


def block_rows(R: int) -> int:
    """``RB`` for a batch of ``R`` rows."""
    return RB_LARGE if R >= 4 * RB_LARGE else RB_SMALL


#: bytes of a thread's sweep scratch (per column chunk: the forward's blocks, the backward's
#: history); larger C (the full permutation matrix) is swept in chunks of columns
_SWEEP_BYTES = 8 << 20
_JIT = dict(cache=True, error_model="numpy")  # numpy's: IEEE division, no zero checks in the loops
_INLINE = dict(_JIT, inline="always")


@numba.njit(**_INLINE)
def _weights(A, de, wv, omv):
    """Decode the stored ``alpha`` of one comparator for the block's rows: ``w`` into ``wv``, ``1 - w``
    into ``omv`` (float64 ``[RB]``).

    ``A [RB]`` holds ``alpha`` when ``alpha <= 1/2`` and ``-(1 - alpha)`` (sign bit set, also for
    ``alpha = 1``) otherwise: one number per comparator that keeps both ``alpha`` and ``1 - alpha``
    to the storage type's relative precision."""
    for k in range(A.shape[0]):
        a = np.float64(A[k])
        neg = math.copysign(1.0, a) < 0.0
        al = 1.0 + a if neg else a
        be = -a if neg else 1.0 - a
        wv[k] = be if de else al
        omv[k] = al if de else be


@numba.njit(**_JIT)
def _values(Y, comps, count, code, steepness, art_lambda, AL, DX, d, t):
    """The network on a block ``Y [n, RB]`` (in place).  Stores each comparator's ``alpha`` (encoded,
    see :func:`_weights`) in ``AL [D, M, RB]`` and, unless ``DX`` is empty, its difference
    ``d = x_hi - x_lo`` in ``DX [D, M, RB]`` (all that the backward needs of the layers' values).
    Scratch: ``d [RB]`` (values dtype), ``t [RB]`` (float64)."""
    keep = DX.shape[0] > 0  # (a flag from a shape: one compiled version for both uses)
    D = comps.shape[0]
    K = Y.shape[1]  # = RB, from a shape: a constant trip count would be unrolled, not vectorised
    for l in range(D):
        for j in range(count[l]):
            lo = comps[l, j, 0]
            hi = comps[l, j, 1]
            de = comps[l, j, 2] != 0  # descending: the minimum goes to the high wire
            if code == CAUCHY:
                # the default relaxation: one fused loop in the values' precision (a float32 block's
                # comparator ~2.4x faster than the float64 block path below)
                for k in range(K):
                    a = Y[lo, k]
                    b = Y[hi, k]
                    dk = b - a
                    e, al, be = cauchy_encoded(dk, steepness)
                    AL[l, j, k] = e
                    d[k] = dk  # (kept after the loop: a branch inside it stops the vectorisation)
                    w = be if de else al
                    om = al if de else be
                    Y[lo, k] = w * a + om * b
                    Y[hi, k] = w * b + om * a
                if keep:
                    for k in range(K):
                        DX[l, j, k] = d[k]
                continue
            for k in range(K):
                d[k] = Y[hi, k] - Y[lo, k]  # in the values' dtype, as the torch backend
            alphas(d, t, code, steepness, art_lambda)
            for k in range(K):
                tk = t[k]
                w = 1.0 - tk if de else tk
                om = tk if de else 1.0 - tk
                a = Y[lo, k]
                b = Y[hi, k]
                Y[lo, k] = w * a + om * b
                Y[hi, k] = w * b + om * a
                AL[l, j, k] = tk if tk <= 0.5 else -(1.0 - tk)
            if keep:
                for k in range(K):
                    DX[l, j, k] = d[k]


@numba.njit(**_JIT)
def _sweep(S, comps, count, AL, HD, wv, omv):
    """Reverse sweep of a block ``S [cb, n, RB]`` (in place; layers D..1) with the stored ``alpha``;
    unless ``HD`` is empty, ``HD [D, >= cb, M, RB]`` receives each comparator's ``S_lo - S_hi`` as
    the layer's reverse mix sees them (what the sweep's adjoint needs)."""
    keep = HD.shape[0] > 0
    D = comps.shape[0]
    cb, n, K = S.shape
    for l in range(D - 1, -1, -1):
        for j in range(count[l]):
            lo = comps[l, j, 0]
            hi = comps[l, j, 1]
            _weights(AL[l, j], comps[l, j, 2] != 0, wv, omv)
            for c in range(cb):
                for k in range(K):
                    a = S[c, lo, k]
                    b = S[c, hi, k]
                    if keep:
                        HD[l, c, j, k] = a - b
                    S[c, lo, k] = wv[k] * a + omv[k] * b
                    S[c, hi, k] = wv[k] * b + omv[k] * a


@numba.njit(**_JIT)
def _sweep_adjoint(gS, HD, comps, count, AL, gA, wv, omv, acc):
    """Adjoint of :func:`_sweep` for ``gS = dL/dS^0 [cb, n, RB]`` (in place; layers 1..D): adds each
    comparator's ``gw = <g_lo - g_hi, S_lo - S_hi>`` (over the chunk's columns, in float64 in
    ``acc [RB]``) into ``gA [D, M, RB]``."""
    D = comps.shape[0]
    cb, K = gS.shape[0], gS.shape[2]
    for l in range(D):
        for j in range(count[l]):
            lo = comps[l, j, 0]
            hi = comps[l, j, 1]
            _weights(AL[l, j], comps[l, j, 2] != 0, wv, omv)
            for k in range(K):
                acc[k] = gA[l, j, k]
            for c in range(cb):
                for k in range(K):
                    a = np.float64(gS[c, lo, k])
                    b = np.float64(gS[c, hi, k])
                    acc[k] += (a - b) * HD[l, c, j, k]
                    gS[c, lo, k] = wv[k] * a + omv[k] * b
                    gS[c, hi, k] = wv[k] * b + omv[k] * a
            for k in range(K):
                gA[l, j, k] = acc[k]


@numba.njit(**_JIT)
def _values_adjoint(gY, DX, comps, count, code, steepness, art_lambda, AL, gA, has_gs, t, wv, omv):
    """Adjoint of :func:`_values` for ``gY = dL/dY [n, RB]`` (float64, in place; layers D..1) from the
    kept differences ``DX``, with the sweep adjoint's ``gA`` when ``has_gs``."""
    D = comps.shape[0]
    K = gY.shape[1]
    for l in range(D - 1, -1, -1):
        for j in range(count[l]):
            lo = comps[l, j, 0]
            hi = comps[l, j, 1]
            de = comps[l, j, 2] != 0
            d = DX[l, j]
            _weights(AL[l, j], de, wv, omv)
            if code == CAUCHY:  # (the fused loop of the default relaxation, as in _values)
                for k in range(K):
                    a = gY[lo, k]
                    b = gY[hi, k]
                    gw = (b - a) * d[k]
                    if has_gs:
                        gw += gA[l, j, k]
                    dd = (-gw if de else gw) * cauchy_slope(d[k], steepness)
                    gY[lo, k] = wv[k] * a + omv[k] * b - dd
                    gY[hi, k] = wv[k] * b + omv[k] * a + dd
                continue
            slopes(d, t, code, steepness, art_lambda)
            for k in range(K):
                a = gY[lo, k]
                b = gY[hi, k]
                gw = (b - a) * d[k]  # (g_lo - g_hi)(x_lo - x_hi)
                if has_gs:
                    gw += gA[l, j, k]
                dd = (-gw if de else gw) * t[k]  # w = 1 - alpha on a descending comparator
                gY[lo, k] = wv[k] * a + omv[k] * b - dd
                gY[hi, k] = wv[k] * b + omv[k] * a + dd


@numba.njit(**_JIT)
def _load_rows(src, r0, Y):
    """``Y [n, RB] = src[r0 : r0 + RB].T`` (``src [R, n]``), zero rows past ``R``."""
    R, n = src.shape
    for i in range(n):
        for k in range(Y.shape[1]):
            Y[i, k] = src[r0 + k, i] if r0 + k < R else 0.0


@numba.njit(**_JIT)
def _store_rows(Y, r0, dst):
    """``dst[r0 : r0 + RB] = Y.T`` for the rows that exist."""
    R, n = dst.shape
    for k in range(min(Y.shape[1], R - r0)):
        for i in range(n):
            dst[r0 + k, i] = Y[i, k]


@numba.njit(**_JIT)
def _load_block(init, c0, S):
    """``S[c, i, k] = init[c0 + c, i]`` for every row ``k`` of the block."""
    for c in range(S.shape[0]):
        for i in range(S.shape[1]):
            v = init[c0 + c, i]
            for k in range(S.shape[2]):
                S[c, i, k] = v


@numba.njit(nogil=True, **_JIT)
def _forward_run(x, comps, count, init, y, S0, code, steepness, art_lambda, CB, RB, first, last):
    """Values ``y [R, n]`` after the network of ``x [R, n]`` and, when ``C = init.shape[0] > 0``, the
    reverse sweep ``S0 [R, C, n] = X init`` (in chunks of ``CB`` columns), for the blocks of ``RB``
    rows ``first .. last - 1``.  Scratch: the block ``Y [n, RB]``, the stored ``alpha``
    ``AL [D, M, RB]`` and a chunk of sweep columns ``S [CB, n, RB]``."""
    check_code(code)
    R, n = x.shape
    D, M = comps.shape[0], comps.shape[1]
    C = init.shape[0]
    Y = np.empty((n, RB), dtype=x.dtype)
    AL = np.empty((D, M, RB), dtype=x.dtype)
    S = np.empty((min(CB, C), n, RB), dtype=x.dtype)
    DX = np.empty((0, M, RB), dtype=x.dtype)  # nothing is kept for a backward
    HD = np.empty((0, 0, M, RB), dtype=x.dtype)
    d = np.empty(RB, dtype=x.dtype)
    tv = np.empty(RB)
    wv = np.empty(RB)
    omv = np.empty(RB)
    for blk in range(first, last):
        r0 = blk * RB
        _load_rows(x, r0, Y)
        _values(Y, comps, count, code, steepness, art_lambda, AL, DX, d, tv)
        _store_rows(Y, r0, y)
        for c0 in range(0, C, CB):
            Sc = S[:min(CB, C - c0)]
            _load_block(init, c0, Sc)
            _sweep(Sc, comps, count, AL, HD, wv, omv)
            for k in range(min(RB, R - r0)):
                for c in range(Sc.shape[0]):
                    for i in range(n):
                        S0[r0 + k, c0 + c, i] = Sc[c, i, k]


@numba.njit(nogil=True, **_JIT)
def _backward_run(x, init, gy, gS0, comps, count, gx, code, steepness, art_lambda, has_gy, has_gs, CB, RB,
                  first, last):
    """``gx [R, n] = dL/dx`` for the inputs ``x [R, n]`` (and the sweep block ``init [C, n]``) from
    ``gy = dL/dy [R, n]`` (``has_gy``) and ``gS0 = dL/dS0 [R, C, n]`` (``has_gs``; ``C = 0`` otherwise),
    for the blocks of ``RB`` rows ``first .. last - 1``.

    Per block: recompute the values keeping the comparators' differences (:func:`_values`); per
    chunk of ``CB`` columns recompute the sweep keeping its differences (:func:`_sweep`) and run
    its adjoint (:func:`_sweep_adjoint`); then the values' adjoint (:func:`_values_adjoint`).
    Scratch: the block, ``alpha`` and the differences ``DX [D, M, RB]``, a chunk of sweep columns
    with its differences ``HD [D, CB, M, RB]``, the adjoints ``gS [CB, n, RB]``, ``gA [D, M, RB]``
    and ``gY [n, RB]``."""
    check_code(code)
    R, n = x.shape
    D, M = comps.shape[0], comps.shape[1]
    C = init.shape[0]
    cb = min(CB, C)
    Y = np.empty((n, RB), dtype=x.dtype)
    AL = np.empty((D, M, RB), dtype=x.dtype)
    DX = np.empty((D, M, RB), dtype=x.dtype)
    S = np.empty((cb, n, RB), dtype=x.dtype)
    HD = np.empty((D if C else 0, cb, M, RB), dtype=x.dtype)
    gS = np.empty((cb, n, RB), dtype=x.dtype)
    gA = np.zeros((D if C else 0, M, RB), dtype=x.dtype)
    gY = np.empty((n, RB))
    acc = np.empty(RB)
    d = np.empty(RB, dtype=x.dtype)
    tv = np.empty(RB)
    wv = np.empty(RB)
    omv = np.empty(RB)
    for blk in range(first, last):
        r0 = blk * RB
        rows = min(RB, R - r0)
        _load_rows(x, r0, Y)
        _values(Y, comps, count, code, steepness, art_lambda, AL, DX, d, tv)
        if has_gs:
            for l in range(D):
                for j in range(M):
                    for k in range(RB):
                        gA[l, j, k] = 0.0
            for c0 in range(0, C, CB):
                Sc = S[:min(CB, C - c0)]
                gSc = gS[:Sc.shape[0]]
                _load_block(init, c0, Sc)
                _sweep(Sc, comps, count, AL, HD, wv, omv)
                for c in range(gSc.shape[0]):
                    for i in range(n):
                        for k in range(RB):
                            gSc[c, i, k] = gS0[r0 + k, c0 + c, i] if k < rows else 0.0
                _sweep_adjoint(gSc, HD, comps, count, AL, gA, wv, omv, acc)
        for i in range(n):
            for k in range(RB):
                gY[i, k] = gy[r0 + k, i] if has_gy and k < rows else 0.0
        _values_adjoint(gY, DX, comps, count, code, steepness, art_lambda, AL, gA, has_gs, tv, wv, omv)
        for k in range(rows):
            for i in range(n):
                gx[r0 + k, i] = gY[i, k]


# --------------------------------------------------------------------------- launchers
def _dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


#: below this much work (comparator evaluations of one row each) a launch runs on the calling
#: thread alone: handing work to other threads costs tens of microseconds
SERIAL_WORK = 1 << 16
_POOL = None  # (pid, executor, workers): the pool threads, made on first use (again after a fork)


def _executor(workers: int) -> ThreadPoolExecutor:
    """The pool of at least ``workers`` threads (a new one in a forked child: threads do not survive
    a fork; a larger one when ``numba.set_num_threads`` raised the count)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[2] < workers:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[1].shutdown(wait=False)  # its idle threads exit; queued work still runs
        _POOL = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="fastsort-cpu"), workers)
    return _POOL[1]


def run_parallel(fn: Callable[[int, int], None], items: int, work: int) -> None:
    """Call ``fn(first, last)`` on runs covering ``range(items)``, on ``numba.get_num_threads()``
    threads (the calling thread and pool threads); on the calling thread alone when ``work`` is
    below :data:`SERIAL_WORK`.  ``fn`` is a ``nogil`` compiled function, so the runs are parallel.

    Every thread claims runs from one counter until none is left, and the call returns when all
    runs are done: a pool thread that the OS has not scheduled yet (a busy machine) delays nothing,
    the others take its runs (one preempted in the middle of a run still does).  This is why the
    kernels split their rows here rather than with ``numba.prange``, whose launch waits for every
    thread of numba's pool (measured on the 2-core benchmark machine with other processes busy: a
    small launch took 8-16 ms with numba's OpenMP layer at its default wait policy, 60 us on one
    thread), and whose parallel compilation passes cost several seconds per kernel on a cold cache
    (the cold compile of the network kernels went from ~100 s to ~40 s on that loaded machine).
    """
    if work < SERIAL_WORK or items <= 1:  # (before asking numba for its threads: ~5 us a call)
        fn(0, items)
        return
    threads = numba.get_num_threads()
    if threads == 1:
        fn(0, items)
        return
    runs = min(items, 2 * threads)  # (more runs than threads: a slow thread takes fewer)
    bounds = [items * i // runs for i in range(runs + 1)]
    claims = itertools.count()
    done = [0]
    errors = []
    finished = threading.Condition()

    def participate():
        while True:
            i = next(claims)  # atomic under the GIL
            if i >= runs:
                return
            try:
                fn(bounds[i], bounds[i + 1])
            except BaseException as e:  # re-raised by the caller
                errors.append(e)
            with finished:
                done[0] += 1
                if done[0] == runs:
                    finished.notify_all()

    pool = _executor(threads - 1)
    for _ in range(min(threads, runs) - 1):
        try:
            pool.submit(participate)
        except RuntimeError:  # shut down meanwhile by another thread's _executor: run without it
            break
    participate()
    with finished:
        while done[0] < runs:
            finished.wait()
    if errors:
        raise errors[0]


def _columns(C: int, column_bytes: int) -> int:
    """Columns per sweep chunk: as many as fit in ``_SWEEP_BYTES`` (at least one, at most ``C``)."""
    return max(1, min(C, _SWEEP_BYTES // max(column_bytes, 1)))


def network_fwd(x: torch.Tensor, table, init: Optional[torch.Tensor], relax_params, need_grad: bool):
    """CPU forward: ``(y, S0, saved)`` like the Triton ``network_apply``.

    Args:
        x: ``[R, n]`` CPU rows; float32 (float64 is computed in float64, other dtypes in float32).
        table: the network's :class:`~fastsort.networks.NetworkTable` (``n`` wires).
        init: None, or the block ``S^D [C, n]`` of the reverse sweep, shared by all rows.
        relax_params: ``(distribution, steepness, art_lambda)``.
        need_grad: return what :func:`network_bwd` needs.

    Returns:
        ``y [R, n]``; ``S0 [R, C, n] = X init`` (None when ``init`` is None); ``saved = (empty, x, init)``
        with ``need_grad`` (copies of the input ``[R, n]`` and of the sweep block ``[C, n]``, None
        without ``init``: the backward recomputes the layers, see the module docstring), else empty
        placeholders.
    """
    distribution, steepness, art_lambda = relax_params
    code = relaxation_code(distribution)
    dt = _dtype(x)
    x = x.detach().to(dt).contiguous()
    R, n = x.shape
    if n != table.n:
        raise ValueError(f"x has {n} wires, the network table {table.n}")
    comps, count = comparators(table)
    y = torch.empty((R, n), dtype=dt)
    if init is not None:
        init = init.detach().to(dt).contiguous()
        if init.dim() != 2 or init.shape[1] != n:
            raise ValueError(f"init must be a [C, {n}] block, got {tuple(init.shape)}")
        S0 = torch.empty((R, init.shape[0], n), dtype=dt)
        init_np = init.numpy()
    else:
        S0 = None
        init_np = np.empty((0, n), dtype=x.numpy().dtype)
    if R:
        RB = block_rows(R)
        args = (x.numpy(), comps, count, init_np, y.numpy(),
                S0.numpy() if S0 is not None else np.empty((R, 0, n), dtype=init_np.dtype),
                code, float(steepness), float(art_lambda), _columns(init_np.shape[0], n * RB * x.element_size()), RB)
        run_parallel(lambda first, last: _forward_run(*args, first, last), -(-R // RB),
                     R * int(count.sum()) * (1 + init_np.shape[0]))
    if need_grad:
        # what the backward reads -- the input and the sweep block -- and nothing else: it recomputes
        # the layers (module docstring); copies, as outputs of a custom op may not alias its inputs
        saved = (x.new_empty(0), x.clone(), None if init is None else init.clone())
    else:
        saved = (x.new_empty(0), x.new_empty(0), None if init is None else x.new_empty(0))
    return y, S0, saved


def network_bwd(saved, table, relax_params, gy: Optional[torch.Tensor], gS0: Optional[torch.Tensor]):
    """CPU backward: ``dL/dx [R, n]`` from ``gy = dL/dy [R, n]`` and ``gS0 = dL/dS0 [R, C, n]``
    (either may be None), with :func:`network_fwd`'s ``saved`` (run with ``need_grad``): it reads
    the input and the sweep block and recomputes the rest."""
    distribution, steepness, art_lambda = relax_params
    code = relaxation_code(distribution)
    _, x, init_saved = saved
    R, n = x.shape
    dt = x.dtype
    comps, count = comparators(table)
    if table.n != n:
        raise ValueError(f"saved inputs of {n} wires do not match the network table of {table.n}")
    gx = torch.empty((R, n), dtype=dt)
    if R == 0:
        return gx
    empty2 = np.empty((0, n), dtype=x.numpy().dtype)
    if gy is not None:
        gy = gy.detach().to(dt).contiguous()
    init = empty2
    if gS0 is not None:
        gS0 = gS0.detach().to(dt).contiguous()
        if init_saved is None or init_saved.shape != (gS0.shape[1], n):
            raise ValueError("dL/dS0 needs the saved state of a forward with init and need_grad")
        init = init_saved.numpy()
    RB = block_rows(R)
    args = (x.numpy(), init, gy.numpy() if gy is not None else empty2,
            gS0.numpy() if gS0 is not None else np.empty((0, 0, n), dtype=empty2.dtype),
            comps, count, gx.numpy(), code, float(steepness), float(art_lambda), gy is not None, gS0 is not None,
            _columns(init.shape[0], comps.shape[0] * comps.shape[1] * RB * x.element_size()), RB)
    run_parallel(lambda first, last: _backward_run(*args, first, last), -(-R // RB),
                 3 * R * int(count.sum()) * (1 + init.shape[0]))
    return gx
