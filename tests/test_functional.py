"""Public functional ops (torch backend) against independent references.

* a dense float64 reference of every network (``helpers.dense_network``): per
  layer an ``n x n`` matrix built from the comparator list and the relaxation
  formulas of ``docs/design.md``, multiplied out (values and autograd gradients);
* the oracle packages (diffsort's dense sort, difftopk's dense top-k,
  difftopk's NeuralSort / SoftSort modules);
* ``torch.autograd.gradcheck`` (finite differences) in float64;
* hard-limit / structural invariants and hand-checked shapes;
* the validation messages.
"""
import functools

import pytest
import torch

import fastsort
from fastsort import _dispatch
import helpers
from helpers import dense_network, run_op

diffsort_functional = pytest.importorskip("diffsort.functional")
diffsort_networks = pytest.importorskip("diffsort.networks")
difftopk = pytest.importorskip("difftopk")

DISTS = ("logistic", "logistic_phi", "gaussian", "reciprocal", "cauchy", "optimal")
SORT_NETS = ("odd_even", "bitonic")
SOFTMAX_METHODS = ("neuralsort", "softsort")
FULL_OPS = ("soft_sort", "soft_permutation", "soft_rank", "soft_topk", "soft_topk_mask")
TOPK_OPS = ("soft_topk", "soft_topk_mask")
BE = "torch"


# --------------------------------------------------------------------------- references
def ops_from_dense(y, X, k):
    """Every public op's expected output from the dense ``(y, X)``."""
    n = X.shape[-1]
    P = X.transpose(-1, -2)  # row = output position, column = input
    return {
        "soft_sort": y,
        "soft_permutation": P,
        "soft_rank": X @ torch.arange(1, n + 1, dtype=X.dtype),
        "soft_topk": P.flip(-2)[..., :k, :],
        "soft_topk_mask": X[..., n - k:].sum(-1),
    }


def method_params(method, steepness=2.0, distribution="cauchy"):
    if method in SOFTMAX_METHODS:
        return dict(tau=1.0 / steepness)
    return dict(steepness=steepness, distribution=distribution)


def call(op, x, method, k=3, **kw):
    """Call public op ``op`` (``k`` only for the top-k ops), torch backend unless ``backend`` is given."""
    kw.setdefault("backend", BE)
    return run_op(op, x, method, k, **kw)


def spread_input(B, n, seed, dtype=torch.float64, gap=1.0):
    """Rows that are permutations of ``0, gap, 2 gap, ...`` plus a little noise: no near ties."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(B)]).to(dtype)
    return (perm + 0.3 * torch.rand(B, n, generator=g, dtype=dtype)) * gap


def vjp(out, x, seed):
    """``d <out, g> / dx`` for a random cotangent ``g`` fixed by ``seed`` (shared with the reference)."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    (gx,) = torch.autograd.grad((out * g).sum(), x, retain_graph=True)
    return gx


# this file's default tolerance (float64 results against float64 references); calls override it
assert_close = functools.partial(helpers.assert_close, atol=1e-9, rtol=1e-7)


# --------------------------------------------------------------------------- dense float64 reference
DENSE_CASES = (
    [(kind, d, n, None, FULL_OPS) for kind in SORT_NETS for d in DISTS for n in (6, 8)]
    + [("splitter_selection", d, n, k, TOPK_OPS) for d in DISTS for n, k in ((9, 3), (16, 5))]
)


@pytest.mark.parametrize("kind,distribution,n,k,ops", DENSE_CASES)
def test_ops_match_dense_reference(kind, distribution, n, k, ops):
    k = k or 3
    x = torch.randn(4, n, dtype=torch.float64, requires_grad=True)
    steep = 3.0
    y_ref, X_ref = dense_network(x, kind, distribution, steep, k if kind == "splitter_selection" else None)
    refs = ops_from_dense(y_ref, X_ref, k)
    for i, op in enumerate(ops):
        out = call(op, x, kind, k, steepness=steep, distribution=distribution)
        assert out.dtype == torch.float64 and out.shape == refs[op].shape, op
        assert_close(out, refs[op], what=f"{op} values")
        assert_close(vjp(out, x, i), vjp(refs[op], x, i), what=f"{op} gradient")
    if "soft_sort" in ops:
        desc = call("soft_sort", x, kind, steepness=steep, distribution=distribution, descending=True)
        assert_close(desc, y_ref.flip(-1))
        assert_close(vjp(desc, x, 7), vjp(y_ref.flip(-1), x, 7))


