"""``fastsort.compat`` against the reference packages ``diffsort==0.2.0`` / ``difftopk==0.2.0``.

Everything is compared in float64 where the oracle allows it, outputs *and*
vector-Jacobian products with shared random cotangents.  The oracle builds its
network matrices in float32 (and difftopk's top-k sweep starts from a
default-dtype ``torch.eye``), so for float64 runs its ``sorting_network`` is
converted to float64 and the default dtype is float64 while it runs.

Tolerances (documented where they are not ~1e-9):

* float64 everywhere: ``rtol = 1e-9``, ``atol = 1e-10``;
* ``distribution='gaussian'`` gradients: the oracle's ``NormalCDF.backward``
  keeps ``sigma = 1 / steepness`` as a float32 tensor, so its derivative
  ``exp(-v^2 / 2) / sigma`` carries a relative error of ~``(1 + v^2) * 6e-8``
  (``v = steepness * d``), which sums up to ~``4e-8`` of the largest gradient
  entry and more than that relative to small, cancelling entries:
  ``rtol = 1e-5`` plus ``atol = 1e-6 * max |gradient|``;
* NeuralSort: the oracle only runs in float32 (``torch.FloatTensor``
  internals); fastsort computes ``A_s 1`` with prefix sums, so the two float32
  results differ by ~``n * eps * |s| / tau``: ``atol = 2e-5``;
* difftopk's sparse path (needs ``torch_sparse``) is float32 only: ``atol = 1e-5``;
* smooth top-k SVM losses: values against difftopk, gradients against an exact
  subset-enumeration reference (difftopk's hand-written backward is wrong for
  k = 1 and approximate for large score gaps; see the test).

Without ``torch_sparse`` the sparse networks are checked against two float64
references built in this file from difftopk's own network description
(``sparse_bitonic_network`` / ``sparse_splitter_selection_network``): the
dense layer math of ``execute_topk`` and the sparse index form of
``execute_sparse_topk``.

``test_no_grad_matches_grad`` and ``test_device_matches_cpu`` need no oracle;
the latter runs only with ``FASTSORT_TEST_DEVICE=cuda`` (Triton kernels against
the oracle-checked float64 CPU results).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from fastsort.compat import diffsort as fs_diffsort
from fastsort.compat import difftopk as fs_difftopk
from helpers import alpha_ref, assert_close, default_dtype, one_thread  # alpha_ref: the tests' one reference of the relaxations

try:
    import diffsort

    with contextlib.redirect_stdout(io.StringIO()):  # difftopk prints when torch_sparse is missing
        import difftopk
        import difftopk.networks as difftopk_networks
except ImportError:  # the device run may lack the oracle: only the oracle-free tests run there
    diffsort = difftopk = difftopk_networks = None

pytestmark = pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")  # difftopk's

DISTRIBUTIONS = ("logistic", "logistic_phi", "gaussian", "reciprocal", "cauchy", "optimal")
F64 = dict(rtol=1e-9, atol=1e-10)
GRAD_TOL = {d: F64 for d in DISTRIBUTIONS}
GRAD_TOL["gaussian"] = dict(rtol=1e-5, atol_of_max=1e-6)


# --------------------------------------------------------------------------- helpers
_ORACLE_FREE = {"test_device_matches_cpu", "test_no_grad_matches_grad"}


@pytest.fixture(autouse=True)
def _needs_oracle(request):
    if difftopk is None and request.function.__name__ not in _ORACLE_FREE:
        pytest.skip("needs the oracles diffsort==0.2.0 and difftopk==0.2.0")


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)




def as_double(net):
    """The oracle net with its float32 network matrices converted to float64."""
    net.sorting_network = [[m.double() for m in layer] for layer in net.sorting_network]
    return net


def scores(B, n, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(1000 * n + seed)
    return (torch.randn(B, n, generator=g, dtype=torch.float64) * scale).to(dtype)


def cotangents(shapes, dtype=torch.float64, seed=123):
    """Random cotangents shared by the oracle and fastsort."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def vjp(fn, x, cots=None):
    """``(outputs, d<outputs, cots>/dx)`` with ``None`` outputs dropped; ``cots=None``: one per output."""
    x = x.detach().clone().requires_grad_(True)
    outs = fn(x)
    outs = [o for o in (outs if isinstance(outs, (tuple, list)) else (outs,)) if o is not None]
    if cots is None:
        cots = cotangents([o.shape for o in outs], x.dtype)
    total = sum((o * c).sum() for o, c in zip(outs, cots))
    (g,) = torch.autograd.grad(total, x)
    return [o.detach() for o in outs], g, cots


