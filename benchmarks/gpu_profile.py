"""Where the time of the GPU goal cases goes: kernel time vs host (launch) overhead.

    python benchmarks/gpu_profile.py            # on a CUDA machine (gpu_check.sh runs it -> profile.log)
    python benchmarks/gpu_profile.py --smoke    # self-test on CPU, tiny sizes (numbers mean nothing)

For each case of the benchmark goals (every step = clear the gradient + forward + backward):

- ``fused loss``: ``TopKCrossEntropyLoss`` B=4096, C=1000, m=16, bitonic, fp32, next to
  ``torch.nn.CrossEntropyLoss`` on the same logits;
- ``full-n topk``: ``soft_topk`` bitonic n=1024, k=5, B=64;
- ``sinkhorn topk``: ``soft_topk(k=5, method="sinkhorn", epsilon=0.1)`` on [4096, 1000];

it prints three numbers and a kernel table:

- ``host us/step``: Python + launch time of one step, measured on the host without
  synchronising (the GPU runs behind): when it exceeds the GPU time, the step is host-bound;
- ``gpu us/step``: CUDA-event time of 50 back-to-back steps / 50;
- ``kernels us/step``: the sum of the device time of the step's kernels (``torch.profiler``),
  i.e. the time the step would take with zero launch overhead;
- the ``torch.profiler`` table of the step's kernels and host ops, sorted by device time.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import fastsort

DEVICE = "cuda"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def cases(small: bool):
    B, C, m = (32, 100, 16) if small else (4096, 1000, 16)
    Bf, nf = (4, 64) if small else (64, 1024)
    backend = "triton" if DEVICE == "cpu" else "auto"
    g = torch.Generator(device=DEVICE).manual_seed(0)
    logits = (3 * torch.randn(B, C, device=DEVICE, generator=g)).requires_grad_()
    labels = torch.randint(0, C, (B,), device=DEVICE, generator=g)
    crit = fastsort.TopKCrossEntropyLoss([0.5, 0, 0, 0, 0.5], m=m, inverse_temperature=1.0, backend=backend)
    ce = torch.nn.CrossEntropyLoss()
    xf = torch.randn(Bf, nf, device=DEVICE, generator=g).requires_grad_()
    Gf = torch.randn(Bf, 5, nf, device=DEVICE, generator=g)
    xs = torch.randn(B, C, device=DEVICE, generator=g).requires_grad_()
    Gs = torch.randn(B, 5, C, device=DEVICE, generator=g)

    def loss_step(fn):
        def step():
            logits.grad = None
            fn(logits, labels).backward()
        return step

    def full_step():
        xf.grad = None
        fastsort.soft_topk(xf, 5, "bitonic", steepness=10.0, backend=backend).backward(Gf)

    def sinkhorn_step():
        xs.grad = None
        fastsort.soft_topk(xs, 5, "sinkhorn", epsilon=0.1, backend=backend).backward(Gs)

    return [(f"fused loss B={B} C={C} m={m} fp32", loss_step(crit)),
            (f"torch CE B={B} C={C} fp32", loss_step(ce)),
            (f"full-n topk bitonic n={nf} k=5 B={Bf}", full_step),
            (f"sinkhorn topk k=5 [{B}, {C}] eps=0.1", sinkhorn_step)]


def profile_case(name, step, steps, rows):
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):  # compilation, caches, allocator
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    host_us = (time.perf_counter() - t0) / steps * 1e6  # no sync inside: launch-side time
    sync()
    gpu_us = float("nan")
    if DEVICE == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(steps):
            step()
        e.record()
        sync()
        gpu_us = s.elapsed_time(e) / steps * 1e3
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.key_averages()
    kern_us = sum(ev.self_device_time_total for ev in events  # the kernels' own rows, not their host ops
                  if ev.device_type == torch.autograd.DeviceType.CUDA) / steps
    print(f"\n## {name}\n")
    print(f"host us/step {host_us:.1f} | gpu us/step {gpu_us:.1f} | kernels us/step {kern_us:.1f}  "
          f"({steps} steps)")
    sort_by = "self_device_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort_by, row_limit=rows, max_name_column_width=70))


def main(argv=None) -> int:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU self-test (interpreter, tiny sizes)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rows", type=int, default=12, help="rows of each profiler table")
    args = ap.parse_args(argv)
    if args.smoke:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("gpu_profile.py: no CUDA device: nothing to profile (--smoke runs it on CPU)")
        return 0
    steps = 2 if args.smoke else args.steps
    for name, step in cases(small=args.smoke):
        profile_case(name, step, steps, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
