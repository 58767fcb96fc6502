"""``torch.compile(fullgraph=True)`` through fastsort's custom ops, with the torch backend and
with the Triton kernels (interpreted on the CPU in CI, compiled on CUDA with
``FASTSORT_TEST_DEVICE=cuda``).

One training step -- a ``Linear`` model, ``TopKCrossEntropyLoss`` with top-m
preselection, plus ``soft_topk`` and ``soft_sort`` terms on the logits (the
network op with and without a reverse sweep) -- is compiled with Inductor
and ``fullgraph=True`` (any graph break raises), and must give the eager loss
and parameter gradients; a second call with new data of the same shapes must
not recompile.

Cost: one Inductor compile of forward and backward per backend, ~15-40 s on a 2-core CPU
(seconds once Inductor's cache is warm); keep this file to this single compiled function.  The
fresh-process compiles and the Sinkhorn kernels traced under the interpreter are marked ``slow``.
"""
import pytest
import torch

import fastsort

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

B, F, C = 6, 8, 20
P_K = [0.5, 0.0, 0.5]


def _step(model, crit, inputs, labels):
    logits = model(inputs)
    loss = crit(logits, labels)
    top = fastsort.soft_topk(logits, 3, "bitonic", backend=crit.backend, steepness=2.0)  # [B, 3, C]
    sorted_ = fastsort.soft_sort(logits, "odd_even", backend=crit.backend, steepness=2.0)  # [B, C]
    weights = torch.linspace(1.0, 2.0, C, device=logits.device)
    return loss + 0.1 * (top * logits.unsqueeze(1)).sum() / B + 0.01 * (sorted_ * weights).sum() / B


