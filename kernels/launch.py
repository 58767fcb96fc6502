"""Launch heuristics for every fastsort kernel, in one place.

A program owns a tile of ``rows x lanes`` elements held in registers.  On a GPU
we aim at ~4K elements per program (enough work per warp, no spills); under
Triton's interpreter every program instance costs ~10 ms of Python, so a
program takes as many rows as fit in ~64K elements.
"""
from __future__ import annotations

import os

import triton

#: largest power-of-two row width the network kernels hold in registers
MAX_LANES = 8192


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def rows_per_program(n_rows: int, lanes: int, target: int | None = None) -> int:
    """Rows per program (a power of two) for tiles of ``lanes`` elements per row."""
    if target is None:
        target = 65536 if interpreting() else 4096
    rows = max(1, min(target // max(lanes, 1), next_pow2(n_rows)))
    return 1 << (rows.bit_length() - 1)  # round down to a power of two


def num_warps(tile_elems: int) -> int:
    """Warps for a tile: 1 warp per 512 elements, between 1 and 16."""
    if interpreting():
        return 1
    w = max(1, min(16, tile_elems // 512))
    return 1 << (w.bit_length() - 1)
