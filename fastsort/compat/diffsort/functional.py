"""``diffsort.functional``: :func:`sort` on a network description."""
from __future__ import annotations

from typing import List, Tuple

import torch

from .._common import check_vectors, missing_attribute, network_kind, run_network
from .diffsort import SORTING_NETWORKS

__all__ = ["sort", "execute_sort", "SORTING_NETWORK_TYPE"]

SORTING_NETWORK_TYPE = List[torch.Tensor]


def sort(
    sorting_network: SORTING_NETWORK_TYPE,
    vectors: torch.Tensor,
    steepness: float = 10.0,
    art_lambda: float = 0.25,
    distribution: str = "cauchy",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relaxed sort of ``vectors [B, n]`` by the network ``sorting_network``; same as ``diffsort.sort``.

    ``sorting_network`` is a description as :func:`~fastsort.compat.diffsort.get_sorting_network`
    (or diffsort's own) builds it; it must be fastsort's ``bitonic`` or ``odd_even`` network for
    ``n`` wires, in any dtype and on any device (diffsort asserts the device of the vectors; here
    the network runs from fastsort's tables wherever the vectors are).  Returns
    ``(sorted_values [B, n], X [B, n, n])`` as :class:`~fastsort.compat.diffsort.DiffSortNet`.
    """
    check_vectors(vectors, None)
    n = vectors.shape[1]
    kind, _ = network_kind(sorting_network, n, SORTING_NETWORKS)
    return run_network(vectors, kind, n, steepness, art_lambda, distribution)


#: diffsort's unchecked variant of :func:`sort`; the same function here.
execute_sort = sort


def __getattr__(name):
    raise missing_attribute(__name__, name)
