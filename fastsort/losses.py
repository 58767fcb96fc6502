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
semantics).  With ``m`` set, the whole loss runs in one fused kernel where the
method's :meth:`~fastsort.method.Method.fused_loss` names one: the networks'
Triton kernel on CUDA and its numba twin on the CPU, and NeuralSort's and
SoftSort's pair (docs/design.md, "Top-k cross-entropy and preselection").

As a drop-in for ``torch.nn.CrossEntropyLoss``: labels of any integer dtype;
``ignore_index`` (default -100) rows contribute 0 loss and 0 gradient, and the
mean runs over the other rows (NaN when every row is ignored, as torch);
``inverse_temperature`` may be a 0-d tensor.  ``label_smoothing`` other than 0
is rejected: the loss is ``-log P(label among the top k)``, not a
cross-entropy against a target distribution, and smoothing it over every
class would mean ``C`` terms ``-log P(c among the top k)`` whose sum has no
minimum at the smoothed target (at most ``k`` classes can be in the top k), and
with ``m`` set every class outside the top ``m`` would add a constant without
gradient.  Special values: ``-inf`` logits mark masked classes and work with
every method (zero gradient to them; a masked *label* costs ``-log(1e-7)``, or
``inf`` in ``smce``'s cross-entropy term, as torch); a NaN or a ``+inf`` logit
makes its row's loss and gradient NaN (``+inf``: as torch's cross-entropy).
The loss computes in float32 (float64 kept) with ``torch.autocast`` off.
"""
from __future__ import annotations

import math
import threading
from types import MappingProxyType
from typing import List, Optional, Sequence

import torch

from ._dispatch import choose_backend, finite_on_host
from ._fused_loss import MAX_FUSED_M, fused_topk_cross_entropy
from ._validate import (REDUCTIONS, as_int, as_positive, as_real, check_logits_labels, check_p_k, check_reduction,
                        reduce_loss)
from .functional import autocast_off
from .registry import METHODS

__all__ = ["topk_cross_entropy", "TopKCrossEntropyLoss", "TOP1_MODES", "REDUCTIONS"]

TOP1_MODES = ("sm", "smce", "sort")


def check_ignore_index(ignore_index) -> Optional[int]:
    """``ignore_index`` as an int, or None (no label is ignored)."""
    return None if ignore_index is None else as_int(ignore_index, "ignore_index")


def check_label_smoothing(label_smoothing) -> float:
    """Only 0 (module docstring: smoothing has no meaning for ``-log P(label among the top k)``)."""
    value = as_real(label_smoothing, "label_smoothing")
    if value != 0.0:
        raise ValueError(
            f"label_smoothing={value} is not supported by the top-k loss: it is -log P(label among the top k), "
            "not a cross-entropy against a target distribution, so there is nothing to smooth (at most k classes "
            "can be in the top k, and with m set every class outside the top m would only add a constant); "
            "regularise with a separate term, e.g. 0.1 * torch.nn.functional.cross_entropy(logits, labels, "
            "label_smoothing=0.1), or pass label_smoothing=0.0")
    return value


def check_inverse_temperature(value) -> float:
    """A finite number > 0, given as a number or a 0-d real tensor (read once, not differentiated)."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"inverse_temperature must be a number or a 0-d real tensor, got a tensor of shape "
                            f"{tuple(value.shape)} and dtype {value.dtype}")
        if value.requires_grad:
            raise ValueError("inverse_temperature is not differentiable here: pass a number or a detached tensor "
                             "(inverse_temperature.detach())")
        value = value.item()
    return as_positive(value, "inverse_temperature")


def check_loss_p_k(p_k) -> list:
    """``p_k`` as a list of probabilities; a string is a ``TypeError`` (it would be read character by character)."""
    if isinstance(p_k, (str, bytes)):
        raise TypeError(f"p_k must be a sequence of probabilities of k = 1..K, e.g. [0.5, 0.0, 0.5], got "
                        f"{type(p_k).__name__} {p_k!r}")
    return check_p_k(p_k)


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


