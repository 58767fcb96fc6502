"""The autograd Function of the relaxed sorting networks (one Function, two backends).

``NetworkFunction.apply(x, init, table, relax, backend)`` returns
``(y, S0)``: the soft values after the network and the reverse sweep
``S0 = X init`` (see ``fastsort._torch_network``).  Its backward is written by
hand in both backends; autograd never sees the layers.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import _torch_network as _tn
from .networks import NetworkTable


class Relaxation(NamedTuple):
    distribution: str
    steepness: float
    art_lambda: float


def _triton_network():
    from .kernels import network as kn  # lazy: importing triton only when used

    return kn


class NetworkFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, init, table: NetworkTable, relax: Relaxation, backend: str):
        ctx.set_materialize_grads(False)
        need_grad = x.requires_grad
        if backend == "triton":
            y, S0, saved = _triton_network().network_apply(x, table, init, relax, need_grad)
        else:
            y, S0, saved = _tn.network_apply(x, table, init, *relax, need_grad)
        if S0 is None:
            S0 = x.new_empty((x.shape[0], 0, x.shape[1]))
        ctx.table, ctx.relax, ctx.backend, ctx.has_init = table, relax, backend, init is not None
        ctx.saved = saved if need_grad else None
        return y, S0

    @staticmethod
    def backward(ctx, gy: Optional[torch.Tensor], gS0: Optional[torch.Tensor]):
        if ctx.saved is None:
            return None, None, None, None, None
        if not ctx.has_init:
            gS0 = None
        if ctx.backend == "triton":
            gx = _triton_network().network_apply_backward(ctx.saved, ctx.table, ctx.relax, gy, gS0)
        else:
            gx = _tn.network_apply_backward(ctx.saved, ctx.table, *ctx.relax, gy, gS0)
        ctx.saved = None
        return gx, None, None, None, None


def network_apply(x: torch.Tensor, init: Optional[torch.Tensor], table: NetworkTable, relax: Relaxation, backend: str):
    """``(y [R, n], S0 [R, C, n])`` for ``x [R, n]`` (float32/float64) and ``init [C, n]``."""
    return NetworkFunction.apply(x, init, table, relax, backend)
