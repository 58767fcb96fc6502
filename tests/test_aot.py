"""Ahead-of-time compilation of every Triton kernel variant for sm_80 and sm_90, no GPU needed.

Triton's interpreter (what the other kernel tests run under on CPU) accepts
code that the real compiler rejects, so this file runs
``python -m fastsort.kernels.aot`` in a subprocess *without*
``TRITON_INTERPRET`` (the ``FASTSORT_*`` environment is passed through
untouched), and gives each ``(variant, arch)`` its own test, which shows the
compiler's error.  The variant list (``fastsort.kernels.aot.variants()``) must
cover every kernel of the kernel modules.

Cost: the first variant of every kernel (its code compiled once per arch), ~30 s on 2 cores with a
cold Triton cache, in the default run; the other variants (~290 compiles in all, ~200 s cold) are
marked ``slow`` (``.ci/run`` runs them after the default suite).
Skipped on the GPU run (``FASTSORT_TEST_DEVICE=cuda``), where every kernel is
compiled for real by the other tests.
"""
import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

if os.environ.get("FASTSORT_TEST_DEVICE", "cpu") == "cuda":
    pytest.skip("FASTSORT_TEST_DEVICE=cuda: the GPU run compiles every kernel for real", allow_module_level=True)
pytest.importorskip("triton", reason="the AOT compile check needs the `triton` package")

import triton.runtime.interpreter  # noqa: E402
import triton.runtime.jit  # noqa: E402

from fastsort.kernels import aot  # noqa: E402

ARCHS = (80, 90)
TIMEOUT_S = 900
# listing the variants imports the kernel modules: fine under the interpreter
VARIANTS = aot.variants()
FIRST = {tid for _, tid in aot.variants("first")}


