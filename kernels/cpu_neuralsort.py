"""Compiled CPU kernels (numba) of NeuralSort's rows: ``P[r, i] = softmax(((n + 1 - 2 i) s - A_s 1) / tau)``.

The math is :func:`fastsort.softmax_sorts.neuralsort_rows`' (docs/design.md,
"NeuralSort and SoftSort"), for finite float32 rows of at most
:data:`MAX_N` entries (``A_s 1`` is summed directly, ``O(n^2)`` per row); rank
``i = 1 .. k``, ``c = 1 / tau``, ``(A_s 1)_j = a_j = sum_l |s_j - s_l|``:

* **forward**, per row, in one block of ``k n`` entries: ``a`` (float64 sums),
  the logits ``z_ij = c ((n + 1 - 2 i) s_j - a_j)`` less their row maximum, then
  SoftSort's :func:`~fastsort.kernels.cpu_softsort.softmax_block` (the block's
  exponential at once, float64 row sums);
* **backward**, from ``g = dL/dP`` and the forward's ``P`` (kept as
  ``torch.softmax`` keeps its output): ``dz_ij = P_ij (g_ij - sum_l g_il P_il)``,
  ``dL/ds_j = c sum_i (n + 1 - 2 i) dz_ij`` through the scaled values, and through
  ``a``, with ``h_j = -c sum_i dz_ij``, ``dL/ds_m += sum_l sign(s_m - s_l) (h_m + h_l)``
  (``da_j / ds_m = [j = m] sum_l sign(s_j - s_l) - sign(s_j - s_m)``; ``sign(0) =
  0``, torch's derivative of ``|d|`` at 0: tied entries get the same gradient).

Layouts: ``P [R, k, n]`` (rank-major, the library's), or its transpose ``Q [R, n, k]``
contiguous (``transposed``: difftopk's ``P_hat``, input-major; the compat
layer's).  The transposed forward stores each row's rank-major block transposed
(~40 us more at ``[500, 16, 16]``), its backward has loops of its own (the rank
index innermost), so that neither the result nor its gradient is ever copied
between the layouts by torch: its
copy of a batch of transposed 16 x 16 blocks took ~200 us at ``[500, 16, 16]``,
as long as the forward kernel, and an elementwise op on a transposed view
(``P_hat * G``) ~3x as long as on a contiguous tensor.

One launch per direction replaces the torch path's sort, prefix sums,
scatter, fused multiply-add and softmax (and as many backward ops).
Threads: :func:`fastsort.kernels.cpu_network.run_parallel` over rows.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .cpu_network import run_parallel
from .cpu_softsort import _JIT, softmax_block

__all__ = ["neuralsort_fwd", "neuralsort_bwd", "MAX_N"]

#: the forward sees finite rows only (the dispatch checks): no NaN / inf assumed, so that the row
#: maxima vectorise
_JIT_FINITE = dict(_JIT, fastmath={"reassoc", "contract", "nnan", "ninf"})

#: rows longer than this run the torch ops (their ``O(n log n)`` ``A_s 1``; the kernel's is ``O(n^2)``)
MAX_N = 256


@numba.njit(inline="always", **_JIT_FINITE)
def _row_block(srow, flat, a, scale, bits, c, k):
    """``flat [k n]`` = the top ``k`` rows of ``P`` for one row ``srow [n]``, rank-major; scratch ``a [n]``
    and the exponential's ``scale`` / ``bits``."""
    n = srow.shape[0]
    _abs_sums(srow, a, c)
    for i in range(k):
        sc = np.float32((n - 1 - 2 * i) * c)  # (n + 1 - 2 rank) / tau, rank = i + 1
        mx = np.float32(-np.inf)
        for j in range(n):
            z = sc * srow[j] - a[j]
            flat[i * n + j] = z
            mx = max(mx, z)
        for j in range(n):
            flat[i * n + j] -= mx
    softmax_block(flat, scale, bits, k, n)


@numba.njit(**_JIT_FINITE)
def _forward_rows(s, P, c, first, last):
    """``P[r] [k, n]`` for rows ``first .. last - 1`` of ``s [R, n]``."""
    n = s.shape[1]
    k = P.shape[1]
    bits = np.empty(k * n, dtype=np.int32)
    scale = bits.view(np.float32)
    a = np.empty(n, dtype=np.float32)
    for r in range(first, last):
        _row_block(s[r], P[r].reshape(k * n), a, scale, bits, c, k)


@numba.njit(**_JIT_FINITE)
def _forward_rows_t(s, Q, c, first, last):
    """``Q[r] = P[r]^T [n, k]`` for rows ``first .. last - 1`` of ``s [R, n]``: :func:`_forward_rows`' block in a
    scratch, stored transposed (measured faster than loops with the rank index innermost)."""
    n = s.shape[1]
    k = Q.shape[2]
    bits = np.empty(k * n, dtype=np.int32)
    scale = bits.view(np.float32)
    a = np.empty(n, dtype=np.float32)
    flat = np.empty(k * n, dtype=np.float32)
    for r in range(first, last):
        _row_block(s[r], flat, a, scale, bits, c, k)
        for j in range(n):
            for i in range(k):
                Q[r, j, i] = flat[i * n + j]


