"""Compiled CPU kernels (numba) of SoftSort's rows: ``P[r, i, j] = softmax_j(-|t_i - s_j| / tau)``.

The math is :func:`fastsort.softmax_sorts.softsort_rows`' (docs/design.md,
"NeuralSort and SoftSort"), for finite float32 rows and ``pow = 1``, with
``t = `` the ``k`` largest values of the row in decreasing order (``torch.topk`` in
the launcher for ``k < n``; with ``k = n`` the kernel sorts, by the permutahedron kernels' stable sort,
4-5x faster than ``torch.sort`` at ``[128, 100]``; tied values name the columns ``torch.sort`` gives
them, see :data:`KERNEL_SORT_ROW`).  Per row ``r`` and rank
``i``, over the ``n`` columns:

* **forward, separable** (rows whose span ``(max s - min s) / tau`` is at most
  :data:`SEPARABLE_SPAN`): with ``a_j = exp(-(max s - s_j) / tau)`` (``n``
  exponentials, float64, rounded to float32) and ``1 / a_j``, every entry is
  ``exp(-|t_i - s_j| / tau) = min(a_j / a_c, a_c / a_j)`` where ``c`` is the
  column ``t_i`` came from (``a_j / a_c <= 1`` exactly where ``s_j <= t_i``; the
  other quotient is its reciprocal): two products and a minimum per entry, no
  exponential (the exponential of every entry was most of the forward).  For
  ``k = n`` the row sums come from the rank order too: rank ``i``'s is ``(1 /
  a_c) A_i + a_c I_i`` with ``A_i`` the sum of ``a`` over ranks ``i .. n - 1`` and
  ``I_i`` that of ``1 / a`` over ranks ``0 .. i - 1`` (tied values give 1 either
  way), so the normalisation folds into the two factors; for ``k < n`` each
  rank's row is summed.  Every entry is then within 3 float32 roundings of the
  exact value (the factors are exact to float64 before their rounding), whatever
  the span; the bound on the span keeps ``a_j >= e^-80`` and ``1 / a_j <= e^80``
  normal float32 numbers, and every entry too.
* **forward, exact** (wider rows): ``z_j = -|t_i - s_j| / tau <= 0`` (its maximum
  is 0, at the column that ``t_i`` came from, so the softmax needs no max pass),
  ``e_j = exp(z_j)``, ``P_ij = e_j / sum(e)``.  Either form runs two passes over
  the row, against the five elementwise ops and the three passes of
  ``torch.softmax`` that the torch path runs on the ``k x n`` entries, forward
  and again backward;
* **backward**, from ``g = dL/dP`` and the forward's ``P`` (kept by autograd, as
  ``torch.softmax`` keeps its output; recomputing it instead took twice as long,
  307 vs 161 us at ``[500, 16, 16]``, one thread): ``dz_j = P_ij (g_ij - sum_l
  g_il P_il)`` and, with ``sigma_j = sign(t_i - s_j)`` (0 at a tie: the
  derivative of ``|d|`` torch takes at 0), ``dL/ds_j -= dz_j sigma_j / tau`` and
  ``dL/dt_i += sum_j dz_j sigma_j / tau``; the latter goes to the column ``t_i``
  came from.

The exact forward's exponential is computed in float32 by the vectorising helper
:func:`exp_nonpositive_row` (numba's ``math.exp`` is a scalar libm call, 2-3x
slower than the row's whole softmax here): ``exp(z) = 2^q exp(f)`` with ``q =
round(z / ln 2)``, ``f = z - q ln 2`` in two parts (Cody and Waite), ``exp(f)``
by the degree-7 polynomial of Cephes' ``expf`` (relative error below 2e-7 on
``|f| <= ln 2 / 2``), and ``2^q`` built from its exponent bits; ``z <
-87.3`` gives 0 (torch's float32 ``exp`` gives a denormal there, below 1.2e-38).
The forward's sums are float64, the backward's float32 (reassociated
into vector lanes: float64 ones took 83 against 67 us at ``[500, 16]``; at ``n = 3000`` the
gradient is within 1.5e-6 of float64's, relative to its largest entry, either way: the sum over
ranks dominates).  Threads: :func:`fastsort.kernels.cpu_network.run_parallel`
over rows.
"""
from __future__ import annotations

from typing import Tuple

import numba
import numpy as np
import torch

from .cpu_isotonic import sort_network, sort_rows_decreasing
from .cpu_network import run_parallel
from .cpu_relaxations import exp_f64

__all__ = ["softsort_fwd", "softsort_bwd", "exp_nonpositive_row", "softmax_block"]

#: numpy's error model (IEEE division, no zero checks); reassociation lets the row sums vectorise
_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})


