"""Backend choice (docs/design.md, "Backends and dispatch").

``auto`` runs a method's Triton kernels on CUDA tensors (and, under
``TRITON_INTERPRET=1``, Triton's interpreter on CPU tensors when asked for
explicitly), its compiled CPU kernels (numba) on CPU tensors, and the torch
reference otherwise.  Every public op calls :func:`choose_backend` once, after
validation, and passes the result to the method.
"""
from __future__ import annotations

import functools
import math
import os
import re
import warnings
from typing import Optional, Tuple

import numpy as np
import torch

BACKENDS = ("auto", "torch", "triton", "numba")


def interpreter_enabled() -> bool:
    """True when Triton's interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: oldest triton the kernels are checked with: ``tl.gather`` arrived in 3.3, and 3.3's compiler
#: rejects the Sinkhorn forward's per-tile iteration-domain branch (AOT-compiled with 3.3.1 .. 3.9.0)
MIN_TRITON = (3, 4)


def _major_minor(version: str) -> Optional[Tuple[int, int]]:
    """``(major, minor)`` of a version string such as ``"3.7.1+git..."``, None when it has none."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def triton_version_problem(version: str) -> Optional[str]:
    """Why triton ``version`` cannot run fastsort's kernels, or None when it can."""
    parsed = _major_minor(version)
    if parsed is None or parsed < MIN_TRITON:
        return (f"fastsort's Triton kernels need triton >= {MIN_TRITON[0]}.{MIN_TRITON[1]}, found {version} "
                "(torch >= 2.8 ships one)")
    return None


def interpreter_version_problem(triton_version: str, numpy_version: str) -> Optional[str]:
    """Why Triton's interpreter (``TRITON_INTERPRET=1``) of ``triton_version`` cannot run the kernels
    next to ``numpy_version``, or None when it can.

    Interpreters before triton 3.7 turn a scalar kernel argument into a Python int with
    ``int(array)`` on a one-element 1-D array (``range(D)`` in every kernel), which numpy 2.4
    made an error; triton 3.7 squeezes the array first.
    """
    t, n = _major_minor(triton_version), _major_minor(numpy_version)
    if t is not None and n is not None and t < (3, 7) and n >= (2, 4):
        return (f"Triton's interpreter in triton {triton_version} cannot run with numpy {numpy_version} "
                "(it converts 1-element arrays to ints, an error since numpy 2.4): install "
                "numpy<2.4 or triton>=3.7")
    return None


@functools.lru_cache(maxsize=None)
def _triton_status() -> Optional[str]:
    """None when the kernels can run here, else why not (checked once, lazily): the triton
    version, and under ``TRITON_INTERPRET=1`` (where every kernel runs in Triton's interpreter,
    CUDA tensors included) whether that interpreter works with the installed numpy."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the platform
        return f"the `triton` package does not import ({type(e).__name__}: {e})"
    problem = triton_version_problem(triton.__version__)
    if problem is None and interpreter_enabled():
        try:
            import numpy
        except ImportError:
            return "Triton's interpreter (TRITON_INTERPRET=1) needs numpy: pip install numpy"
        problem = interpreter_version_problem(triton.__version__, numpy.__version__)
    return problem


@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """True when a triton that runs the kernels imports (no import-time side effect).

    A constant for ``torch.compile``: Dynamo calls it once while tracing instead of
    tracing through the cached import check (which it warns about).
    """
    return _triton_status() is None


def resolve_backend(x: torch.Tensor, backend: str) -> str:
    """Return ``"torch"`` or ``"triton"`` for input ``x``.

    ``auto`` picks Triton for CUDA tensors when Triton imports, torch otherwise.
    ``triton`` on a CPU tensor is only allowed under ``TRITON_INTERPRET=1``
    (the test mode of the kernels); anything else raises a ``ValueError``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if x.is_cuda and _auto_picks_triton() else "torch"
    # backend == "triton"
    if not triton_available():
        raise ValueError(f"backend='triton' is not available: {_triton_status()}; use backend='torch'")
    if x.is_cuda:
        return "triton"
    if x.device.type == "cpu" and interpreter_enabled():
        return "triton"
    raise ValueError(
        f"backend='triton' needs a CUDA tensor (got device {x.device}); on CPU it runs only under "
        "Triton's interpreter (set TRITON_INTERPRET=1 before importing triton), else use backend='torch'"
    )


