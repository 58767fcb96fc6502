"""method="permutahedron": soft sort, soft ranks and the sparse top-k mask by projection onto the permutahedron.

Oracles, each computed independently of fastsort's code:

* torchsort 0.1.10 itself (Blondel et al.'s method as its authors' port ships it): values and gradients
  of a shared cotangent, l2 and kl, strengths 0.01 .. 10, n = 1 .. 2000, ties; torchsort run in float64
  is the oracle of fastsort's float32 results too (torchsort's own float32 carries rounding of size
  ``n / eps`` in its soft sort);
* ``scipy.optimize.isotonic_regression`` for the l2 projections, assembled here from the definitions;
* a dense float64 PAV with kl pooling written in this file;
* finite differences (``torch.autograd.gradcheck``), and the limits ``eps -> 0`` (hard sort / ranks /
  top-k) and ``eps -> inf`` (the mean).

The kernels (numba, Triton) against the torch reference are in ``test_permutahedron_kernels.py``.
"""
import functools
import math
import warnings

import numpy as np
import pytest
import torch

import fastsort
from fastsort import functional
from fastsort import permutahedron as P
from fastsort.compat import torchsort as compat
from helpers import assert_close


METHOD = P.Permutahedron("permutahedron")
STRENGTHS = (0.01, 0.1, 1.0, 10.0)
SIZES = (1, 2, 7, 100, 2000)


def params(regularization="l2", strength=1.0):
    return METHOD.parse({"regularization": regularization, "regularization_strength": strength})


def backends_for(dtype):
    """The backends a dtype runs on: float32 on the torch reference and the numba kernels, float64 on torch."""
    return ("torch", "numba") if dtype == torch.float32 else ("torch",)


def oracle_backends(dtype):
    """The backends compared with torchsort: float32 on the numba kernels (the kernel tests hold the float32
    torch reference to them), float64 on torch."""
    return ("numba",) if dtype == torch.float32 else ("torch",)


def run(op, x, regularization="l2", strength=1.0, backend="torch", k=None):
    p = params(regularization, strength)
    if op == "topk_mask":
        return METHOD.topk_mask(x, k, p, backend)
    return getattr(METHOD, op)(x, p, backend)


def value_and_grad(fn, x, g):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


