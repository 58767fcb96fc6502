"""The fused NeuralSort / SoftSort top-k loss on the CPU (``fastsort/kernels/cpu_rows_loss.py``).

Checked against independent computations: difftopk's own loss (float32), the
torch path of ``fastsort.topk_cross_entropy`` run in float64 (its NeuralSort and
SoftSort rows are tested against difftopk and dense references elsewhere), and
hand-worked special rows.  Launcher outputs start NaN-filled
(``helpers.nan_filled_allocations``), so an element the kernel leaves unwritten
fails the comparison.
"""
import math

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")

import fastsort  # noqa: E402
from fastsort import METHODS  # noqa: E402
from fastsort.kernels import cpu_rows_loss as crl  # noqa: E402
from fastsort.kernels import cpu_topk_loss as cl  # noqa: E402
from fastsort.losses import rank_weights  # noqa: E402
from helpers import assert_close, check_dense_gradient, nan_filled_allocations, neuralsort_direct  # noqa: E402

KINDS = ("neuralsort", "softsort")
MODES = ("sm", "smce", "sort")
INF = float("inf")


@pytest.fixture(autouse=True)
def nan_outputs():
    with nan_filled_allocations(crl, guards=False), nan_filled_allocations(cl, guards=False):
        yield


def _kernel(x, y, p, kind, m, mode, it, need_grad=True):
    """``(per-row loss, dloss/dlogits)`` of the kernel and the networks' scatter (rows summed)."""
    args = (x, y, tuple(rank_weights(p, mode)), kind, it, m, mode, p[0], sum(p[1:]), need_grad)
    out, idx = crl.rows_ce_fwd(*args)
    if not need_grad:
        return out, idx
    dx = cl.topk_ce_bwd(out, idx, torch.tensor(1.0), x.shape[1], torch.float32, 1.0, col0=1)
    check_dense_gradient(crl.rows_ce_fwd, args, out, dx)
    return out[:, 0], dx, idx


def _torch64(x, y, p, kind, m, mode, it):
    x64 = x.double().requires_grad_(True)
    loss = fastsort.topk_cross_entropy(x64, y, p, kind, m=m, inverse_temperature=it, top1_mode=mode,
                                       reduction="none", backend="torch")
    loss.sum().backward()
    return loss.detach(), x64.grad


