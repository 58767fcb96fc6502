"""Top-k cross-entropy loss (torch backend) against difftopk and a dense float64 reference.

The dense reference builds the full relaxed permutation matrix with
``helpers.dense_network`` and evaluates the formula of ``docs/design.md``
``q_y = sum_k P_K(k) sum_{r <= k} P[r, y]``, ``loss = -log(q (1 - 2e-7) + 1e-7)``
(with the ``sm`` / ``smce`` top-1 terms and the top-m preselection written out).
"""
import functools
import math

import difftopk  # the oracle: a missing package is a failure, not a skip
import pytest
import torch

import fastsort
import helpers
from helpers import dense_network, make_batch

BE = "torch"
METHODS = ("odd_even", "bitonic", "splitter_selection", "neuralsort", "softsort")
NETWORKS = ("odd_even", "bitonic", "splitter_selection")
TOP1_MODES = ("sm", "smce", "sort")
EPS = 1e-7


# --------------------------------------------------------------------------- helpers
def preselect_ref(x, y, m):
    """True logit, then the m - 1 largest others in descending order; label 0."""
    true = x[torch.arange(x.shape[0]), y].unsqueeze(1)
    others = torch.stack([torch.cat([row[:int(t)], row[int(t) + 1:]]) for row, t in zip(x, y)])
    return torch.cat([true, others.sort(dim=1, descending=True).values[:, : m - 1]], 1), torch.zeros_like(y)


def nll(q):
    return -torch.log(q * (1 - 2 * EPS) + EPS)


def reference_loss(logits, labels, p_k, method, distribution="cauchy", it=1.0, top1_mode="sm", m=None):
    """Per-sample loss from the dense network (float64, networks only)."""
    x, y = (logits, labels) if m is None else preselect_ref(logits, labels, m)
    B, n = x.shape
    K = len(p_k)
    _, X = dense_network(x, method, distribution, it, K if method == "splitter_selection" else None)
    P = X.transpose(-1, -2).flip(-2)[:, :K]  # [B, K, n]: rank r (top first) x class
    cum = P[torch.arange(B), :, y].cumsum(-1)  # sum_{r <= k} P[r, y], k = 1..K
    pk = torch.tensor(p_k, dtype=x.dtype)
    if top1_mode == "sort":
        return nll(cum @ pk)
    rest = cum[:, 1:] @ pk[1:]  # the k >= 2 terms
    if top1_mode == "sm":
        return nll(p_k[0] * torch.softmax(x, 1)[torch.arange(B), y] + rest)
    ce = torch.nn.functional.cross_entropy(x, y, reduction="none")
    return p_k[0] * ce + sum(p_k[1:]) * nll(rest)


def loss_fn(logits, labels, p_k, method, **kw):
    kw.setdefault("backend", BE)
    return fastsort.topk_cross_entropy(logits, labels, p_k, method, **kw)


def grad_of(loss, logits):
    (g,) = torch.autograd.grad(loss, logits)
    return g


# this file's default tolerance (float64 losses against float64 references); calls override it
assert_close = functools.partial(helpers.assert_close, atol=1e-10, rtol=1e-8)


# --------------------------------------------------------------------------- vs difftopk (float32)
ORACLE_METHODS = [  # (difftopk name, fastsort name, distribution)
    ("odd_even", "odd_even", "cauchy"),
    ("odd_even", "odd_even", "logistic"),
    ("odd_even", "odd_even", "reciprocal"),
    ("bitonic__non_sparse", "bitonic", "optimal"),
    ("bitonic__non_sparse", "bitonic", "gaussian"),
    ("bitonic__non_sparse", "bitonic", "logistic_phi"),
    ("neuralsort", "neuralsort", None),
    ("softsort", "softsort", None),
]
P_KS = ([0.5, 0.0, 0.0, 0.0, 0.5], [0.2, 0.5, 0.3])


