"""The benchmark report: every op x method x backend x size of fastsort against every installed peer.

    python benchmarks/run.py                   # CPU, full sweep (n = 16, 100, 1000), ~10 min on 2 cores
    python benchmarks/run.py --sizes 16,100,1000,10000 --max-case-s 2   # n = 10000 too: an hour or more
    python benchmarks/run.py --quick           # CI: n = 16, 64, tiny batches, few repeats (< 60 s on 2 cores)
    python benchmarks/run.py --device cuda     # on a GPU (Triton backends; timings with triton.testing.do_bench)
    python benchmarks/run.py --ops sort,rank --only fastsort,torchsort --out /tmp/bench

Prints one markdown table (machine header first) on stdout, progress on stderr, and
writes into ``--out`` (default ``benchmarks/results/``): ``report.md`` (the table),
``report.json`` (every raw number and the header), one log-log plot per op
(``<op>.png``: time per row vs n, one line per implementation) and the peer worker's
stderr (``worker-peers.log``: tracebacks of failed peer cases).

What runs.  The ops are the registry's (``fastsort.method.OPS``: sort, rank, topk,
permutation, topk_mask, loss) plus ``smooth_topk_loss`` (``SmoothTopKLoss`` /
``SmoothHardTopKLoss``).  For each op: every method of ``fastsort.METHODS`` that lists it,
on ``torch`` and on each backend in ``method.kernels`` that runs here (``numba`` on CPU
when numba imports, ``triton`` on CUDA); the peers (difftopk ``NeuralSort``, ``SoftSort``,
``DiffTopkNet``, ``TopKCrossEntropyLoss``, ``SmoothTopKLoss``, ``SmoothHardTopKLoss``;
diffsort ``DiffSortNet``; torchsort ``soft_sort`` / ``soft_rank``), each skipped with a
note when not installed; the floors (``torch.sort``, ``torch.topk``,
``torch.nn.CrossEntropyLoss``: the hard op, not a relaxation).  Each in both modes:
``fwd+bwd`` (clear the input's gradient, forward, backward with a fixed seeded upstream
gradient: one training step) and ``fwd`` (the forward under ``torch.no_grad()``).

Cases.  Inputs ``x [B, n]`` (loss: logits ``[B, C = n]``, labels) from a fixed seed,
identical for every implementation of a case (``cpu_cases.rows_step`` / ``loss_step``).
``B`` depends on the op and ``n`` only (``batch()``: B * n fixed, B * n^2 for the
permutation, B fixed for the losses), never on the implementation.  Each peer's check
value (``sum(y * G)`` or the loss) is compared with the fastsort method computing the
same function, and each kernel backend's with the torch backend's: the table's note says
"same result as ..." or "DIFFERS".
k = 5 for topk / topk_mask; the losses use ``cpu_cases``' P_K = [.5, 0, 0, 0, .5],
inverse_temperature 1 and top-m preselection m = 16 when C > 16 (the report.py case),
the smooth losses k = 5, tau = 1.  Every method runs at its registry defaults, every
peer at its own defaults (the same values: steepness 10, tau 1, l2 / strength 1).

Timing.  After a cold call (timed once with ``perf_counter``: ``first_call_ms`` in the
JSON, which includes numba / Triton compilation) and up to ``warmup`` warm calls:
CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (timeit's repeated calls in
blocks, at torch's current thread count); steps slower than a third of the minimum run
time as ``Timer.timeit(1)`` x 3 (x 1 beyond 1 s: peers' dense relaxations at their
largest sizes; the note says "1 timed call").  CUDA: ``triton.testing.do_bench`` (CUDA
events, L2 flushed), steps > 0.2 s the torch Timer (which synchronises).  The table
shows medians; the JSON also has the spread (IQR / min, or do_bench's 20-80 %).

Peak memory.  CPU: one step with torch's profiler recording its memory events
(``cpu_cases.profiled_peak_mb``: allocation and free events of torch's CPU allocator,
op events off): the largest increase of live tensor memory during the step, the CPU
counterpart of ``torch.cuda.max_memory_allocated`` (``tracemalloc`` does not see tensors,
and torch's CPU allocator keeps no peak).  It does not see memory a kernel allocates
itself (numpy/numba scratch); the JSON adds ``peak_rss_mb``, the rise of the process's
resident-set high-water mark over the same step (reset through ``/proc/self/clear_refs``;
in a process that ran earlier cases it only shows growth beyond the heap already held).
CUDA: the increase of ``torch.cuda.max_memory_allocated`` during one step.

Isolation.  fastsort and the torch floors run in this process, the peers in one fresh
worker process (``run.py --worker``), so no peer's imports, caches or allocator state
touch fastsort's timings; a failing case is an error row, the rest runs.  ``OMP_WAIT_POLICY=PASSIVE``
is set unless set (``cpu_cases.py``: spin-waiting OpenMP threads cost ~8 ms per parallel
op on a shared 2-core machine); ``--threads`` sets torch's and numba's thread count.

Caps.  difftopk's and diffsort's dense networks multiply an n x n matrix per layer
(~10 s and ~2 GB per step at n = 1024, B = 8): they run at n <= 256 only.
``permutation`` (n^2 outputs per row) runs to n = 1000.  Any implementation whose
next size is estimated (from its own previous size: cost ~ B * n^2; dense networks and
difftopk's NeuralSort, whose n x n @ n x n matmul is n^3 per row: ~ B * n^3; losses ~ C)
above ``--max-case-s`` seconds per step (full: 1, quick: 0.1) or ``--mem-limit-mb`` MB
is capped from there on; the table says so.

Exit status 1 when a fastsort or floor case failed or a worker died (peers' failures
are reported, not fatal).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import cpu_cases as cc  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)

SCHEMA = "fastsort-benchmark-report/1"
RESULT_PREFIX = "@@result "
MODES = ("fwd+bwd", "fwd")
K = cc.FULL["k"]  # k of topk / topk_mask and of the smooth losses
EXTRA_OPS = ("smooth_topk_loss",)  # public losses outside the registry
LOSS_OPS = ("loss", "smooth_topk_loss")  # logits [B, C] + labels -> scalar
OP_MAX_N = {"permutation": 1000}  # n^2 outputs per row
DENSE_MAX_N = 256
DENSE_NOTE = "dense n x n matrix per layer (~10 s, ~2 GB per step at n = 1024, B = 8): n <= 256 only"

#: sizes, batch targets and repeat budgets; the batch of a case is ``batch()``
PROFILES = {
    # (n = 10000 by --sizes: the size estimate from n = 1000 undershoots the torch references whose
    # graph or iteration count grows with n, e.g. odd_even's n layers, by minutes per case)
    "full": dict(sizes=(16, 100, 1000), elems=2 ** 13, perm_elems=2 ** 18, loss_rows=512,
                 min_run_time=0.25, warmup=3, slow_repeats=3, single_run_s=1.0, max_case_s=1.0,
                 worker_timeout_s=5400),
    "quick": dict(sizes=(16, 64), elems=2 ** 9, perm_elems=2 ** 13, loss_rows=32,
                  min_run_time=0.002, warmup=0, slow_repeats=2, single_run_s=0.05, max_case_s=0.1,
                  worker_timeout_s=150),
}
CUDA_ELEMS_FACTOR = 16  # kernels are ~2 orders of magnitude faster: bigger batches keep a case above launch cost


def batch(op: str, n: int, prof: dict, device: str = "cpu") -> int:
    """Rows per case: ``elems / n`` (``perm_elems / n^2`` for the n x n permutation; the losses a fixed
    ``loss_rows``: with top-m preselection their cost is the m = 16 sort plus a linear pass over the C
    classes), 1 .. 4096; the same for every implementation of the op at this n."""
    f = CUDA_ELEMS_FACTOR if device == "cuda" else 1
    if op == "permutation":
        b = prof["perm_elems"] * f / n ** 2
    elif op in LOSS_OPS:
        b = prof["loss_rows"] * f
    else:
        b = prof["elems"] * f / n
    return int(min(4096, max(1, round(b))))


def loss_m(n: int):
    """Top-m preselection of the loss cases: m = 16 when there are more classes, else none."""
    return cc.LOSS["m"] if n > cc.LOSS["m"] else None


# --------------------------------------------------------------------------- implementations
#: peer key -> library, label, ops, size cap (None: none), growth exponent of the cost estimate, and the
#: fastsort method computing the same function (its check value must agree: the table says whether it does)
PEERS = {
    "torchsort": dict(lib="torchsort", label="torchsort soft_sort / soft_rank (l2)", ops=("sort", "rank"),
                      same_as="permutahedron"),
    "diffsort:bitonic": dict(lib="diffsort", label="diffsort DiffSortNet(bitonic)",
                             ops=("sort", "rank", "topk", "permutation", "topk_mask"), max_n=DENSE_MAX_N, growth=3,
                             same_as="bitonic"),
    "diffsort:odd_even": dict(lib="diffsort", label="diffsort DiffSortNet(odd_even)",
                              ops=("sort", "rank", "topk", "permutation", "topk_mask"), max_n=DENSE_MAX_N, growth=3,
                              same_as="odd_even"),
    "difftopk:DiffTopkNet:bitonic": dict(lib="difftopk", label="difftopk DiffTopkNet(bitonic, dense)",
                                         ops=("topk", "topk_mask"), max_n=DENSE_MAX_N, growth=3, same_as="bitonic"),
    "difftopk:DiffTopkNet:odd_even": dict(lib="difftopk", label="difftopk DiffTopkNet(odd_even, dense)",
                                          ops=("topk", "topk_mask"), max_n=DENSE_MAX_N, growth=3, same_as="odd_even"),
    "difftopk:NeuralSort": dict(lib="difftopk", label="difftopk NeuralSort",  # an n x n @ n x n matmul per row
                                ops=("sort", "rank", "topk", "permutation", "topk_mask"), growth=3,
                                same_as="neuralsort"),
    "difftopk:SoftSort": dict(lib="difftopk", label="difftopk SoftSort",
                              ops=("sort", "rank", "topk", "permutation", "topk_mask"), same_as="softsort"),
    **{f"difftopk:TopKCrossEntropyLoss:{m}": dict(lib="difftopk", label=f"difftopk TopKCrossEntropyLoss({m})",
                                                  ops=("loss",), method=method, same_as=method)
       for method, m in cc.DIFFTOPK_METHOD.items()},
    "difftopk:SmoothTopKLoss": dict(lib="difftopk", label="difftopk SmoothTopKLoss", ops=("smooth_topk_loss",),
                                    same_as="SmoothTopKLoss"),
    "difftopk:SmoothHardTopKLoss": dict(lib="difftopk", label="difftopk SmoothHardTopKLoss",
                                        ops=("smooth_topk_loss",), same_as="SmoothHardTopKLoss"),
}
CHECK_RTOL = 1e-3  # check values (sum(y * G) or the loss) of two implementations of one function agree
FLOORS = {
    "torch.sort": dict(label="torch.sort (floor)", ops=("sort", "rank", "permutation")),
    "torch.topk": dict(label="torch.topk (floor)", ops=("topk", "topk_mask")),
    "torch.nn.CrossEntropyLoss": dict(label="torch.nn.CrossEntropyLoss (floor)", ops=LOSS_OPS),
}
#: warning categories recorded in the JSON but not shown in the table (they say nothing about the result)
QUIET_WARNINGS = ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")
FASTSORT_LOSSES = ("SmoothTopKLoss", "SmoothHardTopKLoss")  # the smooth_topk_loss op's fastsort rows
LIB_ORDER = ("difftopk", "diffsort", "torchsort")  # the peers, in the order they run


def dist_version(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def have_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def fastsort_backends(method, device: str):
    """``torch`` plus the method's kernels that can run on ``device`` here."""
    out = ["torch"]
    for be in getattr(method, "kernels", ()):
        if be == "numba" and device == "cpu" and have_module("numba"):
            out.append(be)
        elif be == "triton" and device == "cuda" and have_module("triton"):
            out.append(be)
    return out


