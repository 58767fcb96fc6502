"""``difftopk.smooth_topk``: the smooth top-k SVM losses of Berrada et al. (ICLR 2018)."""
from __future__ import annotations

import torch

from .._common import CompatError, compat_errors
from ..._validate import as_positive, as_positive_int
from ...smooth_topk import smooth_topk_svm_loss

__all__ = ["SmoothTopKLoss", "SmoothHardTopKLoss"]


class SmoothTopKLoss(torch.nn.Module):
    """Smooth top-k SVM loss (Berrada et al., ICLR 2018); same as ``difftopk.SmoothTopKLoss``.

    Args:
        num_classes: the number of classes ``C`` (``forward`` checks ``x.shape[1] == C``).
        k: top-k size, ``1 <= k < C``.
        tau: temperature ``> 0``.
        device: accepted for compatibility; ignored.

    ``forward(x [B, C], y [B])`` returns the sum of the per-sample losses divided
    by ``B``.  Computed by :func:`fastsort.smooth_topk.smooth_topk_svm_loss`
    (elementary symmetric polynomials multiplied out in linear space, with the log-space
    path for extreme rows), whose gradient is exact.  difftopk's hand-written backward is
    not, for ``k = 1``: it takes ``d log e_0 / dx = 1`` instead of 0, which adds
    ``-sigmoid(z_b) / B`` (about ``-1 / B``; ``z_b`` the sample's softplus argument) to the
    gradient of every non-label logit of sample ``b`` (float64 finite differences agree with
    fastsort, not with difftopk); and for large score gaps it uses a truncated expansion
    (errors ~1e-5).  The loss values agree.  fastsort keeps the exact gradient.
    """

    _hard = False

    def __init__(self, num_classes: int, k: int, tau: float = 1, device: str = "cpu"):
        super().__init__()
        with compat_errors():
            self.num_classes = as_positive_int(num_classes, "num_classes")
            self.k = as_positive_int(k, "k")
            self.tau = as_positive(tau, "tau")
        if self.k >= self.num_classes:
            raise CompatError(f"k must be an int with 1 <= k < num_classes = {self.num_classes}, got {k!r}")
        self.device = device

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] != self.num_classes:
            raise CompatError(f"x.shape[1] = {x.shape[1]} does not match num_classes = {self.num_classes}")
        return smooth_topk_svm_loss(x, y, self.k, tau=self.tau, alpha=1.0, hard=self._hard, reduction="mean")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, k={self.k}, tau={self.tau}"


class SmoothHardTopKLoss(SmoothTopKLoss):
    """Smooth top-k SVM loss with the per-sample hard switch; same as ``difftopk.SmoothHardTopKLoss``.

    Samples whose k-th and (k+1)-th largest scores differ by at least
    ``k * tau * log(1000)`` use the hard top-k SVM loss.  Same arguments (and the same exact
    gradient, see :class:`SmoothTopKLoss`).
    """

    _hard = True
    thresh = 1e3
