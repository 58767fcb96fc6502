"""The compiled CPU kernels (numba): relaxations, networks, fused top-k cross-entropy.

Every kernel result is checked against an independent computation: the torch
backend (``fastsort.networks.reference``) and the torch loss path run in
float64, dense ``scatter`` references, finite differences (``gradcheck``).
Every output the launchers allocate starts as NaN (``helpers.nan_filled_allocations``),
so an element a kernel leaves unwritten fails the comparison.
"""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")

import fastsort  # noqa: E402
from fastsort.kernels import cpu_network as cn  # noqa: E402
from fastsort.kernels import cpu_relaxations as cr  # noqa: E402
from fastsort.kernels import cpu_topk_loss as cl  # noqa: E402
from fastsort.losses import rank_weights  # noqa: E402
from fastsort.networks import get_network, reference, sweep_init  # noqa: E402
from fastsort.relaxations import DISTRIBUTIONS, RELAXATIONS, relax_alpha, relax_slope  # noqa: E402
from helpers import assert_close, check_dense_gradient, nan_filled_allocations  # noqa: E402

KINDS = ("odd_even", "bitonic", "splitter_selection")
SIZES = (1, 2, 3, 7, 33, 100)
STEEPNESS = 1.5
INF = float("inf")


@pytest.fixture(autouse=True)
def nan_outputs():
    """Launcher outputs start as NaN (integer ones as -1): unwritten elements show up."""
    with nan_filled_allocations(cn, guards=False), nan_filled_allocations(cl, guards=False):
        yield


def close(actual, expected, rel, equal_nan=False):
    """``actual == expected`` up to ``rel`` times the largest finite magnitude of ``expected`` (at least 1)."""
    assert_close(actual, expected.to(actual.dtype), rtol=rel, atol_of_max=rel, max_at_least=1.0, equal_nan=equal_nan)