def check_against(ours, oracle, x, out_tol, grad_tol):
    """Outputs and VJPs (same cotangents) of two callables agree."""
    o_out, o_grad, cots = vjp(oracle, x)
    f_out, f_grad, _ = vjp(ours, x, cots)
    assert len(o_out) == len(f_out)
    for i, (a, b) in enumerate(zip(f_out, o_out)):
        assert_close(a, b, **out_tol, what=f"output {i}")
    assert_close(f_grad, o_grad, **grad_tol, what="gradient")


def reference_topk(layers, x, k, distribution, steepness, art_lambda=0.25, sparse_form=False):
    """Float64 top-k columns ``[B, n, k]`` of a network given as difftopk's per-layer tuples.

    Each layer is ``(split_a [C, n], split_b [C, n], combine_min [n, C], combine_max [n, C], ...)``:
    ``a = x split_a^T``, ``b = x split_b^T``, ``alpha = f(b - a)``, new values
    ``(alpha a + (1 - alpha) b) combine_min^T + ((1 - alpha) a + alpha b) combine_max^T``.
    The columns are swept back from the unit columns of the top ``k`` positions
    with the same layer mixes; ``sparse_form`` builds each layer's matrix from
    the sparse index arrays (``alpha_idxs``, ``one_minus_alpha_idxs``,
    ``remain_idxs``, ``alpha_mask``) instead, as ``execute_sparse_topk`` does.
    """
    t = [[torch.as_tensor(np.asarray(m, dtype=np.float64)) for m in layer[:4]] for layer in layers]
    B, n = x.shape
    alphas = []
    for sa, sb, cmin, cmax in t:
        a, b = x @ sa.T, x @ sb.T
        alpha = alpha_ref(a, b, distribution, steepness, art_lambda)
        alphas.append(alpha)
        x = (alpha * a + (1 - alpha) * b) @ cmin.T + ((1 - alpha) * a + alpha * b) @ cmax.T
    X = torch.eye(n, dtype=torch.float64)[:, n - k:].expand(B, n, k)
    for l in range(len(t) - 1, -1, -1):
        sa, sb, cmin, cmax = t[l]
        alpha = alphas[l]
        if sparse_form:
            ai, oi, ri, mask = (np.asarray(m, dtype=np.int64).reshape(-1, w)
                                for m, w in zip(layers[l][4:], (2, 2, 2, 1)))
            al = alpha[:, mask[:, 0]].repeat_interleave(2, dim=1)  # one alpha per comparator, for both wires
            P = torch.zeros(B, n, n, dtype=torch.float64)
            P[:, ai[:, 0], ai[:, 1]] = al
            P[:, oi[:, 0], oi[:, 1]] = 1 - al
            P[:, ri[:, 0], ri[:, 1]] = 1.0
            X = P @ X
        else:
            w_min = alpha.unsqueeze(-2) * sa.T + (1 - alpha).unsqueeze(-2) * sb.T
            w_max = (1 - alpha).unsqueeze(-2) * sa.T + alpha.unsqueeze(-2) * sb.T
            X = w_max @ (cmax.T @ X) + w_min @ (cmin.T @ X)
    return x, X


def sparse_layers(kind, n, k):
    with contextlib.redirect_stdout(io.StringIO()):  # sparse_splitter_selection_network prints
        if kind == "bitonic":
            return difftopk_networks.sparse_bitonic_network(n)
        return difftopk_networks.sparse_splitter_selection_network(n, k)


