"""Drop-in replacement for ``torchsort`` (0.1.10): ``from fastsort.compat import torchsort``.

:func:`soft_rank` and :func:`soft_sort` take torchsort's arguments and return its
tensors -- the projections onto the permutahedron of Blondel et al. (ICML 2020),
with torchsort's conventions::

    torchsort.soft_rank(values, regularization="l2", regularization_strength=1.0)
    torchsort.soft_sort(values, regularization="l2", regularization_strength=1.0)

* ranks are ascending, in ``[1, n]``: 1 = the smallest value (ties share a rank);
* sorted values are ascending;
* ``regularization`` is ``"l2"`` or ``"kl"``; ``regularization_strength`` is the
  ``eps`` of the paper (``-> 0``: the hard sort and ranks).

They run on fastsort's method ``"permutahedron"`` (:mod:`fastsort.permutahedron`):
compiled CPU kernels (numba) for float32 CPU tensors, Triton kernels on CUDA, the
torch reference otherwise (float64 included), each with a hand-written backward.
Results agree with torchsort to float rounding; where they differ it is
torchsort's float32 rounding (``v - rho / eps`` of size ``n / eps`` cancelling in
its soft sort) and its kl gradients, which overflow to NaN once ``x / eps``
exceeds ~88 in float32 (torchsort issue #63; finite here).

What torchsort rejects and this module accepts, without changing any result
torchsort gives:

* tensors of any number of dimensions >= 1: sorted along the last dim, the
  leading dims are a batch (torchsort takes 2-D ``[batch, n]`` only);
* float16 and bfloat16 (computed in float32, returned in the input dtype).

Invalid arguments raise ``ValueError`` (an unknown ``regularization``, as
torchsort; a ``regularization_strength`` that is not a finite number > 0, which
torchsort does not check) or ``TypeError`` (a non-tensor or non-floating input).
"""
from __future__ import annotations

import torch

from .. import functional
from ..permutahedron import REGULARIZATIONS

__all__ = ["soft_rank", "soft_sort"]


def _apply(op, values, regularization, regularization_strength) -> torch.Tensor:
    """torchsort's checks and messages, then fastsort's op along the last dim."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() == 0:
        raise ValueError("values must have at least one dimension (torchsort takes [batch, n]), got a scalar")
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"'regularization' should be a 'l2' or 'kl', got {regularization!r}")
    if values.shape[-1] == 0:
        return values.clone()
    return op(values, "permutahedron", regularization=regularization, regularization_strength=regularization_strength)


def soft_rank(values, regularization="l2", regularization_strength=1.0):
    """Soft ranks along the last dim, ascending in ``[1, n]`` (torchsort's ``soft_rank``)."""
    return _apply(functional.soft_rank, values, regularization, regularization_strength)


def soft_sort(values, regularization="l2", regularization_strength=1.0):
    """Soft sorted values along the last dim, ascending (torchsort's ``soft_sort``)."""
    return _apply(functional.soft_sort, values, regularization, regularization_strength)
