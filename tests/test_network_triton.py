"""Triton network kernels (``fastsort.kernels.network``) against the torch backend.

Every public network op (``soft_sort``, ``soft_topk``, ``soft_rank``,
``soft_permutation``, ``soft_topk_mask``) is run with ``backend="triton"`` on
the ``device`` fixture (CPU under Triton's interpreter in CI, CUDA on a GPU
machine) and with ``backend="torch"`` on the CPU; the forward outputs and the
gradients for one shared random cotangent must agree.  The torch backend is
itself checked against dense references and the oracle packages in
``test_functional.py``.

Also here: NaN-prefilled launcher outputs (every element must be written),
NaN rows, the polynomial ``atan`` of ``kernels/relaxations.py`` against
``torch.atan``, the atomic ``gW`` reduction of a column-split sweep, and the
CPU-without-interpreter error.

Shapes are small (``B <= 8``, ``n <= 64``): every interpreted program instance
costs ~10 ms.
"""
import functools
import itertools
import math

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import fastsort  # noqa: E402
from fastsort.networks import reference as torch_network  # noqa: E402
from fastsort.kernels import launch  # noqa: E402
from fastsort.kernels import network as kn  # noqa: E402
from fastsort.kernels.relaxations import atan as poly_atan  # noqa: E402
from helpers import assert_kernel_close, nan_filled_allocations, run_op  # noqa: E402

DISTS = fastsort.DISTRIBUTIONS
SORT_NETS = ("odd_even", "bitonic")
ALL_NETS = SORT_NETS + ("splitter_selection",)
SIZES = (2, 5, 16, 33, 64)
KS = (1, 5)
FULL_OPS = ("sort", "rank", "perm")  # no k; not for splitter_selection
TOPK_OPS = ("topk", "mask")
OPS = FULL_OPS + TOPK_OPS

# tolerance on outputs / gradients, relative to max(1, max |reference|)
# (float32 gradients of steep or ART relaxations differ from float64 by up to ~3e-4 of the largest entry)
TOL = {torch.float32: (2e-5, 1e-3), torch.float16: (2e-3, 4e-3), torch.bfloat16: (1.6e-2, 3e-2)}