# --------------------------------------------------------------------------- API surface
@pytest.mark.parametrize("module, name", [
    ("diffsort", "DiffSortNet"),
    ("difftopk", "DiffTopkNet"),
    ("difftopk", "TopKCrossEntropyLoss"),
    ("difftopk", "NeuralSort"),
    ("difftopk", "SoftSort"),
    ("difftopk", "SmoothTopKLoss"),
    ("difftopk", "SmoothHardTopKLoss"),
])
def test_same_signature(module, name):
    def params(cls):
        return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()]

    ours = getattr({"diffsort": fs_diffsort, "difftopk": fs_difftopk}[module], name)
    oracle = getattr({"diffsort": diffsort, "difftopk": difftopk}[module], name)
    assert params(ours) == params(oracle)
    assert issubclass(ours, torch.nn.Module)
    assert ours.__doc__


def test_compat_package_exports():
    import fastsort.compat as compat

    assert compat.diffsort is fs_diffsort and compat.difftopk is fs_difftopk
    for name in ("DiffTopkNet", "TopKCrossEntropyLoss", "NeuralSort", "SoftSort", "SmoothTopKLoss",
                 "SmoothHardTopKLoss"):
        assert hasattr(fs_difftopk, name) and hasattr(difftopk, name)


# --------------------------------------------------------------------------- DiffSortNet
@pytest.mark.parametrize("steepness", [0.7, 10.0, 60.0])
@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 16, 33, 64])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("network", ["odd_even", "bitonic"])
def test_diffsortnet_matches_diffsort(network, distribution, n, steepness):
    kw = dict(steepness=steepness, art_lambda=0.4, distribution=distribution)
    ours = fs_diffsort.DiffSortNet(network, n, **kw)
    oracle = diffsort.DiffSortNet(network, n, **kw)  # diffsort casts its network to the input dtype
    check_against(ours, oracle, scores(3, n), F64, GRAD_TOL[distribution])


def test_diffsortnet_float32_and_half():
    x = scores(4, 13, torch.float32)
    ours, oracle = fs_diffsort.DiffSortNet("bitonic", 13), diffsort.DiffSortNet("bitonic", 13)
    check_against(ours, oracle, x, dict(rtol=1e-5, atol=1e-6), dict(rtol=1e-4, atol=1e-5))
    y, X = ours(x.half())  # computed in float32, returned in the input dtype
    assert y.dtype == X.dtype == torch.float16
    torch.testing.assert_close(X.float(), ours(x.half().float())[1], rtol=0, atol=1e-3)


@pytest.mark.parametrize("interpolation_type, distribution, expect", [
    ("logistic", "cauchy", "logistic"),
    ("gaussian", None, "gaussian"),
    ("optimal", "optimal", "optimal"),
])
def test_interpolation_type_semantics(interpolation_type, distribution, expect):
    x = scores(2, 6)
    kw = dict(interpolation_type=interpolation_type, distribution=distribution)
    ours = fs_diffsort.DiffSortNet("odd_even", 6, **kw)
    assert ours.distribution == diffsort.DiffSortNet("odd_even", 6, **kw).distribution == expect
    check_against(ours, fs_diffsort.DiffSortNet("odd_even", 6, distribution=expect), x, F64, F64)
    with pytest.warns(DeprecationWarning, match="interpolation_type"):
        net = fs_difftopk.DiffTopkNet("odd_even", 6, 2, **kw)
    assert net.distribution == expect


def test_parameters_are_read_at_call_time():
    x = scores(2, 9)
    ours, oracle = fs_diffsort.DiffSortNet("bitonic", 9), diffsort.DiffSortNet("bitonic", 9)
    for net in (ours, oracle):
        net.steepness, net.distribution = 3.0, "logistic"
    check_against(ours, oracle, x, F64, F64)


