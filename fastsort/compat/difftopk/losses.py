"""``difftopk.losses``: :class:`TopKCrossEntropyLoss`."""
from __future__ import annotations

from typing import List, Optional

import torch

from .._common import CompatError, UnsupportedOptionError, _scalar, compat_errors, relaxation_params
from ..._validate import as_int, as_positive, as_positive_int, check_p_k
from ...losses import check_top1_mode, preselect, rank_weights, topk_cross_entropy
from .difftopk import DiffTopkNet
from .neuralsort import NeuralSort, positive
from .softsort import SoftSort

__all__ = ["TopKCrossEntropyLoss", "DIFFSORT_METHODS"]

#: ``diffsort_method`` of :class:`TopKCrossEntropyLoss` -> (fastsort method, difftopk's ``sparse`` flag).
DIFFSORT_METHODS = {
    "bitonic": ("bitonic", True),
    "splitter_selection": ("splitter_selection", True),
    "bitonic__non_sparse": ("bitonic", False),
    "odd_even": ("odd_even", False),
    "neuralsort": ("neuralsort", None),
    "softsort": ("softsort", None),
}


class _SoftSortColumns:
    """difftopk's ``sort_fn`` of ``'softsort'``: ``lambda x: SoftSort(tau)(-x).transpose(-2, -1)``,
    diffsort's layout (inputs x ascending positions); ``sorter`` is the :class:`SoftSort` module."""

    def __init__(self, sorter: SoftSort):
        self.sorter = sorter

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.sorter(-x).transpose(-2, -1)


