"""``difftopk.softsort``: :class:`SoftSort` (Prillo and Eisenschlos, ICML 2020)."""
from __future__ import annotations

import torch

from ..._dispatch import choose_backend
from ...softmax_sorts import softsort_rows
from .neuralsort import check_scores, positive, straight_through

__all__ = ["SoftSort"]


class SoftSort(torch.nn.Module):
    """SoftSort (Prillo and Eisenschlos, ICML 2020); same as ``difftopk.SoftSort``.

    ``forward(scores [B, n])`` returns ``P_hat [B, n, n]`` with row ``r`` = rank
    ``r + 1`` (descending: row 0 = the largest) and columns = inputs, i.e.
    ``softmax(-|sort(s, desc)_r - s| ** pow / tau)``.  ``hard=True``: one-hot of
    each row's maximum in the forward, soft gradient (straight-through).
    ``tau``, ``pow`` and ``hard`` are read at every call.
    """

    def __init__(self, tau: float = 1.0, hard: bool = False, pow: float = 1.0):
        super().__init__()
        self.hard = hard
        self.tau = tau
        self.pow = pow

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        x = check_scores(scores)
        # (the compiled CPU kernels where fastsort's backend="auto" would pick them)
        P_hat = softsort_rows(x, x.shape[1], positive(self.tau, "tau"), positive(self.pow, "pow"),
                              choose_backend(x, "auto", ("numba",)))
        if self.hard:
            P_hat = straight_through(P_hat, P_hat.topk(1, -1)[1])
        return P_hat.to(scores.dtype)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}, pow={self.pow}"
