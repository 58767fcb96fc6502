"""CPU benchmarks: fastsort vs difftopk side by side (pytest-benchmark).

    python -m pytest benchmarks -q --benchmark-only
    python -m pytest benchmarks -q --benchmark-only --benchmark-columns=min,median,mean,rounds

Groups (each compares fastsort with difftopk on identical seeded inputs; every
step = clear the input's gradient + forward + backward):

* ``loss m=16 <method>``: ``TopKCrossEntropyLoss``, B = 500, 1000 classes,
  m = 16, P_K = [.5, 0, 0, 0, .5], inverse_temperature = 1; bitonic vs
  difftopk ``bitonic__non_sparse``, odd-even vs difftopk ``odd_even``, and
  ``torch.nn.CrossEntropyLoss`` on the same logits (the floor: the goal is
  fastsort within 2x of it);
* ``soft_topk full n=1024 B=<b>``: top-5 rows of the full-n bitonic relaxed
  permutation (steepness 10) vs difftopk's dense ``DiffTopkNet``; b is
  ``$FASTSORT_BENCH_FULL_B`` (default 8: difftopk's step costs ~10 s and ~2 GB
  of tensors there, linear in B; the issue's B = 64 costs ~1-2 min and ~15 GB),
  plus fastsort alone at B = 64.  Their peak memory is measured in a fresh
  subprocess (``cpu_cases.py``), stored in the benchmark's ``extra_info``
  (``--benchmark-json``) and printed at the end of the run.

The module skips itself without pytest-benchmark (the GPU machine), and the
difftopk rows skip without difftopk.
"""
import os

import pytest

pytest.importorskip("pytest_benchmark")

import cpu_cases as cc  # noqa: E402  (benchmarks/ is on sys.path: pytest's rootdir-less "prepend" import)
import torch  # noqa: E402

FULL_B = int(os.environ.get("FASTSORT_BENCH_FULL_B", cc.FULL_B_COMPARE))
HAVE_DIFFTOPK = cc.import_difftopk() is not None
LIBS = ["fastsort", pytest.param("difftopk", marks=pytest.mark.skipif(not HAVE_DIFFTOPK, reason="difftopk not installed"))]


@pytest.mark.parametrize("lib", LIBS + ["cross_entropy"])
@pytest.mark.parametrize("method", ["bitonic", "odd_even"])
def test_loss_m16(benchmark, lib, method):
    benchmark.group = f"loss m=16 {method} (B={cc.LOSS['B']}, C={cc.LOSS['C']}, fwd+bwd)"
    torch.manual_seed(0)
    step = cc.loss_step(cc.loss_module(lib, method))
    loss = step()  # warm-up: lazy imports, network tables
    benchmark.extra_info["loss"] = float(loss)
    benchmark(step)


def _full(benchmark, request, lib, B, rounds):
    benchmark.group = f"soft_topk full n={cc.FULL['n']} k={cc.FULL['k']} B={B} (fwd+bwd)"
    peak = cc.run_probe(dict(lib=lib, case="full", B=B, min_reps=0, max_reps=0))
    request.config._fastsort_peaks.append((f"soft_topk full n=1024 B={B} {lib}", peak))
    if "error" not in peak:
        benchmark.extra_info.update(peak_mb=peak["peak_mb"], peak_rss_mb=peak["peak_rss_mb"],
                                    setup_mb=peak["setup_mb"])
    step = cc.topk_step(cc.topk_module(lib), B=B)
    benchmark.extra_info["check"] = float(step(check=True))  # warm-up
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("lib", LIBS)
def test_full_n(benchmark, request, lib):
    _full(benchmark, request, lib, FULL_B, rounds=1 if lib == "difftopk" else 5)


@pytest.mark.skipif(FULL_B == cc.FULL_B, reason="already measured by test_full_n")
def test_full_n_fastsort_b64(benchmark, request):
    _full(benchmark, request, "fastsort", cc.FULL_B, rounds=3)


# --------------------------------------------------------------------------- Sinkhorn (CPU torch path)
SINKHORN_B = int(os.environ.get("FASTSORT_BENCH_SINKHORN_B", 256))  # B = 4096 is the GPU table's size


@pytest.mark.parametrize("what", ["soft_topk k=5", "loss m=16", "loss full n"])
def test_sinkhorn_cpu(benchmark, what):
    """Sinkhorn on the CPU torch path (epsilon 0.1), x = [B, 1000], fwd+bwd; the GPU table has the
    Triton vs torch comparison at B = 4096."""
    import fastsort

    benchmark.group = f"sinkhorn CPU torch path, B={SINKHORN_B}, n=1000 (fwd+bwd)"
    torch.manual_seed(0)
    x = torch.randn(SINKHORN_B, 1000, requires_grad=True)
    y = torch.randint(0, 1000, (SINKHORN_B,))
    g = torch.randn(SINKHORN_B, 5, 1000)

    def step():
        x.grad = None
        if what == "soft_topk k=5":
            out = (fastsort.soft_topk(x, 5, "sinkhorn", epsilon=0.1, backend="torch") * g).sum()
        else:
            out = fastsort.topk_cross_entropy(x, y, [0.5, 0, 0, 0, 0.5], "sinkhorn", inverse_temperature=10.0,
                                              m=16 if what == "loss m=16" else None, backend="torch")
        out.backward()
        return out

    benchmark.extra_info["value"] = float(step())
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=0)