def _special_logits(B=14, C=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(B, C, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    x[0, :30] = -INF  # masked classes: fewer finite logits than wires
    x[1, y[1]] = -INF  # the label masked
    x[2] = -INF  # everything masked but the label
    x[2, y[2]] = 0.5
    x[3, :36] = -INF  # 4 finite logits, the label perhaps among the masked
    return x, y


@pytest.mark.parametrize("p,m", [([0.5, 0, 0, 0, 0.5], 16), ([0.2, 0.3, 0.5], 7), ([1.0], 4), ([0.1] * 10, 11)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_the_float64_torch_path(kind, mode, p, m):
    """Loss and gradient, masked classes and labels included; the loss without a gradient is the same."""
    x, y = _special_logits()
    for it in (0.5, 2.0):
        loss_r, grad_r = _torch64(x, y, p, kind, m, mode, it)
        loss, grad, idx = _kernel(x, y, p, kind, m, mode, it)
        assert (idx[:, 0] == y).all()
        assert_close(loss, loss_r.float(), rtol=2e-5, atol=2e-5)  # (inf: a masked label's smce term)
        assert_close(grad, grad_r.float(), rtol=1e-4, atol=2e-6)
        out0, idx0 = _kernel(x, y, p, kind, m, mode, it, need_grad=False)
        assert out0.shape == (x.shape[0], 1) and idx0.shape == (x.shape[0], 0)
        torch.testing.assert_close(out0[:, 0], loss, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_wide_rows_over_threads(kind):
    """ImageNet-like rows split over the threads: the torch path's numbers."""
    g = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(300, 1003, generator=g)
    y = torch.randint(0, 1003, (300,), generator=g)
    p = [0.5, 0, 0, 0, 0.5]
    loss_r, grad_r = _torch64(x, y, p, kind, 16, "sm", 0.5)
    loss, grad, _ = _kernel(x, y, p, kind, 16, "sm", 0.5)
    assert_close(loss, loss_r.float(), rtol=2e-5, atol=2e-5)
    assert_close(grad, grad_r.float(), rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_every_wire_masked_and_hand_worked_rows(kind):
    """Two classes, m = 2: NeuralSort and SoftSort rows by hand; all wires -inf: the softmax is NaN (as
    torch's), ``sort`` mode's q is the even spread ``sum_r c_r / m``."""
    x = torch.tensor([[1.0, 3.0, -INF]])
    y = torch.tensor([0])
    # wires (1, 3), tau = 1, rank 1: NeuralSort (n + 1 - 2) s - A 1 = (1 - 2, 3 - 2), SoftSort -|3 - s| = (-2, 0):
    # both give P[1, 0] = 1 / (1 + e^2)
    loss, grad, _ = _kernel(x, y, [1.0], kind, 2, "sort", 1.0)
    q = 1 / (1 + math.exp(2))
    assert_close(loss, torch.tensor([-math.log(q * (1 - 2e-7) + 1e-7)]).float(), rtol=1e-6, atol=1e-6)
    # d(-log q)/ds_0 = -(1 - q) * dz_0/ds_0 + ... : the two wires' gradients cancel (a shift changes nothing)
    assert_close(grad[0, 0] + grad[0, 1], torch.tensor(0.0), atol=1e-6)
    assert grad[0, 0] < 0 and grad[0, 2] == 0
    x = torch.full((1, 5), -INF)
    out, idx = crl.rows_ce_fwd(x, torch.tensor([2]), (0.5, 0.5), kind, 1.0, 3, "sort", 0.0, 1.0, True)
    assert_close(out[0, 0], torch.tensor(-math.log((1.0 / 3) * (1 - 2e-7) + 1e-7)), rtol=1e-6, atol=1e-6)
    assert (out[0, 1:] == 0).all()
    out, _ = crl.rows_ce_fwd(x, torch.tensor([2]), (0.5, 0.5), kind, 1.0, 3, "sm", 0.5, 0.5, True)
    assert torch.isnan(out).all()


@pytest.mark.parametrize("kind", KINDS)
def test_nan_inf_and_bad_labels_give_nan_rows(kind):
    """A NaN or +inf logit anywhere in the row, or an out-of-range label: loss and wire gradients NaN,
    the columns still written (NaN ranks first); the other rows untouched."""
    x = torch.randn(5, 30)
    y = torch.tensor([0, 1, 30, -1, 4])
    x[0, 7] = float("nan")
    x[1, 9] = INF
    loss, grad, idx = _kernel(x, y, [0.5, 0.5], kind, 8, "smce", 2.0)
    assert idx[0, 1] == 7 and idx[1, 1] == 9
    assert torch.isnan(loss[:4]).all() and torch.isfinite(loss[4])
    assert torch.isnan(grad[:2].gather(1, idx[:2])).all() and torch.isfinite(grad[4]).all()


def test_sorted_wire_sums_match_the_pair_sums():
    """The kernel's ``O(n_f)`` sums along the wires' order against NeuralSort's ``O(n^2)`` pair sums
    (``cpu_neuralsort._abs_sums`` / ``_sign_sums``) on packed wires as the preselection leaves them (the
    label's first, the others decreasing), with runs of ties, the label tied or masked (not packed),
    one wire, and values of magnitude 1e4 spread over 1e-3."""
    from fastsort.kernels import cpu_neuralsort as cn

    rng = np.random.default_rng(0)
    so = np.empty(16, dtype=np.int64)
    for trial in range(400):
        nf = int(rng.integers(1, 17))
        pool = rng.integers(-3, 4, size=nf).astype(np.float32) if trial % 3 == 0 else \
            rng.standard_normal(nf).astype(np.float32)
        if trial % 7 == 0:
            pool = np.float32(1e4) + np.float32(1e-3) * pool
        lab = trial % 4 != 0  # the label's wire finite (packed first) or masked
        rest = np.sort(pool[1:] if lab else pool)[::-1]
        fs = np.concatenate([pool[:1], rest]).astype(np.float32) if lab else rest.astype(np.float32).copy()
        crl._wire_order(fs, nf, lab, so)
        assert sorted(so[:nf].tolist()) == list(range(nf)) and (np.diff(fs[so[:nf]]) <= 0).all(), (trial, fs)
        c = 0.7
        fa, fa_ref = np.empty(nf, np.float32), np.empty(nf, np.float32)
        crl._sorted_abs_sums(fs, nf, so, fa, c)
        cn._abs_sums(fs, fa_ref, c)
        scale = float(np.abs(fa_ref).max()) + 1e-30
        assert np.allclose(fa, fa_ref, rtol=2e-6, atol=1e-6 * scale), (trial, fs, fa, fa_ref)
        dv, h = rng.standard_normal(nf), rng.standard_normal(nf)
        fds, fds_ref = np.empty(nf, np.float32), np.empty(nf, np.float32)
        crl._sorted_sign_sums(fs, nf, so, dv, h, fds)
        cn._sign_sums(fs, dv, h, fds_ref)
        assert np.allclose(fds, fds_ref, rtol=2e-6, atol=2e-6), (trial, fs, fds, fds_ref)


def test_neuralsort_tied_wires_get_equal_gradients_softsort_the_torch_loss():
    """Exactly tied logits: NeuralSort's derivative of ``|d|`` at 0 is 0 (the NeuralSort kernels'
    symmetric gradient, hand-checked: swapping two tied wires changes nothing); both losses equal the
    torch path's."""
    x = torch.tensor([[2.0, 1.0, 1.0, 0.0, -1.0, 1.0]])
    y = torch.tensor([3])
    for kind in KINDS:  # wires: the label's 0, then 2 and the two first 1s (columns 1, 2)
        loss_r, _ = _torch64(x, y, [0.5, 0.5], kind, 4, "sm", 1.0)
        loss, grad, idx = _kernel(x, y, [0.5, 0.5], kind, 4, "sm", 1.0)
        assert_close(loss, loss_r.float(), rtol=1e-6, atol=1e-6)
        if kind == "neuralsort":
            assert idx[0].tolist() == [3, 0, 1, 2]
            assert grad[0, 1] == grad[0, 2] != 0 and grad[0, 5] == 0


def test_neuralsort_gradient_with_the_label_tied_matches_pairwise_autograd():
    """Rows of few distinct values, the label's logit tied with other wires: the kernel's loss and wire
    gradient against a float64 NeuralSort loss written here with pairwise ``|s_j - s_l|`` (autograd's
    derivative of ``|d|`` at 0 is 0, the kernel's convention), on the kernel's own wires."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 4, (12, 40), generator=g).float() + 0.5 * torch.randint(0, 2, (12, 40), generator=g)
    y = torch.randint(0, 40, (12,), generator=g)
    for b in range(12):  # the label's logit equals the 4th largest one (ties among the wires too)
        x[b, y[b]] = x[b].sort(descending=True).values[3]
    p, m, it = [0.5, 0, 0.2, 0.3], 9, 0.7
    c = rank_weights(p, "sm")
    loss, grad, idx = _kernel(x, y, p, "neuralsort", m, "sm", it)
    s = x.double().gather(1, idx).requires_grad_(True)
    P = neuralsort_direct(s, len(c), 1.0 / it)  # [B, K, m]
    q = p[0] * torch.softmax(s, 1)[:, 0] + (torch.tensor(c, dtype=torch.float64) * P[:, :, 0]).sum(1)
    ref = -torch.log(q * (1 - 2e-7) + 1e-7)
    ref.sum().backward()
    assert (s.detach()[:, :1] == s.detach()[:, 1:]).any(1).all()  # every label is tied with a wire
    assert_close(loss, ref.detach().float(), rtol=1e-5, atol=1e-5)
    assert_close(grad.gather(1, idx), s.grad.float(), rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_public_loss_uses_the_kernel_and_matches_difftopk(monkeypatch, kind, mode):
    """``auto`` on float32 CPU logits with ``m`` runs the fused kernel (counted), and the loss and its
    gradient equal difftopk's own."""
    difftopk = pytest.importorskip("difftopk")  # (a failure in CI: FASTSORT_REQUIRE_ORACLES)
    calls = []
    real = crl.rows_ce_fwd
    monkeypatch.setattr(crl, "rows_ce_fwd", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    g = torch.Generator().manual_seed(5)
    C, m, it, p = 12, 7, 2.0, [0.5, 0.0, 0.0, 0.0, 0.5]
    logits = torch.randn(6, C, generator=g).requires_grad_()
    labels = torch.randint(0, C, (6,), generator=g)
    ref = difftopk.TopKCrossEntropyLoss(kind, it, p, n=C, m=m, top1_mode=mode)(logits, labels)
    out = fastsort.topk_cross_entropy(logits, labels, p, kind, m=m, inverse_temperature=it, top1_mode=mode)
    assert calls, "the fused kernel did not run"
    assert out.dtype == torch.float32 and out.shape == ()
    assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (ga,) = torch.autograd.grad(out, logits)
    (gb,) = torch.autograd.grad(ref, logits)
    assert_close(ga, gb, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_ignore_index_reductions_and_half_logits(kind):
    """Ignored rows (0 loss and gradient), ``sum`` / ``none``, bf16 logits (computed in float32): the
    torch path's numbers."""
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(9, 50, generator=g)
    y = torch.randint(0, 50, (9,), generator=g)
    y[[2, 5]] = -100
    for reduction in ("mean", "sum", "none"):
        for dtype in (torch.float32, torch.bfloat16):
            a, b = (x.to(dtype).detach().clone().requires_grad_() for _ in range(2))
            kw = dict(m=10, inverse_temperature=0.5, reduction=reduction)
            la = fastsort.topk_cross_entropy(a, y, [0.5, 0.5], kind, backend="numba", **kw)
            lb = fastsort.topk_cross_entropy(b, y, [0.5, 0.5], kind, backend="torch", **kw)
            assert la.dtype == dtype
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            assert_close(la.float(), lb.float(), rtol=tol, atol=tol)
            G = torch.randn(la.shape, generator=g)
            (la.float() * G).sum().backward()
            (lb.float() * G).sum().backward()
            assert_close(a.grad.float(), b.grad.float(), rtol=tol, atol=tol)
            assert (a.grad[[2, 5]] == 0).all()


def test_which_methods_have_the_fused_kernel():
    """NeuralSort and SoftSort with ``pow = 1`` on ``numba`` and ``triton`` (its twin is tested in
    test_topk_loss_triton.py); SoftSort's other powers, the torch backend and Sinkhorn run the methods' ops."""
    ns, ss = METHODS["neuralsort"], METHODS["softsort"]
    assert ns.fused_loss({"tau": 0.5}, "numba") == ("none", 2.0, 0.0) == ns.fused_loss({"tau": 0.5}, "triton")
    assert ns.fused_loss({"tau": 0.5}, "torch") is None
    assert ns.loss_kernels == ss.loss_kernels == ("triton", "numba") and ns.kernels == ("numba",)
    assert ss.fused_loss({"tau": 0.5, "pow": 1.0}, "numba") == ("none", 2.0, 0.0)
    assert ss.fused_loss({"tau": 0.5, "pow": 2.0}, "numba") is None
    assert METHODS["sinkhorn"].fused_loss(METHODS["sinkhorn"].parse({}), "numba") is None
    assert METHODS["bitonic"].fused_loss(METHODS["bitonic"].parse({}), "torch") is None


def test_launcher_checks():
    x, y = torch.randn(4, 10), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="serves"):
        crl.rows_ce_fwd(x, y, (1.0,), "sinkhorn", 1.0, 5, "sm", 0.5, 0.5, True)
    with pytest.raises(ValueError, match="top1_mode"):
        crl.rows_ce_fwd(x, y, (1.0,), "neuralsort", 1.0, 5, "ce", 0.5, 0.5, True)
    with pytest.raises(ValueError, match="wires"):
        crl.rows_ce_fwd(x, y, (1.0,), "neuralsort", 1.0, 11, "sm", 0.5, 0.5, True)
    with pytest.raises(ValueError, match="rank weights"):
        crl.rows_ce_fwd(x, y, (0.2,) * 6, "neuralsort", 1.0, 5, "sm", 0.5, 0.5, True)
    with pytest.raises(ValueError, match="rows-method code"):
        crl._rows_ce_run(x.numpy(), y.numpy(), np.ones(1), 5, 1.0, 0, 0.5, 0.5, True, 5, np.empty((4, 6), np.float32),
                         np.empty((4, 5), np.int64), 0, 4)


def test_compiled_graph_matches_eager():
    """The fused op under ``torch.compile`` (its fake functions), NeuralSort on ``numba``: as eager."""
    def f(x, y):
        return fastsort.topk_cross_entropy(x, y, [0.5, 0.5], "neuralsort", m=6, backend="numba")

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    x, y = torch.randn(5, 12), torch.randint(0, 12, (5,))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = compiled(a, y), f(b, y)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)
