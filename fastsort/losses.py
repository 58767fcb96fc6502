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
semantics).  On CUDA the whole loss runs in one fused Triton kernel.
"""
from __future__ import annotations

import math
import threading
from typing import List, Optional, Sequence

import torch

from ._fused_loss import MAX_FUSED_M, fused_topk_cross_entropy
from ._validate import as_int, as_positive
from .functional import (NETWORK_METHODS, REDUCTIONS, _network, _rows_desc, check_logits_labels, check_method,
                         check_reduction, kernel_backend, parse_params, reduce_loss, sweep_init)

__all__ = ["topk_cross_entropy", "TopKCrossEntropyLoss", "TOP1_MODES", "REDUCTIONS"]

TOP1_MODES = ("sm", "smce", "sort")
# -inf logits (masked classes) are sorted as this value: finite, so the
# comparators see a huge difference (alpha exactly 0 or 1) instead of inf - inf.
_NEG_BIG = -1e30


def check_p_k(p_k) -> List[float]:
    if isinstance(p_k, torch.Tensor):
        p_k = p_k.detach().cpu().tolist()
    try:
        p = [float(v) for v in p_k]
    except TypeError:
        raise TypeError(f"p_k must be a sequence of floats, got {type(p_k).__name__}") from None
    if len(p) == 0:
        raise ValueError("p_k must not be empty: give the probability of each k = 1..K, e.g. [0.5, 0, 0, 0, 0.5]")
    if any(not math.isfinite(v) or v < 0 for v in p):
        raise ValueError(f"p_k must contain finite, non-negative probabilities, got {p}")
    if abs(sum(p) - 1.0) > 1e-4:
        raise ValueError(f"p_k must sum to 1, got {p} which sums to {sum(p)}")
    return p


def rank_weights(p_k: Sequence[float], top1_mode: str) -> List[float]:
    """``c_r`` for ranks ``r = 1..K``: the weight of ``P[r, y]`` in ``q_y`` (the network part only)."""
    K = len(p_k)
    first = 1 if top1_mode in ("sm", "smce") else 0  # k = 1 handled by the softmax terms
    return [sum(p_k[max(r, first):]) for r in range(K)]


_SCRATCH = threading.local()


def _without_labels(logits: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """A copy of ``logits`` (detached) with each row's label column at ``-inf``.

    On the CPU the copy goes into a per-thread scratch buffer: a fresh logits-sized
    allocation per step (2 MB at B = 500, 1000 classes) is handed back to the OS by
    glibc and page-faulted in again, in some processes every step (measured: ~400
    page faults and +1 ms per loss step).  The buffer only feeds ``topk`` below.
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


def weighted_column(x: torch.Tensor, labels: torch.Tensor, c: List[float], method: str, p: dict,
                    backend: str) -> torch.Tensor:
    """``sum_r c_r P[r, y]`` per row for ``x [B, n]`` (compute dtype): ``[B]``."""
    n = x.shape[1]
    K = len(c)
    v = sweep_init("weights", n, K, x.dtype, x.device, tuple(c))  # [1, n]: c_r at position n - r
    if method in NETWORK_METHODS:
        S0 = _network(x.clamp(min=_NEG_BIG), method, p, v, backend, K)[1]
        return S0[:, 0, :].gather(1, labels.unsqueeze(1)).squeeze(1)
    rows = _rows_desc(x, K, method, p, backend)  # [B, K, n]
    col = rows.gather(2, labels.view(-1, 1, 1).expand(-1, K, 1)).squeeze(2)
    return col @ v[0, n - K:].flip(0)


def _method_params(method, inverse_temperature, distribution, art_lambda):
    inverse_temperature = as_positive(inverse_temperature, "inverse_temperature")
    if method in NETWORK_METHODS:
        return parse_params(method, dict(steepness=inverse_temperature, distribution=distribution,
                                         art_lambda=art_lambda))
    if method in ("neuralsort", "softsort"):
        return parse_params(method, dict(tau=1.0 / inverse_temperature))
    return parse_params(method, dict(epsilon=1.0 / inverse_temperature))


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
    check_method(method, "loss")
    p = check_p_k(p_k)
    if top1_mode not in TOP1_MODES:
        raise ValueError(f"top1_mode must be one of {TOP1_MODES}, got {top1_mode!r}")
    check_reduction(reduction)
    params = _method_params(method, inverse_temperature, distribution, art_lambda)
    B, C = logits.shape
    K = len(p)
    if m is not None:
        m = as_int(m, "m")
        if not K < m < C:
            raise ValueError(f"m must be an int with K < m < n_classes (K = len(p_k) = {K}, n_classes = {C}), got {m!r}")
    elif K > C:
        raise ValueError(f"len(p_k) = {K} must not exceed the number of classes {C}")
    be = kernel_backend(logits, backend, n=m)  # the network sees m wires with preselection
    c = rank_weights(p, top1_mode)
    if be == "triton" and method in NETWORK_METHODS and m is not None and m <= MAX_FUSED_M:
        # the fused kernel reads the logits in their own dtype (no cast pass)
        return fused_topk_cross_entropy(logits, labels, c, method, m, params, top1_mode, p[0], sum(p[1:]), reduction)
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    y = labels
    if m is not None:
        x = preselect(x, labels, m)
        y = torch.zeros_like(labels)
    q = weighted_column(x, y, c, method, params, be) if any(c) else x.new_zeros(B)
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
        check_method(method, "loss")
        if top1_mode not in TOP1_MODES:
            raise ValueError(f"top1_mode must be one of {TOP1_MODES}, got {top1_mode!r}")
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