@numba.njit(inline="always", **_JIT_FINITE)
def _abs_sums(srow, a, c):
    """``a[j] = c sum_l |s_j - s_l|`` (float64 sums, stored float32)."""
    n = srow.shape[0]
    for j in range(n):
        tot = 0.0
        for l in range(n):
            tot += abs(np.float64(srow[j]) - np.float64(srow[l]))
        a[j] = np.float32(tot * c)


@numba.njit(inline="always", **_JIT)
def _sign_sums(srow, dv, h, ds_row):
    """``ds_row[j] = dv[j] + sum_l sign(s_j - s_l) (h_j + h_l)`` (float32 result)."""
    n = srow.shape[0]
    for j in range(n):
        tot = dv[j]
        sj = srow[j]
        hj = h[j]
        for l in range(n):
            d = sj - srow[l]
            tot += (np.float64(d > 0) - np.float64(d < 0)) * (hj + h[l])
        ds_row[j] = np.float32(tot)


@numba.njit(**_JIT)
def _backward_rows_t(g, Q, s, ds, c, first, last):
    """:func:`_backward_rows` for the transposed layout: ``g = dL/dQ`` and ``Q`` ``[R, n, k]``."""
    n = s.shape[1]
    k = Q.shape[2]
    dv = np.empty(n)
    h = np.empty(n)
    dot = np.empty(k)
    sc = np.empty(k)
    for i in range(k):
        sc[i] = (n - 1 - 2 * i) * c
    for r in range(first, last):
        for i in range(k):
            dot[i] = 0.0
        for j in range(n):
            for i in range(k):
                dot[i] += g[r, j, i] * Q[r, j, i]
        for j in range(n):
            acc_v = 0.0
            acc_h = 0.0
            for i in range(k):
                dz = Q[r, j, i] * (g[r, j, i] - dot[i])
                acc_v += sc[i] * dz
                acc_h -= c * dz
            dv[j] = acc_v
            h[j] = acc_h
        _sign_sums(s[r], dv, h, ds[r])


@numba.njit(**_JIT)
def _backward_rows(g, P, s, ds, c, first, last):
    """``ds [R, n] = dL/ds`` for rows ``first .. last - 1`` from ``g = dL/dP [R, k, n]`` and the forward's ``P``."""
    n = s.shape[1]
    k = P.shape[1]
    dv = np.empty(n)  # c sum_i (n + 1 - 2 rank_i) dz_ij
    h = np.empty(n)  # -c sum_i dz_ij
    for r in range(first, last):
        srow = s[r]
        for j in range(n):
            dv[j] = 0.0
            h[j] = 0.0
        for i in range(k):
            grow = g[r, i]
            prow = P[r, i]
            dot = 0.0
            for j in range(n):
                dot += grow[j] * prow[j]
            sc = (n - 1 - 2 * i) * c
            for j in range(n):
                dz = prow[j] * (grow[j] - dot)
                dv[j] += sc * dz
                h[j] -= c * dz
        _sign_sums(srow, dv, h, ds[r])


def _check(s: torch.Tensor) -> None:
    if s.device.type != "cpu" or s.dtype != torch.float32 or s.dim() != 2 or s.shape[1] > MAX_N:
        raise ValueError(f"the numba NeuralSort kernels take float32 CPU rows [R, n <= {MAX_N}], got {s.dtype} "
                         f"{tuple(s.shape)} on {s.device}")


def neuralsort_fwd(s: torch.Tensor, k: int, tau: float, transposed: bool = False) -> torch.Tensor:
    """``P [R, k, n]`` for finite float32 CPU rows ``s [R, n]`` (``n <= MAX_N``); with ``transposed`` its
    transpose ``[R, n, k]``, contiguous."""
    _check(s)
    s = s.detach().contiguous()
    R, n = s.shape
    P = torch.empty((R, n, k) if transposed else (R, k, n), dtype=torch.float32)
    if R and n and k:
        args = (s.numpy(), P.numpy(), 1.0 / float(tau))
        kernel = _forward_rows_t if transposed else _forward_rows
        run_parallel(lambda first, last: kernel(*args, first, last), R, R * (k * n + n * n) // 4)
    return P


def neuralsort_bwd(grad: torch.Tensor, s: torch.Tensor, P: torch.Tensor, tau: float, transposed: bool = False
                   ) -> torch.Tensor:
    """``dL/ds [R, n]`` from ``dL/dP``, the rows ``s`` and the forward's ``P`` (both ``[R, k, n]``, or
    ``[R, n, k]`` with ``transposed``)."""
    _check(s)
    s = s.detach().contiguous()
    R, n = s.shape
    k = P.shape[2 if transposed else 1]
    g = grad.detach().to(torch.float32).contiguous()
    P = P.detach().contiguous()
    ds = torch.empty((R, n), dtype=torch.float32)
    if R and n:
        args = (g.numpy(), P.numpy(), s.numpy(), ds.numpy(), 1.0 / float(tau))
        kernel = _backward_rows_t if transposed else _backward_rows
        run_parallel(lambda first, last: kernel(*args, first, last), R, R * (k * n + n * n) // 4)
    return ds