@pytest.mark.parametrize("oracle_name,method,distribution", ORACLE_METHODS)
@pytest.mark.parametrize("top1_mode", TOP1_MODES)
@pytest.mark.parametrize("m", [None, 7])
@pytest.mark.parametrize("p_k", P_KS, ids=["p5", "p3"])
def test_matches_difftopk(oracle_name, method, distribution, top1_mode, m, p_k):
    C, it = 12, 2.0
    logits, labels = make_batch(6, C, seed=len(p_k) + (m or 0), dtype=torch.float32)
    logits.requires_grad_()
    oracle = difftopk.TopKCrossEntropyLoss(oracle_name, it, p_k, n=C, m=m, distribution=distribution,
                                           top1_mode=top1_mode)
    ref = oracle(logits, labels)
    kw = dict(m=m, inverse_temperature=it, top1_mode=top1_mode)
    if distribution is not None:
        kw["distribution"] = distribution
    out = loss_fn(logits, labels, p_k, method, **kw)
    module = fastsort.TopKCrossEntropyLoss(p_k, method, backend=BE, **kw)(logits, labels)
    assert out.dtype == torch.float32 and out.shape == ()
    assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert_close(module, out)
    assert_close(grad_of(out, logits), grad_of(ref, logits), atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- vs dense float64 reference
DENSE_CASES = [
    ("splitter_selection", "cauchy", [0.5, 0.0, 0.0, 0.0, 0.5]),
    ("splitter_selection", "logistic_phi", [0.3, 0.3, 0.4]),
    ("splitter_selection", "optimal", [1.0]),
    ("splitter_selection", "gaussian", [0.0, 1.0]),
    ("bitonic", "cauchy", [0.5, 0.0, 0.0, 0.0, 0.5]),
    ("bitonic", "reciprocal", [0.2, 0.8]),
    ("bitonic", "logistic", [0.1, 0.2, 0.3, 0.4]),
    ("odd_even", "optimal", [0.25, 0.25, 0.5]),
]


@pytest.mark.parametrize("method,distribution,p_k", DENSE_CASES)
@pytest.mark.parametrize("top1_mode", TOP1_MODES)
@pytest.mark.parametrize("m", [None, 8])
def test_matches_dense_reference(method, distribution, p_k, top1_mode, m):
    C, it = 13, 1.5
    logits, labels = make_batch(5, C, seed=C + len(p_k))
    logits.requires_grad_()
    ref = reference_loss(logits, labels, p_k, method, distribution, it, top1_mode, m)
    out = loss_fn(logits, labels, p_k, method, m=m, inverse_temperature=it, distribution=distribution,
                  top1_mode=top1_mode, reduction="none")
    assert out.dtype == torch.float64 and out.shape == (5,)
    assert_close(out, ref)
    w = torch.rand(5, dtype=torch.float64)  # a random cotangent per sample
    assert_close(grad_of((out * w).sum(), logits), grad_of((ref * w).sum(), logits))


def test_art_lambda_reaches_the_loss():
    logits, labels = make_batch(4, 9, seed=3)
    logits.requires_grad_()
    kw = dict(inverse_temperature=2.0, distribution="logistic_phi", top1_mode="sort")
    out = loss_fn(logits, labels, [0.5, 0.5], "bitonic", art_lambda=0.6, reduction="none", **kw)
    x = logits
    _, X = dense_network(x, "bitonic", "logistic_phi", 2.0, art_lambda=0.6)
    P = X.transpose(-1, -2).flip(-2)[:, :2]
    q = 0.5 * P[torch.arange(4), 0, labels] + 0.5 * P[torch.arange(4), :2, labels].sum(-1)
    assert_close(out, nll(q))


# --------------------------------------------------------------------------- reductions, gradcheck
@pytest.mark.parametrize("method", METHODS)
def test_reductions_consistent(method):
    logits, labels = make_batch(7, 10, seed=1)
    kw = dict(inverse_temperature=2.0, m=6)
    none = loss_fn(logits, labels, [0.5, 0.5], method, reduction="none", **kw)
    assert none.shape == (7,)
    assert_close(loss_fn(logits, labels, [0.5, 0.5], method, reduction="mean", **kw), none.mean())
    assert_close(loss_fn(logits, labels, [0.5, 0.5], method, reduction="sum", **kw), none.sum())
    # each sample's loss depends only on its own row
    assert_close(loss_fn(logits[2:3], labels[2:3], [0.5, 0.5], method, reduction="none", **kw), none[2:3])
    mod = fastsort.TopKCrossEntropyLoss([0.5, 0.5], method, reduction="sum", backend=BE, **kw)
    assert_close(mod(logits, labels), none.sum())
    assert "p_k" in repr(mod)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("top1_mode", TOP1_MODES)
@pytest.mark.parametrize("m", [None, 5])
def test_gradcheck(method, top1_mode, m):
    logits, labels = make_batch(2, 7, seed=11)
    logits.requires_grad_()
    fn = lambda t: loss_fn(t, labels, [0.4, 0.3, 0.3], method, m=m, inverse_temperature=1.5,  # noqa: E731
                           top1_mode=top1_mode, reduction="none")
    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- special values
def masked_batch():
    """Logits with -inf (masked) classes; labels never masked."""
    logits, labels = make_batch(3, 10, seed=5)
    labels = torch.tensor([0, 4, 9])
    logits[0, [2, 5, 7]] = float("-inf")
    logits[1, 9] = float("-inf")
    return logits, labels


# m = 5: the preselection holds finite logits only; m = 9: row 0 (6 finite others) also takes -inf ones
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("m", [None, 5, 9])
@pytest.mark.parametrize("top1_mode", ["sm", "sort"])
def test_masked_logits(method, m, top1_mode):
    logits, labels = masked_batch()
    logits.requires_grad_()
    loss = loss_fn(logits, labels, [0.5, 0.0, 0.5], method, m=m, inverse_temperature=2.0, top1_mode=top1_mode,
                   reduction="none")
    assert torch.isfinite(loss).all(), loss
    g = grad_of(loss.sum(), logits)
    assert torch.isfinite(g).all(), g
    assert (g[torch.isinf(logits)] == 0).all()
    if method in NETWORKS:  # a masked class is a very small logit: same as the dense reference with -1e30
        ref = reference_loss(logits.detach().clamp(min=-1e30), labels, [0.5, 0.0, 0.5], method, "cauchy", 2.0,
                             top1_mode, m)
        assert_close(loss, ref)


@pytest.mark.parametrize("method", METHODS)
def test_nan_logits_give_nan_loss(method):
    logits, labels = make_batch(3, 8, seed=2)
    logits[1, 3] = float("nan")
    loss = loss_fn(logits, labels, [0.5, 0.5], method, reduction="none")
    assert loss[1].isnan() and torch.isfinite(loss[[0, 2]]).all()
    assert loss_fn(logits, labels, [0.5, 0.5], method).isnan()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_logits(method, dtype):
    logits, labels = make_batch(4, 9, seed=4, dtype=torch.float32)
    lo = logits.to(dtype).requires_grad_()
    l32 = lo.detach().float().requires_grad_()
    kw = dict(m=6, inverse_temperature=2.0, reduction="none")
    out, ref = loss_fn(lo, labels, [0.5, 0.5], method, **kw), loss_fn(l32, labels, [0.5, 0.5], method, **kw)
    assert out.dtype == dtype
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=3e-3, rtol=3e-3)
    assert_close(out.float(), ref, **tol)
    g, g32 = grad_of(out.sum(), lo), grad_of(ref.sum(), l32)
    assert g.dtype == dtype
    assert_close(g.float(), g32, **tol)


