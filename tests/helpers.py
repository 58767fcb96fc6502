"""The test suite's one shared helpers module (test modules import from here, never from each other).

* :func:`assert_close`: the one tensor comparison, with a mismatch report on failure;
  :func:`assert_kernel_close` is its convention for a kernel output against the float32 torch result;
* :func:`run_op` / :func:`sinkhorn_op`: a public op, or a ``fastsort.sinkhorn`` function, by name;
* :func:`alpha_ref` / :func:`dense_network`: the reference relaxations and the dense float64
  reference of a relaxed network, written from the relaxation formulas of ``docs/design.md``;
  :func:`neuralsort_direct`: NeuralSort's rows from their definition (pairwise ``|s_j - s_l|``);
* :func:`make_batch`: a seeded logits / labels batch;
* :func:`nan_filled_allocations`: NaN-prefilled launcher allocations, with a guard for 0-element
  placeholders.

``tests/`` has no ``__init__.py``: pytest puts it on ``sys.path``, so ``from helpers import ...`` works.
"""
import contextlib
import math
import sys

import pytest
import torch

import fastsort
from fastsort import networks, sinkhorn


# --------------------------------------------------------------------------- comparison
def assert_close(actual, expected, *, atol=0.0, rtol=0.0, atol_of_max=0.0, max_at_least=0.0, equal_nan=False,
                 cpu_float32=False, what=""):
    """``torch.testing.assert_close(actual, expected, atol=..., rtol=..., equal_nan=...)`` (shapes, dtypes and
    devices must match; ``|actual - expected| <= atol + rtol |expected|`` elementwise; infinities must be
    equal; NaNs fail unless ``equal_nan``, and then their positions must coincide), failing with a mismatch
    report (:func:`mismatch_report`) headed by ``what``.

    The default tolerances are zero: an exact comparison.

    * ``atol_of_max``: an absolute tolerance relative to the largest entry, added to ``atol``:
      ``atol + atol_of_max * max(max_at_least, max |expected|)`` (the maximum over the finite entries of
      ``expected``); ``max_at_least=1`` makes it relative to ``max(1, max |expected|)``;
    * ``cpu_float32``: ``actual`` (any device and dtype) is moved to the CPU and cast to float32 first;
      ``expected`` is compared as it is (a float32 CPU reference).
    """
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().cpu().float() if cpu_float32 else actual.detach()
    if isinstance(expected, torch.Tensor):
        expected = expected.detach()
    if atol_of_max:
        finite = expected[torch.isfinite(expected)]
        largest = finite.abs().max().item() if finite.numel() else 0.0
        atol = atol + atol_of_max * max(max_at_least, largest)
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=equal_nan)
    except AssertionError as err:
        head = f"{what}: " if what else ""
        raise AssertionError(f"{head}{mismatch_report(actual, expected, atol, rtol, equal_nan)}\n"
                             f"(torch.testing: {err})") from None


def assert_kernel_close(actual, expected, tol, what):
    """A kernel's output (any device and dtype) against the float32 CPU ``expected``: moved to the CPU and
    cast to float32, ``rtol = tol`` and ``atol = tol * max(1, max |expected|)``; NaNs must coincide."""
    assert_close(actual, expected, rtol=tol, atol_of_max=tol, max_at_least=1.0, equal_nan=True, cpu_float32=True,
                 what=what)


