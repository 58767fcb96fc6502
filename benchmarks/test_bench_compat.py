"""CPU benchmarks of ``fastsort.compat`` against the reference packages, side by side (pytest-benchmark).

    python -m pytest benchmarks/test_bench_compat.py -q --benchmark-only
    python benchmarks/test_bench_compat.py [--rounds 7] [--only DiffSortNet]   # the ratio table

One group per compat class and size; in each, the same step runs on
``fastsort.compat.<pkg>`` and on the installed ``<pkg>`` (diffsort / difftopk
0.2.0) with identical seeded inputs: clear the input's gradient, forward,
the reference script's loss (or ``sum(out * G)`` with a fixed ``G``), backward.
The sizes come from the references' own scripts:

* ``DiffSortNet``: diffsort ``experiments/main.py`` (batch 100; MNIST/SVHN ``-n 5 -m odd_even
  -s 10``, ``-n 16 -m bitonic -s 20``, its BCE loss on the permutation matrix) and the longer
  rows n = 32 (odd-even, ``logistic_phi``) and n = 64 (bitonic);
* ``DiffTopkNet``: difftopk's README (n = 16, k = 5), the loss's network (m = 16, k = 5, B = 500)
  and CIFAR-100's 100 classes (B = 128); the dense networks (difftopk's sparse ones need
  ``torch_sparse``);
* ``TopKCrossEntropyLoss``: difftopk ``experiments/train_imagenet.py`` (B = 500, 1000 classes,
  m = 16, P_K = [.5, 0, 0, 0, .5], inverse temperature 1, or .5 for NeuralSort / SoftSort) and
  ``train_cifar100.py`` (B = 128, 100 classes, no m, ``top1_mode='smce'``); fastsort's ``bitonic``
  against difftopk's ``bitonic__non_sparse`` (the same numbers; the sparse one needs ``torch_sparse``);
* ``NeuralSort`` / ``SoftSort``: the loss's shapes (B = 500, n = 16; B = 128, n = 100), tau = 2;
* ``SmoothTopKLoss`` / ``SmoothHardTopKLoss``: ``--method smooth_hard_topk`` of both scripts
  (k = 5, tau = 1; 1000 classes at B = 500, 100 classes at B = 128).

``torch.set_num_threads(1)`` as in ``train_imagenet.py`` (and steadier on a shared machine).
pytest-benchmark runs 50 rounds of fastsort's step (sub-millisecond: 10 rounds gave a minimum
20-50% above that of 50 for the NeuralSort and SoftSort losses, two runs on this VM, 2026-12-07)
and 10 of the reference's (10-70 ms each).
The module skips itself without pytest-benchmark, and the reference rows without the references.
"""
from __future__ import annotations

import contextlib
import io
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see cpu_cases.py; before torch loads libgomp

import torch  # noqa: E402

P_K = [0.5, 0.0, 0.0, 0.0, 0.5]


