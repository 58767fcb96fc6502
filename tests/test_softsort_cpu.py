"""SoftSort's compiled CPU kernels (:mod:`fastsort.kernels.cpu_softsort`) against the torch ops.

The forward ``P`` and the gradient of a shared random cotangent are compared with
:func:`fastsort.softmax_sorts.softsort_rows` on the torch path in float64 (plain autograd),
for several row lengths (odd ones, n = 1, rows with ties, whose distance 0 has derivative 0),
``k < n`` and ``k = n``, with the launchers' allocations NaN-prefilled; the exponential helper
against ``torch.exp`` in float64; the dispatch (``auto`` picks the kernels for finite float32 CPU
rows with ``pow = 1``, everything else stays on the torch ops) through the public ops and the
compat class.
"""
import numba
import numpy as np
import pytest
import torch

import fastsort
from fastsort.compat import difftopk as compat
from fastsort.kernels import cpu_softsort as cs
from fastsort.softmax_sorts import softsort_rows
from helpers import assert_close, nan_filled_allocations


@pytest.fixture(autouse=True)
def nan_outputs():
    with nan_filled_allocations(cs, guards=False):
        yield


@numba.njit(cache=False)
def _exp(e, bits):
    cs.exp_nonpositive_row(e, bits.view(np.float32), bits, e.shape[0])


def test_exp_helper_against_float64():
    z = torch.cat([-torch.rand(20000, dtype=torch.float64) * 100, torch.tensor([0.0, -1e-30, -87.0, -88.0, -1e4])])
    e = z.float().numpy().copy()
    _exp(e, np.empty(e.shape[0], np.int32))
    ref = torch.exp(z.float().double())
    normal = z.float() >= -87.3
    rel = ((torch.from_numpy(e).double() - ref).abs() / ref)[normal]
    assert rel.max() < 2.5e-7
    assert (torch.from_numpy(e)[~normal] == 0).all() and (ref[~normal] < 1.3e-38).all()  # (torch: denormals)
    assert e[z.numel() - 5] == 1.0


