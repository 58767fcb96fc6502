"""``difftopk.networks``: difftopk's network descriptions, written from fastsort's tables.

The dense format is diffsort's (see :mod:`fastsort.compat.diffsort.networks`).  A sparse
layer adds four index arrays: ``alpha_idxs`` and ``one_minus_alpha_idxs`` (two ``[row, col]``
pairs per comparator: where its ``alpha`` and ``1 - alpha`` go in the layer's permutation
matrix), ``remain_idxs`` (``[w, w]`` per kept wire) and ``alpha_mask`` (the comparators' rows);
:func:`get_sparse_net` stores the four matrices transposed as sparse COO tensors.
"""
from __future__ import annotations

from typing import List, Optional

from .._common import UnsupportedOptionError, description_to_torch, sparse_description, sparsify_description
from ..diffsort.networks import bitonic_network, odd_even_network

__all__ = ["sparse_bitonic_network", "sparse_splitter_selection_network", "get_sparse_net", "get_sorting_network"]


def sparse_bitonic_network(n: int) -> List[tuple]:
    """The bitonic network for ``n`` wires in difftopk's sparse format (numpy arrays per layer);
    same as ``difftopk.networks.sparse_bitonic_network``."""
    return sparse_description("bitonic", n)


def sparse_splitter_selection_network(n: int, k: int) -> List[tuple]:
    """Borgelt's splitter-selection network placing the ``k`` largest of ``n`` on the top wires, in
    difftopk's sparse format; same as ``difftopk.networks.sparse_splitter_selection_network``
    (without its print)."""
    return sparse_description("splitter_selection", n, k)


def get_sparse_net(net) -> List[list]:
    """The layers of a sparse description (as tensors) with the four matrices transposed and stored
    as sparse COO tensors; same as ``difftopk.networks.get_sparse_net``."""
    return sparsify_description(net)


def get_sorting_network(type: str, n: int, device, k: Optional[int] = None) -> List[list]:
    """A network description as float32 tensors on ``device``; same as ``difftopk.get_sorting_network``.

    ``type``: ``'bitonic'``, ``'odd_even'`` (dense), ``'sparse_bitonic'`` or
    ``'sparse_splitter_selection'`` (sparse, the latter for ``k``).
    """
    if type == "bitonic":
        return description_to_torch(bitonic_network(n), device)
    if type == "odd_even":
        return description_to_torch(odd_even_network(n), device)
    if type == "sparse_bitonic":
        return get_sparse_net(description_to_torch(sparse_bitonic_network(n), device))
    if type == "sparse_splitter_selection":
        return get_sparse_net(description_to_torch(sparse_splitter_selection_network(n, k), device))
    raise UnsupportedOptionError(f"Sorting network `{type}` unknown: use 'bitonic', 'odd_even', 'sparse_bitonic' "
                                 f"or 'sparse_splitter_selection'")