@torch.compiler.assume_constant_result
def _auto_picks_triton() -> bool:
    """``auto``'s choice for CUDA tensors (a constant for ``torch.compile``)."""
    return _auto_picks_triton_once()


@functools.lru_cache(maxsize=None)
def _auto_picks_triton_once() -> bool:
    if triton_available():
        return True
    # once per process: a silent slowdown would be worse
    warnings.warn(f"fastsort: {_triton_status()}; CUDA tensors use the (slower) torch backend", RuntimeWarning,
                  stacklevel=2)
    return False


@functools.lru_cache(maxsize=None)
def _numba_status() -> Optional[str]:
    """None when numba (the CPU kernels' compiler) imports, else why not (checked once, lazily)."""
    try:
        import numba  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the platform
        return f"numba does not import ({type(e).__name__}: {e})"
    return None


@functools.lru_cache(maxsize=None)
def _auto_picks_numba() -> bool:
    if _numba_status() is None:
        return True
    warnings.warn(f"fastsort: {_numba_status()}; CPU tensors use the (slower) torch backend; "
                  "pip install numba to get the compiled CPU kernels", RuntimeWarning, stacklevel=2)
    return False


def finite_on_host(x: torch.Tensor) -> bool:
    """Whether ``x`` is a CPU tensor outside ``torch.compile`` that holds no infinity and no NaN: the
    test that lets an op skip its special-value handling.  Decided on the host, where that costs no
    device sync (on a GPU it would cost one per call, and under compile a graph break): a finite sum
    means no ``inf`` and no NaN (one reduction, ~15x cheaper than ``isinf(x).any()``, which allocates
    a mask); a sum that is not finite (an infinity, a NaN, or finite values overflowing it) falls
    back to the exact check.  False whenever it cannot tell cheaply."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if x.dtype in (torch.float32, torch.float64) and not x.is_neg() and not x.is_conj():
        # numpy's reduction, on this thread: torch's would wake its OpenMP workers on large inputs, and
        # they keep spinning for milliseconds afterwards, taking the cores from the numba kernel launched
        # next (measured: a [256, 1000] soft rank's forward 6.3 ms after a torch sum, 3.2 ms after numpy's)
        a = x.detach().numpy()
        return bool(math.isfinite(a.sum()) or np.isfinite(a).all())
    if math.isfinite(x.detach().sum().item()):
        return True
    return bool(torch.isfinite(x).all())


def choose_backend(x: torch.Tensor, backend: str, kernels: Tuple[str, ...] = ("triton",),
                   n: Optional[int] = None) -> str:
    """The backend a method with kernels for ``kernels`` runs ``x`` on: ``"torch"``, ``"triton"`` or ``"numba"``.

    :func:`resolve_backend` for the Triton choice, except that float64 always runs on the torch
    path (the kernels compute in float32; float64 is for references and gradcheck), and that
    ``auto`` runs rows longer than the Triton kernels hold in registers (``n > 8192``; ``n``: the
    row length the kernels will see, default ``x``'s last dim) on the torch path too (an explicit
    ``backend="triton"`` raises for them instead).  ``auto`` picks the CPU kernels for float32 CPU
    tensors of a method that has them when numba imports (with a one-time warning when it does
    not); ``backend="numba"`` asks for them explicitly.
    """
    if backend == "numba":
        if "numba" not in kernels:
            raise ValueError("backend='numba': this method has no compiled CPU kernels; use backend='auto' or 'torch'")
        if x.device.type != "cpu":
            raise ValueError(f"backend='numba' runs on CPU tensors, got device {x.device}; use backend='auto'")
        if _numba_status() is not None:
            raise ValueError(f"backend='numba' is not available: {_numba_status()}; use backend='torch'")
        return "torch" if x.dtype == torch.float64 else "numba"
    be = resolve_backend(x, backend)
    if x.dtype == torch.float64:
        return "torch"
    if backend == "auto":
        if be == "triton":
            from .kernels.launch import MAX_LANES

            if "triton" not in kernels or (x.shape[-1] if n is None else n) > MAX_LANES:
                return "torch"
        elif x.device.type == "cpu" and "numba" in kernels and _auto_picks_numba():
            return "numba"
    return be