# --------------------------------------------------------------------------- DiffTopkNet
@pytest.mark.parametrize("n, k", [(2, 1), (5, 1), (5, 5), (8, 3), (13, 4), (33, 5), (33, 33)])
@pytest.mark.parametrize("distribution", ["cauchy", "logistic_phi", "gaussian", "optimal"])
@pytest.mark.parametrize("network", ["odd_even", "bitonic"])
def test_difftopknet_matches_difftopk(network, distribution, n, k):
    kw = dict(steepness=8.0, distribution=distribution)
    ours = fs_difftopk.DiffTopkNet(network, n, k, **kw)
    oracle = as_double(difftopk.DiffTopkNet(network, n, k, **kw))
    with default_dtype(torch.float64):
        check_against(ours, oracle, scores(3, n), F64, GRAD_TOL[distribution])


@pytest.mark.parametrize("network", ["odd_even", "bitonic"])
def test_difftopknet_sparse_flag_same_numbers(network):
    x = scores(3, 11)
    dense = fs_difftopk.DiffTopkNet(network, 11, 4, sparse=False)
    sparse = fs_difftopk.DiffTopkNet(network, 11, 4, sparse=True)
    f_out, f_grad, cots = vjp(dense, x)
    s_out, s_grad, _ = vjp(sparse, x, cots)
    assert torch.equal(f_out[0], s_out[0]) and torch.equal(f_grad, s_grad)
    assert dense(x)[0] is None and sparse(x)[0] is None


SPARSE_CASES = [("bitonic", 8, 3), ("bitonic", 13, 5), ("bitonic", 33, 2),
                ("splitter_selection", 2, 1), ("splitter_selection", 8, 1), ("splitter_selection", 10, 3),
                ("splitter_selection", 16, 5), ("splitter_selection", 33, 4), ("splitter_selection", 50, 10),
                ("splitter_selection", 7, 7)]


@pytest.mark.parametrize("sparse_form", [False, True], ids=["dense_math", "sparse_index_math"])
@pytest.mark.parametrize("distribution", ["cauchy", "logistic_phi", "gaussian"])
@pytest.mark.parametrize("network, n, k", SPARSE_CASES)
def test_sparse_networks_match_reference(network, n, k, distribution, sparse_form):
    layers = sparse_layers(network, n, k)
    kw = dict(steepness=6.0, art_lambda=0.3, distribution=distribution)
    for sparse in (True, False):  # splitter_selection is accepted with either flag
        ours = fs_difftopk.DiffTopkNet(network, n, k, sparse=sparse, **kw)
        ref = lambda x: reference_topk(layers, x, k, sparse_form=sparse_form, **kw)[1]  # noqa: E731
        check_against(ours, ref, scores(3, n), F64, F64)


@pytest.mark.parametrize("network", ["odd_even", "bitonic"])
def test_reference_matches_difftopk(network):
    """The dense reference above is the oracle's ``execute_topk`` (self-check of the test)."""
    n, k = 13, 4
    net = as_double(difftopk.DiffTopkNet(network, n, k, steepness=6.0))
    with default_dtype(torch.float64):
        check_against(lambda x: reference_topk(net.sorting_network, x, k, "cauchy", 6.0)[1], net,
                      scores(3, n), F64, F64)


@pytest.mark.parametrize("network, n, k", [("bitonic", 13, 3), ("splitter_selection", 16, 5)])
def test_sparse_matches_difftopk_with_torch_sparse(network, n, k):
    pytest.importorskip("torch_sparse")
    with contextlib.redirect_stdout(io.StringIO()):
        oracle = difftopk.DiffTopkNet(network, n, k, sparse=True, steepness=6.0)
    ours = fs_difftopk.DiffTopkNet(network, n, k, sparse=True, steepness=6.0)
    check_against(ours, oracle, scores(3, n, torch.float32), dict(rtol=1e-5, atol=1e-5),
                  dict(rtol=1e-4, atol=1e-5))


# --------------------------------------------------------------------------- TopKCrossEntropyLoss
class _ReferenceNet(torch.nn.Module):
    """Stands in for the oracle loss's ``top_k_net``: the float64 dense reference of a sparse network."""

    def __init__(self, layers, k, kw):
        super().__init__()
        self.layers, self.k, self.kw = layers, k, kw

    def forward(self, x):
        return None, reference_topk(self.layers, x, self.k, **self.kw)[1]


