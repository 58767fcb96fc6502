"""Torch reference of Sinkhorn sorting (fastsort/sinkhorn.py).

The oracle here is a dense float64 implementation written independently below:
plain autograd through a fixed number of log-domain Sinkhorn iterations, no
early stopping, no hand-written backward.
"""
import math
import warnings

import pytest
import torch

import fastsort
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


# --------------------------------------------------------------------------- convergence
X5 = [[1.0, 8.0, -1.0, 9.0, 5.0]]


@pytest.fixture
def convergence_is_an_error():
    """Any SinkhornConvergenceWarning fails the test (the calls below must converge)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.SinkhornConvergenceWarning)
        yield


def test_small_epsilon_topk_converges(convergence_is_an_error):
    """Issue example: at epsilon = 1e-4 and the default max_iter the top-2 rows summed to 1.5 and rank 2
    went to the value 5; epsilon scaling converges (rows sum to 1, rank 2 is the value 8)."""
    x = torch.tensor(X5)
    P = fastsort.soft_topk(x, 2, method="sinkhorn", epsilon=1e-4, backend="torch")
    torch.testing.assert_close(P.sum(-1), torch.ones(1, 2), atol=2e-3, rtol=0)
    torch.testing.assert_close(P, torch.nn.functional.one_hot(torch.tensor([[3, 1]]), 5).float(), atol=2e-3, rtol=0)


def test_small_epsilon_mask_converges(convergence_is_an_error):
    """Issue example: soft_topk_mask(k=2, epsilon=1e-5) gave [0, 1.0001, 0, 1.0001, 1.0001] (3 ones)."""
    y = fastsort.soft_topk_mask(torch.tensor(X5), 2, method="sinkhorn", epsilon=1e-5, backend="torch")
    torch.testing.assert_close(y, torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]]), atol=2e-3, rtol=0)


def test_tiny_epsilon_float32_warns_float64_converges():
    """Issue example: soft_sort at epsilon = 1e-8 left the input range and was not monotone, silently.
    float32 cannot resolve it (the warning says so, strict raises); float64 converges to the hard sort."""
    x = torch.tensor(X5)
    with pytest.warns(S.SinkhornConvergenceWarning, match=r"did not converge at epsilon=1e-08") as rec:
        fastsort.soft_sort(x, method="sinkhorn", epsilon=1e-8, backend="torch")
    w = rec[0].message
    assert w.rows == (0,) and len(w.errors) == 1 and w.errors[0] > 2 * S.DEFAULT_THRESHOLD
    assert rec[0].filename == __file__  # reported at the caller's line, not inside fastsort
    with pytest.raises(S.SinkhornConvergenceError, match="did not converge") as err:
        fastsort.soft_sort(x, method="sinkhorn", epsilon=1e-8, strict=True, backend="torch")
    assert err.value.rows == (0,)
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.SinkhornConvergenceWarning)
        y = fastsort.soft_sort(x.double(), method="sinkhorn", epsilon=1e-8, backend="torch")
    torch.testing.assert_close(y, x.double().sort(-1).values, atol=1e-6, rtol=0)


def test_warning_once_per_call_site():
    """The message is stable for a call site's parameters: Python's default filter shows it once there."""
    x = torch.tensor(X5)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("default")
        for row in (x, x * 2, x - 1):  # other data, same call site and parameters
            S.sinkhorn_sort(row, epsilon=1e-8)
    hits = [w for w in rec if issubclass(w.category, S.SinkhornConvergenceWarning)]
    assert len(hits) == 1, [str(w.message) for w in rec]
    msg = str(hits[0].message)
    for fix in ("larger epsilon", "max_iter", "float64", "strict=True"):
        assert fix in msg


def test_budget_exhausted_warns_and_nan_rows_do_not():
    """An explicit max_iter too small for the row is reported; a NaN row is NaN by design, not a failure."""
    x = torch.tensor([X5[0], [1.0, float("nan"), 0.0, 2.0, 3.0]], dtype=torch.float64)
    with pytest.warns(S.SinkhornConvergenceWarning) as rec:
        S.sinkhorn_topk(x, 2, epsilon=1e-3, max_iter=5)
    assert rec[0].message.rows == (0,)
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.SinkhornConvergenceWarning)
        y = S.sinkhorn_topk(x, 2, epsilon=1e-3)  # the automatic budget
    assert torch.isnan(y[1]).all() and torch.isfinite(y[0]).all()


def test_automatic_budget_and_schedule():
    """max_iter=None: 2000 from epsilon = 1e-2 on (unchanged results there: no epsilon scaling), growing as
    1/epsilon below, capped, plus the epsilon-scaling iterations; explicit values are kept."""
    assert S.anneal_schedule(1e-2) == (1e-2, 0) and S.anneal_schedule(0.5) == (0.5, 0)
    eps0, A = S.anneal_schedule(1e-4)
    assert eps0 == S.ANNEAL_START and S.ANNEAL_DECAY ** A <= 1e-4 < S.ANNEAL_DECAY ** (A - 1)
    assert S.auto_max_iter(1e-2) == S.auto_max_iter(1.0) == S.DEFAULT_MAX_ITER
    assert S.auto_max_iter(2e-3) == 10000 + S.anneal_schedule(2e-3)[1]
    assert S.auto_max_iter(1e-6) == S.MAX_AUTO_ITER + S.anneal_schedule(1e-6)[1]
    p = fastsort.METHODS["sinkhorn"].parse({"epsilon": 2e-3})
    assert p["max_iter"] == S.auto_max_iter(2e-3) and p["strict"] is False
    assert fastsort.METHODS["sinkhorn"].parse({"max_iter": 7})["max_iter"] == 7
    with pytest.raises(TypeError, match="strict must be a bool"):
        fastsort.METHODS["sinkhorn"].parse({"strict": 1})


@pytest.mark.parametrize("kind", ["sort", "rank", "topk", "mask"])
def test_epsilon_scaling_converges_where_plain_iterations_do_not(kind):
    """At epsilon = 3e-3 (float64, threshold 1e-6) the default epsilon schedule converges within 12000
    iterations where plain iterations at the target (from the same start) do not: its plan has marginal
    error <= 2e-6 and plain iterations are still on their way to it."""
    x = torch.tensor([X5[0], [0.3, -1.2, 0.8, 2.0, -0.4]], dtype=torch.float64)
    n, k = 5, (2 if kind in ("topk", "mask") else None)
    b, t, _ = S._target_tensors(kind, n, k, x.dtype, x.device)
    z = S.squash_forward(x, True)
    f0 = S.dualsort_init_torch(z, t) if S.uses_sort_init(kind, k, n) else None
    eps, budget = 3e-3, 12000
    assert S.anneal_schedule(eps)[1] > 0
    f, g, iters = S.sinkhorn_potentials_torch(z, t, b, eps, budget, 1e-6, f0)
    assert bool((iters < budget).all()), iters
    f1, g1, iters1 = S.sinkhorn_potentials_torch(z, t, b, eps, budget, 1e-6, f0, anneal=(eps, 0))
    assert bool((iters1 == budget).any()), iters1
    T, T1 = S._plan(z, t, f, g, eps), S._plan(z, t, f1, g1, eps)
    assert bool((S.plan_error(T, b) <= 2e-6).all()) and bool((S.plan_error(T1, b) > 1e-6).any())
    torch.testing.assert_close(T, T1, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- scale and infinities
@pytest.mark.parametrize("kind", KINDS)
def test_squash_is_scale_safe(kind):
    """Issue: in float32, |x| >= ~1e19 overflowed (x - mean)^2 and every rank became 3.  The squash divides
    by a power of two first: scaling by 2^64 changes no bit, by 1e19 nothing beyond rounding."""
    x = torch.tensor([X5[0], [0.5, -2.0, 3.0, 0.0, 1.0]])
    ref = sinkhorn_op(kind, x, k=2, epsilon=0.1)
    big = sinkhorn_op(kind, x * 2.0 ** 64, k=2, epsilon=0.1)
    scale = 2.0 ** 64 if kind == "sort" else 1.0
    assert torch.equal(big / scale, ref)
    torch.testing.assert_close(sinkhorn_op(kind, x * 1e19, k=2, epsilon=0.1) / (1e19 if kind == "sort" else 1.0),
                               ref, atol=1e-5, rtol=1e-5)


def test_infinities_squash_to_the_ends_and_get_no_gradient():
    """+-inf: the squash's statistics over the finite entries only (their z as without the infinities),
    +inf at z = 1 and -inf at z = 0; the sorted values read the finite extremes; zero gradient to them."""
    inf = float("inf")
    x = torch.tensor([[0.3, inf, -1.2, -inf, 2.0, 0.7]], dtype=torch.float64)
    fin = [0, 2, 4, 5]
    z = S.squash_forward(x, True)
    assert z[0, 1] == 1 and z[0, 3] == 0
    torch.testing.assert_close(z[:, fin], S.squash_forward(x[:, fin], True))
    ranks = S.sinkhorn_rank(x, epsilon=1e-2)
    assert ranks[0, 1] == ranks.max() and ranks[0, 3] == ranks.min()
    xx = x.clone().requires_grad_(True)
    y = S.sinkhorn_sort(xx, epsilon=0.1)
    assert torch.isfinite(y).all() and bool((y >= -1.2).all() and (y <= 2.0).all())
    (y * torch.arange(1.0, 7.0, dtype=torch.float64)).sum().backward()
    assert xx.grad[0, 1] == 0 and xx.grad[0, 3] == 0 and torch.isfinite(xx.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_with_infinities(kind):
    """The hand-written backward w.r.t. the finite entries of rows holding +-inf (the squash's statistics,
    the readout of the infinities as the finite extremes) against finite differences."""
    inf = float("inf")
    base = torch.tensor([[0.3, inf, -1.2, -inf, 2.0], [1.0, -0.5, inf, 0.1, 0.4]], dtype=torch.float64)
    fin = torch.isfinite(base)

    def fn(v):
        return sinkhorn_op(kind, base.masked_scatter(fin, v), k=2, epsilon=0.1, threshold=1e-13, max_iter=20000)

    v = base[fin].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (v,), eps=1e-6, atol=1e-6, rtol=1e-4)