def test_imports():
    """Importing fastsort imports no numba; the CPU kernel modules need no triton."""
    code = ("import sys; sys.modules['triton'] = None; import fastsort; assert 'numba' not in sys.modules; "
            "import fastsort.kernels.cpu_network, fastsort.kernels.cpu_topk_loss; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stderr


# --------------------------------------------------------------------------- relaxations
GRID = [0.0, -0.0, 5e-324, 1e-30, -1e-30, 1e-3, -1e-3, 0.02, -0.02, 1 / 6, -1 / 6, 0.25, 1.0, -1.0, 3.0, -7.5,
        1e3, -1e3, 1e30, -1e30, INF, -INF, float("nan")]


def test_codes_match_the_relaxation_table():
    assert tuple(cr.CODES) == DISTRIBUTIONS
    assert {name: r.code for name, r in RELAXATIONS.items()} == cr.CODES
    assert [cr.relaxation_code(name) for name in DISTRIBUTIONS] == list(range(6))
    with pytest.raises(ValueError, match="distribution"):
        cr.relaxation_code("sigmoid")


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("lam", [0.25, 0.5, 0.3])
def test_relaxation_formulas(dist, lam):
    """Scalar and block functions vs the torch formulas in float64 on a grid with 0, tiny, huge,
    negative, infinite and NaN differences (logistic_phi: 1/2 and 1/4 take the square-root path,
    0.3 exp and log)."""
    code = cr.CODES[dist]
    d = torch.tensor(GRID, dtype=torch.float64)
    ref_a = relax_alpha(d, dist, STEEPNESS, lam)
    ref_s = relax_slope(d, dist, STEEPNESS, lam)
    a = torch.tensor([cr.alpha(v, code, STEEPNESS, lam) for v in GRID], dtype=torch.float64)
    s = torch.tensor([cr.slope(v, code, STEEPNESS, lam) for v in GRID], dtype=torch.float64)
    torch.testing.assert_close(a, ref_a, rtol=1e-12, atol=1e-15, equal_nan=True)
    torch.testing.assert_close(s, ref_s, rtol=1e-12, atol=1e-15, equal_nan=True)
    assert torch.isnan(a[-1])  # NaN in, NaN alpha out
    # the block versions give the scalar ones, in float64 and float32
    for dt in (np.float64, np.float32):
        dv = np.array(GRID, dtype=dt)
        out_a, out_s = np.empty(len(GRID)), np.empty(len(GRID))
        cr.alphas(dv, out_a, code, STEEPNESS, lam)
        cr.slopes(dv, out_s, code, STEEPNESS, lam)
        np.testing.assert_array_equal(out_a, [cr.alpha(v, code, STEEPNESS, lam) for v in dv])
        np.testing.assert_array_equal(out_s, [cr.slope(v, code, STEEPNESS, lam) for v in dv])


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_relaxation_float32_precision(dist):
    """A float32 difference (what the float32 kernels pass; cauchy's polynomial atan): alpha and
    1 - alpha to float32 relative precision, also in the tails."""
    code = cr.CODES[dist]
    d = np.float32(np.concatenate([np.linspace(-4, 4, 401), [1e-6, -1e-6, 30.0, -30.0, 300.0, -300.0]]))
    ref = relax_alpha(torch.tensor(d, dtype=torch.float64), dist, STEEPNESS, 0.25).numpy()
    a = np.array([cr.alpha(v, code, STEEPNESS, 0.25) for v in d])
    for got, want in ((a, ref), (1 - a, 1 - ref)):
        small = want < 0.5
        np.testing.assert_allclose(got[small], want[small], rtol=1e-6, atol=1e-300)


def test_cauchy_fused_float32_arithmetic():
    """The network kernels' fused cauchy comparator of float32 rows computes in float32: ``alpha``,
    ``1 - alpha`` (the smaller one straight from the polynomial, no cancellation) and the slope to
    float32 relative precision against float64, in the tails too (down to 2e-8; exactly 0 below, as
    float32's own formula gives and the stand-ins for infinities need); the stored weight decodes to exactly
    that pair; -inf / +inf give exactly 0 / 1, NaN gives NaN.  The float64 version is the table's formula."""
    d = np.float32(np.concatenate([np.linspace(-4, 4, 801), np.geomspace(1e-8, 1e30, 400),
                                   -np.geomspace(1e-8, 1e30, 400), [0.0, -0.0]]))
    d64 = torch.tensor(d, dtype=torch.float64)
    ref_a = relax_alpha(d64, "cauchy", STEEPNESS, 0.0).numpy()
    ref_s = relax_slope(d64, "cauchy", STEEPNESS, 0.0).numpy()
    got = np.array([cr._cauchy_encoded_f32(v, STEEPNESS) for v in d], dtype=np.float32)
    e, al, be = got.T
    huge = np.abs(d * STEEPNESS) >= 2.0 ** 24  # the smaller weight is exactly 0 there (below 2e-8)
    for a, want in ((al, ref_a), (be, 1 - ref_a)):
        small = (want <= 0.5) & ~huge
        np.testing.assert_allclose(a[small], want[small], rtol=1e-6, atol=0)
        tail = huge & (want <= 0.5)
        assert (a[tail] == 0).all() and (want[tail] < 2e-8).all()
    neg = np.signbit(e)
    np.testing.assert_array_equal(np.where(neg, np.float32(1) + e, e), al)  # cpu_network._weights' decoding
    np.testing.assert_array_equal(np.where(neg, -e, np.float32(1) - e), be)
    slope = np.array([cr._cauchy_slope_f32(v, STEEPNESS) for v in d])
    # (beyond |v| ~ 1e19, v^2 overflows float32 and the slope is 0: below float32's least normal number)
    np.testing.assert_allclose(slope, ref_s, rtol=1e-6, atol=np.finfo(np.float32).tiny)
    assert cr._cauchy_encoded_f32(np.float32(-INF), STEEPNESS) == (0.0, 0.0, 1.0)
    assert not np.signbit(cr._cauchy_encoded_f32(np.float32(-INF), STEEPNESS)[0])  # stored +0: alpha = 0
    assert cr._cauchy_encoded_f32(np.float32(INF), STEEPNESS)[1:] == (1.0, 0.0)
    assert np.signbit(cr._cauchy_encoded_f32(np.float32(INF), STEEPNESS)[0])  # stored -0: alpha = 1
    assert np.isnan(cr._cauchy_encoded_f32(np.float32("nan"), STEEPNESS)).all()
    for v in GRID:
        a = cr.alpha(v, cr.CAUCHY, STEEPNESS, 0.0)
        np.testing.assert_array_equal(cr._cauchy_encoded_f64(v, STEEPNESS), (a if a <= 0.5 else -(1 - a), a, 1 - a))


def test_unknown_relaxation_code_raises():
    d32 = np.zeros(3, np.float32)
    out = np.empty(3)
    for code in (-1, 6):
        for call in (lambda: cr.alpha(0.5, code, 1.0, 0.25), lambda: cr.slope(0.5, code, 1.0, 0.25),
                     lambda: cr.alphas(d32, out, code, 1.0, 0.25), lambda: cr.slopes(d32, out, code, 1.0, 0.25),
                     lambda: cr.check_code(code)):
            with pytest.raises(ValueError, match="relaxation code"):
                call()
    # the kernels check the code before their loops
    table = get_network("bitonic", 4)
    comps, count = cn.comparators(table)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="relaxation code"):
        cn._forward_run(x, comps, count, np.zeros((0, 4), np.float32), np.empty_like(x),
                        np.empty((2, 0, 4), np.float32), 6, 1.0, 0.25, 1, 8, 0, 1)
    loss_args = (x, np.zeros(2, np.int64), np.zeros(4), comps, count, np.empty((2, 5), np.float32),
                 np.empty((2, 4), np.int64))
    with pytest.raises(ValueError, match="relaxation code"):
        cl._topk_ce_run(*loss_args, 6, 1.0, 0.25, 0, 0.5, 0.5, True, 0, 1)
    with pytest.raises(ValueError, match="top1_mode code"):
        cl._topk_ce_run(*loss_args, 4, 1.0, 0.25, 3, 0.5, 0.5, True, 0, 1)
    with pytest.raises(ValueError, match="distribution"):
        cn.network_fwd(torch.zeros(2, 4), table, None, ("sigmoid", 1.0, 0.25), False)