def plan(device: str, ops, only):
    """The implementations to run, per op: fastsort (registry order, backends), peers, floors;
    plus rows for what is skipped and why (``dict(impl..., status="skipped", reason=...)``)."""
    import fastsort
    from fastsort.method import OPS

    all_ops = tuple(OPS) + EXTRA_OPS
    ops = [o for o in all_ops if not ops or o in ops]
    impls, skipped = [], []

    def keep(impl):
        return not only or any(s in impl["id"] or s in impl["label"] for s in only)

    for op in ops:
        rows = []
        if op in OPS:
            for name, method in fastsort.METHODS.items():
                if op in method.ops:
                    for be in fastsort_backends(method, device):
                        rows.append(dict(id=f"fastsort:{name}:{be}", lib="fastsort", kind="fastsort", method=name,
                                         backend=be, label=f"fastsort {name} [{be}]"))
        else:
            for name in FASTSORT_LOSSES:
                rows.append(dict(id=f"fastsort:{name}:torch", lib="fastsort", kind="fastsort", method=name,
                                 backend="torch", label=f"fastsort {name} [torch]"))
        for key, p in PEERS.items():
            if op in p["ops"]:
                rows.append(dict(id=key, lib=p["lib"], kind="peer", label=p["label"], peer=key,
                                 method=p.get("method"), max_n=p.get("max_n"), growth=p.get("growth", 2),
                                 same_as=p.get("same_as")))
        for key, p in FLOORS.items():
            if op in p["ops"]:
                rows.append(dict(id=key, lib="torch", kind="floor", label=p["label"], peer=key))
        for r in rows:
            r["op"] = op
            if op in LOSS_OPS and r.get("growth", 2) == 2:
                r["growth"] = 1  # fixed B; preselection: linear in C
            r.setdefault("growth", 2)
            if not keep(r):
                continue
            if r["kind"] == "peer" and not have_module(r["lib"]):
                skipped.append(dict(r, status="skipped", reason=f"{r['lib']} not installed"))
                continue
            impls.append(r)
    return ops, impls, skipped