def _loss_and_grads(fn, model, crit, inputs, labels):
    model.zero_grad(set_to_none=True)
    loss = fn(model, crit, inputs, labels)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiled_training_step_matches_eager(device, backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = torch.nn.Linear(F, C).to(device)
    crit = fastsort.TopKCrossEntropyLoss(P_K, m=7, inverse_temperature=2.0, backend=backend)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(_step, backend=counter, fullgraph=True)

    for call in range(2):
        inputs, labels = torch.randn(B, F, device=device), torch.randint(0, C, (B,), device=device)
        eager_loss, eager_grads = _loss_and_grads(_step, model, crit, inputs, labels)
        loss, grads = _loss_and_grads(compiled, model, crit, inputs, labels)
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
        for g, ge, name in zip(grads, eager_grads, ("weight", "bias")):
            torch.testing.assert_close(g, ge, rtol=1e-4, atol=1e-6, msg=lambda m: f"call {call}, {name}: {m}")
        assert counter.frame_count == 1, f"recompiled on call {call} ({counter.frame_count} frames)"
    # the fastsort custom ops are in the one traced graph
    targets = {str(node.target) for node in counter.graphs[0].graph.nodes if node.op == "call_function"}
    assert "fastsort.network_fwd.default" in targets, sorted(targets)
    if backend == "triton":  # the fused top-k loss kernel (the torch backend's loss is plain torch ops)
        assert "fastsort.topk_ce_fwd.default" in targets, sorted(targets)


_FRESH_PROCESS_SCRIPT = r"""
import json, sys
import torch, fastsort

backend, device = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
crit = fastsort.TopKCrossEntropyLoss([0.5, 0.0, 0.5], m=7, inverse_temperature=2.0, backend=backend)

def step(logits, labels):
    loss = crit(logits, labels)
    top = fastsort.soft_topk(logits, 3, "bitonic", backend=backend, steepness=2.0)
    ranks = fastsort.soft_rank(logits, "odd_even", backend=backend, steepness=2.0)
    return loss + 0.1 * (top * logits.unsqueeze(1)).sum() + 0.01 * ranks.sum()

compiled = torch.compile(step, fullgraph=True)
out = []
for B in (6, 9, 4):  # the second batch size recompiles with a dynamic batch dimension
    x, y = torch.randn(B, 20, device=device), torch.randint(0, 20, (B,), device=device)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(a, y).backward()  # compiled first: nothing of fastsort is cached yet
    step(b, y).backward()
    out.append([B, (a.grad - b.grad).abs().max().item(), b.grad.abs().max().item()])
print(json.dumps(out))
"""


@pytest.mark.slow  # a fresh interpreter and two cold Inductor compiles per backend: ~30-45 s each
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiled_first_in_a_fresh_process_with_new_batch_sizes(device, backend):
    """A model compiled before any eager fastsort call (empty caches: the custom ops' fake
    implementations must not build and cache tensors under a fake mode, which once poisoned the
    network-table cache), then called with new batch sizes (automatic dynamic shapes recompile)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if device.type == "cpu":
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_SCRIPT, backend, str(device)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r[0] for r in rows] == [6, 9, 4]
    for B, diff, scale in rows:
        assert scale > 0 and diff <= 1e-5 * max(1.0, scale), (B, diff, scale)


def _check_aot_eager(f, device, shapes, dynamic=None):
    """``f(x, labels)`` compiled with ``fullgraph=True`` (``aot_eager``: Dynamo and AOT tracing with the
    fake implementations, no Inductor codegen) against eager: value and ``dL/dx`` for each ``(B, n)``."""
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for B, n in shapes:
        x, y = torch.randn(B, n, device=device), torch.randint(0, n, (B,), device=device)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        la, lb = compiled(a, y), f(b, y)
        la.backward()
        lb.backward()
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


_SLOW = pytest.mark.slow  # Sinkhorn's interpreted kernels, or n x n torch graphs, traced for two batch sizes: 12-60 s


@pytest.mark.parametrize("method,backend,params", [
    ("sinkhorn", "torch", {}), pytest.param("sinkhorn", "triton", {}, marks=_SLOW),
    ("sinkhorn", "torch", {"squash": False}), pytest.param("sinkhorn", "triton", {"squash": False}, marks=_SLOW),
    pytest.param("neuralsort", "torch", {}, marks=_SLOW), pytest.param("softsort", "torch", {}, marks=_SLOW),
    ("splitter_selection", "triton", {})])
def test_fullgraph_every_op(device, method, backend, params):
    """Every public op of a method in one ``fullgraph=True`` graph, values and gradients equal to eager
    for two batch sizes.  Sinkhorn stops on data-dependent convergence: its ops are custom ops too."""
    full = method != "splitter_selection"  # a top-k network: no full sort, ranks or permutation
    kw = dict(backend=backend, **params, **({"epsilon": 0.1} if method == "sinkhorn" else {}))  # few iterations

    def f(x, y):
        top = fastsort.soft_topk(x, 3, method, **kw)
        out = (top * x.unsqueeze(1)).sum() + (fastsort.soft_topk_mask(x, 3, method, **kw) * x).sum()
        out = out + fastsort.topk_cross_entropy(x, y, [0.5, 0.5], method, m=6, backend=backend)
        if full:
            out = out + fastsort.soft_sort(x, method, **kw).sum() + (fastsort.soft_rank(x, method, **kw) * x).sum() \
                + (fastsort.soft_permutation(x, method, **kw) * x.unsqueeze(1)).sum()
        return out

    _check_aot_eager(f, device, [(4, 12), (6, 12)])


@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.slow), "triton"])
def test_dynamic_shapes(device, backend):
    """``dynamic=True``: batch size and row length symbolic (scalar checks must not call ``math``
    functions on symbolic floats), the network, fused-loss and Sinkhorn ops, vs eager."""
    def f(x, y):
        return (fastsort.soft_sort(x, backend=backend).sum()
                + (fastsort.soft_topk(x, 2, "sinkhorn", epsilon=0.1, backend=backend) * x.unsqueeze(1)).sum()
                + fastsort.topk_cross_entropy(x, y, [0.5, 0.5], m=5, inverse_temperature=2.0, backend=backend))

    _check_aot_eager(f, device, [(4, 12), (6, 15)], dynamic=True)
