"""Top-k cross-entropy loss (Petersen et al., ICML 2022) and its module.

For logits ``[B, C]``, labels ``y`` and a distribution ``P_K`` over
``k = 1..K``::

    q_y  = sum_k P_K(k) * sum_{r <= k} P[r, y]  =  sum_r c_r P[r, y],
    c_r  = sum_{k >= r} P_K(k)
    loss = -log(q_y * (1 - 2e-7) + 1e-7)

The loss needs only the *weighted* column ``y`` of the top rows of ``P``, so
the network methods run a single weight vector through the reverse sweep
(``O(n D)`` per row, less than the ``O(n K D)`` of the ``K`` rows).  With
``m`` set, the true logit and the ``m - 1`` largest others are preselected
(true first, label 0) and only they are sorted; the softmax / cross-entropy
terms of ``top1_mode`` then also run over those ``m`` logits (difftopk's
semantics).  On CUDA the whole loss runs in one fused Triton kernel
(docs/design.md, "Top-k cross-entropy and preselection").
"""
from __future__ import annotations

import threading
from typing import List, Optional, Sequence

import torch

from ._dispatch import choose_backend
from ._fused_loss import MAX_FUSED_M, fused_topk_cross_entropy
from ._validate import REDUCTIONS, as_int, as_positive, check_logits_labels, check_p_k, check_reduction
from .networks import NetworkMethod
from .registry import METHODS

__all__ = ["topk_cross_entropy", "TopKCrossEntropyLoss", "TOP1_MODES", "REDUCTIONS"]

TOP1_MODES = ("sm", "smce", "sort")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """A per-row loss ``[B]`` reduced by ``mean``, ``sum`` or ``none``."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_top1_mode(top1_mode) -> str:
    if top1_mode not in TOP1_MODES:
        raise ValueError(f"top1_mode must be one of {TOP1_MODES}, got {top1_mode!r}")
    return top1_mode


def rank_weights(p_k: Sequence[float], top1_mode: str) -> List[float]:
    """``c_r`` for ranks ``r = 1..K``: the weight of ``P[r, y]`` in ``q_y`` (the network part only)."""
    K = len(p_k)
    first = 1 if top1_mode in ("sm", "smce") else 0  # k = 1 handled by the softmax terms
    return [sum(p_k[max(r, first):]) for r in range(K)]


_SCRATCH = threading.local()


def _without_labels(logits: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """A copy of ``logits`` (detached) with each row's label column at ``-inf``.

    On the CPU the copy goes into a per-thread scratch buffer: a fresh logits-sized
    allocation per step is handed back to the OS by glibc and page-faulted in again
    (docs/design.md, "Kernel design and the measurements behind it").  The buffer
    only feeds ``topk`` below.
    """
    x = logits.detach()
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return x.scatter(1, lab, float("-inf"))
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
        with torch.inference_mode(False):  # usable in and out of inference mode
            buf = _SCRATCH.buf = torch.empty(x.shape, dtype=x.dtype)
    return buf.copy_(x).scatter_(1, lab, float("-inf"))


def preselect(logits: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    """The true logit followed by the ``m - 1`` largest other logits (descending): ``[B, m]``."""
    # the columns are chosen without autograd; one gather then carries the gradient
    # (a single zero-fill + scatter in the backward)
    lab = labels.unsqueeze(1)
    top = _without_labels(logits, lab).topk(m - 1, dim=1, sorted=True).indices
    sel = logits.gather(1, torch.cat([lab, top], dim=1))
    # with fewer than m - 1 finite others, the label's (-inf-masked) column can be picked among
    # the -inf ties: it stands for a masked class there, so its value is -inf, not the label's logit
    picked_label = torch.cat([torch.zeros_like(lab, dtype=torch.bool), top == lab], dim=1)
    return sel.masked_fill(picked_label, float("-inf"))


def _method_params(method: str, inverse_temperature, distribution, art_lambda):
    """The loss's method object and its parameters."""
    m = METHODS.lookup(method, "loss")
    return m, m.loss_params(as_positive(inverse_temperature, "inverse_temperature"), distribution, art_lambda)


