"""Tensors' memory as numba arrays, from their addresses: the CPU launchers' cheap argument passing.

A launcher that hands a compiled kernel ``tensor.numpy()`` pays ~1.2 us per tensor for the numpy
view and ~0.5 us more in numba's dispatch typing it; a kernel of a few tens of microseconds with
five or six tensor arguments (the permutahedron's, at ``[1, 5000]``) then spends a sixth of its
launch there.  Passing ``tensor.data_ptr()`` (an integer, ~0.1 us) instead, the kernel rebuilds the
array inside compiled code, where that is free::

    @numba.njit
    def kernel(x_addr, R, n):
        x = rows(x_addr, R, n, numba.float32)   # float32 [R, n], C-contiguous, over the tensor's memory

Contract of the launcher: the tensor is contiguous, of that dtype and shape, alive for the whole
call (a local variable of the launcher is), and on the CPU.  A tensor with no elements may pass
address 0 with a zero dim: the array is never read.  Numba's public extension API only
(:func:`numba.extending.intrinsic`, llvmlite's ``inttoptr``); importing this module imports numba.
"""
from __future__ import annotations

import numba
from numba import types
from numba.extending import intrinsic

__all__ = ["rows"]


@intrinsic
def _pointer(typingctx, address, dtype):
    """``address`` (an integer) as a typed pointer ``dtype*`` (``dtype``: a numba scalar type)."""
    pointee = dtype.dtype if isinstance(dtype, types.NumberClass) else dtype
    sig = types.CPointer(pointee)(address, dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(pointee)))

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def rows(address, R, n, dtype):
    """The ``[R, n]`` C-contiguous array of ``dtype`` at ``address`` (see the module docstring)."""
    return numba.carray(_pointer(address, dtype), (R, n))