def rows(n, R=3, seed=0, ties=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(R, n, generator=gen, dtype=torch.float64)
    if ties and n >= 4:
        x[0, : n // 2] = x[0, 0]  # one long tie
        x[1] = torch.round(x[1] * 2) / 2  # many short ties
    g = torch.randn(R, n, generator=gen, dtype=torch.float64)
    return x.to(dtype), g.to(dtype)


def scale(op, x, strength):
    """The size of the numbers a row's projection handles: ``n / eps`` (the sort's weights), ``|x| / eps``
    (the ranks' inputs), ``n`` (the ranks), at least 1 -- float rounding is relative to it."""
    n = x.shape[-1]
    return max(1.0, n, (n / strength) if op == "sort" else float(x.abs().max()) / strength)


# --------------------------------------------------------------------------- torchsort 0.1.10
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("op", ["rank", "sort"])
def test_vs_torchsort(op, regularization, strength, dtype):
    """Values and gradients equal torchsort's (run in float64) for n = 1 .. 2000, with and without ties."""
    torchsort = pytest.importorskip("torchsort")  # (a failure in CI: conftest.py)
    ref_fn = getattr(torchsort, f"soft_{op}")
    for n in SIZES:
        for ties in ((False, True) if 4 <= n <= 100 else (False,)):
            x, g = rows(n, R=2 if n > 1000 else 3, seed=n, ties=ties, dtype=dtype)
            want, want_grad = value_and_grad(lambda t: ref_fn(t, regularization, strength), x.double(), g.double())
            tol = 1e-12 if dtype == torch.float64 else 4e-7 * math.sqrt(n)
            atol = tol * scale(op, x, strength)
            for backend in oracle_backends(dtype):
                got, got_grad = value_and_grad(lambda t: run(op, t, regularization, strength, backend), x, g)
                what = f"soft_{op} {regularization} eps={strength} n={n} ties={ties} {dtype} {backend}"
                assert_close(got.double(), want, atol=atol, rtol=tol, what=what)
                if ties and op == "sort":
                    # tied inputs in different blocks: which of them gets which gradient depends on the
                    # order the sort puts them in (torchsort's is unstable); each tie group's total does not
                    got_grad, want_grad_cmp = _tie_group_sums(x, got_grad), _tie_group_sums(x, want_grad)
                else:
                    want_grad_cmp = want_grad
                gscale = max(1.0, float(want_grad_cmp.abs().max()))
                got_grad = got_grad.double()
                if dtype == torch.float32:
                    # the gradient jumps where a block splits; float32 rounding decides the near-ties of
                    # PAV's comparisons differently from float64: compare on the elements whose block is
                    # the same in both, and these must be nearly all of them
                    moved = _blocks_differ(x, op, regularization, strength, backend)
                    assert int(moved.sum()) <= 0.01 * moved.numel(), f"{what}: {int(moved.sum())} elements moved"
                    if ties and op == "sort":  # a moved element changes its tie group's total
                        moved = _tie_group_sums(x, moved.double()) > 0
                    got_grad = torch.where(moved, want_grad_cmp, got_grad)
                assert_close(got_grad, want_grad_cmp, atol=tol * gscale * max(1.0, 1.0 / strength),
                             rtol=tol, what=what + " grad")


def _element_blocks(x, op, regularization, strength, backend):
    """``(first, last)`` sorted positions of each element's PAV block (rows ``x``, the backend's forward)."""
    if backend == "numba":
        from fastsort.kernels import cpu_isotonic

        _, perm, last, _ = cpu_isotonic.isotonic_fwd(x, op, regularization, strength, 0, True)
    else:
        _, perm, last, _ = P.reference_forward(x, op, regularization, strength, 0)
    perm, last = perm.long(), last.long()
    first = P._first_of_block(last)
    return (torch.empty_like(first).scatter_(-1, perm, first), torch.empty_like(last).scatter_(-1, perm, last))


def _blocks_differ(x32, op, regularization, strength, backend):
    """Elements whose block differs between the float32 run and the float64 reference of the same inputs."""
    f32, l32 = _element_blocks(x32, op, regularization, strength, backend)
    f64, l64 = _element_blocks(x32.double(), op, regularization, strength, "torch")
    return (f32 != f64) | (l32 != l64)


def _tie_group_sums(x, grad):
    """Each element's gradient replaced by the sum over the elements of its row equal to it."""
    same = (x.unsqueeze(-1) == x.unsqueeze(-2)).to(torch.float64)
    return (same @ grad.double().unsqueeze(-1)).squeeze(-1)


def test_conventions_match_torchsort():
    """Ascending ranks (1 = the smallest) and ascending sorted values, as torchsort; hand-checked values."""
    torchsort = pytest.importorskip("torchsort")  # (a failure in CI: conftest.py)
    x = torch.tensor([[3.0, 1.0, 2.0, 5.0]])
    assert_close(run("rank", x, strength=1e-3), torch.tensor([[3.0, 1.0, 2.0, 4.0]]), atol=1e-5)
    assert_close(run("sort", x, strength=1e-3), torch.tensor([[1.0, 2.0, 3.0, 5.0]]), atol=1e-5)
    # eps = 10: the ranks collapse towards (n + 1) / 2 = 2.5 keeping the order of x / eps: x / 10 - mean + 2.5
    assert_close(run("rank", x, strength=10.0), x / 10 - x.mean() / 10 + 2.5, atol=1e-6)
    for op in ("rank", "sort"):
        for reg in ("l2", "kl"):
            assert_close(run(op, x, reg, 10.0), getattr(torchsort, f"soft_{op}")(x, reg, 10.0), atol=1e-6)


def test_descending_is_negated_sort_of_negated():
    """For the public op's ``descending=True``: Blondel's descending soft sort of ``x`` (the projection
    of ``rho / eps`` onto ``P(x)``) is ``-soft_sort(-x)`` for both regularizations; for l2 (and only
    l2) it is also ``soft_sort(x).flip(-1)``."""
    x, _ = rows(9, R=4, seed=3)
    eps = 5.0  # large enough for blocks to form (the sort pools where gaps of x exceed 1 / eps)
    for reg in ("l2", "kl"):
        desc = _blondel_descending(x, reg, eps)
        assert_close(-run("sort", -x, reg, eps), desc, atol=1e-12, what=reg)
    assert_close(run("sort", x, "l2", eps).flip(-1), _blondel_descending(x, "l2", eps), atol=1e-12)
    flipped_kl = run("sort", x, "kl", eps).flip(-1)
    assert (flipped_kl - _blondel_descending(x, "kl", eps)).abs().max() > 0.1  # a different quantity


def _blondel_descending(x, reg, eps):
    """``P(rho / eps, x)`` per row: the decreasing soft sort of the paper (l2: dense isotonic via scipy;
    kl: the dense PAV below), written from the definition."""
    out = []
    n = x.shape[-1]
    rho = np.arange(n, 0, -1, dtype=np.float64)
    for row in x.numpy():
        w = np.sort(row)[::-1]  # the permutahedron's vector, decreasing
        z = rho / eps  # already decreasing: sigma = identity
        if reg == "l2":
            v = _scipy_isotonic_decreasing(z - w)
        else:
            v = dense_kl_pav(z, w)
        out.append(z - v)
    return torch.tensor(np.array(out))


# --------------------------------------------------------------------------- independent references
def _scipy_isotonic_decreasing(y):
    from scipy.optimize import isotonic_regression

    return isotonic_regression(y, increasing=False).x


def dense_kl_pav(y, w):
    """argmin over non-increasing v of sum(exp(y - v)) + <exp(w), v>, by the textbook PAV: merge the first
    adjacent violating pair until none is left, each block's value LSE(y_B) - LSE(w_B) computed densely."""
    blocks = [[i] for i in range(len(y))]

    def value(b):
        return np.logaddexp.reduce(y[b]) - np.logaddexp.reduce(w[b])

    merged = True
    while merged:
        merged = False
        for j in range(len(blocks) - 1):
            if value(blocks[j]) <= value(blocks[j + 1]):
                blocks[j:j + 2] = [blocks[j] + blocks[j + 1]]
                merged = True
                break
    v = np.empty(len(y))
    for b in blocks:
        v[b] = value(b)
    return v


def _projection_reference(op, x, reg, eps, k=None):
    """The operators assembled from the definitions with numpy: sort, isotonic regression (scipy for l2,
    :func:`dense_kl_pav` for kl), unsort."""
    n = x.shape[-1]
    rho = np.arange(n, 0, -1, dtype=np.float64)
    out = []
    for row in x.numpy():
        if op == "sort":  # -P(rho / eps, -x)
            s = np.sort(-row)[::-1]
            z = rho / eps
            v = _scipy_isotonic_decreasing(z - s) if reg == "l2" else dense_kl_pav(z, s)
            out.append(-(z - v))
            continue
        z = row / eps
        order = np.argsort(-z, kind="stable")
        s = z[order]
        w = rho if op == "rank" else (np.arange(n) < k).astype(np.float64)
        if reg == "l2":
            proj = s - _scipy_isotonic_decreasing(s - w)
        else:
            proj = np.exp(s - dense_kl_pav(s, np.log(w)))
        o = np.empty(n)
        o[order] = proj
        out.append(o)
    return torch.tensor(np.array(out))


@pytest.mark.parametrize("strength", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("op,reg", [("rank", "l2"), ("sort", "l2"), ("topk_mask", "l2"), ("rank", "kl"),
                                    ("sort", "kl")])
def test_vs_scipy_and_dense_kl(op, reg, strength):
    pytest.importorskip("scipy")
    for n in (1, 3, 8, 60):
        x, _ = rows(n, R=4, seed=10 + n, ties=True)
        k = max(1, n // 3)
        want = _projection_reference(op, x, reg, strength, k)
        for backend in ("torch", "numba"):
            xx = x if backend == "torch" else x.float()
            got = run(op, xx, reg, strength, backend, k=k).double()
            tol = 1e-12 if backend == "torch" else 2e-6
            assert_close(got, want, atol=tol * scale(op, x, strength), rtol=tol, what=f"{op} {reg} n={n} {backend}")


def test_isotonic_blocks_solve_the_isotonic_problem():
    """The reference solver's block values against scipy, on raw isotonic problems (the l2 rank's
    ``y = s - rho``), including long pooling cascades (a cluster and a far outlier)."""
    pytest.importorskip("scipy")
    gen = torch.Generator().manual_seed(5)
    s = torch.sort(torch.randn(6, 300, generator=gen, dtype=torch.float64) * 0.01, descending=True).values
    s[:3, 0] += 400.0  # outliers: a block that absorbs its neighbours one per round
    s[3] = torch.linspace(50, -50, 300, dtype=torch.float64)  # nothing to pool
    v = P.isotonic_blocks(s, "rank", "l2", 1.0)[0]
    n = s.shape[-1]
    rho = torch.arange(n, 0, -1, dtype=torch.float64)
    want = torch.tensor(np.array([_scipy_isotonic_decreasing(row) for row in (s - rho).numpy()]))
    assert_close(v, want, atol=1e-10, rtol=1e-12)


# --------------------------------------------------------------------------- gradients, limits, NaN
@pytest.mark.parametrize("op,reg", [("rank", "l2"), ("sort", "l2"), ("topk_mask", "l2"), ("rank", "kl"),
                                    ("sort", "kl")])
def test_gradcheck(op, reg):
    """Finite differences in float64, at inputs away from ties and from the strengths where blocks change."""
    x = torch.tensor([[0.31, -1.20, 2.05, 0.77, -0.45, 1.52],
                      [1.10, 0.20, -0.70, 3.00, -2.10, 0.57]], dtype=torch.float64, requires_grad=True)
    for strength in (0.3, 1.0, 4.0):
        assert torch.autograd.gradcheck(lambda t: run(op, t, reg, strength, k=2), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_limits(dtype):
    """eps -> 0: the hard sort, ranks and top-k mask; eps -> inf: the mean (l2 and kl ranks), and for the kl
    sort its own limit -log mean exp(-x)."""
    x, _ = rows(40, R=3, seed=7, dtype=dtype)
    n = x.shape[-1]
    hard_ranks = (torch.argsort(torch.argsort(x, -1), -1) + 1).to(dtype)
    top5 = torch.zeros_like(x).scatter_(-1, torch.topk(x, 5, -1).indices, 1.0)
    for backend in backends_for(dtype):
        for reg in ("l2", "kl"):
            assert_close(run("sort", x, reg, 1e-5, backend), torch.sort(x, -1).values, atol=1e-5, what=reg)
            assert_close(run("rank", x, reg, 1e-5, backend), hard_ranks, atol=1e-4, what=reg)
            assert_close(run("rank", x, reg, 1e7, backend), torch.full_like(x, (n + 1) / 2), atol=1e-4, what=reg)
        assert_close(run("topk_mask", x, "l2", 1e-5, backend, k=5), top5, atol=1e-6)
        assert_close(run("topk_mask", x, "l2", 1e7, backend, k=5), torch.full_like(x, 5 / n), atol=1e-6)
        assert_close(run("sort", x, "l2", 1e7, backend), x.mean(-1, keepdim=True).expand_as(x), atol=1e-4)
        soft_min = math.log(n) - torch.logsumexp(-x, -1, keepdim=True)
        assert_close(run("sort", x, "kl", 1e7, backend), soft_min.expand_as(x), atol=1e-4)


def test_topk_mask_is_a_sparse_mask():
    x, _ = rows(50, R=4, seed=8, dtype=torch.float32)
    for strength in (0.1, 1.0):
        m = run("topk_mask", x, "l2", strength, "numba", k=7)
        assert_close(m.sum(-1), torch.full((4,), 7.0), atol=1e-4)
        assert bool(((m >= -1e-6) & (m <= 1 + 1e-6)).all())
        assert int((m == 0).sum()) > 0 and int((m == 1).sum()) > 0  # sparse: exact zeros and ones


def test_kl_gradients_finite_where_torchsort_overflows():
    """torchsort issue #63: its kl backward evaluates exp(s) / sum(exp(s)) with s = x / eps, which overflows
    in float32 once x / eps > 88 (here 200): NaN gradients.  fastsort's weights exp(s_j - LSE(s_B)) do not."""
    torchsort = pytest.importorskip("torchsort")  # (a failure in CI: conftest.py)
    x = torch.tensor([[1.0, 2.0, 0.5, 1.5]])
    g = torch.tensor([[0.3, -1.0, 2.0, 0.7]])
    _, ts_grad = value_and_grad(lambda t: torchsort.soft_rank(t, "kl", 0.01), x, g)
    assert bool(torch.isnan(ts_grad).any()), "torchsort's kl gradient is no longer NaN here (issue #63 fixed?)"
    want, want_grad = value_and_grad(lambda t: torchsort.soft_rank(t, "kl", 0.01), x.double(), g.double())
    for backend in ("torch", "numba"):
        got, got_grad = value_and_grad(lambda t: run("rank", t, "kl", 0.01, backend), x, g)
        assert bool(torch.isfinite(got_grad).all()), backend
        assert_close(got.double(), want, atol=1e-4, what=backend)
        assert_close(got_grad.double(), want_grad, atol=1e-4, what=backend)


@pytest.mark.parametrize("op,reg", [("rank", "l2"), ("sort", "kl"), ("topk_mask", "l2")])
def test_nan_rows(op, reg):
    """A row holding a NaN gives a NaN row and NaN gradients; the other rows are untouched."""
    for dtype in (torch.float32, torch.float64):
        x, g = rows(9, R=3, seed=9, dtype=dtype)
        x[1, 4] = math.nan
        for backend in backends_for(dtype):
            y, grad = value_and_grad(lambda t: run(op, t, reg, 0.5, backend, k=3), x, g)
            clean, clean_grad = value_and_grad(lambda t: run(op, t, reg, 0.5, backend, k=3), x[[0, 2]], g[[0, 2]])
            assert bool(torch.isnan(y[1]).all()) and bool(torch.isnan(grad[1]).all()), backend
            assert_close(y[[0, 2]], clean, what=backend)
            assert_close(grad[[0, 2]], clean_grad, what=backend)


@pytest.mark.parametrize("op,reg", [("rank", "l2"), ("rank", "kl"), ("topk_mask", "l2")])
@pytest.mark.parametrize("strength", [1.0, 1e32])
def test_cpu_kernels_put_in_the_stand_ins_themselves(op, reg, strength, monkeypatch):
    """The rank and top-k mask on the CPU kernels take +-inf as they are (no host-side test): the same
    values and gradients as the torch path, which gets fastsort.functional's finite stand-ins -- tied
    infinities (one block), a row of infinities only, an infinity beside a NaN (NaN row), and a strength
    so large that the stand-ins pool with finite entries -- with zero gradient at every infinity."""
    inf = math.inf
    x = torch.tensor([[1.0, inf, -inf, 3.0, inf, 2.0, 0.5],
                      [inf, inf, inf, -inf, -inf, inf, inf],
                      [1.0, 2.0, math.nan, -inf, 0.0, 0.0, 4.0],
                      [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, -inf],
                      [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    fn = fastsort.soft_rank if op == "rank" else functools.partial(fastsort.soft_topk_mask, k=3)
    with monkeypatch.context() as patch:  # the numba path makes no host-side finiteness test
        patch.setattr(functional, "finite_on_host", lambda t: pytest.fail("host-side finiteness test"))
        got, got_grad = value_and_grad(lambda t: fn(t, method="permutahedron", backend="numba", regularization=reg,
                                                    regularization_strength=strength), x, g)
    want, want_grad = value_and_grad(lambda t: fn(t, method="permutahedron", backend="torch", regularization=reg,
                                                  regularization_strength=strength), x, g)
    ok = ~torch.isnan(x).any(-1)
    assert_close(got[ok], want[ok], atol=1e-5, rtol=1e-5)
    assert_close(got_grad[ok], want_grad[ok], atol=1e-6, rtol=1e-5)
    assert bool((got_grad[torch.isinf(x) & ok[:, None]] == 0).all())
    assert bool(torch.isnan(got[~ok]).all() and torch.isnan(got_grad[~ok]).all())  # NaN in, NaN out
    if op == "rank" and strength == 1.0:  # tied infinities: the mean of their hard ranks
        assert_close(got[1], torch.tensor([5.0, 5.0, 5.0, 1.5, 1.5, 5.0, 5.0]))


@pytest.mark.parametrize("reg", ["l2", "kl"])
def test_soft_sort_with_infinities_projects_the_finite_entries_alone(reg):
    """soft_sort of a row with a -inf and b +inf entries: exactly -inf at the a lowest and +inf at the b highest
    positions, the finite positions the soft sort of the finite entries alone (no isotonic block pools across
    an infinity), zero gradient at the infinities -- on every backend that runs here, ascending and descending."""
    x = torch.tensor([[1.0, -math.inf, 3.0, 0.0, 2.0, 0.5],
                      [math.inf, -1.0, -math.inf, 2.0, math.inf, 0.25],
                      [-math.inf, -math.inf, 4.0, 4.0, -2.0, math.inf]], dtype=torch.float64)
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    from fastsort._dispatch import interpreter_enabled, triton_available

    triton = ("triton",) if interpreter_enabled() and triton_available() else ()  # its kernels, interpreted
    for dtype in (torch.float32, torch.float64):
        for backend in backends_for(dtype) + (triton if dtype == torch.float32 else ()):
            for descending in (False, True):
                xd = x.to(dtype).requires_grad_()
                y = fastsort.soft_sort(xd, "permutahedron", backend=backend, descending=descending,
                                       regularization=reg, regularization_strength=0.7)
                (grad,) = torch.autograd.grad((y.nan_to_num(posinf=0.0, neginf=0.0) * g.to(dtype)).sum(), xd)
                for r in range(3):
                    fin = torch.isfinite(x[r])
                    a, b = int((x[r] == -math.inf).sum()), int((x[r] == math.inf).sum())
                    lo, hi = (b, 6 - a) if descending else (a, 6 - b)
                    xf = x[r, fin].to(dtype)[None].requires_grad_()
                    alone = fastsort.soft_sort(xf, "permutahedron", backend=backend, descending=descending,
                                               regularization=reg, regularization_strength=0.7)
                    (alone_grad,) = torch.autograd.grad((alone * g[r, lo:hi].to(dtype)).sum(), xf)
                    what = f"{backend} {dtype} descending={descending} row {r}"
                    assert bool((y[r, :lo] == (math.inf if descending else -math.inf)).all()), what
                    assert bool((y[r, hi:] == (-math.inf if descending else math.inf)).all()), what
                    assert_close(y[r, lo:hi], alone[0], what=what)
                    assert_close(grad[r, fin], alone_grad[0], what=what)
                    assert bool((grad[r, ~fin] == 0).all()), what


# --------------------------------------------------------------------------- the method's contract
def test_parameters_are_checked():
    assert METHOD.parse({}) == {"regularization": "l2", "regularization_strength": 1.0}
    with pytest.raises(ValueError, match=r"regularization must be one of \('l2', 'kl'\)"):
        METHOD.parse({"regularization": "entropy"})
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="regularization_strength must be a finite number > 0"):
            METHOD.parse({"regularization_strength": bad})
    with pytest.raises(TypeError, match="regularization_strength must be a number"):
        METHOD.parse({"regularization_strength": "1"})
    with pytest.raises(TypeError, match="unexpected parameter"):
        METHOD.parse({"tau": 1.0})
    with pytest.raises(ValueError, match="regularization='l2'"):
        METHOD.topk_mask(torch.randn(2, 5), 2, params("kl"), "torch")
    with pytest.raises(ValueError, match="backend must be one of"):  # the dispatch checks it for every method
        fastsort.soft_rank(torch.randn(2, 5), "permutahedron", backend="cuda")
    assert set(METHOD.ops) == {"sort", "rank", "topk_mask"} and set(METHOD.kernels) == {"triton", "numba"}
    assert "permutation" in METHOD.limitation or "P" in METHOD.limitation


def test_non_contiguous_and_empty_rows():
    x = torch.randn(7, 12).t()  # [12, 7], not contiguous
    for backend in ("torch", "numba"):
        assert_close(run("rank", x, backend=backend), run("rank", x.contiguous(), backend=backend))
        empty = run("rank", torch.randn(0, 5), backend=backend)
        assert empty.shape == (0, 5)


def test_missing_numba_falls_back_to_torch_once(monkeypatch):
    """Where numba does not import, ``auto`` runs the torch backend with one warning and an explicit
    ``backend="numba"`` is a clear error (the dispatch rule of every method with CPU kernels)."""
    from fastsort import _dispatch

    monkeypatch.setattr(_dispatch, "_numba_status", lambda: "numba does not import (test)")
    _dispatch._auto_picks_numba.cache_clear()
    x = torch.randn(3, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = fastsort.soft_rank(x, "permutahedron")
        fastsort.soft_rank(x, "permutahedron")
    assert sum("numba does not import (test)" in str(w.message) for w in caught) == 1
    assert_close(a, fastsort.soft_rank(x, "permutahedron", backend="torch"))
    with pytest.raises(ValueError, match="backend='numba' is not available: numba does not import"):
        fastsort.soft_rank(x, "permutahedron", backend="numba")
    _dispatch._auto_picks_numba.cache_clear()


def test_torch_compile_traces_the_op():
    """The op is one custom op for torch.compile(fullgraph=True): values and gradients as in eager mode."""
    x, g = rows(16, R=4, seed=11, dtype=torch.float32)

    def f(t):
        return run("rank", t, "kl", 0.5, "numba") * 2 + run("sort", t, "l2", 0.5, "torch")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    want, want_grad = value_and_grad(f, x, g)
    got, got_grad = value_and_grad(compiled, x, g)
    assert_close(got, want)
    assert_close(got_grad, want_grad)


# --------------------------------------------------------------------------- the torchsort drop-in
def test_compat_torchsort():
    torchsort = pytest.importorskip("torchsort")  # (a failure in CI: conftest.py)
    x, g = rows(30, R=5, seed=12, dtype=torch.float32)
    for name in ("soft_rank", "soft_sort"):
        ours, theirs = getattr(compat, name), getattr(torchsort, name)
        for reg in ("l2", "kl"):
            for args in ((), (reg,), (reg, 0.3)):
                a, ga = value_and_grad(lambda t: ours(t, *args), x, g)
                b, gb = value_and_grad(lambda t: theirs(t, *args), x.double(), g.double())
                assert_close(a.double(), b, atol=2e-5, rtol=1e-6, what=f"{name}{args}")
                assert_close(ga.double(), gb, atol=2e-5, rtol=1e-6, what=f"{name}{args} grad")
        a = ours(x, regularization="kl", regularization_strength=0.3)
        assert_close(a, ours(x, "kl", 0.3))
        # beyond torchsort: more dims (the last is sorted), 1-D, half precision
        x3 = x.reshape(5, 3, 10)
        assert_close(ours(x3), ours(x3.reshape(15, 10)).reshape(5, 3, 10))
        assert_close(ours(x[0]), ours(x[:1])[0])
        for half in (torch.float16, torch.bfloat16):
            h = x.to(half)
            assert ours(h).dtype == half
            assert_close(ours(h), ours(h.float()).to(half))
        with pytest.raises(ValueError, match="'regularization' should be a 'l2' or 'kl'"):
            ours(x, "l1")
        with pytest.raises(ValueError, match="regularization_strength"):
            ours(x, "l2", 0.0)
        with pytest.raises(TypeError):
            ours(x.long())


# --------------------------------------------------------------------------- the public ops
needs_registry = pytest.mark.skipif("permutahedron" not in __import__("fastsort").METHODS,
                                    reason="method 'permutahedron' is not in fastsort.METHODS yet")


@needs_registry
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_public_ops(dtype):
    """``fastsort.soft_rank / soft_sort / soft_topk_mask(..., method="permutahedron")`` over leading dims and
    ``dim``: the method's rows moved, computed in float32 (float64 kept) and restored."""
    import fastsort

    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 9, 3, generator=gen).to(dtype)  # sorted along dim=1
    rows_ = x.movedim(1, -1).reshape(-1, 9).to(torch.float64 if dtype == torch.float64 else torch.float32)
    kw = dict(regularization="kl", regularization_strength=0.5)
    for backend in ("auto", "torch", "numba"):
        r = fastsort.soft_rank(x, "permutahedron", dim=1, backend=backend, **kw)
        assert r.dtype == dtype and r.shape == x.shape
        want = run("rank", rows_, "kl", 0.5).reshape(2, 3, 9).movedim(-1, 1).to(dtype)
        assert_close(r, want, atol=1e-6 if dtype in (torch.float32, torch.float64) else 1e-2)
        s = fastsort.soft_sort(x, "permutahedron", dim=1, backend=backend, regularization_strength=0.5)
        want = run("sort", rows_, "l2", 0.5).reshape(2, 3, 9).movedim(-1, 1).to(dtype)
        assert_close(s, want, atol=1e-6 if dtype in (torch.float32, torch.float64) else 1e-2)
        desc = fastsort.soft_sort(x, "permutahedron", dim=1, descending=True, backend=backend,
                                  regularization_strength=0.5)
        assert_close(desc, s.flip(1))  # l2: the descending sort is the ascending one reversed
        m = fastsort.soft_topk_mask(x, 3, "permutahedron", dim=1, backend=backend, regularization_strength=0.5)
        want = run("topk_mask", rows_, "l2", 0.5, k=3).reshape(2, 3, 9).movedim(-1, 1).to(dtype)
        assert_close(m, want, atol=1e-6 if dtype in (torch.float32, torch.float64) else 1e-2)
    with pytest.raises(ValueError, match="permutahedron"):
        fastsort.soft_topk(x.float(), 2, "permutahedron")
    with pytest.raises(ValueError, match="regularization='l2'"):
        fastsort.soft_topk_mask(x.float(), 2, "permutahedron", regularization="kl")


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_tied_infinities_get_the_mean_of_their_hard_ranks(backend):
    """t tied +inf (stand-ins of ~1e30 pooled in one block): each gets the mean of the t highest ranks, for every
    t (float32 block sums of such values were off by ~1e23 for t = 3, 6, 7, 8 on the torch path)."""
    for t in range(2, 9):
        x = torch.tensor([[math.inf] * t + [0.0, 1.0, -math.inf]])
        n = x.shape[1]
        y = fastsort.soft_rank(x, method="permutahedron", backend=backend)
        assert_close(y, torch.tensor([[n - (t - 1) / 2] * t + [2.0, 3.0, 1.0]]), what=f"t={t}")
