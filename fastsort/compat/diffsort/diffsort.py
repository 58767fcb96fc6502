"""``diffsort.diffsort``: the module :class:`DiffSortNet`."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._common import NetworkModule

__all__ = ["DiffSortNet", "SORTING_NETWORKS"]

#: The sorting networks of ``diffsort.DiffSortNet``.
SORTING_NETWORKS = ("bitonic", "odd_even")


class DiffSortNet(NetworkModule):
    """Relaxed sorting network; same interface and outputs as ``diffsort.DiffSortNet``.

    Args:
        sorting_network_type: ``'bitonic'`` or ``'odd_even'``.
        size: ``n``, the number of elements per row.
        device: accepted for compatibility; the forward is device-agnostic (only the
            ``sorting_network`` description is built there, when read).
        steepness: inverse temperature of the relaxed comparators (default 10).
        art_lambda: the ``lambda`` of ``distribution='logistic_phi'`` (default 0.25); ignored by
            the other distributions, so ``None`` works with them (as in diffsort).
        interpolation_type: deprecated alias of ``distribution`` (the reference's conflict check applies).
        distribution: ``'cauchy'`` (default), ``'logistic'``, ``'logistic_phi'``, ``'gaussian'``,
            ``'reciprocal'`` or ``'optimal'``.

    ``forward(vectors [B, size])`` returns ``(sorted_values [B, size], X [B, size, size])``
    with ``X[b, i, j]`` = weight of input ``i`` at ascending output position ``j``
    (fastsort's :func:`~fastsort.soft_permutation` transposed).

    ``steepness``, ``art_lambda`` and ``distribution`` are plain attributes read at every call,
    so annealing ``sorter.steepness`` works as in diffsort.  ``sorting_network`` is diffsort's
    description of the network (per layer ``split_a``, ``split_b``, ``combine_min``,
    ``combine_max``), built on first access; an assigned description must be one of fastsort's
    networks of this size (e.g. a float64 copy), which the forward then runs.

    Example:
        >>> from fastsort.compat import diffsort
        >>> sorter = diffsort.DiffSortNet("bitonic", 4, steepness=100.0)
        >>> values, X = sorter(torch.tensor([[3., 1., 4., 2.]]))
        >>> X.argmax(1)
        tensor([[1, 3, 0, 2]])
    """

    _owner = "diffsort.DiffSortNet"
    _kinds = SORTING_NETWORKS

    def __init__(
        self,
        sorting_network_type: str,
        size: int,
        device: str = "cpu",
        steepness: float = 10.0,
        art_lambda: float = 0.25,
        interpolation_type: Optional[str] = None,
        distribution: Optional[str] = "cauchy",
    ):
        super().__init__()
        self._init_options(sorting_network_type, size, device, steepness, art_lambda, interpolation_type,
                           distribution, warn=False)

    def forward(self, vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._run(vectors, self.size)
