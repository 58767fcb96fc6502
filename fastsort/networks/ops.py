"""The relaxed sorting networks as one kernel-backed op with a hand-written backward.

``network_apply(x, init, kind, k, relax, backend)`` returns ``(y, S0)``: the
soft values after the network and the reverse sweep ``S0 = X init``
(docs/design.md, "The reverse sweep").  The three backends sit behind one
:class:`fastsort._kernel_op.KernelOp` (``fastsort::network_fwd`` /
``fastsort::network_bwd`` while ``torch.compile`` traces, a plain
``autograd.Function`` in eager mode):

* ``torch``: :mod:`fastsort.networks.reference` (any device, float64 too);
* ``triton``: :mod:`fastsort.kernels.network`;
* ``numba``: :mod:`fastsort.kernels.cpu_network` (compiled CPU kernels).

The forward returns ``y, S0`` and the saved state ``W, XIN, SHIST`` (empty
tensors when no gradient is needed).
"""
from __future__ import annotations

import importlib
from typing import NamedTuple, Optional, Tuple

from torch import Tensor

from .._kernel_op import KernelOp
from .tables import get_network, network_depth

_MODULES = {"torch": "fastsort.networks.reference", "triton": "fastsort.kernels.network",
            "numba": "fastsort.kernels.cpu_network"}


class Relaxation(NamedTuple):
    distribution: str
    steepness: float
    art_lambda: float


def _backend_module(backend: str):
    """The module with ``network_fwd`` / ``network_bwd`` of a backend (one launcher contract for all
    three), imported on first use: no triton / numba import before."""
    return importlib.import_module(_MODULES[backend])


def _table(kind: str, n: int, device, k: int):
    return get_network(kind, n, device, k if k > 0 else None)


def _forward(x: Tensor, init: Optional[Tensor], kind: str, k: int, distribution: str, steepness: float,
             art_lambda: float, backend: str, need_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    table = _table(kind, x.shape[-1], x.device, k)
    relax = Relaxation(distribution, steepness, art_lambda)
    y, S0, (W, XIN, SHIST) = _backend_module(backend).network_fwd(x, table, init, relax, need_grad)
    R, n = x.shape
    S0 = x.new_empty((R, 0, n)) if S0 is None else S0
    # outputs of a custom op may not alias each other: a fresh empty tensor for each unused one
    return (y, S0, W if need_grad else x.new_empty(0), XIN if need_grad else x.new_empty(0),
            SHIST if need_grad and SHIST is not None else x.new_empty(0))


def _forward_fake(x, init, kind, k, distribution, steepness, art_lambda, backend, need_grad):
    R, n = x.shape
    D = network_depth(kind, int(n), k if k > 0 else None)  # no tensors here: this runs under a fake mode
    C = 0 if init is None else init.shape[0]
    # saved-state layouts: torch backend [D, R, ...], Triton [R, D, ...]; numba saves only the input and
    # the sweep block (its backward recomputes the layers)
    weights = {"torch": (2, D, R, n), "triton": (R, D, n)}.get(backend, (0,))
    per_layer = {"torch": (D, R, n), "triton": (R, D, n)}.get(backend, (R, n))
    hist = {"torch": (D, R, C, n), "triton": (R, D, C, n)}.get(backend, (C, n))
    return (
        x.new_empty((R, n)),
        x.new_empty((R, C, n)),
        x.new_empty(weights) if need_grad else x.new_empty(0),
        x.new_empty(per_layer) if need_grad else x.new_empty(0),
        x.new_empty(hist) if need_grad and C else x.new_empty(0),
    )


def _backward(gy: Optional[Tensor], gS0: Optional[Tensor], W: Tensor, XIN: Tensor, SHIST: Tensor, kind: str,
              k: int, distribution: str, steepness: float, art_lambda: float, backend: str) -> Tensor:
    n = XIN.shape[-1]
    table = _table(kind, n, XIN.device, k)
    if gS0 is not None and gS0.shape[1] == 0:  # the op had no init block
        gS0 = None
    return _backend_module(backend).network_bwd((W, XIN, SHIST), table, Relaxation(distribution, steepness, art_lambda),
                                                gy, gS0)


def _backward_fake(gy, gS0, W, XIN, SHIST, kind, k, distribution, steepness, art_lambda, backend):
    R = XIN.shape[1] if backend == "torch" else XIN.shape[0]
    return XIN.new_empty((R, XIN.shape[-1]))


NETWORK_OP = KernelOp("network", _forward, _backward, forward_fake=_forward_fake, backward_fake=_backward_fake,
                      n_outputs=2)


def network_apply(x: Tensor, init: Optional[Tensor], kind: str, k: Optional[int], relax: Relaxation,
                  backend: str) -> Tuple[Tensor, Tensor]:
    """``(y [R, n], S0 [R, C, n])`` for rows ``x [R, n]`` (float32/float64) and a block ``init [C, n]``
    (``S0`` has ``C = 0`` without one).  ``k`` only for the selection network."""
    return NETWORK_OP(x, init, kind, int(k or 0), relax.distribution, float(relax.steepness),
                      float(relax.art_lambda), backend)
