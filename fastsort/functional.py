"""Public functional API: ``soft_sort``, ``soft_topk``, ``soft_rank``, ``soft_permutation``, ``soft_topk_mask``.

Data path of every op (docs/design.md, "Backends and dispatch"): validation ->
move ``dim`` last and flatten to ``[R, n]`` in the compute dtype (float32 for
fp16/bf16/fp32, float64 kept) -> the method from :data:`fastsort.METHODS` and
its parameters -> backend choice -> the method's op -> back to the caller's
shape and dtype.

Conventions (docs/design.md, "Conventions and layouts"): sorting is ascending
along ``dim``; the relaxed permutation matrix has row ``j`` = output position
``j`` (ascending) and columns = inputs, so ``soft_sort(x) == soft_permutation(x) @ x``;
``soft_topk`` returns the rows of the ``k`` largest positions, the largest first.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from ._dispatch import choose_backend
from ._validate import as_int, check_input, check_k, compute_dtype
from .method import Method
from .registry import METHODS

__all__ = ["soft_sort", "soft_topk", "soft_rank", "soft_permutation", "soft_topk_mask"]


def _flatten(x: torch.Tensor, dim: int) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    dim = as_int(dim, "dim")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for a tensor with {x.dim()} dimensions")
    xm = x.movedim(dim, -1)
    n = xm.shape[-1]
    if n == 0:
        raise ValueError(f"x has 0 elements along dim={dim}; there is nothing to sort")
    lead = tuple(xm.shape[:-1])
    return xm.reshape(-1, n).to(compute_dtype(x.dtype)), lead


def _start(x, method: str, op: str, dim, backend: str, params) -> Tuple[Method, Dict[str, Any], torch.Tensor,
                                                                          Tuple[int, ...], str]:
    """Validate, flatten, look the method up and choose the backend: ``(method, p, rows, lead, backend)``."""
    check_input(x)
    m = METHODS.lookup(method, op)
    p = m.parse(params)
    x2, lead = _flatten(x, dim)
    return m, p, x2, lead, choose_backend(x2, backend, m.kernels, m.kernel_row_length(x2.shape[-1]))


def _restore(y: torch.Tensor, lead: Tuple[int, ...], dim: int, like: torch.Tensor) -> torch.Tensor:
    """Rows ``[R, n]`` back to the caller's layout (``dim`` where it was) and dtype."""
    return y.reshape(lead + (y.shape[-1],)).movedim(-1, dim).to(like.dtype)


# --------------------------------------------------------------------------- public ops
def soft_sort(x: torch.Tensor, method: str = "bitonic", *, dim: int = -1, descending: bool = False,
              backend: str = "auto", **params) -> torch.Tensor:
    """Relaxed sorted values of ``x`` along ``dim``.

    Args:
        x: ``[..., n, ...]`` floating tensor (fp16/bf16 computed in float32).
        method: a key of :data:`fastsort.METHODS` that supports sorting: ``"bitonic"`` (default),
            ``"odd_even"``, ``"neuralsort"``, ``"softsort"``, ``"sinkhorn"``.
        dim: the dim to sort along.
        descending: largest first instead of ascending.
        backend: ``"auto"`` (Triton on CUDA, compiled CPU kernels or torch on CPU), ``"torch"``,
            ``"triton"`` or ``"numba"``.
        **params: the method's parameters (``fastsort.METHODS[method].defaults``): networks
            ``steepness=10.0``, ``distribution="cauchy"``, ``art_lambda=0.25``; NeuralSort ``tau=1.0``;
            SoftSort ``tau=1.0, pow=1.0``; Sinkhorn ``epsilon, max_iter, threshold, squash``.

    Returns:
        Same shape and dtype as ``x``.

    Example:
        >>> fastsort.soft_sort(torch.tensor([[1., 8., -1., 9., 5.]]), steepness=100.0)
        tensor([[-0.9955,  1.0029,  4.9963,  7.9998,  9.0001]])
    """
    m, p, x2, lead, be = _start(x, method, "sort", dim, backend, params)
    y = m.sort(x2, p, be)
    return _restore(y.flip(-1) if descending else y, lead, dim, x)


