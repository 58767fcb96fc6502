"""Ahead-of-time compilation of every fastsort kernel variant, no GPU needed.

``python -m fastsort.kernels.aot [--arch 80 90] [--jobs N] [--part all|first|rest]``
compiles each ``(kernel, constexpr variant)`` that the launchers use (each
module's ``aot_variants()``) with ``triton.compile(..., target=GPUTarget("cuda", arch, 32))``
and prints one JSON object ``{"<variant>@sm<arch>": null | "error"}``.  ``--part first``
compiles the first variant of every kernel (every kernel's code once per arch, ~10% of
the compiles: the test suite's default), ``--part rest`` the other variants (its ``slow`` part).  It
must run in a process *without* ``TRITON_INTERPRET`` (the interpreter accepts
code that the compiler rejects, which is what this check catches).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

MODULES = ("fastsort.kernels.network", "fastsort.kernels.topk_loss", "fastsort.kernels.sinkhorn",
           "fastsort.kernels.isotonic")


PARTS = ("all", "first", "rest")


def variants(part: str = "all"):
    """``[(module, test_id)]`` of the variants, in a stable order: all of them, the first variant of
    each kernel (``"first"``) or the others (``"rest"``)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    out = []
    for mod in MODULES:
        seen = set()
        for test_id, fn, *_ in importlib.import_module(mod).aot_variants():
            first = fn.fn.__name__ not in seen
            seen.add(fn.fn.__name__)
            if part == "all" or (part == "first") == first:
                out.append((mod, test_id))
    return out


def _compile(job):
    mod, test_id, arch = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for tid, fn, signature, constexprs in importlib.import_module(mod).aot_variants():
        if tid == test_id:
            try:
                triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                               target=GPUTarget("cuda", arch, 32))
            except Exception as e:  # report, don't stop: every variant gets a verdict
                return f"{type(e).__name__}: {e}"[-3000:]
            return None
    return f"variant {test_id} not found in {mod}"


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("run without TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--part", choices=PARTS, default="all")
    args = ap.parse_args(argv)
    jobs = [(mod, tid, arch) for mod, tid in variants(args.part) for arch in args.arch]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_compile, jobs, chunksize=4))
    report = {f"{tid}@sm{arch}": err for (_, tid, arch), err in zip(jobs, results)}
    print(json.dumps(report))
    return 0 if all(v is None for v in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
