"""``difftopk.difftopk``: the module :class:`DiffTopkNet`."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._common import (NetworkModule, compat_errors, description_to_torch, sparse_description,
                       sparsify_description)
from ..._validate import check_k

__all__ = ["DiffTopkNet", "TOPK_NETWORKS"]

#: Network types of :class:`DiffTopkNet`.
TOPK_NETWORKS = ("bitonic", "odd_even", "splitter_selection")


class DiffTopkNet(NetworkModule):
    """Top-k columns of a relaxed sorting / selection network; same as ``difftopk.DiffTopkNet``.

    Args:
        sorting_network_type: ``'bitonic'``, ``'odd_even'`` or ``'splitter_selection'``
            (Borgelt's selection network; difftopk only has it with ``sparse=True``,
            here it works with either).
        size: ``n``, the number of elements per row.
        k: the number of top positions, ``1 <= k <= n``.
        sparse: the format of ``sorting_network`` (difftopk's sparse layers); the numbers are
            the same either way (difftopk's sparse path needs ``torch_sparse``, this one does not).
        device: accepted for compatibility; the forward is device-agnostic.
        steepness, art_lambda, distribution: the relaxed comparator (see
            :class:`fastsort.compat.diffsort.DiffSortNet`); read at every call.
        interpolation_type: deprecated alias of ``distribution`` (warns, with the reference's conflict check).

    ``forward(vectors [B, size])`` returns ``(None, X_topk [B, size, k])``:
    ``X_topk[b, i, j]`` is the weight of input ``i`` at ascending output
    position ``size - k + j`` (column ``-1`` = the largest).  Cost ``O(n k D)``.
    ``k`` is read at every call as well (the selection network stays the one built for the
    constructor's ``k``, as in difftopk); ``sorting_network`` is difftopk's description
    (sparse format with ``sparse=True``), built on first access.

    Example:
        >>> from fastsort.compat import difftopk
        >>> net = difftopk.DiffTopkNet("bitonic", 5, k=2, steepness=100.0)
        >>> _, P = net(torch.tensor([[1., 8., -1., 9., 5.]]))
        >>> P.shape, P.argmax(1)
        (torch.Size([1, 5, 2]), tensor([[1, 3]]))
    """

    _owner = "DiffTopkNet"
    _kinds = TOPK_NETWORKS

    def __init__(self, sorting_network_type: str, size: int, k: int, sparse: bool = False, device: str = "cpu",
                 steepness: float = 10.0, art_lambda: float = 0.25, interpolation_type: Optional[str] = None,
                 distribution: Optional[str] = "cauchy"):  # difftopk's signature
        super().__init__()
        self._init_options(sorting_network_type, size, device, steepness, art_lambda, interpolation_type,
                           distribution, warn=True)
        with compat_errors():
            self.k = check_k(k, self.size)
        self.sparse = bool(sparse)

    def _default_network(self):
        kind = self.sorting_network_type
        return kind, (self.k if kind == "splitter_selection" else None)

    def _build_description(self):
        if not self.sparse:
            return super()._build_description()
        kind, k = self._default_network()
        return sparsify_description(description_to_torch(sparse_description(kind, self.size, k), self.device))

    def forward(self, vectors: torch.Tensor) -> Tuple[None, torch.Tensor]:
        with compat_errors():
            k = check_k(self.k, self.size)
        return None, self._run(vectors, k)[1]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.k}, sparse={self.sparse}"