def oracle_loss(method, it, p_k, n, m, top1_mode, distribution):
    """difftopk's loss; the sparse methods (torch_sparse) run its dense path on the float64 reference network."""
    kw = dict(m=m, distribution=distribution, top1_mode=top1_mode)
    if method in ("bitonic", "splitter_selection"):
        loss = difftopk.TopKCrossEntropyLoss("bitonic__non_sparse", it, p_k, n, **kw)
        layers = sparse_layers(method, m or n, len(p_k))
        loss.top_k_net = _ReferenceNet(layers, len(p_k), dict(distribution=distribution, steepness=it))
        return loss
    loss = difftopk.TopKCrossEntropyLoss(method, it, p_k, n, **kw)
    if hasattr(loss, "top_k_net"):
        as_double(loss.top_k_net)
    return loss


LOSS_METHODS = ["odd_even", "bitonic__non_sparse", "bitonic", "splitter_selection", "neuralsort", "softsort"]


@pytest.mark.parametrize("p_k", [[0.5, 0.0, 0.0, 0.0, 0.5], [0.2, 0.3, 0.5]], ids=["p5", "p3"])
@pytest.mark.parametrize("m", [None, 8])
@pytest.mark.parametrize("top1_mode", ["sm", "smce", "sort"])
@pytest.mark.parametrize("method", LOSS_METHODS)
def test_topk_cross_entropy_matches_difftopk(method, top1_mode, m, p_k):
    n, it = 20, 3.0
    # NeuralSort in difftopk only runs in float32
    dtype = torch.float32 if method == "neuralsort" else torch.float64
    tol = dict(rtol=1e-5, atol=2e-6) if dtype == torch.float32 else F64
    logits = scores(6, n, dtype, seed=7, scale=2.0)
    labels = torch.arange(6) * 3 % n
    kw = dict(m=m, top1_mode=top1_mode, distribution="cauchy")
    ours = fs_difftopk.TopKCrossEntropyLoss(method, it, p_k, n, **kw)
    oracle = oracle_loss(method, it, p_k, n, **kw)
    with default_dtype(dtype):
        check_against(lambda x: ours(x, labels), lambda x: oracle(x, labels), logits, tol, tol)


@pytest.mark.parametrize("method", ["odd_even", "splitter_selection"])
@pytest.mark.parametrize("distribution", ["logistic_phi", "optimal", "gaussian"])
def test_topk_cross_entropy_distributions(distribution, method):
    n, p_k = 12, [0.25, 0.25, 0.5]
    logits, labels = scores(5, n, seed=3), torch.tensor([0, 3, 5, 11, 2])
    kw = dict(m=None, top1_mode="sm", distribution=distribution)
    ours = fs_difftopk.TopKCrossEntropyLoss(method, 4.0, p_k, n, **kw)
    oracle = oracle_loss(method, 4.0, p_k, n, **kw)
    with default_dtype(torch.float64):
        check_against(lambda x: ours(x, labels), lambda x: oracle(x, labels), logits, F64, GRAD_TOL[distribution])


# --------------------------------------------------------------------------- NeuralSort / SoftSort
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_neuralsort_matches_difftopk(n, tau, hard):
    x = scores(4, n, torch.float32)
    ours, oracle = fs_difftopk.NeuralSort(tau, hard), difftopk.NeuralSort(tau, hard)
    check_against(ours, oracle, x, dict(rtol=1e-5, atol=2e-5), dict(rtol=1e-4, atol=2e-5))


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("pow", [1.0, 2.0])
@pytest.mark.parametrize("tau", [0.5, 2.0])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_softsort_matches_difftopk(n, tau, pow, hard):
    x = scores(4, n)
    check_against(fs_difftopk.SoftSort(tau, hard, pow), difftopk.SoftSort(tau, hard, pow), x, F64, F64)