# --------------------------------------------------------------------------- helpers
def op_fn(op, method, k=None, **kw):
    """``fn(x, backend)`` running ``helpers.run_op`` with these arguments."""
    return lambda x, backend: run_op(op, x, method, k, backend=backend, **kw)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the Triton launcher calls (a test fails if the Triton path silently ran torch code) and
    runs each launcher with NaN-prefilled allocations (see ``helpers.nan_filled_allocations``)."""
    calls = {"forward": 0, "backward": 0}

    def guarded(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            calls[name] += 1
            with nan_filled_allocations(kn):
                return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(kn, "network_fwd", guarded("forward", kn.network_fwd))
    monkeypatch.setattr(kn, "network_bwd", guarded("backward", kn.network_bwd))
    return calls


def check_vs_torch(fn, x, device, calls):
    """``fn(x, backend)`` with Triton on ``device`` vs torch on the float32-cast ``x``: outputs and
    ``dL/dx`` for one shared random cotangent (rounded to ``x``'s dtype, so both see the same values)."""
    dtype = x.dtype
    out_tol, grad_tol = TOL[dtype]
    xr = x.detach().float().requires_grad_(True)
    ref = fn(xr, "torch")
    cot = torch.randn(ref.shape).to(dtype)
    ref.backward(cot.float())

    xt = x.detach().to(device).requires_grad_(True)
    out = fn(xt, "triton")
    assert calls["forward"] >= 1, "the Triton launcher did not run"
    assert out.shape == ref.shape and out.dtype == dtype and out.device.type == device.type
    out.backward(cot.to(device))
    assert calls["backward"] >= 1, "the Triton backward launcher did not run"
    assert xt.grad.dtype == dtype and xt.grad.shape == x.shape
    assert_kernel_close(out, ref, out_tol, "forward")
    assert_kernel_close(xt.grad, xr.grad, grad_tol, "gradient")
    return out, xt.grad


def scores(*shape, dtype=torch.float32):
    return (2.0 * torch.randn(*shape)).to(dtype)


def _case_id(op, method, n, k, dist):
    return f"{op}-{method}-n{n}" + (f"-k{k}" if k is not None else "") + (f"-{dist}" if dist else "")


# --------------------------------------------------------------------------- every relaxation x every op
def _relaxation_cases():
    """Each (op, relaxation) once; network, n and k cycle so that each appears with several of each."""
    nets = {op: itertools.cycle(SORT_NETS if op in FULL_OPS else ALL_NETS) for op in OPS}
    sizes = itertools.cycle((5, 16, 33, 64))
    ks = itertools.cycle(KS)
    cases = []
    for dist in DISTS:
        for op in OPS:
            n = next(sizes)
            k = next(ks) if op in TOPK_OPS else None
            method = next(nets[op])
            cases.append(pytest.param(op, method, n, k, dist, id=_case_id(op, method, n, k, dist)))
    return cases


@pytest.mark.parametrize("op,method,n,k,dist", _relaxation_cases())
def test_relaxations(op, method, n, k, dist, device, kernel_calls):
    # a non-default art_lambda checks that it reaches the kernel (it only matters for logistic_phi)
    params = dict(distribution=dist, steepness=4.0, art_lambda=0.4)
    check_vs_torch(op_fn(op, method, k, **params), scores(6, n), device, kernel_calls)


# --------------------------------------------------------------------------- every network x n x k
def _network_cases():
    cases = []
    full = itertools.cycle(FULL_OPS)
    for method in ALL_NETS:
        for n in SIZES:
            if method != "splitter_selection":
                op = next(full)
                cases.append(pytest.param(op, method, n, None, id=_case_id(op, method, n, None, None)))
            for k in KS:
                if k > n:
                    continue
                ops = TOPK_OPS if method == "splitter_selection" else (TOPK_OPS[(n + k) % 2],)
                for op in ops:
                    cases.append(pytest.param(op, method, n, k, id=_case_id(op, method, n, k, None)))
    return cases


@pytest.mark.parametrize("op,method,n,k", _network_cases())
def test_networks(op, method, n, k, device, kernel_calls):
    check_vs_torch(op_fn(op, method, k), scores(5, n), device, kernel_calls)  # defaults: cauchy, steepness 10


@pytest.mark.parametrize("op,method,k", [
    ("topk", "bitonic", 5), ("topk", "splitter_selection", 5),
    pytest.param("perm", "odd_even", None, marks=pytest.mark.slow),  # 33 layers of 3 one-row programs: ~50 s
    ("rank", "bitonic", None)])
def test_gpu_launch_configuration(op, method, k, gpu_launch_configs, device, kernel_calls):
    """The GPU's launch configuration run by the interpreter: one row per program (3 rows < 256
    programs) and, for the sweeps, one line per program (split columns, atomic gW)."""
    assert launch.rows_per_program(3, 64) == 1 and kn._sweep_blocks(3, 5, 64) == (1, 1, 5)
    check_vs_torch(op_fn(op, method, k), scores(3, 33), device, kernel_calls)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # exp(-v) of saturated sigmoids
def test_n_equals_k_and_steep(device, kernel_calls):
    """``k == n`` (every position) with near-hard comparators (large steepness)."""
    fn = op_fn("topk", "splitter_selection", 5, steepness=200.0, distribution="logistic")
    out, _ = check_vs_torch(fn, scores(4, 5), device, kernel_calls)
    assert torch.allclose(out.sum(-1).cpu(), torch.ones(4, 5), atol=1e-5)  # rows of a doubly-stochastic P


# --------------------------------------------------------------------------- input dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("op,method,k", [("sort", "bitonic", None), ("rank", "odd_even", None),
                                         ("perm", "bitonic", None), ("topk", "splitter_selection", 5),
                                         ("mask", "odd_even", 1)])
def test_half_inputs(op, method, k, dtype, device, kernel_calls):
    """fp16/bf16 inputs are computed in float32: the result is the torch backend's on the float32-cast
    input, rounded to the input dtype; output and gradient come back in the input dtype."""
    check_vs_torch(op_fn(op, method, k), scores(4, 16, dtype=dtype), device, kernel_calls)


