#!/usr/bin/env bash
# benchmarks/gpu_check.sh LOGDIR -- the one-command GPU check of fastsort.
#
# Run from anywhere on the GPU machine (it cd's to the repository root):
#
#     bash benchmarks/gpu_check.sh "$OUT"
#
# 1. prints `nvidia-smi -L` and the python / torch / triton / CUDA versions;
# 2. installs what is missing, offline: wheels in ./.whl/ (diffsort, difftopk,
#    pytest-xdist, execnet, setuptools>=77 for the build: `pip download --no-deps -d .whl
#    diffsort==0.2.0 difftopk==0.2.0 pytest-xdist execnet "setuptools>=77"`) with
#    `pip install --no-deps --no-index`, then fastsort itself
#    (`pip install --no-deps --no-build-isolation -e .`) unless this checkout's
#    fastsort (with its `fastsort.kernels`) already imports;
# 3. runs the test suite on the GPU (FASTSORT_TEST_DEVICE=cuda: the kernel tests
#    compile for real instead of using Triton's interpreter) -> LOGDIR/tests.log;
#    pytest arguments: $FASTSORT_PYTEST_ARGS (default "-n 8 -q --durations=15" when
#    pytest-xdist imports -- its wheel is in .whl/ -- else "-x -q --durations=15": most of
#    the suite's GPU time is Triton compiling kernel variants, which parallelises on CPUs);
# 4. runs the benchmark table (even when tests failed) -> LOGDIR/bench.md, its
#    progress and tracebacks -> LOGDIR/bench.log;
# 5. profiles the goal cases (kernel time vs host overhead, kernel table)
#    -> LOGDIR/profile.log (`benchmarks/gpu_profile.py`; informative, not in the exit code);
# 6. prints a summary; exits 0 only when both the tests and the benchmark passed
#    (1 = tests failed, 2 = benchmark failed or had error rows, 3 = both).
# Time limits (s), together under the 8 minutes the check may take: FASTSORT_TEST_TIMEOUT=210,
# FASTSORT_BENCH_TIMEOUT=180, FASTSORT_PROFILE_TIMEOUT=60 (0 skips the profile).
set -u

if [ "$#" -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh LOGDIR" >&2
    exit 64
fi
mkdir -p "$1" || exit 64
LOGDIR=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 64
REPO=$(pwd)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
T0=$(date +%s)

echo "== gpu_check: repo $REPO, logs in $LOGDIR, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
nvidia-smi -L 2>&1 || echo "(nvidia-smi not available)"
"$PY" - <<'EOF' 2>&1
import platform, sys
print("python", platform.python_version(), sys.executable)
try:
    import torch
    print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available(),
          "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no device")
except Exception as e:
    print("torch: import failed:", e)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: import failed:", e)
EOF

# ---------------------------------------------------------------- install (offline)
if ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing wheels from .whl/: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
    "$PY" -m pip install --no-deps --no-index .whl/*.whl 2>&1 | tail -n 3
fi
fastsort_ok() {
    # this checkout's fastsort, including fastsort.kernels (mapped from ./kernels by the install)
    "$PY" -c "
import sys, os
import fastsort, fastsort.kernels
ok = os.path.realpath(fastsort.kernels.__file__).startswith(os.path.realpath('$REPO') + os.sep)
sys.exit(0 if ok else 1)" >/dev/null 2>&1
}
if ! fastsort_ok; then
    echo "== installing fastsort (editable, no deps, no build isolation)"
    "$PY" -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
    fastsort_ok || echo "!! fastsort still does not import from $REPO (see the pip output above)"
fi
"$PY" -c "import fastsort; print('fastsort', fastsort.__version__, 'from', fastsort.__file__)" 2>&1
"$PY" -c "
import contextlib, io
for name in ('diffsort', 'difftopk', 'pytest_benchmark'):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            __import__(name)
        print(name, 'ok', end='; ')
    except Exception as e:
        print(name, 'MISSING', end='; ')
print()" 2>&1

# ---------------------------------------------------------------- tests
if [ -z "${FASTSORT_PYTEST_ARGS:-}" ]; then
    if "$PY" -c "import xdist" >/dev/null 2>&1; then
        FASTSORT_PYTEST_ARGS="-n 8 -q --durations=15"
    else
        FASTSORT_PYTEST_ARGS="-x -q --durations=15"
    fi
fi
echo "== tests: FASTSORT_TEST_DEVICE=cuda $PY -m pytest tests $FASTSORT_PYTEST_ARGS"
T1=$(date +%s)
# shellcheck disable=SC2086  # the extra arguments are meant to be word-split
FASTSORT_TEST_DEVICE=cuda timeout "${FASTSORT_TEST_TIMEOUT:-210}" "$PY" -m pytest tests $FASTSORT_PYTEST_ARGS 2>&1 \
    | tee "$LOGDIR/tests.log"
TEST_RC=${PIPESTATUS[0]}
T2=$(date +%s)

# ---------------------------------------------------------------- benchmark
echo "== benchmark: $PY benchmarks/gpu_bench.py --require-cuda (table -> bench.md, progress -> bench.log)"
timeout "${FASTSORT_BENCH_TIMEOUT:-180}" "$PY" benchmarks/gpu_bench.py --require-cuda 2>"$LOGDIR/bench.log" | tee "$LOGDIR/bench.md"
BENCH_RC=${PIPESTATUS[0]}
T3=$(date +%s)
if [ "$BENCH_RC" -ne 0 ]; then
    echo "-- last lines of bench.log:"
    tail -n 30 "$LOGDIR/bench.log"
fi

# ---------------------------------------------------------------- profile
PROFILE_TIMEOUT=${FASTSORT_PROFILE_TIMEOUT:-60}
if [ "$PROFILE_TIMEOUT" -gt 0 ]; then
    echo "== profile: $PY benchmarks/gpu_profile.py -> profile.log"
    timeout "$PROFILE_TIMEOUT" "$PY" benchmarks/gpu_profile.py >"$LOGDIR/profile.log" 2>&1
    echo "profile rc=$? -- per step:"
    grep -E '^(## |host us)' "$LOGDIR/profile.log" | paste - - || true
fi
T4=$(date +%s)

# ---------------------------------------------------------------- summary
echo
echo "== summary"
echo "tests:     rc=$TEST_RC in $((T2 - T1)) s -- $(grep -E '(passed|failed|error|skipped)' "$LOGDIR/tests.log" | tail -n 1)"
echo "benchmark: rc=$BENCH_RC in $((T3 - T2)) s"
grep -E '^- .*(PASS|FAIL|n/a)' "$LOGDIR/bench.md" || true
echo "total $((T4 - T0)) s; logs: $LOGDIR/tests.log $LOGDIR/bench.md $LOGDIR/bench.log $LOGDIR/profile.log"
RC=0
[ "$TEST_RC" -ne 0 ] && RC=$((RC + 1))
[ "$BENCH_RC" -ne 0 ] && RC=$((RC + 2))
exit "$RC"
