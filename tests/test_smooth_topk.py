"""Smooth top-k SVM losses (fastsort.smooth_topk) against difftopk 0.2.0 and exact references.

difftopk's backward is approximate (a p-th order expansion where its
recursion is unstable), so gradients are compared with it at 1% of the
largest gradient, and checked exactly with float64 gradcheck. For k = 1
difftopk's gradient is wrong (it gives d log e_0 / dx = 1 instead of 0), so
k = 1 gradients are checked against the closed form instead.
"""
import itertools
import math
import warnings

import pytest
import torch

from fastsort.smooth_topk import (
    SmoothHardTopKLoss,
    SmoothTopKLoss,
    log_elementary_symmetric,
    smooth_topk_svm_loss,
)
from helpers import make_batch  # the shared seeded logits/labels batch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    difftopk = pytest.importorskip("difftopk")

# difftopk instantiates its autograd.Function (deprecated in torch, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")

HARD_GAP = math.log(1e3)  # difftopk's threshold: gap >= k * tau * log(1000)


def _n_hard(logits, k, tau):
    top = logits.double().topk(k + 1, dim=1).values
    return int(((top[:, k - 1] - top[:, k]) >= k * tau * HARD_GAP).sum())


# ---------------------------------------------------------------------------
# log_elementary_symmetric
# ---------------------------------------------------------------------------


def _brute_log_esp(x, k):
    """log e_j(exp(x)) by enumerating subsets, float64, in log space."""
    n = x.shape[-1]
    out = []
    for j in range(k + 1):
        combos = list(itertools.combinations(range(n), j))
        if not combos:
            out.append(torch.full(x.shape[:-1], -math.inf, dtype=torch.float64))
            continue
        terms = torch.stack([x[..., list(c)].sum(-1) for c in combos], dim=-1)
        out.append(torch.logsumexp(terms, dim=-1))
    return torch.stack(out, dim=-1)


@pytest.mark.parametrize(
    "shape, k, scale",
    [
        ((1,), 1, 1.0),
        ((3, 1), 0, 1.0),
        ((4, 5), 3, 1.0),
        ((4, 5), 5, 1.0),
        ((4, 5), 7, 1.0),  # k > n: trailing -inf
        ((2, 3, 7), 4, 3.0),
        ((5, 8), 8, 50.0),
        ((3, 9), 2, 1.0),  # odd n at several levels
    ],
)
def test_log_esp_matches_bruteforce(shape, k, scale):
    x = torch.randn(*shape, dtype=torch.float64) * scale
    got = log_elementary_symmetric(x, k)
    ref = _brute_log_esp(x, k)
    assert got.shape == (*shape[:-1], k + 1)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(got[finite], ref[finite], rtol=1e-12, atol=1e-10)


