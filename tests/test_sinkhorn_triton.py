"""Triton Sinkhorn kernels (kernels/sinkhorn.py) vs the torch reference.

Runs on CPU under Triton's interpreter (tests/conftest.py) or on CUDA; shapes
are small because every interpreted program instance is slow.
"""
import warnings

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
    res, z, f, g, err = ks.sinkhorn_fwd(x, kind=kind, k=kk, b=b, squash=True, out=out, **KW)
    assert torch.isfinite(out).all() and torch.isfinite(z).all() and torch.isfinite(f).all()
    assert err.shape == (3,) and bool((err >= 0).all()) and bool((err <= 2 * KW["threshold"]).all())
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


# --------------------------------------------------------------------------- convergence, scale, infinities
def _reported(monkeypatch):
    """Record every ``(err, x)`` handed to ``report_convergence`` (then report as usual)."""
    seen = []
    real = S.report_convergence

    def record(x, err, *args):
        seen.append((err.detach().cpu().float(), x.detach().cpu()))
        return real(x, err, *args)

    monkeypatch.setattr(S, "report_convergence", record)
    return seen


@pytest.mark.parametrize("kind,k", [("rank", None), ("topk", 2), ("mask", 2)])
def test_marginal_error_matches_torch(kind, k, device, monkeypatch):
    """The kernel writes each row's plan marginal error; it is the torch reference's (what decides
    whether a row converged), and a converged call warns on neither backend."""
    seen = _reported(monkeypatch)
    x = torch.randn(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.SinkhornConvergenceWarning)
        run(kind, x, k, "torch")
        run(kind, x.to(device), k, "triton")
    (err_t, _), (err_k, _) = seen
    assert bool((err_k <= 2 * KW["threshold"]).all())
    torch.testing.assert_close(err_k, err_t, atol=2e-5, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_convergence_reported_alike(backend, device):
    """A budget too small for some rows: both backends warn with the same rows (a NaN row never counts),
    and strict=True raises."""
    x = torch.randn(3, 6)
    x[1] = float("nan")
    x[2] = 1.0  # equal values converge at once: z = 1/2, T = a b^T
    x = x.to(device) if backend == "triton" else x
    kw = dict(epsilon=0.05, threshold=1e-4, max_iter=3, backend=backend)
    with pytest.warns(S.SinkhornConvergenceWarning) as rec:
        S.sinkhorn_topk(x, 2, **kw)
    assert rec[0].message.rows == (0,)
    with pytest.raises(S.SinkhornConvergenceError):
        S.sinkhorn_topk(x, 2, strict=True, **kw)


@pytest.mark.parametrize("kind,k,squash", [("topk", 2, True), ("mask", 2, True), ("mask", 2, False)])
def test_epsilon_scaling_in_the_kernel(kind, k, squash, device):
    """Below 1e-2 the kernel scales epsilon down as the torch reference (log domain, also without the
    squash, whose kernel otherwise picks the domain per tile), output and gradient."""
    x = torch.randn(3, 5) if squash else torch.rand(3, 5)
    # (unsquashed: raw values in [0, 1] lie closer together than squashed ones, so a larger epsilon)
    kw = dict(epsilon=1e-3, threshold=1e-3, squash=True) if squash else dict(epsilon=5e-3, threshold=1e-4, squash=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.SinkhornConvergenceWarning)  # both converge
        ref_x = x.clone().requires_grad_(True)
        ref = sinkhorn_op(kind, ref_x, k, backend="torch", **kw)
        ct = torch.randn_like(ref)
        (ref * ct).sum().backward()
        tx = x.to(device).requires_grad_(True)
        out = sinkhorn_op(kind, tx, k, backend="triton", **kw)
        (out * ct.to(device)).sum().backward()
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), atol=2e-3, rtol=0)
    torch.testing.assert_close(tx.grad.cpu(), ref_x.grad, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("kind,k", [("sort", None), ("rank", None), ("topk", 2), ("mask", 2)])
def test_infinities_and_huge_values_match_torch(kind, k, device):
    """+-inf (statistics over the finite entries, z at 1 / 0, the sorted values' readout) and |x| ~ 1e30
    (the scale-safe squash) as the torch reference, gradients included."""
    inf = float("inf")
    x = torch.tensor([[0.3, inf, -1.2, -inf, 2.0], [1e30, -3e30, 2e30, 5e29, 0.0], [inf, 1.0, inf, -2.0, 0.5]])
    ref_x = x.clone().requires_grad_(True)
    ref = run(kind, ref_x, k, "torch")
    ct = torch.randn_like(ref)
    (torch.where(torch.isfinite(ref), ref, 0.0) * ct).sum().backward()
    tx = x.to(device).requires_grad_(True)
    out = run(kind, tx, k, "triton")
    (torch.where(torch.isfinite(out), out, 0.0) * ct.to(device)).sum().backward()
    scale = torch.tensor([1.0, 1e30 if kind == "sort" else 1.0, 1.0]).view((3,) + (1,) * (ref.dim() - 1))
    torch.testing.assert_close(out.detach().cpu() / scale, ref.detach() / scale, atol=2e-4, rtol=1e-4)
    gscale = torch.tensor([[1.0], [1e-30], [1.0]]) if kind != "sort" else torch.ones(3, 1)
    torch.testing.assert_close(tx.grad.cpu() / gscale, ref_x.grad / gscale, atol=2e-3, rtol=2e-3)
    assert bool((tx.grad.cpu()[torch.isinf(x)] == 0).all())


def test_unsquashed_infinities_match_torch(device):
    """squash=False: +-inf at max(1, largest finite) / min(0, smallest finite), as the torch reference."""
    inf = float("inf")
    x = torch.tensor([[0.2, inf, 0.7, -inf, 0.5], [1.5, 0.1, -inf, 0.4, 0.9]])
    ref = run("rank", x, None, "torch", squash=False)
    out = run("rank", x.to(device), None, "triton", squash=False)
    torch.testing.assert_close(out.cpu(), ref, atol=2e-4, rtol=1e-4)
    assert ref[0, 1] == ref[0].max() and ref[0, 3] == ref[0].min() and ref[1, 2] == ref[1].min()
