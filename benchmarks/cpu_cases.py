"""CPU benchmark cases shared by ``test_bench_cpu.py``, ``report.py`` and ``run.py``.

Each case builds its inputs from a fixed seed and returns a closure that does
one training step's worth of work: clear the input's gradient, forward,
backward.  fastsort and difftopk get identical inputs and identical upstream
gradients, so their timings (and the loss values they return) are comparable.

Run as a script, this module is the *probe* that ``report.py`` (and the memory
test of ``test_bench_cpu.py``) starts in a fresh subprocess per case::

    python benchmarks/cpu_cases.py '{"lib": "fastsort", "case": "full", "B": 8}'

It prints one JSON line: the warm median time, the cold (first full-size)
time, the peak memory of one fwd+bwd, the setup memory and a check value.

Peak memory (``peak_mb``): the first full-size step (after a tiny warm-up call
that triggers lazy imports and caches; it is not timed) runs under
``torch.profiler`` with ``profile_memory=True``, which records every CPU tensor
allocation and free of torch's allocator; the peak is the maximum of their
running sum, i.e. the largest increase of live tensor memory during the step,
the CPU counterpart of ``torch.cuda.max_memory_allocated`` (``tracemalloc``
does not see tensors, and torch's CPU allocator has no peak counter).  As a
cross-check, ``peak_rss_mb`` is the increase of the process's resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over the
same step; it also counts glibc's heap fragmentation and kept free memory, so it
is larger for allocation-heavy code.  Module state built before the step
(difftopk's dense network matrices: ~0.45 GB at n = 1024) is reported as
``setup_mb``, not in the peak.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time

# A 2-core machine shared with other processes: GNU OpenMP's default spin-wait
# makes every parallel torch op cost ~8 ms when the second core is busy (measured:
# torch.atan on 4k floats 8 ms vs 0.1 ms). PASSIVE removes that artefact for both
# libraries alike. Must be set before torch (libgomp) is loaded; the caller may override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

P_K = [0.5, 0.0, 0.0, 0.0, 0.5]
LOSS = dict(B=500, C=1000, m=16, inverse_temperature=1.0)
FULL = dict(n=1024, k=5, steepness=10.0)
FULL_B = 64  # the batch for the full-n case
# difftopk's full-n step at B=64 takes ~1-2 min and ~15 GB on 2 cores: the default
# equal-batch comparison runs both libraries at this smaller batch (cost is linear in B).
FULL_B_COMPARE = 8
# fastsort method -> difftopk's TopKCrossEntropyLoss method (its dense networks and the two
# softmax sorts; difftopk's sparse networks need torch_sparse)
DIFFTOPK_METHOD = {"bitonic": "bitonic__non_sparse", "odd_even": "odd_even", "neuralsort": "neuralsort",
                   "softsort": "softsort"}


def import_peer(name: str):
    """The module ``name`` (a peer library: difftopk, diffsort, torchsort) or ``None`` when it does not
    import; what it prints on import (difftopk's torch_sparse warning) is silenced."""
    import importlib

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def import_difftopk():
    """``difftopk`` or ``None``; its torch_sparse warning (printed on import) is silenced."""
    return import_peer("difftopk")


# --------------------------------------------------------------------------- cases
def loss_module(lib: str, method: str, C: int = LOSS["C"], m: int = LOSS["m"],
                inverse_temperature: float = LOSS["inverse_temperature"], device: str = "cpu", backend: str = "auto"):
    """The top-k cross-entropy module of ``lib`` (``fastsort`` or ``difftopk``) with top-m preselection
    (``m=None``: none); ``backend`` is fastsort's.  ``lib="cross_entropy"``: ``torch.nn.CrossEntropyLoss``
    on the same logits, the floor a top-k loss step is measured against."""
    if lib == "cross_entropy":
        return torch.nn.CrossEntropyLoss()
    if lib == "fastsort":
        import fastsort

        return fastsort.TopKCrossEntropyLoss(P_K, method, m=m, inverse_temperature=inverse_temperature,
                                             backend=backend)
    if lib == "difftopk":
        difftopk = import_difftopk()
        if difftopk is None:
            raise RuntimeError("difftopk is not installed")
        return difftopk.TopKCrossEntropyLoss(DIFFTOPK_METHOD[method], inverse_temperature, P_K, C, m=m,
                                             distribution="cauchy", device=device)
    raise ValueError(lib)


def loss_step(loss_fn, B: int = LOSS["B"], C: int = LOSS["C"], device: str = "cpu",
              dtype: torch.dtype = torch.float32, seed: int = 0, grad: bool = True):
    """zero_grad + fwd + bwd of ``loss_fn`` on seeded logits ``[B, C]``; ``step()`` returns the loss.
    ``grad=False``: the forward alone, under ``torch.no_grad()`` (inference)."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, C, generator=g)).to(device=device, dtype=dtype).requires_grad_(grad)
    labels = torch.randint(0, C, (B,), generator=g).to(device)

    def step(check=False):
        if not grad:
            with torch.no_grad():
                return loss_fn(logits, labels)
        logits.grad = None
        loss = loss_fn(logits, labels)
        loss.backward()
        return loss.detach()

    step.inputs = (logits, labels)
    return step


def topk_module(lib: str, n: int = FULL["n"], k: int = FULL["k"], steepness: float = FULL["steepness"],
                device: str = "cpu", backend: str = "auto"):
    """``x [B, n] -> P [B, k, n]`` (rank 1 first): fastsort's ``soft_topk`` or difftopk's dense
    ``DiffTopkNet('bitonic', sparse=False)`` (whose ``[B, n, k]`` result, column -1 = rank 1, is
    returned in the same layout; the flip copies only the small `[B, n, k]` result)."""
    if lib == "fastsort":
        import fastsort

        return lambda x: fastsort.soft_topk(x, k, "bitonic", backend=backend, steepness=steepness)
    if lib == "difftopk":
        difftopk = import_difftopk()
        if difftopk is None:
            raise RuntimeError("difftopk is not installed")
        net = difftopk.DiffTopkNet("bitonic", n, k, sparse=False, device=device, steepness=steepness,
                                   distribution="cauchy")
        return lambda x: net(x)[1].transpose(1, 2).flip(1)
    raise ValueError(lib)


def rows_step(fn, B: int, n: int, out_shape=None, device: str = "cpu", seed: int = 0, grad: bool = True):
    """zero_grad + fwd + bwd of ``y = fn(x)`` on seeded rows ``x [B, n]`` with a fixed seeded upstream
    gradient ``G`` of ``y``'s shape (``out_shape``; ``None``: found by one call of ``fn`` without
    gradients); ``step(check=True)`` returns ``sum(y * G)`` (a check value; not computed in timed
    calls).  ``grad=False``: the forward alone, under ``torch.no_grad()`` (inference)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, generator=g).to(device)
    if out_shape is None:
        with torch.no_grad():
            out_shape = tuple(fn(x).shape)
    G = torch.randn(*out_shape, generator=g).to(device)
    x.requires_grad_(grad)

    def step(check=False):
        if not grad:
            with torch.no_grad():
                y = fn(x)
            return (y * G).sum() if check else None
        x.grad = None
        y = fn(x)
        y.backward(G)
        return (y.detach() * G).sum() if check else None

    step.inputs = (x,)
    return step


