"""Sorting and selection networks as integer tables.

A network is a list of layers; each layer is a set of disjoint comparators
``(lo, hi)`` with ``lo < hi`` (wire indices).  For every layer and every wire we
store

* ``partner[l, i]`` -- the wire that ``i`` is compared with in layer ``l``
  (``i`` itself when the wire passes through unchanged), and
* ``desc[l, i]``    -- whether the comparator is *descending* (bitonic blocks
  that route the minimum to the higher wire).

Both wires of a comparator compute the same mixing weight
``alpha = f(steepness * (x[hi] - x[lo]))`` and the update of a wire reads

    x_new[i] = w * x[i] + (1 - w) * x[partner[i]],   w = alpha  (ascending)
                                                     w = 1 - alpha (descending)

which is the comparator's ``new_min``/``new_max`` written from the point of
view of the receiving wire (docs/design.md, "Networks as tables").  The same table drives the torch backend and every
Triton kernel, for every network type.

Conventions (diffsort's): ascending wire order, wire ``n - 1`` ends up with the
largest value.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .._cache import device_constant
from .._validate import as_int

__all__ = [
    "NETWORK_KINDS",
    "NetworkTable",
    "bitonic_layers",
    "odd_even_layers",
    "splitter_selection_layers",
    "network_layers",
    "get_network",
    "sweep_init",
]

NETWORK_KINDS = ("odd_even", "bitonic", "splitter_selection")

# A layer: list of comparators (lo, hi, descending).
Layer = List[Tuple[int, int, bool]]


def odd_even_layers(n: int) -> List[Layer]:
    """Odd-even transposition network: ``n`` layers, layer ``l`` compares
    ``(i, i + 1)`` for ``i = l % 2, l % 2 + 2, ...``.  Every comparator is
    ascending; unpaired edge wires pass through."""
    return [[(i, i + 1, False) for i in range(l % 2, n - 1, 2)] for l in range(n)]


def bitonic_layers(n: int) -> List[Layer]:
    """Bitonic sorting network for any ``n``.

    The network is built for ``N = 2 ** ceil(log2 n)`` wires; the ``N - n``
    lowest wires are virtual.  A comparator between two real wires is kept
    (with its block direction), a comparator touching a virtual wire is the
    identity for the real wire (diffsort's construction).  Indices returned
    are real-wire indices ``0 .. n - 1``.
    """
    if n < 2:
        return []
    blocks = math.ceil(math.log2(n))
    N = 2 ** blocks
    off = N - n
    layers: List[Layer] = []
    for block in range(blocks):
        for sub in range(block + 1):
            half = 2 ** (block - sub)
            layer: Layer = []
            for start in range(0, N, 2 * half):
                for j in range(half):
                    lo, hi = start + j, start + j + half
                    if lo < off or hi < off:
                        continue  # touches a virtual wire: identity
                    descending = (lo // 2 ** (block + 1)) % 2 == 1
                    layer.append((lo - off, hi - off, descending))
            layers.append(layer)
    return layers


def _splitter_cascade(lanes: Sequence[int]) -> List[List[Tuple[int, int]]]:
    """Layers of a splitter cascade over ``lanes`` (a list of wire ids).

    Layer ``i`` compares lanes that are ``2 ** (L - i - 1)`` positions apart
    inside blocks of twice that size, ``L = ceil(log2(len(lanes)))``.  After
    the cascade, the lane at position ``j`` has at least ``2 ** popcount(j) - 1``
    lanes of the set that beat it.
    """
    count = len(lanes)
    if count < 2:
        return []
    depth = math.ceil(math.log2(count))
    cascade = []
    for i in range(depth):
        step = 2 ** (depth - i - 1)
        pairs = []
        for block in range(0, count, 2 * step):
            for j in range(block, min(block + step, count - step)):
                pairs.append((lanes[j], lanes[j + step]))
        cascade.append(pairs)
    return cascade


def splitter_selection_layers(n: int, k: int) -> List[Layer]:
    """Borgelt's splitter-selection network (difftopk's ``splitter_selection``).

    Each lane carries a lower bound on its rank ("minimum rank": how many lanes
    are known to beat it).  Repeatedly, for every rank ``r < k`` (from ``k - 1``
    down to the ranks not yet settled), the lanes whose minimum rank equals
    ``r`` are run through a splitter cascade, scheduled as early as the lanes
    allow; the lane at cascade position ``j`` gains ``2 ** popcount(j) - 1`` in
    minimum rank.  Lanes with minimum rank ``>= k`` drop out.  The search is
    built with the winner going to the low lane and then mirrored
    (``i -> n - 1 - i``) so that, as in diffsort, the ``k`` largest values end
    on the top wires ``n - k .. n - 1`` (in ascending order).
    """
    if not 1 <= k <= n:
        raise ValueError(f"splitter_selection needs 1 <= k <= n, got k={k}, n={n}")
    min_rank = [0] * n
    free_at = [0] * n  # first layer at which a lane may be used again
    layers: List[List[Tuple[int, int]]] = []
    settled = -1
    changed = True
    while changed:
        changed = False
        for rank in range(k - 1, settled, -1):
            group = [lane for lane in range(n) if min_rank[lane] == rank]
            if len(group) < 2:
                continue
            cascade = _splitter_cascade(group)
            start = max(free_at[lane] for lane in group)
            while len(layers) < start + len(cascade):
                layers.append([])
            for i, pairs in enumerate(cascade):
                layers[start + i].extend(pairs)
            for pos, lane in enumerate(group):
                min_rank[lane] += 2 ** bin(pos).count("1") - 1
                free_at[lane] = start + len(cascade)
            changed = True
        settled += 1
    return [[(n - 1 - b, n - 1 - a, False) for a, b in layer] for layer in layers]


def network_layers(kind: str, n: int, k: Optional[int] = None) -> List[Layer]:
    """The comparator layers of network ``kind`` for ``n`` wires."""
    if kind == "odd_even":
        return odd_even_layers(n)
    if kind == "bitonic":
        return bitonic_layers(n)
    if kind == "splitter_selection":
        if k is None:
            raise ValueError("splitter_selection is a top-k network: it needs k")
        return splitter_selection_layers(n, k)
    raise ValueError(f"unknown network kind {kind!r}; expected one of {NETWORK_KINDS}")


@dataclass(frozen=True)
class NetworkTable:
    """Integer tables of a network on one device.

    Attributes:
        kind, n, k: what was built (``k`` only for selection networks).
        partner: ``int32 [D, n]`` partner wire per layer (self = pass through),
            the form the Triton kernels read.
        index: the same as ``int64``, for ``torch.gather`` in the torch backend.
        desc: ``bool [D, n]`` comparator is descending.
        lanes: ``int32 [D, n]`` ``partner | desc << 16``: both in one table, what
            the Triton kernels read (one pointer argument fewer per launch).
    """

    kind: str
    n: int
    k: Optional[int]
    partner: torch.Tensor
    index: torch.Tensor
    desc: torch.Tensor
    lanes: torch.Tensor

    @property
    def depth(self) -> int:
        return int(self.partner.shape[0])


@functools.lru_cache(maxsize=256)
def _build_cpu(kind: str, n: int, k: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    return _build_tables(network_layers(kind, n, k), n)


def _build_tables(layers, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    depth = max(len(layers), 1)
    partner = torch.arange(n, dtype=torch.int32).repeat(depth, 1)
    desc = torch.zeros(depth, n, dtype=torch.bool)
    for l, layer in enumerate(layers):
        for lo, hi, d in layer:
            partner[l, lo], partner[l, hi] = hi, lo
            desc[l, lo] = desc[l, hi] = d
    return partner, desc


@functools.lru_cache(maxsize=256)
def network_depth(kind: str, n: int, k: Optional[int] = None) -> int:
    """``D``, the number of layers of :func:`get_network`'s table, without building tensors (what the
    custom ops' fake implementations need: a table built under a fake mode must not be cached)."""
    return max(len(network_layers(kind, n, k if kind == "splitter_selection" else None)), 1)


