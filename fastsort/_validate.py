"""Scalar argument checks shared by every public entry point.

Integers and real numbers are accepted in every form torch itself accepts
for such arguments: Python ``int``/``float``, NumPy scalars, and (for integers)
0-d integer tensors -- anything with ``__index__`` -- but never ``bool``, whose
``True`` would silently mean ``1``.
"""
from __future__ import annotations

import math
import numbers
import operator

import torch


def as_int(value, name: str) -> int:
    """``value`` as a Python int, or a ``TypeError`` naming ``name``."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an int, got a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}"
                        + (f" {value!r}" if isinstance(value, float) else "")) from None


def as_real(value, name: str) -> float:
    """``value`` as a Python float (ints and NumPy scalars included, bools not), or a ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def as_positive(value, name: str) -> float:
    """``value`` as a finite float > 0, or a ``TypeError`` / ``ValueError`` naming ``name``."""
    value = as_real(value, name)
    if not 0 < value < math.inf:  # NaN fails too; comparisons (not math.isinf) trace under torch.compile
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value
