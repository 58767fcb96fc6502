"""Soft sort, soft rank and the sparse soft top-k mask by projection onto the permutahedron.

Blondel, Teboul, Berthet and Djolonga, "Fast Differentiable Sorting and
Ranking" (ICML 2020), the method of ``torchsort``; the top-k mask is the
sparse soft top-k of Sander, Puigcerver, Djolonga, Peyre and Blondel (ICML
2023).  The derivation is in docs/design.md, "Projection onto the
permutahedron"; in short, per row of ``n`` values:

The permutahedron ``P(w)`` of a vector ``w`` is the convex hull of all its
permutations.  Projecting a point ``z`` onto it -- in the Euclidean sense
(``l2``) or in the KL sense (``kl``, in log coordinates) -- reduces, once ``z``
is sorted in decreasing order (``s = z[sigma]``), to an *isotonic regression*:
find the non-increasing ``v`` closest to ``s - w`` (``l2``), or minimising
``sum exp(s - v) + <exp(w), v>`` (``kl``); then ``z - v`` (unsorted again) is the
projection.  The solution is piecewise constant on contiguous *blocks* of the
sorted order, and each block's value has a closed form::

    l2:  v_B = mean(s_B) - mean(w_B)          kl:  v_B = LSE(s_B) - LSE(w_B)

Pool-adjacent-violators (PAV) finds the blocks: start with one block per
element and merge any two adjacent blocks whose values violate the order
(``v_left <= v_right``: ties are pooled too, as torchsort does).

The three operators, with ``eps`` the ``regularization_strength`` and
``rho = (n, n-1, ..., 1)``:

* ``rank``: project ``x / eps`` onto ``P(rho)``: ranks in ``[1, n]``, 1 = the
  smallest; with ``kl`` the result is ``exp`` of the log-domain projection;
* ``sort``: project ``rho / eps`` onto ``P(-x)`` and negate (torchsort's
  ascending soft sort): in sorted coordinates ``v = iso(rho / eps - s)`` with
  ``s`` = ``-x`` sorted decreasingly, and the sorted values are ``v - rho / eps``;
* ``topk_mask`` (``l2`` only): project ``x / eps`` onto ``P(w)`` with
  ``w = (1, ..., 1, 0, ..., 0)`` (``k`` ones): a mask in ``[0, 1]`` summing to
  ``k``, exactly 0 or 1 away from the decision boundary.

Backward.  The isotonic solution's Jacobian is block diagonal: ``dv_B/dy_j =
1/|B|`` (``l2``) or ``softmax(s_B)_j`` (``kl``) for ``j`` in the block.  With
``q`` those per-element weights and ``bs(h)`` the per-block sum of ``h``
broadcast back to the block's elements, the vector-Jacobian products in
sorted order (``g`` the cotangent, gathered through ``sigma`` for rank and
top-k, whose outputs are unsorted) are::

    rank / topk, l2:  dz = g - q * bs(g)                    dx = dz / eps
    rank, kl:         dz = o * (g - bs(q * g))              dx = dz / eps   (o = the ranks)
    sort, l2 and kl:  dx[sigma] = q * bs(g)

so the backward needs ``sigma``, the blocks and ``q``, never autograd through the
iterations.

Infinities.  Ranks and the mask get fastsort's finite stand-ins (docs/design.md,
"Infinities and guaranteed ranges"); the soft sort sees ``+-inf`` as they are: no
block pools across an infinite sorted position, so the finite entries are
projected alone and every infinity is a block of its own with ``q = 0``.  ``kl`` ranks are computed as ``o_j = q_j * sum(rho_B)`` and ``q`` as
``exp(s_j - LSE(s_B))``: no exponential of an unbounded value, hence finite
gradients where torchsort's ``exp(s) / sum(exp(s))`` overflows (its issue #63).

Backends.  ``torch`` (this module, any device, float64 too) runs PAV as
rounds that pool every violating adjacent pair of blocks at once, vectorised
over rows; ``numba`` (:mod:`fastsort.kernels.cpu_isotonic`) and ``triton``
(:mod:`fastsort.kernels.isotonic`) run the sequential stack PAV, ``O(n)`` per
row after the sort.  All three share one :class:`fastsort._kernel_op.KernelOp`
("permutahedron"), which ``torch.compile(fullgraph=True)`` traces as a custom op.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, Tuple

import torch

from ._kernel_op import KernelOp
from ._validate import as_positive
from .method import Method

__all__ = ["Permutahedron", "REGULARIZATIONS", "permutahedron_op", "isotonic_blocks", "reference_forward",
           "reference_backward", "soft_rank_reference", "soft_sort_reference", "soft_topk_mask_reference"]

#: the regularizations of the projection
REGULARIZATIONS = ("l2", "kl")


# --------------------------------------------------------------------------- the torch reference
def _sorted_values(x: torch.Tensor, op: str, strength: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(s, sigma)``: the varying argument of the isotonic problem in decreasing order and the
    permutation that sorts it (ties keep their input order: a stable sort, as the kernels)."""
    if op == "sort":
        xs, perm = torch.sort(x, dim=-1, stable=True)  # -x decreasing == x increasing
        return -xs, perm
    # x * (1 / eps), not x / eps: torchsort's rounding, so that its ties are ours
    return torch.sort(x * (1.0 / strength), dim=-1, descending=True, stable=True)