def soft_topk(x: torch.Tensor, k: int, method: str = "bitonic", *, dim: int = -1, backend: str = "auto",
              **params) -> torch.Tensor:
    """Top-``k`` rows of the relaxed permutation matrix.

    Args:
        x: ``[..., n, ...]`` floating tensor.
        k: how many ranks, ``1 <= k <= n``.
        method: any method that gives rows of ``P``, incl. ``"splitter_selection"`` (a cheaper
            selection network).
        dim, backend, **params: as :func:`soft_sort`.

    Returns:
        ``[..., k, n]`` (``dim`` removed from the leading dims, then ranks, then inputs): row ``r`` is
        rank ``r + 1`` (row 0 = the largest), so ``soft_topk(x, k) @ x.unsqueeze(-1)`` gives the ``k``
        largest soft values, largest first.  Network methods cost ``O(n k D)``, never ``O(n^2)``.

    Example:
        >>> P = fastsort.soft_topk(torch.tensor([[1., 8., -1., 9., 5.]]), k=2, steepness=100.0)
        >>> P.shape
        torch.Size([1, 2, 5])
        >>> P.argmax(-1)
        tensor([[3, 1]])
    """
    m, p, x2, lead, be = _start(x, method, "topk", dim, backend, params)
    n = x2.shape[-1]
    k = check_k(k, n)
    return m.topk(x2, k, p, be).reshape(lead + (k, n)).to(x.dtype)


def soft_rank(x: torch.Tensor, method: str = "bitonic", *, dim: int = -1, backend: str = "auto",
              **params) -> torch.Tensor:
    """Soft ranks in ``[1, n]`` along ``dim``, 1 = the smallest (torchsort's convention).

    Args and returns as :func:`soft_sort` (same shape and dtype as ``x``).  Network methods run one
    vector through the reverse sweep: ``O(n D)``.

    Example:
        >>> fastsort.soft_rank(torch.tensor([[1., 8., -1., 9., 5.]]), steepness=100.0).round()
        tensor([[2., 4., 1., 5., 3.]])
    """
    m, p, x2, lead, be = _start(x, method, "rank", dim, backend, params)
    return _restore(m.rank(x2, p, be), lead, dim, x)


def soft_permutation(x: torch.Tensor, method: str = "bitonic", *, dim: int = -1, backend: str = "auto",
                     **params) -> torch.Tensor:
    """The full relaxed permutation matrix.

    Args as :func:`soft_sort`.

    Returns:
        ``[..., n, n]``: row ``j`` = output position ``j`` (ascending), columns = inputs;
        ``soft_sort(x) == soft_permutation(x) @ x``.

    Example:
        >>> fastsort.soft_permutation(torch.tensor([[3., 1.]]), steepness=1e4)
        tensor([[[0., 1.],
                 [1., 0.]]])
    """
    m, p, x2, lead, be = _start(x, method, "permutation", dim, backend, params)
    n = x2.shape[-1]
    return m.permutation(x2, p, be).reshape(lead + (n, n)).to(x.dtype)


def soft_topk_mask(x: torch.Tensor, k: int, method: str = "sinkhorn", *, dim: int = -1, backend: str = "auto",
                   **params) -> torch.Tensor:
    """For each element, the soft probability of being among the ``k`` largest.

    Args as :func:`soft_topk`.  ``sinkhorn`` solves OTT's two-target problem; the network methods
    run the indicator of the top ``k`` positions through the sweep; NeuralSort/SoftSort sum their
    top ``k`` rows.

    Returns:
        Same shape and dtype as ``x``.

    Example:
        >>> fastsort.soft_topk_mask(torch.tensor([1., 8., -1., 9., 5.]), 2, method="bitonic", steepness=100.0).round()
        tensor([0., 1., 0., 1., 0.])
    """
    m, p, x2, lead, be = _start(x, method, "topk_mask", dim, backend, params)
    k = check_k(k, x2.shape[-1])
    return _restore(m.topk_mask(x2, k, p, be), lead, dim, x)
