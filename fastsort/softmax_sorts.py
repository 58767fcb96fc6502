"""NeuralSort and SoftSort, computing only the rows that are asked for.

Both return rows of the relaxed permutation matrix in *descending* rank order
(row ``r`` = rank ``r + 1``, the largest first), columns = inputs.

* NeuralSort (Grover et al., ICLR 2019): row ``i`` (1-based) is
  ``softmax(((n + 1 - 2 i) s - A_s 1) / tau)`` with ``(A_s 1)_j = sum_l |s_j - s_l|``,
  computed in ``O(n log n)`` from the sorted values and their prefix sums.
* SoftSort (Prillo and Eisenschlos, ICML 2020): row ``i`` is
  ``softmax(-|sort(s, desc)_i - s| ** pow / tau)``.

Cost ``O(n k)`` for ``k`` rows, never an ``n x n`` intermediate unless all
rows are requested.  Plain autograd is exact and memory-light here, so these
methods have no kernels: their torch ops run on any device
(docs/design.md, "NeuralSort and SoftSort").
"""
from __future__ import annotations

import torch

from ._validate import as_positive
from .method import RowsMethod


def abs_row_sums(s: torch.Tensor):
    """``(A_s 1)_j = sum_l |s_j - s_l|`` over the finite entries of ``s [R, n]``, in ``O(n log n)``.

    With the finite values sorted ascending, the one at finite position ``p``
    has ``sum_l |v - s_l| = v (2 p - n_f) + S - 2 P_p`` (``n_f`` finite values,
    ``S`` their total, ``P_p`` the sum of the ``p`` smaller ones).  ``-inf``
    entries (masked classes) are left out: returns ``(sums, n_f [R, 1], masked)``.
    """
    n = s.shape[-1]
    masked = s == float("-inf")
    n_f = (~masked).sum(-1, keepdim=True).to(s.dtype)
    sv, order = s.sort(dim=-1)  # -inf first
    sv0 = torch.where(sv == float("-inf"), torch.zeros_like(sv), sv)
    prefix = sv0.cumsum(-1) - sv0
    pos = torch.arange(n, device=s.device, dtype=s.dtype) - (n - n_f)  # position among the finite values
    total = sv0.sum(-1, keepdim=True)
    sums_sorted = sv0 * (2 * pos - n_f) + total - 2 * prefix
    return torch.zeros_like(sums_sorted).scatter(-1, order, sums_sorted), n_f, masked


def neuralsort_rows(s: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """Top ``k`` rows of NeuralSort's ``P`` for ``s [R, n]``: ``[R, k, n]``.

    ``-inf`` entries (masked classes) get probability 0 and the others are
    ranked among themselves (NeuralSort of the finite entries).
    """
    a1, n_f, masked = abs_row_sums(s)
    s0 = torch.where(masked, torch.zeros_like(s), s)
    i = torch.arange(1, k + 1, device=s.device, dtype=s.dtype)
    scale = (n_f + 1 - 2 * i).unsqueeze(-1)  # [R, k, 1]
    logits = (scale * s0.unsqueeze(-2) - a1.unsqueeze(-2)) / tau
    logits = logits.masked_fill(masked.unsqueeze(-2), float("-inf"))
    return torch.softmax(logits, dim=-1)


def softsort_rows(s: torch.Tensor, k: int, tau: float, pow: float) -> torch.Tensor:
    """Top ``k`` rows of SoftSort's ``P`` for ``s [R, n]``: ``[R, k, n]``."""
    top = s.topk(k, dim=-1, sorted=True).values if k < s.shape[-1] else s.sort(dim=-1, descending=True).values
    diff = (s.unsqueeze(-2) - top.unsqueeze(-1)).abs()
    if pow != 1.0:
        diff = diff.pow(pow)
    return torch.softmax(-diff / tau, dim=-1)


class NeuralSort(RowsMethod):
    """NeuralSort (Grover et al., ICLR 2019); parameter ``tau=1.0`` (``1 / inverse_temperature`` in the loss)."""

    defaults = {"tau": 1.0}

    def check(self, p):
        p["tau"] = as_positive(p["tau"], "tau")
        return p

    def loss_params(self, inverse_temperature, distribution, art_lambda):
        return self.parse(dict(tau=1.0 / inverse_temperature))

    def topk(self, x, k, p, backend):
        return neuralsort_rows(x, k, p["tau"])


class SoftSort(NeuralSort):
    """SoftSort (Prillo and Eisenschlos, ICML 2020); parameters ``tau=1.0``, ``pow=1.0``."""

    defaults = {"tau": 1.0, "pow": 1.0}

    def check(self, p):
        p = super().check(p)
        p["pow"] = as_positive(p["pow"], "pow")
        return p

    def topk(self, x, k, p, backend):
        return softsort_rows(x, k, p["tau"], p["pow"])
