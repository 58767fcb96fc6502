"""The fused Triton top-k cross-entropy as a ``torch.library`` custom op.

``fastsort::topk_ce_fused`` returns the per-row loss and, when a gradient is
needed, the gradient w.r.t. the ``m`` preselected logits of each row and
their columns; its registered backward (``fastsort::topk_ce_fused_backward``)
writes the dense ``dlogits`` once, scaled by ``grad_output``.  See
:mod:`fastsort.kernels.topk_loss` for the kernel.

In eager mode the same launchers run behind a plain ``autograd.Function``
(:class:`_FusedTopKCE`) that also owns the reduction: a custom op's Python
dispatch costs more than the kernel itself at training batch sizes, and every
extra launch (the mean's backward, a dtype cast) costs a driver call.  A
training step is then four launches: the fused kernel and the mean in the
forward, autograd's ``ones_like`` and the scatter kernel in the backward
(``torch.nn.CrossEntropyLoss`` takes five).  While ``torch.compile`` traces,
the custom op is used, so the graph has no break.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .functional import reduce_loss, sweep_init
from .networks import get_network

#: the fused kernel serves top-m preselection up to this many wires
MAX_FUSED_M = 256


def _kernels():
    from .kernels import topk_loss  # lazy: import triton only when it is used

    return topk_loss


def _position_weights(c: Tuple[float, ...], m: int, device) -> Tensor:
    """``v [1, m]``: weight of each ascending position (position ``m - r`` has ``c_r``); cached,
    so the kernels' packed table built from it is cached too."""
    return sweep_init("weights", m, len(c), torch.float32, device, tuple(c))


@torch.library.custom_op("fastsort::topk_ce_fused", mutates_args=())
def _topk_ce_fused(
    logits: Tensor, labels: Tensor, c: List[float], kind: str, m: int, distribution: str, steepness: float,
    art_lambda: float, mode: str, p_first: float, p_rest: float, need_grad: bool,
) -> Tuple[Tensor, Tensor]:
    return _forward_impl(logits, labels, c, kind, m, distribution, steepness, art_lambda, mode, p_first, p_rest,
                         need_grad)


@_topk_ce_fused.register_fake
def _(logits, labels, c, kind, m, distribution, steepness, art_lambda, mode, p_first, p_rest, need_grad):
    B = logits.shape[0]
    return (logits.new_empty((B, 1 + m if need_grad else 1), dtype=torch.float32),
            logits.new_empty((B, m if need_grad else 0), dtype=torch.int64))


@torch.library.custom_op("fastsort::topk_ce_fused_backward", mutates_args=())
def _topk_ce_fused_backward(out: Tensor, idx: Tensor, grad_loss: Tensor, n_classes: int, dtype: torch.dtype) -> Tensor:
    """Dense ``dlogits``: ``grad_loss * out[:, 1:]`` at the columns ``idx``, 0 elsewhere."""
    return _kernels().scatter_backward(out, idx, grad_loss, n_classes, dtype, 1.0, col0=1)


@_topk_ce_fused_backward.register_fake
def _(out, idx, grad_loss, n_classes, dtype):
    return out.new_empty((out.shape[0], n_classes), dtype=dtype)


def _forward_impl(logits, labels, c, kind, m, distribution, steepness, art_lambda, mode, p_first, p_rest, need_grad):
    """``(out [B, 1 + m], idx [B, m])``: loss in column 0, then its gradient w.r.t. the m wires."""
    table = get_network(kind, m, logits.device, len(c) if kind == "splitter_selection" else None)
    v = _position_weights(tuple(c), m, logits.device)
    return _kernels().fused_forward(logits, labels, v, table, (distribution, steepness, art_lambda), m, mode,
                                    p_first, p_rest, need_grad)


class _FusedTopKCE(torch.autograd.Function):
    """Eager-mode twin of ``fastsort::topk_ce_fused`` (same launchers, less dispatch), with the
    reduction and the cast to the logits' dtype inside, so their backward needs no launch."""

    @staticmethod
    def forward(ctx, logits, labels, args, reduction):
        out, idx = _forward_impl(logits, labels, *args, True)
        ctx.save_for_backward(out, idx)
        B, C = logits.shape
        ctx.n_classes, ctx.dtype = C, logits.dtype
        ctx.scale = 1.0 / B if reduction == "mean" and B else 1.0
        return reduce_loss(out[:, 0], reduction).to(logits.dtype)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: raise, never a silent 0
    def backward(ctx, g_loss):
        out, idx = ctx.saved_tensors
        dx = _kernels().scatter_backward(out, idx, g_loss, ctx.n_classes, ctx.dtype, ctx.scale, col0=1)
        return dx, None, None, None


def _setup_context(ctx, inputs, output):
    logits = inputs[0]
    ctx.save_for_backward(*output)
    ctx.n_classes, ctx.dtype = logits.shape[1], logits.dtype


def _backward(ctx, g_out, g_idx):
    out, idx = ctx.saved_tensors
    dx = _topk_ce_fused_backward(out, idx, g_out[:, 0], ctx.n_classes, ctx.dtype)
    return (dx,) + (None,) * 11


_topk_ce_fused.register_autograd(_backward, setup_context=_setup_context)


def fused_topk_cross_entropy(logits: Tensor, labels: Tensor, c: List[float], kind: str, m: int, params: dict,
                             mode: str, p_first: float, p_rest: float, reduction: str) -> Tensor:
    """The fused loss with top-m preselection, reduced (``mean``/``sum``/``none``), in the logits' dtype."""
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    args = ([float(v) for v in c], kind, m, params["distribution"], float(params["steepness"]),
            float(params["art_lambda"]), mode, float(p_first), float(p_rest))
    if torch.compiler.is_compiling():
        loss = _topk_ce_fused(logits, labels, *args, need_grad)[0][:, 0]
    elif need_grad:
        return _FusedTopKCE.apply(logits, labels, args, reduction)
    else:
        loss = _forward_impl(logits, labels, *args, False)[0][:, 0]
    return reduce_loss(loss, reduction).to(logits.dtype)