class TopKCrossEntropyLoss(torch.nn.Module):
    """Differentiable top-k cross-entropy loss; same as ``difftopk.TopKCrossEntropyLoss``.

    Args:
        diffsort_method: ``'bitonic'`` (difftopk: sparse bitonic), ``'splitter_selection'``,
            ``'bitonic__non_sparse'``, ``'odd_even'``, ``'neuralsort'`` or ``'softsort'``.
        inverse_temperature: steepness of the networks; ``tau = 1 / inverse_temperature``
            for NeuralSort and SoftSort.  Read at construction only (as in difftopk): anneal
            ``top_k_net.steepness`` (networks) or ``sort_fn.tau`` (NeuralSort) instead.
        p_k: probabilities of ``k = 1..K`` (must sum to 1), e.g. ``[0.5, 0, 0, 0, 0.5]``.
        n: the number of classes.
        m: optional top-``m`` preselection (``K < m < n``): only the true logit and the
            ``m - 1`` largest others are sorted.
        distribution: the networks' relaxation.  Like difftopk the default is ``None``,
            with which difftopk's network methods fail at the first call; here a network
            method with ``distribution=None`` raises at construction (pass e.g. ``'cauchy'``).
            Unused by ``neuralsort``/``softsort``.
        art_lambda: for ``distribution='logistic_phi'`` only (``None`` works with the others,
            as in difftopk's README).
        device: accepted for compatibility; ignored.
        top1_mode: ``'sm'`` (softmax for k = 1, default), ``'smce'`` (extra cross-entropy) or ``'sort'``.

    ``forward(outputs [B, n], labels [B])`` returns the mean loss (a scalar).

    As in difftopk, the network methods hold ``top_k_net`` (a
    :class:`~fastsort.compat.difftopk.DiffTopkNet` of ``m`` or ``n`` inputs and ``K`` columns,
    whose ``steepness``, ``distribution`` and ``art_lambda`` the loss reads at every call) and
    NeuralSort / SoftSort hold ``sort_fn`` (a :class:`NeuralSort` module, whose ``tau`` is read
    at every call, or difftopk's softsort callable); ``p_k``, ``m`` and ``top1_mode`` are read at
    every call too.  While these are fastsort's own, the loss runs
    :func:`fastsort.topk_cross_entropy` (one weighted column through the network; fused
    kernel on CUDA); a replaced ``top_k_net`` or ``sort_fn`` (any callable with the
    reference's output) is called instead and the loss formed from its ``X[:, :, -K:]``, as
    difftopk does.

    Example:
        >>> from fastsort.compat import difftopk
        >>> crit = difftopk.TopKCrossEntropyLoss("odd_even", 2.0, [0.5, 0.5], n=10, distribution="cauchy")
        >>> loss = crit(torch.randn(4, 10, requires_grad=True), torch.tensor([1, 2, 3, 4]))
        >>> loss.backward()
    """

    def __init__(
        self,
        diffsort_method: str,
        inverse_temperature: float,
        p_k: List[float],
        n: int,
        m: Optional[int] = None,
        distribution: Optional[str] = None,
        art_lambda: float = 0.25,
        device: str = "cpu",
        top1_mode: str = "sm",
    ):
        super().__init__()
        if diffsort_method not in DIFFSORT_METHODS:
            raise UnsupportedOptionError(
                f"diffsort_method must be one of {tuple(DIFFSORT_METHODS)}, got {diffsort_method!r}"
            )
        self.diffsort_method = diffsort_method
        with compat_errors():
            it = as_positive(_scalar(inverse_temperature), "inverse_temperature")
        self.inverse_temperature = inverse_temperature
        self.p_k = _check_p_k(p_k)
        self.k = len(self.p_k)
        self.device = device
        with compat_errors():
            self.top1_mode = check_top1_mode(top1_mode)
            self.n = as_positive_int(n, "n")
        if m is not None:
            m = as_int(m, "m")
            if not self.k < m:
                raise CompatError(f"m must be larger than K = len(p_k) = {self.k}, got m={m}")
            if not m < self.n:
                raise CompatError(f"m must be smaller than the number of classes n = {self.n}, got m={m}")
        elif self.k > self.n:
            raise CompatError(f"len(p_k) = {self.k} must not exceed the number of classes n = {self.n}")
        self.m = m
        method, sparse = DIFFSORT_METHODS[diffsort_method]
        if method == "neuralsort":
            self.sort_fn = NeuralSort(tau=1 / it)
        elif method == "softsort":
            self.sort_fn = _SoftSortColumns(SoftSort(tau=1 / it))
        else:
            self.top_k_net = DiffTopkNet(method, m if m is not None else self.n, self.k, sparse=sparse,
                                         device=device, steepness=inverse_temperature, art_lambda=art_lambda,
                                         distribution=distribution)

    def _native(self, outputs: torch.Tensor):
        """``(method, inverse_temperature, distribution, art_lambda)`` for :func:`topk_cross_entropy`
        while ``top_k_net`` / ``sort_fn`` are fastsort's own (else ``None``: call them)."""
        if len(self.p_k) != self.k:
            return None
        if hasattr(self, "top_k_net"):
            net = self.top_k_net
            if type(net) is not DiffTopkNet or net.k != self.k:
                return None
            kind, net_k = net._network()
            if kind == "splitter_selection" and net_k != self.k:
                return None
            width = outputs.shape[1] if self.m is None else self.m
            if width != net.size:
                raise CompatError(f"outputs.shape[1] = {outputs.shape[1]} does not match n = {net.size} the loss was "
                                  f"built with" if self.m is None else
                                  f"m = {self.m} does not match top_k_net.size = {net.size} the loss was built with")
            p = relaxation_params(net.steepness, net.distribution, net.art_lambda)
            return kind, p["steepness"], p["distribution"], p["art_lambda"]
        sort_fn = self.sort_fn
        if type(sort_fn) is NeuralSort and not sort_fn.hard:
            return "neuralsort", 1.0 / positive(sort_fn.tau, "tau"), "cauchy", 0.25
        if type(sort_fn) is _SoftSortColumns and type(sort_fn.sorter) is SoftSort and not sort_fn.sorter.hard \
                and sort_fn.sorter.pow == 1:
            return "softsort", 1.0 / positive(sort_fn.sorter.tau, "tau"), "cauchy", 0.25
        return None

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
            raise CompatError(f"outputs must be a 2-D tensor [batch, n], got {getattr(outputs, 'shape', outputs)}")
        native = self._native(outputs)
        if native is None:
            return self._composed(outputs, labels)
        method, it, distribution, art_lambda = native
        return topk_cross_entropy(outputs, labels, self.p_k, method, m=self.m, inverse_temperature=it,
                                  distribution=distribution, art_lambda=art_lambda, top1_mode=self.top1_mode,
                                  reduction="mean")

    def _composed(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """difftopk's loss from ``X[:, :, -K:]`` of the user's ``top_k_net`` / ``sort_fn``."""
        if self.m is not None:
            outputs, labels = preselect(outputs, labels, self.m), torch.zeros_like(labels)
        if hasattr(self, "top_k_net"):
            X = self.top_k_net(outputs)[1]
        else:
            X = self.sort_fn(outputs)
        if X.dim() != 3 or X.shape[1] != outputs.shape[1] or X.shape[2] < self.k:
            raise CompatError(f"the permutation matrix must be [batch, {outputs.shape[1]}, >= K = {self.k}], "
                              f"got shape {tuple(X.shape)}")
        p_k = _check_p_k(self.p_k)
        if len(p_k) != self.k:
            raise CompatError(f"len(p_k) = {len(p_k)} does not match K = {self.k} the loss was built with")
        c = torch.tensor(rank_weights(p_k, self.top1_mode), dtype=X.dtype, device=X.device)
        q = (X[:, :, -self.k:].flip(-1) * c).sum(-1)  # column -1 is rank 1
        if self.top1_mode == "sm":
            q = q + p_k[0] * torch.softmax(outputs, dim=-1)
        loss = torch.nn.functional.nll_loss(torch.log(q * (1 - 2e-7) + 1e-7), labels)
        if self.top1_mode == "smce":
            loss = p_k[0] * torch.nn.functional.cross_entropy(outputs, labels) + sum(p_k[1:]) * loss
        return loss

    def extra_repr(self) -> str:
        return (f"{self.diffsort_method!r}, inverse_temperature={self.inverse_temperature}, p_k={self.p_k}, "
                f"n={self.n}, m={self.m}, top1_mode={self.top1_mode!r}")


def _check_p_k(p_k) -> list:
    """``p_k`` as floats: difftopk's ``assert 0.9999 < sum(p_k) < 1.0001`` (its message), then
    :func:`fastsort._validate.check_p_k` (finite, non-negative)."""
    values = p_k.detach().cpu().tolist() if isinstance(p_k, torch.Tensor) else p_k
    try:
        total = float(sum(values))
    except (TypeError, ValueError):  # not numbers: check_p_k names the problem
        total = None
    if total is not None and not 0.9999 < total < 1.0001:
        raise CompatError(f"P_K does not sum up to 1: {values} sums up to {total}.")
    with compat_errors():
        return check_p_k(values)