def _run_driver(part):
    """``{"<variant>@sm<arch>": None | error}`` from one run of the AOT driver on ``part``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        proc = subprocess.run([sys.executable, "-m", "fastsort.kernels.aot", "--part", part, "--arch",
                               *map(str, ARCHS)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"python -m fastsort.kernels.aot did not finish within {TIMEOUT_S} s")
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"python -m fastsort.kernels.aot (exit {proc.returncode}) printed no JSON report\n"
                    f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    if proc.returncode not in (0, 1) or (proc.returncode == 1) != any(v is not None for v in report.values()):
        pytest.fail(f"unexpected exit status {proc.returncode} for the report; stderr:\n{proc.stderr[-3000:]}")
    return report


@pytest.fixture(scope="session")
def aot_first():
    return _run_driver("first")


@pytest.fixture(scope="session")
def aot_rest():
    return _run_driver("rest")


@pytest.mark.parametrize("test_id,part", [
    pytest.param(f"{tid}@sm{arch}", "first") if tid in FIRST else
    pytest.param(f"{tid}@sm{arch}", "rest", marks=pytest.mark.slow)
    for _, tid in VARIANTS for arch in ARCHS])
def test_variant_compiles(test_id, part, request):
    report = request.getfixturevalue(f"aot_{part}")
    assert test_id in report, f"{test_id} missing from the AOT report"
    err = report[test_id]
    assert err is None, f"{test_id} failed to compile:\n{err}"


@pytest.mark.parametrize("part", ["first", pytest.param("rest", marks=pytest.mark.slow)])
def test_report_has_exactly_the_variants(part, request):
    report = request.getfixturevalue(f"aot_{part}")
    assert set(report) == {f"{tid}@sm{arch}" for _, tid in aot.variants(part) for arch in ARCHS}


def test_parts_split_the_variants():
    """Variant ids are unique; ``first`` holds exactly one variant of every kernel, and ``first`` +
    ``rest`` are all of them."""
    assert len({tid for _, tid in VARIANTS}) == len(VARIANTS), "variant ids are not unique across the kernel modules"
    first, rest = aot.variants("first"), aot.variants("rest")
    assert sorted(first + rest) == sorted(VARIANTS) and not set(first) & set(rest)
    kernels = {(mod, fn.fn.__name__) for mod in aot.MODULES for _, fn, *_ in importlib.import_module(mod).aot_variants()}
    assert len(first) == len(kernels)


# --------------------------------------------------------------------------- coverage of the kernels
JIT_TYPES = (triton.runtime.jit.JITFunction, triton.runtime.interpreter.InterpretedFunction)
JIT_MODULES = aot.MODULES + ("fastsort.kernels.relaxations",)  # relaxations: device functions only


def _jit_functions(module_name):
    """``{name: fn}`` of the ``@triton.jit`` functions defined in ``module_name`` (under the interpreter
    ``triton.jit`` returns an ``InterpretedFunction``, else a ``JITFunction``)."""
    module = importlib.import_module(module_name)
    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, JIT_TYPES) and getattr(obj.fn, "__module__", None) == module_name}


def _called_from_jit_code():
    """Names called inside the bodies of all ``@triton.jit`` functions of the kernel modules."""
    called = set()
    for mod in JIT_MODULES:
        for fn in _jit_functions(mod).values():
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn.fn)))
            called |= {node.func.id for node in ast.walk(tree)
                       if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    return called


@pytest.mark.parametrize("module_name", aot.MODULES)
def test_variants_cover_every_kernel(module_name):
    """Every kernel (``@triton.jit`` function named ``*_kernel``) has at least one AOT variant, and
    every variant's signature lists exactly the kernel's arguments, its constexprs marked."""
    jit = _jit_functions(module_name)
    kernels = {name for name in jit if name.endswith("_kernel")}
    assert kernels, f"no kernel found in {module_name}"
    variants = importlib.import_module(module_name).aot_variants()
    covered = {fn.fn.__name__ for _, fn, _, _ in variants}
    assert not kernels - covered, f"{module_name}: kernels without an AOT variant: {sorted(kernels - covered)}"
    assert covered <= kernels, f"{module_name}: variants of non-kernels {sorted(covered - kernels)}"
    for test_id, fn, signature, constexprs in variants:
        assert list(signature) == fn.arg_names, f"{test_id}: signature keys != the kernel's arguments"
        assert {k for k, v in signature.items() if v == "constexpr"} == set(constexprs), test_id


@pytest.mark.parametrize("module_name", JIT_MODULES)
def test_other_jit_functions_are_helpers(module_name):
    """A ``@triton.jit`` function without the ``_kernel`` suffix must be a device helper called from
    jit code (``relax``, ``atan``, ``_key``, ...): otherwise it is a kernel that escapes the AOT
    check above, or dead code."""
    helpers = {name for name in _jit_functions(module_name) if not name.endswith("_kernel")}
    uncalled = helpers - _called_from_jit_code()
    assert not uncalled, f"{module_name}: jit functions neither named *_kernel nor called from jit code: " \
                         f"{sorted(uncalled)}"


# --------------------------------------------------------------------------- code-shape guard
_GATHER_PROBE = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastsort.kernels import network
out = {}
for tid, fn, sig, const in network.aot_variants():
    if "cauchy" in tid or "sweep" in tid:
        const = dict(const, NP=1024, **({"ROWS": 1} if "ROWS" in const else {}))
        # 16 warps: what the launchers pick for such rows on a small grid (e.g. B = 64)
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 16})
        ranks = [len(shape.split("x")) - 1 for shape in re.findall(r'"?tt\.gather"?.*?-> tensor<([0-9x]+)', k.asm["ttir"])]
        out[tid] = ranks
print(json.dumps(out))
"""


def test_network_kernels_gather_in_one_dimension():
    """The network kernels' ``tl.gather`` must act on flat 1-D tiles: Triton lowers a 1-D gather through
    shared memory, but gives a gather along an axis of a 2-D tensor a warp-local layout with
    ``(n / 32)^2`` shuffles per thread (1024 per layer at n = 1024, the cause of a 25x slowdown found in
    the sm_90 SASS).  Compiles the variants at n = 1024 (one row, 16 warps: the launch configuration
    of a small batch) and reads the gathers' result types."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _GATHER_PROBE], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ranks and all(ranks.values()), f"no gathers found: {ranks}"
    assert all(r == 1 for rs in ranks.values() for r in rs), f"gathers on tensors of rank > 1: {ranks}"
