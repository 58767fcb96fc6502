"""Torch backend of the relaxed sorting networks (the CPU path and the kernels' oracle).

Notation (per row, SPEC.md): ``X = L_1 L_2 ... L_D`` with layer ``l`` mixing
each wire ``i`` with its partner ``p``::

    x^l_i = w_i x^{l-1}_i + (1 - w_i) x^{l-1}_p       (values, layers 1..D)

and for any block ``S^D`` of ``C`` position-vectors (``[C, n]``) the product
``S^0 = X S^D`` is the *reverse sweep* -- it applies the very same mix, to the
layers in reverse order::

    S^{l-1}_i = w_i S^l_i + (1 - w_i) S^l_p

``S^D`` picks what is computed: the unit vectors of the top positions (top-k
rows of P, ``O(n k D)``), the vector ``[1, ..., n]`` (soft ranks, ``O(n D)``),
the identity (full P), or a weight per rank (the top-k loss, ``O(n D)``).

Nothing ``n x n`` is ever built per layer.  The backward is written by hand
(no autograd graph over the layers): the adjoint of the sweep runs the layers
forward (``gS^l = mix(gS^{l-1})``, ``gw += <gS^{l-1}_i, S^l_i - S^l_p>``), the
adjoint of the values runs them backward, and ``gw`` goes through the
relaxation's derivative to the two wires of each comparator.  The Triton
kernels in ``fastsort.kernels.network`` do exactly these steps.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .networks import NetworkTable
from .relaxations import alpha_and_slope


def _layer_setup(table: NetworkTable, l: int):
    idx = table.index[l]
    ar = torch.arange(table.n, device=idx.device)
    passthrough = idx == ar
    is_lo = idx > ar
    return idx, passthrough, is_lo, table.desc[l]


def _mix(v: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``w * v + (1 - w) * v[..., partner]`` along the last dim (pass-through wires have ``w == 1``)."""
    return w * v + (1 - w) * v[..., idx]


def forward_values(
    x: torch.Tensor, table: NetworkTable, distribution: str, steepness: float, art_lambda: float, save: bool
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Run the network on ``x [R, n]``.

    Returns ``(y, W, Xin)``: the soft values after the last layer, the mixing
    weight of every wire in every layer ``W [R, D, n]``, and (if ``save``) the
    input of every layer ``Xin [R, D, n]`` for the backward (the layouts the
    Triton kernels use too).
    """
    D = table.depth
    R, n = x.shape
    W = x.new_empty((R, D, n))
    Xin = x.new_empty((R, D, n)) if save else None
    for l in range(D):
        idx, passthrough, is_lo, desc = _layer_setup(table, l)
        if save:
            Xin[:, l] = x
        xp = x[..., idx]
        d = torch.where(is_lo, xp - x, x - xp)
        alpha, _ = alpha_and_slope(d, distribution, steepness, art_lambda)
        w = torch.where(desc, 1 - alpha, alpha)
        w = torch.where(passthrough, torch.ones_like(w), w)
        W[:, l] = w
        x = torch.where(passthrough, x, w * x + (1 - w) * xp)
    return x, W, Xin


def sweep(W: torch.Tensor, table: NetworkTable, init: torch.Tensor, save: bool):
    """Reverse sweep ``S^0 = X S^D`` for ``init = S^D [C, n]`` (shared by all rows).

    Returns ``(S0 [R, C, n], Shist [R, D, C, n])`` where ``Shist[:, l]`` is
    ``S^{l+1}``, the block entering layer ``l``'s reverse mix (kept for the
    backward if ``save``).
    """
    R, D, n = W.shape
    S = init.to(W.dtype).expand(R, -1, -1)
    Shist = W.new_empty((R, D) + tuple(init.shape)) if save else None
    for l in range(D - 1, -1, -1):
        if save:
            Shist[:, l] = S
        S = _mix(S, W[:, l].unsqueeze(1), table.index[l])
    return S, Shist


def sweep_backward(gS0: torch.Tensor, W: torch.Tensor, table: NetworkTable, Shist: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`sweep`: ``dL/dW [R, D, n]`` from ``dL/dS^0 [R, C, n]``."""
    D = W.shape[1]
    gW = torch.empty_like(W)
    g = gS0
    for l in range(D):
        idx = table.index[l]
        S = Shist[:, l]
        gW[:, l] = (g * (S - S[..., idx])).sum(1)
        g = _mix(g, W[:, l].unsqueeze(1), idx)
    return gW


def backward_values(
    gy: Optional[torch.Tensor],
    gW: Optional[torch.Tensor],
    W: torch.Tensor,
    Xin: torch.Tensor,
    table: NetworkTable,
    distribution: str,
    steepness: float,
    art_lambda: float,
) -> torch.Tensor:
    """Gradient w.r.t. the network input, given ``dL/dy`` and ``dL/dW`` (either may be None)."""
    D = W.shape[1]
    g = torch.zeros_like(Xin[:, 0]) if gy is None else gy
    for l in range(D - 1, -1, -1):
        idx, passthrough, is_lo, desc = _layer_setup(table, l)
        x = Xin[:, l]
        xp = x[..., idx]
        gw = g * (x - xp)
        if gW is not None:
            gw = gw + gW[:, l]
        g = _mix(g, W[:, l], idx)
        # both wires of a comparator share alpha: dL/dalpha = +-(gw_i + gw_p)
        dalpha = gw + gw[..., idx]
        dalpha = torch.where(desc, -dalpha, dalpha)
        d = torch.where(is_lo, xp - x, x - xp)
        _, slope = alpha_and_slope(d, distribution, steepness, art_lambda)
        dd = dalpha * slope  # dL/dd with d = x_hi - x_lo
        g = g + torch.where(passthrough, torch.zeros_like(dd), torch.where(is_lo, -dd, dd))
    return g


def network_apply(
    x: torch.Tensor,
    table: NetworkTable,
    init: Optional[torch.Tensor],
    distribution: str,
    steepness: float,
    art_lambda: float,
    need_grad: bool,
):
    """Forward of the torch backend: ``(y, S0, saved)``; ``S0`` is None when ``init`` is None."""
    y, W, Xin = forward_values(x, table, distribution, steepness, art_lambda, need_grad)
    S0, Shist = (None, None) if init is None else sweep(W, table, init, need_grad)
    return y, S0, (W, Xin, Shist)


def network_apply_backward(saved, table, distribution, steepness, art_lambda, gy, gS0):
    W, Xin, Shist = saved
    gW = None if gS0 is None else sweep_backward(gS0, W, table, Shist)
    return backward_values(gy, gW, W, Xin, table, distribution, steepness, art_lambda)