_DEVICE_CACHE: Dict[Tuple[str, int, Optional[int], str], NetworkTable] = {}


def get_network(kind: str, n: int, device="cpu", k: Optional[int] = None) -> NetworkTable:
    """Build (once) and cache the table of network ``kind`` on ``device``.

    Args:
        kind: ``"odd_even"``, ``"bitonic"`` or ``"splitter_selection"``.
        n: number of wires (an int >= 1; bitonic pads to a power of two internally).
        device: where the table's tensors live.
        k: only for ``splitter_selection`` (1 <= k <= n: the network places the top k); the other
            networks sort fully, whatever ``k``.

    Returns:
        A :class:`NetworkTable`: ``partner [D, n]`` (the wire each wire is compared with in each of
        the ``D`` layers; itself = pass through) and ``desc [D, n]``.  A network with no comparator
        (``n == 1``) has one pass-through layer so that every consumer sees ``D >= 1``.

    Example::

        >>> t = fastsort.get_network("bitonic", 4)
        >>> t.depth, t.partner.tolist()
        (3, [[1, 0, 3, 2], [2, 3, 0, 1], [1, 0, 3, 2]])
    """
    n = as_int(n, "n")  # an int (a shape's SymInt while torch.compile traces)
    if n < 1:
        raise ValueError(f"n must be an int >= 1 (the number of wires), got {n!r}")
    if kind != "splitter_selection":
        k = None
    else:
        k = None if k is None else as_int(k, "k")
        if k is None or not 1 <= k <= n:
            raise ValueError(f"splitter_selection needs an int k with 1 <= k <= n = {n}, got k={k!r}")
    device = torch.device(device)

    def build():
        # while torch.compile traces, the CPU tables may be fake tensors: not from the lru_cache either
        compiling = torch.compiler.is_compiling()
        partner, desc = _build_tables(network_layers(kind, n, k), n) if compiling else _build_cpu(kind, n, k)
        lanes = partner | (desc.to(torch.int32) << 16)  # n <= 2**16 for every kernel size
        return NetworkTable(kind, n, k, partner.to(device), partner.long().to(device), desc.to(device),
                            lanes.to(device))

    return device_constant(_DEVICE_CACHE, (kind, n, k, str(device)), build)