def test_neuralsort_layout_is_ascending_columns():
    x = torch.tensor([[3.0, -1.0, 7.0, 0.5]])
    P = fs_difftopk.NeuralSort(tau=1e-3)(x)
    assert torch.equal(P.argmax(1), torch.tensor([[1, 3, 0, 2]]))  # column j = j-th smallest
    S = fs_difftopk.SoftSort(tau=1e-3)(x)
    assert torch.equal(S.argmax(2), torch.tensor([[2, 0, 3, 1]]))  # row r = (r+1)-th largest


# --------------------------------------------------------------------------- smooth top-k SVM losses
def smooth_svm_reference(x, y, k, tau, hard, alpha=1.0):
    """Berrada et al.'s (hard-switched) smooth top-k SVM loss by enumerating k-subsets, float64 autograd.

    ``tau * log(e_k exp(alpha / tau) + e_{k-1} exp(x_y')) - tau * log(e_{k-1} exp(x_y'))`` with
    ``e_j`` the elementary symmetric polynomials of ``exp(x_c / (k tau))`` over the other classes
    and ``x_y' = x_y / (k tau)``; the hard branch (gap between the k-th and (k+1)-th largest score
    ``>= k tau log 1000``) is ``max(0, mean(topk(x_other + alpha)) - (sum(top(k-1)(x_other)) + x_y) / k)``.
    """
    B, C = x.shape
    losses = []
    for b in range(B):
        x1 = x[b, [c for c in range(C) if c != y[b]]]
        x2 = x[b, y[b]]

        def log_e(j):
            if j == 0:
                return x.new_zeros(())
            sums = torch.stack([x1[list(S)].sum() for S in itertools.combinations(range(C - 1), j)])
            return torch.logsumexp(sums / (k * tau), 0)

        z = alpha / tau + log_e(k) - log_e(k - 1) - x2 / (k * tau)
        loss = tau * torch.logaddexp(z, torch.zeros_like(z))
        top = x[b].detach().sort(descending=True).values
        if hard and top[k - 1] - top[k] >= k * tau * math.log(1000.0):
            hard_loss = (x1 + alpha).topk(k).values.mean() - (x1.topk(k - 1).values.sum() + x2) / k
            loss = hard_loss.clamp(min=0)
        losses.append(loss)
    return torch.stack(losses).sum() / B


@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("cls", ["SmoothTopKLoss", "SmoothHardTopKLoss"])
@pytest.mark.parametrize("k, tau", [(1, 1.0), (2, 0.5), (3, 1.0), (5, 2.0)])
def test_smooth_topk_losses_match_difftopk(cls, k, tau, scale):
    """Values against difftopk; gradients against the exact subset-enumeration reference.

    difftopk's hand-written ``LogSumExp`` backward is only compared where it is exact (k >= 2,
    moderate scores): for k = 1 it adds ``-sigmoid(z_b) / B`` (about ``-1/B``) to the gradient of
    every non-label logit (finite differences disagree with it; test_compat_usage.py pins the
    offset), and for large score gaps it switches to its p-th order approximation (errors ~1e-5).
    """
    pytest.importorskip("fastsort.smooth_topk")
    C, B = 10, 8
    x = scores(B, C, seed=k)
    x[::2] *= scale  # scale 30: large gaps, the hard branch of SmoothHardTopKLoss on half the rows
    labels = torch.arange(B) % C
    hard = cls == "SmoothHardTopKLoss"
    ours = getattr(fs_difftopk, cls)(C, k, tau)
    oracle = getattr(difftopk, cls)(C, k, tau)
    out, grad, _ = vjp(lambda z: ours(z, labels), x)
    ref_out, ref_grad, _ = vjp(lambda z: smooth_svm_reference(z, labels, k, tau, hard), x)
    assert_close(out[0], oracle(x, labels).detach(), **F64, what="loss vs difftopk")
    assert_close(out[0], ref_out[0], **F64, what="loss vs reference")
    assert_close(grad, ref_grad, **F64, what="gradient vs reference")
    if k >= 2 and scale == 1.0:
        check_against(lambda z: ours(z, labels), lambda z: oracle(z, labels), x, F64, F64)