@numba.njit(inline="always", **_JIT)
def exp_nonpositive_row(e, scale, bits, m):
    """``e[:m] = exp(e[:m])`` for float32 ``e <= 0`` (see the module docstring); ``bits`` is an int32
    scratch of ``m`` (or more) entries and ``scale`` its float32 view.  Both loops vectorise."""
    for j in range(m):
        z = e[j]
        ok = z >= np.float32(-87.3)  # exp(-87.3) = 1.3e-38: q >= -126 below, a normal float
        z = max(z, np.float32(-87.3))
        q = np.float32(np.floor(z * np.float32(1.44269504088896341) + np.float32(0.5)))
        f = z - q * np.float32(0.693359375)
        f = f - q * np.float32(-2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * f + np.float32(1.3981999507e-3)
        p = p * f + np.float32(8.3334519073e-3)
        p = p * f + np.float32(4.1665795894e-2)
        p = p * f + np.float32(1.6666665459e-1)
        p = p * f + np.float32(5.0000001201e-1)
        e[j] = (p * f * f + f + np.float32(1.0)) * np.float32(ok)
        bits[j] = (np.int32(q) + np.int32(127)) << np.int32(23)
    for j in range(m):
        e[j] *= scale[j]


@numba.njit(inline="always", **_JIT)
def normalise_rows(flat, k, n):
    """Each of the ``k`` rows of ``n`` non-negative entries of ``flat [k n]`` divided by its float64 sum."""
    for i in range(k):
        total = 0.0
        for j in range(n):
            total += flat[i * n + j]
        inv = np.float32(1.0 / total)
        for j in range(n):
            flat[i * n + j] *= inv


@numba.njit(inline="always", **_JIT)
def softmax_block(flat, scale, bits, k, n):
    """``flat [k n]`` (``k`` rows of ``n`` logits, each row's largest 0) -> each row's softmax, in place: the
    exponential of the whole block at once (one vectorising loop; a row of 16 alone would run in its
    scalar remainder), then per row a float64 sum and the scaling; ``bits``/``scale`` as in
    :func:`exp_nonpositive_row`."""
    exp_nonpositive_row(flat, scale, bits, k * n)
    normalise_rows(flat, k, n)


#: a row whose values span at most this many ``tau`` takes the separable forward (module docstring):
#: its factors ``exp(-(max - s_j) / tau)`` and their reciprocals stay normal float32 numbers (``e^80 =
#: 5.5e34``, ``e^-80 = 1.8e-35``), and so do the products that are entries; wider rows take the
#: exponential of every entry
SEPARABLE_SPAN = 80.0


@numba.njit(inline="always", **_JIT)
def separable_factors(s, r, c, a, inv, n):
    """``a[j] = exp(-(max(s) - s_j) c)`` and ``inv[j] = 1 / a[j]`` (float32 roundings of float64 values) for
    row ``r`` of ``s [R, n]``; returns whether its span ``(max - min) c`` is at most :data:`SEPARABLE_SPAN`
    (where it is not, the factors are not the row's).  The exponential is the CPU kernels' vectorising
    float64 one (:func:`fastsort.kernels.cpu_relaxations.exp_f64`)."""
    hi = s[r, 0]
    lo = s[r, 0]
    for j in range(n):
        hi = max(hi, s[r, j])
        lo = min(lo, s[r, j])
    for j in range(n):
        e = exp_f64((np.float64(s[r, j]) - np.float64(hi)) * c)  # (exact differences of float32 values)
        a[j] = np.float32(e)
        inv[j] = np.float32(1.0 / e)  # (inf where the row is too wide: not used then)
    # (the span tested here, after the loops: a return before them kept them from vectorising, 4x slower)
    return (np.float64(hi) - np.float64(lo)) * c <= SEPARABLE_SPAN


@numba.njit(inline="always", **_JIT)
def _row_probabilities(s, t, c, e, scale, bits, n):
    """``e[:n] = softmax(-|t - s| c)`` for one rank (``s [n]`` float32, ``t`` its value)."""
    for j in range(n):
        e[j] = -abs(t - s[j]) * c
    exp_nonpositive_row(e, scale, bits, n)
    normalise_rows(e, 1, n)


@numba.njit(**_JIT)
def _separable_rows(s, top_idx, P, c, ok, first, last):
    """``P[r] [k n]`` (``P`` flattened to ``[R, k n]``) for rows ``first .. last - 1`` of ``s [R, n]`` by
    the separable formula, from ``top_idx [R, k]`` (the columns of the row's ``k`` largest values,
    decreasing); ``ok[r]`` says whether row ``r``'s span allowed it (where not, ``P[r]`` is not the row's, and
    :func:`_exact_rows` rewrites it).  For ``k = n`` the rank sums come from the rank order; else each
    rank's row is summed.  (No branch around the loops, which keeps them vectorised: a branch per row
    between this and the exact formula, or a view per rank, made the forward 1.5-4x slower.)"""
    n = s.shape[1]
    k = top_idx.shape[1]
    a = np.empty(n, dtype=np.float32)
    inv = np.empty(n, dtype=np.float32)
    sum_a = np.empty(n, dtype=np.float64)
    sum_inv = np.empty(n, dtype=np.float64)
    wa = np.empty(k, dtype=np.float32)
    wb = np.empty(k, dtype=np.float32)
    full = k == n
    for r in range(first, last):
        ok[r] = separable_factors(s, r, c, a, inv, n)
        if full:  # rank i's sum is inv_t_i A_i + a_t_i I_i (module docstring)
            for q in range(n):  # the factors in rank order (wb, wa: scratch until the last loop)
                col = top_idx[r, q]
                wb[q] = a[col]
                wa[q] = inv[col]
            acc_a = 0.0
            acc_i = 0.0
            for q in range(n):  # (the two scans interleaved: independent chains of additions)
                p = n - 1 - q
                acc_a += wb[p]
                sum_a[p] = acc_a  # A_p = sum of a over ranks p .. n - 1
                sum_inv[q] = acc_i  # I_q = sum of inv over ranks 0 .. q - 1
                acc_i += wa[q]
            for q in range(n):  # (no gather left: one vectorised loop, its divisions included)
                ga = np.float64(wb[q])
                gi = np.float64(wa[q])
                w = 1.0 / (gi * sum_a[q] + ga * sum_inv[q])
                wa[q] = np.float32(gi * w)
                wb[q] = np.float32(ga * w)
        else:
            for q in range(k):
                col = top_idx[r, q]
                wa[q] = inv[col]
                wb[q] = a[col]
        for i in range(k):
            ia = wa[i]
            ib = wb[i]
            for j in range(n):
                P[r, i * n + j] = min(a[j] * ia, ib * inv[j])
        if not full:
            normalise_rows(P[r], k, n)


#: the exact forward runs the rows whose ``k x n`` block has at most this many entries at once (a loop over
#: the 16 entries of one rank runs in its scalar remainder and does not vectorise; measured 2x faster
#: at n = 16); longer blocks run one rank at a time
SHORT_BLOCK = 16384


@numba.njit(**_JIT)
def _exact_rows(s, top, P, c, rows, first, last):
    """``P[r] [k, n]`` for the rows ``r = rows[first .. last - 1]`` of ``s [R, n]`` from the exponential of
    every entry, with ``top [R, k]`` (the row's ``k`` largest values, decreasing)."""
    n = s.shape[1]
    k = top.shape[1]
    m = k * n
    block = m <= SHORT_BLOCK
    bits = np.empty(m if block else n, dtype=np.int32)
    scale = bits.view(np.float32)
    cf = np.float32(c)
    for u in range(first, last):
        r = rows[u]
        srow = s[r]
        if block:
            flat = P[r].reshape(m)
            for i in range(k):
                t = top[r, i]
                for j in range(n):
                    flat[i * n + j] = -abs(t - srow[j]) * cf
            softmax_block(flat, scale, bits, k, n)
        else:
            for i in range(k):
                _row_probabilities(srow, top[r, i], cf, P[r, i], scale, bits, n)


@numba.njit(**_JIT)
def _backward_rows(g, P, s, top_idx, ds, c, first, last):
    """``ds [R, n] = dL/ds`` for rows ``first .. last - 1`` from ``g = dL/dP [R, k, n]``, the forward's ``P``
    and its columns ``top_idx [R, k]`` (``t_i = s[r, top_idx[r, i]]``)."""
    n = s.shape[1]
    k = top_idx.shape[1]
    dts = np.empty(k, dtype=np.float32)
    for r in range(first, last):
        srow = s[r]
        drow = ds[r]
        for j in range(n):
            drow[j] = 0.0
        for i in range(k):
            grow = g[r, i]
            prow = P[r, i]
            dotf = np.float32(0.0)
            for j in range(n):
                dotf += grow[j] * prow[j]
            t = srow[top_idx[r, i]]
            dt = np.float32(0.0)
            for j in range(n):
                d = t - srow[j]
                sign = np.float32(d > 0) - np.float32(d < 0)
                w = prow[j] * (grow[j] - dotf) * sign * c  # dL/dz_j dz_j/ds_j = -dL/dz_j dz_j/dt_i
                drow[j] += w
                dt -= w
            dts[i] = dt
        # the ranks' terms after the loop: one scalar store into drow between two of its vector loops made
        # the next loop's loads wait for it (a store-to-load forwarding stall every rank)
        for i in range(k):
            drow[top_idx[r, i]] += dts[i]


#: with ``k = n`` the kernel sorts the rows itself (:func:`fastsort.kernels.cpu_isotonic.sort_rows_decreasing`:
#: stable; up to 32 entries by a sorting network over many rows or by insertion, by the joint radix sort
#: beyond): at ``[128, 100]``, one thread, the forward 514 -> 224-237 us against ``torch.sort`` in the launcher, at ``[500, 16]`` 116 -> 93 us against the
#: kernel's earlier insertion sort of float rows.  ``torch.sort`` is not stable: rows of at most this many
#: entries it sorts by insertion (stable, so the same order of tied values); longer rows in which the kernel
#: finds tied values take their columns from ``torch.sort`` (``P`` does not depend on which tied column a rank
#: names: its entries are functions of the values alone)
KERNEL_SORT_ROW = 16


@numba.njit(**_JIT)
def _sort_and_separable_rows(s, top, top_idx, ties, net, P, c, ok, first, last):
    """:func:`_separable_rows` of rows (``k = n``) sorted decreasing first; ``ties[r]``: row ``r`` holds two
    equal values (see :data:`KERNEL_SORT_ROW`)."""
    sort_rows_decreasing(s, top, top_idx, ties, net, first, last)
    _separable_rows(s, top_idx, P, c, ok, first, last)


def _check(s: torch.Tensor) -> None:
    if s.device.type != "cpu" or s.dtype != torch.float32 or s.dim() != 2:
        raise ValueError(f"the numba SoftSort kernels take float32 CPU rows [R, n], got {s.dtype} "
                         f"{tuple(s.shape)} on {s.device}")


def top_values(s: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest values of each row, decreasing, and their columns (as the torch path sorts)."""
    if k < s.shape[-1]:
        return s.topk(k, dim=-1, sorted=True)
    return s.sort(dim=-1, descending=True)


def softsort_fwd(s: torch.Tensor, k: int, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(P [R, k, n], top_idx [R, k])`` for finite float32 CPU rows ``s [R, n]``."""
    _check(s)
    s = s.detach().contiguous()
    R, n = s.shape
    P = torch.empty((R, k, n), dtype=torch.float32)
    if not (R and n and k):
        return P, torch.empty((R, k), dtype=torch.int64)
    work = R * k * n // 4
    ok = np.empty(R, dtype=np.bool_)
    c = 1.0 / tau
    if k == n:
        top_idx = torch.empty((R, n), dtype=torch.int64)
        top = np.empty((R, n), np.float32)
        ties = np.empty(R, dtype=np.bool_)
        args = (s.numpy(), top, top_idx.numpy(), ties, sort_network(n), P.numpy().reshape(R, k * n), c, ok)
        run_parallel(lambda first, last: _sort_and_separable_rows(*args, first, last), R, work)
        if n > KERNEL_SORT_ROW and ties.any():  # tied values' columns as torch.sort gives them (as the torch path)
            rows = torch.from_numpy(np.flatnonzero(ties))
            top_idx[rows] = top_values(s[rows], k)[1]
    else:
        top_t, top_idx = top_values(s, k)
        top, top_idx = top_t.contiguous().numpy(), top_idx.contiguous()
        args = (s.numpy(), top_idx.numpy(), P.numpy().reshape(R, k * n), c, ok)
        run_parallel(lambda first, last: _separable_rows(*args, first, last), R, work)
    if not ok.all():  # rows too wide for the separable formula
        rows = np.flatnonzero(~ok)
        args = (s.numpy(), top, P.numpy(), c, rows)
        run_parallel(lambda first, last: _exact_rows(*args, first, last), rows.size, rows.size * k * n // 4)
    return P, top_idx


def softsort_bwd(grad: torch.Tensor, s: torch.Tensor, P: torch.Tensor, top_idx: torch.Tensor, tau: float
                 ) -> torch.Tensor:
    """``dL/ds [R, n]`` from ``dL/dP [R, k, n]``, the rows ``s`` and what :func:`softsort_fwd` returned."""
    _check(s)
    s = s.detach().contiguous()
    R, n = s.shape
    k = top_idx.shape[1]
    g = grad.detach()
    g = (g if g.dtype == torch.float32 else g.to(torch.float32)).contiguous()
    P = P.detach().contiguous()
    ds = torch.empty_like(s)
    if R and n:
        args = (g.numpy(), P.numpy(), s.numpy(), top_idx.contiguous().numpy(), ds.numpy(), np.float32(1.0 / tau))
        run_parallel(lambda first, last: _backward_rows(*args, first, last), R, R * k * n // 4)
    return ds