def batch(R, n, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(R, n, generator=g) * 2
    if n >= 4:
        s[1, : n // 2] = s[1, 0]  # ties
    if R >= 3:
        s[2] *= 100  # a row too wide for the separable forward (its span over tau above SEPARABLE_SPAN)
    return s


@pytest.mark.parametrize("R,n,k", [(5, 1, 1), (6, 7, 7), (6, 33, 5), (130, 16, 16), (7, 24, 24), (9, 100, 100),
                                   (3, 257, 40), (2, 300, 70), (3, 600, 600)])
# (k n > SHORT_BLOCK from (2, 300, 70): the per-rank forward; n = 24 and 100 sorted by the radix sort's
# insertion and joint paths, n = 600 a row at a time)
@pytest.mark.parametrize("tau", [0.3, 2.0])
def test_kernels_match_torch_ops(R, n, k, tau):
    s = batch(R, n, seed=n)
    G = torch.randn(R, k, n, generator=torch.Generator().manual_seed(1))
    P, top_idx = cs.softsort_fwd(s, k, tau)
    s64 = s.double().requires_grad_()
    P64 = softsort_rows(s64, k, tau, 1.0)
    assert_close(P, P64.float(), rtol=2e-6, atol=2e-7)
    assert top_idx.dtype == torch.int64 and top_idx.shape == (R, k)
    assert torch.equal(s.gather(1, top_idx), s.topk(k, dim=1).values)
    if k == n:  # sorted in the kernel (by insertion, or by the radix sort whose rows with ties take
        # torch.sort's columns): tied values name the columns that torch.sort gives them, as on the torch path
        assert torch.equal(top_idx, s.sort(dim=1, descending=True).indices)
    if k == n <= cs.KERNEL_SORT_ROW:  # (torch.sort sorts such rows by insertion: stable)
        assert torch.equal(top_idx, s.sort(dim=1, descending=True, stable=True).indices)
    (P64 * G.double()).sum().backward()
    ds = cs.softsort_bwd(G, s, P, top_idx, tau)
    assert_close(ds, s64.grad.float(), rtol=1e-5, atol=1e-5 * max(1.0, s64.grad.abs().max().item()))


def test_both_kernel_variants_are_tested(monkeypatch):
    assert 300 * 70 > cs.SHORT_BLOCK >= 257 * 40
    exact = []
    real = cs._exact_rows
    monkeypatch.setattr(cs, "_exact_rows", lambda s, top, P, c, rows, *a: exact.append(rows.copy()) or
                        real(s, top, P, c, rows, *a))
    for n, k in ((16, 16), (33, 5), (100, 100)):
        exact.clear()
        cs.softsort_fwd(batch(4, n, seed=n), k, 2.0)
        assert [r.tolist() for r in exact] == [[2]]  # the wide row, and only it, took the exact forward


@pytest.mark.parametrize("span", [1e-3, 40.0, 79.9, 80.1, 500.0])
@pytest.mark.parametrize("n,k", [(16, 16), (50, 50), (50, 7)])
def test_forward_across_the_separable_span(span, n, k):
    """Rows spanning ``span * tau``, on both sides of SEPARABLE_SPAN, against float64: the separable factors
    reach ``e^-80`` and their reciprocals ``e^80`` there, and stay float32-accurate."""
    g = torch.Generator().manual_seed(int(span) + n + k)
    tau = 0.7
    u = torch.rand(6, n, generator=g, dtype=torch.float64)
    u = (u - u.amin(1, keepdim=True)) / (u.amax(1, keepdim=True) - u.amin(1, keepdim=True))
    s = (u * span * tau + 3.0).float()
    P, top_idx = cs.softsort_fwd(s, k, tau)
    assert_close(P, softsort_rows(s.double(), k, tau, 1.0).float(), rtol=2e-6, atol=2e-7)


def test_kernels_check_their_inputs():
    with pytest.raises(ValueError, match="float32 CPU rows"):
        cs.softsort_fwd(torch.randn(2, 3, dtype=torch.float64), 3, 1.0)


@pytest.mark.parametrize("op", ["sort", "rank", "topk", "permutation", "topk_mask"])
def test_public_ops_auto_vs_torch(op):
    """``auto`` (the kernels) against ``backend="torch"``, values and gradients, over a leading dim."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 20, generator=g)
    fn = {"sort": lambda t, **kw: fastsort.soft_sort(t, "softsort", **kw),
          "rank": lambda t, **kw: fastsort.soft_rank(t, "softsort", **kw),
          "topk": lambda t, **kw: fastsort.soft_topk(t, 5, "softsort", **kw),
          "permutation": lambda t, **kw: fastsort.soft_permutation(t, "softsort", **kw),
          "topk_mask": lambda t, **kw: fastsort.soft_topk_mask(t, 5, "softsort", **kw)}[op]
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fn(a, tau=0.5), fn(b, tau=0.5, backend="torch")
    ya = ya if isinstance(ya, torch.Tensor) else ya[1]  # soft_topk: (values, rows)
    yb = yb if isinstance(yb, torch.Tensor) else yb[1]
    assert_close(ya, yb, rtol=2e-6, atol=2e-6)
    G = torch.randn(ya.shape, generator=g)
    (ya * G).sum().backward()
    (yb * G).sum().backward()
    assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_dispatch_falls_back_to_the_torch_ops(monkeypatch):
    """pow != 1, rows with infinities, float64: the torch ops (the kernels are never called)."""
    def boom(*a, **kw):
        raise AssertionError("the kernels ran")

    monkeypatch.setattr(cs, "softsort_fwd", boom)
    x = torch.randn(4, 9)
    fastsort.soft_rank(x, "softsort", pow=2.0)
    fastsort.soft_rank(x.double(), "softsort")
    xi = x.clone()
    xi[0, 3] = float("inf")
    fastsort.soft_rank(xi, "softsort")
    with pytest.raises(AssertionError, match="the kernels ran"):
        fastsort.soft_rank(x, "softsort")


def test_compat_class_uses_the_kernels_and_matches_torch(monkeypatch):
    calls = []
    real = cs.softsort_fwd
    monkeypatch.setattr(cs, "softsort_fwd", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(8, 12, requires_grad=True)
    ref = softsort_rows(x.detach().double().requires_grad_(), 12, 2.0, 1.0)
    out = compat.SoftSort(2.0)(x)
    assert calls and out.requires_grad
    assert_close(out, ref.float(), rtol=2e-6, atol=2e-7)