# --------------------------------------------------------------------------- no_grad and the device (CUDA) path
def _loss_case(method, it, p_k, n, **kw):
    return lambda: fs_difftopk.TopKCrossEntropyLoss(method, it, p_k, n, **kw)


# id -> (module factory, n, takes labels)
COMPAT_CASES = {
    "sort-bitonic": (lambda: fs_diffsort.DiffSortNet("bitonic", 33, distribution="logistic_phi"), 33, False),
    "sort-odd_even": (lambda: fs_diffsort.DiffSortNet("odd_even", 13, distribution="optimal"), 13, False),
    "topk-bitonic": (lambda: fs_difftopk.DiffTopkNet("bitonic", 33, 5, distribution="gaussian"), 33, False),
    "topk-odd_even": (lambda: fs_difftopk.DiffTopkNet("odd_even", 20, 3, steepness=30.0), 20, False),
    "topk-splitter": (lambda: fs_difftopk.DiffTopkNet("splitter_selection", 50, 10, sparse=True), 50, False),
    "loss-bitonic-m": (_loss_case("bitonic", 2.0, [0.5, 0, 0, 0, 0.5], 100, m=16, distribution="cauchy"), 100, True),
    "loss-odd_even-smce": (_loss_case("odd_even", 3.0, [0.25, 0.25, 0.5], 20, top1_mode="smce",
                                      distribution="logistic"), 20, True),
    "loss-splitter-sort": (_loss_case("splitter_selection", 1.5, [0.2, 0.8], 40, m=12, top1_mode="sort",
                                      distribution="reciprocal"), 40, True),
    "loss-bitonic_ns": (_loss_case("bitonic__non_sparse", 4.0, [0.5, 0.5], 24, distribution="optimal"), 24, True),
    "loss-neuralsort": (_loss_case("neuralsort", 2.0, [0.5, 0, 0.5], 30, m=10), 30, True),
    "loss-softsort": (_loss_case("softsort", 2.0, [0.5, 0, 0.5], 30), 30, True),
    "neuralsort-hard": (lambda: fs_difftopk.NeuralSort(0.5, hard=True), 16, False),
    "softsort": (lambda: fs_difftopk.SoftSort(0.5, pow=2.0), 16, False),
    "smooth-hard": (lambda: fs_difftopk.SmoothHardTopKLoss(30, 3, 0.5), 30, True),
}


def _run_case(case, x):
    factory, _, takes_labels = COMPAT_CASES[case]
    module = factory()
    if takes_labels:
        return module(x, (torch.arange(x.shape[0]) * 7 % x.shape[1]).to(x.device))
    return module(x)


@pytest.mark.parametrize("case", list(COMPAT_CASES))
def test_no_grad_matches_grad(case):
    """Inference under ``torch.no_grad()`` (eval loops) gives the same numbers."""
    x = scores(4, COMPAT_CASES[case][1], scale=2.0)
    with torch.no_grad():
        plain = [o for o in _as_tuple(_run_case(case, x)) if o is not None]
    with_grad = [o for o in _as_tuple(_run_case(case, x.clone().requires_grad_(True))) if o is not None]
    for a, b in zip(plain, with_grad):
        assert_close(a, b.detach(), **F64, what=case)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(COMPAT_CASES))
