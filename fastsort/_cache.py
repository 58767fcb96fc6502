"""Small per-device constant tensors (network tables, sweep blocks, Sinkhorn targets), built once.

A training step then sends nothing from the host.  One rule for every such
cache: while ``torch.compile`` traces, the tensors built may be fake ones
(a fake mode is active), so they are built but never cached (a cached fake
tensor would be used by every later call; ``tests/test_compile.py``).
"""
from __future__ import annotations

from typing import Callable, Dict, Hashable, TypeVar

import torch

T = TypeVar("T")


def device_constant(store: Dict[Hashable, T], key: Hashable, build: Callable[[], T], limit: int = 4096) -> T:
    """``store[key]``, made by ``build()`` on a miss; at most ``limit`` entries are kept (callers
    key by configuration and device, so the bound only guards against misuse)."""
    if torch.compiler.is_compiling():
        return build()
    hit = store.get(key)
    if hit is None:
        hit = build()
        if len(store) < limit:
            store[key] = hit
    return hit
