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


@numba.njit(**_JIT_FINITE)
def _forward_rows(s, P, c, first, last):
    """``P[r] [k, n]`` for rows ``first .. last - 1`` of ``s [R, n]``."""
    n = s.shape[1]
    k = P.shape[1]
    m = k * n
    bits = np.empty(m, dtype=np.int32)
    scale = bits.view(np.float32)
    a = np.empty(n, dtype=np.float32)
    for r in range(first, last):
        srow = s[r]
        for j in range(n):
            tot = 0.0
            for l in range(n):
                tot += abs(np.float64(srow[j]) - np.float64(srow[l]))
            a[j] = np.float32(tot * c)
        flat = P[r].reshape(m)
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
        for j in range(n):
            tot = dv[j]
            sj = srow[j]
            hj = h[j]
            for l in range(n):
                d = sj - srow[l]
                tot += (np.float64(d > 0) - np.float64(d < 0)) * (hj + h[l])
            ds[r, j] = np.float32(tot)


def _check(s: torch.Tensor) -> None:
    if s.device.type != "cpu" or s.dtype != torch.float32 or s.dim() != 2 or s.shape[1] > MAX_N:
        raise ValueError(f"the numba NeuralSort kernels take float32 CPU rows [R, n <= {MAX_N}], got {s.dtype} "
                         f"{tuple(s.shape)} on {s.device}")


def neuralsort_fwd(s: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """``P [R, k, n]`` for finite float32 CPU rows ``s [R, n]`` (``n <= MAX_N``)."""
    _check(s)
    s = s.detach().contiguous()
    R, n = s.shape
    P = torch.empty((R, k, n), dtype=torch.float32)
    if R and n and k:
        args = (s.numpy(), P.numpy(), 1.0 / float(tau))
        run_parallel(lambda first, last: _forward_rows(*args, first, last), R, R * (k * n + n * n) // 4)
    return P


def neuralsort_bwd(grad: torch.Tensor, s: torch.Tensor, P: torch.Tensor, tau: float) -> torch.Tensor:
    """``dL/ds [R, n]`` from ``dL/dP [R, k, n]``, the rows ``s`` and the forward's ``P``."""
    _check(s)
    s = s.detach().contiguous()
    R, n = s.shape
    k = P.shape[1]
    g = grad.detach().to(torch.float32).contiguous()
    P = P.detach().contiguous()
    ds = torch.empty((R, n), dtype=torch.float32)
    if R and n:
        args = (g.numpy(), P.numpy(), s.numpy(), ds.numpy(), 1.0 / float(tau))
        run_parallel(lambda first, last: _backward_rows(*args, first, last), R, R * (k * n + n * n) // 4)
    return ds
