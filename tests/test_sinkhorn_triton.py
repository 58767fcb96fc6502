"""Triton Sinkhorn kernels (kernels/sinkhorn.py) vs the torch reference.

Runs on CPU under Triton's interpreter (tests/conftest.py) or on CUDA; shapes
are small because every interpreted program instance is slow.
"""
import pytest
import torch

from fastsort import sinkhorn as S
from helpers import sinkhorn_op

KW = dict(epsilon=0.05, threshold=1e-4, max_iter=1000)

# (kind, n, k)
CASES = [
    ("sort", 2, None), ("sort", 5, None), ("sort", 16, None),
    ("rank", 5, None), ("rank", 33, None),
    ("perm", 5, None), ("perm", 16, None),
    ("topk", 5, 1), ("topk", 33, 1), ("topk", 16, 5), ("topk", 33, 5), ("topk", 5, 5),
    ("mask", 2, 1), ("mask", 33, 5),
]


def run(kind, x, k, backend, squash=True):
    return sinkhorn_op(kind, x, k, **dict(KW, squash=squash, backend=backend))


@pytest.mark.parametrize("domain", ["scaling", "log"])
@pytest.mark.parametrize("kind,n,k", CASES)
def test_triton_matches_torch(kind, n, k, domain, device, monkeypatch):
    """Output and gradient vs the torch reference.  At epsilon = 0.05 every cost is <= 1 = 20 epsilon, so
    the kernel iterates in the scaling domain; ``log`` forces its log-domain loop (SCALING_MAX < 0)."""
    if domain == "log":
        monkeypatch.setattr(S._kernels(), "SCALING_MAX", -1.0)
    x = torch.randn(5, n)
    squash = n != 16  # one unsquashed shape per kind family
    if not squash:
        x = torch.rand(5, n)
    ref_x = x.clone().requires_grad_(True)
    ref = run(kind, ref_x, k, "torch", squash)
    ct = torch.randn_like(ref)
    (ref * ct).sum().backward()

    tx = x.to(device).requires_grad_(True)
    out = run(kind, tx, k, "triton", squash)
    (out * ct.to(device)).sum().backward()
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(tx.grad.cpu(), ref_x.grad, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("kind,n,k", [("sort", 5, None), ("rank", 33, None), ("perm", 5, None),
                                      ("topk", 33, 5), ("mask", 16, 5)])
def test_forward_writes_every_output_element(kind, n, k, device):
    """The launcher's output buffer pre-filled with NaN: every element must be written."""
    ks = S._kernels()
    x = torch.randn(3, n, device=device)
    kk = k if k is not None else n
    b = S.OPERATORS[kind].weights(n, kk, torch.float32, device)
    m = b.shape[0]
    shape = {"sort": (3, m), "rank": (3, n), "perm": (3, m, n), "topk": (3, kk, n), "mask": (3, n)}[kind]
    out = torch.full(shape, float("nan"), device=device)
    res, z, f, g = ks.sinkhorn_fwd(x, kind=kind, k=kk, b=b, squash=True, out=out, **KW)
    assert torch.isfinite(out).all() and torch.isfinite(z).all() and torch.isfinite(f).all()
    ref = run(kind, x.cpu(), k, "torch")
    torch.testing.assert_close(res.cpu(), ref, atol=2e-4, rtol=1e-4)


def test_mixed_rows_nan_constant_and_float64(device):
    x = torch.randn(4, 7, dtype=torch.float64)
    x[1] = float("nan")
    x[2] = 3.0
    ref = run("topk", x, 2, "torch")
    out = run("topk", x.to(device), 2, "triton")
    assert out.dtype == torch.float64
    assert torch.isnan(out[1]).all()
    keep = [0, 2, 3]
    torch.testing.assert_close(out[keep].cpu(), ref[keep], atol=2e-4, rtol=1e-4)


def test_launch_config_and_aot_variants():
    ks = S._kernels()
    rows, bn, bm, _ = ks._launch_config(5, 5)
    assert bn == 8 and bm == 8 and rows >= 2  # several rows per program for small n
    assert ks._launch_config(4096, 2)[0] == 1
    with pytest.raises(ValueError, match="backend='torch'"):
        ks._launch_config(1000, 1000)
    ids = [v[0] for v in ks.aot_variants()]
    assert len(ids) == len(set(ids)) and any("fwd" in i for i in ids) and any("bwd" in i for i in ids)
    for _, fn, sig, const in ks.aot_variants():
        assert set(const) <= set(sig) and all(sig[c] == "constexpr" for c in const)


@pytest.mark.parametrize("n, m, warps", [(5, 5, 4), (100, 6, 8), (1000, 6, 16), (2000, 6, 16), (4000, 2, 16)])
def test_launch_config_warps(monkeypatch, n, m, warps):
    """~16 tile elements per thread on a GPU, 4 to 16 warps (hand-worked: [1000 -> 1024] x [6 -> 8] = 8192
    elements -> 16 warps; n = 100: 4 rows of 128 x 8 = 4096 -> 8 warps)."""
    from fastsort.kernels import launch

    monkeypatch.setattr(launch, "interpreting", lambda: False)
    assert S._kernels()._launch_config(n, m)[3] == warps