def test_log_esp_small_example():
    x = torch.log(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    expected = torch.tensor([1.0, 6.0, 11.0, 6.0], dtype=torch.float64)
    torch.testing.assert_close(log_elementary_symmetric(x, 3).exp(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_esp_extreme_values_finite_gradient(dtype):
    x = torch.tensor(
        [[1e4, -1e4, -math.inf, 0.0, 3.0], [80.0, 80.0, -80.0, -math.inf, -math.inf]], dtype=dtype
    ).requires_grad_()
    out = log_elementary_symmetric(x, 6)
    ref = _brute_log_esp(x.detach().double(), 6)
    assert torch.equal(torch.isinf(out), torch.isinf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(out[finite].double(), ref[finite], rtol=1e-6, atol=1e-3)
    out[finite].sum().backward()
    assert torch.isfinite(x.grad).all()
    # exp(-inf) = 0 contributes nothing
    assert x.grad[0, 2] == 0 and (x.grad[1, 3:] == 0).all()


@pytest.mark.parametrize("n, k", [(1, 1), (5, 2), (6, 6), (7, 3), (4, 6)])
def test_log_esp_gradcheck(n, k):
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)

    def finite_part(z):
        return log_elementary_symmetric(z, k)[..., : min(k, n) + 1]

    assert torch.autograd.gradcheck(finite_part, (x,))


# ---------------------------------------------------------------------------
# the loss's linear-space fast path and its log-space fallback
# ---------------------------------------------------------------------------


def _log_space_loss(logits, labels, k, tau, alpha=1.0):
    """The smooth loss per row entirely through log_elementary_symmetric (plain autograd)."""
    B, C = logits.shape
    cols = torch.arange(C - 1).expand(B, -1)
    cols = cols + (cols >= labels[:, None]).long()
    x1, x2 = logits.gather(1, cols), logits.gather(1, labels[:, None]).squeeze(1)
    log_e = log_elementary_symmetric(x1 / (k * tau), k)
    z = alpha / tau + log_e[:, k] - log_e[:, k - 1] - x2 / (k * tau)
    return tau * torch.logaddexp(z, torch.zeros_like(z))


@pytest.fixture
def log_space_calls(monkeypatch):
    """The rows the loss sends to the log-space path (a list of row counts, one per call)."""
    import fastsort.smooth_topk as st

    calls = []
    real = st.log_elementary_symmetric

    def counting(x, k):
        calls.append(x.shape[0])
        return real(x, k)

    monkeypatch.setattr(st, "log_elementary_symmetric", counting)
    return calls


@pytest.mark.parametrize("B, C, k, tau", [(6, 2, 1, 1.0), (5, 9, 3, 0.5), (4, 33, 8, 1.0), (3, 300, 5, 0.2)])
def test_fast_path_matches_log_space(B, C, k, tau, log_space_calls):
    logits, labels = make_batch(B, C, C + k, scale=3.0)
    x = logits.clone().requires_grad_()
    ours = smooth_topk_svm_loss(x, labels, k, tau, reduction="none")
    assert log_space_calls == []  # every row on the fast path
    ref_x = logits.clone().requires_grad_()
    ref = _log_space_loss(ref_x, labels, k, tau)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    G = torch.randn(B, dtype=torch.float64)
    (ours * G).sum().backward()
    (ref * G).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_rows_fall_back_to_log_space(dtype, log_space_calls):
    """Rows whose e_{k-1}, e_k would underflow the dtype (scores spread by hundreds of k tau) take the
    log-space path; the others stay on the fast path; values and gradients are those of log space."""
    B, C, k, tau = 6, 12, 4, 0.5
    logits, labels = make_batch(B, C, 5, scale=1.0)
    labels[1] = labels[4] = 0
    logits[1, 1:4] += 3000.0  # three classes far above the rest: e_4 / e_3 ~ exp(-3000 / (k tau))
    logits[4, 5] = 1e4
    x = logits.to(dtype).requires_grad_()
    ours = smooth_topk_svm_loss(x, labels, k, tau, reduction="none")
    assert log_space_calls == [2]
    ref_x = logits.to(dtype).requires_grad_()  # the log-space loss in the same dtype
    ref = _log_space_loss(ref_x, labels, k, tau)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, ref, **tol)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, ref_x.grad, **tol)


def test_float32_beyond_its_range_runs_in_float64(log_space_calls):
    """C(C - 1, k) beyond float32's range (here ~1e41): the fast path runs in float64, the result is float32."""
    B, C, k = 4, 1000, 20
    logits, labels = make_batch(B, C, 9, scale=2.0)
    x = logits.float().requires_grad_()
    ours = smooth_topk_svm_loss(x, labels, k, 1.0, reduction="none")
    assert ours.dtype == torch.float32 and log_space_calls == []
    ref = _log_space_loss(logits.float().double(), labels, k, 1.0)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)
    ours.sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("C, k", [(2, 1), (5, 2), (8, 7), (13, 4)])
