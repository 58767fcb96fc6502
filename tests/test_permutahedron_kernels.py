"""The permutahedron kernels against the torch reference: numba (CPU) and Triton (interpreted on CPU here).

Each launcher's forward (output, saved ``sigma``, block ends and weights) and backward are compared with
:mod:`fastsort.permutahedron`'s torch functions, for every operator and regularization and odd row
lengths, with every launcher allocation NaN-prefilled (an element a kernel fails to write shows up) and
rows holding a NaN.  The outputs are compared with the float64 reference (the kernels accumulate in
float64 / use cancellation-free forms); ``sigma`` and the blocks with the float32 reference (the same
float32 inputs to the same comparisons), the gradients with the reference backward fed the kernel's
own saved tensors and with the float64 reference.

Triton's interpreter costs ~10 ms per step of the sequential PAV loop (up to ``2n - 2`` steps), so the
Triton matrix runs every operator at n <= 100 and one operator per regularization at n = 1000.
"""
import math

import pytest
import torch

import fastsort
from fastsort import permutahedron as P
from helpers import assert_close, nan_filled_allocations

CONFIGS = [("rank", "l2"), ("sort", "l2"), ("topk_mask", "l2"), ("rank", "kl"), ("sort", "kl")]


def batch(n, seed, R=4):
    """Rows with ties, a NaN row (row 2) and a cotangent."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(R, n, generator=gen)
    if n >= 4:
        x[1, : n // 2] = x[1, 0]
    if R > 2:
        x[2, n // 2] = math.nan
    return x, torch.randn(R, n, generator=gen)


def check_launchers(impl, x, g, op, reg, strength, k, without_grad=True):
    """``without_grad``: also run the forward variant that saves nothing (it must give the same output)."""
    with nan_filled_allocations(impl):
        out, perm, last, q = impl.isotonic_fwd(x, op, reg, strength, k, True)
        dx = impl.isotonic_bwd(g, perm, last, q, op, reg, strength)
        if without_grad:
            out_nograd = impl.isotonic_fwd(x, op, reg, strength, k, False)[0]
    what = f"{impl.__name__} {op} {reg} eps={strength} n={x.shape[-1]}"
    if without_grad:
        assert_close(out_nograd, out, equal_nan=True, what=what + " (no grad)")
        placeholders = impl.isotonic_fwd(x[:1, :2], op, reg, strength, 1, False)[1:]  # (not NaN-filled guards)
        assert all(t.numel() == 0 for t in placeholders), what
    ok = ~torch.isnan(x).any(-1)
    bad = ~ok
    # the NaN row: NaN out, NaN weights, NaN gradient
    assert bool(torch.isnan(out[bad]).all() and torch.isnan(q[bad]).all() and torch.isnan(dx[bad]).all()), what
    # the block structure and the permutation: exactly the float32 reference's
    ref32 = P.reference_forward(x[ok], op, reg, strength, k)
    assert torch.equal(perm[ok].long(), ref32[1]), what + " sigma"
    assert torch.equal(last[ok].long(), ref32[2]), what + " blocks"
    # values against the float64 reference
    ref64 = P.reference_forward(x[ok].double(), op, reg, strength, k)
    scale = max(1.0, float(ref64[0].abs().max()))
    assert_close(out[ok].double(), ref64[0], atol=3e-6 * scale, rtol=3e-6, what=what)
    assert_close(q[ok].double(), ref64[3], atol=3e-6, rtol=3e-6, what=what + " q")
    # the backward: the reference backward of the same saved tensors, and the float64 reference's
    want = P.reference_backward(g[ok].double(), perm[ok], last[ok], q[ok].double(), op, reg, strength)
    want64 = P.reference_backward(g[ok].double(), *ref64[1:], op, reg, strength)
    gscale = max(1.0, float(want64.abs().max()))
    assert_close(dx[ok].double(), want, atol=2e-6 * gscale, rtol=2e-6, what=what + " grad")
    assert_close(dx[ok].double(), want64, atol=2e-5 * gscale, rtol=2e-5, what=what + " grad (float64)")


# --------------------------------------------------------------------------- numba
@pytest.fixture(scope="module")
def cpu_isotonic():
    from fastsort.kernels import cpu_isotonic

    if cpu_isotonic.numba_status() is not None:
        pytest.skip(cpu_isotonic.numba_status())
    return cpu_isotonic


@pytest.mark.parametrize("op,reg", CONFIGS)
def test_numba_kernels(cpu_isotonic, op, reg):
    # n <= 32: insertion sorts (4 rows: too few for the sorting network); 100: a joint radix sort of the 4
    # rows (8-bit digits); 1000: one row's
    # radix sort (8-bit digits); 5000: one row, 11-bit digits
    for n in (1, 2, 3, 7, 100, 1000, 5000):
        x, g = batch(n, seed=n)
        for strength in (0.05, 1.0, 20.0):
            check_launchers(cpu_isotonic, x, g, op, reg, strength, k=max(1, n // 3))


@pytest.mark.parametrize("op,reg", CONFIGS)
def test_numba_joint_sort_of_many_rows(cpu_isotonic, op, reg):
    """Rows sorted together with 11-bit digits, the row in the keys' highest bits (48 rows of 120: 5760
    keys); ties across rows and in one row, and values that differ in one low bit only."""
    x, g = batch(120, seed=7, R=48)
    x[5] = x[4]  # two equal rows
    x[6, 60:] = torch.nextafter(x[6, 60:], torch.tensor(math.inf))
    x[7, ::2] = 0.0
    x[7, 1::2] = -0.0
    check_launchers(cpu_isotonic, x, g, op, reg, 0.5, k=40)


@pytest.mark.parametrize("op,reg", CONFIGS)
def test_numba_network_sort_of_short_rows(cpu_isotonic, op, reg):
    """Rows of 8 to 32 elements, at least ``NETWORK_MIN`` of them, are sorted by the bitonic network's
    comparators, ``NETWORK_ROWS`` side by side (130 rows: a full block and a partial one); with ties (half
    a row, a whole row, two equal rows), signed zeros and a NaN row: sigma must be the float32 reference's."""
    assert 130 > cpu_isotonic.NETWORK_ROWS and 8 >= cpu_isotonic.NETWORK_MIN  # (the rows below take the network)
    for n in (8, 13, 16, 31, 32):
        assert cpu_isotonic.sort_network(n).shape[0] > 0
        x, g = batch(n, seed=100 + n, R=130)
        x[3] = x[3, 0]
        x[129] = x[128]
        x[5, ::2] = 0.0
        x[5, 1::2] = -0.0
        check_launchers(cpu_isotonic, x, g, op, reg, 0.5, k=max(1, n // 3), without_grad=False)


def test_numba_parallel_and_serial_paths_agree(cpu_isotonic, monkeypatch):
    x, g = batch(300, seed=1, R=64)
    a = cpu_isotonic.isotonic_fwd(x, "rank", "kl", 0.5, 0, True)
    from fastsort.kernels import cpu_network

    assert cpu_isotonic._work(64, 300) >= cpu_network.SERIAL_WORK  # (the first call ran on several threads)
    monkeypatch.setattr(cpu_network, "SERIAL_WORK", 1 << 62)  # everything on the calling thread
    b = cpu_isotonic.isotonic_fwd(x, "rank", "kl", 0.5, 0, True)
    for s, t in zip(a, b):
        assert_close(s, t, equal_nan=True)
    assert_close(cpu_isotonic.isotonic_bwd(g, *a[1:], "rank", "kl", 0.5),
                 cpu_isotonic.isotonic_bwd(g, *b[1:], "rank", "kl", 0.5), equal_nan=True)


def test_numba_rejects_wrong_inputs(cpu_isotonic):
    with pytest.raises(ValueError, match="float32 CPU rows"):
        cpu_isotonic.isotonic_fwd(torch.randn(2, 3, dtype=torch.float64), "rank", "l2", 1.0, 0, True)
    with pytest.raises(ValueError, match="float32 CPU rows"):
        cpu_isotonic.isotonic_fwd(torch.randn(3), "rank", "l2", 1.0, 0, True)
    out, perm, last, q = cpu_isotonic.isotonic_fwd(torch.randn(2, 5), "rank", "l2", 1.0, 0, True)
    with pytest.raises(ValueError, match="isotonic_bwd takes"):  # (the kernel reads them by address)
        cpu_isotonic.isotonic_bwd(torch.randn(2, 5), perm.long(), last, q, "rank", "l2", 1.0)
    with pytest.raises(ValueError, match="isotonic_bwd takes"):
        cpu_isotonic.isotonic_bwd(torch.randn(2, 4), perm, last, q, "rank", "l2", 1.0)


def test_numba_rows_view_a_tensor_by_its_address(cpu_isotonic):
    """``cpu_memory.rows``: the launchers' arrays over a tensor's own memory, row-major, read and written."""
    import numba

    from fastsort.kernels.cpu_memory import rows

    @numba.njit
    def weigh_and_double(addr, R, n):
        a = rows(addr, R, n, numba.float32)
        total = 0.0
        for r in range(R):
            for j in range(n):
                total += (r * 10 + j) * a[r, j]
                a[r, j] *= 2
        return total

    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    want = float(sum((r * 10 + j) * (4 * r + j) for r in range(3) for j in range(4)))
    assert weigh_and_double(t.data_ptr(), 3, 4) == want
    assert torch.equal(t, 2 * torch.arange(12, dtype=torch.float32).reshape(3, 4))


# --------------------------------------------------------------------------- Triton (interpreter on CPU)
@pytest.fixture(scope="module")
def isotonic():
    pytest.importorskip("triton")
    from fastsort._dispatch import interpreter_enabled, triton_available

    if not triton_available():
        pytest.skip("triton cannot run the kernels here")
    if not interpreter_enabled() and not torch.cuda.is_available():
        pytest.skip("the Triton kernels need CUDA or TRITON_INTERPRET=1")
    from fastsort.kernels import isotonic

    return isotonic


TRITON_CASES = [(op, reg, n) for op, reg in CONFIGS for n in (1, 2, 3, 7, 100)] + [
    pytest.param("rank", "l2", 1000, marks=pytest.mark.slow)]  # ~15 s interpreted


@pytest.mark.parametrize("op,reg,n", TRITON_CASES)
def test_triton_kernels(isotonic, device, op, reg, n):
    x, g = batch(n, seed=100 + n)
    # n = 1000: a strength with fewer pools (rank: pools where gaps of x / eps are below 1), so fewer
    # interpreted steps; the kl and sort variants run the same loop at n = 100
    strength = 0.3 if n < 1000 else 0.002
    if device.type == "cpu":
        check_launchers(isotonic, x, g, op, reg, strength, k=max(1, n // 3), without_grad=n <= 7)
    else:
        xd, gd = x.to(device), g.to(device)
        out, perm, last, q = isotonic.isotonic_fwd(xd, op, reg, strength, max(1, n // 3), True)
        assert perm.dtype == torch.int64 and last.dtype == torch.int32 and q.dtype == torch.float32
        dx = isotonic.isotonic_bwd(gd, perm, last, q, op, reg, strength)
        ok = ~torch.isnan(x).any(-1)
        ref = P.reference_forward(x[ok].double(), op, reg, strength, max(1, n // 3))
        assert_close(out.cpu()[ok].double(), ref[0], atol=3e-6 * max(1.0, float(ref[0].abs().max())), rtol=3e-6)
        want = P.reference_backward(g[ok].double(), *ref[1:], op, reg, strength)
        assert_close(dx.cpu()[ok].double(), want, atol=2e-5 * max(1.0, float(want.abs().max())), rtol=2e-5)


def test_triton_gpu_launch_configuration(isotonic, gpu_launch_configs, monkeypatch):
    """The launchers' GPU choices (32 lanes per PAV program, the tile kernels' rows per program) with the
    kernels still interpreted: more programs than rows per program, a partly filled last one."""
    monkeypatch.setattr(isotonic, "interpreting", lambda: False)
    x, g = batch(9, seed=7, R=40)
    check_launchers(isotonic, x, g, "rank", "kl", 0.4, k=3, without_grad=False)


def test_triton_rejects_rows_longer_than_the_tiles(isotonic):
    from fastsort.kernels.launch import MAX_LANES

    with pytest.raises(ValueError, match="use backend='torch'"):
        isotonic.isotonic_fwd(torch.randn(1, MAX_LANES + 1), "rank", "l2", 1.0, 0, True)


def test_triton_through_the_method(isotonic, device):
    """The method's triton backend (the op's eager Function) against its torch backend."""
    method = P.Permutahedron("permutahedron")
    p = method.parse({"regularization": "kl", "regularization_strength": 0.5})
    x, g = batch(12, seed=3, R=3)
    x = x[[0, 1]].to(device).requires_grad_()
    y = method.rank(x, p, "triton")
    y.backward(g[[0, 1]].to(device))
    xr = x.detach().cpu().double().requires_grad_()
    yr = method.rank(xr, p, "torch")
    yr.backward(g[[0, 1]].double())
    assert_close(y.detach().cpu().double(), yr.detach(), atol=1e-5)
    assert_close(x.grad.cpu().double(), xr.grad, atol=1e-4)


def test_triton_tied_infinities(isotonic, device):
    """Tied infinities pool into one block of equal stand-ins (~1e30 each): their l2 ranks are the mean of their
    hard ranks, as the torch reference and the CPU kernels give (float32 block sums rounded by ~1e23 there)."""
    inf = math.inf
    x = torch.tensor([[inf, inf, inf, -inf, -inf, inf]], device=device)
    y = fastsort.soft_rank(x, method="permutahedron", backend="triton")
    assert_close(y.cpu(), torch.tensor([[4.5, 4.5, 4.5, 1.5, 1.5, 4.5]]))