# --------------------------------------------------------------------------- networks
def _table(kind, n):
    return get_network(kind, n, "cpu", min(3, n) if kind == "splitter_selection" else None)


def _inits(n):
    """No sweep, the ranks (C = 1), the top-k rows (C = k), the identity (C = n)."""
    return [None, sweep_init("ranks", n, n, torch.float32, "cpu"),
            sweep_init("topk", n, min(3, n), torch.float32, "cpu"), torch.eye(n)]


def _compare(x, table, init, relax, rel32=2e-4, each=True):
    """The kernels in float32 and float64 against the float64 torch backend: values, sweep and the
    input gradient for dL/dy, dL/dS0 and both (a shared random cotangent; both only, unless ``each``)."""
    x64 = x.double()
    init64 = None if init is None else init.double()
    yr, Sr, saved_r = reference.network_fwd(x64, table, init64, relax, True)
    gy = torch.randn_like(yr)
    gS = None if init is None else torch.randn_like(Sr)
    cotangents = [(gy, None)] if init is None else [(None, gS), (gy, None), (gy, gS)][0 if each else 2:]
    grads_r = [reference.network_bwd(saved_r, table, relax, a, b) for a, b in cotangents]
    for dt, rel in ((torch.float32, rel32), (torch.float64, 1e-9)):
        xk = x.to(dt)
        y, S0, saved = cn.network_fwd(xk, table, None if init is None else init.to(dt), relax, True)
        assert y.dtype == dt and y.shape == yr.shape
        close(y, yr, rel, equal_nan=True)
        if init is None:
            assert S0 is None and saved[2] is None
        else:
            close(S0, Sr, rel, equal_nan=True)
            # the sweep block, a copy (an op's outputs may not alias its inputs)
            torch.testing.assert_close(saved[2], init.to(dt), rtol=0, atol=0)
            assert saved[2].data_ptr() != init.to(dt).data_ptr()
        # only what the backward reads: the input (a copy), no layer state
        assert saved[0].numel() == 0
        torch.testing.assert_close(saved[1], xk, rtol=0, atol=0, equal_nan=True)
        assert saved[1].data_ptr() != xk.data_ptr()
        # no gradient: the same values, empty saved tensors
        y2, S2, saved2 = cn.network_fwd(xk, table, None if init is None else init.to(dt), relax, False)
        torch.testing.assert_close(y2, y, rtol=0, atol=0, equal_nan=True)
        assert saved2[0].numel() == saved2[1].numel() == 0
        for (a, b), gr in zip(cotangents, grads_r):
            gx = cn.network_bwd(saved, table, relax, None if a is None else a.to(dt), None if b is None else b.to(dt))
            assert gx.dtype == dt
            close(gx, gr, rel, equal_nan=True)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_network_matches_reference(kind, dist, n):
    table = _table(kind, n)
    x = torch.randn(11, n) * 2  # two blocks of rows, the second one partial
    # logistic_phi's slope is unbounded at d = 0 (|d| ** -art_lambda): its float32 gradient through
    # 100 layers is ill-conditioned (the float32 torch backend is off by as much)
    rel32 = 1e-2 if dist == "logistic_phi" else 2e-4
    relax = (dist, STEEPNESS, 0.5 if dist == "logistic_phi" else 0.25)
    for init in _inits(n)[:3]:
        _compare(x, table, init, relax, rel32)
    # the full P (C = n): fewer rows, one cotangent (the float64 reference costs O(R n^2 D) per op)
    _compare(x[8:] if n > 33 else x, table, _inits(n)[3], relax, rel32, each=False)