def topk_step(topk_fn, B: int, n: int = FULL["n"], k: int = FULL["k"], device: str = "cpu", seed: int = 0):
    """zero_grad + fwd + bwd of the top-k rows of the full-n relaxed permutation, with a fixed
    upstream gradient ``G [B, k, n]``; ``step(check=True)`` returns ``sum(P * G)`` (a check value;
    not computed in timed calls)."""
    return rows_step(topk_fn, B, n, (B, k, n), device=device, seed=seed)


def make_module(spec: dict):
    if spec["case"] == "loss":
        return loss_module(spec["lib"], spec["method"])
    if spec["case"] == "full":
        return topk_module(spec["lib"])
    raise ValueError(spec["case"])


def make_step(spec: dict, module, B: int):
    """The step of a probe spec ``{"lib", "case": "loss"|"full", "method"?, "B"?}`` at batch ``B``."""
    if spec["case"] == "loss":
        return loss_step(module, B=B)
    return topk_step(module, B=B)


def default_batch(spec: dict) -> int:
    return spec.get("B") or (LOSS["B"] if spec["case"] == "loss" else FULL_B_COMPARE)


# --------------------------------------------------------------------------- probe (subprocess)
def _proc_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _profiler_peak_mb(prof) -> float:
    """Max of the running sum of the profiler's ``[memory]`` events (allocations +, frees -), in MiB."""
    try:
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    except Exception:  # noqa: BLE001 - private API: degrade to "unknown" rather than fail the probe
        return float("nan")
    events.sort()
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak / 2 ** 20


