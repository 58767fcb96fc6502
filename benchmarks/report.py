"""fastsort vs difftopk on CPU: one markdown table of times, speedups and peak memory.

    python benchmarks/report.py                 # ~1-2 min on 2 cores
    python benchmarks/report.py --full-b 64     # difftopk at the issue's full-n batch (slow, ~15 GB RAM)
    python benchmarks/report.py --threads 1 --json out.json

Cases (fwd + bwd, the input's gradient cleared before each step, identical
seeded inputs and upstream gradients for both libraries):

* ``TopKCrossEntropyLoss``, B = 500, 1000 classes, top-m preselection m = 16,
  P_K = [.5, 0, 0, 0, .5], inverse_temperature = 1, bitonic and odd-even
  (difftopk: ``bitonic__non_sparse`` and ``odd_even``, its dense networks);
* full-n ``soft_topk``, n = 1024, k = 5, bitonic, steepness 10 (difftopk:
  ``DiffTopkNet('bitonic', 1024, 5, sparse=False)``), at an equal batch for
  both libraries (``--full-b``, default 8: difftopk's dense ``O(n^2)``-per-layer
  step costs ~10 s and ~1.8 GB at B = 8, linear in B), plus fastsort alone at
  the issue's B = 64.

Every case runs in its own fresh Python process (``cpu_cases.py``'s probe):
time = median of warm repeats (``time.perf_counter`` around one step, after a
warm-up); peak memory = largest increase of live tensor memory during one
full-size step, from torch.profiler's allocation events, with the RSS
high-water increase as a cross-check (see ``cpu_cases.py``).
``OMP_WAIT_POLICY=PASSIVE`` is set unless already set (see ``cpu_cases.py``:
spin-waiting OpenMP threads on a shared 2-core machine add ~8 ms to every
parallel torch op).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_cases as cc  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)

GOAL_LOSS_SPEEDUP = 10.0   # >= 10x faster than difftopk at m = 16
GOAL_FULL_SPEEDUP = 50.0   # >= 50x faster at full n
GOAL_FULL_MEMORY = 20.0    # >= 20x less peak memory at full n


def _ms(r, key="median_s"):
    return _err(r) if "error" in r else f"{r[key] * 1e3:.1f}"


def _err(r):
    return "n/a" if r.get("error") == "skipped" else "error"


def _x(v, digits=1):
    return "n/a" if v is None else f"{v:.{digits}f}x"


def _mb(r):
    if "error" in r:
        return _err(r)
    return f"{r['peak_mb']:.0f} ({r.get('peak_rss_mb', float('nan')):.0f})"


def _ratio(a, b, key):
    if "error" in a or "error" in b or not a.get(key) or b.get(key) is None:
        return None
    return b[key] / a[key]


def _goal(value, goal):
    if value is None:
        return "n/a"
    return f"{'PASS' if value >= goal else 'FAIL'} (>= {goal:g}x)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full-b", type=int, default=cc.FULL_B_COMPARE,
                    help=f"batch of the equal-batch full-n comparison (default {cc.FULL_B_COMPARE}; the issue's is {cc.FULL_B})")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each probe (default: torch's)")
    ap.add_argument("--json", help="also write the raw probe results here")
    ap.add_argument("--skip-difftopk", action="store_true", help="fastsort rows only")
    args = ap.parse_args(argv)

    have_dt = not args.skip_difftopk and cc.import_difftopk() is not None
    t_start = time.perf_counter()
    results = {}

    def run(name, spec, **kw):
        spec = dict(spec, threads=args.threads, **kw)
        t0 = time.perf_counter()
        print(f"[report] {name} ...", end=" ", file=sys.stderr, flush=True)
        results[name] = r = cc.run_probe(spec)
        print(f"{time.perf_counter() - t0:.1f} s" + (f"  ERROR {r['error']}" if "error" in r else ""),
              file=sys.stderr, flush=True)
        return r

    libs = ["fastsort"] + (["difftopk"] if have_dt else [])
    for method in ("bitonic", "odd_even"):
        for lib in libs:
            run(f"loss/{method}/{lib}", dict(lib=lib, case="loss", method=method),
                min_reps=5, max_reps=40, budget_s=1.5)
    for lib in libs:
        slow = lib == "difftopk"
        run(f"full/B{args.full_b}/{lib}", dict(lib=lib, case="full", B=args.full_b),
            min_reps=1 if slow else 5, max_reps=1 if slow else 20, budget_s=0.0 if slow else 2.0)
    if args.full_b != cc.FULL_B:
        run(f"full/B{cc.FULL_B}/fastsort", dict(lib="fastsort", case="full", B=cc.FULL_B),
            min_reps=3, max_reps=10, budget_s=3.0)

    import torch

    any_r = next(iter(results.values()))
    print("## fastsort vs difftopk on CPU\n")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch "
          f"{torch.__version__}, threads {any_r.get('threads', '?')}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '')}; difftopk {'installed' if have_dt else 'NOT installed'}.")
    print("Times: median of warm fwd+bwd steps (min in parentheses), one fresh process per row. "
          "Peak MB: largest increase of live tensor memory during one step (torch.profiler memory events); "
          "in parentheses the process's resident-set high-water increase over the same step (adds glibc "
          "heap fragmentation). Memory ratio: of the tensor peaks.\n")
    print("| case | fastsort ms | difftopk ms | speedup (median / min) | fastsort peak MB | difftopk peak MB "
          "| memory ratio | same result | goal |")
    print("|---|---|---|---|---|---|---|---|---|")
    goals = []
    for method in ("bitonic", "odd_even"):
        fs, dt = results[f"loss/{method}/fastsort"], results.get(f"loss/{method}/difftopk", {"error": "skipped"})
        sp, spmin = _ratio(fs, dt, "median_s"), _ratio(fs, dt, "min_s")
        same = "n/a" if "error" in fs or "error" in dt else \
            ("yes" if abs(fs["check"] - dt["check"]) <= 1e-4 * max(1.0, abs(dt["check"])) else
             f"NO ({fs['check']:.6g} vs {dt['check']:.6g})")
        goal = _goal(sp, GOAL_LOSS_SPEEDUP)
        goals.append((f"loss m=16 {method}: >= {GOAL_LOSS_SPEEDUP:g}x faster", goal))
        mem = _ratio(fs, dt, "peak_mb")
        print(f"| TopKCrossEntropyLoss {method}, B=500, C=1000, m=16 | {_ms(fs)} ({_ms(fs, 'min_s')}) "
              f"| {_ms(dt)} ({_ms(dt, 'min_s')}) | {_x(sp)} / {_x(spmin)} "
              f"| {_mb(fs)} | {_mb(dt)} | {_x(mem)} | {same} | {goal} |")
    fb = args.full_b
    fs, dt = results[f"full/B{fb}/fastsort"], results.get(f"full/B{fb}/difftopk", {"error": "skipped"})
    sp, spmin, mem = _ratio(fs, dt, "median_s"), _ratio(fs, dt, "min_s"), _ratio(fs, dt, "peak_mb")
    same = "n/a" if "error" in fs or "error" in dt else \
        ("yes" if abs(fs["check"] - dt["check"]) <= 1e-3 * max(1.0, abs(dt["check"])) else
         f"NO ({fs['check']:.6g} vs {dt['check']:.6g})")
    g1, g2 = _goal(sp, GOAL_FULL_SPEEDUP), _goal(mem, GOAL_FULL_MEMORY)
    goals += [(f"full n=1024 (B={fb}): >= {GOAL_FULL_SPEEDUP:g}x faster", g1),
              (f"full n=1024 (B={fb}): >= {GOAL_FULL_MEMORY:g}x less peak memory", g2)]
    dt_note = " (1 warm step)" if "error" not in dt else ""
    print(f"| soft_topk bitonic full n=1024, k=5, B={fb} | {_ms(fs)} ({_ms(fs, 'min_s')}) | {_ms(dt)}{dt_note} "
          f"| {_x(sp, 0)} / {_x(spmin, 0)} | {_mb(fs)} | {_mb(dt)} | {_x(mem, 0)} "
          f"| {same} | {g1}; memory {g2} |")
    if fb != cc.FULL_B:
        f64 = results[f"full/B{cc.FULL_B}/fastsort"]
        est = ""
        if "error" not in dt and "error" not in f64:
            t_est = dt["median_s"] * cc.FULL_B / fb
            m_est = dt["peak_mb"] * cc.FULL_B / fb
            est = (f"~{t_est * 1e3:.0f} (est.) | ~{t_est / f64['median_s']:.0f}x (est.) | {_mb(f64)} "
                   f"| ~{m_est:.0f} (est.) | ~{m_est / f64['peak_mb']:.0f}x (est.)")
        else:
            est = "n/a | n/a | " + _mb(f64) + " | n/a | n/a"
        print(f"| soft_topk bitonic full n=1024, k=5, B={cc.FULL_B} | {_ms(f64)} ({_ms(f64, 'min_s')}) | {est} "
              f"| | difftopk linearly extrapolated from B={fb}; run `--full-b {cc.FULL_B}` to measure |")
    print()
    if "error" not in dt:
        print(f"difftopk's dense network matrices for n=1024 take {dt['setup_mb']:.0f} MB of module state "
              f"(not in its peak). difftopk's cold first step: {dt['cold_s']:.1f} s.")
    errors = [(k, r["error"]) for k, r in results.items() if "error" in r]
    for k, e in errors:
        print(f"- ERROR {k}: {e}")
    print("\nGoals:")
    for name, g in goals:
        print(f"- {name}: {g}")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