@pytest.mark.parametrize("kind", KINDS)
def test_network_nan_rows(kind):
    """A NaN input row gives a NaN output row (values, sweep, gradient); the other rows are exact."""
    n = 9
    table = _table(kind, n)
    x = torch.randn(13, n)
    x[4] = float("nan")
    x[10, 3] = float("nan")  # one NaN: it spreads as in the torch backend
    init = sweep_init("topk", n, 3, torch.float32, "cpu")
    _compare(x, table, init, ("cauchy", STEEPNESS, 0.25))
    y, S0, saved = cn.network_fwd(x, table, init, ("cauchy", STEEPNESS, 0.25), True)
    gx = cn.network_bwd(saved, table, ("cauchy", STEEPNESS, 0.25), torch.ones_like(y), torch.ones_like(S0))
    assert torch.isnan(y[4]).all() and torch.isnan(S0[4]).all() and torch.isnan(gx[4]).all()
    others = [r for r in range(13) if r not in (4, 10)]
    assert torch.isfinite(y[others]).all() and torch.isfinite(S0[others]).all() and torch.isfinite(gx[others]).all()


def test_network_rows_and_chunks(monkeypatch):
    """Many blocks over the threads, sweeps in several column chunks, and an empty batch."""
    n = 50
    table = _table("bitonic", n)
    x = torch.randn(67, n)
    init = torch.randn(12, n)
    monkeypatch.setattr(cn, "_SWEEP_BYTES", 5 * n * cn.block_rows(67) * 4)  # 5 columns a chunk forward, 1 backward
    _compare(x, table, init, ("optimal", 3.0, 0.25))
    y, S0, saved = cn.network_fwd(torch.zeros(0, n), table, init, ("cauchy", 1.0, 0.25), True)
    assert y.shape == (0, n) and S0.shape == (0, 12, n)
    assert cn.network_bwd(saved, table, ("cauchy", 1.0, 0.25), torch.zeros(0, n), torch.zeros(0, 12, n)).shape == (0, n)


def test_run_parallel_covers_every_item_once():
    """The thread runner: every item in exactly one run, a run's exception re-raised by the caller."""
    if numba.get_num_threads() < 2:
        pytest.skip("one numba thread")
    seen = []
    cn.run_parallel(lambda a, b: seen.extend(range(a, b)), 37, cn.SERIAL_WORK)
    assert sorted(seen) == list(range(37))

    def fail(a, b):
        if a == 0:
            raise RuntimeError("run 0")

    with pytest.raises(RuntimeError, match="run 0"):
        cn.run_parallel(fail, 10, cn.SERIAL_WORK)


class _Network(torch.autograd.Function):
    """The launchers as an autograd function, for gradcheck."""

    @staticmethod
    def forward(ctx, x, table, init, relax):
        y, S0, saved = cn.network_fwd(x, table, init, relax, True)
        ctx.saved, ctx.table, ctx.relax = saved, table, relax
        return y, S0

    @staticmethod
    def backward(ctx, gy, gS0):
        return cn.network_bwd(ctx.saved, ctx.table, ctx.relax, gy, gS0), None, None, None


