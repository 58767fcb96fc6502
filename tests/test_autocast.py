"""Every op and the top-k loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

The ops switch autocast off inside (they compute in float32, docs/design.md, "Conventions and
layouts"): on float32 inputs an autocast region changes no bit of the result, and in a bf16 model
(autocast's Linear gives bf16 logits) the results and gradients are finite and close to the float32
model's, within bf16's rounding of the logits.
"""
import pytest
import torch

import fastsort
from helpers import assert_close, run_op

OPS = ("sort", "rank", "topk", "permutation", "topk_mask")
OP_FN = {"sort": "soft_sort", "rank": "soft_rank", "topk": "soft_topk", "permutation": "soft_permutation",
         "topk_mask": "soft_topk_mask"}
PARAMS = {"sinkhorn": {"epsilon": 0.1}}  # a converging epsilon for every input below
CASES = [(method, op) for method in fastsort.METHODS for op in OPS if op in fastsort.METHODS[method].ops]
LOSS_CASES = [(method, m) for method in fastsort.METHODS if "loss" in fastsort.METHODS[method].ops
              for m in (None, 5)]
B, F, C = 4, 6, 8


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(F, C)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, F, generator=g), torch.randint(0, C, (B,), generator=g)


def _op(op, x, method):
    return run_op(OP_FN[op], x, method, k=3, **PARAMS.get(method, {}))


@pytest.mark.parametrize("method,op", CASES)
def test_op_under_autocast(method, op):
    x = torch.randn(3, 7, dtype=torch.float64).float()
    ref = _op(op, x, method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = _op(op, x, method)
    assert same.dtype == torch.float32 and torch.equal(same, ref)  # float32 inside, whatever autocast says

    model, (inp, _) = _model(), _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(inp)
        assert logits.dtype == torch.bfloat16
        y = _op(op, logits, method)
    assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())
    (g,) = torch.autograd.grad((y.float() * torch.linspace(0.5, 1.5, y.numel()).view(y.shape)).sum(),
                               model.weight)
    logits32 = model(inp)
    y32 = _op(op, logits32, method)
    (g32,) = torch.autograd.grad((y32 * torch.linspace(0.5, 1.5, y.numel()).view(y.shape)).sum(), model.weight)
    # bf16 keeps 8 bits: the logits differ by ~4e-3 relative, so outputs and gradients by a few 1e-2
    assert_close(y.float(), y32, atol=5e-2, rtol=5e-2, what=f"{method} {op} under autocast vs float32")
    assert bool(torch.isfinite(g).all())
    assert_close(g, g32, atol=0.1, rtol=0.1, atol_of_max=0.05, what="gradient")


@pytest.mark.parametrize("method,m", LOSS_CASES)
def test_loss_under_autocast(method, m):
    kw = dict(m=m, inverse_temperature=10.0 if method == "sinkhorn" else 2.0)
    crit = fastsort.TopKCrossEntropyLoss([0.5, 0.0, 0.5], method, **kw)
    model, (inp, labels) = _model(), _inputs()
    x32 = model(inp).detach()
    ref = crit(x32, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(crit(x32, labels), ref)  # float32 logits: not a bit changes
        loss = crit(model(inp), labels)
    assert loss.dtype == torch.bfloat16 and bool(torch.isfinite(loss))
    (g,) = torch.autograd.grad(loss, model.weight)
    (g32,) = torch.autograd.grad(crit(model(inp), labels), model.weight)
    assert bool(torch.isfinite(g).all())
    assert_close(loss.float(), ref, atol=2e-2, rtol=2e-2, what=f"{method} loss under autocast vs float32")
    assert_close(g, g32, atol=2e-2, rtol=5e-2, atol_of_max=0.05, what="loss gradient")
