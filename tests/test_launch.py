"""Kernel launch plumbing (``fastsort.kernels.launch``): which device a launch runs on.

Triton launches on the *current* CUDA device.  The launchers pass tensors as
raw addresses, so nothing in Triton would notice tensors on another GPU: every
launcher is wrapped in ``on_tensor_device``.  The guard's logic is tested here
on any machine (with ``torch.cuda.current_device`` replaced); the end-to-end
check needs two GPUs and is skipped otherwise.
"""
import contextlib

import pytest
import torch

pytest.importorskip("triton")

import fastsort  # noqa: E402
from fastsort.kernels import launch  # noqa: E402
from fastsort.kernels import network as kn  # noqa: E402
from fastsort.kernels import sinkhorn as ks  # noqa: E402
from fastsort.kernels import topk_loss as ktl  # noqa: E402

LAUNCHERS = (kn.network_fwd, kn.network_bwd, ks.sinkhorn_fwd, ks.sinkhorn_bwd,
             ktl.topk_ce_fwd, ktl.topk_ce_bwd)


@pytest.mark.parametrize("current, wanted, switches", [(0, 1, True), (1, 1, False), (0, None, False)])
def test_device_guard_switches_only_when_needed(monkeypatch, current, wanted, switches):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    device = torch.device("cpu") if wanted is None else torch.device("cuda", wanted)
    guard = launch.device_guard(device)
    if switches:
        assert isinstance(guard, torch.cuda.device) and guard.idx == wanted
    else:
        assert isinstance(guard, contextlib.nullcontext)


def test_on_tensor_device_uses_the_first_tensor(monkeypatch):
    seen = []
    monkeypatch.setattr(launch, "device_guard", lambda d: seen.append(d) or contextlib.nullcontext())

    @launch.on_tensor_device
    def launcher(cfg, saved, y=None):
        return cfg

    meta = torch.empty(2, device="meta")
    assert launcher(3, (None, meta)) == 3  # found one level into a tuple
    assert seen == [meta.device]
    with pytest.raises(TypeError, match="without a tensor"):
        launcher(3, (None,), y=meta)


@pytest.mark.parametrize("fn", LAUNCHERS, ids=lambda f: f.__name__)
def test_every_launcher_is_guarded(fn):
    assert getattr(fn, "__wrapped__", None) is not None, f"{fn.__name__} lacks @on_tensor_device"


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_kernels_on_a_second_gpu_match_the_first():
    """Tensors on cuda:1 while cuda:0 is current: every kernel family, forward and backward."""
    torch.manual_seed(0)
    x0 = torch.randn(64, 50, device="cuda:0")
    y0 = torch.randint(0, 50, (64,), device="cuda:0")
    G0 = torch.randn(64, 5, 50, device="cuda:0")

    def run(dev):
        x, y, G = (t.to(dev) for t in (x0, y0, G0))
        out = []
        for fn in (lambda v: (fastsort.soft_topk(v, 5, "bitonic") * G).sum(),
                   lambda v: (fastsort.soft_topk(v, 5, "sinkhorn", epsilon=0.1) * G).sum(),
                   lambda v: fastsort.TopKCrossEntropyLoss([0.5, 0.5], m=8)(v, y)):
            v = x.clone().requires_grad_()
            loss = fn(v)
            loss.backward()
            out += [loss.detach().cpu(), v.grad.cpu()]
        return out

    with torch.cuda.device(0):
        ref = run("cuda:0")
        other = run("cuda:1")
    for a, b in zip(ref, other):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("tile, per_thread, programs, warps", [
    (1024, 8, None, 4),     # 8 elements per thread
    (1024, 8, 256, 4),      # enough programs: unchanged
    (1024, 8, 64, 16),      # B = 64 rows of n = 1024: 2 elements per thread
    (64, 8, 1, 1),          # never fewer than one warp
    (65536, 16, 1, 32),     # never more than 32 (16 would hold 128 per thread)
    (3000, 16, None, 4),    # rounded down to a power of two (5 -> 4)
    (4096, 16, None, 8),    # the scatter kernel's largest tile
])
def test_num_warps(monkeypatch, tile, per_thread, programs, warps):
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    assert launch.num_warps(tile, per_thread, programs) == warps


@pytest.mark.parametrize("tile, programs, warps", [
    (8192, 4096, 32),   # n = 8192: 16 warps would hold 16 elements per thread (spills): 32
    (8192, 1, 32),
    (4096, 1, 16),
    (2048, 64, 16),     # small grid, 2 per thread would be 32 warps: capped at 16
    (1024, 1024, 4),
])
def test_network_kernel_warps(monkeypatch, tile, programs, warps):
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    assert kn._warps(tile, programs) == warps