# --------------------------------------------------------------------------- building a case (worker side)
def _perm_to(op: str, P, x):
    """An op's output from a dense relaxed permutation ``P [B, n, n]`` in fastsort's layout
    (row j = ascending position j, columns = inputs), the way fastsort derives them from P."""
    import torch

    n = P.shape[-1]
    if op == "sort":
        return (P @ x.unsqueeze(-1)).squeeze(-1)
    if op == "rank":
        return (torch.arange(1, n + 1, dtype=P.dtype, device=P.device).unsqueeze(-1) * P).sum(-2)
    if op == "topk":
        return P[:, n - K:].flip(-2)  # [B, k, n], rank 1 (the largest) first
    if op == "topk_mask":
        return P[:, n - K:].sum(-2)
    if op == "permutation":
        return P
    raise ValueError(op)


def build_fn(impl: dict, op: str, n: int, device: str):
    """The callable of one implementation: ``x [B, n] -> y`` (rows ops) or ``(logits, labels) -> loss``."""
    import torch

    kind, key = impl["kind"], impl.get("peer")
    if kind == "fastsort":
        import fastsort

        method, be = impl["method"], impl["backend"]
        if op == "loss":
            return cc.loss_module("fastsort", method, C=n, m=loss_m(n), device=device, backend=be)
        if op == "smooth_topk_loss":
            return getattr(fastsort, method)(K, tau=1.0)
        fn = {"sort": fastsort.soft_sort, "rank": fastsort.soft_rank, "permutation": fastsort.soft_permutation}.get(op)
        if fn is not None:
            return lambda x: fn(x, method, backend=be)
        fn = {"topk": fastsort.soft_topk, "topk_mask": fastsort.soft_topk_mask}[op]
        return lambda x: fn(x, K, method, backend=be)
    if kind == "floor":
        if key == "torch.sort":
            return lambda x: torch.sort(x, dim=-1).values
        if key == "torch.topk":
            return lambda x: torch.topk(x, K, dim=-1).values
        return torch.nn.CrossEntropyLoss()
    lib = cc.import_peer(impl["lib"])
    if lib is None:
        raise ImportError(f"{impl['lib']} does not import")
    if key == "torchsort":
        return lib.soft_sort if op == "sort" else lib.soft_rank
    if key.startswith("diffsort:"):
        net = lib.DiffSortNet(key.split(":")[1], n, device=device, steepness=10.0, distribution="cauchy")
        if op == "sort":
            return lambda x: net(x)[0]
        return lambda x: _perm_to(op, net(x)[1].transpose(-1, -2), x)  # [B, input, position] -> fastsort's
    if key.startswith("difftopk:DiffTopkNet:"):
        net = lib.DiffTopkNet(key.split(":")[2], n, K, sparse=False, device=device, steepness=10.0,
                              distribution="cauchy")
        # [B, n, k], column -1 = rank 1 -> [B, k, n], rank 1 first (as cpu_cases.topk_module)
        if op == "topk":
            return lambda x: net(x)[1].transpose(1, 2).flip(1)
        return lambda x: net(x)[1].sum(-1)
    if key == "difftopk:NeuralSort":
        ns = lib.NeuralSort(tau=1.0)
        return lambda x: _perm_to(op, ns(x).transpose(1, 2), x)  # [B, input, ascending position] -> fastsort's
    if key == "difftopk:SoftSort":
        ss = lib.SoftSort(tau=1.0)
        return lambda x: _perm_to(op, ss(x).flip(1), x)  # rows descending -> ascending
    if key.startswith("difftopk:TopKCrossEntropyLoss:"):
        return cc.loss_module("difftopk", impl["method"], C=n, m=loss_m(n), device=device)
    if key in ("difftopk:SmoothTopKLoss", "difftopk:SmoothHardTopKLoss"):
        return getattr(lib, key.split(":")[1])(n, K, tau=1, device=device)
    raise ValueError(f"unknown implementation {impl['id']!r}")


