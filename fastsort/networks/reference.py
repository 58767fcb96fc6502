"""Torch backend of the relaxed sorting networks (the CPU path and the kernels' oracle).

Notation (per row; docs/design.md, "The reverse sweep"): ``X = L_1 L_2 ... L_D`` with layer ``l`` mixing
each wire ``i`` with its partner ``p``::

    x^l_i = w_i x^{l-1}_i + (1 - w_i) x^{l-1}_p      (values, layers 1..D)

and for any block ``S^D`` of ``C`` position-vectors (``[C, n]``) the product
``S^0 = X S^D`` is the *reverse sweep* -- the very same mix applied to the
layers in reverse order::

    S^{l-1}_i = w_i S^l_i + (1 - w_i) S^l_p

``S^D`` picks what is computed: the unit vectors of the top positions (top-k
rows of P, ``O(n k D)``), the vector ``[1, ..., n]`` (soft ranks, ``O(n D)``),
the identity (full P), or a weight per rank (the top-k loss, ``O(n D)``).

The mixing weight is ``w = alpha`` on an ascending comparator, ``1 - alpha``
on a descending one and ``1`` on a pass-through wire; with per-layer constants
``w = wa + wb * alpha`` and ``1 - w = (1 - wa) - wb * alpha`` (``wb = +1, -1, 0``;
both evaluated like diffsort does, so that tiny probabilities keep their
relative precision) and ``d = x[hi] - x[lo] =
sgn * (x_p - x_i)`` (``sgn = +1`` on the low wire, ``-1`` on the high wire,
``0`` when passing through) a layer is a handful of whole-tensor ops, with no
``n x n`` matrix and no per-comparator Python.

The backward is written by hand (no autograd graph over the layers): the
adjoint of the sweep runs the layers forward (``gS^l = mix(gS^{l-1})``,
``dL/dw_i = <gS^{l-1}_i, S^l_i - S^l_p>``), the adjoint of the values runs
them backward, and ``dL/dalpha = wb (dL/dw_i + dL/dw_p)`` goes through the
relaxation's derivative to the two wires (``-dd`` on the low, ``+dd`` on the
high wire).  The Triton kernels (``fastsort.kernels.network``) and the CPU kernels
(``fastsort.kernels.cpu_network``) do the same.

Saved for the backward (layout ``[D, R, ...]``): the weights ``w`` and
``1 - w``, the layer differences ``x_p - x_i``, and the sweep blocks ``S^l``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .._cache import device_constant
from ..relaxations import relax_alpha, relax_slope
from .tables import NetworkTable

_CONSTS: Dict[tuple, Tuple[torch.Tensor, ...]] = {}


def layer_constants(table: NetworkTable, dtype: torch.dtype):
    """``(sgn, wa, wb, 1 - wa, -wb)`` as ``[D, n]`` tensors of ``dtype`` (cached per table)."""
    def build():
        ar = torch.arange(table.n, device=table.index.device)
        passthrough = table.index == ar
        sgn = torch.where(table.index > ar, 1.0, -1.0).masked_fill(passthrough, 0.0).to(dtype)
        wb = torch.where(table.desc, -1.0, 1.0).masked_fill(passthrough, 0.0).to(dtype)
        wa = torch.where(table.desc, 1.0, 0.0).masked_fill(passthrough, 1.0).to(dtype)
        return sgn, wa, wb, 1 - wa, -wb

    # keyed by what the table is, not its id
    return device_constant(_CONSTS, (table.kind, table.n, table.k, str(table.partner.device), dtype), build)


def _mix(v: torch.Tensor, w: torch.Tensor, om: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``w * v + (1 - w) * v[..., partner]`` along the last dim (``om = 1 - w``)."""
    return torch.addcmul(w * v, om, v.index_select(-1, idx))