# --------------------------------------------------------------------------- bad inputs
L, Y = make_batch(3, 8, seed=0, dtype=torch.float32)
PK = [0.5, 0.5]


def _loss(**kw):
    logits, labels = kw.pop("logits", L), kw.pop("labels", Y)
    p_k, method = kw.pop("p_k", PK), kw.pop("method", "bitonic")
    kw.setdefault("backend", BE)
    return lambda: fastsort.topk_cross_entropy(logits, labels, p_k, method, **kw)


def _module(**kw):
    p_k, method = kw.pop("p_k", PK), kw.pop("method", "bitonic")
    return lambda: fastsort.TopKCrossEntropyLoss(p_k, method, backend=BE, **kw)


BAD = [
    ("method", _loss(method="heapsort"), ValueError, "method must be one of"),
    ("sparse logits", lambda: fastsort.topk_cross_entropy(L.to_sparse(), Y, PK), TypeError,
     r"logits must be a dense \(strided\) tensor"),
    ("method module", _module(method="bitonic_sparse"), ValueError, "method must be one of"),
    ("top1_mode", _loss(top1_mode="softmax"), ValueError, "top1_mode must be one of"),
    ("top1_mode module", _module(top1_mode="ce"), ValueError, "top1_mode must be one of"),
    ("reduction", _loss(reduction="avg"), ValueError, "reduction must be one of"),
    ("reduction module", _module(reduction=None), ValueError, "reduction must be one of"),
    ("distribution", _loss(distribution="laplace"), ValueError, "distribution must be one of"),
    ("distribution module", _module(distribution="sigmoid"), ValueError, "distribution must be one of"),
    ("p_k empty", _loss(p_k=[]), ValueError, "p_k must not be empty"),
    ("p_k empty module", _module(p_k=[]), ValueError, "p_k must not be empty"),
    ("p_k negative", _loss(p_k=[1.5, -0.5]), ValueError, "non-negative"),
    ("p_k nan", _loss(p_k=[float("nan"), 1.0]), ValueError, "non-negative"),
    ("p_k sum", _loss(p_k=[0.5, 0.4]), ValueError, "sum to 1"),
    ("p_k sum module", _module(p_k=[0.5, 0.6]), ValueError, "sum to 1"),
    ("p_k not a sequence", _loss(p_k=1.0), TypeError, "p_k must be a sequence"),
    ("K > n_classes", _loss(p_k=[0.1] * 10), ValueError, "must not exceed the number of classes"),
    ("m = K", _loss(m=2), ValueError, "K < m < n_classes"),
    ("m < K", _loss(m=1), ValueError, "K < m < n_classes"),
    ("m = n_classes", _loss(m=8), ValueError, "K < m < n_classes"),
    ("m > n_classes", _loss(m=20), ValueError, "K < m < n_classes"),
    ("m float", _loss(m=5.0), TypeError, "m must be an int, got float 5.0"),
    ("m bool module", lambda: fastsort.TopKCrossEntropyLoss(PK, m=True), TypeError, "m must be an int, got a bool"),
    ("m = K module", _module(m=2), ValueError, "m must be an int > K"),
    ("m = n_classes module forward", lambda: fastsort.TopKCrossEntropyLoss(PK, m=8, backend=BE)(L, Y), ValueError,
     "K < m < n_classes"),
    ("label too big", _loss(labels=torch.tensor([0, 8, 1])), ValueError, r"labels must be in \[0, n_classes\)"),
    ("label negative", _loss(labels=torch.tensor([0, -1, 1])), ValueError, r"labels must be in \[0, n_classes\)"),
    ("labels float", _loss(labels=torch.tensor([0.0, 1.0, 2.0])), TypeError, "labels must be an integer tensor"),
    ("labels bool", _loss(labels=torch.tensor([True, False, True])), TypeError, "labels must be an integer tensor"),
    ("labels list", _loss(labels=[0, 1, 2]), TypeError, "labels must be an integer tensor"),
    ("labels 2-D", _loss(labels=Y.view(3, 1)), ValueError, "labels must have shape"),
    ("labels too short", _loss(labels=Y[:2]), ValueError, "labels must have shape"),
    ("labels on another device", _loss(labels=Y.to("meta")), ValueError, "labels must be on the device of logits"),
    ("labels on another device, m", _loss(labels=Y.to("meta"), m=5), ValueError,
     "labels must be on the device of logits"),
    ("logits 1-D", _loss(logits=L[0], labels=Y[:1]), ValueError, "logits must be 2-D"),
    ("logits 3-D", _loss(logits=L.view(3, 2, 4)), ValueError, "logits must be 2-D"),
    ("logits int", _loss(logits=L.long()), TypeError, "logits must be a floating-point"),
    ("logits list", _loss(logits=L.tolist()), TypeError, "logits must be a floating-point"),
    ("inverse_temperature 0", _loss(inverse_temperature=0.0), ValueError, "inverse_temperature must be"),
    ("inverse_temperature < 0", _loss(inverse_temperature=-2.0, method="neuralsort"), ValueError,
     "inverse_temperature must be"),
    ("inverse_temperature inf", _loss(inverse_temperature=float("inf")), ValueError, "inverse_temperature must be"),
    ("inverse_temperature module", _module(inverse_temperature=0), ValueError, "inverse_temperature must be"),
    ("backend", _loss(backend="gpu"), ValueError, "backend must be one of"),
    ("p_k string", _loss(p_k="0.5"), TypeError, "p_k must be a sequence of probabilities"),
    ("p_k string module", _module(p_k="[0.5, 0.5]"), TypeError, "p_k must be a sequence of probabilities"),
    ("label_smoothing", _loss(label_smoothing=0.1), ValueError, "label_smoothing=0.1 is not supported"),
    ("label_smoothing module", _module(label_smoothing=0.2), ValueError, "label_smoothing=0.2 is not supported"),
    ("label_smoothing str", _loss(label_smoothing="0.1"), TypeError, "label_smoothing must be a number"),
    ("ignore_index float", _loss(ignore_index=-100.0), TypeError, "ignore_index must be an int"),
    ("ignore_index module", _module(ignore_index="none"), TypeError, "ignore_index must be an int"),
    ("0 classes", _loss(logits=torch.zeros(3, 0)), ValueError, r"logits has 0 classes \(shape \(3, 0\)\)"),
    ("inverse_temperature 1-d tensor", _loss(inverse_temperature=torch.tensor([2.0])), TypeError,
     "inverse_temperature must be a number or a 0-d real tensor"),
    ("inverse_temperature module tensor", _module(inverse_temperature=torch.ones(2)), TypeError,
     "inverse_temperature must be a number or a 0-d real tensor"),
    ("inverse_temperature requires grad", _loss(inverse_temperature=torch.tensor(2.0, requires_grad=True)),
     ValueError, "inverse_temperature is not differentiable"),
    ("inverse_temperature 0-d tensor <= 0", _loss(inverse_temperature=torch.tensor(-1.0)), ValueError,
     "inverse_temperature must be a finite number > 0"),
    ("label -100 without ignore_index", _loss(labels=torch.tensor([0, -100, 1]), ignore_index=None), ValueError,
     r"labels must be in \[0, n_classes\)"),
]


