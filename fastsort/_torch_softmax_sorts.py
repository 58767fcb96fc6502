"""NeuralSort and SoftSort, computing only the rows that are asked for.

Both return rows of the relaxed permutation matrix in *descending* rank order
(row ``r`` = rank ``r + 1``, the largest first), columns = inputs.

* NeuralSort (Grover et al., ICLR 2019): row ``i`` (1-based) is
  ``softmax(((n + 1 - 2 i) s - A_s 1) / tau)`` with ``(A_s 1)_j = sum_l |s_j - s_l|``,
  computed in ``O(n log n)`` from the sorted values and their prefix sums.
* SoftSort (Prillo and Eisenschlos, ICML 2020): row ``i`` is
  ``softmax(-|sort(s, desc)_i - s| ** pow / tau)``.

Cost ``O(n k)`` for ``k`` rows, never an ``n x n`` intermediate unless all
rows are requested.  Plain autograd is exact and memory-light here.
"""
from __future__ import annotations

import torch


def abs_row_sums(s: torch.Tensor) -> torch.Tensor:
    """``(A_s 1)_j = sum_l |s_j - s_l|`` for ``s [R, n]`` in ``O(n log n)``.

    With ``s`` sorted ascending, the element at sorted position ``p`` has
    ``sum_l |v - s_l| = v (2 p - n) + S - 2 P_p`` (``S`` the total, ``P_p`` the
    sum of the ``p`` smaller values).
    """
    n = s.shape[-1]
    sv, order = s.sort(dim=-1)
    prefix = sv.cumsum(-1) - sv  # sum of the values before position p
    pos = torch.arange(n, device=s.device, dtype=s.dtype)
    total = sv.sum(-1, keepdim=True)
    sums_sorted = sv * (2 * pos - n) + total - 2 * prefix
    return torch.zeros_like(sums_sorted).scatter(-1, order, sums_sorted)


def neuralsort_rows(s: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """Top ``k`` rows of NeuralSort's ``P`` for ``s [R, n]``: ``[R, k, n]``."""
    n = s.shape[-1]
    a1 = abs_row_sums(s)
    i = torch.arange(1, k + 1, device=s.device, dtype=s.dtype)
    scale = (n + 1 - 2 * i).unsqueeze(-1)  # [k, 1]
    logits = (scale * s.unsqueeze(-2) - a1.unsqueeze(-2)) / tau
    return torch.softmax(logits, dim=-1)


def softsort_rows(s: torch.Tensor, k: int, tau: float, pow: float) -> torch.Tensor:
    """Top ``k`` rows of SoftSort's ``P`` for ``s [R, n]``: ``[R, k, n]``."""
    top = s.topk(k, dim=-1, sorted=True).values if k < s.shape[-1] else s.sort(dim=-1, descending=True).values
    diff = (s.unsqueeze(-2) - top.unsqueeze(-1)).abs()
    if pow != 1.0:
        diff = diff.pow(pow)
    return torch.softmax(-diff / tau, dim=-1)
