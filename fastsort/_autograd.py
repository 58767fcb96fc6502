"""The relaxed sorting networks as ``torch.library`` custom ops with a hand-written backward.

``network_apply(x, init, kind, k, relax, backend)`` returns ``(y, S0)``: the
soft values after the network and the reverse sweep ``S0 = X init`` (see
:mod:`fastsort._torch_network`).  Both backends sit behind the same two ops:

* ``fastsort::network_forward``  -> ``y, S0, W, XIN, SHIST`` (the last three
  are what the backward needs, empty when no gradient is required),
* ``fastsort::network_backward`` -> ``dL/dx``,

registered with autograd and fake (meta) implementations, so
``torch.compile(fullgraph=True)`` traces through them with no graph break and
autograd never sees the individual layers.

In eager mode the same implementations run behind a plain
``autograd.Function`` (:class:`_NetworkFunction`): a custom op's Python
dispatch costs more than the kernels at small sizes, and its autograd
materialises zero gradients for every unused output (the saved ``W``, ``XIN``
and sweep history: ~100 MB of zero-fill per step for B = 64 rows of
n = 1024), which the Function skips (``set_materialize_grads(False)``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _torch_network as _tn
from .networks import get_network, network_depth


class Relaxation(NamedTuple):
    distribution: str
    steepness: float
    art_lambda: float


def _kernels():
    from .kernels import network as kn  # lazy: import triton only when it is used

    return kn


def _table(kind: str, n: int, device, k: int):
    return get_network(kind, n, device, k if k > 0 else None)


def _forward_impl(x, init, kind, k, distribution, steepness, art_lambda, backend, need_grad):
    table = _table(kind, x.shape[-1], x.device, k)
    relax = Relaxation(distribution, steepness, art_lambda)
    if backend == "triton":
        y, S0, (W, XIN, SHIST) = _kernels().network_apply(x, table, init, relax, need_grad)
    else:
        y, S0, (W, XIN, SHIST) = _tn.network_apply(x, table, init, *relax, need_grad)
    R, n = x.shape
    S0 = x.new_empty((R, 0, n)) if S0 is None else S0
    # outputs of a custom op may not alias each other: a fresh empty tensor for each unused one
    return (y, S0, W if need_grad else x.new_empty(0), XIN if need_grad else x.new_empty(0),
            SHIST if need_grad and SHIST is not None else x.new_empty(0))


def _backward_impl(gy, gS0, W, XIN, SHIST, kind, k, distribution, steepness, art_lambda, backend):
    table = _table(kind, XIN.shape[-1], XIN.device, k)
    relax = Relaxation(distribution, steepness, art_lambda)
    if gS0 is not None and gS0.shape[1] == 0:
        gS0 = None
    saved = (W, XIN, SHIST)
    if backend == "triton":
        return _kernels().network_apply_backward(saved, table, relax, gy, gS0)
    return _tn.network_apply_backward(saved, table, *relax, gy, gS0)


@torch.library.custom_op("fastsort::network_forward", mutates_args=())
def _network_forward(
    x: Tensor, init: Optional[Tensor], kind: str, k: int, distribution: str, steepness: float,
    art_lambda: float, backend: str, need_grad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward_impl(x, init, kind, k, distribution, steepness, art_lambda, backend, need_grad)


@_network_forward.register_fake
def _(x, init, kind, k, distribution, steepness, art_lambda, backend, need_grad):
    R, n = x.shape
    D = network_depth(kind, int(n), k if k > 0 else None)  # no tensors here: this runs under a fake mode
    C = 0 if init is None else init.shape[0]
    # saved-state layouts: torch backend [D, R, ...], Triton kernels [R, D, ...]
    weights = (2, D, R, n) if backend == "torch" else (R, D, n)
    per_layer = (D, R, n) if backend == "torch" else (R, D, n)
    hist = (D, R, C, n) if backend == "torch" else (R, D, C, n)
    return (
        x.new_empty((R, n)),
        x.new_empty((R, C, n)),
        x.new_empty(weights) if need_grad else x.new_empty(0),
        x.new_empty(per_layer) if need_grad else x.new_empty(0),
        x.new_empty(hist) if need_grad and C else x.new_empty(0),
    )


@torch.library.custom_op("fastsort::network_backward", mutates_args=())
def _network_backward(
    gy: Optional[Tensor], gS0: Optional[Tensor], W: Tensor, XIN: Tensor, SHIST: Tensor, kind: str, k: int,
    distribution: str, steepness: float, art_lambda: float, backend: str,
) -> Tensor:
    return _backward_impl(gy, gS0, W, XIN, SHIST, kind, k, distribution, steepness, art_lambda, backend)


@_network_backward.register_fake
def _(gy, gS0, W, XIN, SHIST, kind, k, distribution, steepness, art_lambda, backend):
    R = XIN.shape[1] if backend == "torch" else XIN.shape[0]
    return XIN.new_empty((R, XIN.shape[2]))


def _setup_context(ctx, inputs, output):
    x, init, kind, k, distribution, steepness, art_lambda, backend, need_grad = inputs
    _, _, W, XIN, SHIST = output
    ctx.save_for_backward(W, XIN, SHIST)
    ctx.args = (kind, k, distribution, steepness, art_lambda, backend)
    ctx.has_init = init is not None
    ctx.need_grad = need_grad


def _backward(ctx, gy, gS0, gW, gXIN, gSHIST):
    W, XIN, SHIST = ctx.saved_tensors
    if not ctx.need_grad:
        raise RuntimeError("fastsort: backward through a network op that was run without need_grad")
    gx = _network_backward(gy, gS0 if ctx.has_init else None, W, XIN, SHIST, *ctx.args)
    return gx, None, None, None, None, None, None, None, None


_network_forward.register_autograd(_backward, setup_context=_setup_context)


class _NetworkFunction(torch.autograd.Function):
    """Eager-mode twin of ``fastsort::network_forward`` (same implementations, less dispatch,
    no zero gradients for the unused outputs)."""

    @staticmethod
    def forward(ctx, x, init, args):
        y, S0, W, XIN, SHIST = _forward_impl(x, init, *args, True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(W, XIN, SHIST)
        ctx.args = args
        ctx.has_init = init is not None
        return y, S0

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: raise, never a silent 0
    def backward(ctx, gy, gS0):
        W, XIN, SHIST = ctx.saved_tensors
        if gy is None and (gS0 is None or not ctx.has_init):  # no output reached the loss
            return None, None, None
        gx = _backward_impl(gy, gS0 if ctx.has_init else None, W, XIN, SHIST, *ctx.args)
        return gx, None, None


def network_apply(x: Tensor, init: Optional[Tensor], kind: str, k: Optional[int], relax: Relaxation,
                  backend: str) -> Tuple[Tensor, Tensor]:
    """``(y [R, n], S0 [R, C, n])`` for ``x [R, n]`` (float32/float64) and ``init [C, n]``.

    ``backend`` comes from :func:`fastsort.functional.kernel_backend` (float64 -> torch)."""
    need_grad = torch.is_grad_enabled() and x.requires_grad
    args = (kind, int(k or 0), relax.distribution, float(relax.steepness), float(relax.art_lambda), backend)
    if torch.compiler.is_compiling():
        y, S0, _, _, _ = _network_forward(x, init, *args, need_grad)
    elif need_grad:
        y, S0 = _NetworkFunction.apply(x, init, args)
    else:
        y, S0, _, _, _ = _forward_impl(x, init, *args, False)
    return y, S0
