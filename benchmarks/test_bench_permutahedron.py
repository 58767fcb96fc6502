"""CPU benchmarks: fastsort's permutahedron projections vs torchsort 0.1.10, side by side (pytest-benchmark).

    python -m pytest benchmarks/test_bench_permutahedron.py -q --benchmark-only \\
        --benchmark-columns=min,median,mean,rounds

Every step = clear the input's gradient + forward + backward of a shared random cotangent, on identical
seeded inputs.  fastsort runs through its torchsort drop-in (``fastsort.compat.torchsort``: the numba
kernels for float32 CPU tensors), torchsort through its C++ extension.  Groups:

* ``soft_rank`` / ``soft_sort``, l2, strength 1, at ``[256, 100]``, ``[256, 1000]``, ``[1, 5000]`` and
  ``[16, 10000]``; kl at ``[256, 1000]``.

The numba kernels compile on their first call (or load from numba's on-disk cache): a warm-up call,
timed once and printed at the end of the run with the speedups (median and min, torchsort / fastsort),
is not part of any timed step.  The torchsort rows skip without torchsort (build it from source: see
benchmarks/README.md).

pytest-benchmark times all of one library's rounds, then all of the other's: on a machine whose load
changes from second to second the two medians can come from different loads (a loaded run on this VM,
2026-12-08, gave soft_sort [1, 5000] 1.57x by medians and 2.27x by minima; the run after it 2.63x and
2.22x).  The script form alternates the two libraries' steps one by one, so both see the same load::

    python benchmarks/test_bench_permutahedron.py [--seconds 2] [--only "[1, 5000]"]   # the ratio table
"""
import os
import statistics
import time

import torch

import cpu_cases as cc  # noqa: E402  (benchmarks/ is on sys.path: the script's directory, or pytest's prepend import)

SIZES = [(256, 100), (256, 1000), (1, 5000), (16, 10000)]
CASES = [(op, "l2", R, n) for op in ("soft_rank", "soft_sort") for R, n in SIZES] + \
    [(op, "kl", 256, 1000) for op in ("soft_rank", "soft_sort")]

_RESULTS = {}  # (case) -> {lib: (median s, min s)}
_JIT = {}


def _import_torchsort():
    try:
        import torchsort
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return torchsort


def make_step(module, op, reg, R, n):
    """The timed step of ``module.<op>`` (``fastsort.compat.torchsort`` or ``torchsort``) on seeded rows
    ``[R, n]`` (:func:`cpu_cases.rows_step`: clear the gradient, forward, backward of a fixed random
    cotangent; ``step(check=True)`` returns ``sum(out * G)``)."""
    fn = getattr(module, op)
    return cc.rows_step(lambda x: fn(x, reg), R, n, out_shape=(R, n))


def ratio_table(seconds: float = 2.0, only: str = "") -> list:
    """Per case ``(case, torchsort ms, fastsort ms, speedup by minima, speedup by medians)``: the two
    libraries' steps alternate one by one for about ``seconds`` per case after a warm-up."""
    from fastsort.compat import torchsort as compat

    torchsort = _import_torchsort()
    if torchsort is None:
        raise SystemExit("torchsort is not installed (build it from source: see benchmarks/README.md)")
    rows = []
    for op, reg, R, n in CASES:
        case = f"{op} {reg} [{R}, {n}]"
        if only and only not in case:
            continue
        steps = {"torchsort": make_step(torchsort, op, reg, R, n), "fastsort": make_step(compat, op, reg, R, n)}
        times = {lib: [] for lib in steps}
        for s in steps.values():
            s()  # warm-up (compilation or numba's cache, lazy imports)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times["fastsort"]) < 5:
            for lib, s in steps.items():
                t0 = time.perf_counter()
                s()
                times[lib].append(time.perf_counter() - t0)
        ts, fs = times["torchsort"], times["fastsort"]
        rows.append((case, statistics.median(ts) * 1e3, statistics.median(fs) * 1e3, min(ts) / min(fs),
                     statistics.median(ts) / statistics.median(fs), len(fs)))
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per case, both libraries together")
    parser.add_argument("--only", default="", help="only the cases whose name contains this")
    args = parser.parse_args()
    print(f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'all cores')}; the two steps alternate")
    print("| case (fwd+bwd) | torchsort ms (median) | fastsort ms (median) | speedup (min) | speedup (median) | rounds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for case, ts, fs, rmin, rmed, rounds in ratio_table(args.seconds, args.only):
        print(f"| {case} | {ts:.3f} | {fs:.3f} | {rmin:.2f}x | {rmed:.2f}x | {rounds} |", flush=True)
    raise SystemExit(0)

import pytest  # noqa: E402  (collected by pytest: the script form above needs no pytest-benchmark)

pytest.importorskip("pytest_benchmark")

HAVE_TORCHSORT = _import_torchsort() is not None
LIBS = ["fastsort", pytest.param("torchsort", marks=pytest.mark.skipif(not HAVE_TORCHSORT,
                                                                       reason="torchsort not installed"))]


@pytest.fixture(scope="module")
def fastsort_compat(request):
    """``fastsort.compat.torchsort``, its numba kernels compiled (or loaded from the on-disk cache) by one
    timed warm-up call of every operator and regularization, forward and backward."""
    from fastsort.compat import torchsort as compat

    x = torch.randn(4, 64, requires_grad=True)
    t0 = time.perf_counter()
    for op in ("soft_rank", "soft_sort"):
        for reg in ("l2", "kl"):
            getattr(compat, op)(x, reg).sum().backward()
    _JIT["first call s"] = time.perf_counter() - t0
    return compat


class _Summary:
    """A plugin registered for this run: prints the speedups after pytest-benchmark's tables."""

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        tr.section("fastsort permutahedron vs torchsort (speedup = torchsort time / fastsort time)")
        if _JIT:
            tr.write_line(f"numba kernels, first call of every operator (compile, or load from numba's on-disk "
                          f"cache; untimed): {_JIT['first call s']:.2f} s; "
                          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'all cores')}")
        for case, libs in _RESULTS.items():
            if "fastsort" in libs and "torchsort" in libs:
                (fm, fmin), (tm, tmin) = libs["fastsort"], libs["torchsort"]
                tr.write_line(f"{case}: fastsort {fm * 1e3:.3f} ms (min {fmin * 1e3:.3f}), torchsort "
                              f"{tm * 1e3:.3f} ms (min {tmin * 1e3:.3f}); speedup {tm / fm:.2f}x median, "
                              f"{tmin / fmin:.2f}x min")


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    plugin = _Summary()
    if not request.config.pluginmanager.is_registered(plugin):
        request.config.pluginmanager.register(plugin, "fastsort-permutahedron-summary")
    yield


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("op,reg,R,n", CASES)
def test_permutahedron_cpu(benchmark, fastsort_compat, lib, op, reg, R, n):
    case = f"{op} {reg} [{R}, {n}] fwd+bwd"
    benchmark.group = case
    step = make_step(fastsort_compat if lib == "fastsort" else _import_torchsort(), op, reg, R, n)
    benchmark.extra_info["check"] = float(step(check=True))  # (and the warm-up: lazy imports, torchsort's first call)
    benchmark(step)
    if benchmark.stats is not None:  # (None under --benchmark-disable: the step ran once, untimed)
        stats = benchmark.stats.stats
        _RESULTS.setdefault(case, {})[lib] = (stats.median, stats.min)