def test_shifted_esp_gradcheck(C, k):
    """The hand-written backward of the fast path (label left out, entries <= 0)."""
    from fastsort.smooth_topk import _ShiftedESP

    u = -torch.rand(3, C, dtype=torch.float64).requires_grad_()
    labels = torch.arange(3) % C
    assert torch.autograd.gradcheck(lambda v: _ShiftedESP.apply(v, labels, k), (u,))


# ---------------------------------------------------------------------------
# against difftopk
# ---------------------------------------------------------------------------

# difftopk needs k + int(1 + 0.2 k) - 1 <= C - 1
DIFFTOPK_CASES = [
    # B, C, k, tau, scale
    (8, 10, 2, 1.0, 1.0),
    (8, 10, 2, 0.5, 3.0),
    (8, 10, 5, 1.0, 3.0),
    (6, 7, 5, 2.0, 1.0),
    (16, 50, 5, 0.1, 1.0),
    (12, 12, 4, 0.05, 1.0),
    (16, 20, 3, 1.0, 100.0),  # hard path for some rows
    (16, 20, 2, 1.0, 100.0),
    (8, 100, 10, 1.0, 10.0),
]


@pytest.mark.parametrize("hard", [False, True], ids=["smooth", "hard"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B, C, k, tau, scale", DIFFTOPK_CASES)
def test_matches_difftopk(B, C, k, tau, scale, dtype, hard):
    logits, labels = make_batch(B, C, B * C + k, scale=scale, dtype=dtype)
    if hard and scale == 100.0:
        assert 0 < _n_hard(logits, k, tau) < B  # both branches exercised
    ref_cls = difftopk.SmoothHardTopKLoss if hard else difftopk.SmoothTopKLoss
    our_cls = SmoothHardTopKLoss if hard else SmoothTopKLoss
    ref_x = logits.clone().requires_grad_()
    our_x = logits.clone().requires_grad_()
    ref = ref_cls(C, k, tau)(ref_x, labels)
    ours = our_cls(k, tau)(our_x, labels)
    assert ours.dtype == dtype and ours.shape == ()
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, ref, **tol)
    ref.backward()
    ours.backward()
    assert torch.isfinite(our_x.grad).all()
    torch.testing.assert_close(our_x.grad, ref_x.grad, rtol=0, atol=1e-2 * ref_x.grad.abs().max().item())


@pytest.mark.parametrize("hard", [False, True], ids=["smooth", "hard"])
@pytest.mark.parametrize("tau, scale", [(1.0, 1.0), (0.2, 3.0), (1.0, 100.0)])
def test_k1_closed_form(tau, scale, hard):
    """k = 1 is tau * logsumexp((x + 1[j != y]) / tau) - x_y; values also match difftopk."""
    B, C = 12, 9
    logits, labels = make_batch(B, C, 7, scale=scale)
    x = logits.clone().requires_grad_()
    ours = smooth_topk_svm_loss(x, labels, 1, tau=tau, hard=hard, reduction="none")
    margin = torch.ones(B, C, dtype=torch.float64).scatter_(1, labels[:, None], 0.0)
    ref_x = logits.clone().requires_grad_()
    smooth = tau * torch.logsumexp((ref_x + margin) / tau, dim=1) - ref_x.gather(1, labels[:, None]).squeeze(1)
    if hard:
        top = ref_x.detach().topk(2, dim=1).values
        is_hard = (top[:, 0] - top[:, 1]) >= tau * HARD_GAP
        hinge = ((ref_x + margin).max(dim=1).values - ref_x.gather(1, labels[:, None]).squeeze(1)).clamp(min=0)
        smooth = torch.where(is_hard, hinge, smooth)
    torch.testing.assert_close(ours, smooth, rtol=1e-10, atol=1e-10)
    ours.sum().backward()
    smooth.sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-9, atol=1e-12)
    ref_cls = difftopk.SmoothHardTopKLoss if hard else difftopk.SmoothTopKLoss
    torch.testing.assert_close(ours.mean(), ref_cls(C, 1, tau)(logits.clone(), labels), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hard", [False, True], ids=["smooth", "hard"])
@pytest.mark.parametrize(
    "C, k, tau, alpha, scale",
    [(6, 1, 1.0, 1.0, 1.0), (6, 2, 0.5, 1.0, 1.0), (8, 3, 1.0, 0.5, 2.0), (7, 6, 2.0, 1.0, 1.0), (10, 4, 0.3, 2.0, 1.0)],
)
def test_gradcheck_functional(C, k, tau, alpha, scale, hard):
    logits, labels = make_batch(5, C, C + k, scale=scale)
    if hard:  # one row far in the hard regime; gradcheck must not straddle the switch
        logits[0, :k] += 50.0 * k * tau
    x = logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: smooth_topk_svm_loss(z, labels, k, tau=tau, alpha=alpha, hard=hard, reduction="none"), (x,)
    )