@pytest.mark.parametrize("kind,dist", [("bitonic", "cauchy"), ("odd_even", "logistic"), ("bitonic", "gaussian"),
                                       ("splitter_selection", "reciprocal"), ("odd_even", "optimal"),
                                       ("bitonic", "logistic_phi")])
def test_network_gradcheck_float64(kind, dist):
    n = 6
    table = _table(kind, n)
    init = torch.randn(3, n, dtype=torch.float64)
    x = (torch.randn(3, n, dtype=torch.float64) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: _Network.apply(v, table, init, (dist, 1.3, 0.25)), (x,))


# --------------------------------------------------------------------------- fused top-k loss
def _torch_loss(x, y, p, kind, m, mode, dist, steep):
    """The torch path in float64 (on the same values): per-row loss and dloss/dlogits."""
    x64 = x.double().requires_grad_(True)
    loss = fastsort.topk_cross_entropy(x64, y, p, kind, m=m, inverse_temperature=steep, distribution=dist,
                                       top1_mode=mode, reduction="none", backend="torch")
    loss.sum().backward()
    return loss.detach(), x64.grad


def _kernel_loss(x, y, p, kind, m, mode, dist, steep, need_grad=True):
    c = rank_weights(p, mode)
    table = get_network(kind, m, "cpu", len(c) if kind == "splitter_selection" else None)
    args = (x, y, tuple(c), table, (dist, steep, 0.25), m, mode, p[0], sum(p[1:]), need_grad)
    out, idx = cl.topk_ce_fwd(*args)
    if need_grad:
        check_dense_gradient(cl.topk_ce_fwd, args, out,
                             cl.topk_ce_bwd(out, idx, torch.tensor(1.0), x.shape[1], torch.float32, 1.0, col0=1))
    return out, idx


def _logits(B=12, C=40):
    x = torch.randn(B, C) * 3
    y = torch.randint(0, C, (B,))
    x[0, :30] = -INF  # masked classes: fewer finite logits than wires
    x[1, y[1]] = -INF  # the label masked
    x[2] = -INF  # everything masked but the label
    x[2, y[2]] = 0.5
    return x, y


@pytest.mark.parametrize("p,m", [([0.5, 0, 0, 0, 0.5], 16), ([0.2, 0.3, 0.5], 7), ([1.0], 4)])
@pytest.mark.parametrize("dist", ["cauchy", "logistic", "optimal", "gaussian"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["sm", "smce", "sort"])
def test_fused_loss_matches_torch_path(mode, kind, dist, p, m):
    x, y = _logits()
    loss_r, grad_r = _torch_loss(x, y, p, kind, m, mode, dist, 2.0)
    out, idx = _kernel_loss(x, y, p, kind, m, mode, dist, 2.0)
    assert out.shape == (12, 1 + m) and idx.shape == (12, m) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], loss_r.float(), rtol=2e-5, atol=2e-5)  # (inf: the masked label in smce)
    assert (idx[:, 0] == y).all()
    dx = cl.topk_ce_bwd(out, idx, torch.tensor(1.0), x.shape[1], torch.float32, 1.0, col0=1)
    close(dx, grad_r, 2e-5)
    out0, idx0 = _kernel_loss(x, y, p, kind, m, mode, dist, 2.0, need_grad=False)
    assert out0.shape == (12, 1) and idx0.shape == (12, 0)
    torch.testing.assert_close(out0[:, 0], out[:, 0], rtol=0, atol=0)


@pytest.mark.parametrize("C", [1000, 1003])
def test_fused_loss_wide_rows(C):
    """Wide rows (most logits below the list; rows over the threads): the columns are torch.topk's,
    the loss and gradient the torch path's."""
    x = torch.randn(300, C)
    y = torch.randint(0, C, (300,))
    p = [0.5, 0, 0, 0, 0.5]
    out, idx = _kernel_loss(x, y, p, "bitonic", 16, "sm", "cauchy", 2.0)
    others = x.scatter(1, y[:, None], -INF).topk(15, dim=1).indices
    assert (idx[:, 1:] == others).all()
    loss_r, grad_r = _torch_loss(x, y, p, "bitonic", 16, "sm", "cauchy", 2.0)
    torch.testing.assert_close(out[:, 0], loss_r.float(), rtol=2e-5, atol=2e-5)
    close(cl.topk_ce_bwd(out, idx, torch.tensor(1.0), C, torch.float32, 1.0, col0=1), grad_r, 2e-5)


