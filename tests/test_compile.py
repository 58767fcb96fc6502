"""``torch.compile(fullgraph=True)`` through fastsort's custom ops, with the torch backend and
with the Triton kernels (interpreted on the CPU in CI, compiled on CUDA with
``FASTSORT_TEST_DEVICE=cuda``).

One training step -- a ``Linear`` model, ``TopKCrossEntropyLoss`` with top-m
preselection, plus ``soft_topk`` and ``soft_sort`` terms on the logits (the
network op with and without a reverse sweep) -- is compiled with Inductor
and ``fullgraph=True`` (any graph break raises), and must give the eager loss
and parameter gradients; a second call with new data of the same shapes must
not recompile.

Cost: one Inductor compile of forward and backward per backend, ~25 s on a 2-core CPU
(seconds once Inductor's cache is warm); keep this file to this single compiled function.
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
    assert "fastsort.network_forward.default" in targets, sorted(targets)
    if backend == "triton":  # the fused top-k loss kernel (the torch backend's loss is plain torch ops)
        assert "fastsort.topk_ce_fused.default" in targets, sorted(targets)