def _block_bounds(start: torch.Tensor):
    """Per element (sorted order): block id, first and last position of its block."""
    n = start.shape[-1]
    idx = torch.arange(n, device=start.device).expand_as(start)
    bid = start.cumsum(-1) - 1
    first = torch.where(start, idx, 0).cummax(-1).values
    is_last = torch.ones_like(start)
    is_last[:, :-1] = start[:, 1:]
    last = torch.where(is_last, idx, n).flip(-1).cummin(-1).values.flip(-1)
    return bid, first, last


def _segment_exp(t: torch.Tensor, bid: torch.Tensor):
    """``(m, e, tot)`` per element: its block's maximum of ``t`` (0 where not finite), ``exp(t - m)`` and
    the block's sum of those, broadcast back to the block's elements."""
    m = torch.full_like(t, -math.inf).scatter_reduce(-1, bid, t, "amax", include_self=True)
    mb = m.gather(-1, bid)
    mb = torch.where(torch.isfinite(mb), mb, torch.zeros_like(mb))
    e = torch.exp(t - mb)
    return mb, e, torch.zeros_like(t).scatter_add(-1, bid, e).gather(-1, bid)


def _segment_lse(t: torch.Tensor, bid: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp of ``t`` over each block, broadcast back to the block's elements."""
    mb, _, tot = _segment_exp(t, bid)
    return torch.log(tot) + mb


def _segment_softmax(t: torch.Tensor, bid: torch.Tensor) -> torch.Tensor:
    """Softmax of ``t`` within each block, as ``exp(t - max) / sum``: not ``exp(t - LSE)``, whose
    ``LSE = max + log(sum)`` loses the ``log(sum)`` next to a large maximum (equal values of ``1e30``
    got weight 1 each instead of ``1 / |B|``)."""
    _, e, tot = _segment_exp(t, bid)
    return e / tot


def _segment_sum(t: torch.Tensor, bid: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over each block, broadcast back, in float64 (``t``'s dtype if wider)."""
    if t.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return torch.zeros_like(t, dtype=torch.float64).scatter_add(-1, bid, t.double()).gather(-1, bid)
    return torch.zeros_like(t).scatter_add(-1, bid, t).gather(-1, bid)


def _value(A, first, last, n: int, op: str, regularization: str, strength: float, k: int):
    """The block value ``v_B`` from the accumulated ``A`` (``l2``: ``sum(s_B)``; ``kl``: ``LSE(s_B)``)
    and the block's first and last sorted positions (0-based), the weights' part in closed form."""
    dt = A.dtype
    cnt = (last - first + 1).to(dt)
    mean_rho = n - (first + last).to(dt) / 2  # rho_i = n - i
    if op == "rank":
        return A / cnt - mean_rho if regularization == "l2" else A - torch.log(cnt * mean_rho)
    if op == "topk_mask":  # w = k ones then zeros: sum(w_B) = #{i in B : i < k}
        return (A - (torch.clamp(last, max=k - 1) - first + 1).clamp(min=0).to(dt)) / cnt
    if regularization == "l2":  # sort: y = rho / eps - s
        return mean_rho / strength - A / cnt
    # LSE(rho_B / eps) = (n - first) / eps + log sum_{j < |B|} exp(-j / eps), a geometric series
    c = 1.0 / strength
    return (n - first).to(dt) * c + torch.log(-torch.expm1(-cnt * c)) - math.log(-math.expm1(-c)) - A


def _block_stats(s, start, op, regularization, strength, k):
    """Per element: the block value ``v_B``, the block id and bounds, and (kl) ``LSE(s_B)``."""
    n = s.shape[-1]
    bid, first, last = _block_bounds(start)
    lse = None
    if regularization == "l2":
        v = _value(_segment_sum(s, bid), first, last, n, op, regularization, strength, k).to(s.dtype)
    else:
        lse = _segment_lse(s, bid)
        v = _value(lse, first, last, n, op, regularization, strength, k)
    return v, bid, first, last, lse


def isotonic_blocks(s: torch.Tensor, op: str, regularization: str, strength: float, k: int = 0):
    """PAV on rows ``s [R, n]`` (decreasing): per element ``(v, bid, first, last, lse)``.

    Rounds that pool every violating adjacent pair of blocks at once (pooling any violating pair is
    a step of PAV, so they end at PAV's solution), all rows together on flat arrays.  Blocks are kept
    by their first element (flat index ``p``): the accumulated ``A[p]``, the last element
    ``last[p]`` and the previous block ``prev[p]`` (-1 at a row start).  A round checks only the
    boundaries next to a block that changed in the round before (the first round: all of them),
    pools each maximal chain of violating boundaries into its leftmost block (found by pointer
    jumping), and hands the boundaries on both sides of every pooled block to the next round.  So
    the first round costs ``O(R n)`` and a later one ``O(changed blocks)``: a long cascade (a
    pooled block that keeps absorbing one neighbour per round, as near the top-k boundary at a
    large strength) costs many cheap rounds instead of many passes over the rows.
    """
    R, n = s.shape
    N = R * n
    dev = s.device
    flat = torch.arange(N, device=dev)
    row0 = (flat // n) * n  # flat index of each element's row start
    # l2: sum(s_B), in float64 (a float32 sum of tied huge values, e.g. the stand-ins of tied infinities,
    # is off by far more than the ranks' scale); kl: LSE(s_B) -- one element: s itself
    A = s.reshape(-1).to(torch.float64 if regularization == "l2" else s.dtype, copy=True)
    last = flat.clone()
    # a barrier before an infinite element and after one: the soft sort's infinities stay blocks of
    # their own and the finite elements are pooled among themselves (module docstring)
    inf = torch.isinf(A)
    barrier = (flat == row0) | inf | torch.cat([inf.new_zeros(1), inf[:-1]])
    prev = torch.where(barrier, -1, flat - 1)
    in_v = torch.zeros(N, dtype=torch.bool, device=dev)
    up = torch.zeros(N, dtype=torch.long, device=dev)
    alive = torch.ones(N, dtype=torch.bool, device=dev)

    def value(p):  # (compared in s's dtype, as the kernels compare them)
        return _value(A[p], p - row0[p], last[p] - row0[p], n, op, regularization, strength, k).to(s.dtype)

    q = flat[prev >= 0]  # blocks whose left boundary is checked
    while q.numel():
        p = prev[q]
        v = q[value(p) <= value(q)]  # blocks that pool into their left neighbour (ties pool too)
        if not v.numel():
            break
        in_v[v] = True
        up[v] = prev[v]
        while True:  # pointer jumping to the leftmost block of each chain (not itself pooling left)
            u = up[v]
            more = in_v[u]
            if not bool(more.any()):
                break
            up[v] = torch.where(more, up[u], u)
        root = up[v]
        if regularization == "l2":
            A.index_add_(0, root, A[v])
        else:  # log-sum-exp of the chain, from the root's running maximum
            m = A.clone().scatter_reduce_(0, root, A[v], "amax")
            tot = A.new_zeros(N).index_add_(0, root, torch.exp(A[v] - m[root]))
            roots = torch.unique(root)
            A[roots] = m[roots] + torch.log(torch.exp(A[roots] - m[roots]) + tot[roots])
        last.scatter_reduce_(0, root, last[v], "amax")
        in_v[v] = False
        alive[v] = False
        roots = torch.unique(root)
        nxt = last[roots] + 1
        ok = nxt < row0[roots] + n
        ok = ok & ~barrier[torch.where(ok, nxt, 0)]
        prev[nxt[ok]] = roots[ok]
        q = torch.unique(torch.cat([roots[prev[roots] >= 0], nxt[ok]]))
    return _block_stats(s, alive.view(R, n), op, regularization, strength, k)


def _outputs(s, first, last, lse, q, op, regularization, strength, k):
    """The outputs in sorted order, each in a form without cancellation of large terms: ``v_B`` and
    ``rho / eps`` are of size ``n / eps`` where a sorted value is of size ``|x|``, so ``v_B - rho_j / eps``
    is evaluated as ``(j - mean position of B) / eps - mean(s_B)`` (l2), and alike for the others."""
    n = s.shape[-1]
    dt = s.dtype
    cnt = (last - first + 1).to(dt)
    pos = torch.arange(n, device=s.device).expand_as(first)
    c = 1.0 / strength
    if op == "sort" and regularization == "l2":
        return ((pos - (first + last).to(dt) / 2) * c - _segment_sum(s, _block_ids(first)) / cnt).to(dt)
    if op == "sort":  # LSE(rho_B / eps) - rho_j / eps - LSE(s_B)
        return (pos - first).to(dt) * c + torch.log(-torch.expm1(-cnt * c)) - math.log(-math.expm1(-c)) - lse
    if regularization == "kl":  # ranks: exp(s_j - v_B) = q_j sum(rho_B)
        return q * (cnt * (n - (first + last).to(dt) / 2))
    centred = (s - _segment_sum(s, _block_ids(first)) / cnt).to(dt)  # s_j - mean(s_B), the mean in float64
    if op == "rank":  # + mean(rho_B)
        return centred + (n - (first + last).to(dt) / 2)
    return centred + (torch.clamp(last, max=k - 1) - first + 1).clamp(min=0).to(dt) / cnt  # + mean(w_B)


def _block_ids(first: torch.Tensor) -> torch.Tensor:
    start = torch.ones_like(first, dtype=torch.bool)
    start[:, 1:] = first[:, 1:] != first[:, :-1]
    return start.cumsum(-1) - 1


def reference_forward(x: torch.Tensor, op: str, regularization: str, strength: float, k: int = 0):
    """The torch forward on rows ``x [R, n]``: ``(out, sigma, last, q)`` (``last`` = the last
    sorted position of each sorted position's block, ``q`` = the block weights of the backward)."""
    s, perm = _sorted_values(x, op, strength)
    _, bid, first, last, lse = isotonic_blocks(s, op, regularization, strength, k)
    if regularization == "l2":
        q = 1.0 / (last - first + 1).to(x.dtype)
    else:
        q = _segment_softmax(s, bid)
    if op == "sort":  # its infinities (the other ops get finite stand-ins): blocks of their own, no gradient
        q = q.masked_fill(torch.isinf(s), 0.0)
    out = _outputs(s, first, last, lse, q, op, regularization, strength, k)
    if op != "sort":
        out = torch.empty_like(out).scatter_(-1, perm, out)
    bad = torch.isnan(x).any(-1, keepdim=True)  # NaN in -> NaN row out (and NaN gradients, through q)
    if bool(bad.any()):
        out = out.masked_fill(bad, math.nan)
        q = q.masked_fill(bad, math.nan)
    return out, perm, last, q


def reference_backward(grad: torch.Tensor, perm: torch.Tensor, last: torch.Tensor, q: torch.Tensor, op: str,
                       regularization: str, strength: float) -> torch.Tensor:
    """The torch backward: ``dL/dx`` from ``dL/dout`` and what :func:`reference_forward` saved."""
    perm, last = perm.long(), last.long()
    g = grad if op == "sort" else grad.gather(-1, perm)
    if op == "sort":
        dz = q * _segment_sum(g, last)
    elif regularization == "l2":
        dz = (g - q * _segment_sum(g, last)) * (1.0 / strength)
    else:  # rank, kl: o = q * W_B with W_B = sum(rho_B)
        n = g.shape[-1]
        first = _first_of_block(last)
        w_b = (last - first + 1).to(g.dtype) * (n - (first + last).to(g.dtype) / 2)
        dz = q * w_b * (g - _segment_sum(q * g, last)) * (1.0 / strength)
    dz = dz.to(grad.dtype)  # (the block sums are float64)
    return torch.empty_like(dz).scatter_(-1, perm, dz)


def _first_of_block(last: torch.Tensor) -> torch.Tensor:
    n = last.shape[-1]
    idx = torch.arange(n, device=last.device).expand_as(last)
    start = torch.ones_like(last, dtype=torch.bool)
    start[:, 1:] = last[:, :-1] != last[:, 1:]
    return torch.where(start, idx, 0).cummax(-1).values


# --------------------------------------------------------------------------- the kernel op
_INDEX_DTYPES = {"torch": (torch.int64, torch.int64), "numba": (torch.int32, torch.int32),
                 "triton": (torch.int64, torch.int32)}


@functools.lru_cache(maxsize=None)
def _impl(backend: str):
    """The launchers' module of a kernel backend, imported on first use (numba and Triton load lazily)."""
    if backend == "numba":
        from .kernels import cpu_isotonic as impl
    else:
        from .kernels import isotonic as impl
    return impl


def _forward(x: torch.Tensor, op: str, regularization: str, strength: float, k: int, backend: str,
             need_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "torch":
        out, perm, last, q = reference_forward(x, op, regularization, strength, k)
        if not need_grad:
            return out, perm.new_empty(0), last.new_empty(0), q.new_empty(0)
        return out, perm, last, q
    return _impl(backend).isotonic_fwd(x, op, regularization, strength, k, need_grad)


def _forward_fake(x: torch.Tensor, op: str, regularization: str, strength: float, k: int, backend: str,
                  need_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    perm_dtype, last_dtype = _INDEX_DTYPES[backend]
    shape = x.shape if need_grad else (0,)
    return (torch.empty_like(x), x.new_empty(shape, dtype=perm_dtype), x.new_empty(shape, dtype=last_dtype),
            x.new_empty(shape))


def _backward(grad: torch.Tensor, perm: torch.Tensor, last: torch.Tensor, q: torch.Tensor, op: str,
              regularization: str, strength: float, k: int, backend: str) -> torch.Tensor:
    if backend == "torch":
        return reference_backward(grad, perm, last, q, op, regularization, strength)
    return _impl(backend).isotonic_bwd(grad, perm, last, q, op, regularization, strength)


def _backward_fake(grad: torch.Tensor, perm: torch.Tensor, last: torch.Tensor, q: torch.Tensor, op: str,
                   regularization: str, strength: float, k: int, backend: str) -> torch.Tensor:
    return torch.empty_like(q)


#: the one op behind every permutahedron operator and backend
permutahedron_op = KernelOp("permutahedron", _forward, _backward, forward_fake=_forward_fake,
                            backward_fake=_backward_fake, n_outputs=1)


# --------------------------------------------------------------------------- the method
def _run(x: torch.Tensor, op: str, p: Dict[str, Any], k: int, backend: str) -> torch.Tensor:
    """One operator on rows ``x [R, n]`` for a backend chosen by ``fastsort._dispatch.choose_backend``
    (float64 and numba's absence already resolved there)."""
    if x.dim() != 2 or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the permutahedron ops take float32/float64 rows [R, n], got {x.dtype} {tuple(x.shape)}")
    return permutahedron_op(x, op, p["regularization"], p["regularization_strength"], k, backend)


class Permutahedron(Method):
    """Projection onto the permutahedron (Blondel et al. 2020; torchsort's method).

    Parameters: ``regularization`` (``"l2"`` or ``"kl"``) and ``regularization_strength``
    (``eps > 0``; ``eps -> 0`` gives the hard sort, ranks and top-k mask, ``eps -> inf`` the
    mean).  ``topk_mask`` is the sparse soft top-k of Sander et al. (2023), ``l2`` only.
    """

    defaults = {"regularization": "l2", "regularization_strength": 1.0}
    ops = ("sort", "rank", "topk_mask")
    kernels = ("triton", "numba")
    #: the soft sort projects the finite entries alone (no block pools across an infinity, which ends
    #: up at its end of the row, exactly +-inf); ranks and mask work with finite stand-ins, which the
    #: CPU kernels put in themselves (see handles_infinities)
    native_infinities = ("sort",)
    exact_sort_infinities = True
    limitation = ("a projection onto the permutahedron gives soft values and ranks, not a relaxed "
                  "permutation matrix: it has no rows of P to return or to build the top-k loss from")

    def handles_infinities(self, op: str, backend: str) -> bool:
        # the CPU kernels substitute the stand-ins for the rank's and mask's infinities themselves
        # (fastsort.kernels.cpu_isotonic), found in a pass they make anyway: no host-side test per call
        return super().handles_infinities(op, backend) or (backend == "numba" and op in ("rank", "topk_mask"))

    def check(self, p: Dict[str, Any]) -> Dict[str, Any]:
        if p["regularization"] not in REGULARIZATIONS:
            raise ValueError(f"regularization must be one of {REGULARIZATIONS}, got {p['regularization']!r}")
        p["regularization_strength"] = as_positive(p["regularization_strength"], "regularization_strength")
        return p

    def sort(self, x, p, backend):
        return _run(x, "sort", p, 0, backend)

    def sort_descending(self, x, p, backend):
        # the decreasing soft sort of the paper, -s(-x); for kl it is not the ascending one reversed
        return -_run(-x, "sort", p, 0, backend)

    def rank(self, x, p, backend):
        return _run(x, "rank", p, 0, backend)

    def topk_mask(self, x, k, p, backend):
        if p["regularization"] != "l2":
            raise ValueError(f"soft_topk_mask with method='permutahedron' is the sparse top-k of the l2 "
                             f"projection; got regularization={p['regularization']!r}: use regularization='l2'")
        n = x.shape[-1]
        if not 1 <= k <= n:
            raise ValueError(f"k must satisfy 1 <= k <= n ({n}), got k={k}")
        return _run(x, "topk_mask", p, int(k), backend)


# --------------------------------------------------------------------------- reference entry points for tests
_METHOD = Permutahedron("permutahedron")


def _params(regularization: str, regularization_strength: float) -> Dict[str, Any]:
    return _METHOD.parse({"regularization": regularization, "regularization_strength": regularization_strength})


def soft_rank_reference(x: torch.Tensor, regularization: str = "l2", regularization_strength: float = 1.0):
    """Soft ranks of rows ``x [R, n]`` on the torch backend (differentiable, hand-written backward)."""
    return _METHOD.rank(x, _params(regularization, regularization_strength), "torch")


def soft_sort_reference(x: torch.Tensor, regularization: str = "l2", regularization_strength: float = 1.0):
    """Ascending soft sorted values of rows ``x [R, n]`` on the torch backend."""
    return _METHOD.sort(x, _params(regularization, regularization_strength), "torch")


def soft_topk_mask_reference(x: torch.Tensor, k: int, regularization_strength: float = 1.0):
    """The sparse soft top-k mask of rows ``x [R, n]`` on the torch backend."""
    return _METHOD.topk_mask(x, k, _params("l2", regularization_strength), "torch")