@pytest.mark.parametrize("fn,exc,match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_inputs(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_preselect_scratch_buffer_in_and_out_of_inference_mode_and_threads():
    """The CPU preselection masks the labels in a per-thread scratch buffer: reused between calls,
    usable after inference mode created it, resized with the batch, and private to each thread."""
    import threading

    from fastsort import losses as L

    logits, labels = make_batch(6, 30, seed=11, dtype=torch.float32)
    expected = preselect_ref(logits.double(), labels, 8)[0].float()
    with torch.inference_mode():
        torch.testing.assert_close(L.preselect(logits, labels, 8), expected)
    x = logits.clone().requires_grad_()
    out = L.preselect(x, labels, 8)  # the buffer inference mode allocated, outside it, with autograd
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert torch.equal(x.grad.sum(1), torch.full((6,), 8.0))
    first = L._SCRATCH.buf.data_ptr()
    L.preselect(logits, labels, 8)
    assert L._SCRATCH.buf.data_ptr() == first  # reused, not reallocated
    torch.testing.assert_close(L.preselect(logits[:4], labels[:4], 8), expected[:4])  # a smaller last batch

    errors = []

    def worker(seed):
        lg, lb = make_batch(5, 40, seed=seed, dtype=torch.float32)
        ref = preselect_ref(lg.double(), lb, 6)[0].float()
        for _ in range(50):
            if not torch.equal(L.preselect(lg, lb, 6), ref):
                errors.append(seed)
                return

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"threads {errors} saw another thread's scratch buffer"


# --------------------------------------------------------------------------- CrossEntropyLoss drop-in
ALL_METHODS = tuple(fastsort.METHODS.supporting("loss"))
FUSED_BACKENDS = [b for b in ("triton", "numba") if b in fastsort.METHODS["bitonic"].kernels]


def _it(method):
    return 10.0 if method == "sinkhorn" else 2.0


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("m", [None, 5])
def test_ignore_index_rows_are_left_out(method, m):
    """As torch.nn.CrossEntropyLoss: an ignored row has loss 0 and gradient 0, the mean runs over the others."""
    logits, labels = make_batch(6, 9, seed=21)
    logits.requires_grad_()
    ignored = labels.clone()
    ignored[[1, 4]] = -100
    kw = dict(m=m, inverse_temperature=_it(method), backend=BE)
    keep = [0, 2, 3, 5]
    mean = loss_fn(logits, ignored, [0.5, 0.5], method, **kw)
    ref = loss_fn(logits[keep], labels[keep], [0.5, 0.5], method, **kw)
    assert_close(mean, ref)
    g = grad_of(mean, logits)
    assert bool((g[[1, 4]] == 0).all()) and bool(torch.isfinite(g).all())
    assert_close(g[keep], grad_of(ref, logits)[keep])
    none = loss_fn(logits, ignored, [0.5, 0.5], method, reduction="none", **kw)
    assert bool((none[[1, 4]] == 0).all())
    assert_close(none[keep], loss_fn(logits[keep], labels[keep], [0.5, 0.5], method, reduction="none", **kw))
    assert_close(loss_fn(logits, ignored, [0.5, 0.5], method, reduction="sum", **kw), none.sum())
    # another ignore_index (a valid class here), and the module
    crit = fastsort.TopKCrossEntropyLoss([0.5, 0.5], method, ignore_index=int(labels[0]), backend=BE, **{
        k: v for k, v in kw.items() if k != "backend"})
    drop = labels != labels[0]
    assert_close(crit(logits, labels), loss_fn(logits[drop], labels[drop], [0.5, 0.5], method, **kw))


@pytest.mark.parametrize("reduction,expect", [("mean", math.nan), ("sum", 0.0)])
def test_every_row_ignored(reduction, expect):
    """Every label ignored: NaN mean (0 / 0) and 0 sum, as torch's cross-entropy."""
    logits, _ = make_batch(3, 6, seed=2)
    labels = torch.full((3,), -100)
    out = loss_fn(logits, labels, [0.5, 0.5], "bitonic", reduction=reduction)
    torch_ce = torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)
    assert_close(out, torch_ce, equal_nan=True)
    assert_close(out, torch.tensor(expect, dtype=torch.float64), equal_nan=True)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignore_index_on_the_fused_kernel(backend, reduction):
    """The fused kernel path (network methods, m set): ignored rows contribute 0 loss and 0 gradient there too,
    and the result is the torch path's."""
    logits, labels = make_batch(5, 12, seed=8, dtype=torch.float32)
    labels[[0, 3]] = -100
    out, grads = [], []
    for be in ("torch", backend):
        x = logits.clone().requires_grad_()
        loss = fastsort.topk_cross_entropy(x, labels, [0.5, 0.0, 0.5], "bitonic", m=6, inverse_temperature=2.0,
                                           reduction=reduction, backend=be)
        out.append(loss.detach())
        grads.append(grad_of(loss.sum(), x))
    assert_close(out[1], out[0], atol=1e-5, rtol=1e-5)
    assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    assert bool((grads[1][[0, 3]] == 0).all())