def preselect(logits: torch.Tensor, labels: torch.Tensor, m: int, compiled: bool = False) -> torch.Tensor:
    """The true logit followed by the ``m - 1`` largest other logits (descending): ``[B, m]``.

    ``compiled``: the columns come from the fused CPU kernel's preselection
    (:func:`fastsort.kernels.cpu_topk_loss.preselect`, float32 CPU logits; one pass per row
    instead of a copy, a scatter and ``topk``), which never picks the label's column again;
    otherwise from ``torch.topk`` (the reference).
    """
    # the columns are chosen without autograd; one gather then carries the gradient
    # (a single zero-fill + scatter in the backward)
    if compiled:
        from .kernels.cpu_topk_loss import preselect as compiled_preselect

        return logits.gather(1, compiled_preselect(logits, labels, m))
    lab = labels.unsqueeze(1)
    top = _without_labels(logits, lab).topk(m - 1, dim=1, sorted=True).indices
    sel = logits.gather(1, torch.cat([lab, top], dim=1))
    # with fewer than m - 1 finite others, the label's (-inf-masked) column can be picked among
    # the -inf ties: it stands for a masked class there, so its value is -inf, not the label's logit
    picked_label = torch.cat([torch.zeros_like(lab, dtype=torch.bool), top == lab], dim=1)
    return sel.masked_fill(picked_label, float("-inf"))


#: validated loss configurations (:func:`_loss_config`), keyed by the arguments when they are plain values
_CONFIGS: dict = {}
_PLAIN_NUMBERS = (float, int)


def _loss_config(method, p_k, inverse_temperature, distribution, art_lambda, top1_mode):
    """``(method object, its parameters, p_k, rank weights)``, validated (a ``TypeError`` / ``ValueError``
    for a bad argument).  A training loop passes the same configuration every step: when every argument
    is a plain value (a str, an int or float, ``p_k`` a list or tuple of them) the result is kept, keyed by
    them and the method object (~15 us a call at B = 500: the checks, the parameters' parsing, the rank
    weights); only successful validations are kept, and the parameters are a read-only mapping."""
    meth = METHODS.lookup(method, "loss")
    key = None
    if (type(p_k) in (list, tuple) and type(inverse_temperature) in _PLAIN_NUMBERS
            and type(art_lambda) in _PLAIN_NUMBERS and type(distribution) is str and type(top1_mode) is str
            and all(type(v) in _PLAIN_NUMBERS for v in p_k)):
        key = (meth, tuple(p_k), inverse_temperature, distribution, art_lambda, top1_mode)
        hit = _CONFIGS.get(key)
        if hit is not None:
            return hit
    p = check_loss_p_k(p_k)
    check_top1_mode(top1_mode)
    params = meth.loss_params(check_inverse_temperature(inverse_temperature), distribution, art_lambda)
    config = (meth, MappingProxyType(params), tuple(p), tuple(rank_weights(p, top1_mode)))
    if key is not None and len(_CONFIGS) < 1024:
        _CONFIGS[key] = config
    return config


def _is_index_tensor(labels) -> bool:
    return isinstance(labels, torch.Tensor) and not (labels.dtype.is_floating_point or labels.dtype.is_complex
                                                      or labels.dtype == torch.bool)