def test_fused_loss_ties_nan_and_bad_labels():
    """Exactly tied logits: the lower column first (a stable descending order), the torch path's loss;
    NaN ranks first; an out-of-range label gives a NaN loss and gradient."""
    C, m = 30, 8
    x = torch.randint(0, 4, (6, C)).float()
    y = torch.randint(0, C, (6,))
    out, idx = _kernel_loss(x, y, [0.5, 0.5], "odd_even", m, "sm", "cauchy", 2.0)
    for b in range(6):
        cols = np.array([c for c in range(C) if c != y[b]])
        order = cols[np.argsort(-x[b, cols].numpy(), kind="stable")][:m - 1]
        assert idx[b, 1:].tolist() == order.tolist()
    loss_r, _ = _torch_loss(x, y, [0.5, 0.5], "odd_even", m, "sm", "cauchy", 2.0)
    torch.testing.assert_close(out[:, 0], loss_r.float(), rtol=2e-5, atol=2e-5)

    x = torch.randn(3, C)
    y = torch.tensor([0, C, -1])
    x[0, 7] = float("nan")
    out, idx = _kernel_loss(x, y, [0.5, 0.5], "bitonic", m, "smce", "cauchy", 2.0)
    assert idx[0, 1] == 7 and torch.isnan(out).all()


def _stable_top_others(x, y, m):
    """The label, then the m - 1 largest other columns by a stable descending sort (NaN first)."""
    rows = []
    for b in range(x.shape[0]):
        cols = np.array([c for c in range(x.shape[1]) if c != int(y[b])])
        v = x[b, cols].double().numpy()
        v = np.where(np.isnan(v), np.inf, v)  # NaN first, ties among NaN and +inf in column order
        nan_first = np.lexsort((np.arange(len(cols)), ~np.isnan(x[b, cols].numpy()), -v))
        rows.append([int(y[b])] + cols[nan_first][:m - 1].tolist())
    return rows


# (the bound's lanes: W = 8L for C = 1003, 4L for C = 64 (m = 16), 2L for C = 50 and 100 (m = 33), L for C = 40 (m = 17);
# contiguous groups for C = 25)
@pytest.mark.parametrize("B,C,m", [(40, 1003, 16), (9, 25, 20), (9, 40, 17), (5, 12, 1), (64, 100, 33), (9, 50, 16),
                                   (7, 64, 16)])
def test_preselect_columns(B, C, m):
    """The compiled preselection (the fused kernel's; the loss's torch ops gather through it) against a
    stable sort: the lanes' bound (C >= the groups), contiguous groups (C < 32 for m = 20), ties,
    NaN of either sign (more of them than wires too), signed zeros (equal: the lower column first),
    -inf rows, the label never picked twice; the rows split over the threads."""
    g = torch.Generator().manual_seed(C)
    x = torch.randn(B, C, generator=g)
    x[1] = torch.randint(0, 3, (C,), generator=g).float()  # ties
    x[2, 3] = float("nan")
    x[3] = -INF
    y = torch.randint(0, C, (B,), generator=g)
    x[4, y[4]] = INF
    if B > 5:
        x[5, 7] = -float("nan")  # a NaN with its sign bit set (its order key is the lowest): first too
        x[5, :: 3] += 5.0
    if B > 8:
        nan = torch.full((C,), float("nan"))
        x[6] = torch.where(torch.rand(C, generator=g) < 0.5, nan, x[6])  # more NaN than wires, both signs
        x[6, ::4] = -x[6, ::4]
        x[7] = torch.where(torch.rand(C, generator=g) < 0.5, torch.tensor(-0.0), torch.tensor(0.0))  # -0.0 == 0.0
        x[7, ::5] = -1.0
        x[8] = 2.0  # all tied
    idx = cl.preselect(x, y, m)
    assert idx.dtype == torch.int64 and idx.shape == (B, m)
    assert idx.tolist() == _stable_top_others(x, y, m)