# ---------------------------------------------------------------------------
# reductions, dtypes, NaN
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls, hard", [(SmoothTopKLoss, False), (SmoothHardTopKLoss, True)])
def test_reductions(cls, hard):
    B, C, k, tau = 10, 12, 3, 0.5
    logits, labels = make_batch(B, C, 3, scale=30.0)
    per_sample = cls(k, tau, reduction="none")(logits, labels)
    assert per_sample.shape == (B,)
    assert (per_sample >= 0).all()
    torch.testing.assert_close(cls(k, tau, reduction="sum")(logits, labels), per_sample.sum())
    torch.testing.assert_close(cls(k, tau, reduction="mean")(logits, labels), per_sample.sum() / B)
    torch.testing.assert_close(cls(k, tau)(logits, labels), per_sample.sum() / B)
    torch.testing.assert_close(
        smooth_topk_svm_loss(logits, labels, k, tau, hard=hard, reduction="none"), per_sample
    )
    # rows are independent: the loss of a single row equals its entry
    for i in (0, B - 1):
        single = cls(k, tau, reduction="none")(logits[i : i + 1], labels[i : i + 1])
        torch.testing.assert_close(single, per_sample[i : i + 1])


@pytest.mark.parametrize("hard", [False, True], ids=["smooth", "hard"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_round_trip(dtype, hard):
    logits, labels = make_batch(6, 10, 11, scale=2.0, dtype=torch.float32)
    low = logits.to(dtype).requires_grad_()
    out = smooth_topk_svm_loss(low, labels, 3, tau=0.7, hard=hard, reduction="none")
    assert out.dtype == dtype
    ref = smooth_topk_svm_loss(low.detach().float(), labels, 3, tau=0.7, hard=hard, reduction="none")
    torch.testing.assert_close(out.float(), ref.to(dtype).float())
    out.sum().backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    logits, labels = make_batch(4, 6, 0, scale=1.0, dtype=dtype)
    assert smooth_topk_svm_loss(logits, labels, 2).dtype == dtype
    assert SmoothHardTopKLoss(2)(logits, labels).dtype == dtype


@pytest.mark.parametrize("hard", [False, True], ids=["smooth", "hard"])
@pytest.mark.parametrize("where", ["other", "true"])
def test_nan_propagates(where, hard):
    logits, labels = make_batch(3, 6, 5, scale=100.0, dtype=torch.float32)
    labels[0] = 2
    logits[0, 4 if where == "other" else 2] = math.nan
    out = smooth_topk_svm_loss(logits, labels, 2, hard=hard, reduction="none")
    assert torch.isnan(out[0])
    assert torch.isfinite(out[1:]).all()
    assert torch.isnan(smooth_topk_svm_loss(logits, labels, 2, hard=hard))


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

_X = torch.randn(4, 5)
_Y = torch.tensor([0, 1, 4, 2])

BAD_CALLS = [
    # (kwargs overriding logits/labels/k/tau/alpha/reduction, error, message)
    (dict(logits=[[1.0, 2.0]]), TypeError, "logits must be a floating-point torch.Tensor"),
    (dict(logits=torch.randn(20)), ValueError, "logits must be 2-D"),
    (dict(logits=torch.randn(4, 5, 1)), ValueError, "logits must be 2-D"),
    (dict(logits=torch.ones(4, 5, dtype=torch.long)), TypeError, "logits must be a floating-point"),
    (dict(labels=[0, 1, 4, 2]), TypeError, "labels must be an integer tensor of class indices"),
    (dict(labels=_Y[:, None]), ValueError, r"labels must have shape \[batch\] = \(4,\), got \(4, 1\)"),
    (dict(labels=_Y.float()), TypeError, "labels must be an integer tensor"),
    (dict(labels=_Y > 0), TypeError, "labels must be an integer tensor"),
    (dict(labels=_Y[:3]), ValueError, r"labels must have shape \[batch\] = \(4,\), got \(3,\)"),
    (dict(labels=torch.tensor([0, 1, 5, 2])), ValueError, r"labels must be in \[0, num_classes\) = \[0, 5\)"),
    (dict(labels=torch.tensor([0, -1, 4, 2])), ValueError, r"labels must be in \[0, num_classes\) = \[0, 5\)"),
    (dict(k=0), ValueError, "k must be >= 1"),
    (dict(k=5), ValueError, "k must be < num_classes=5"),
    (dict(k=2.0), TypeError, "k must be an int"),
    (dict(k=True), TypeError, "k must be an int"),
    (dict(tau=0.0), ValueError, "tau must be a finite number > 0"),
    (dict(tau=-1.0), ValueError, "tau must be a finite number > 0"),
    (dict(tau=math.nan), ValueError, "tau must be a finite number > 0"),
    (dict(tau=math.inf), ValueError, "tau must be a finite number > 0"),
    (dict(tau="1"), TypeError, "tau must be a number, got str"),
    (dict(alpha=math.nan), ValueError, "alpha must be finite"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(reduction=None), ValueError, "reduction must be one of"),
]


@pytest.mark.parametrize("override, error, match", BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_functional_bad_inputs(override, error, match):
    kwargs = dict(logits=_X, labels=_Y, k=2, tau=1.0, alpha=1.0, reduction="mean")
    kwargs.update(override)
    with pytest.raises(error, match=match):
        smooth_topk_svm_loss(**kwargs)


@pytest.mark.parametrize("cls", [SmoothTopKLoss, SmoothHardTopKLoss])
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(k=0), ValueError, "k must be >= 1"),
        (dict(k=1.5), TypeError, "k must be an int"),
        (dict(k=2, tau=0), ValueError, "tau must be a finite number > 0"),
        (dict(k=2, reduction="batchmean"), ValueError, "reduction must be one of"),
    ],
)
def test_module_bad_construction(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (torch.randn(4, 2), _Y % 2, "k must be < num_classes=2"),
        (torch.randn(4, 5).double(), _Y.int()[:2], r"labels must have shape \[batch\] = \(4,\), got \(2,\)"),
    ],
)
def test_module_bad_forward(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        SmoothHardTopKLoss(2)(logits, labels)


@pytest.mark.parametrize(
    "x, k, error, match",
    [
        (torch.arange(4), 2, TypeError, "x must be a floating-point tensor"),
        (torch.tensor(1.0), 1, ValueError, "at least one dimension"),
        (torch.randn(3), -1, ValueError, "k must be >= 0"),
        (torch.randn(3), 1.0, TypeError, "k must be an int"),
        ([1.0, 2.0], 1, TypeError, "x must be a torch.Tensor"),
    ],
)
def test_log_esp_bad_inputs(x, k, error, match):
    with pytest.raises(error, match=match):
        log_elementary_symmetric(x, k)