@pytest.mark.skipif("numba" not in FUSED_BACKENDS, reason="numba does not import here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("method", ["bitonic", "neuralsort", "softsort"])
def test_cpu_gradient_made_by_the_forward(method, reduction, dtype, monkeypatch):
    """On the CPU kernels a reduced loss's forward also writes the dense gradient, which the backward hands
    to autograd (no scatter pass): the float64 torch path's gradient for a unit cotangent, scaled for another,
    summed over repeated backwards of a retained graph; a returned gradient modified in place is refused by
    the next backward, never silently reused (float64 runs the torch path, bfloat16 casts the float32 buffer)."""
    from fastsort import _fused_loss
    from fastsort.kernels import cpu_topk_loss
    g = torch.Generator().manual_seed(12)
    # distinct multiples of 1/8, exact in bfloat16 too (a tie's order is the torch path's own business)
    logits = torch.stack([torch.randperm(40, generator=g) - 20.0 for _ in range(9)]) / 8
    labels = torch.randint(0, 40, (9,), generator=g)
    logits[0, 5:] = float("-inf")  # fewer finite classes than wires
    kw = dict(m=8, inverse_temperature=2.0, reduction=reduction)
    x64 = logits.to(dtype).double().requires_grad_()  # (the values the kernel reads)
    ref = grad_of(loss_fn(x64, labels, [0.5, 0.0, 0.5], method, **kw), x64)
    scatters = []
    real_bwd = cpu_topk_loss.topk_ce_bwd
    monkeypatch.setattr(cpu_topk_loss, "topk_ce_bwd", lambda *a, **k: scatters.append(1) or real_bwd(*a, **k))
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-6, rtol=1e-4)
    for weight, backwards in ((1.0, 1), (0.3, 1), (1.0, 3)):
        x = logits.to(dtype, copy=True).requires_grad_()
        with helpers.nan_filled_allocations(_fused_loss, guards=False):  # (the dense buffer is allocated there)
            loss = loss_fn(x, labels, [0.5, 0.0, 0.5], method, backend="numba", **kw)
        assert loss.dtype == dtype
        for _ in range(backwards):
            (loss * weight if weight != 1.0 else loss).backward(retain_graph=True)
        assert x.grad.dtype == dtype
        assert_close(x.grad.double(), ref * weight * backwards, **tol)
    assert scatters == []
    # torch.autograd.grad may hand out the very tensor the graph saved (float32: the fused op's; float64 runs
    # the torch path): modified in place, the next backward refuses it, or gives the right gradient
    x = logits.to(dtype, copy=True).requires_grad_()
    loss = loss_fn(x, labels, [0.5, 0.0, 0.5], method, backend="numba", **kw)
    (g,) = torch.autograd.grad(loss, x, retain_graph=True)
    g.mul_(2)
    try:
        (g,) = torch.autograd.grad(loss, x)
    except RuntimeError as e:
        assert dtype == torch.float32 and "modified by an inplace operation" in str(e)
    else:
        assert dtype != torch.float32
        assert_close(g.double(), ref, **tol)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_integer_label_dtypes(dtype):
    """Labels of any integer dtype, as torch's cross-entropy takes (int32 used to fail inside gather)."""
    logits, labels = make_batch(4, 7, seed=3)
    ref = loss_fn(logits, labels, [0.5, 0.5], "bitonic", m=5)
    assert_close(loss_fn(logits, labels.to(dtype), [0.5, 0.5], "bitonic", m=5), ref)
    crit = fastsort.TopKCrossEntropyLoss([0.5, 0.5], "neuralsort", backend=BE)
    assert_close(crit(logits, labels.to(dtype)), crit(logits, labels))