def forward_values(x, table: NetworkTable, distribution: str, steepness: float, art_lambda: float, save: bool):
    """Run the network on ``x [R, n]``.

    Returns ``(y, WW, DIFF)``: the soft values after the last layer, ``w`` and
    ``1 - w`` of every wire in every layer (``WW [2, D, R, n]``), and (if
    ``save``) the layer differences ``x_p - x_i`` (``DIFF [D, R, n]``).
    """
    D = table.depth
    sgn, wa, wb, c0, c1 = layer_constants(table, x.dtype)
    WW = x.new_empty((2, D) + x.shape)
    DIFF = x.new_empty((D,) + x.shape) if save else None
    for l in range(D):
        xp = x.index_select(-1, table.index[l])
        diff = torch.sub(xp, x, out=DIFF[l]) if save else xp - x
        alpha = relax_alpha(diff * sgn[l], distribution, steepness, art_lambda)
        w = torch.addcmul(wa[l], wb[l], alpha, out=WW[0, l])
        om = torch.addcmul(c0[l], c1[l], alpha, out=WW[1, l])
        x = torch.addcmul(w * x, om, xp)
    return x, WW, DIFF


def sweep(WW: torch.Tensor, table: NetworkTable, init: torch.Tensor, save: bool):
    """Reverse sweep ``S^0 = X S^D`` for ``init = S^D [C, n]`` (shared by all rows).

    Returns ``(S0 [R, C, n], SHIST [D, R, C, n])`` where ``SHIST[l]`` is the
    block entering layer ``l``'s reverse mix (kept for the backward if ``save``).
    """
    _, D, R, n = WW.shape
    S = init.to(WW.dtype).expand(R, -1, -1)
    SHIST = WW.new_empty((D, R) + tuple(init.shape)) if save else None
    for l in range(D - 1, -1, -1):
        if save:
            SHIST[l] = S
        S = _mix(S, WW[0, l].unsqueeze(1), WW[1, l].unsqueeze(1), table.index[l])
    return S, SHIST


def sweep_backward(gS0: torch.Tensor, WW: torch.Tensor, table: NetworkTable, SHIST: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`sweep`: ``dL/dw [D, R, n]`` from ``dL/dS^0 [R, C, n]``."""
    D = WW.shape[1]
    GW = torch.empty_like(WW[0])
    g = gS0
    for l in range(D):
        idx = table.index[l]
        S = SHIST[l]
        torch.sum(g * (S - S.index_select(-1, idx)), 1, out=GW[l])
        g = _mix(g, WW[0, l].unsqueeze(1), WW[1, l].unsqueeze(1), idx)
    return GW


def backward_values(gy, GW, WW, DIFF, table: NetworkTable, distribution: str, steepness: float, art_lambda: float):
    """Gradient w.r.t. the network input, given ``dL/dy`` and ``dL/dw`` (either may be None)."""
    D = WW.shape[1]
    sgn, _, wb, _, _ = layer_constants(table, WW.dtype)
    g = torch.zeros_like(DIFF[0]) if gy is None else gy
    for l in range(D - 1, -1, -1):
        idx = table.index[l]
        diff = DIFF[l]
        gw = -(g * diff) if GW is None else torch.addcmul(GW[l], g, diff, value=-1.0)  # dL/dw
        g = _mix(g, WW[0, l], WW[1, l], idx)
        # both wires of a comparator share alpha: dL/dalpha = wb * (gw_i + gw_p)
        dalpha = (gw + gw.index_select(-1, idx)) * wb[l]
        dd = dalpha * relax_slope(diff * sgn[l], distribution, steepness, art_lambda)  # dL/d(x_hi - x_lo)
        g = torch.addcmul(g, sgn[l], dd, value=-1.0)
    return g


def network_fwd(x, table: NetworkTable, init: Optional[torch.Tensor], relax_params, need_grad: bool):
    """Forward of the torch backend: ``(y, S0, saved)``; ``S0`` is None when ``init`` is None.
    ``relax_params = (distribution, steepness, art_lambda)`` (the kernels' launcher contract)."""
    distribution, steepness, art_lambda = relax_params
    y, WW, DIFF = forward_values(x, table, distribution, steepness, art_lambda, need_grad)
    S0, SHIST = (None, None) if init is None else sweep(WW, table, init, need_grad)
    return y, S0, (WW, DIFF, SHIST)


def network_bwd(saved, table: NetworkTable, relax_params, gy, gS0):
    """Backward of the torch backend: ``dL/dx`` from ``dL/dy`` and ``dL/dS0`` (either may be None)."""
    distribution, steepness, art_lambda = relax_params
    WW, DIFF, SHIST = saved
    GW = None if gS0 is None else sweep_backward(gS0, WW, table, SHIST)
    return backward_values(gy, GW, WW, DIFF, table, distribution, steepness, art_lambda)