def reference(pkg: str):
    """The installed reference package (``diffsort`` or ``difftopk``) or ``None``; difftopk's print about
    ``torch_sparse`` is silenced."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return __import__(pkg)
    except ImportError:
        return None


def compat(pkg: str):
    from fastsort import compat as c

    return getattr(c, pkg)


# --------------------------------------------------------------------------- the cases
# name -> (package, factory(lib module) -> callable, B, n, kind of step, extra)
def _sortnet(net, n, dist, s):
    return "diffsort", lambda lib: lib.DiffSortNet(net, n, steepness=s, distribution=dist), 100, n, "perm_bce"


def _topknet(net, n, k, B):
    return "difftopk", lambda lib: lib.DiffTopkNet(net, n, k, sparse=False, steepness=10.0), B, n, "topk"


def _loss(method, n, m, B, it, top1_mode, distribution="cauchy"):
    def build(lib):
        name = method
        if method == "bitonic" and lib.__name__ == "difftopk":
            name = "bitonic__non_sparse"  # the same numbers; difftopk's sparse bitonic needs torch_sparse
        return lib.TopKCrossEntropyLoss(name, it, P_K, n, m=m, distribution=distribution, art_lambda=0.5,
                                        top1_mode=top1_mode)
    return "difftopk", build, B, n, "loss"


def _perm(cls, n, B):
    return "difftopk", lambda lib: getattr(lib, cls)(2.0), B, n, "perm"


def _smooth(cls, C, B):
    return "difftopk", lambda lib: getattr(lib, cls)(C, 5, 1.0), B, C, "loss"


CASES = {
    "DiffSortNet odd_even n=5 (MNIST/SVHN)": _sortnet("odd_even", 5, "cauchy", 10.0),
    "DiffSortNet bitonic n=16 s=20 (MNIST)": _sortnet("bitonic", 16, "cauchy", 20.0),
    "DiffSortNet odd_even n=32 logistic_phi": _sortnet("odd_even", 32, "logistic_phi", 10.0),
    "DiffSortNet bitonic n=64": _sortnet("bitonic", 64, "cauchy", 10.0),
    "DiffTopkNet bitonic n=16 k=5 B=500": _topknet("bitonic", 16, 5, 500),
    "DiffTopkNet odd_even n=16 k=5 B=500": _topknet("odd_even", 16, 5, 500),
    "DiffTopkNet bitonic n=100 k=5 B=128": _topknet("bitonic", 100, 5, 128),
    "TopKCrossEntropyLoss bitonic ImageNet m=16": _loss("bitonic", 1000, 16, 500, 1.0, "sm"),
    "TopKCrossEntropyLoss odd_even ImageNet m=16": _loss("odd_even", 1000, 16, 500, 1.0, "sm"),
    "TopKCrossEntropyLoss bitonic logistic_phi ImageNet m=16": _loss("bitonic", 1000, 16, 500, 1.0, "sm",
                                                                     "logistic_phi"),
    "TopKCrossEntropyLoss neuralsort ImageNet m=16": _loss("neuralsort", 1000, 16, 500, 0.5, "sm"),
    "TopKCrossEntropyLoss softsort ImageNet m=16": _loss("softsort", 1000, 16, 500, 0.5, "sm"),
    "TopKCrossEntropyLoss bitonic CIFAR-100 smce": _loss("bitonic", 100, None, 128, 0.5, "smce"),
    "NeuralSort n=16 B=500": _perm("NeuralSort", 16, 500),
    "NeuralSort n=100 B=128": _perm("NeuralSort", 100, 128),
    "SoftSort n=16 B=500": _perm("SoftSort", 16, 500),
    "SoftSort n=100 B=128": _perm("SoftSort", 100, 128),
    "SmoothTopKLoss C=100 B=128": _smooth("SmoothTopKLoss", 100, 128),
    "SmoothTopKLoss C=1000 B=500": _smooth("SmoothTopKLoss", 1000, 500),
    "SmoothHardTopKLoss C=100 B=128": _smooth("SmoothHardTopKLoss", 100, 128),
    "SmoothHardTopKLoss C=1000 B=500": _smooth("SmoothHardTopKLoss", 1000, 500),
}


def make_step(case: str, lib: str):
    """One training step of ``case`` on ``lib`` (``'fastsort'`` or ``'reference'``): ``step()`` clears the
    input's gradient, runs forward and backward and returns the value whose gradient it took."""
    pkg, build, B, n, kind = CASES[case]
    mod = build(compat(pkg) if lib == "fastsort" else reference(pkg))
    g = torch.Generator().manual_seed(0)
    # unit-scale scores for the permutation BCE (steeper ones give exact 0 entries where the target is 1,
    # whose clamped log makes the value ill-conditioned), logit-like ones elsewhere
    x = ((1.0 if kind == "perm_bce" else 3.0) * torch.randn(B, n, generator=g)).requires_grad_()
    labels = torch.randint(0, n, (B,), generator=g)
    target = torch.nn.functional.one_hot(torch.randperm(n, generator=g).expand(B, n)).transpose(-2, -1).float()
    G = torch.randn(B, n, 5 if kind == "topk" else n, generator=g)

    def step():
        x.grad = None
        if kind == "loss":
            value = mod(x, labels)
        elif kind == "perm_bce":  # diffsort's experiments/main.py
            value = torch.nn.functional.binary_cross_entropy(mod(x)[1], target)
        elif kind == "topk":
            value = (mod(x)[1] * G).sum()
        else:
            value = (mod(x) * G).sum()
        value.backward()
        return value.detach()

    return step


# --------------------------------------------------------------------------- pytest-benchmark
if __name__ != "__main__":  # collected by pytest (the script form below needs no pytest-benchmark)
    import pytest

    pytest.importorskip("pytest_benchmark")

    @pytest.fixture(autouse=True, scope="module")
    def _one_thread():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    @pytest.mark.parametrize("lib", ["fastsort", "reference"])
    @pytest.mark.parametrize("case", list(CASES))
    def test_compat_vs_reference(benchmark, case, lib):
        pkg = CASES[case][0]
        if lib == "reference" and reference(pkg) is None:
            pytest.skip(f"{pkg} is not installed")
        benchmark.group = f"compat {case} (fwd+bwd)"
        step = make_step(case, lib)
        benchmark.extra_info["value"] = float(step())  # warm-up: lazy imports, caches
        benchmark.pedantic(step, rounds=10 if lib == "reference" else 50, iterations=1, warmup_rounds=1)


# --------------------------------------------------------------------------- the ratio table
def ratio_table(rounds: int = 7, only: str = "") -> list:
    """Per case ``(case, reference ms, fastsort ms, ratio)``: the two steps alternate in one process
    (``rounds`` rounds after a warm-up), each time the minimum (the least disturbed run on a shared
    machine) and the median."""
    rows = []
    for case in CASES:
        if only and only not in case:
            continue
        steps = {lib: make_step(case, lib) for lib in ("reference", "fastsort")}
        values = {lib: float(s()) for lib, s in steps.items()}  # warm-up
        times = {lib: [] for lib in steps}
        for _ in range(rounds):
            for lib, s in steps.items():
                t0 = time.perf_counter()
                s()
                times[lib].append(time.perf_counter() - t0)
        ref, fs = (min(times[lib]) * 1e3 for lib in ("reference", "fastsort"))
        med = statistics.median(times["reference"]) / statistics.median(times["fastsort"])
        rows.append((case, ref, fs, ref / fs, med, values["reference"], values["fastsort"]))
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="", help="only the cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| case | reference ms | fastsort ms | speedup (min) | speedup (median) | value ref / fastsort |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for case, ref, fs, ratio, med, vr, vf in ratio_table(args.rounds, args.only):
        print(f"| {case} | {ref:.2f} | {fs:.2f} | {ratio:.1f}x | {med:.1f}x | {vr:.6g} / {vf:.6g} |", flush=True)