# --------------------------------------------------------------------------- leading dims and dim
DIM_CASES = [  # (op, method, k, shape, dim, extra)
    ("sort", "bitonic", None, (2, 3, 7), -1, dict(descending=True)),
    ("sort", "odd_even", None, (7,), 0, {}),
    ("rank", "bitonic", None, (3, 9, 2), 1, {}),
    ("perm", "odd_even", None, (2, 5, 3), -2, {}),
    ("topk", "splitter_selection", 3, (6, 2, 2), 0, {}),
    ("topk", "bitonic", 2, (2, 3, 5), -1, {}),
    ("mask", "splitter_selection", 2, (3, 2, 11), 2, {}),
    ("mask", "bitonic", 5, (4, 10, 2), 1, {}),
]


@pytest.mark.parametrize("op,method,k,shape,dim,extra", DIM_CASES,
                         ids=[f"{c[0]}-{c[1]}-{'x'.join(map(str, c[3]))}-dim{c[4]}" for c in DIM_CASES])
def test_leading_dims_and_dim(op, method, k, shape, dim, extra, device, kernel_calls):
    check_vs_torch(op_fn(op, method, k, dim=dim, **extra), scores(*shape), device, kernel_calls)


def test_non_contiguous_input(device, kernel_calls):
    x = scores(9, 4)  # sorted along dim 0 of a [9, 4] tensor = the rows of its transpose
    check_vs_torch(lambda z, be: run_op("topk", z.t(), "bitonic", 3, backend=be), x, device, kernel_calls)


@pytest.mark.parametrize("op", OPS)
def test_empty_batch(op, device):
    """No rows (``[0, n]``): forward and backward give empty results on both backends."""
    method = "splitter_selection" if op in TOPK_OPS else "bitonic"
    shapes = {}
    for backend, dev in (("torch", torch.device("cpu")), ("triton", device)):
        x = torch.randn(0, 6, device=dev, requires_grad=True)
        out = run_op(op, x, method, 2, backend=backend)
        out.sum().backward()
        assert x.grad.shape == x.shape, backend
        shapes[backend] = out.shape
    assert shapes["triton"] == shapes["torch"]


@pytest.mark.parametrize("op,method,k", [("sort", "odd_even", None), ("rank", "bitonic", None),
                                         ("perm", "odd_even", None), ("topk", "bitonic", 5),
                                         ("mask", "splitter_selection", 5)])
def test_without_grad(op, method, k, device, kernel_calls):
    """Inference (no input requiring grad, and under ``torch.no_grad``): nothing saved for a
    backward may be written, the outputs are the torch backend's."""
    x = scores(8, 64)
    ref = run_op(op, x, method, k, backend="torch")
    out = run_op(op, x.to(device), method, k, backend="triton")
    assert_kernel_close(out, ref, TOL[torch.float32][0], "forward")
    with torch.no_grad():
        out = run_op(op, x.to(device).requires_grad_(True), method, k, backend="triton")
    assert_kernel_close(out, ref, TOL[torch.float32][0], "forward under no_grad")
    assert kernel_calls["forward"] == 2 and kernel_calls["backward"] == 0


# --------------------------------------------------------------------------- special rows
NAN_CASES = [("sort", "bitonic", None, "optimal"), ("rank", "odd_even", None, "cauchy"),
             ("perm", "bitonic", None, "logistic_phi"), ("topk", "splitter_selection", 2, "gaussian"),
             ("mask", "odd_even", 3, "reciprocal"), ("sort", "odd_even", None, "logistic")]


@pytest.mark.parametrize("op,method,k,dist", NAN_CASES, ids=["-".join(map(str, c)) for c in NAN_CASES])
def test_nan_row_and_ties(op, method, k, dist, device, kernel_calls):
    """A row with a NaN is NaN where the torch backend is NaN and never leaks into the other rows;
    a constant row and a row with ties (``d = 0`` comparators) stay finite and agree."""
    x = scores(5, 12)
    x[1, 4] = float("nan")
    x[2] = 0.5
    x[3, ::2] = x[3, 1::2]
    # NaN positions must coincide (assert_kernel_close uses equal_nan)
    out, grad = check_vs_torch(op_fn(op, method, k, distribution=dist), x, device, kernel_calls)
    row_out, row_grad = out[1], grad[1]
    assert torch.isnan(row_out).any() and torch.isnan(row_grad).any()
    if op == "sort":
        assert torch.isnan(row_out).all()
    others = [0, 2, 3, 4]
    assert torch.isfinite(out[others]).all() and torch.isfinite(grad[others]).all()


