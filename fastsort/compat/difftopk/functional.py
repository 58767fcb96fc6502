"""``difftopk.functional``: :func:`topk` on a network description."""
from __future__ import annotations

from typing import List, Tuple

import torch

from .._common import check_vectors, compat_errors, missing_attribute, network_kind, run_network
from ..._validate import check_k
from .difftopk import TOPK_NETWORKS

__all__ = ["topk", "execute_topk", "execute_sparse_topk", "SPARSE_INSTALLED", "SORTING_NETWORK_TYPE"]

SORTING_NETWORK_TYPE = List[torch.Tensor]

#: difftopk's flag for ``torch_sparse``; the sparse format needs nothing extra here.
SPARSE_INSTALLED = True


def topk(
    sorting_network: SORTING_NETWORK_TYPE,
    vectors: torch.Tensor,
    k: int,
    steepness: float = 10.0,
    art_lambda: float = 0.25,
    distribution: str = "cauchy",
    sparse: bool = False,
) -> Tuple[None, torch.Tensor]:
    """Top-``k`` columns ``(None, X_topk [B, n, k])`` of a network description; same as ``difftopk.topk``.

    ``sorting_network`` is a description as :func:`~fastsort.compat.difftopk.get_sorting_network`
    (or difftopk's own) builds it, dense or sparse (the format is recognised, so ``sparse`` is
    accepted for compatibility only); it must be fastsort's ``bitonic``, ``odd_even`` or
    ``splitter_selection`` (built for this ``k``) network for ``n`` wires, in any dtype and on
    any device.
    """
    check_vectors(vectors, None)
    n = vectors.shape[1]
    with compat_errors():
        k = check_k(k, n)
    kind, net_k = network_kind(sorting_network, n, TOPK_NETWORKS, k)
    return None, run_network(vectors, kind, k, steepness, art_lambda, distribution, net_k)[1]


def execute_topk(sorting_network, vectors, k, steepness: float = 10.0, art_lambda: float = 0.25,
                 distribution: str = "cauchy") -> Tuple[None, torch.Tensor]:
    """difftopk's unchecked dense variant of :func:`topk`; the same computation here."""
    return topk(sorting_network, vectors, k, steepness, art_lambda, distribution)


def execute_sparse_topk(sorting_network, vectors, k, steepness: float = 10.0, art_lambda: float = 0.25,
                        distribution: str = "cauchy") -> Tuple[None, torch.Tensor]:
    """difftopk's ``torch_sparse`` variant of :func:`topk`; the same computation here."""
    return topk(sorting_network, vectors, k, steepness, art_lambda, distribution, sparse=True)


def __getattr__(name):
    raise missing_attribute(__name__, name)