def _masked_mean(loss: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-row losses with the ignored rows at exactly 0, reduced; the mean over the other rows."""
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "mean":
        return loss.sum() / valid.sum().to(loss.dtype)  # 0 / 0 = NaN when every row is ignored, as torch
    return reduce_loss(loss, reduction)


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
    ignore_index: Optional[int] = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Differentiable top-k cross-entropy loss.

    Args:
        logits: ``[B, C]`` floating (fp16/bf16 computed in float32, also under ``torch.autocast``);
            ``-inf`` marks masked classes (every method; zero gradient to them); a NaN or ``+inf`` logit
            makes that row's loss NaN.
        labels: ``[B]`` class indices in ``[0, C)`` of any integer dtype, or ``ignore_index``.
        p_k: probabilities of ``k = 1..K`` (sums to 1), e.g. ``[0.5, 0, 0, 0, 0.5]`` (a sequence, not a string).
        method: ``bitonic`` (default), ``odd_even``, ``splitter_selection``, ``neuralsort``, ``softsort``, ``sinkhorn``.
        m: optional top-m preselection, ``K < m < C``.  Exactly tied logits (common in bf16) may be
            picked and ordered differently by the two backends (``torch.topk``'s order; the fused
            kernel's highest column first): the loss is the same, but a sorting network's gradient
            is then split differently among the tied logits.
        inverse_temperature: steepness of the networks (``tau = 1 / it`` for NeuralSort/SoftSort,
            ``epsilon = 1 / it`` for Sinkhorn); a number or a 0-d tensor (read once, not differentiated).
        distribution, art_lambda: the networks' relaxation.
        top1_mode: ``sm`` (softmax for k = 1), ``smce`` (extra cross-entropy term) or ``sort``.
        reduction: ``mean`` (over the rows not ignored), ``sum`` or ``none`` (ignored rows 0).
        backend: ``auto``, ``torch``, ``triton`` or ``numba``.
        ignore_index: rows whose label equals it contribute 0 loss and 0 gradient (as
            ``torch.nn.CrossEntropyLoss``; every row ignored gives a NaN mean); ``None``: none is.
        label_smoothing: only 0.0 (accepted for drop-in code); anything else raises a ``ValueError``
            (the loss is ``-log P(label among the top k)``: there is no target distribution to smooth).

    Returns:
        A scalar (``mean``/``sum``) or ``[B]`` (``none``) in the logits' dtype.

    On the CPU kernels (``numba``, ``m`` set, not under ``torch.compile``) a reduced loss's forward
    also makes the logits' gradient, which the backward hands to autograd as it is for a unit
    upstream gradient, scaled otherwise (docs/design.md, "Top-k cross-entropy and preselection"): a gradient that
    ``torch.autograd.grad(..., retain_graph=True)`` returned and that is then modified in place
    makes a later backward of the same graph raise, as for any saved tensor modified in place.

    Example:
        >>> logits = torch.tensor([[1., 8., -1., 9., 5.]], requires_grad=True)
        >>> loss = fastsort.topk_cross_entropy(logits, torch.tensor([1]), [0.5, 0.5], inverse_temperature=2.0)
        >>> loss.backward()
    """
    with autocast_off(logits):
        return _topk_cross_entropy(logits, labels, p_k, method, m, inverse_temperature, distribution, art_lambda,
                                   top1_mode, reduction, backend, ignore_index, label_smoothing)


def _topk_cross_entropy(logits, labels, p_k, method, m, inverse_temperature, distribution, art_lambda, top1_mode,
                        reduction, backend, ignore_index, label_smoothing):
    ignore_index = check_ignore_index(ignore_index)
    check_label_smoothing(label_smoothing)
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] == 0:
        raise ValueError(f"logits has 0 classes (shape {tuple(logits.shape)}): the top-k loss needs at least one "
                         "class per row")
    valid = None
    in_range = False  # the labels' range checked here already
    if ignore_index is not None and _is_index_tensor(labels):
        labels = labels.long()
        host = labels.device.type == "cpu" and not torch.compiler.is_compiling()
        if host and labels.numel() and isinstance(logits, torch.Tensor) and logits.dim() == 2 \
                and not 0 <= ignore_index < logits.shape[1]:
            # one reduction for both questions: labels all in [0, C) are valid, and none can be an
            # ignore_index outside that range
            lo, hi = torch.aminmax(labels)
            in_range = 0 <= int(lo) and int(hi) < logits.shape[1]
        if not in_range:
            valid = labels != ignore_index
            if host and bool(valid.all()):
                # no row ignored (decided on the host, where it costs no device sync): the loss is reduced
                # by its op, without the masking ops and their autograd nodes (~0.2 ms a step at B = 500)
                valid = None
            else:
                labels = labels.masked_fill(~valid, 0)  # any valid class: the row's loss is masked out below
    check_logits_labels(logits, labels, check_range=not in_range)
    labels = labels.long()
    meth, params, p, c = _loss_config(method, p_k, inverse_temperature, distribution, art_lambda, top1_mode)
    check_reduction(reduction)
    B, C = logits.shape
    K = len(p)
    if m is not None:
        m = as_int(m, "m")
        if not K < m < C:
            raise ValueError(f"m must be an int with K < m < n_classes (K = len(p_k) = {K}, n_classes = {C}), got {m!r}")
    elif K > C:
        raise ValueError(f"len(p_k) = {K} must not exceed the number of classes {C}")
    be = choose_backend(logits, backend, meth.loss_kernels or meth.kernels, n=m)  # it sees m wires with preselection
    relax = meth.fused_loss(params, be) if m is not None and m <= MAX_FUSED_M else None
    if relax is not None:
        # the fused kernel reads the logits in their own dtype (no cast pass)
        if valid is None:  # the op owns the reduction
            return fused_topk_cross_entropy(logits, labels, c, method, m, relax, top1_mode, p[0], sum(p[1:]),
                                            reduction, be)
        # ignored rows: the kernel sees label 0 there, and their loss (hence their gradient) is masked out
        loss = fused_topk_cross_entropy(logits, labels, c, method, m, relax, top1_mode, p[0], sum(p[1:]), "none", be)
        return _masked_mean(loss, valid, reduction)
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    y = labels
    if m is not None:
        # the wires: the compiled preselection where ``auto`` picks the CPU kernels (whether or not the
        # method has any), torch.topk otherwise
        x = preselect(x, labels, m, compiled=backend == "auto" and choose_backend(x, "auto", ("numba",)) == "numba")
        y = torch.zeros_like(labels)
    # a +inf logit makes its row NaN (loss and gradient), as torch's cross-entropy, whatever the method
    # (the fused kernel's preselection gives NaN for it by itself); with preselection a row's +inf is
    # among its wires (only NaN ranks above it, and a NaN wire makes the row NaN anyway), so the test
    # reads the [B, m] wires, not the logits; on the host a finite sum says there is none (no second
    # elementwise pass)
    nan_rows = None if finite_on_host(x) else torch.where((x == math.inf).any(1), math.nan, 1.0)
    q = meth.loss_column(x, y, tuple(c), params, be) if any(c) else x.new_zeros(B)
    if top1_mode == "sm":
        q = q + p[0] * torch.softmax(x, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    loss = -torch.log(q * (1 - 2e-7) + 1e-7)
    if top1_mode == "smce":
        ce = torch.nn.functional.cross_entropy(x, y, reduction="none")
        loss = p[0] * ce + sum(p[1:]) * loss
    if nan_rows is not None:
        loss = loss * nan_rows.to(loss.dtype)
    if valid is None:
        return reduce_loss(loss, reduction).to(logits.dtype)
    return _masked_mean(loss, valid, reduction).to(logits.dtype)


class TopKCrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` with the differentiable top-k loss.

    The number of classes comes from the logits; ``ignore_index`` (default -100), integer labels of any
    dtype and ``label_smoothing=0.0`` as in ``CrossEntropyLoss``.  See :func:`topk_cross_entropy`.

    Example:
        >>> crit = fastsort.TopKCrossEntropyLoss([0.5, 0, 0, 0, 0.5], m=16, inverse_temperature=2.0)
        >>> loss = crit(torch.randn(8, 100), torch.randint(0, 100, (8,)))
    """

    def __init__(self, p_k: Sequence[float], method: str = "bitonic", *, m: Optional[int] = None,
                 inverse_temperature: float = 1.0, distribution: str = "cauchy", art_lambda: float = 0.25,
                 top1_mode: str = "sm", reduction: str = "mean", backend: str = "auto",
                 ignore_index: Optional[int] = -100, label_smoothing: float = 0.0):
        super().__init__()
        self.p_k = check_loss_p_k(p_k)
        METHODS.lookup(method, "loss")
        check_top1_mode(top1_mode)
        check_reduction(reduction)
        self.ignore_index = check_ignore_index(ignore_index)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        inverse_temperature = check_inverse_temperature(inverse_temperature)  # a 0-d tensor is read once, here
        _loss_config(method, self.p_k, inverse_temperature, distribution, art_lambda, top1_mode)  # (validates them)
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
            reduction=self.reduction, backend=self.backend, ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return (f"p_k={self.p_k}, method={self.method!r}, m={self.m}, inverse_temperature={self.inverse_temperature}, "
                f"top1_mode={self.top1_mode!r}, reduction={self.reduction!r}, ignore_index={self.ignore_index}")
