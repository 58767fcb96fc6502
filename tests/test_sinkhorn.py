"""Torch reference of Sinkhorn sorting (fastsort/sinkhorn.py).

The oracle here is a dense float64 implementation written independently below:
plain autograd through a fixed number of log-domain Sinkhorn iterations, no
early stopping, no hand-written backward.
"""
import math

import pytest
import torch

from fastsort import sinkhorn as S
from helpers import sinkhorn_op

KINDS = ["sort", "rank", "perm", "topk", "mask"]


def dense_unrolled(kind, x, k, eps, iters, squash=True):
    """Independent oracle: dense cost, fixed iteration count, autograd through it all."""
    n = x.shape[-1]
    if squash:
        xc = x - x.mean(-1, keepdim=True)
        sd = torch.sqrt((xc ** 2).mean(-1, keepdim=True))
        z = torch.sigmoid(xc / (sd + 1e-10))
    else:
        z = x
    if kind == "topk" and k < n:
        b = torch.tensor([(n - k) / n] + [1.0 / n] * k, dtype=x.dtype)
    elif kind == "mask":
        b = torch.tensor([1 - k / n, k / n], dtype=x.dtype)
    else:
        b = torch.full((n,), 1.0 / n, dtype=x.dtype)
    m = b.numel()
    t = torch.linspace(0, 1, m, dtype=x.dtype)
    C = (z.unsqueeze(-1) - t) ** 2
    logK = -C / eps
    f = torch.zeros_like(z)
    g = torch.zeros(x.shape[0], m, dtype=x.dtype)
    for _ in range(iters):
        g = eps * torch.log(b) - eps * torch.logsumexp(f.unsqueeze(-1) / eps + logK, dim=-2)
        f = eps * math.log(1.0 / n) - eps * torch.logsumexp(g.unsqueeze(-2) / eps + logK, dim=-1)
    T = torch.exp(f.unsqueeze(-1) / eps + g.unsqueeze(-2) / eps + logK)
    P = n * T.transpose(-1, -2)  # [R, m, n]
    if kind == "sort":
        return (P @ x.unsqueeze(-1)).squeeze(-1)
    if kind == "rank":
        return (P.transpose(-1, -2) @ torch.arange(m, dtype=x.dtype).unsqueeze(-1)).squeeze(-1) + 1
    if kind == "perm":
        return P
    if kind == "topk":
        return torch.flip(P[:, m - k:, :], dims=[1])
    return P[:, 1, :]


