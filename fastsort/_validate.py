"""Argument checks shared by every public entry point (the native API and the compatibility layer).

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
    if type(value) is int:  # (the common case; a bool's type is bool)
        return value
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an int, got a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}"
                        + (f" {value!r}" if isinstance(value, float) else "")) from None


def as_real(value, name: str) -> float:
    """``value`` as a Python float (ints and NumPy scalars included, bools not), or a ``TypeError``."""
    if type(value) is float:  # (the common case, without the ~1 us ABC check below)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def as_positive(value, name: str) -> float:
    """``value`` as a finite float > 0, or a ``TypeError`` / ``ValueError`` naming ``name``."""
    value = as_real(value, name)
    if not 0 < value < math.inf:  # NaN fails too; comparisons (not math.isinf) trace under torch.compile
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


# --------------------------------------------------------------------------- tensors
def check_input(x, name: str = "x") -> None:
    """``x`` must be a floating-point tensor with at least one dimension."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    check_dense(x, name)
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension to sort along, got a scalar")


def check_dense(x: torch.Tensor, name: str) -> None:
    """``x`` must be a dense (strided) tensor: the ops index its rows."""
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}; use {name}.to_dense()")


def check_k(k, n: int) -> int:
    """``k`` as an int with ``1 <= k <= n``."""
    k = as_int(k, "k")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n (the size of the sorted dim, {n}), got k={k}")
    return k


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_logits_labels(logits, labels, name: str = "n_classes", check_range: bool = True) -> None:
    """``logits [B, C]`` floating and ``labels [B]`` integer class indices in ``[0, C)`` on the same device
    (the losses' inputs; ``name``: how the caller's messages call ``C``; ``check_range=False``: the caller
    has checked the labels' range already)."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point torch.Tensor, got {getattr(logits, 'dtype', type(logits))}")
    check_dense(logits, "logits")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [batch, {name}], got shape {tuple(logits.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got "
                        f"{getattr(labels, 'dtype', type(labels))}; use labels.long()")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape [batch] = {tuple(logits.shape[:1])}, got {tuple(labels.shape)}")
    if labels.device != logits.device:  # the kernels would read a host address on the GPU
        raise ValueError(f"labels must be on the device of logits ({logits.device}), got {labels.device}")
    if check_range:
        check_label_range(labels, logits.shape[1], name)


def check_label_range(labels: torch.Tensor, n_classes: int, name: str = "n_classes") -> None:
    """Labels must lie in ``[0, n_classes)`` (``name``: how the caller's messages call ``n_classes``).
    Checked for CPU labels only: on CUDA the check needs the values on the host, a device sync in
    every training step, so the kernels and ops flag a bad label themselves there (NaN rows in the
    top-k loss).  Skipped while ``torch.compile`` traces."""
    if labels.device.type == "cpu" and labels.numel() and not torch.compiler.is_compiling():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"labels must be in [0, {name}) = [0, {n_classes}), got values in [{lo}, {hi}]")


# --------------------------------------------------------------------------- the losses' options
#: the losses' ``reduction`` values
REDUCTIONS = ("mean", "sum", "none")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """A per-row loss ``[B]`` reduced by ``mean``, ``sum`` or ``none``."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_p_k(p_k) -> list:
    """``p_k`` (probabilities of ``k = 1..K``) as a list of floats that sums to 1."""
    if isinstance(p_k, torch.Tensor):
        p_k = p_k.detach().cpu().tolist()
    try:
        p = [float(v) for v in p_k]
    except TypeError:
        raise TypeError(f"p_k must be a sequence of floats, got {type(p_k).__name__}") from None
    if len(p) == 0:
        raise ValueError("p_k must not be empty: give the probability of each k = 1..K, e.g. [0.5, 0, 0, 0, 0.5]")
    if any(not math.isfinite(v) or v < 0 for v in p):
        raise ValueError(f"p_k must contain finite, non-negative probabilities, got {p}")
    if abs(sum(p) - 1.0) > 1e-4:
        raise ValueError(f"p_k must sum to 1, got {p} which sums to {sum(p)}")
    return p


# --------------------------------------------------------------------------- counts
def as_positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (a count: a size, a number of classes, a ``k``), or a ``TypeError`` /
    ``ValueError`` naming ``name``."""
    value = as_int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value
