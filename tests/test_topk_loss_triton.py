"""The fused Triton top-k cross-entropy (``fastsort.kernels.topk_loss``) against the torch backend.

``fastsort.topk_cross_entropy(..., backend="triton", m=...)`` runs one fused
kernel (top-m preselection, the network on the m wires, the loss and its
gradient w.r.t. the m wires) plus a dense scatter for ``dlogits``; the same
call with ``backend="torch"`` (checked against difftopk and dense references
in ``test_losses.py``) is the reference: per-row losses, logit gradients for a
shared random per-row cotangent, and the mean/sum reductions.

Also here: the two launchers called directly with NaN-prefilled outputs, the
NaN loss of an out-of-range label, masked (``-inf``) classes, a large class
count, half-precision logits and strided logits.

Runs on the ``device`` fixture (CPU under Triton's interpreter in CI, CUDA on
a GPU machine); shapes are small.
"""
import functools
import itertools

import pytest
import torch

pytest.importorskip("triton")

import fastsort  # noqa: E402
from fastsort.kernels import network as kn  # noqa: E402
from fastsort.kernels import topk_loss as ktl  # noqa: E402
from helpers import assert_kernel_close, nan_filled_allocations  # noqa: E402

DISTS = fastsort.DISTRIBUTIONS
NETS = ("bitonic", "odd_even", "splitter_selection")
MODES = ("sm", "smce", "sort")
P_KS = ([1.0], [0.5, 0.5], [0.2, 0.5, 0.3], [0.5, 0.0, 0.0, 0.0, 0.5], [0.1] * 10)
B = 6

# tolerance on losses / gradients, relative to max(1, max |reference|)
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 4e-3), torch.bfloat16: (1.6e-2, 3e-2)}


# --------------------------------------------------------------------------- helpers
# On a GPU the kernel's float32 arithmetic is not the interpreter's (ex2.approx behind tl.exp
# and tl.sigmoid, FMA contraction), and the loss takes the log of q ~ 1e-4 built from
# 1 - alpha terms: differences of a few 1e-5 relative are float32 rounding, not a bug.
CUDA_FP32_FLOOR = 1e-4