def test_art_lambda_is_used():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    y_ref, X_ref = dense_network(x, "bitonic", "logistic_phi", 2.0, art_lambda=0.6)
    out = fastsort.soft_permutation(x, "bitonic", steepness=2.0, distribution="logistic_phi", art_lambda=0.6,
                                    backend=BE)
    assert_close(out, X_ref.transpose(-1, -2))
    assert_close(vjp(out, x, 0), vjp(X_ref.transpose(-1, -2), x, 0))


# --------------------------------------------------------------------------- oracle packages


@pytest.mark.parametrize("kind", SORT_NETS)
@pytest.mark.parametrize("distribution", DISTS)
def test_sort_and_permutation_match_diffsort(kind, distribution):
    n = 11
    net = diffsort_networks.get_sorting_network(kind, n, "cpu")
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True) * 2
    y_ref, X_ref = diffsort_functional.sort(net, x, steepness=4.0, art_lambda=0.3, distribution=distribution)
    kw = dict(steepness=4.0, distribution=distribution, art_lambda=0.3)
    y = fastsort.soft_sort(x, kind, backend=BE, **kw)
    P = fastsort.soft_permutation(x, kind, backend=BE, **kw)
    assert_close(y, y_ref)
    assert_close(P, X_ref.transpose(-1, -2))
    assert_close(vjp(y, x, 1), vjp(y_ref, x, 1))
    assert_close(vjp(P, x, 2), vjp(X_ref.transpose(-1, -2), x, 2))


@pytest.mark.parametrize("kind", SORT_NETS)
@pytest.mark.parametrize("distribution", ["cauchy", "logistic", "optimal"])
def test_topk_matches_difftopk_dense(kind, distribution):
    n, k = 10, 4
    net = difftopk.get_sorting_network(kind, n, "cpu")
    x = torch.randn(3, n, requires_grad=True)  # difftopk's dense top-k runs in float32 only
    _, X_ref = difftopk.functional.topk(net, x, k, steepness=5.0, distribution=distribution)
    P = fastsort.soft_topk(x, k, kind, steepness=5.0, distribution=distribution, backend=BE)
    ref = X_ref.transpose(-1, -2).flip(-2)  # [B, k, n], top first
    assert_close(P, ref, atol=1e-5, rtol=1e-4)
    assert_close(vjp(P, x, 3), vjp(ref, x, 3), atol=1e-4, rtol=1e-4)


# difftopk's layout [B, n_in, n_pos] ascending, produced the way its loss does it
SOFTMAX_ORACLE = [
    ("neuralsort", dict(tau=0.5), lambda x: difftopk.NeuralSort(tau=0.5)(x)),
    ("neuralsort", dict(tau=2.0), lambda x: difftopk.NeuralSort(tau=2.0)(x)),
    ("softsort", dict(tau=0.5), lambda x: difftopk.SoftSort(tau=0.5)(-x).transpose(-2, -1)),
    ("softsort", dict(tau=2.0, pow=2.0), lambda x: difftopk.SoftSort(tau=2.0, pow=2.0)(-x).transpose(-2, -1)),
]


