"""CPU benchmarks of the compiled CPU kernels (numba) next to what they replace (pytest-benchmark).

    python -m pytest benchmarks/test_bench_cpu_kernels.py -q --benchmark-only \\
        --benchmark-columns=min,median,mean,rounds
    FASTSORT_BENCH_HOG=1 python -m pytest benchmarks/test_bench_cpu_kernels.py ...  # a busy machine

Every step = clear the input's gradient + forward + backward, on the same seeded inputs in every
row of a group:

* ``loss <method>``: top-k cross-entropy with top-m preselection, B = 500, 1000 classes, m = 16,
  P_K = [.5, 0, 0, 0, .5], inverse_temperature = 2, cauchy: the fused CPU kernel
  (``fastsort.kernels.cpu_topk_loss`` behind an autograd function, mean reduction inside, as the
  library's op does), ``torch.nn.functional.cross_entropy``, fastsort's torch path
  (``backend="torch"``) and ``difftopk.TopKCrossEntropyLoss``;
* ``soft_topk full``: the top-5 rows of the bitonic relaxed permutation of n = 1024 (steepness 10)
  for B = 8 rows, through ``network_fwd`` / ``network_bwd`` with the top-k block, and through the
  torch backend;
* ``soft_rank``: bitonic soft ranks of [256, 1000] rows (the block of ranks 1..n), kernels vs the
  torch backend.

Threads: torch's default (``torch.get_num_threads()``), numba's default
(``numba.get_num_threads()``).  With ``FASTSORT_BENCH_HOG=1`` a second process spins
(``while True: pass``) for the whole module: the timings of a machine with one core taken.
The module skips itself without pytest-benchmark or numba; the difftopk rows skip without difftopk.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("pytest_benchmark")
pytest.importorskip("numba")

import cpu_cases as cc  # noqa: E402  (benchmarks/ is on sys.path: pytest's rootdir-less "prepend" import)
import torch  # noqa: E402

from fastsort.kernels import cpu_network, cpu_topk_loss  # noqa: E402
from fastsort.losses import rank_weights  # noqa: E402
from fastsort.networks import get_network, network_apply, sweep_init  # noqa: E402
from fastsort.networks.ops import Relaxation  # noqa: E402

HAVE_DIFFTOPK = cc.import_difftopk() is not None
P_K = [0.5, 0.0, 0.0, 0.0, 0.5]
LOSS = dict(B=500, C=1000, m=16, inverse_temperature=2.0)


@pytest.fixture(scope="module", autouse=True)
def hog():
    """With ``FASTSORT_BENCH_HOG=1``: a CPU-bound process for the module's duration."""
    if os.environ.get("FASTSORT_BENCH_HOG", "0") in ("", "0"):
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- the launchers as autograd functions
class _FusedLoss(torch.autograd.Function):
    """The fused CPU loss with the mean inside: one kernel forward, one scatter backward."""

    @staticmethod
    def forward(ctx, logits, labels, kind):
        c = rank_weights(P_K, "sm")
        m = LOSS["m"]
        table = get_network(kind, m)
        out, idx = cpu_topk_loss.topk_ce_fwd(logits, labels, tuple(c), table,
                                             ("cauchy", LOSS["inverse_temperature"], 0.25), m, "sm", P_K[0],
                                             sum(P_K[1:]), True)
        ctx.save_for_backward(out, idx)
        ctx.n_classes = logits.shape[1]
        return out[:, 0].mean()

    @staticmethod
    def backward(ctx, g):
        out, idx = ctx.saved_tensors
        dx = cpu_topk_loss.topk_ce_bwd(out, idx, g, ctx.n_classes, torch.float32, 1.0 / out.shape[0], col0=1)
        return dx, None, None


class _Network(torch.autograd.Function):
    """``S0 = X init`` of the network through the CPU kernels (values discarded)."""

    @staticmethod
    def forward(ctx, x, table, init, relax):
        _, S0, saved = cpu_network.network_fwd(x, table, init, relax, True)
        ctx.saved, ctx.table, ctx.relax = saved, table, relax
        return S0

    @staticmethod
    def backward(ctx, gS0):
        return cpu_network.network_bwd(ctx.saved, ctx.table, ctx.relax, None, gS0), None, None, None


# --------------------------------------------------------------------------- (a) the loss
LOSS_LIBS = ["numba", "cross_entropy", "torch",
             pytest.param("difftopk", marks=pytest.mark.skipif(not HAVE_DIFFTOPK, reason="difftopk not installed"))]


def _loss_fn(lib, method):
    if lib == "numba":
        return lambda logits, labels: _FusedLoss.apply(logits, labels, method)
    if lib == "cross_entropy":
        return torch.nn.functional.cross_entropy
    if lib == "torch":
        return cc.loss_module("fastsort", method, inverse_temperature=LOSS["inverse_temperature"], backend="torch")
    return cc.loss_module("difftopk", method, inverse_temperature=LOSS["inverse_temperature"])


@pytest.mark.parametrize("lib", LOSS_LIBS)
@pytest.mark.parametrize("method", ["bitonic", "odd_even"])
def test_loss(benchmark, lib, method):
    benchmark.group = f"loss {method} (B={LOSS['B']}, C={LOSS['C']}, m={LOSS['m']}, fwd+bwd)"
    step = cc.loss_step(_loss_fn(lib, method), B=LOSS["B"], C=LOSS["C"])
    benchmark.extra_info["loss"] = float(step())  # warm-up: compilation, tables
    if lib in ("numba", "torch"):  # the fused kernel computes the torch path's loss
        ref = cc.loss_step(_loss_fn("torch" if lib == "numba" else "numba", method), B=LOSS["B"], C=LOSS["C"])()
        assert abs(benchmark.extra_info["loss"] - float(ref)) < 1e-4
    benchmark(step)


# --------------------------------------------------------------------------- (b) full-n top-k, (c) soft ranks
NETWORK_LIBS = ["numba", "torch"]


def _rows_fn(lib, n, init):
    table = get_network("bitonic", n)
    relax = ("cauchy", 10.0, 0.25)
    if lib == "numba":
        return lambda x: _Network.apply(x, table, init, relax)
    return lambda x: network_apply(x, init, "bitonic", None, Relaxation(*relax), "torch")[1]


@pytest.mark.parametrize("lib", NETWORK_LIBS)
def test_soft_topk_full(benchmark, lib):
    n, k, B = 1024, 5, 8
    benchmark.group = f"soft_topk full bitonic n={n} k={k} B={B} (fwd+bwd)"
    init = sweep_init("topk", n, k, torch.float32, "cpu")
    step = cc.rows_step(_rows_fn(lib, n, init), B, n, (B, k, n))
    benchmark.extra_info["check"] = float(step(check=True))
    benchmark(step)


@pytest.mark.parametrize("lib", NETWORK_LIBS)
def test_soft_rank(benchmark, lib):
    B, n = 256, 1000
    benchmark.group = f"soft_rank bitonic [{B}, {n}] (fwd+bwd)"
    init = sweep_init("ranks", n, n, torch.float32, "cpu")
    step = cc.rows_step(_rows_fn(lib, n, init), B, n, (B, 1, n))
    benchmark.extra_info["check"] = float(step(check=True))
    benchmark.pedantic(step, rounds=10 if lib == "numba" else 3, iterations=1, warmup_rounds=1)
