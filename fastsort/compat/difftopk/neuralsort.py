"""``difftopk.neuralsort``: :class:`NeuralSort` (Grover et al., ICLR 2019) and what the modules of
``neuralsort`` / ``softsort`` share."""
from __future__ import annotations

import torch

from .._common import CompatError, compat_errors
from ..._dispatch import choose_backend
from ..._validate import as_positive, check_input, compute_dtype
from ...softmax_sorts import neuralsort_rows

__all__ = ["NeuralSort"]


def check_scores(scores) -> torch.Tensor:
    """``scores [B, n]`` floating, in the compute dtype."""
    check_input(scores, "scores")
    if scores.dim() != 2:
        raise CompatError(f"scores must be 2-D [batch, n], got shape {tuple(scores.shape)}")
    return scores.to(compute_dtype(scores.dtype))


def positive(value, name: str) -> float:
    """A module parameter read at the call (``tau``, ``pow``): a finite number > 0."""
    with compat_errors():
        return as_positive(value, name)


def straight_through(P_hat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One-hot of ``index`` along the last dim in the forward, gradient of ``P_hat`` in the backward."""
    P = torch.zeros_like(P_hat).scatter_(-1, index, 1)
    return (P - P_hat).detach() + P_hat


class NeuralSort(torch.nn.Module):
    """NeuralSort (Grover et al., ICLR 2019); same as ``difftopk.NeuralSort``.

    ``forward(scores [B, n])`` returns ``P_hat [B, n, n]`` in diffsort's layout:
    ``P_hat[b, i, j]`` is the weight of input ``i`` at *ascending* position
    ``j`` (difftopk sorts the negated scores in descending order and transposes),
    so ``P_hat[:, :, -k:]`` are the top-``k`` columns, the largest last.  Where the
    compiled kernels run, ``P_hat`` is contiguous (difftopk's is the transpose of a
    contiguous tensor: the same values; an elementwise op on it, e.g. ``P_hat * G``, and
    the copy of its gradient cost ~3x as long at ``[500, 16, 16]``); with the torch ops
    it is a transposed view, as difftopk's.

    With ``hard=True`` the forward value is, as in difftopk, the one-hot of the
    argmax of each row of ``P_hat`` (per *input*, over positions) and the
    gradient is that of the soft ``P_hat`` (straight-through).

    Computed from fastsort's NeuralSort rows of the negated scores (the compiled CPU kernels
    for finite float32 CPU scores of at most 256 columns, else the torch ops with ``A_s 1``
    in ``O(n log n)``); ``tau`` and ``hard`` are read at every call; half precision is
    computed in float32, float64 is supported.
    """

    def __init__(self, tau: float = 1.0, hard: bool = False):
        super().__init__()
        self.hard = hard
        self.tau = tau

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        x = check_scores(scores)
        # the rank-order rows of -s are the ascending positions of s
        # (the compiled CPU kernels where fastsort's backend="auto" would pick them)
        P_hat = neuralsort_rows(-x, x.shape[1], positive(self.tau, "tau"), choose_backend(x, "auto", ("numba",)),
                                transposed=True).transpose(-2, -1)
        if self.hard:
            P_hat = straight_through(P_hat, P_hat.argmax(-1, keepdim=True))
        return P_hat.to(scores.dtype)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}"
