"""NeuralSort's compiled CPU kernels (:mod:`fastsort.kernels.cpu_neuralsort`) against float64 references.

The forward ``P`` and the gradient of a shared random cotangent are compared with a float64
autograd evaluation of the direct formula (``A_s 1`` as ``sum_l |s_j - s_l|``, whose derivative at a
tie is 0, the kernel's convention) for several row lengths (n = 1, odd ones, the largest the kernels
take, rows with ties) and ``k < n`` / ``k = n``, with the launchers' allocations NaN-prefilled; without
ties, also against :func:`fastsort.softmax_sorts.neuralsort_rows` on the torch path (its sort-based
``A_s 1``); the dispatch (``auto`` picks the kernels for finite float32 CPU rows of at most ``MAX_N``
entries, everything else stays on the torch ops) through the public ops and the compat class.
"""
import pytest
import torch

import fastsort
from fastsort import softmax_sorts
from fastsort.compat import difftopk as compat
from fastsort.kernels import cpu_neuralsort as cn
from fastsort.softmax_sorts import neuralsort_rows
from helpers import assert_close, nan_filled_allocations, neuralsort_direct


@pytest.fixture(autouse=True)
def nan_outputs():
    with nan_filled_allocations(cn, guards=False):
        yield


def batch(R, n, seed, ties=True):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(R, n, generator=g) * 2
    if ties and n >= 4:
        s[1, : n // 2] = s[1, 0]
        s[2, 1::2] = s[2, 0::2][: n // 2]  # pairs of equal values
    return s


@pytest.mark.parametrize("R,n,k", [(5, 1, 1), (6, 7, 7), (6, 33, 5), (130, 16, 16), (9, 100, 100), (3, 256, 40)])
@pytest.mark.parametrize("tau", [0.3, 2.0])
@pytest.mark.parametrize("transposed", [False, True])
def test_kernels_match_the_float64_definition(R, n, k, tau, transposed):
    """Both layouts: ``P [R, k, n]`` and, ``transposed``, its transpose ``[R, n, k]`` (contiguous)."""
    s = batch(R, n, seed=n)
    G = torch.randn(R, k, n, generator=torch.Generator().manual_seed(1))
    out = cn.neuralsort_fwd(s, k, tau, transposed)
    assert out.is_contiguous() and out.shape == ((R, n, k) if transposed else (R, k, n))
    P = out.transpose(1, 2) if transposed else out
    s64 = s.double().requires_grad_()
    P64 = neuralsort_direct(s64, k, tau)
    # float32 logits of size n |s| / tau: their rounding, relative to P's largest entries
    assert_close(P, P64.float(), rtol=0, atol=3e-7 * max(1.0, n * 8 / tau))
    (P64 * G.double()).sum().backward()
    ds = cn.neuralsort_bwd(G.transpose(1, 2).contiguous() if transposed else G, s, out, tau, transposed)
    assert_close(ds, s64.grad.float(), rtol=0, atol=2e-6 * max(1.0, n / tau) * s64.grad.abs().max().item())


def test_layouts_give_the_same_numbers():
    """The transposed kernels' loops compute the same float32 logits, exponentials and per-rank sums."""
    s = batch(50, 16, seed=5)
    G = torch.randn(50, 16, 16, generator=torch.Generator().manual_seed(4))
    P, Q = cn.neuralsort_fwd(s, 16, 0.5), cn.neuralsort_fwd(s, 16, 0.5, True)
    assert_close(Q.transpose(1, 2), P, rtol=1e-6, atol=1e-7)
    assert_close(cn.neuralsort_bwd(G.transpose(1, 2).contiguous(), s, Q, 0.5, True), cn.neuralsort_bwd(G, s, P, 0.5),
                 rtol=1e-5, atol=1e-6)


def test_kernels_match_the_torch_ops_without_ties():
    s = batch(40, 24, seed=3, ties=False)
    G = torch.randn(40, 10, 24, generator=torch.Generator().manual_seed(2))
    P = cn.neuralsort_fwd(s, 10, 0.7)
    s64 = s.double().requires_grad_()
    P64 = neuralsort_rows(s64, 10, 0.7)
    assert_close(P, P64.float(), rtol=0, atol=5e-6)
    (P64 * G.double()).sum().backward()
    assert_close(cn.neuralsort_bwd(G, s, P, 0.7), s64.grad.float(), rtol=1e-4, atol=1e-5)


def test_tied_entries_get_equal_gradients():
    """The symmetric subgradient: entries of equal value see the same ``A_s 1`` and, with a cotangent
    that treats them alike, get the same gradient."""
    s = torch.tensor([[0.5, 2.0, 0.5, -1.0, 0.5]])
    P = cn.neuralsort_fwd(s, 5, 1.0)
    G = torch.randn(1, 5, 5, generator=torch.Generator().manual_seed(0))
    G[:, :, 2] = G[:, :, 0]
    G[:, :, 4] = G[:, :, 0]
    ds = cn.neuralsort_bwd(G, s, P, 1.0)
    assert torch.equal(P[0, :, 0], P[0, :, 2]) and torch.equal(P[0, :, 0], P[0, :, 4])
    assert_close(ds[0, 2], ds[0, 0], rtol=1e-6, atol=1e-7)
    assert_close(ds[0, 4], ds[0, 0], rtol=1e-6, atol=1e-7)


def test_kernels_check_their_inputs():
    with pytest.raises(ValueError, match="float32 CPU rows"):
        cn.neuralsort_fwd(torch.randn(2, 3, dtype=torch.float64), 3, 1.0)
    with pytest.raises(ValueError, match=f"n <= {cn.MAX_N}"):
        cn.neuralsort_fwd(torch.randn(2, cn.MAX_N + 1), 3, 1.0)


def test_dispatch_limit_is_the_kernels_limit():
    assert softmax_sorts.NEURALSORT_KERNEL_MAX_N == cn.MAX_N


@pytest.mark.parametrize("op", ["sort", "rank", "topk", "permutation", "topk_mask"])
def test_public_ops_auto_vs_float64(op):
    """``auto`` (the kernels) against the float64 torch path, values and gradients, over a leading dim
    (no ties: the torch ops' sort-based ``A_s 1`` takes another subgradient there)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 20, generator=g)
    fn = {"sort": lambda t, **kw: fastsort.soft_sort(t, "neuralsort", **kw),
          "rank": lambda t, **kw: fastsort.soft_rank(t, "neuralsort", **kw),
          "topk": lambda t, **kw: fastsort.soft_topk(t, 5, "neuralsort", **kw),
          "permutation": lambda t, **kw: fastsort.soft_permutation(t, "neuralsort", **kw),
          "topk_mask": lambda t, **kw: fastsort.soft_topk_mask(t, 5, "neuralsort", **kw)}[op]
    a, b = x.clone().requires_grad_(), x.double().requires_grad_()
    ya, yb = fn(a, tau=0.5), fn(b, tau=0.5)
    assert_close(ya.double(), yb, rtol=0, atol=5e-6 * max(1.0, yb.abs().max().item()))
    G = torch.randn(ya.shape, generator=g)
    (ya * G).sum().backward()
    (yb * G.double()).sum().backward()
    assert_close(a.grad.double(), b.grad, rtol=0, atol=5e-6 * b.grad.abs().max().item())


def test_dispatch_falls_back_to_the_torch_ops(monkeypatch):
    """Rows with infinities, float64, rows longer than MAX_N: the torch ops (the kernels are never called)."""
    def boom(*a, **kw):
        raise AssertionError("the kernels ran")

    monkeypatch.setattr(cn, "neuralsort_fwd", boom)
    x = torch.randn(4, 9)
    fastsort.soft_rank(x.double(), "neuralsort")
    xi = x.clone()
    xi[0, 3] = float("inf")
    fastsort.soft_rank(xi, "neuralsort")
    fastsort.soft_topk(torch.randn(2, cn.MAX_N + 1), 3, "neuralsort")
    with pytest.raises(AssertionError, match="the kernels ran"):
        fastsort.soft_rank(x, "neuralsort")


def test_compat_class_uses_the_kernels_and_matches_torch(monkeypatch):
    calls = []
    real = cn.neuralsort_fwd
    monkeypatch.setattr(cn, "neuralsort_fwd", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(8, 12, requires_grad=True)
    ref = neuralsort_rows(-x.detach().double(), 12, 2.0).transpose(-2, -1)
    out = compat.NeuralSort(2.0)(x)
    assert calls and out.requires_grad
    assert out.is_contiguous()  # the kernels write difftopk's (input-major) layout themselves
    assert_close(out, ref.float(), rtol=0, atol=5e-6)
    G = torch.randn(8, 12, 12, generator=torch.Generator().manual_seed(9))
    (out * G).sum().backward()
    x64 = x.detach().double().requires_grad_()
    (neuralsort_rows(-x64, 12, 2.0).transpose(-2, -1) * G.double()).sum().backward()
    assert_close(x.grad, x64.grad.float(), rtol=1e-4, atol=1e-5)