def profiled_peak_mb(fn) -> float:
    """Peak memory (MiB) that ``fn()`` allocates and holds at once, from torch's profiler recording
    its CPU allocation events alone (no op events: a step of 10^4 small ops costs a fraction of the
    full profile's overhead).

    Allocations and frees are matched by address: a free of a block allocated before ``fn`` started
    is ignored (the allocator's profiling reporter remembers sizes from earlier profiling sessions,
    and a running sum of ``nbytes`` would count such a free as a drop), so the result is the largest
    sum of blocks allocated during ``fn`` and alive at the same moment.  Clear the input's gradient
    before calling it, or the new gradient may reuse nothing and still be counted while the old one's
    free is not.  Falls back to the full ``torch.profiler.profile`` and :func:`_profiler_peak_mb`
    where torch's private profiler entry points differ."""
    try:
        from torch._C._profiler import ProfilerActivity, RecordScope, _ExperimentalConfig
        from torch.autograd.profiler import ProfilerConfig, ProfilerState

        acts = {ProfilerActivity.CPU}
        config = ProfilerConfig(ProfilerState.KINETO, False, True, False, False, False, _ExperimentalConfig())
        torch.autograd._prepare_profiler(config, acts)
        torch.autograd._enable_profiler(config, acts, {RecordScope.USER_SCOPE})
    except Exception:  # noqa: BLE001 - private API: use the public profiler instead
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return _profiler_peak_mb(prof)
    try:
        fn()
    finally:
        result = torch.autograd._disable_profiler()
    allocs, stack = [], list(result.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        f = node.extra_fields
        if hasattr(f, "alloc_size") and f.device.type == "cpu":
            allocs.append((node.start_time_ns, f.id if f.id is not None else 0, f.ptr, f.alloc_size))
    allocs.sort()
    live, cur, peak = {}, 0, 0
    for _, _, ptr, size in allocs:
        if size > 0:
            live[ptr] = live.get(ptr, 0) + size
            cur += size
            peak = max(peak, cur)
        elif ptr in live:
            cur -= live.pop(ptr)
    return peak / 2 ** 20


def probe(spec: dict) -> dict:
    """Setup, tiny warm-up, one cold full-size call (peak memory), then warm timed calls.

    ``spec`` keys: lib, case, method, B, threads, min_reps (default 5), max_reps (default 30),
    budget_s (default 2.0: keep repeating while under this many seconds of timed calls)."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    rss0 = _proc_mb("VmRSS")
    module = make_module(spec)  # difftopk builds its dense network matrices here
    setup_mb = _proc_mb("VmRSS") - rss0
    make_step(spec, module, 1)()  # tiny warm-up: lazy imports, caches, network tables
    step = make_step(spec, module, default_batch(spec))  # full-size inputs exist from here on
    can_reset = _reset_peak()
    base = _proc_mb("VmRSS")
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        check = float(step(check=True))
    cold = time.perf_counter() - t0
    peak_rss_mb = (_proc_mb("VmHWM") - base) if can_reset else float("nan")
    peak_mb = _profiler_peak_mb(prof)
    times = []
    min_reps, max_reps, budget = spec.get("min_reps", 5), spec.get("max_reps", 30), spec.get("budget_s", 2.0)
    while len(times) < max_reps and (len(times) < min_reps or sum(times) < budget):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return dict(spec=spec, median_s=times[len(times) // 2] if times else cold, min_s=times[0] if times else cold,
                reps=len(times), cold_s=cold, peak_mb=peak_mb, peak_rss_mb=peak_rss_mb, setup_mb=setup_mb, check=check,
                threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
                torch=torch.__version__)


def run_probe(spec: dict, timeout: float = 900.0) -> dict:
    """Run :func:`probe` for ``spec`` in a fresh Python process; returns its JSON (or ``{"error": ...}``)."""
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), json.dumps(spec)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(spec=spec, error=f"timed out after {timeout:.0f} s")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return dict(spec=spec, error=f"probe exited {r.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
