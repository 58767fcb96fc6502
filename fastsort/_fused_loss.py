"""The fused top-k cross-entropy (docs/design.md, "Top-k cross-entropy and preselection").

One kernel per row does the preselection, the network, the loss and its
gradient w.r.t. the ``m`` preselected logits; the backward writes the dense
``dlogits`` once, scaled by the loss's gradient.  The op owns the reduction
and the cast to the logits' dtype, so an eager training step on the GPU is
four launches: the fused kernel and the mean in the forward, autograd's
``ones_like`` and the scatter kernel in the backward.  It runs through
:class:`fastsort._kernel_op.KernelOp` (``fastsort::topk_ce_fwd`` /
``fastsort::topk_ce_bwd`` while ``torch.compile`` traces).

Backends: ``triton`` (:mod:`fastsort.kernels.topk_loss`) and ``numba``
(:mod:`fastsort.kernels.cpu_topk_loss`), with the same launcher contract; NeuralSort
and SoftSort (``kind`` in :data:`ROWS_KINDS`) have their own forward kernel
(:mod:`fastsort.kernels.cpu_rows_loss`, ``rows_ce_fwd`` of :mod:`fastsort.kernels.topk_loss`:
``steepness`` carries ``1 / tau``, ``distribution`` and ``art_lambda`` are unused) and the
same backward.  Where the launchers say ``DENSE_GRADIENT`` (the ``numba`` ones), an eager step
with a reduced loss has the forward's threads write the dense ``dlogits`` too, and the backward
hands that saved tensor to autograd (docs/design.md, "Top-k cross-entropy and preselection": no
zero-fill and scatter pass).
"""
from __future__ import annotations

import importlib
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ._kernel_op import KernelOp
from ._validate import reduce_loss
from .networks import get_network

#: the fused kernel serves top-m preselection up to this many wires
MAX_FUSED_M = 256

_KERNEL_MODULES = {"triton": "fastsort.kernels.topk_loss", "numba": "fastsort.kernels.cpu_topk_loss"}
#: the methods whose fused forward is ``rows_ce_fwd`` (the backward is the networks')
ROWS_KINDS = ("neuralsort", "softsort")
_ROWS_KERNELS = {"numba": "fastsort.kernels.cpu_rows_loss", "triton": "fastsort.kernels.topk_loss"}


def _kernels(backend: str, kind: str = ""):
    """The launchers of ``backend`` for method ``kind`` (imported on first use: no triton / numba import before)."""
    return importlib.import_module((_ROWS_KERNELS if kind in ROWS_KINDS else _KERNEL_MODULES)[backend])


def _scale(reduction: str, B: int) -> float:
    """The per-row loss's weight in the reduced one."""
    return 1.0 / B if reduction == "mean" and B else 1.0


def _forward(logits: Tensor, labels: Tensor, c: List[float], kind: str, m: int, distribution: str,
             steepness: float, art_lambda: float, mode: str, p_first: float, p_rest: float, reduction: str,
             n_classes: int, backend: str, need_grad: bool, donate: bool = False
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, out [B, 1 + m], idx [B, m], dense)``: the reduced loss in the logits' dtype, then the
    per-row loss (column 0) with its gradient w.r.t. the m wires, the wires' columns (``n_classes``:
    the logits' width, for the backward, which saves no input), and ``dense``: on the CPU kernels,
    run eagerly (``donate``) with a gradient and a reduced loss, the dense gradient of the loss
    w.r.t. the logits for a unit ``g_loss`` (made by the forward's threads, handed to autograd by the
    backward: a training step's gradient without a zeroing pass), empty otherwise."""
    B = logits.shape[0]
    kernels = _kernels(backend, kind)
    dense = None
    if donate and need_grad and reduction != "none" and kernels.DENSE_GRADIENT:
        dense = torch.empty((B, n_classes), dtype=_dense_dtype(logits.dtype))
    if kind in ROWS_KINDS:  # (steepness carries 1 / tau)
        out, idx = kernels.rows_ce_fwd(logits, labels, tuple(c), kind, steepness, m, mode, p_first, p_rest, need_grad,
                                       **_dense_args(dense, reduction, B))
    else:
        table = get_network(kind, m, logits.device, len(c) if kind == "splitter_selection" else None)
        out, idx = kernels.topk_ce_fwd(logits, labels, tuple(c), table, (distribution, steepness, art_lambda), m, mode,
                                       p_first, p_rest, need_grad, **_dense_args(dense, reduction, B))
    # copy=True: with reduction "none" the loss would otherwise be a view of ``out`` (outputs of a
    # custom op may not alias each other)
    loss = reduce_loss(out[:, 0], reduction).to(logits.dtype, copy=reduction == "none")
    return loss, out, idx, (dense if dense is not None else out.new_empty(0))


def _dense_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _dense_args(dense: Optional[Tensor], reduction: str, B: int) -> dict:
    return {} if dense is None else {"dense": dense, "dense_scale": _scale(reduction, B)}


def _forward_fake(logits, labels, c, kind, m, distribution, steepness, art_lambda, mode, p_first, p_rest,
                  reduction, n_classes, backend, need_grad, donate=False):
    B = logits.shape[0]
    loss = logits.new_empty((B,) if reduction == "none" else ())
    return (loss, logits.new_empty((B, 1 + m if need_grad else 1), dtype=torch.float32),
            logits.new_empty((B, m if need_grad else 0), dtype=torch.int64), logits.new_empty(0, dtype=torch.float32))


def _backward(g_loss: Tensor, out: Tensor, idx: Tensor, dense: Tensor, c: List[float], kind: str, m: int,
              distribution: str, steepness: float, art_lambda: float, mode: str, p_first: float, p_rest: float,
              reduction: str, n_classes: int, backend: str) -> Tensor:
    """Dense ``dlogits`` in the loss's dtype: ``g_loss * out[:, 1:]`` at the columns ``idx`` (``/ B``
    for the mean), 0 elsewhere; the forward's ``dense`` itself when it made one and ``g_loss`` is 1
    (a saved tensor that autograd takes over once the graph is freed), ``g_loss * dense`` for
    another ``g_loss``."""
    if dense.numel():
        if g_loss.dtype == dense.dtype and float(g_loss) == 1.0:
            return dense
        return (dense * g_loss).to(g_loss.dtype)
    return _kernels(backend).topk_ce_bwd(out, idx, g_loss, n_classes, g_loss.dtype, _scale(reduction, out.shape[0]),
                                         col0=1)


def _backward_fake(g_loss, out, idx, dense, c, kind, m, distribution, steepness, art_lambda, mode, p_first, p_rest,
                   reduction, n_classes, backend):
    return out.new_empty((out.shape[0], n_classes), dtype=g_loss.dtype)


TOPK_CE_OP = KernelOp("topk_ce", _forward, _backward, forward_fake=_forward_fake, backward_fake=_backward_fake,
                      n_outputs=1)


def fused_topk_cross_entropy(logits: Tensor, labels: Tensor, c: List[float], kind: str, m: int,
                             relax: Tuple[str, float, float], mode: str, p_first: float, p_rest: float,
                             reduction: str, backend: str) -> Tensor:
    """The fused loss with top-m preselection, reduced (``mean``/``sum``/``none``), in the logits' dtype;
    ``relax``: the method's :meth:`~fastsort.method.Method.fused_loss` triple."""
    distribution, steepness, art_lambda = relax
    return TOPK_CE_OP(logits, labels, [float(v) for v in c], kind, m, distribution, float(steepness),
                      float(art_lambda), mode, float(p_first), float(p_rest), reduction, logits.shape[1], backend)
