"""Where the time of one fused top-k loss step goes on a GPU (kernel time vs host overhead).

``python benchmarks/gpu_profile.py``: times fwd+bwd of the fused loss (B=4096, C=1000, m=16)
with CUDA events around 50 steps, then lists the CUDA kernels of 20 profiled steps.
"""
import sys

import torch

import fastsort


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to profile")
        return 0
    torch.manual_seed(0)
    B, C = 4096, 1000
    x = torch.randn(B, C, device="cuda", requires_grad=True)
    y = torch.randint(0, C, (B,), device="cuda")
    crit = fastsort.TopKCrossEntropyLoss([0.5, 0, 0, 0, 0.5], m=16, inverse_temperature=1.0)
    ce = torch.nn.CrossEntropyLoss()

    def step(f):
        x.grad = None
        f(x, y).backward()

    for name, f in (("fastsort fused", crit), ("torch CE", ce)):
        for _ in range(10):
            step(f)
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(50):
            step(f)
        e.record()
        torch.cuda.synchronize()
        print(f"{name}: {s.elapsed_time(e) / 50 * 1e3:.1f} us per fwd+bwd (back-to-back, host-bound if launches dominate)")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                step(f)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=10, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