def kernel_tol(actual, tol):
    """``tol`` for ``helpers.assert_kernel_close``, at least ``CUDA_FP32_FLOOR`` for a CUDA result."""
    return max(tol, CUDA_FP32_FLOOR) if actual.is_cuda else tol


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the fused-loss launcher calls (and the network launchers, for the unfused path) and runs
    each with NaN-prefilled allocations."""
    calls = {"topk_ce_fwd": 0, "rows_ce_fwd": 0, "topk_ce_bwd": 0, "network_fwd": 0}

    def guarded(module, name):
        fn = getattr(module, name)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            calls[name] += 1
            with nan_filled_allocations(module):
                return fn(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    guarded(ktl, "topk_ce_fwd")
    guarded(ktl, "rows_ce_fwd")
    guarded(ktl, "topk_ce_bwd")
    guarded(kn, "network_fwd")
    return calls


def check_vs_torch(logits, labels, device, calls, reduction="none", fused=True, fwd="topk_ce_fwd", **kw):
    """``topk_cross_entropy(**kw)``: Triton on ``device`` vs torch on the CPU, loss and ``dlogits`` for a
    shared random cotangent (per row for ``reduction="none"``); ``fwd``: the fused forward launcher
    (``rows_ce_fwd`` for NeuralSort / SoftSort)."""
    dtype = logits.dtype
    loss_tol, grad_tol = TOL[dtype]
    lr = logits.detach().clone().requires_grad_(True)
    ref = fastsort.topk_cross_entropy(lr, labels, backend="torch", reduction=reduction, **kw)
    cot = torch.randn(ref.shape).to(dtype)
    ref.backward(cot)

    lt = logits.detach().to(device).requires_grad_(True)
    out = fastsort.topk_cross_entropy(lt, labels.to(device), backend="triton", reduction=reduction, **kw)
    assert out.dtype == dtype and out.shape == ref.shape and out.device.type == device.type
    out.backward(cot.to(device))
    if fused:
        assert calls[fwd] == 1 and calls["topk_ce_bwd"] == 1, calls
    else:
        assert calls["topk_ce_fwd"] == 0 and calls["network_fwd"] >= 1, calls
    assert lt.grad.dtype == dtype and lt.grad.shape == logits.shape
    assert_kernel_close(out, ref.float(), kernel_tol(out, loss_tol), "loss")
    assert_kernel_close(lt.grad, lr.grad.float(), kernel_tol(lt.grad, grad_tol), "dlogits")
    return out, lt.grad, cot


def batch(C, dtype=torch.float32, b=B):
    return (2.0 * torch.randn(b, C)).to(dtype), torch.randint(0, C, (b,))


def _p_k_for(m, i):
    """The ``i``-th p_k (cycling) with ``K < m``."""
    fitting = [p for p in P_KS if len(p) < m]
    return fitting[i % len(fitting)]


# --------------------------------------------------------------------------- networks x m x p_k
M_VALUES = (2, 3, 5, 8, 11, 16)


def _net_cases():
    cases, i = [], 0
    for method in NETS:
        for m in M_VALUES:
            p_k = _p_k_for(m, i)
            C = (m + 1, 50, 100)[i % 3]  # m = C - 1 included
            i += 1
            cases.append(pytest.param(method, m, p_k, C, id=f"{method}-m{m}-K{len(p_k)}-C{C}"))
    return cases


@pytest.mark.parametrize("method,m,p_k,C", _net_cases())
def test_networks_and_m(method, m, p_k, C, device, kernel_calls):
    logits, labels = batch(C)
    check_vs_torch(logits, labels, device, kernel_calls, p_k=p_k, method=method, m=m, inverse_temperature=2.0)


# --------------------------------------------------------------------------- relaxations x top1_mode
def _relax_cases():
    nets, ms = itertools.cycle(NETS), itertools.cycle((4, 7, 9, 16))
    cases = []
    for i, (dist, mode) in enumerate(itertools.product(DISTS, MODES)):
        method, m = next(nets), next(ms)
        p_k = _p_k_for(m, i + 1)
        cases.append(pytest.param(dist, mode, method, m, p_k, id=f"{dist}-{mode}-{method}-m{m}-K{len(p_k)}"))
    return cases


@pytest.mark.parametrize("dist,mode,method,m,p_k", _relax_cases())
def test_relaxations_and_top1_modes(dist, mode, method, m, p_k, device, kernel_calls):
    logits, labels = batch(40)
    check_vs_torch(logits, labels, device, kernel_calls, p_k=p_k, method=method, m=m, distribution=dist,
                   art_lambda=0.4, top1_mode=mode, inverse_temperature=3.0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("method,mode", [("bitonic", "sm"), ("splitter_selection", "smce")])
def test_reductions(reduction, method, mode, device, kernel_calls):
    logits, labels = batch(30)
    out, _, _ = check_vs_torch(logits, labels, device, kernel_calls, reduction=reduction, p_k=[0.2, 0.5, 0.3],
                               method=method, m=6, top1_mode=mode)
    assert out.dim() == 0


def test_unfused_triton_path(device, kernel_calls):
    """Without ``m`` the Triton backend runs the network kernels on all classes (no fused kernel)."""
    logits, labels = batch(12)
    check_vs_torch(logits, labels, device, kernel_calls, fused=False, p_k=[0.5, 0.0, 0.5], method="odd_even")


# --------------------------------------------------------------------------- masked classes
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # steepness * 1e30 (masked wires)
@pytest.mark.parametrize("method,mode,m", [("bitonic", "sm", 8), ("odd_even", "smce", 5),
                                           ("splitter_selection", "sort", 7)])
def test_masked_logits(method, mode, m, device, kernel_calls):
    """``-inf`` logits: a few masked classes; fewer finite classes than ``m`` (some preselected wires are
    ``-inf``); every other class masked; a masked true class (loss ``-log(1e-7)``, or ``inf`` in the
    ``smce`` cross-entropy term), alone or tied with masked wires that reach the top K positions."""
    C = 20
    logits, labels = batch(C)
    labels[:] = torch.tensor([3, 0, 7, 5, 19, 11])
    ninf = float("-inf")
    logits[0, [1, 8, 15]] = ninf
    logits[1, 4:] = ninf  # only 3 finite others: m - 1 > 3
    logits[2] = ninf
    logits[2, 7] = 1.0
    logits[3, 5] = ninf  # the true class itself
    logits[5, 1:] = ninf  # the true class tied at -inf with m - 2 preselected others, some in the top K
    out, grad, cot = check_vs_torch(logits, labels, device, kernel_calls, p_k=[0.3, 0.3, 0.4], method=method,
                                    m=m, top1_mode=mode)
    grad = grad.cpu()
    # masked classes get no gradient; only the smce cross-entropy term reaches a masked true class:
    # d CE / d x_y = softmax_y - 1 = -1
    for row, col in ((3, 5), (5, 11)):
        assert grad[row, col].item() == pytest.approx(-0.3 * cot[row].item() if mode == "smce" else 0.0, abs=1e-6)
        grad[row, col] = 0
    assert (grad[torch.isinf(logits)] == 0).all(), "masked classes must get no gradient"
    finite_rows = [0, 1, 2, 4] if mode == "smce" else list(range(B))
    assert torch.isfinite(out[finite_rows]).all()


# --------------------------------------------------------------------------- NeuralSort / SoftSort
@pytest.mark.parametrize("method", ["neuralsort", "softsort"])
@pytest.mark.parametrize("mode,m,p_k", [("sm", 16, [0.5, 0.0, 0.0, 0.0, 0.5]), ("smce", 5, [0.2, 0.5, 0.3]),
                                        ("sort", 11, [0.1] * 10), ("sm", 2, [1.0])])
def test_rows_methods(method, mode, m, p_k, device, kernel_calls):
    """The fused NeuralSort / SoftSort kernel (``rows_ce_fwd``) against the torch ops, masked classes
    included (fewer finite logits than wires, a masked label, everything but the label masked)."""
    C = 40
    logits, labels = batch(C)
    ninf = float("-inf")
    logits[0, :C - 4] = ninf
    logits[1, labels[1]] = ninf
    logits[2] = ninf
    logits[2, labels[2]] = 0.5
    check_vs_torch(logits, labels, device, kernel_calls, fwd="rows_ce_fwd", p_k=p_k, method=method, m=m,
                   top1_mode=mode, inverse_temperature=0.5)


@pytest.mark.parametrize("method", ["neuralsort", "softsort"])
def test_rows_methods_gpu_launch_configuration_and_bf16(method, gpu_launch_configs, device, kernel_calls):
    """One row per program, 1024-column blocks (C = 1100), bf16 logits; a NaN and a +inf row are NaN."""
    logits, labels = batch(1100, b=4)
    logits[0, [3, 600, 1099]] += 8.0
    check_vs_torch(logits, labels, device, kernel_calls, fwd="rows_ce_fwd", p_k=[0.5, 0.0, 0.0, 0.0, 0.5],
                   method=method, m=16)
    kernel_calls["rows_ce_fwd"] = kernel_calls["topk_ce_bwd"] = 0
    check_vs_torch(logits.to(torch.bfloat16), labels, device, kernel_calls, fwd="rows_ce_fwd", p_k=[0.5, 0.5],
                   method=method, m=8, top1_mode="smce")
    logits[1, 5], logits[2, 7] = float("nan"), float("inf")
    out = fastsort.topk_cross_entropy(logits.to(device), labels.to(device), [0.5, 0.5], method, m=8,
                                      backend="triton", reduction="none").cpu()
    assert torch.isnan(out[1:3]).all() and torch.isfinite(out[[0, 3]]).all()


def test_many_classes(device, kernel_calls):
    """C = 32768: the preselection walks the row in several blocks."""
    logits, labels = batch(32768, b=2)
    # the largest logits in different blocks, one of them the label's neighbour
    logits[0, [5, 9000, 20000, 32767]] += 10.0
    labels[0] = 20000
    check_vs_torch(logits, labels, device, kernel_calls, p_k=[0.5, 0.0, 0.0, 0.0, 0.5], method="bitonic", m=12)


@pytest.mark.parametrize("method,mode,C", [("bitonic", "sm", 1000), ("splitter_selection", "smce", 2100)])
def test_gpu_launch_configuration(method, mode, C, gpu_launch_configs, device, kernel_calls):
    """The GPU's launch configuration (one row per program, 1024-column blocks: C = 2100 is two full
    blocks and a partial one) run by the interpreter, against the torch backend."""
    assert ktl._config(3, C, 16)[:2] == (1, 1024)  # the GPU configuration is in effect
    logits, labels = batch(C, b=3)
    logits[0, [3, C // 2, C - 1]] += 8.0  # large logits in different blocks
    check_vs_torch(logits, labels, device, kernel_calls, p_k=[0.5, 0.0, 0.0, 0.0, 0.5], method=method, m=16,
                   top1_mode=mode)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method,mode", [("bitonic", "sm"), ("splitter_selection", "smce")])
def test_half_logits(dtype, method, mode, device, kernel_calls):
    """fp16/bf16 logits: loss and gradient in the logits' dtype, equal to the torch backend's on the
    same logits (both compute in float32)."""
    logits, labels = batch(50, dtype=dtype)
    check_vs_torch(logits, labels, device, kernel_calls, p_k=[0.2, 0.5, 0.3], method=method, m=9, top1_mode=mode)


def test_strided_logits(device, kernel_calls):
    """A row stride larger than C (a slice of a wider tensor), and a transposed (column-major) tensor."""
    wide = 2.0 * torch.randn(B, 40)
    labels = torch.randint(0, 25, (B,))
    check_vs_torch(wide[:, 7:32], labels, device, kernel_calls, p_k=[0.5, 0.5], m=6)
    kernel_calls.update(topk_ce_fwd=0, topk_ce_bwd=0)
    check_vs_torch(2.0 * torch.randn(25, B).t(), labels, device, kernel_calls, p_k=[0.5, 0.5], m=6)


# --------------------------------------------------------------------------- launchers, called directly
def _fused_direct(logits, labels, p_k, method, m, mode, need_grad, device):
    """``topk_ce_fwd`` with the table and rank weights the public path builds."""
    c = fastsort.losses.rank_weights(p_k, mode)
    table = fastsort.get_network(method, m, device, len(p_k) if method == "splitter_selection" else None)
    out, idx = ktl.topk_ce_fwd(logits.to(device), labels.to(device), tuple(c), table, ("cauchy", 2.0, 0.25), m,
                               mode, p_k[0], sum(p_k[1:]), need_grad)
    return out[:, 0], out[:, 1:], idx


@pytest.mark.parametrize("method,mode,m,need_grad", [("bitonic", "sm", 5, True), ("odd_even", "sort", 8, False),
                                                     ("splitter_selection", "smce", 16, True)])
def test_topk_ce_fwd_writes_every_element(method, mode, m, need_grad, device):
    """``topk_ce_fwd`` with NaN-prefilled loss / gsel / scratch (idx prefilled with -1): the loss is the
    torch backend's, ``idx`` the label then the other top ``m - 1`` columns by value, ``gsel`` the torch
    backend's gradient at those columns."""
    p_k = [0.2, 0.5, 0.3]
    logits, labels = batch(37, b=5)
    with nan_filled_allocations(ktl):
        loss, gsel, idx = _fused_direct(logits, labels, p_k, method, m, mode, need_grad, device)
    lr = logits.clone().requires_grad_(True)
    ref = fastsort.topk_cross_entropy(lr, labels, p_k, method, m=m, top1_mode=mode, inverse_temperature=2.0,
                                      reduction="none", backend="torch")
    assert_kernel_close(loss, ref, kernel_tol(loss, 1e-5), "loss")
    if not need_grad:
        assert gsel.shape == idx.shape == (5, 0)
        return
    ref.sum().backward()
    others = logits.scatter(1, labels[:, None], float("-inf")).topk(m - 1, dim=1).indices
    expected_idx = torch.cat([labels[:, None], others], dim=1)
    assert idx.dtype == torch.int64
    assert torch.equal(idx.cpu().long(), expected_idx)
    assert_kernel_close(gsel, lr.grad.gather(1, expected_idx), kernel_tol(gsel, 1e-4), "gsel")
    # the torch backend's gradient is zero outside the m preselected columns, as the fused one is
    assert lr.grad.scatter(1, expected_idx, 0.0).abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("per_row", [True, False], ids=["per_row_grad", "scalar_grad"])