def topk_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    p_k: Sequence[float],
    method: str = "bitonic",
    *,
    m: Optional[int] = None,
    inverse_temperature: float = 1.0,
    distribution: str = "cauchy",
    art_lambda: float = 0.25,
    top1_mode: str = "sm",
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Differentiable top-k cross-entropy loss.

    Args:
        logits: ``[B, C]`` floating (fp16/bf16 computed in float32); ``-inf`` marks masked classes.
        labels: ``[B]`` integer class indices in ``[0, C)``.
        p_k: probabilities of ``k = 1..K`` (sums to 1), e.g. ``[0.5, 0, 0, 0, 0.5]``.
        method: ``bitonic`` (default), ``odd_even``, ``splitter_selection``, ``neuralsort``, ``softsort``, ``sinkhorn``.
        m: optional top-m preselection, ``K < m < C``.  Exactly tied logits (common in bf16) may be
            picked and ordered differently by the two backends (``torch.topk``'s order; the fused
            kernel's highest column first): the loss is the same, but a sorting network's gradient
            is then split differently among the tied logits.
        inverse_temperature: steepness of the networks (``tau = 1 / it`` for NeuralSort/SoftSort,
            ``epsilon = 1 / it`` for Sinkhorn).
        distribution, art_lambda: the networks' relaxation.
        top1_mode: ``sm`` (softmax for k = 1), ``smce`` (extra cross-entropy term) or ``sort``.
        reduction: ``mean``, ``sum`` or ``none``.
        backend: ``auto``, ``torch`` or ``triton``.

    Returns:
        A scalar (``mean``/``sum``) or ``[B]`` (``none``) in the logits' dtype.

    Example:
        >>> logits = torch.tensor([[1., 8., -1., 9., 5.]], requires_grad=True)
        >>> loss = fastsort.topk_cross_entropy(logits, torch.tensor([1]), [0.5, 0.5], inverse_temperature=2.0)
        >>> loss.backward()
    """
    check_logits_labels(logits, labels)
    METHODS.lookup(method, "loss")
    p = check_p_k(p_k)
    check_top1_mode(top1_mode)
    check_reduction(reduction)
    meth, params = _method_params(method, inverse_temperature, distribution, art_lambda)
    B, C = logits.shape
    K = len(p)
    if m is not None:
        m = as_int(m, "m")
        if not K < m < C:
            raise ValueError(f"m must be an int with K < m < n_classes (K = len(p_k) = {K}, n_classes = {C}), got {m!r}")
    elif K > C:
        raise ValueError(f"len(p_k) = {K} must not exceed the number of classes {C}")
    be = choose_backend(logits, backend, meth.kernels, n=m)  # the method sees m wires with preselection
    c = rank_weights(p, top1_mode)
    if be in ("triton", "numba") and isinstance(meth, NetworkMethod) and m is not None and m <= MAX_FUSED_M:
        # the fused kernel reads the logits in their own dtype (no cast pass)
        return fused_topk_cross_entropy(logits, labels, c, method, m, params, top1_mode, p[0], sum(p[1:]), reduction, be)
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    y = labels
    if m is not None:
        x = preselect(x, labels, m)
        y = torch.zeros_like(labels)
    q = meth.loss_column(x, y, tuple(c), params, be) if any(c) else x.new_zeros(B)
    if top1_mode == "sm":
        q = q + p[0] * torch.softmax(x, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    loss = -torch.log(q * (1 - 2e-7) + 1e-7)
    if top1_mode == "smce":
        ce = torch.nn.functional.cross_entropy(x, y, reduction="none")
        loss = p[0] * ce + sum(p[1:]) * loss
    return reduce_loss(loss, reduction).to(logits.dtype)


class TopKCrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` with the differentiable top-k loss.

    The number of classes comes from the logits.  See :func:`topk_cross_entropy`.

    Example:
        >>> crit = fastsort.TopKCrossEntropyLoss([0.5, 0, 0, 0, 0.5], m=16, inverse_temperature=2.0)
        >>> loss = crit(torch.randn(8, 100), torch.randint(0, 100, (8,)))
    """

    def __init__(self, p_k: Sequence[float], method: str = "bitonic", *, m: Optional[int] = None,
                 inverse_temperature: float = 1.0, distribution: str = "cauchy", art_lambda: float = 0.25,
                 top1_mode: str = "sm", reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.p_k = check_p_k(p_k)
        METHODS.lookup(method, "loss")
        check_top1_mode(top1_mode)
        check_reduction(reduction)
        _method_params(method, inverse_temperature, distribution, art_lambda)
        if m is not None:
            m = as_int(m, "m")
            if m <= len(self.p_k):
                raise ValueError(f"m must be an int > K = len(p_k) = {len(self.p_k)}, got {m!r}")
        self.method, self.m, self.inverse_temperature = method, m, inverse_temperature
        self.distribution, self.art_lambda = distribution, art_lambda
        self.top1_mode, self.reduction, self.backend = top1_mode, reduction, backend

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return topk_cross_entropy(
            logits, labels, self.p_k, self.method, m=self.m, inverse_temperature=self.inverse_temperature,
            distribution=self.distribution, art_lambda=self.art_lambda, top1_mode=self.top1_mode,
            reduction=self.reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (f"p_k={self.p_k}, method={self.method!r}, m={self.m}, inverse_temperature={self.inverse_temperature}, "
                f"top1_mode={self.top1_mode!r}, reduction={self.reduction!r}")