# --------------------------------------------------------------------------- launchers, NaN-prefilled
LAUNCH_CASES = [  # (method, n, k, init kind, need_grad, has gy, dist)
    ("bitonic", 33, None, "eye", True, True, "cauchy"),
    ("odd_even", 5, None, "top3", True, False, "logistic_phi"),
    ("splitter_selection", 16, 5, "top5", True, True, "optimal"),
    ("bitonic", 64, None, "ranks", False, None, "gaussian"),
    ("odd_even", 16, None, None, True, True, "reciprocal"),
    ("odd_even", 2, None, "eye", False, None, "logistic"),
]


def _init(kind, n):
    if kind is None:
        return None
    if kind == "eye":
        return torch.eye(n)
    if kind == "ranks":
        return torch.arange(1.0, n + 1).unsqueeze(0)
    k = int(kind[3:])
    return torch.eye(n)[n - k:].flip(0)


@pytest.mark.parametrize("method,n,k,init,need_grad,has_gy,dist", LAUNCH_CASES,
                         ids=[f"{c[0]}-n{c[1]}-{c[3]}-grad{int(c[4])}" for c in LAUNCH_CASES])
def test_launchers_write_every_element(method, n, k, init, need_grad, has_gy, dist, device):
    """``network_fwd`` / ``network_bwd`` called directly, every buffer they allocate
    NaN-prefilled: ``y``, ``S0`` and ``gx`` equal the torch backend's; the saved state (the kernels'
    layout ``W, XIN [R, D, n]``, ``SHIST [R, D, C, n]``) is fully written and consistent."""
    R = 7
    x = scores(R, n)
    init_t = _init(init, n)
    relax = (dist, 3.0, 0.3)
    table_cpu = fastsort.get_network(method, n, "cpu", k)
    table = fastsort.get_network(method, n, device, k)
    D = table.depth
    ref_y, ref_S0, ref_saved = torch_network.network_fwd(x, table_cpu, init_t, relax, need_grad)
    with nan_filled_allocations(kn):
        y, S0, saved = kn.network_fwd(x.to(device), table, None if init_t is None else init_t.to(device),
                                        relax, need_grad)
    assert_kernel_close(y, ref_y, 2e-5, "y")
    if init_t is not None:
        assert_kernel_close(S0, ref_S0, 2e-5, "S0")
    else:
        assert S0 is None
    W, XIN, SHIST = (None if t is None else t.cpu() for t in saved)
    if need_grad or init_t is not None:
        assert W.shape == (R, D, n) and torch.isfinite(W).all() and ((W >= 0) & (W <= 1)).all()
    if not need_grad:
        return
    assert XIN.shape == (R, D, n) and torch.isfinite(XIN).all()
    torch.testing.assert_close(XIN[:, 0], x, rtol=0, atol=0)  # the input of layer 0
    if init_t is not None:
        C = init_t.shape[0]
        assert SHIST.shape == (R, D, C, n) and torch.isfinite(SHIST).all()
        torch.testing.assert_close(SHIST[:, D - 1], init_t.expand(R, C, n), rtol=0, atol=0)  # S^D = init
    gy = torch.randn(R, n) if has_gy else None
    gS0 = torch.randn(R, init_t.shape[0], n) if init_t is not None else None
    ref_gx = torch_network.network_bwd(ref_saved, table_cpu, relax, gy, gS0)
    with nan_filled_allocations(kn):
        gx = kn.network_bwd(saved, table, relax, None if gy is None else gy.to(device),
                                       None if gS0 is None else gS0.to(device))
    assert_kernel_close(gx, ref_gx, 1e-3, "gx")