def mismatch_report(actual, expected, atol, rtol, equal_nan):
    """Shapes, dtypes, the largest absolute / relative error, the worst element (index and both values), the
    number of elements outside ``atol + rtol |expected|`` and of NaN positions that do not coincide (of NaN
    elements, without ``equal_nan``)."""
    if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
        return f"actual {actual!r} vs expected {expected!r}"
    head = f"shapes {tuple(actual.shape)} / {tuple(expected.shape)}, dtypes {actual.dtype} / {expected.dtype}"
    if actual.device != expected.device:
        head += f", devices {actual.device} / {expected.device}"
    if actual.shape != expected.shape:
        return head + ": shapes differ"
    if actual.numel() == 0:
        return head + ": empty"
    a = actual.detach().cpu().to(torch.float64)
    b = expected.detach().cpu().to(torch.float64)
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if equal_nan:
        nans = f"{int((nan_a != nan_b).sum())} NaN positions differ"
    else:
        nans = f"{int((nan_a | nan_b).sum())} NaN elements (never equal without equal_nan)"
    bad = ~torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)
    both_finite = torch.isfinite(a) & torch.isfinite(b)
    abs_err = torch.where(both_finite, (a - b).abs(), torch.zeros_like(a))
    rel_err = torch.where(both_finite & (b != 0), abs_err / b.abs(), torch.zeros_like(a))
    excess = torch.where(both_finite, abs_err - (atol + rtol * b.abs()), torch.full_like(a, -math.inf))
    if bad.any() and not (bad & both_finite).any():  # only NaN / inf mismatches: report the first one
        worst = int(bad.flatten().nonzero()[0])
    else:
        worst = int(excess.flatten().argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
    return (f"{head}; {int(bad.sum())} of {a.numel()} elements mismatch (atol={atol:.3g}, rtol={rtol:.3g}), "
            f"{nans}; max abs error {abs_err.max().item():.6g}, "
            f"max rel error {rel_err.max().item():.6g}; worst at index {idx}: "
            f"actual {a[idx].item()!r}, expected {b[idx].item()!r}")


# --------------------------------------------------------------------------- op dispatch
# short op names (as the kernel and Sinkhorn tests write them) -> the public op
OP_NAMES = {"sort": "soft_sort", "rank": "soft_rank", "perm": "soft_permutation", "topk": "soft_topk",
            "mask": "soft_topk_mask"}
K_OPS = ("soft_topk", "soft_topk_mask")  # the ops that take k


def run_op(op, x, method, k=None, **kw):
    """The public op ``op`` (its name, e.g. ``"soft_topk"``, or a short name of :data:`OP_NAMES`) on ``x``
    with ``method``; ``k`` is passed only to the top-k ops, ``kw`` (``dim``, ``backend``, parameters) to all."""
    name = OP_NAMES.get(op, op)
    fn = getattr(fastsort, name)
    if name in K_OPS:
        return fn(x, k, method, **kw)
    return fn(x, method, **kw)


def sinkhorn_op(kind, x, k=3, **kw):
    """``fastsort.sinkhorn``'s function for ``kind`` (a short name of :data:`OP_NAMES`, e.g.
    ``"topk"`` -> ``sinkhorn_topk``) on ``x``; ``k`` only for the top-k kinds."""
    name = OP_NAMES[kind]
    fn = getattr(sinkhorn, "sinkhorn_" + name[len("soft_"):])
    if name in K_OPS:
        return fn(x, k, **kw)
    return fn(x, **kw)


# --------------------------------------------------------------------------- reference relaxations
def alpha_ref(va, vb, distribution, steepness, art_lambda=0.25):
    """The mixing weight of a comparator with values ``va`` (low wire) and ``vb`` (high wire): the
    relaxation formulas of ``docs/design.md`` for each distribution, at ``v = steepness * (vb - va)``."""
    d = vb - va
    v = steepness * d
    if distribution == "logistic":
        return torch.sigmoid(v)
    if distribution == "logistic_phi":
        return torch.sigmoid(steepness * d / (d.abs() + 1e-10) ** art_lambda)
    if distribution == "gaussian":
        return 0.5 * (1 + torch.erf(v / math.sqrt(2)))
    if distribution == "reciprocal":
        return 0.5 * (v / (2 + v.abs()) + 1)
    if distribution == "cauchy":
        return torch.atan(v) / math.pi + 0.5
    if distribution == "optimal":
        av = v.abs()
        return v.clamp(-0.25, 0.25) + 0.5 + torch.sign(v) * (av > 0.25) * (0.25 - 1 / (16 * (av + 1e-10)))
    raise AssertionError(distribution)


def dense_network(x, kind, distribution, steepness, k=None, art_lambda=0.25):
    """Dense reference of a relaxed network on ``x [B, n]``: per layer an ``n x n`` matrix built from the
    comparator list (``fastsort.networks.network_layers``) and :func:`alpha_ref`, multiplied out.

    Returns ``(y, X)``: the soft values on the wires after the last layer and
    ``X [B, n, n] = L_1 L_2 ... L_D`` with ``X[b, i, j]`` = weight of input ``i``
    at output position ``j`` (diffsort's layout, ``y = x @ X``).
    """
    B, n = x.shape
    eye = torch.eye(n, dtype=x.dtype)
    X = eye.expand(B, n, n)
    y = x
    for layer in networks.network_layers(kind, n, k):
        if not layer:
            continue
        lo = torch.tensor([c[0] for c in layer])
        hi = torch.tensor([c[1] for c in layer])
        desc = torch.tensor([bool(c[2]) for c in layer])
        min_w, max_w = torch.where(desc, hi, lo), torch.where(desc, lo, hi)
        alpha = alpha_ref(y[:, lo], y[:, hi], distribution, steepness, art_lambda)  # [B, c]
        L = eye.repeat(B, 1, 1)
        L[:, lo, lo] = 0
        L[:, hi, hi] = 0
        # new_min = alpha va + (1 - alpha) vb ; new_max = (1 - alpha) va + alpha vb
        L[:, lo, min_w] = alpha
        L[:, hi, min_w] = 1 - alpha
        L[:, lo, max_w] = 1 - alpha
        L[:, hi, max_w] = alpha
        y = (y.unsqueeze(1) @ L).squeeze(1)
        X = X @ L
    return y, X


def neuralsort_direct(s, k, tau):
    """NeuralSort's top ``k`` rows ``[..., k, n]`` from the definition, ``O(n^2)``: rank ``i = 1..k``,
    ``softmax(((n + 1 - 2 i) s - A_s 1) / tau)`` with ``(A_s 1)_j = sum_l |s_j - s_l|``, for float64
    autograd (whose derivative of ``|d|`` at 0 is 0)."""
    n = s.shape[-1]
    a = (s.unsqueeze(-1) - s.unsqueeze(-2)).abs().sum(-1)
    scale = (n + 1 - 2 * torch.arange(1, k + 1, dtype=s.dtype)).unsqueeze(-1)
    return torch.softmax((scale * s.unsqueeze(-2) - a.unsqueeze(-2)) / tau, dim=-1)


# --------------------------------------------------------------------------- inputs
def make_batch(B, C, seed, dtype=torch.float64, scale=1.5):
    """Seeded logits ``[B, C]`` (``scale`` times standard normal, drawn in float64, cast to ``dtype``) and
    labels ``[B]`` in ``[0, C)``."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, C, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, C, (B,), generator=g)
    return logits, labels


# --------------------------------------------------------------------------- the CPU loss's dense gradient
def check_dense_gradient(fwd, args, out, dx, scale=0.5):
    """A CPU fused-loss launcher ``fwd`` run on ``args`` with a NaN-filled ``dense [B, C]`` buffer (float32
    and float64) and ``dense_scale``: the same ``out`` as without it, and ``dense`` the scatter ``dx`` (the
    gradient for a unit cotangent, made by ``topk_ce_bwd``) times ``scale``, every element written."""
    B, C = dx.shape
    for dtype in (torch.float32, torch.float64):
        dense = torch.full((B, C), float("nan"), dtype=dtype)
        out2, _ = fwd(*args, dense=dense, dense_scale=scale)
        torch.testing.assert_close(out2, out, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(dense, (dx.double() * scale).to(dtype), rtol=1e-6, atol=1e-7, equal_nan=True)
        assert torch.isnan(dense).sum() == torch.isnan(dx).sum()


# --------------------------------------------------------------------------- NaN-prefilled launcher allocations
GUARD_ELEMS = 1 << 20


@contextlib.contextmanager
def nan_filled_allocations(module, guards=True):
    """Tensors that code of ``module`` (the launchers) allocates with ``torch.empty``/``empty_like``/
    ``Tensor.new_empty`` come NaN-filled (integer ones -1), so an output element a kernel fails to
    write shows up.

    A 1-D 0-element float allocation (``new_empty(0)``, the placeholder for an output a kernel
    variant must not write) becomes a NaN guard buffer of ``GUARD_ELEMS`` elements instead: torch
    hands a kernel a null pointer for an empty tensor, so a stray write through it would crash the
    process (or the CUDA context); into the guard it lands harmlessly, and the check at exit
    reports it.  ``guards=False``: 0-element allocations stay as they are (the CPU kernels hand numpy arrays
    to their kernels; their empty tensors are placeholders a test may check for)."""
    real_empty, real_like, real_new = torch.empty, torch.empty_like, torch.Tensor.new_empty
    guards = []

    def fill(t):
        if sys._getframe(2).f_globals.get("__name__") != module.__name__:
            return t  # not the launcher's own allocation (e.g. Triton's interpreter copying arguments)
        if guards and t.shape == (0,) and t.is_floating_point():
            guards.append(real_empty(GUARD_ELEMS, dtype=t.dtype, device=t.device).fill_(float("nan")))
            return guards[-1]
        return t.fill_(float("nan") if t.is_floating_point() else -1)

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(torch, "empty", lambda *a, **kw: fill(real_empty(*a, **kw)))
        mp.setattr(torch, "empty_like", lambda *a, **kw: fill(real_like(*a, **kw)))
        mp.setattr(torch.Tensor, "new_empty", lambda self, *a, **kw: fill(real_new(self, *a, **kw)))
        yield
    finally:
        mp.undo()
    for g in guards:
        written = (~torch.isnan(g)).sum().item()
        assert written == 0, f"a kernel wrote {written} elements through a 0-element placeholder buffer"


@contextlib.contextmanager
def default_dtype(dtype):
    """``torch``'s default dtype set to ``dtype`` inside the block (the references build their tensors in it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def one_thread():
    """Generator for a module-scoped autouse fixture: torch runs on one intra-op thread inside (the compat
    tests' matrices are tiny, threads only cost time and stall on a busy machine; train_imagenet.py does
    the same).  Use as ``_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
