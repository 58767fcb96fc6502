"""GPU benchmark table of fastsort (plain python: no pytest-benchmark needed).

    python benchmarks/gpu_bench.py                # markdown table on stdout, progress on stderr
    python benchmarks/gpu_bench.py --require-cuda # exit 1 (instead of 0) when there is no CUDA device
    python benchmarks/gpu_bench.py --smoke        # self-test of this script on CPU: tiny sizes,
                                                  # perf_counter timing; the numbers mean nothing
    TRITON_INTERPRET=1 python benchmarks/gpu_bench.py --smoke   # ... with the kernels interpreted

Sections (every step = clear the input's gradient + forward + backward):

(a) top-k cross-entropy, B = 4096, 1000 classes, m = 16, P_K = [.5, 0, 0, 0, .5],
    bitonic, inverse_temperature 1: fastsort's fused Triton kernel on fp32 and bf16
    logits vs ``torch.nn.CrossEntropyLoss`` on the same logits, fastsort's torch
    backend, and difftopk ``bitonic__non_sparse`` (fp32; difftopk cannot take bf16);
(b) full-n ``soft_topk``, n = 1024, k = 5, B = 64, bitonic, steepness 10:
    fastsort Triton vs fastsort's torch backend on the GPU vs difftopk's dense
    ``DiffTopkNet('bitonic', sparse=False)`` (+ peak GPU memory);
(c) effective memory bandwidth of the fused loss: (logits read once + dlogits
    written once) / (fwd+bwd time), at B = 4096 and at B = 65536 (where launch
    overhead no longer dominates), next to torch CE and a plain copy of the logits;
(d) Sinkhorn (epsilon 0.1 = inverse_temperature 10 for all rows), Triton vs torch
    backend: ``soft_topk(k=5)`` on [4096, 1000], and the loss at B = 4096, 1000
    classes with m = 16 and without preselection (full n = 1000);
(e) projection onto the permutahedron (l2, strength 1): soft ranks and soft sort
    on [4096, 100] and [4096, 1000], fastsort's Triton kernels vs its torch
    backend and torchsort 0.1.10's CUDA kernel (skipped when torchsort or its CUDA
    extension is not installed).

Timing: ``triton.testing.do_bench`` (CUDA events, L2 flushed before each call,
median), after one untimed call (Triton compilation, caches); a step slower
than ~0.2 s runs 3 event-timed repeats instead.  Peak MB = increase of
``torch.cuda.max_memory_allocated`` during one step.  Each row runs under
try/except: a failure prints an error row, the rest of the table still runs.
difftopk rows are skipped (with a note) when difftopk is not installed.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_cases as cc  # noqa: E402  (the shared step builders)

P_K = [0.5, 0.0, 0.0, 0.0, 0.5]
B_LOSS, C_LOSS, M_LOSS, IT_LOSS = 4096, 1000, 16, 1.0
B_BW = 65536
B_FULL, N_FULL, K_FULL, STEEP_FULL = 64, 1024, 5, 10.0
SINKHORN_IT = 10.0  # inverse_temperature -> epsilon = 0.1
SINKHORN_EPS = 1.0 / SINKHORN_IT
B_PERM, N_PERM = 4096, (100, 1000)

GOALS = []  # (text, value, op, target)
DEVICE = "cuda"
FAST = "auto"  # the backend of the "fastsort triton" rows: auto = Triton on CUDA


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def import_difftopk():
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import difftopk
    except Exception:  # noqa: BLE001
        return None
    return difftopk


# --------------------------------------------------------------------------- timing
def bench(step, warmup_ms=25, rep_ms=100, slow_ms=200.0):
    """``(median ms, first-call s)``: one untimed call, then do_bench (or 3 event-timed repeats if slow)."""
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    sync()
    est_ms = (time.perf_counter() - t0) * 1e3
    if DEVICE != "cuda":  # --smoke
        return est_ms, first
    import triton.testing

    if est_ms > slow_ms:
        times = []
        for _ in range(3):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            step()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        return sorted(times)[1], first
    return float(triton.testing.do_bench(step, warmup=warmup_ms, rep=rep_ms, return_mode="median")), first


def peak_mb(step):
    if DEVICE != "cuda":
        return None
    for t in getattr(step, "inputs", ()):
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


# --------------------------------------------------------------------------- steps
def loss_inputs(B, C, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    logits = (3 * torch.randn(B, C, device=DEVICE, generator=g)).to(dtype).requires_grad_()
    labels = torch.randint(0, C, (B,), device=DEVICE, generator=g)
    return logits, labels


def make_step(loss_fn, logits, labels):
    def step(check=False):
        logits.grad = None
        loss = loss_fn(logits, labels)
        loss.backward()
        return loss

    step.inputs = (logits,)
    return step


def fastsort_loss(method="bitonic", backend=None, m=M_LOSS, it=IT_LOSS):
    import fastsort

    return fastsort.TopKCrossEntropyLoss(P_K, method, m=m, inverse_temperature=it, backend=backend or FAST)


def difftopk_loss(C, m=M_LOSS, it=IT_LOSS):
    difftopk = import_difftopk()
    if difftopk is None:
        raise SkipRow("difftopk not installed (pip install --no-deps --no-index .whl/*.whl)")
    return difftopk.TopKCrossEntropyLoss("bitonic__non_sparse", it, P_K, C, m=m, distribution="cauchy",
                                         device=DEVICE)


def topk_step(fn, B, n, k, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(B, n, device=DEVICE, generator=g).requires_grad_()
    G = torch.randn(B, k, n, device=DEVICE, generator=g)

    def step(check=False):
        x.grad = None
        P = fn(x)
        P.backward(G)
        return (P.detach() * G).sum() if check else None  # not computed in timed calls

    step.inputs = (x,)
    return step


def fastsort_topk(k, method="bitonic", backend=None, **params):
    import fastsort

    return lambda x: fastsort.soft_topk(x, k, method, backend=backend or FAST, **params)


def difftopk_topk(n, k, steepness):
    difftopk = import_difftopk()
    if difftopk is None:
        raise SkipRow("difftopk not installed (pip install --no-deps --no-index .whl/*.whl)")
    net = difftopk.DiffTopkNet("bitonic", n, k, sparse=False, device=DEVICE, steepness=steepness,
                               distribution="cauchy")
    return lambda x: net(x)[1].transpose(1, 2).flip(1)  # [B, n, k] ascending -> [B, k, n], rank 1 first


def rows_step(fn, B, n, seed=0):
    """One fwd+bwd of ``fn`` on seeded rows ``[B, n]`` with a seeded cotangent (``cpu_cases.rows_step`` on
    ``DEVICE``); check value ``sum(y * G)``."""
    return cc.rows_step(fn, B, n, device=DEVICE, seed=seed)


def fastsort_permutahedron(op, backend=None, regularization="l2"):
    """``fastsort.soft_rank`` / ``soft_sort`` with method ``permutahedron`` (``op``: ``rank`` or ``sort``), the
    public path a torchsort user takes; ``auto``: Triton on CUDA (numba in a CPU smoke run)."""
    import fastsort

    fn = getattr(fastsort, f"soft_{op}")
    be = backend or FAST
    return lambda x: fn(x, "permutahedron", backend=be, regularization=regularization)


def torchsort_op(op, regularization="l2"):
    try:
        import torchsort
    except Exception:  # noqa: BLE001
        raise SkipRow("torchsort not installed (see benchmarks/README.md)") from None
    if DEVICE == "cuda":
        try:
            from torchsort import isotonic_cuda  # noqa: F401
        except Exception:  # noqa: BLE001
            raise SkipRow("torchsort was built without its CUDA extension") from None
    fn = getattr(torchsort, f"soft_{op}")
    return lambda x: fn(x, regularization)


class SkipRow(Exception):
    pass


# --------------------------------------------------------------------------- rows
class Table:
    def __init__(self):
        self.rows = {}  # key -> dict
        self.order = []

    def run(self, key, section, case, impl, build, nbytes=None, ref=None, mem=False):
        """Build the step (``build()``), time it; ``nbytes`` -> GB/s; ``ref`` = key whose check value to compare."""
        log(f"[gpu_bench] {key}: {case} / {impl} ...")
        row = dict(section=section, case=case, impl=impl, ref=ref)
        self.rows[key] = row
        self.order.append(key)
        t0 = time.perf_counter()
        try:
            step = build()
            row["check"] = float(step(check=True))
            sync()
            row["ms"], row["first_s"] = bench(step)
            if nbytes:
                row["gbps"] = nbytes / (row["ms"] * 1e-3) / 1e9
            if mem:
                row["peak_mb"] = peak_mb(step)
        except SkipRow as e:
            row["skip"] = str(e)
        except Exception as e:  # noqa: BLE001 - one failing row must not kill the table
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            log(traceback.format_exc())
        finally:
            step = None
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
        log(f"[gpu_bench]   -> {row.get('ms', row.get('error', row.get('skip')))} ({time.perf_counter() - t0:.1f} s)")
        return row

    def ms(self, key):
        r = self.rows.get(key, {})
        return r.get("ms")

    def ratio(self, slow, fast):
        a, b = self.ms(slow), self.ms(fast)
        return a / b if a and b else None


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def goal(text, value, op, target):
    GOALS.append((text, value, op, target))


def print_section(t, section, title, vs=()):
    """``vs``: list of (column title, reference key or None for the row's own ``ref``, 'ref/row' or 'row/ref')."""
    print(f"\n### {title}\n")
    head = ["case", "impl", "ms (median)"] + [c for c, _, _ in vs] + ["GB/s", "peak MB", "first call s", "check value",
                                                                     "rel. diff vs ref"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in t.order:
        r = t.rows[key]
        if r["section"] != section:
            continue
        if "error" in r or "skip" in r:
            msg = f"ERROR {r['error']}" if "error" in r else f"skipped: {r['skip']}"
            print(f"| {r['case']} | {r['impl']} | {msg} |" + " |" * (len(head) - 3))
            continue
        cells = [r["case"], r["impl"], f"{r['ms']:.3f}"]
        for _, ref, how in vs:
            ref = ref or r.get("ref")  # None: the row's own reference row
            x = t.ratio(ref, key) if how == "ref/row" else t.ratio(key, ref)
            cells.append("" if x is None or ref == key else f"{x:.2f}x")
        diff = ""
        if r.get("ref") and r["ref"] != key and "check" in t.rows.get(r["ref"], {}):
            c0 = t.rows[r["ref"]]["check"]
            diff = f"{abs(r['check'] - c0) / max(abs(c0), 1e-12):.1e}"
        cells += [fmt(r.get("gbps"), ".0f"), fmt(r.get("peak_mb"), ".1f"), fmt(r.get("first_s"), ".1f"),
                  f"{r['check']:.6g}", diff]
        print("| " + " | ".join(cells) + " |")


def _smoke_sizes():
    global DEVICE, FAST, B_LOSS, C_LOSS, M_LOSS, B_BW, B_FULL, N_FULL, B_PERM, N_PERM
    DEVICE = "cpu"
    # with TRITON_INTERPRET=1 the "triton" rows run the kernels in Triton's interpreter
    FAST = "triton" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else "auto"
    B_LOSS, C_LOSS, M_LOSS, B_BW, B_FULL, N_FULL = 32, 100, 16, 64, 4, 64
    B_PERM, N_PERM = 8, (5, 12)  # the interpreted PAV runs up to 2n - 2 steps of ~10 ms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--require-cuda", action="store_true", help="exit 1 when no CUDA device is visible")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip (a,b,c,d,e)")
    ap.add_argument("--smoke", action="store_true", help="CPU self-test of the script (tiny sizes; numbers meaningless)")
    args = ap.parse_args(argv)
    if args.smoke:
        _smoke_sizes()
    elif not torch.cuda.is_available():
        print("gpu_bench.py: no CUDA device visible (torch.cuda.is_available() is False) - nothing to measure. "
              "Run it on the GPU machine, e.g. `bash benchmarks/gpu_check.sh LOGDIR`; the CPU comparison is "
              "`python benchmarks/report.py`.")
        return 1 if args.require_cuda else 0
    skip = set(s.strip() for s in args.skip.split(",") if s.strip())
    import triton

    import fastsort

    t_start = time.perf_counter()
    have_dt = import_difftopk() is not None
    print("## fastsort GPU benchmark\n")
    if DEVICE == "cuda":
        dev = torch.cuda.get_device_properties(0)
        where = f"{dev.name} ({dev.total_memory / 2 ** 30:.0f} GiB, sm_{dev.major}{dev.minor})"
    else:
        where = f"SMOKE TEST ON CPU (tiny sizes, 'triton' rows use backend={FAST!r}; the numbers mean nothing)"
    print(f"{where}, torch {torch.__version__}, "
          f"triton {triton.__version__}, fastsort {fastsort.__version__}, python {platform.python_version()}, "
          f"difftopk {'installed' if have_dt else 'NOT installed (its rows are skipped)'}.")
    print("Every step = zero_grad + forward + backward. ms = median of triton.testing.do_bench (L2 flushed "
          "before each call; steps > 0.2 s: median of 3). check value = the loss (or sum(P * G)); rel. diff vs "
          "ref compares it with the row named in the case's first line.")
    t = Table()
    cache = {}

    def inputs(B, C, dtype):
        key = (B, C, dtype)
        if key not in cache:
            cache.clear()
            cache[key] = loss_inputs(B, C, dtype)
        return cache[key]

    ce = torch.nn.CrossEntropyLoss()
    # ------------------------------------------------------------------ (a) loss
    if "a" not in skip:
        case = f"loss B={B_LOSS} C={C_LOSS} m={M_LOSS}"
        nb32 = 2 * B_LOSS * C_LOSS * 4
        nb16 = 2 * B_LOSS * C_LOSS * 2
        t.run("a.fs32", "a", case + " fp32", "fastsort fused (triton)",
              lambda: make_step(fastsort_loss(), *inputs(B_LOSS, C_LOSS, torch.float32)), nb32, ref="a.fsT32", mem=True)
        t.run("a.ce32", "a", case + " fp32", "torch.nn.CrossEntropyLoss",
              lambda: make_step(ce, *inputs(B_LOSS, C_LOSS, torch.float32)), nb32, mem=True)
        t.run("a.fsT32", "a", case + " fp32", "fastsort backend='torch'",
              lambda: make_step(fastsort_loss(backend="torch"), *inputs(B_LOSS, C_LOSS, torch.float32)), nb32,
              mem=True)
        t.run("a.dt32", "a", case + " fp32", "difftopk bitonic__non_sparse",
              lambda: make_step(difftopk_loss(C_LOSS), *inputs(B_LOSS, C_LOSS, torch.float32)), nb32,
              ref="a.fsT32", mem=True)
        t.run("a.fs16", "a", case + " bf16", "fastsort fused (triton)",
              lambda: make_step(fastsort_loss(), *inputs(B_LOSS, C_LOSS, torch.bfloat16)), nb16, ref="a.fsT16",
              mem=True)
        t.run("a.ce16", "a", case + " bf16", "torch.nn.CrossEntropyLoss",
              lambda: make_step(ce, *inputs(B_LOSS, C_LOSS, torch.bfloat16)), nb16, mem=True)
        t.run("a.fsT16", "a", case + " bf16", "fastsort backend='torch'",
              lambda: make_step(fastsort_loss(backend="torch"), *inputs(B_LOSS, C_LOSS, torch.bfloat16)), nb16,
              mem=True)
        for method in ("neuralsort", "softsort"):  # their fused kernel (rows_ce_fwd) against their torch ops
            t.run(f"a.{method}32", "a", case + " fp32", f"fastsort {method} fused (triton)",
                  lambda: make_step(fastsort_loss(method), *inputs(B_LOSS, C_LOSS, torch.float32)), nb32,
                  ref=f"a.{method}T32", mem=True)
            t.run(f"a.{method}T32", "a", case + " fp32", f"fastsort {method} backend='torch'",
                  lambda: make_step(fastsort_loss(method, backend="torch"), *inputs(B_LOSS, C_LOSS, torch.float32)),
                  nb32, mem=True)
        goal("fused loss fp32 within 1.5x of torch CE (fused / CE)", t.ratio("a.fs32", "a.ce32"), "<=", 1.5)
        goal("fused loss bf16 within 1.5x of torch CE (fused / CE)", t.ratio("a.fs16", "a.ce16"), "<=", 1.5)
        goal("fused loss fp32 >= 50x faster than difftopk", t.ratio("a.dt32", "a.fs32"), ">=", 50.0)
        print_section(t, "a", "(a) top-k cross-entropy, fwd+bwd (ref for check: fastsort backend='torch')",
                      vs=[("vs torch CE (this / CE)", "a.ce32", "row/ref"), ("difftopk / this", "a.dt32", "ref/row")])
        cache.clear()
    # ------------------------------------------------------------------ (b) full n
    if "b" not in skip:
        case = f"soft_topk bitonic n={N_FULL} k={K_FULL} B={B_FULL}"
        t.run("b.fs", "b", case, "fastsort triton",
              lambda: topk_step(fastsort_topk(K_FULL, steepness=STEEP_FULL), B_FULL, N_FULL, K_FULL),
              ref="b.fsT", mem=True)
        t.run("b.fsT", "b", case, "fastsort backend='torch'",
              lambda: topk_step(fastsort_topk(K_FULL, backend="torch", steepness=STEEP_FULL), B_FULL, N_FULL, K_FULL),
              mem=True)
        t.run("b.dt", "b", case, "difftopk DiffTopkNet (dense)",
              lambda: topk_step(difftopk_topk(N_FULL, K_FULL, STEEP_FULL), B_FULL, N_FULL, K_FULL),
              ref="b.fsT", mem=True)
        goal("full-n soft_topk >= 100x faster than difftopk", t.ratio("b.dt", "b.fs"), ">=", 100.0)
        print_section(t, "b", "(b) full-n top-k rows, fwd+bwd (ref for check: fastsort backend='torch')",
                      vs=[("difftopk / this", "b.dt", "ref/row"), ("torch backend / this", "b.fsT", "ref/row")])
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    # ------------------------------------------------------------------ (c) bandwidth
    if "c" not in skip:
        for B in (B_LOSS, B_BW):
            case = f"loss B={B} C={C_LOSS} m={M_LOSS}"
            for dt, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                nb = 2 * B * C_LOSS * torch.empty((), dtype=dt).element_size()
                t.run(f"c.fs.{B}.{tag}", "c", f"{case} {tag}", "fastsort fused (triton)",
                      lambda: make_step(fastsort_loss(), *inputs(B, C_LOSS, dt)), nb)
                t.run(f"c.ce.{B}.{tag}", "c", f"{case} {tag}", "torch.nn.CrossEntropyLoss",
                      lambda: make_step(ce, *inputs(B, C_LOSS, dt)), nb)

                def copy_step(B=B, dt=dt):
                    x = inputs(B, C_LOSS, dt)[0].detach()
                    return lambda check=False: x.clone()[0, 0]

                t.run(f"c.copy.{B}.{tag}", "c", f"{case} {tag}", "logits.clone() (read + write, roofline)", copy_step,
                      nb)
        cache.clear()
        print_section(t, "c", "(c) effective bandwidth: (logits read + dlogits written) / fwd+bwd time",
                      vs=[])
    # ------------------------------------------------------------------ (d) sinkhorn
    if "d" not in skip:
        case = f"sinkhorn soft_topk k=5 x=[{B_LOSS}, {C_LOSS}] eps={SINKHORN_EPS:g}"
        for be, tag in ((FAST, "triton"), ("torch", "torch")):
            t.run(f"d.topk.{tag}", "d", case, f"fastsort {tag}",
                  lambda: topk_step(fastsort_topk(5, "sinkhorn", backend=be, epsilon=SINKHORN_EPS), B_LOSS, C_LOSS, 5),
                  ref="d.topk.torch", mem=True)
        for m in (M_LOSS, None):
            case = f"sinkhorn loss B={B_LOSS} C={C_LOSS} m={m or 'full'} it={SINKHORN_IT:g}"
            for be, tag in ((FAST, "triton"), ("torch", "torch")):
                t.run(f"d.loss{m}.{tag}", "d", case, f"fastsort {tag}",
                      lambda: make_step(fastsort_loss("sinkhorn", backend=be, m=m, it=SINKHORN_IT),
                                        *inputs(B_LOSS, C_LOSS, torch.float32)),
                      ref=f"d.loss{m}.torch", mem=True)
        cache.clear()
        goal("Sinkhorn soft_topk triton >= 10x faster than torch backend at n=1000",
             t.ratio("d.topk.torch", "d.topk.triton"), ">=", 10.0)
        print_section(t, "d", "(d) Sinkhorn, fwd+bwd (ref for check: the torch backend)",
                      vs=[("torch backend / this", None, "ref/row")])

    # ------------------------------------------------------------------ (e) permutahedron
    if "e" not in skip:
        for n in N_PERM:
            for op in ("rank", "sort"):
                case = f"soft_{op} permutahedron l2 x=[{B_PERM}, {n}]"
                ref = f"e.{op}{n}.torch"
                rows = (("triton", "fastsort triton", lambda: rows_step(fastsort_permutahedron(op), B_PERM, n)),
                        ("torch", "fastsort backend='torch'",
                         lambda: rows_step(fastsort_permutahedron(op, "torch"), B_PERM, n)),
                        ("torchsort", "torchsort 0.1.10" + (" (CUDA kernel)" if DEVICE == "cuda" else ""),
                         lambda: rows_step(torchsort_op(op), B_PERM, n)))
                for tag, impl, build in rows:
                    t.run(f"e.{op}{n}.{tag}", "e", case, impl, build, ref=ref, mem=True)
        print_section(t, "e", "(e) projection onto the permutahedron, fwd+bwd (ref for check: the torch backend)",
                      vs=[("torch backend / this", None, "ref/row")])

    print("\n### goals\n")
    for text, value, op, target in GOALS:
        if value is None:
            status = "n/a (row missing or failed)"
        else:
            ok = value <= target if op == "<=" else value >= target
            status = ("PASS" if ok else "FAIL") + f" ({value:.2f}x, goal {op} {target:g}x)"
        print(f"- {text}: {status}")
    errors = [k for k, r in t.rows.items() if "error" in r]
    if errors:
        print(f"\nrows with errors: {', '.join(errors)} (tracebacks on stderr)")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
