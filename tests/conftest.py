"""Test configuration.

The Triton kernels are tested on CPU tensors through Triton's interpreter, so
``TRITON_INTERPRET=1`` must be set before anything imports triton: it is set
here, at the very top, unless the suite runs on a GPU
(``FASTSORT_TEST_DEVICE=cuda``, as ``benchmarks/gpu_check.sh`` does), where
the kernels are compiled for real.
"""
import os

DEVICE = os.environ.get("FASTSORT_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_report_header(config):
    return f"fastsort tests on device={DEVICE}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"


@pytest.fixture
def device():
    """The device the kernel tests run on: CPU (interpreter) in CI, CUDA on a GPU machine."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("FASTSORT_TEST_DEVICE=cuda but no CUDA device")
    return torch.device(DEVICE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def gpu_launch_configs(monkeypatch):
    """Run the Triton launchers with the launch configurations they pick on a GPU (rows per
    program, column blocks, warps) while the kernels stay in the interpreter: the constexpr
    variants the GPU compiles are then checked on CPU too.  Pointless on CUDA (already real)."""
    if DEVICE != "cpu":
        pytest.skip("on CUDA the launchers use their GPU configurations anyway")
    from fastsort.kernels import launch, topk_loss

    for module in (launch, topk_loss):
        monkeypatch.setattr(module, "interpreting", lambda: False)


#: the oracle packages the suite checks fastsort against; ``FASTSORT_REQUIRE_ORACLES=1`` (set by
#: ``.ci/run``) turns a skip for a missing one into a failure, so CI never passes without them
ORACLES = ("diffsort", "difftopk", "torchsort", "scipy")
REQUIRE_ORACLES = os.environ.get("FASTSORT_REQUIRE_ORACLES", "0") not in ("", "0")


def _missing_oracle(report) -> bool:
    if not (REQUIRE_ORACLES and report.skipped):
        return False
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    return "could not import" in reason and any(f"'{name}" in reason for name in ORACLES)


def _fail_missing_oracle(report) -> None:
    if _missing_oracle(report):
        report.outcome = "failed"
        report.longrepr = f"FASTSORT_REQUIRE_ORACLES=1 and an oracle package is missing: {report.longrepr}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    _fail_missing_oracle(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_missing_oracle(report)
    return report