@pytest.mark.parametrize("col0,scale", [(0, 1.0), (1, 0.25)], ids=["gsel", "fused_out_mean"])
def test_topk_ce_bwd_writes_every_element(dtype, per_row, col0, scale, device):
    """The dense ``dlogits`` (NaN-prefilled): ``scale * grad_out * gsel`` at the selected columns, exactly 0
    everywhere else, in the logits' dtype; C spans several column blocks and is not a multiple of one.
    ``col0 = 1``: ``gsel`` read from the fused forward's ``[B, 1 + m]`` output (loss column first)."""
    b, m, C = 3, 6, 5000
    gsel = torch.randn(b, m)
    out = torch.cat([torch.randn(b, col0), gsel], dim=1)
    idx = torch.stack([torch.randperm(C)[:m] for _ in range(b)])
    idx[0, 0] = C - 1  # the last column
    grad_out = torch.randn(b) if per_row else torch.tensor(0.75)
    with nan_filled_allocations(ktl):
        dx = ktl.topk_ce_bwd(out.to(device), idx.to(device), grad_out.to(device).to(dtype), C, dtype, scale,
                                  col0=col0)
    g = (grad_out[:, None] if per_row else grad_out).to(dtype).float() * scale
    expected = torch.zeros(b, C).scatter(1, idx.long(), gsel * g).to(dtype)
    assert dx.dtype == dtype and dx.shape == (b, C)
    # exact, except that Triton's interpreter may round float32 -> bfloat16 differently (1 ulp)
    rtol = 2 ** -7 if dtype == torch.bfloat16 and device.type == "cpu" else 0
    torch.testing.assert_close(dx.cpu(), expected, rtol=rtol, atol=0)