def test_device_matches_cpu(case, dtype, device):
    """On CUDA (``FASTSORT_TEST_DEVICE=cuda``) the compat modules run fastsort's Triton kernels and agree
    with the float64 CPU results, which the tests above check against the oracles.

    float32 tolerance: ``1e-4`` of the largest entry (plus ``rtol = 1e-4``); float32 gradients of e.g.
    ``logistic_phi`` on 33 wires differ from float64 by ~2e-5 of the largest entry on the CPU as well.
    """
    if device.type == "cpu":
        pytest.skip("device run only (FASTSORT_TEST_DEVICE=cuda)")
    from fastsort._dispatch import resolve_backend

    x = scores(4, COMPAT_CASES[case][1], scale=2.0)
    assert resolve_backend(x.to(device), "auto") == "triton"
    ref_out, ref_grad, cots = vjp(lambda z: _run_case(case, z), x)
    dev_out, dev_grad, _ = vjp(lambda z: _run_case(case, z), x.to(device, dtype), [c.to(device, dtype) for c in cots])
    tol = dict(rtol=1e-9, atol_of_max=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol_of_max=1e-4)
    for a, b in zip(dev_out, ref_out):
        assert a.device.type == device.type and a.dtype == dtype
        assert_close(a.cpu().double(), b, **tol, what=f"{case} output")
    assert_close(dev_grad.cpu().double(), ref_grad, **tol, what=f"{case} gradient")


# --------------------------------------------------------------------------- errors
def _sort(**kw):
    return fs_diffsort.DiffSortNet(**{"sorting_network_type": "bitonic", "size": 4, **kw})


def _topk(**kw):
    return fs_difftopk.DiffTopkNet(**{"sorting_network_type": "bitonic", "size": 4, "k": 2, **kw})


def _loss(**kw):
    args = dict(diffsort_method="odd_even", inverse_temperature=2.0, p_k=[0.5, 0.5], n=10, distribution="cauchy")
    return fs_difftopk.TopKCrossEntropyLoss(**{**args, **kw})


@pytest.mark.parametrize("build, kw, exc, match", [
    (_sort, dict(sorting_network_type="odd_even_merge"), NotImplementedError, "unknown"),
    (_sort, dict(distribution="softmax"), NotImplementedError, "distribution"),
    (_sort, dict(distribution=None), NotImplementedError, "pass distribution"),
    (_sort, dict(distribution="logistic", interpolation_type="gaussian"), AssertionError, "Two different"),
    (_sort, dict(size=0), AssertionError, "size"),
    (_topk, dict(sorting_network_type="sinkhorn"), NotImplementedError, "unknown"),
    (_topk, dict(k=5), AssertionError, "k must"),
    (_topk, dict(k=0), AssertionError, "k must"),
    (_loss, dict(diffsort_method="sinkhorn_sort"), NotImplementedError, "diffsort_method"),
    (_loss, dict(distribution=None), NotImplementedError, "pass distribution"),
    (_loss, dict(p_k=[0.5, 0.4]), AssertionError, "sum up to 1"),
    (_loss, dict(top1_mode="softmax"), AssertionError, "top1_mode"),
    (_loss, dict(m=2), AssertionError, "larger than K"),
    (_loss, dict(m=10), AssertionError, "smaller than"),
    (_loss, dict(inverse_temperature=0.0), AssertionError, "inverse_temperature"),
])
def test_construction_errors(build, kw, exc, match):
    with pytest.raises(exc, match=match) as info:
        build(**kw)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("module, x, match", [
    (fs_diffsort.DiffSortNet("bitonic", 4), torch.zeros(2, 5), "does not match"),
    (fs_diffsort.DiffSortNet("bitonic", 4), torch.zeros(4), "2-D"),
    (fs_difftopk.DiffTopkNet("odd_even", 4, 2), torch.zeros(2, 3, 4), "2-D"),
    (fs_difftopk.NeuralSort(tau=-1.0), torch.zeros(2, 3), "tau"),
    (fs_difftopk.SoftSort(), torch.zeros(2, 3, 1), "2-D"),
])
def test_forward_errors(module, x, match):
    with pytest.raises(ValueError, match=match):
        module(x)


def test_loss_forward_errors():
    loss = _loss()
    with pytest.raises(AssertionError, match="does not match n"):
        loss(torch.zeros(3, 9), torch.zeros(3, dtype=torch.long))
    # neuralsort, like difftopk, takes any number of classes
    ns = _loss(diffsort_method="neuralsort", distribution=None)
    assert torch.isfinite(ns(torch.randn(3, 7), torch.zeros(3, dtype=torch.long)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loss()  # no warning without interpolation_type
