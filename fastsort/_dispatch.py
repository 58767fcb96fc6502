"""Backend choice: Triton on CUDA (or on CPU under ``TRITON_INTERPRET=1``), torch otherwise.

Every public op calls :func:`resolve_backend` once, after validation, and then
runs the autograd Function of the chosen backend.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "torch", "triton")


def interpreter_enabled() -> bool:
    """True when Triton's interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return True


@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """True when ``import triton`` works (checked once, lazily: no import-time side effect).

    A constant for ``torch.compile``: Dynamo calls it once while tracing instead of
    tracing through the cached import check (which it warns about).
    """
    return _triton_imports()


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
        if x.is_cuda and triton_available():
            return "triton"
        return "torch"
    # backend == "triton"
    if not triton_available():
        raise ValueError("backend='triton' needs the `triton` package; install it or use backend='torch'")
    if x.is_cuda:
        return "triton"
    if x.device.type == "cpu" and interpreter_enabled():
        return "triton"
    raise ValueError(
        f"backend='triton' needs a CUDA tensor (got device {x.device}); on CPU it runs only under "
        "Triton's interpreter (set TRITON_INTERPRET=1 before importing triton), else use backend='torch'"
    )