@pytest.mark.parametrize("method,params,oracle", SOFTMAX_ORACLE)
def test_neuralsort_softsort_match_difftopk(method, params, oracle):
    """fastsort's permutation is ``[B, n_pos, n_in]`` ascending; its top-k is the last rows, flipped."""
    n, k = 9, 4
    x = torch.randn(5, n, requires_grad=True)  # the modules are float32-only
    ref = oracle(x).transpose(-2, -1)
    P = fastsort.soft_permutation(x, method, backend=BE, **params)
    T = fastsort.soft_topk(x, k, method, backend=BE, **params)
    assert_close(P, ref, atol=1e-6, rtol=1e-5)
    assert_close(T, ref.flip(-2)[:, :k], atol=1e-6, rtol=1e-5)
    assert_close(vjp(P, x, 4), vjp(ref, x, 4), atol=1e-5, rtol=1e-4)
    assert_close(vjp(T, x, 5), vjp(ref.flip(-2)[:, :k], x, 5), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- gradcheck (finite differences)
GRADCHECK_OPS = ("soft_sort", "soft_topk", "soft_rank", "soft_permutation")
GRADCHECK_CASES = (
    [(m, d, op) for m in SORT_NETS for d in DISTS for op in GRADCHECK_OPS]
    + [("splitter_selection", d, op) for d in DISTS for op in TOPK_OPS]
    + [(m, None, op) for m in SOFTMAX_METHODS for op in GRADCHECK_OPS + ("soft_topk_mask",)]
)


@pytest.mark.parametrize("method,distribution,op", GRADCHECK_CASES)
def test_gradcheck(method, distribution, op):
    n = 6 if method == "splitter_selection" else 5
    x = spread_input(2, n, seed=n, gap=0.7).requires_grad_()
    params = method_params(method, 1.5, distribution)
    assert torch.autograd.gradcheck(lambda t: call(op, t, method, 2, **params), (x,), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- invariants
HARD_ATOL = {"logistic": 1e-6, "logistic_phi": 1e-6, "gaussian": 1e-6, "optimal": 5e-3, "cauchy": 2e-2,
             "reciprocal": 5e-2}
HARD_CASES = [(m, d) for m in SORT_NETS for d in DISTS] + [(m, None) for m in SOFTMAX_METHODS]


@pytest.mark.parametrize("method,distribution", HARD_CASES)
def test_hard_limit_sort_and_rank(method, distribution):
    n = 10
    x = spread_input(4, n, seed=1)
    params = dict(tau=1e-4) if distribution is None else dict(steepness=1e4, distribution=distribution)
    atol = HARD_ATOL.get(distribution, 1e-6)
    y = call("soft_sort", x, method, **params)
    r = call("soft_rank", x, method, **params)
    assert_close(y, torch.sort(x, dim=-1).values, atol=atol, rtol=0)
    hard_rank = (x.argsort(-1).argsort(-1) + 1).double()
    assert_close(r, hard_rank, atol=atol * n, rtol=0)
    assert_close(call("soft_sort", x, method, descending=True, **params), torch.sort(x, -1, descending=True).values,
                 atol=atol, rtol=0)


PERM_CASES = [(m, d) for m in SORT_NETS for d in DISTS] + [(m, None) for m in SOFTMAX_METHODS]


@pytest.mark.parametrize("method,distribution", PERM_CASES)
def test_permutation_is_stochastic(method, distribution):
    x = torch.randn(4, 9, dtype=torch.float64)
    P = call("soft_permutation", x, method, **method_params(method, 1.0, distribution))
    ones = torch.ones(4, 9, dtype=torch.float64)
    assert (P >= -1e-12).all()
    assert_close(P.sum(-1), ones)  # every output position is a convex mix of the inputs
    if distribution is not None:  # networks are doubly stochastic
        assert_close(P.sum(-2), ones)


TOPK_METHODS = SORT_NETS + SOFTMAX_METHODS


@pytest.mark.parametrize("method", TOPK_METHODS)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_topk_rows_are_permutation_rows(method, k):
    x = torch.randn(3, 7, dtype=torch.float64)
    params = method_params(method, 2.0, "logistic")
    P = call("soft_permutation", x, method, **params)
    T = call("soft_topk", x, method, k, **params)
    assert T.shape == (3, k, 7)
    assert_close(T, P.flip(-2)[:, :k])
    # the top-k rows applied to x are the k largest soft sorted values, largest first
    y = call("soft_sort", x, method, descending=True, **params)
    assert_close((T @ x.unsqueeze(-1)).squeeze(-1), y[:, :k])
    mask = call("soft_topk_mask", x, method, k, **params)
    assert_close(mask, T.sum(-2))
    assert_close(mask.sum(-1), torch.full((3,), float(k), dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_splitter_topk_mask_is_column_sum(k):
    x = torch.randn(3, 9, dtype=torch.float64)
    T = fastsort.soft_topk(x, k, "splitter_selection", steepness=2.0, backend=BE)
    mask = fastsort.soft_topk_mask(x, k, "splitter_selection", steepness=2.0, backend=BE)
    assert_close(mask, T.sum(-2))
    assert_close(T.sum(-1), torch.ones(3, k, dtype=torch.float64))


DTYPE_METHODS = [("bitonic", "cauchy"), ("odd_even", "logistic_phi"), ("splitter_selection", "optimal"),
                 ("neuralsort", None), ("softsort", None)]
DTYPE_TOL = {torch.float16: dict(atol=1e-2, rtol=1e-2), torch.bfloat16: dict(atol=4e-2, rtol=2e-2),
             torch.float64: dict(atol=1e-5, rtol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method,distribution", DTYPE_METHODS)
def test_dtypes(method, distribution, dtype):
    """Output (and gradient) dtype = input dtype; values close to the float32 computation on the same values."""
    ops = TOPK_OPS if method == "splitter_selection" else FULL_OPS
    params = method_params(method, 2.0, distribution)
    x = torch.randn(3, 8).to(dtype)
    for i, op in enumerate(ops):
        xl = x.clone().requires_grad_()
        x32 = x.float().requires_grad_()
        out, ref = call(op, xl, method, **params), call(op, x32, method, **params)
        assert out.dtype == dtype and out.shape == ref.shape, op
        assert_close(out.float(), ref.float(), what=op, **DTYPE_TOL[dtype])
        g = torch.randn(out.shape)
        (gl,) = torch.autograd.grad(out, xl, g.to(dtype))
        (g32,) = torch.autograd.grad(ref, x32, g)
        assert gl.dtype == dtype, op
        assert_close(gl.float(), g32, what=f"{op} grad", **{kk: 4 * v for kk, v in DTYPE_TOL[dtype].items()})


ALL_METHOD_OPS = ([(m, op) for m in TOPK_METHODS for op in FULL_OPS]
                  + [("splitter_selection", op) for op in TOPK_OPS])


@pytest.mark.parametrize("method,op", ALL_METHOD_OPS)
@pytest.mark.parametrize("dim", [1, -2, 0, 2])
def test_dim_and_leading_dims(method, op, dim):
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    params = method_params(method, 2.0, "cauchy")
    out = call(op, x, method, 3, dim=dim, **params)
    moved = x.movedim(dim, -1)
    ref = call(op, moved, method, 3, **params)
    if op in ("soft_sort", "soft_rank", "soft_topk_mask"):
        ref = ref.movedim(-1, dim)  # same shape as x
        assert out.shape == x.shape
    else:  # the sorted dim leaves the leading dims; [..., k or n, n] at the end
        assert out.shape == moved.shape[:-1] + ref.shape[-2:]
    assert_close(out, ref)
    # and each [n] slice is the op on that 1-D vector
    flat = moved.reshape(-1, moved.shape[-1])
    first = call(op, flat[5], method, 3, **params)
    lead = moved.shape[:-1]
    idx = (5 // lead[1], 5 % lead[1])
    got = out.movedim(dim, -1)[idx] if op in ("soft_sort", "soft_rank", "soft_topk_mask") else out[idx]
    assert_close(got, first)


@pytest.mark.parametrize("method", TOPK_METHODS)
def test_descending_is_flip(method):
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    params = method_params(method, 2.0, "gaussian")
    asc = call("soft_sort", x, method, dim=1, **params)
    desc = call("soft_sort", x, method, dim=1, descending=True, **params)
    assert_close(desc, asc.flip(1))


@pytest.mark.parametrize("method,op", ALL_METHOD_OPS)
def test_edge_sizes(method, op):
    params = method_params(method, 2.0, "cauchy")
    # a single element: everything is the identity
    x1 = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    out = call(op, x1, method, 1, **params)
    expected = {"soft_sort": x1, "soft_rank": torch.ones_like(x1), "soft_topk_mask": torch.ones_like(x1),
                "soft_permutation": torch.ones(3, 1, 1, dtype=torch.float64),
                "soft_topk": torch.ones(3, 1, 1, dtype=torch.float64)}[op]
    assert_close(out, expected)
    # an empty batch keeps its shape
    x0 = torch.zeros(0, 5, dtype=torch.float64)
    out0 = call(op, x0, method, 2, **params)
    shape = {"soft_permutation": (0, 5, 5), "soft_topk": (0, 2, 5)}.get(op, (0, 5))
    assert out0.shape == shape
    # a 1-D input is one row
    v = torch.randn(6, dtype=torch.float64)
    assert_close(call(op, v, method, 2, **params), call(op, v[None], method, 2, **params)[0])


@pytest.mark.parametrize("method,op", ALL_METHOD_OPS)
def test_nan_row_stays_in_its_row(method, op):
    x = torch.randn(3, 6, dtype=torch.float64)
    x[1, 2] = float("nan")
    x.requires_grad_()
    out = call(op, x, method, 2, **method_params(method, 2.0, "cauchy"))
    rows = out.reshape(3, -1)
    assert rows[1].isnan().all(), "the NaN row's outputs must be NaN"
    assert torch.isfinite(rows[[0, 2]]).all(), "the other rows must stay finite"
    gx = vjp(out, x, 0)
    assert torch.isfinite(gx[[0, 2]]).all(), "the gradient of the other rows must stay finite"


def test_no_grad_and_inference_mode():
    """The ops also run (and agree) without autograd."""
    x = torch.randn(2, 7)
    for method, op in ALL_METHOD_OPS:
        params = method_params(method, 2.0, "cauchy")
        with_grad = call(op, x.clone().requires_grad_(), method, **params).detach()
        with torch.no_grad():
            assert_close(call(op, x, method, **params), with_grad, what=f"{method} {op} no_grad")
        with torch.inference_mode():
            assert_close(call(op, x, method, **params), with_grad, what=f"{method} {op} inference_mode")


# --------------------------------------------------------------------------- bad inputs
X = torch.randn(2, 5)


def _topk(**kw):
    return lambda: fastsort.soft_topk(X, kw.pop("k", 2), kw.pop("method", "bitonic"), backend=BE, **kw)


BAD_INPUTS = [
    ("unknown method", lambda: fastsort.soft_sort(X, "quicksort", backend=BE), ValueError, "method must be one of"),
    ("sparse input", lambda: fastsort.soft_rank(X.to_sparse(), "permutahedron"), TypeError,
     r"x must be a dense \(strided\) tensor, got layout torch.sparse_coo; use x.to_dense\(\)"),
    ("sparse input, network", lambda: fastsort.soft_sort(X.to_sparse_csr()), TypeError, "layout torch.sparse_csr"),
    ("method case", lambda: fastsort.soft_rank(X, "Bitonic", backend=BE), ValueError, "method must be one of"),
    ("method not str", lambda: fastsort.soft_sort(X, None, backend=BE), ValueError, "method must be one of"),
    ("sinkhorn takes no steepness", lambda: fastsort.soft_sort(X, "sinkhorn", steepness=2.0, backend=BE),
     TypeError, "unexpected parameter"),
    ("unknown distribution", lambda: fastsort.soft_sort(X, "bitonic", distribution="laplace", backend=BE),
     ValueError, "distribution must be one of"),
    ("splitter for soft_sort", lambda: fastsort.soft_sort(X, "splitter_selection", backend=BE), ValueError,
     "splitter_selection.*soft_sort"),
    ("splitter for soft_rank", lambda: fastsort.soft_rank(X, "splitter_selection", backend=BE), ValueError,
     "splitter_selection.*soft_rank"),
    ("splitter for soft_permutation", lambda: fastsort.soft_permutation(X, "splitter_selection", backend=BE),
     ValueError, "splitter_selection.*soft_permutation"),
    ("k = 0", _topk(k=0), ValueError, r"1 <= k <= n"),
    ("k < 0", _topk(k=-1), ValueError, r"1 <= k <= n"),
    ("k > n", _topk(k=6), ValueError, r"1 <= k <= n"),
    ("k > n splitter", _topk(k=6, method="splitter_selection"), ValueError, r"1 <= k <= n"),
    ("k > n mask", lambda: fastsort.soft_topk_mask(X, 6, "bitonic", backend=BE), ValueError, r"1 <= k <= n"),
    ("k float", _topk(k=2.0), TypeError, "k must be an int"),
    ("k bool", _topk(k=True), TypeError, "k must be an int"),
    ("k str", _topk(k="2"), TypeError, "k must be an int"),
    ("x list", lambda: fastsort.soft_sort([[1.0, 2.0]], "bitonic", backend=BE), TypeError, "torch.Tensor"),
    ("x numpy", lambda: fastsort.soft_topk(X.numpy(), 2, "bitonic", backend=BE), TypeError, "torch.Tensor"),
    ("x int", lambda: fastsort.soft_sort(torch.arange(6).view(2, 3), "bitonic", backend=BE), TypeError,
     "floating-point"),
    ("x bool", lambda: fastsort.soft_rank(torch.ones(2, 3, dtype=torch.bool), "bitonic", backend=BE), TypeError,
     "floating-point"),
    ("x scalar", lambda: fastsort.soft_sort(torch.tensor(1.0), "bitonic", backend=BE), ValueError,
     "at least one dimension"),
    ("empty dim", lambda: fastsort.soft_sort(torch.zeros(3, 0), "bitonic", backend=BE), ValueError, "0 elements"),
    ("empty dim topk", lambda: fastsort.soft_topk(torch.zeros(0, 3), 1, "bitonic", dim=0, backend=BE), ValueError,
     "0 elements"),
    ("dim too big", lambda: fastsort.soft_sort(X, "bitonic", dim=2, backend=BE), ValueError, "out of range"),
    ("dim too small", lambda: fastsort.soft_rank(X, "bitonic", dim=-3, backend=BE), ValueError, "out of range"),
    ("dim float", lambda: fastsort.soft_sort(X, "bitonic", dim=1.0, backend=BE), TypeError, "dim must be an int"),
    ("tau for a network", lambda: fastsort.soft_sort(X, "bitonic", tau=1.0, backend=BE), TypeError,
     "unexpected parameter"),
    ("steepness for neuralsort", lambda: fastsort.soft_sort(X, "neuralsort", steepness=1.0, backend=BE), TypeError,
     "unexpected parameter"),
    ("typo", _topk(steepnes=3.0), TypeError, "unexpected parameter"),
    ("steepness 0", lambda: fastsort.soft_sort(X, "odd_even", steepness=0.0, backend=BE), ValueError,
     "steepness must be"),
    ("steepness < 0", _topk(steepness=-1.0), ValueError, "steepness must be"),
    ("steepness nan", _topk(steepness=float("nan")), ValueError, "steepness must be"),
    ("steepness inf", _topk(steepness=float("inf")), ValueError, "steepness must be"),
    ("steepness str", _topk(steepness="10"), TypeError, "steepness must be a number"),
    ("tau 0 neuralsort", lambda: fastsort.soft_sort(X, "neuralsort", tau=0.0, backend=BE), ValueError,
     "tau must be"),
    ("tau < 0 softsort", _topk(method="softsort", tau=-0.5), ValueError, "tau must be"),
    ("pow 0 softsort", _topk(method="softsort", pow=0.0), ValueError, "pow must be"),
    ("art_lambda str", _topk(art_lambda="a"), TypeError, "art_lambda must be a number"),
    ("unknown backend", lambda: fastsort.soft_sort(X, "bitonic", backend="cuda"), ValueError,
     "backend must be one of"),
    ("unknown backend topk", lambda: fastsort.soft_topk(X, 2, "neuralsort", backend="Torch"), ValueError,
     "backend must be one of"),
]


@pytest.mark.parametrize("fn,exc,match", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not _dispatch.interpreter_enabled()
    with pytest.raises(ValueError, match="backend='triton' needs"):
        _dispatch.resolve_backend(torch.zeros(3), "triton")
    with pytest.raises(ValueError, match="backend='triton' needs"):
        fastsort.soft_sort(torch.randn(2, 4), "bitonic", backend="triton")
    # the explicit torch backend and auto on CPU are unaffected
    assert _dispatch.resolve_backend(torch.zeros(3), "torch") == "torch"
    assert _dispatch.resolve_backend(torch.zeros(3), "auto") == "torch"


@pytest.mark.parametrize("version,ok", [("3.2.0", False), ("3.3.1", False), ("3.4.0", True), ("3.6.0", True),
                                        ("3.7.1+gitabc", True), ("3.10.0", True), ("4.0", True), ("dev", False)])
def test_triton_version_gate(version, ok):
    """tl.gather arrived in triton 3.3 and 3.3's compiler rejects a Sinkhorn kernel: 3.4 is the oldest."""
    problem = _dispatch.triton_version_problem(version)
    assert (problem is None) == ok
    if not ok:
        assert f"need triton >= 3.4, found {version}" in problem


def test_too_old_triton_is_a_clear_error_or_a_warned_fallback(monkeypatch):
    monkeypatch.setattr(_dispatch, "_triton_status", lambda: "fastsort's Triton kernels need triton >= 3.4, found 3.2.0")
    with pytest.raises(ValueError, match=r"backend='triton' is not available: .*found 3.2.0.*use backend='torch'"):
        fastsort.soft_sort(torch.randn(2, 4), "bitonic", backend="triton")
    _dispatch._auto_picks_triton_once.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="found 3.2.0; CUDA tensors use the .* torch backend"):
            assert _dispatch._auto_picks_triton_once() is False
    finally:
        _dispatch._auto_picks_triton_once.cache_clear()


@pytest.mark.parametrize("triton_version,numpy_version,ok", [
    ("3.6.0", "2.4.6", False), ("3.4.0", "2.4.0", False), ("3.6.0", "2.3.5", True), ("3.7.1", "2.4.6", True),
    ("3.9.0", "3.0.0", True), ("3.5.0", "1.26.4", True)])
def test_interpreter_version_gate(triton_version, numpy_version, ok):
    """triton < 3.7's interpreter calls int() on 1-element arrays, which numpy >= 2.4 rejects (checked
    with triton 3.6.0: numpy 2.4.6 fails every kernel test, 2.3.5 passes them all)."""
    problem = _dispatch.interpreter_version_problem(triton_version, numpy_version)
    assert (problem is None) == ok
    if not ok:
        assert f"triton {triton_version} cannot run with numpy {numpy_version}" in problem
        assert "numpy<2.4 or triton>=3.7" in problem


def test_unusable_interpreter_is_a_clear_error(monkeypatch):
    """Under TRITON_INTERPRET=1 the interpreter check is part of whether the kernels can run at all:
    an explicit triton backend raises with the versions and the fix (not an InterpreterError from
    inside a kernel), and auto would fall back to torch with a warning."""
    import numpy
    import triton

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.6")
    _dispatch._triton_status.cache_clear()
    _dispatch._auto_picks_triton_once.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"backend='triton' is not available: Triton's interpreter in triton "
                                             r"3\.6\.0 cannot run with numpy 2\.4\.6 .*numpy<2\.4 or triton>=3\.7; "
                                             r"use backend='torch'"):
            fastsort.soft_sort(torch.randn(2, 4), "bitonic", backend="triton")
        with pytest.warns(RuntimeWarning, match="cannot run with numpy 2.4.6.*; CUDA tensors use the .* torch backend"):
            assert _dispatch._auto_picks_triton_once() is False
    finally:
        _dispatch._triton_status.cache_clear()
        _dispatch._auto_picks_triton_once.cache_clear()


@pytest.mark.parametrize("method, backend, dtype", [("bitonic", "torch", torch.float64),
                                                    ("sinkhorn", "torch", torch.float64),
                                                    ("permutahedron", "torch", torch.float64),
                                                    ("permutahedron", "auto", torch.float32)])
def test_double_backward_raises(method, backend, dtype):
    """The hand-written backwards are not themselves differentiable: a second derivative must raise,
    not come out silently as zero or as the derivative of a detached expression (the eager Function
    takes a separate, checked path when the backward runs with create_graph=True)."""
    x = torch.randn(3, 6, dtype=dtype, requires_grad=True)
    if method == "permutahedron":  # (no rows of P: its ranks)
        y = fastsort.soft_rank(x, method=method, backend=backend)
    else:
        y = fastsort.soft_topk(x, 2, method=method, backend=backend)
    w = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
    (plain,) = torch.autograd.grad((y * w).sum(), x, retain_graph=True)  # the usual path, same gradient
    torch.testing.assert_close(g, plain, rtol=0, atol=0)
    # the first derivative carries a graph whose backward raises (without it, a gradient penalty through g
    # would silently be a constant: once_differentiable gives g no graph when w needs no gradient); that
    # graph does not reach x, which torch.autograd.grad reports before running it
    assert g.requires_grad
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(g.sum(), x)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        ((y * w).sum() + g.pow(2).sum()).backward()
    # an upstream gradient that needs one (once_differentiable's own error node beneath ours)
    w.requires_grad_()
    (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.pow(2).sum().backward()


def test_numpy_scalars_are_accepted():
    """NumPy integers and floats (e.g. from a config array) work like Python numbers, as in torch."""
    np = pytest.importorskip("numpy")
    x = torch.randn(3, 6)
    ref = fastsort.soft_topk(x, 2, "sinkhorn", epsilon=0.1, max_iter=50)
    got = fastsort.soft_topk(x, np.int64(2), "sinkhorn", epsilon=np.float32(0.1), max_iter=np.int32(50))
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(fastsort.soft_sort(x, dim=np.int64(0), steepness=np.float32(2.0)),
                               fastsort.soft_sort(x, dim=0, steepness=2.0))
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(fastsort.TopKCrossEntropyLoss([0.5, 0.5], m=np.int64(4))(x, labels),
                               fastsort.TopKCrossEntropyLoss([0.5, 0.5], m=4)(x, labels))
