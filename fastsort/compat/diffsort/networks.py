"""``diffsort.networks``: diffsort's network descriptions, written from fastsort's tables.

Each layer is ``(split_a [C, n], split_b [C, n], combine_min [n, C], combine_max [n, C])``:
row ``c`` of a comparator ``(lo, hi)`` has ``split_a[c, lo] = split_b[c, hi] = 1`` and sends
the minimum to ``lo`` (``combine_min[lo, c] = 1``) and the maximum to ``hi`` (swapped for a
descending bitonic comparator); a wire without a comparator in the layer has a row that keeps
it (``split_a = split_b = e_w``, ``combine_min = combine_max = 0.5 e_w``).  Rows come in
diffsort's order, so the arrays equal diffsort's.
"""
from __future__ import annotations

from typing import List

from .._common import UnsupportedOptionError, dense_description, description_to_torch

__all__ = ["bitonic_network", "odd_even_network", "get_sorting_network"]


def bitonic_network(n: int) -> List[tuple]:
    """The bitonic network for ``n`` wires (padded with virtual wires to a power of two), one tuple of
    numpy float64 arrays per layer; same as ``diffsort.networks.bitonic_network``."""
    return dense_description("bitonic", n)


def odd_even_network(n: int) -> List[tuple]:
    """The odd-even transposition network for ``n`` wires (``n`` layers), one tuple of numpy float64
    arrays per layer; same as ``diffsort.networks.odd_even_network``."""
    return dense_description("odd_even", n)


def get_sorting_network(type: str, n: int, device) -> List[List]:
    """``'bitonic'`` or ``'odd_even'`` network for ``n`` wires as float32 tensors on ``device``;
    same as ``diffsort.get_sorting_network``."""
    if type == "bitonic":
        return description_to_torch(bitonic_network(n), device)
    if type == "odd_even":
        return description_to_torch(odd_even_network(n), device)
    raise UnsupportedOptionError(f"Sorting network `{type}` unknown: use 'bitonic' or 'odd_even'")
