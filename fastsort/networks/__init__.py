"""Relaxed sorting and selection networks: odd-even, bitonic, splitter selection.

The family's pieces (docs/design.md, "Networks as tables" and "The reverse sweep"):

* :mod:`.tables`: the networks as integer layer tables (one kernel walks them all);
* :mod:`.reference`: the torch backend, the kernels' oracle;
* :mod:`.ops`: the kernel-backed op (torch / Triton / CPU kernels) with its
  hand-written backward;
* :class:`NetworkMethod`: the registry's method object.

A network runs forward once on the values and then sweeps its layers backwards
over a small block ``S^D``, so each op costs only what it reads out: the top
``k`` rows of ``P`` (``O(n k D)``), ranks and the top-k mask (``O(n D)``), the
loss's weighted column (``O(n D)``), the full ``P`` (``O(n^2 D)``).
"""
from __future__ import annotations

import torch

from .._validate import as_positive, as_real
from ..method import Method
from ..relaxations import check_distribution
from . import tables
from .ops import Relaxation, network_apply
from .tables import (NETWORK_KINDS, NetworkTable, bitonic_layers, get_network, network_depth,  # noqa: F401
                     network_layers, odd_even_layers, splitter_selection_layers, sweep_init)

__all__ = ["NetworkMethod", "network_apply", "network_depth", *tables.__all__]

# -inf logits (masked classes) are sorted as this value: finite, so the comparators
# see a huge difference (alpha exactly 0 or 1) instead of inf - inf
NEG_BIG = -1e30


class NetworkMethod(Method):
    """A relaxed network (``odd_even``, ``bitonic``) or the selection network ``splitter_selection``.

    Parameters: ``steepness=10.0`` (the inverse temperature of every comparator),
    ``distribution="cauchy"`` (the relaxation, see :data:`fastsort.relaxations.RELAXATIONS`),
    ``art_lambda=0.25`` (only for ``logistic_phi``).
    """

    defaults = {"steepness": 10.0, "distribution": "cauchy", "art_lambda": 0.25}
    ops = ("sort", "rank", "topk", "permutation", "topk_mask", "loss")
    kernels = ("triton", "numba")

    def __init__(self, name: str):
        super().__init__(name)
        if name == "splitter_selection":  # places the k largest only
            self.ops = ("topk", "topk_mask", "loss")
            self.limitation = ("a top-k selection network: it only places the k largest; "
                               "use 'bitonic' or 'odd_even'")

    def check(self, p):
        p["steepness"] = as_positive(p["steepness"], "steepness")
        check_distribution(p["distribution"])
        p["art_lambda"] = as_real(p["art_lambda"], "art_lambda")
        return p

    def loss_params(self, inverse_temperature, distribution, art_lambda):
        return self.parse(dict(steepness=inverse_temperature, distribution=distribution, art_lambda=art_lambda))

    def fused_loss(self, p, backend):
        return (p["distribution"], p["steepness"], p["art_lambda"]) if backend in self.kernels else None

    # ------------------------------------------------------------------ the ops
    def sweep(self, x, p, init, backend, k=None):
        """``(y [R, n], S0 [R, C, n])``: the network's values and the reverse sweep of ``init [C, n]``
        (``None``: no sweep); ``k`` for the selection network."""
        relax = Relaxation(p["distribution"], p["steepness"], p["art_lambda"])
        return network_apply(x, init, self.name, k if self.name == "splitter_selection" else None, relax, backend)

    def sort(self, x, p, backend):
        return self.sweep(x, p, None, backend)[0]

    def rank(self, x, p, backend):
        n = x.shape[-1]
        return self.sweep(x, p, sweep_init("ranks", n, n, x.dtype, x.device), backend)[1].squeeze(1)

    def topk(self, x, k, p, backend):
        return self.sweep(x, p, sweep_init("topk", x.shape[-1], k, x.dtype, x.device), backend, k)[1]

    def permutation(self, x, p, backend):
        return self.sweep(x, p, torch.eye(x.shape[-1], dtype=x.dtype, device=x.device), backend)[1]

    def topk_mask(self, x, k, p, backend):
        # one vector through the sweep: the indicator of the top k positions
        return self.sweep(x, p, sweep_init("mask", x.shape[-1], k, x.dtype, x.device), backend, k)[1].squeeze(1)

    def loss_column(self, x, labels, c, p, backend):
        K = len(c)
        v = sweep_init("weights", x.shape[-1], K, x.dtype, x.device, tuple(c))  # c_r at position n - r
        S0 = self.sweep(x.clamp(min=NEG_BIG), p, v, backend, K)[1]
        return S0[:, 0, :].gather(1, labels.unsqueeze(1)).squeeze(1)