def test_out_of_range_label_gives_nan(device):
    """An out-of-range label (the public API checks CPU labels, not CUDA ones) gives a NaN loss and NaN
    gradients for its row only."""
    p_k, m = [0.5, 0.5], 4
    logits, labels = batch(10, b=4)
    bad = labels.clone()
    bad[1], bad[2] = 10, -1
    loss, gsel, _ = _fused_direct(logits, bad, p_k, "bitonic", m, "sm", True, device)
    ref, _, _ = _fused_direct(logits, labels, p_k, "bitonic", m, "sm", True, device)
    assert torch.isnan(loss[1:3]).all() and torch.isnan(gsel[1:3]).all()
    keep = [0, 3]
    assert torch.isfinite(loss[keep]).all()
    torch.testing.assert_close(loss[keep], ref[keep], rtol=0, atol=0)
    # the public entry point
    if device.type == "cpu":
        with pytest.raises(ValueError, match="labels must be in"):
            fastsort.topk_cross_entropy(logits, bad, p_k, m=m, backend="triton")
    else:
        out = fastsort.topk_cross_entropy(logits.to(device), bad.to(device), p_k, m=m, backend="triton",
                                          reduction="none")
        assert torch.isnan(out[1:3]).all() and torch.isfinite(out[keep]).all()


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    logits, labels = batch(10)
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA tensor"):
        fastsort.topk_cross_entropy(logits, labels, [0.5, 0.5], m=4, backend="triton")