def test_preselect_checks():
    with pytest.raises(ValueError, match="float32 CPU logits"):
        cl.preselect(torch.randn(2, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="1 <= m <= C"):
        cl.preselect(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), 6)


@pytest.mark.parametrize("method", ["neuralsort", "softsort", "sinkhorn"])
def test_loss_torch_ops_with_compiled_preselection(method):
    """Under ``auto`` Sinkhorn gathers its wires through the compiled preselection, NeuralSort and
    SoftSort run their fused kernel (``kernels/cpu_rows_loss.py``, which starts with that preselection):
    the loss and its gradient equal ``backend="torch"``'s (torch.topk), +inf rows NaN."""
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(50, 300, generator=g))
    y = torch.randint(0, 300, (50,), generator=g)
    x[7, 11] = INF
    kw = dict(m=16, inverse_temperature=0.5, reduction="none")
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la = fastsort.topk_cross_entropy(a, y, [0.5, 0, 0, 0, 0.5], method, backend="auto", **kw)
    lb = fastsort.topk_cross_entropy(b, y, [0.5, 0, 0, 0, 0.5], method, backend="torch", **kw)
    assert la[7].isnan() and torch.isfinite(la[torch.arange(50) != 7]).all()
    torch.testing.assert_close(la, lb, equal_nan=True)
    G = torch.randn(50, generator=g)
    G[7] = 0
    (la.nan_to_num() * G).sum().backward()
    (lb.nan_to_num() * G).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_fused_loss_backward_scatter(dtype):
    """``scale * grad_out * out[:, col0:col0 + m]`` at the columns ``idx``, 0 elsewhere."""
    B, C, m = 9, 25, 5
    out = torch.randn(B, 2 + m)
    idx = torch.stack([torch.randperm(C)[:m] for _ in range(B)])
    for g in (torch.tensor(0.7, dtype=dtype), torch.randn(B, dtype=dtype)):
        for col0 in (0, 1, 2):
            dx = cl.topk_ce_bwd(out, idx, g, C, dtype, 0.25, col0=col0)
            gb = (g.double() if g.dim() == 0 else g.double()[:, None]) * 0.25
            want = torch.zeros(B, C, dtype=torch.float64).scatter(1, idx, out[:, col0:col0 + m].double() * gb)
            assert dx.dtype == dtype
            torch.testing.assert_close(dx, want.to(dtype), rtol=1e-6, atol=1e-6)
    assert cl.topk_ce_bwd(out[:0], idx[:0], g[:0], C, dtype, 1.0).shape == (0, C)


def test_fused_loss_checks():
    x, y = torch.randn(4, 10), torch.randint(0, 10, (4,))
    table = get_network("bitonic", 5)
    with pytest.raises(ValueError, match="top1_mode"):
        cl.topk_ce_fwd(x, y, (1.0,), table, ("cauchy", 1.0, 0.25), 5, "ce", 0.5, 0.5, True)
    with pytest.raises(ValueError, match="wires"):
        cl.topk_ce_fwd(x, y, (1.0,), table, ("cauchy", 1.0, 0.25), 6, "sm", 0.5, 0.5, True)
    # the position weights may also come as the [1, m] tensor
    v = sweep_init("weights", 5, 2, torch.float32, "cpu", (0.5, 0.5))
    a = cl.topk_ce_fwd(x, y, v, table, ("cauchy", 1.0, 0.25), 5, "sm", 0.0, 1.0, True)[0]
    b = cl.topk_ce_fwd(x, y, (0.5, 0.5), table, ("cauchy", 1.0, 0.25), 5, "sm", 0.0, 1.0, True)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert math.isfinite(float(a[:, 0].sum()))
    # a dense gradient buffer must be the logits' [B, C], float32 / float64, contiguous, on the CPU
    for bad in (torch.empty(4, 9), torch.empty(4, 10, dtype=torch.float16), torch.empty(10, 4).t()):
        with pytest.raises(ValueError, match="dense must be a contiguous float32 / float64 CPU tensor of shape"):
            cl.topk_ce_fwd(x, y, (0.5, 0.5), table, ("cauchy", 1.0, 0.25), 5, "sm", 0.0, 1.0, True, dense=bad)