def test_inverse_temperature_as_a_0d_tensor():
    logits, labels = make_batch(4, 7, seed=4)
    ref = loss_fn(logits, labels, [0.5, 0.5], "bitonic", inverse_temperature=3.0)
    assert_close(loss_fn(logits, labels, [0.5, 0.5], "bitonic", inverse_temperature=torch.tensor(3.0)), ref)
    crit = fastsort.TopKCrossEntropyLoss([0.5, 0.5], inverse_temperature=torch.tensor(3, dtype=torch.int64),
                                         backend=BE)
    assert crit.inverse_temperature == 3.0
    assert_close(crit(logits, labels), ref)


def test_label_smoothing_zero_is_accepted():
    logits, labels = make_batch(4, 7, seed=5)
    ref = loss_fn(logits, labels, [0.5, 0.5], "bitonic")
    assert_close(loss_fn(logits, labels, [0.5, 0.5], "bitonic", label_smoothing=0.0), ref)
    assert_close(fastsort.TopKCrossEntropyLoss([0.5, 0.5], label_smoothing=0, backend=BE)(logits, labels), ref)


def test_sinkhorn_masked_logits():
    """Issue: TopKCrossEntropyLoss(method="sinkhorn") gave NaN loss and gradients for a -inf logit (the
    squash's mean and std were not finite), and with m = 8 when the label's own logit is -inf."""
    logits, labels = masked_batch()
    for m in (None, 5, 9):
        x = logits.clone().requires_grad_()
        loss = loss_fn(x, labels, [0.5, 0.0, 0.5], "sinkhorn", m=m, inverse_temperature=10.0, reduction="none")
        assert torch.isfinite(loss).all(), (m, loss)
        g = grad_of(loss.sum(), x)
        assert torch.isfinite(g).all() and bool((g[torch.isinf(logits)] == 0).all()), (m, g)
    x = logits.clone()
    x[1, labels[1]] = float("-inf")  # a masked true class
    x.requires_grad_()
    crit = fastsort.TopKCrossEntropyLoss([0.5, 0.0, 0.5], "sinkhorn", m=8, inverse_temperature=10.0, backend=BE)
    loss = crit(x, labels)
    g = grad_of(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and g[1, labels[1]] == 0


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("top1_mode", ["sm", "sort"])
def test_pos_inf_logit_gives_a_nan_row(method, top1_mode):
    """A +inf logit: NaN loss for its row (loss and gradient), as torch's cross-entropy, whatever the method
    (NeuralSort, SoftSort and Sinkhorn gave a finite loss in the sort mode); the other rows are unaffected."""
    logits, labels = make_batch(3, 8, seed=6)
    logits[1, 2] = float("inf")
    x = logits.clone().requires_grad_()
    loss = loss_fn(x, labels, [0.5, 0.5], method, reduction="none", top1_mode=top1_mode,
                   inverse_temperature=_it(method))
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    g = grad_of(loss[[0, 2]].sum(), x)
    assert torch.isfinite(g[[0, 2]]).all()


def test_the_validated_configuration_is_reused_only_for_the_same_arguments():
    """``losses._loss_config`` keeps a validated configuration per set of plain arguments: every argument
    that names it changes the loss exactly as with the cache emptied, and a bad value raises after good
    ones were kept (only successful validations are kept)."""
    from fastsort import losses

    logits, labels = make_batch(6, 12, seed=5, dtype=torch.float32)
    base = dict(p_k=[0.5, 0.0, 0.5], method="bitonic", m=8, inverse_temperature=1.0, distribution="logistic_phi",
                art_lambda=0.25, top1_mode="sm")
    variants = [{}, {"p_k": (0.25, 0.25, 0.5)}, {"inverse_temperature": 2}, {"distribution": "cauchy"},
                {"art_lambda": 0.5}, {"top1_mode": "smce"}, {"method": "odd_even"}, {"method": "neuralsort"}]
    kws = [{**base, **change} for change in variants]
    losses._CONFIGS.clear()
    cached = [[fastsort.topk_cross_entropy(logits, labels, **kw) for kw in kws] for _ in range(2)]  # (kept, reused)
    assert len(losses._CONFIGS) == len(kws), "the plain arguments above should have been kept"
    values = []
    for i, kw in enumerate(kws):
        losses._CONFIGS.clear()
        fresh = fastsort.topk_cross_entropy(logits, labels, **kw)
        assert torch.equal(cached[0][i], fresh) and torch.equal(cached[1][i], fresh), variants[i]
        values.append(float(fresh))
    assert len(set(values)) == len(values), values  # every argument reaches the loss
    with pytest.raises(ValueError, match="inverse_temperature"):
        fastsort.topk_cross_entropy(logits, labels, **{**base, "inverse_temperature": -1.0})
    with pytest.raises(ValueError, match="sum to 1"):
        fastsort.topk_cross_entropy(logits, labels, **{**base, "p_k": [0.5, 0.6]})
    with pytest.raises(ValueError, match="top1_mode"):
        fastsort.topk_cross_entropy(logits, labels, **{**base, "top1_mode": "max"})
    # a 0-d tensor inverse temperature is not a key: computed each call, the same loss as the number
    it = torch.tensor(2.0)
    assert torch.equal(fastsort.topk_cross_entropy(logits, labels, **{**base, "inverse_temperature": it}),
                       fastsort.topk_cross_entropy(logits, labels, **{**base, "inverse_temperature": 2.0}))