def build_step(impl: dict, op: str, n: int, B: int, mode: str, device: str):
    fn = build_fn(impl, op, n, device)
    grad = mode == "fwd+bwd"
    if op in LOSS_OPS:
        return cc.loss_step(fn, B=B, C=n, device=device, grad=grad)
    return cc.rows_step(fn, B, n, None, device=device, grad=grad)


# --------------------------------------------------------------------------- measuring (worker side)
def _sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_step(step, device: str, prof: dict, last_s: float) -> dict:
    """Median (and spread) of warm calls: ``triton.testing.do_bench`` on CUDA, else torch's Timer
    (``torch.utils.benchmark.Timer``, which synchronises CUDA around its measurements).

    ``last_s``: how long the last untimed call took.  A fast step runs under ``blocked_autorange``
    (blocks of calls, >= ``min_run_time``) or ``do_bench``; a slower one (>= min_run_time / 3; on CUDA
    >= 0.2 s) as ``slow_repeats`` single-call ``Timer.timeit(1)`` measurements, merged (``blocked_autorange``
    would spend one extra call estimating its block size, ``do_bench`` five); one slower than
    ``single_run_s`` (peers' dense relaxations at their largest sizes) as one ``timeit(1)`` (``runs`` = 1;
    the table says so)."""
    import torch

    if device == "cuda" and have_module("triton") and last_s < 0.2:
        import triton.testing

        rep = max(5, int(prof["min_run_time"] * 1e3))
        med, lo, hi = triton.testing.do_bench(step, warmup=max(1, rep // 4), rep=rep, quantiles=[0.5, 0.2, 0.8])
        return dict(median_ms=float(med), q20_ms=float(lo), q80_ms=float(hi), harness="triton.testing.do_bench")
    from torch.utils.benchmark import Measurement, Timer

    timer = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    if last_s >= (0.2 if device == "cuda" else prof["min_run_time"] / 3):
        repeats = 1 if last_s >= prof["single_run_s"] else prof["slow_repeats"]
        m = Measurement.merge([timer.timeit(1) for _ in range(repeats)])[0]
        harness = f"torch.utils.benchmark.Timer.timeit(1) x {repeats}"
    else:
        m = timer.blocked_autorange(min_run_time=prof["min_run_time"])
        harness = "torch.utils.benchmark.Timer.blocked_autorange"
    times = sorted(m.times)
    return dict(median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3, min_ms=times[0] * 1e3, runs=len(times),
                number_per_run=m.number_per_run, harness=harness)


def peak_step(step, device: str) -> dict:
    """Peak memory of one step (see the module docstring), the input's gradient cleared first (as
    ``gpu_bench.peak_mb``): the step's new gradient counts, the old one's free does not offset it."""
    import torch

    for t in getattr(step, "inputs", ()):
        t.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return dict(peak_mb=(torch.cuda.max_memory_allocated() - base) / 2 ** 20)
    can_reset = cc._reset_peak()
    base = cc._proc_mb("VmRSS")
    out = dict(peak_mb=cc.profiled_peak_mb(step))
    if can_reset:
        out["peak_rss_mb"] = max(0.0, cc._proc_mb("VmHWM") - base)
    return out


def run_case(impl: dict, n: int, B: int, mode: str, cfg: dict) -> dict:
    prof, device = cfg["prof"], cfg["device"]
    res = dict(impl, n=n, B=B, mode=mode)
    t_case = time.perf_counter()
    try:
        step = build_step(impl, impl["op"], n, B, mode, device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            check = step(check=True)
            _sync(device)
            last_s = time.perf_counter() - t0  # the cold call: compilation, caches, first-touch of memory
            res["first_call_ms"] = last_s * 1e3
            res["check"] = float(check)
            warm_s = 0.0  # warm-up: `warmup` calls, or fewer once they took min_run_time
            for _ in range(prof["warmup"]):
                if warm_s >= prof["min_run_time"]:
                    break
                t0 = time.perf_counter()
                step()
                _sync(device)
                last_s = time.perf_counter() - t0
                warm_s += last_s
        res["warnings"] = sorted({w.category.__name__ for w in caught})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res.update(time_step(step, device, prof, last_s))
            res.update(peak_step(step, device))
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one failing case is an error row, the rest runs
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        res.update(status="error", reason=f"{type(e).__name__}: {msg}")
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    finally:
        step = None
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()
        res["case_wall_s"] = time.perf_counter() - t_case  # everything: build, first call, timing, memory
    return res


def capped_by_estimate(prev: dict, n: int, B: int, impl: dict, cfg: dict):
    """Why the case at ``n`` is not run, from the same implementation's result at its previous size, or None."""
    if prev is None:
        return None
    if prev.get("status") == "capped":
        return prev["reason"]
    if prev.get("status") != "ok":
        return None
    g = impl.get("growth", 2)
    f = (B / prev["B"]) * (n / prev["n"]) ** g
    est_s, est_mb = prev["median_ms"] * 1e-3 * f, prev["peak_mb"] * f
    if est_s > cfg["max_case_s"]:
        return f"capped: est. {est_s:.3g} s per step > {cfg['max_case_s']:g} s (from n={prev['n']})"
    if est_mb > cfg["mem_limit_mb"]:
        return f"capped: est. {est_mb:.0f} MB > {cfg['mem_limit_mb']:g} MB (from n={prev['n']})"
    return None


def run_cases(cfg: dict):
    """Yield the result of every case of ``cfg["impls"]``: sizes ascending, fwd+bwd then fwd at each."""
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    for impl in cfg["impls"]:
        prev = {}
        for n in impl["sizes"]:
            B = batch(impl["op"], n, cfg["prof"], cfg["device"])
            for mode in MODES:
                reason = capped_by_estimate(prev.get(mode), n, B, impl, cfg)
                if reason:
                    res = dict(impl, n=n, B=B, mode=mode, status="capped", reason=reason)
                else:
                    res = run_case(impl, n, B, mode, cfg)
                prev[mode] = res
                yield res


def worker(cfg: dict) -> int:
    """``run.py --worker``: the cases of the JSON config on stdin, one result line each on stdout."""
    for lib in dict.fromkeys(i["lib"] for i in cfg["impls"]):
        cc.import_peer(lib)  # imported before the first case (its build time is not an import)
    for res in run_cases(cfg):
        print(RESULT_PREFIX + json.dumps(res), flush=True)
    return 0


# --------------------------------------------------------------------------- driver
def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def progress(r: dict) -> dict:
    if r["status"] == "ok":
        what = f"{r['median_ms']:.3g} ms, {r['peak_mb']:.3g} MB"
    else:
        what = f"{r['status'].upper()} {r.get('reason', '')}"
    log(f"[run] {r['op']:<16} {r['label']:<44} n={r['n']:<6} B={r['B']:<5} {r['mode']:<8} {what}")
    return r


def run_worker(lib: str, impls, cfg: dict, out_dir: str):
    """Run the cases of ``impls`` in a fresh process; yields results (error results for what it never reached)."""
    wcfg = dict(cfg, impls=impls)
    env = dict(os.environ)
    log_path = os.path.join(out_dir, f"worker-{lib}.log")
    done = set()
    with open(log_path, "w") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        killed = []

        def kill():
            killed.append(True)
            proc.kill()

        timer = threading.Timer(cfg["prof"]["worker_timeout_s"], kill)
        timer.start()
        try:
            proc.stdin.write(json.dumps(wcfg))
            proc.stdin.close()
            for line in proc.stdout:
                if not line.startswith(RESULT_PREFIX):
                    continue
                r = json.loads(line[len(RESULT_PREFIX):])
                done.add((r["id"], r["op"], r["n"], r["mode"]))
                yield progress(r)
            rc = proc.wait()
        finally:
            timer.cancel()
    if rc != 0:
        why = (f"worker killed after {cfg['prof']['worker_timeout_s']} s" if killed
               else f"worker exited {rc}") + f" (see {log_path})"
        for impl in impls:
            for n in impl["sizes"]:
                for mode in MODES:
                    if (impl["id"], impl["op"], n, mode) not in done:
                        yield dict(impl, n=n, B=batch(impl["op"], n, cfg["prof"], cfg["device"]), mode=mode,
                                   status="error", reason=why)


def git_state():
    def git(*args):
        try:
            r = subprocess.run(["git", "--no-optional-locks", "-C", ROOT, *args], capture_output=True, text=True,
                               timeout=20)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return dict(commit=commit, dirty=None if status is None else bool(status))


def machine_header(argv, device: str, cfg: dict) -> dict:
    import torch

    import fastsort

    gpu = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = f"{p.name} ({p.total_memory / 2 ** 30:.0f} GiB, sm_{p.major}{p.minor})"
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    from fastsort.demo.train import cpu_name  # one CPU-name probe, shared with the demo's machine header

    return dict(
        cpu=cpu_name(), logical_cores=os.cpu_count(), usable_cores=affinity, load_avg_1min=load, gpu=gpu,
        device=device, python=platform.python_version(), platform=platform.platform(),
        torch=torch.__version__, torch_threads=cfg.get("threads") or torch.get_num_threads(),
        triton=dist_version("triton"), numba=dist_version("numba"),
        fastsort=fastsort.__version__, peers={lib: dist_version(lib) for lib in ("difftopk", "diffsort", "torchsort")},
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""), **git_state(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=" ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), sys.argv[0], *argv]),
    )


# --------------------------------------------------------------------------- the table
def fmt_ms(v):
    if v is None:
        return ""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt_mb(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}" if v >= 1 else f"{v:.2g}"


def fmt_x(v):
    if v is None:
        return ""
    return f"{v:.0f}x" if v >= 100 else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def analyse(results):
    """Best peer and floor per (op, n, mode), each ok result's ratios, and whether a peer (a fastsort kernel
    backend) computes what the fastsort method (its torch backend) does (added in place)."""
    best, floor, ref = {}, {}, {}
    for r in results:
        if r["status"] != "ok":
            continue
        key = (r["op"], r["n"], r["mode"])
        if r["kind"] == "peer" and (key not in best or r["median_ms"] < best[key]["median_ms"]):
            best[key] = r
        if r["kind"] == "floor":
            floor[key] = r
        if r["kind"] == "fastsort" and r["backend"] == "torch":
            ref[key + (r["method"],)] = r
    for r in results:
        same = r.get("same_as") if r["kind"] == "peer" else r.get("method") if r.get("backend") != "torch" else None
        other = ref.get((r["op"], r["n"], r["mode"], same)) if same and r["status"] == "ok" else None
        if other is not None and other is not r:
            a, b = r["check"], other["check"]
            r["reference"] = other["id"]
            r["agrees"] = abs(a - b) <= CHECK_RTOL * max(1.0, abs(b))
    for r in results:
        if r["status"] != "ok":
            continue
        key = (r["op"], r["n"], r["mode"])
        b, f = best.get(key), floor.get(key)
        r["best_peer"] = b["id"] if b else None
        r["best_peer_over_this"] = b["median_ms"] / r["median_ms"] if b else None
        r["this_over_floor"] = r["median_ms"] / f["median_ms"] if f else None
    return best


def table(results, skipped, ops, header, cfg) -> str:
    best = analyse(results)
    order = {}
    for r in results + skipped:
        order.setdefault(r["id"] + "|" + r["op"], len(order))
    kind_rank = {"fastsort": 0, "peer": 1, "floor": 2}
    by = {}
    for r in results:
        by.setdefault((r["op"], r["n"], r["id"]), {})[r["mode"]] = r
    lines = []
    h = header
    lines.append("# fastsort benchmark report\n")
    dirty = {True: " (dirty: uncommitted changes)", False: " (clean)", None: ""}[h["dirty"]]
    peers = ", ".join(f"{k} {v}" if v else f"{k} NOT installed" for k, v in h["peers"].items())
    lines += [
        f"- **machine**: {h['cpu']}, {h['logical_cores']} logical cores ({h['usable_cores']} usable, load "
        f"{h['load_avg_1min'] if h['load_avg_1min'] is None else round(h['load_avg_1min'], 1)}); "
        f"GPU: {h['gpu'] or 'none'}; device measured: **{h['device']}**",
        f"- **software**: python {h['python']}, torch {h['torch']} ({h['torch_threads']} threads, "
        f"OMP_WAIT_POLICY={h['omp_wait_policy']}), triton {h['triton'] or 'not installed'}, "
        f"numba {h['numba'] or 'not installed'}, fastsort {h['fastsort']}; peers: {peers}",
        f"- **git**: {h['commit'] or 'unknown'}{dirty}; **date**: {h['date']}",
        f"- **command**: `{h['command']}`",
        f"- **profile**: {cfg['profile']}: n in {list(cfg['prof']['sizes'])}, B per op and n (column B), "
        f"timer min run time {cfg['prof']['min_run_time']} s, {cfg['prof']['warmup']} warm-up calls, caps "
        f"{cfg['max_case_s']:g} s / {cfg['mem_limit_mb']:g} MB per step",
        "",
        "ms: median time of one call (fwd+bwd: clear grad + forward + backward; fwd: forward under no_grad), "
        + ("triton.testing.do_bench (steps > 0.2 s: torch.utils.benchmark.Timer.timeit(1) repeats)"
           if h["device"] == "cuda" else "torch.utils.benchmark.Timer (blocked_autorange; slow steps: "
           "timeit(1) repeats)")
        + ". MB: peak memory of one call ("
        + ("increase of torch.cuda.max_memory_allocated" if h["device"] == "cuda" else
           "the largest sum of tensor memory the call allocates and holds at once, from torch's profiler "
           "allocation events")
        + "). **peer/this**: the fastest installed peer's time at the same op, n and mode divided by this "
        "row's (> 1: faster than every peer; that peer's row says 'best peer'). **/floor**: this row's fwd+bwd "
        "time over the floor's (torch.sort / torch.topk / CrossEntropyLoss: the hard op). k = 5; losses: "
        "C = n classes, m = 16 preselection when C > 16.",
        "",
        "| op | n | B | implementation | fwd+bwd ms | fwd ms | fwd+bwd MB | fwd MB | peer/this fwd+bwd "
        "| peer/this fwd | /floor | note |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for op in ops:
        keys = sorted((k for k in by if k[0] == op),
                      key=lambda k: (k[1], kind_rank[next(iter(by[k].values()))["kind"]], order[k[2] + "|" + op]))
        capped_rows = {}
        for k in keys:
            fb, fw = by[k].get("fwd+bwd", {}), by[k].get("fwd", {})
            any_r = fb or fw
            if all(r.get("status") == "capped" for r in (fb, fw) if r):
                capped_rows.setdefault(k[2], dict(r=any_r, ns=[]))["ns"].append(k[1])
                continue
            notes = []
            for mode, r in (("fwd+bwd", fb), ("fwd", fw)):
                shown = [w for w in (r or {}).get("warnings", ()) if w not in QUIET_WARNINGS]
                if r and r["status"] == "capped":
                    notes.append(f"{mode} {r['reason']}")
                elif r and r["status"] != "ok":
                    notes.append(f"{mode} {r['status']}: {r.get('reason', '')}")
                elif shown:
                    notes.append(f"{mode} warns {', '.join(shown)}")
                if r and r.get("runs") == 1 and r.get("number_per_run") == 1:
                    notes.append(f"{mode}: 1 timed call")
            b = best.get((op, k[1], "fwd+bwd"))
            if b is not None and b["id"] == k[2]:
                notes.insert(0, "best peer")
            checked = [r for r in (fb, fw) if "agrees" in r]
            if checked:
                ref_label = checked[0]["reference"].split(":")[1]
                if all(r["agrees"] for r in checked):
                    notes.append(f"same result as {'fastsort ' if fb.get('kind') == 'peer' else ''}{ref_label}"
                                 f"{' [torch]' if fb.get('kind') != 'peer' else ''}")
                else:
                    bad = next(r for r in checked if not r["agrees"])
                    notes.append(f"DIFFERS from {bad['reference']} ({bad['mode']} check {bad['check']:.6g})")
            lines.append("| " + " | ".join([
                op, str(k[1]), str(any_r["B"]), any_r["label"],
                fmt_ms(fb.get("median_ms")), fmt_ms(fw.get("median_ms")),
                fmt_mb(fb.get("peak_mb")), fmt_mb(fw.get("peak_mb")),
                fmt_x(fb.get("best_peer_over_this")),
                fmt_x(fw.get("best_peer_over_this")),
                fmt_x(fb.get("this_over_floor")) if fb.get("kind") != "floor" else "",
                "; ".join(notes)]) + " |")
        for r in [s for s in skipped if s["op"] == op]:
            lines.append(f"| {op} | | | {r['label']} | | | | | | | | skipped: {r['reason']} |")
        for cid, c in capped_rows.items():
            r = c["r"]
            lines.append(f"| {op} | {', '.join(map(str, c['ns']))} | | {r['label']} | | | | | | | | "
                         f"{r.get('reason', 'capped')} |")
    return "\n".join(lines) + "\n"


def plots(results, ops, out_dir, header):
    """One log-log PNG per op: time per row (median / B) vs n, fwd+bwd and fwd side by side, one line per
    implementation (fastsort solid, peers dashed, floors dotted black; one colour per implementation across
    all plots); returns the paths written."""
    try:
        from matplotlib import colormaps
        from matplotlib.figure import Figure  # the object API: no pyplot state, Agg canvas
        from matplotlib.ticker import NullFormatter
    except Exception as e:  # noqa: BLE001
        log(f"[run] no plots: matplotlib does not import ({e})")
        return []
    ok = [r for r in results if r["status"] == "ok"]
    ids = list(dict.fromkeys(r["id"] for r in ok if r["kind"] != "floor"))
    palette = colormaps["tab20"].colors
    color = {rid: palette[(2 * i) % 20 + (2 * i) // 20 % 2] for i, rid in enumerate(ids)}
    style = {"fastsort": dict(ls="-", marker="o"), "peer": dict(ls="--", marker="s"), "floor": dict(ls=":", marker="x")}
    paths = []
    for op in ops:
        rows = [r for r in ok if r["op"] == op]
        if not rows:
            continue
        fig = Figure(figsize=(11.5, 5))
        axes = fig.subplots(1, 2, sharey=True)
        handles = {}
        for ax, mode in zip(axes, MODES):
            series = {}
            for r in rows:
                if r["mode"] == mode:
                    series.setdefault(r["id"], (r, []))[1].append((r["n"], r["median_ms"] * 1e3 / r["B"]))
            for rid, (r, pts) in series.items():
                pts.sort()
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r["label"], lw=1.4, ms=4,
                                  color=color.get(rid, "black"), **style[r["kind"]])
                handles.setdefault(r["label"], line)
            ns = sorted({r["n"] for r in rows})
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("n (loss: classes C)" if op in LOSS_OPS else "n (elements per row)")
            ax.set_title(f"{op}, {mode}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("time per row, us (median / B)")
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(0.74, 0.5), fontsize=7,
                   frameon=False)
        fig.suptitle(f"{op}: fastsort {header['fastsort']} on {header['device']} ({header['gpu'] or header['cpu']}), "
                     f"{header['date'][:10]}, {(header['commit'] or '')[:10]}", fontsize=9)
        fig.subplots_adjust(left=0.07, right=0.73, bottom=0.11, top=0.88, wspace=0.05)
        path = os.path.join(out_dir, f"{op}.png")
        fig.savefig(path, dpi=80)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(json.loads(sys.stdin.read()))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI mode: tiny sizes and batches, few repeats (< 60 s)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder (default benchmarks/results/)")
    ap.add_argument("--ops", default="", help="comma-separated ops to run (default: all)")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only implementations whose id or "
                                               "label contains one (e.g. fastsort,torchsort,bitonic)")
    ap.add_argument("--sizes", default="", help="comma-separated n to sweep instead of the profile's")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (and NUMBA_NUM_THREADS) in both processes (default: torch's)")
    ap.add_argument("--max-case-s", type=float, default=None, help="cap: skip a size estimated slower than this")
    ap.add_argument("--mem-limit-mb", type=float, default=4096.0, help="cap: skip a size estimated larger than this")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("run.py --device cuda: no CUDA device visible (torch.cuda.is_available() is False)", file=sys.stderr)
            return 1
    if args.threads:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))  # before anything imports numba
    profile = "quick" if args.quick else "full"
    prof = dict(PROFILES[profile])
    if args.sizes:
        prof["sizes"] = tuple(int(s) for s in args.sizes.split(","))
    cfg = dict(profile=profile, prof=prof, device=args.device, threads=args.threads,
               max_case_s=args.max_case_s or prof["max_case_s"], mem_limit_mb=args.mem_limit_mb)
    os.makedirs(args.out, exist_ok=True)
    from fastsort.method import OPS

    want_ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(want_ops) - set(OPS) - set(EXTRA_OPS))
    if unknown:
        ap.error(f"unknown op(s) {unknown}; the ops are {list(OPS) + list(EXTRA_OPS)}")
    ops, impls, skipped = plan(args.device, want_ops, [s.strip() for s in args.only.split(",") if s.strip()])
    if not impls:
        ap.error("--ops / --only select no implementation")
    results = []
    for impl in impls:  # static caps: decided here, the rest of the sizes go to the workers
        sizes = []
        for n in prof["sizes"]:
            limit = min(x for x in (impl.get("max_n"), OP_MAX_N.get(impl["op"]), math.inf) if x is not None)
            if n > limit:
                reason = (DENSE_NOTE if impl.get("max_n") and n > impl["max_n"] else
                          f"{impl['op']} has n^2 outputs per row: n <= {OP_MAX_N[impl['op']]} only")
                for mode in MODES:
                    results.append(dict(impl, n=n, B=batch(impl["op"], n, prof, args.device), mode=mode,
                                        status="capped", reason=reason))
            else:
                sizes.append(n)
        impl["sizes"] = sizes
    header = machine_header(argv, args.device, cfg)
    # fastsort and the torch floors run in this process, the peers in one fresh worker process
    # (libraries ordered as LIB_ORDER), so no peer's imports, caches or allocator state touch fastsort's
    ours = [i for i in impls if i["kind"] != "peer" and i["sizes"]]
    peers = sorted((i for i in impls if i["kind"] == "peer" and i["sizes"]), key=lambda i: LIB_ORDER.index(i["lib"]))
    log(f"[run] fastsort and floors: {len(ours)} implementation x op pairs (this process)")
    results.extend(progress(r) for r in run_cases(dict(cfg, impls=ours)))
    if peers:
        log(f"[run] peers: {len(peers)} implementation x op pairs (worker process)")
        results.extend(run_worker("peers", peers, cfg, args.out))
    md = table(results, skipped, ops, header, cfg)
    pngs = plots(results, ops, args.out, header)
    wall = time.perf_counter() - t_start
    md += f"\n(wall time {wall:.0f} s, from the start of the script's main to the plots written)\n"
    print(md)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(dict(schema=SCHEMA, header=header, config=cfg, ops=list(ops), results=results, skipped=skipped,
                       plots=[os.path.basename(p) for p in pngs], wall_s=wall), f, indent=1)
    log(f"[run] wrote {args.out}/report.md, report.json and {len(pngs)} plots in {wall:.0f} s")
    fatal = [r for r in results if r["status"] == "error" and r["kind"] in ("fastsort", "floor")]
    died = [r for r in results if r["status"] == "error" and "worker" in r.get("reason", "")]
    for r in fatal + [d for d in died if d not in fatal]:
        log(f"[run] ERROR {r['op']} {r['label']} n={r['n']} {r['mode']}: {r['reason']}")
    return 1 if fatal or died else 0


if __name__ == "__main__":
    sys.exit(main())