_INITS: Dict[tuple, torch.Tensor] = {}


def sweep_init(kind: str, n: int, k: int, dtype: torch.dtype, device, weights: Tuple[float, ...] = ()) -> torch.Tensor:
    """The block ``S^D [C, n]`` that the reverse sweep multiplies by ``X`` (built once, cached per device;
    docs/design.md, "The reverse sweep").

    * ``topk``: unit rows of the top ``k`` positions, the largest first (``[k, n]``);
    * ``ranks``: the positions ``1..n`` (``[1, n]``);
    * ``mask``: the indicator of the top ``k`` positions (``[1, n]``);
    * ``weights``: ``weights[r]`` at rank ``r + 1``, i.e. position ``n - 1 - r`` (``[1, n]``).
    """
    return device_constant(_INITS, (kind, n, k, weights, dtype, str(device)),
                           lambda: _sweep_init_block(kind, n, k, dtype, weights).to(device))


def _sweep_init_block(kind: str, n: int, k: int, dtype: torch.dtype, weights: Tuple[float, ...]) -> torch.Tensor:
    if kind == "topk":
        init = torch.zeros(k, n, dtype=dtype)
        init[torch.arange(k), n - 1 - torch.arange(k)] = 1
    elif kind == "ranks":
        init = torch.arange(1, n + 1, dtype=dtype).unsqueeze(0)
    elif kind == "mask":
        init = torch.zeros(1, n, dtype=dtype)
        init[:, n - k:] = 1
    elif kind == "weights":
        init = torch.zeros(1, n, dtype=dtype)
        init[0, n - len(weights):] = torch.tensor(weights[::-1], dtype=dtype)
    else:
        raise ValueError(f"unknown sweep block {kind!r}; expected topk, ranks, mask or weights")
    return init
