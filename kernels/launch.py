"""Launch heuristics and argument passing shared by every fastsort kernel.

The measurements behind these rules are in docs/design.md, "Kernel design and
the measurements behind it".

The rules below (rows per program, warps, column blocks) are used by every
launcher; what is specific to one kernel (the network sweeps' split of lines
over programs, the Sinkhorn register-tile limit, the fused loss's warp per
row) sits next to that launcher and is built from these.

A program owns a tile of ``rows x lanes`` elements held in registers.  On a GPU
we aim at ~4K elements per program (enough work per warp, no spills) but keep
at least ``MIN_PROGRAMS`` programs when there are rows enough: the network
kernels walk their layers one after the other, so a few long programs would
leave most SMs idle (B = 64 rows of n = 1024 run as 64 programs, not 16).
Under Triton's interpreter every program instance costs ~10 ms of Python, so
a program takes as many rows as fit in ~64K elements.

Tensor arguments travel as integer addresses
--------------------------------------------
Triton's launcher validates every tensor argument with a CUDA driver call,
which can cost more host time than a small kernel's GPU time.  So the launchers pass each tensor as its
address (:func:`address`, after :func:`aligned` made sure it is contiguous and
16-byte aligned) and the kernels turn it back into a typed pointer with
:func:`as_pointer`, which also tells the compiler about the alignment (vector
loads).  The launcher, not Triton, is then responsible for the device and the
lifetime of the tensors: every launcher keeps them in local variables until the
launch returns, and fastsort's dispatch only sends tensors of one device.

Which GPU a kernel runs on
--------------------------
Triton launches on the *current* CUDA device and its current stream, whatever
device the tensors live on.  Every launcher is therefore wrapped in
:func:`on_tensor_device`, which makes the device of its first tensor argument
current for the launch (a tensor on ``cuda:1`` while ``cuda:0`` is current would
otherwise be read through device 0's address space).
"""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from .._dispatch import interpreter_enabled

#: largest power-of-two row width the network kernels hold in registers
MAX_LANES = 8192
#: on a GPU, fewer rows per program rather than fewer than this many programs
MIN_PROGRAMS = 256
#: Triton element type of each torch dtype a kernel reads or writes
TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
             torch.float64: tl.float64}


#: whether ``@triton.jit`` made the kernels interpreted: Triton reads ``TRITON_INTERPRET`` when
#: the kernel modules are imported (with this one), so a later change of the variable changes nothing
_INTERPRETING = interpreter_enabled()


def interpreting() -> bool:
    """True when the kernels run in Triton's interpreter (the launch heuristics differ there)."""
    return _INTERPRETING


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (>= 1), in plain Python (cheaper on the host than
    ``triton.next_power_of_2``)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` in plain Python (cheaper on the host than ``triton.cdiv``)."""
    return -(-a // b)


def rows_per_program(n_rows: int, lanes: int, target: int | None = None) -> int:
    """Rows per program (a power of two) for tiles of ``lanes`` elements per row."""
    if target is None:
        target = 65536 if interpreting() else 4096
    rows = max(1, min(target // max(lanes, 1), next_pow2(n_rows)))
    if not interpreting():
        rows = max(1, min(rows, n_rows // MIN_PROGRAMS))
    return 1 << (rows.bit_length() - 1)  # round down to a power of two


def column_block(n_cols: int) -> int:
    """Columns a program reads per step when it loops over a long row (a power of two)."""
    return min(next_pow2(n_cols), 4096 if interpreting() else 1024)


def num_warps(tile_elems: int, per_thread: int = 16, programs: int | None = None,
              max_per_thread: int = 16) -> int:
    """Warps for a tile: ``per_thread`` elements per thread (1 warp per 512 by default), 1 to 16
    warps -- or up to 32 when 16 would put more than ``max_per_thread`` elements on a thread.

    With a grid of ``programs`` smaller than ``MIN_PROGRAMS`` most SMs idle anyway and each
    program's time is the latency of its chain of dependent steps (a network's layers, each
    behind a barrier): the tile is then spread over 4x more warps (down to 2 elements per
    thread), which cuts the per-thread work of every step.  ``max_per_thread`` bounds the
    registers (the network backward at n = 8192 would spill with 16 warps).
    """
    if interpreting():
        return 1
    if programs is not None and programs < MIN_PROGRAMS:
        per_thread = max(2, per_thread // 4)
    w = max(1, min(16, tile_elems // (32 * per_thread)))
    w = min(32, max(w, tile_elems // (32 * max_per_thread)))
    return 1 << (w.bit_length() - 1)


def device_guard(device: torch.device):
    """A context making ``device`` the current CUDA device; a no-op for CPU tensors (the interpreter)
    and when it already is current (the common case: no device switch on the hot path)."""
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device.index)


def _first_device(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, (tuple, list)):
            for t in a:
                if isinstance(t, torch.Tensor):
                    return t.device
    raise TypeError("fastsort internal error: a kernel launcher was called without a tensor argument")


def on_tensor_device(launcher):
    """Decorator for kernel launchers: run them with the device of their first tensor argument
    (searched in the positional arguments, one level into tuples) as the current CUDA device."""
    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        with device_guard(_first_device(args)):
            return launcher(*args, **kwargs)

    return wrapper


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and 16-byte aligned (a copy only when it is not)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def address(t: torch.Tensor) -> int:
    """The address of a contiguous, 16-byte aligned tensor, for an integer kernel argument."""
    a = t.data_ptr()
    if a % 16:
        raise ValueError("fastsort internal error: kernel tensors must be 16-byte aligned (use aligned())")
    return a


@triton.jit
def as_pointer(addr, DTYPE: tl.constexpr):
    """The ``DTYPE`` pointer at ``addr`` (an :func:`address`): 16-byte aligned.

    The JIT types a small integer (``0`` for an empty, unused tensor) as ``i32``,
    which ``int_to_ptr`` rejects when compiling for a GPU: widen to 64 bits first.
    """
    return tl.multiple_of(addr.to(tl.int64).to(tl.pointer_type(DTYPE)), 16)