@pytest.mark.parametrize("squash", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_dense_unrolled(kind, squash):
    x = torch.randn(4, 6, dtype=torch.float64)
    if not squash:
        x = torch.rand(4, 6, dtype=torch.float64)
    ct = None
    grads, outs = [], []
    for impl in ("fastsort", "dense"):
        xx = x.clone().requires_grad_(True)
        if impl == "fastsort":
            y = sinkhorn_op(kind, xx, k=2, epsilon=0.1, threshold=1e-12, max_iter=20000, squash=squash)
        else:
            y = dense_unrolled(kind, xx, 2, 0.1, 3000, squash=squash)
        if ct is None:
            ct = torch.randn_like(y)
        (y * ct).sum().backward()
        outs.append(y.detach())
        grads.append(xx.grad)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda x: sinkhorn_op(kind, x, k=2, epsilon=0.1, threshold=1e-13, max_iter=20000)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind,k", [("sort", None), ("rank", None), ("topk", 2), ("mask", 2)])
def test_backward_matches_finite_differences_at_default_epsilon(kind, k):
    """The implicit backward at epsilon = 1e-2 and a tight threshold vs central differences."""
    x = torch.tensor([[0.3, -1.2, 0.8, 2.0, -0.4, 1.1]], dtype=torch.float64)
    kw = dict(epsilon=1e-2, threshold=1e-9, max_iter=200000)
    ct = torch.randn_like(sinkhorn_op(kind, x, k=k or 2, **kw))
    xx = x.clone().requires_grad_(True)
    (sinkhorn_op(kind, xx, k=k or 2, **kw) * ct).sum().backward()
    h = 1e-6
    n = x.shape[1]
    e = h * torch.eye(n, dtype=x.dtype)
    ys = sinkhorn_op(kind, torch.cat([x + e, x - e]), k=k or 2, **kw)  # all 2n perturbations as one batch
    dims = tuple(range(1, ys.dim()))
    fd = (((ys[:n] - ys[n:]) * ct).sum(dims) / (2 * h)).unsqueeze(0)
    torch.testing.assert_close(xx.grad, fd, atol=1e-5, rtol=1e-4)


def well_separated(R, n):
    return torch.stack([torch.randperm(n).double() * 1.0 + 0.1 * torch.rand(n).double() for _ in range(R)])


def test_small_epsilon_approaches_hard_sort_and_ranks():
    x = well_separated(3, 7)
    kw = dict(epsilon=1e-4, threshold=1e-4, max_iter=50000, squash=False)
    xs = x / 10  # inside [0, 1] so the unsquashed targets linspace(0, 1, n) separate them
    soft = S.sinkhorn_sort(xs, **kw)
    torch.testing.assert_close(soft, torch.sort(xs, dim=-1).values, atol=5e-3, rtol=0)
    ranks = S.sinkhorn_rank(xs, **kw)
    hard = torch.argsort(torch.argsort(xs, dim=-1), dim=-1).double() + 1
    torch.testing.assert_close(ranks, hard, atol=5e-2, rtol=0)
    # and with the squash, at epsilon 1e-3
    ranks_sq = S.sinkhorn_rank(x, epsilon=1e-3, threshold=1e-4, max_iter=50000)
    torch.testing.assert_close(ranks_sq, hard, atol=0.3, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_topk_rows_agree_with_full_plan(k):
    x = well_separated(3, 6)
    kw = dict(epsilon=1e-3, threshold=1e-4, max_iter=50000)
    topk = S.sinkhorn_topk(x, k, **kw)
    full = S.sinkhorn_permutation(x, **kw)
    torch.testing.assert_close(topk, full.flip(1)[:, :k], atol=2e-2, rtol=0)
    mask = S.sinkhorn_topk_mask(x, k, **kw)
    torch.testing.assert_close(mask, topk.sum(1), atol=2e-2, rtol=0)
    hard_mask = (torch.argsort(torch.argsort(x, -1), -1) >= 6 - k).double()
    torch.testing.assert_close(mask, hard_mask, atol=2e-2, rtol=0)


def test_sort_is_permutation_times_x():
    x = torch.randn(3, 7, dtype=torch.float64)
    P = S.sinkhorn_permutation(x)
    torch.testing.assert_close(S.sinkhorn_sort(x), (P @ x.unsqueeze(-1)).squeeze(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ott_hand_checked_values(dtype):
    x = torch.tensor([[1.0, 8.0, -1.0, 9.0, 5.0]], dtype=dtype)
    torch.testing.assert_close(S.sinkhorn_sort(x), torch.tensor([[-0.829, 0.846, 5.026, 8.189, 8.768]], dtype=dtype),
                               atol=2e-3, rtol=0)
    torch.testing.assert_close(S.sinkhorn_rank(x) - 1, torch.tensor([[0.919, 3.216, 0.086, 3.775, 2.010]], dtype=dtype),
                               atol=2e-3, rtol=0)


def test_rows_stop_independently():
    x = torch.randn(5, 6, dtype=torch.float64)
    x[2] *= 30  # a row that needs many more iterations
    batched = S.sinkhorn_sort(x)
    single = torch.cat([S.sinkhorn_sort(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-12, rtol=0)
    z = S.squash_forward(x, True)
    b = torch.full((6,), 1 / 6, dtype=x.dtype)
    _, _, iters = S.sinkhorn_potentials_torch(z, torch.linspace(0, 1, 6, dtype=x.dtype), b, 1e-2, 2000, 1e-3)
    assert iters.min() < iters.max() and bool((iters % S.CHECK_EVERY == 0).all())


@pytest.mark.parametrize("kind", KINDS)
def test_all_equal_rows_finite_and_nan_propagates(kind):
    x = torch.tensor([[2.0] * 5, [1.0, 3.0, float("nan"), 0.0, 2.0], [0.5, -1.0, 2.0, 0.0, 1.0]],
                     dtype=torch.float64, requires_grad=True)
    y = sinkhorn_op(kind, x, k=2)
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[2]).all()
    assert torch.isnan(y[1]).all()
    if kind == "sort":
        torch.testing.assert_close(y[0].detach(), x[0].detach())
    if kind == "rank":
        torch.testing.assert_close(y[0].detach(), torch.full((5,), 3.0, dtype=torch.float64))
    y[[0, 2]].sum().backward()
    assert torch.isfinite(x.grad[[0, 2]]).all()


@pytest.mark.parametrize("k", [1, 5])
def test_k_equal_n(k):
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    if k == 5:
        torch.testing.assert_close(S.sinkhorn_topk(x, 5), S.sinkhorn_permutation(x).flip(1))
        torch.testing.assert_close(S.sinkhorn_topk_mask(x, 5), torch.ones(2, 5, dtype=torch.float64))
    else:
        assert S.sinkhorn_topk(x, k).shape == (2, 1, 5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(max_iter=0), "max_iter"),
        (dict(threshold=0.0), "threshold"),
        (dict(k=0), "k must"),
        (dict(k=6), "k must"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_inputs(kwargs, match):
    x = torch.randn(2, 5)
    k = kwargs.pop("k", 2)
    with pytest.raises(ValueError, match=match):
        S.sinkhorn_topk(x, k, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_iter=2.5), "max_iter must be an int, got float 2.5"),
    (dict(max_iter=True), "max_iter must be an int, got a bool"),
    (dict(epsilon="0.1"), "epsilon must be a number, got str"),
    (dict(threshold=None), "threshold must be a number, got NoneType"),
    (dict(k=2.0), "k must be an int, got float 2.0"),
])
def test_wrong_argument_types(kwargs, match):
    x = torch.randn(2, 5)
    k = kwargs.pop("k", 2)
    with pytest.raises(TypeError, match=match):
        S.sinkhorn_topk(x, k, **kwargs)


def test_bad_shape_and_dtype():
    with pytest.raises(ValueError, match="2-D"):
        S.sinkhorn_sort(torch.randn(5))
    with pytest.raises(ValueError, match="float32 or float64"):
        S.sinkhorn_rank(torch.randn(2, 5).half())
