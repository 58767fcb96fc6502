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

Special values (docs/design.md, "Conventions and layouts"), the same for every method:

* a NaN in a row makes that row's outputs NaN;
* ``+inf`` sorts as the largest value and ``-inf`` as the smallest, as in
  ``torch.sort``: ``soft_sort`` returns exactly ``-inf`` at the ``a`` lowest and
  ``+inf`` at the ``b`` highest positions of a row with ``a`` / ``b`` of them, and
  the infinite entries get the extreme ranks.  Methods that handle infinities
  themselves (NeuralSort, SoftSort: exactly, as the limit of an ever larger
  value; Sinkhorn: its squash sends them to the ends of the targets; the
  permutahedron's soft sort: the finite entries projected alone, no isotonic
  block pooling across an infinity) see them as they are; the others (the
  networks, the permutahedron's ranks and mask) compute with finite stand-ins
  beyond the row's finite range (:func:`finite_stand_ins`), far enough that every
  comparator against one is exactly 0 or 1, so with a network an infinity has
  weight exactly 0 on every finite position.  Infinite entries get zero gradient.

The ops compute in float32 (float64 kept) with ``torch.autocast`` switched off
inside them, whatever autocast region they are called in; results come back in
the input's dtype.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Optional, Tuple

import torch

from ._dispatch import choose_backend, finite_on_host
from ._validate import as_int, check_input, check_k, compute_dtype
from .method import Method
from .registry import METHODS

__all__ = ["soft_sort", "soft_topk", "soft_rank", "soft_permutation", "soft_topk_mask"]

#: how far beyond a row's finite range :func:`finite_stand_ins` puts an infinity, at least: a
#: comparator then sees a difference so large that its weight is exactly 0 or 1 at any steepness
#: above ~1e-22 (``NEG_BIG`` of the networks' top-k loss)
STAND_IN_GAP = 1e30


def autocast_off(x):
    """A context switching ``torch.autocast`` off for the device of tensor ``x`` when it is on there (else
    a no-op, also for a non-tensor, which validation then rejects): the ops compute in float32 whatever
    autocast region they are called from."""
    device_type = x.device.type if isinstance(x, torch.Tensor) else None
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def finite_stand_ins(x: torch.Tensor, finite: Optional[bool] = None) -> torch.Tensor:
    """``x [R, n]`` with ``+inf`` / ``-inf`` replaced by ``+-(M + gap)``: ``M`` the row's largest finite
    magnitude, ``gap = max(STAND_IN_GAP, 4 M)`` (at most ``finfo.max / 16``, so sums of two stand-ins stay
    finite).  For the ops that do not handle infinities themselves (``Method.native_infinities``).
    ``finite``: :func:`~fastsort._dispatch.finite_on_host` of ``x`` when the caller has it already."""
    if finite_on_host(x) if finite is None else finite:
        return x  # the common case, decided on the host where that costs no device sync
    inf = torch.isinf(x)
    big = torch.finfo(x.dtype).max / 16
    xd = x.detach()  # the stand-ins are constants: an infinity gets no gradient, nor does the finite maximum
    m = torch.where(inf, torch.zeros_like(xd), xd).abs().amax(-1, keepdim=True)
    bound = m + (4 * m).clamp(min=STAND_IN_GAP, max=big)
    return torch.where(inf, torch.sign(xd) * bound, x)


def restore_infinities(y: torch.Tensor, x: torch.Tensor, finite: Optional[bool] = None) -> torch.Tensor:
    """Ascending soft sorted values ``y [R, n]`` of ``x [R, n]`` with exactly ``-inf`` at the ``a`` lowest and
    ``+inf`` at the ``b`` highest positions of each row holding ``a`` / ``b`` of them (rows with a NaN are
    left as they are: NaN); ``finite`` as in :func:`finite_stand_ins`."""
    if finite_on_host(x) if finite is None else finite:
        return y
    n = x.shape[-1]
    j = torch.arange(n, device=x.device)
    clean = ~torch.isnan(x).any(-1, keepdim=True)
    n_neg = (x == -math.inf).sum(-1, keepdim=True)
    n_pos = (x == math.inf).sum(-1, keepdim=True)
    y = torch.where(clean & (j < n_neg), torch.full_like(y, -math.inf), y)
    return torch.where(clean & (j >= n - n_pos), torch.full_like(y, math.inf), y)


def _flatten(x: torch.Tensor, dim: int) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    dim = as_int(dim, "dim")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for a tensor with {x.dim()} dimensions")
    xm = x if dim in (-1, x.dim() - 1) else x.movedim(dim, -1)
    n = xm.shape[-1]
    if n == 0:
        raise ValueError(f"x has 0 elements along dim={dim}; there is nothing to sort")
    lead = tuple(xm.shape[:-1])
    rows = xm if xm.dim() == 2 else xm.reshape(-1, n)  # (a 2-D input needs no view node in the graph)
    cd = compute_dtype(x.dtype)
    return (rows if rows.dtype == cd else rows.to(cd)), lead  # (a same-dtype .to still costs a dispatch)


def _start(x, method: str, op: str, dim, backend: str, params) -> Tuple[Method, Dict[str, Any], torch.Tensor,
                                                                          Tuple[int, ...], str]:
    """Validate, flatten, look the method up and choose the backend: ``(method, p, rows, lead, backend)``."""
    check_input(x)
    m = METHODS.lookup(method, op)
    p = m.parse(params)
    x2, lead = _flatten(x, dim)
    be = choose_backend(x2, backend, m.kernels, m.kernel_row_length(x2.shape[-1]))
    return m, p, x2, lead, be


def _rows_for(m: Method, x2: torch.Tensor, op: str, backend: str, finite: Optional[bool] = None) -> torch.Tensor:
    """The rows as op ``op`` of method ``m`` on ``backend`` sees them: with finite stand-ins for infinities
    unless it handles them itself (:meth:`Method.handles_infinities`)."""
    return x2 if m.handles_infinities(op, backend) else finite_stand_ins(x2, finite)


def _restore(y: torch.Tensor, lead: Tuple[int, ...], dim: int, like: torch.Tensor) -> torch.Tensor:
    """Rows ``[R, n]`` back to the caller's layout (``dim`` where it was) and dtype."""
    if len(lead) != 1:
        y = y.reshape(lead + (y.shape[-1],))
    if dim not in (-1, y.dim() - 1):
        y = y.movedim(-1, dim)
    return y if y.dtype == like.dtype else y.to(like.dtype)


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
            SoftSort ``tau=1.0, pow=1.0``; Sinkhorn ``epsilon=1e-2, max_iter=None, threshold=1e-3,
            squash=True, strict=False`` (a row that does not converge warns with
            :class:`fastsort.sinkhorn.SinkhornConvergenceWarning`, or raises with ``strict=True``).

    Returns:
        Same shape and dtype as ``x``: within ``[min x, max x]`` for every method but Sinkhorn, whose
        rows of ``P`` sum to 1 only up to its ``threshold``; ``-inf`` / ``+inf`` entries of ``x`` come
        out exactly at the lowest / highest positions.

    Example:
        >>> fastsort.soft_sort(torch.tensor([[1., 8., -1., 9., 5.]]), steepness=100.0)
        tensor([[-0.9955,  1.0029,  4.9963,  7.9998,  9.0001]])
    """
    with autocast_off(x):
        m, p, x2, lead, be = _start(x, method, "sort", dim, backend, params)
        if m.exact_sort_infinities and m.handles_infinities("sort", be):
            finite = True  # (the method's sort needs neither stand-ins nor the restore: no test)
        else:
            finite = finite_on_host(x2)  # one test for the stand-ins and the restore
        rows = _rows_for(m, x2, "sort", be, finite)
        if descending:  # the method's own descending sort (largest first), restored in ascending order
            y = restore_infinities(m.sort_descending(rows, p, be).flip(-1), x2, finite).flip(-1)
        else:
            y = restore_infinities(m.sort(rows, p, be), x2, finite)
        return _restore(y, lead, dim, x)


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
    with autocast_off(x):
        m, p, x2, lead, be = _start(x, method, "topk", dim, backend, params)
        n = x2.shape[-1]
        k = check_k(k, n)
        return m.topk(_rows_for(m, x2, "topk", be), k, p, be).reshape(lead + (k, n)).to(x.dtype)


def soft_rank(x: torch.Tensor, method: str = "bitonic", *, dim: int = -1, backend: str = "auto",
              **params) -> torch.Tensor:
    """Soft ranks along ``dim``, 1 = the smallest (torchsort's convention).

    Args and returns as :func:`soft_sort` (same shape and dtype as ``x``).  Network methods run one
    vector through the reverse sweep: ``O(n D)``.

    Range: within ``[1, n]`` for the network methods (their ``P`` is doubly stochastic), Sinkhorn (each
    input's plan row sums to ``1/n``) and the permutahedron (a point of it); NeuralSort's and SoftSort's rows are softmaxes (each sums to 1) but
    their columns do not sum to 1, so their ranks can leave ``[1, n]`` (NeuralSort on 200 standard normal
    values at ``tau=1`` gives ranks from below 1 to above 220).  ``+-inf`` get the extreme ranks; tied values
    equal ranks with the permutation-equivariant methods (all but the networks, which mix ties pairwise).

    Example:
        >>> fastsort.soft_rank(torch.tensor([[1., 8., -1., 9., 5.]]), steepness=100.0).round()
        tensor([[2., 4., 1., 5., 3.]])
    """
    with autocast_off(x):
        m, p, x2, lead, be = _start(x, method, "rank", dim, backend, params)
        return _restore(m.rank(_rows_for(m, x2, "rank", be), p, be), lead, dim, x)


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
    with autocast_off(x):
        m, p, x2, lead, be = _start(x, method, "permutation", dim, backend, params)
        n = x2.shape[-1]
        return m.permutation(_rows_for(m, x2, "permutation", be), p, be).reshape(lead + (n, n)).to(x.dtype)


def soft_topk_mask(x: torch.Tensor, k: int, method: str = "sinkhorn", *, dim: int = -1, backend: str = "auto",
                   **params) -> torch.Tensor:
    """For each element, the soft probability of being among the ``k`` largest.

    Args as :func:`soft_topk`.  ``sinkhorn`` solves OTT's two-target problem; the network methods
    run the indicator of the top ``k`` positions through the sweep; NeuralSort/SoftSort sum their
    top ``k`` rows.

    Range: within ``[0, 1]``, summing to ``k`` per row, for the network methods, the permutahedron and
    Sinkhorn (up to its ``threshold``); NeuralSort's and SoftSort's sum to ``k`` but an entry can exceed 1 (their ``P`` is only
    row-stochastic: a column, the mass an input gets over the ``k`` rows, is not bounded by 1).

    Returns:
        Same shape and dtype as ``x``.

    Example:
        >>> fastsort.soft_topk_mask(torch.tensor([1., 8., -1., 9., 5.]), 2, method="bitonic", steepness=100.0).round()
        tensor([0., 1., 0., 1., 0.])
    """
    with autocast_off(x):
        m, p, x2, lead, be = _start(x, method, "topk_mask", dim, backend, params)
        k = check_k(k, x2.shape[-1])
        return _restore(m.topk_mask(_rows_for(m, x2, "topk_mask", be), k, p, be), lead, dim, x)