# --------------------------------------------------------------------------- the atomic gW reduction
def test_column_split_sweep_uses_atomics(monkeypatch, device, kernel_calls):
    """``soft_permutation`` with the sweep's ``C = n`` columns split over several programs (a smaller
    tile target forces the split cheaply; 33 columns in blocks of 16 also leaves a partial block):
    the backward must reduce ``gW`` across programs with atomics."""
    monkeypatch.setattr(kn, "rows_per_program",
                        lambda n_rows, lanes, target=None: launch.rows_per_program(n_rows, lanes, target=1024))
    splits = []
    real_blocks = kn._sweep_blocks

    def spy(*args):
        out = real_blocks(*args)
        splits.append(out[2])
        return out

    monkeypatch.setattr(kn, "_sweep_blocks", spy)
    check_vs_torch(op_fn("perm", "bitonic", distribution="logistic", steepness=3.0), scores(3, 33), device,
                   kernel_calls)
    assert splits == [3, 3], f"expected 3 column programs in the forward and the backward sweep, got {splits}"


@pytest.mark.parametrize("deterministic", [False, True])
def test_split_sweep_deterministic_mode(deterministic, gpu_launch_configs, device, kernel_calls, monkeypatch):
    """Columns split over programs (the GPU configuration of 3 rows, k = 5): atomic adds of gW by
    default; with ``torch.use_deterministic_algorithms(True)`` one partial gW per column program,
    summed by torch (no atomics: the same bits every run).  Both equal the torch backend."""
    launches = []
    real = kn._sweep_bwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch_(*args, **kwargs):
                launches.append((grid, kwargs["ATOMIC"], args[9]))  # args[9]: PART
                return real[grid](*args, **kwargs)
            return launch_

    monkeypatch.setattr(kn, "_sweep_bwd_kernel", Spy())
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
    check_vs_torch(op_fn("topk", "bitonic", 5), scores(3, 33), device, kernel_calls)
    assert len(launches) == 1 and launches[0][0] == (3, 5), launches
    part = 3 * fastsort.get_network("bitonic", 33).depth * 33  # elements of one partial gW [R, D, n]
    assert launches[0][1:] == ((False, part) if deterministic else (True, 0)), launches


# --------------------------------------------------------------------------- polynomial atan
@triton.jit
def _atan_test_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(Y + offs, poly_atan(tl.load(X + offs, mask=mask, other=0.0)), mask=mask)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf/inf in the branch tl.where discards
def test_polynomial_atan(device):
    """``fastsort.kernels.relaxations.atan`` within a few float32 ulp of ``atan`` over a wide range,
    odd, exact at 0 and +-inf, NaN for NaN."""
    mags = torch.cat([torch.logspace(-30, 30, 1201, dtype=torch.float64),
                      torch.linspace(0, 5, 2001, dtype=torch.float64),
                      torch.tensor([0.41421356237309503, 2.414213562373095, 1.0, 1e38], dtype=torch.float64)])
    x = torch.cat([mags, -mags, torch.tensor([math.inf, -math.inf, math.nan], dtype=torch.float64)]).float()
    y = torch.full_like(x, 123.0, device=device)
    BLOCK = 1024
    _atan_test_kernel[(triton.cdiv(x.numel(), BLOCK),)](x.to(device), y, x.numel(), BLOCK=BLOCK)
    y = y.cpu().double()
    ref = torch.atan(x.double())
    finite = torch.isfinite(x)
    ulp = torch.finfo(torch.float32).eps * ref[finite].abs().clamp(min=torch.finfo(torch.float32).tiny)
    err = (y[finite] - ref[finite]).abs()
    worst = (err / ulp).max().item()
    assert worst <= 3.0, f"max error {worst:.2f} ulp at x = {x[finite][(err / ulp).argmax()].item()}"
    assert y[x == 0].eq(0).all()
    assert y[x == math.inf].item() == pytest.approx(math.pi / 2, rel=1e-7)
    assert y[x == -math.inf].item() == pytest.approx(-math.pi / 2, rel=1e-7)
    assert math.isnan(y[-1].item())
    n = mags.numel()
    assert torch.equal(y[:n], -y[n:2 * n])  # odd


# --------------------------------------------------------------------------- CPU without the interpreter
@pytest.mark.parametrize("op", OPS)
def test_triton_on_cpu_without_interpreter_raises(op, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    method = "splitter_selection" if op in TOPK_OPS else "bitonic"
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA tensor"):
        run_op(op, torch.randn(2, 6), method, 2, backend="triton")
