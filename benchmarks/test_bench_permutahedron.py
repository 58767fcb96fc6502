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
"""
import os
import time

import pytest

pytest.importorskip("pytest_benchmark")

import torch  # noqa: E402

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
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(R, n, generator=gen).requires_grad_()
    g = torch.randn(R, n, generator=gen)
    fn = getattr(fastsort_compat if lib == "fastsort" else _import_torchsort(), op)

    def step():
        x.grad = None
        y = fn(x, reg)
        y.backward(g)
        return y

    y = step()  # warm-up (lazy imports; torchsort's first call)
    benchmark.extra_info["check"] = float((y.detach() * g).sum())
    benchmark(step)
    stats = benchmark.stats.stats
    _RESULTS.setdefault(case, {})[lib] = (stats.median, stats.min)
