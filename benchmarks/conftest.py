"""pytest configuration of the CPU benchmarks (``python -m pytest benchmarks --benchmark-only``).

``python -m pytest tests`` (and plain ``python -m pytest``, whose ``testpaths``
is ``tests``) never collects this folder.
"""
import os

# Before anything loads torch (libgomp): see cpu_cases.py. Applies to both libraries.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_PEAKS = []


def pytest_configure(config):
    config._fastsort_peaks = _PEAKS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _PEAKS:
        return
    tr = terminalreporter
    tr.section("peak memory of one fwd+bwd (fresh subprocess per case; see benchmarks/cpu_cases.py)")
    for name, r in _PEAKS:
        if "error" in r:
            tr.write_line(f"{name}: ERROR {r['error']}")
        else:
            tr.write_line(f"{name}: tensor peak {r['peak_mb']:.1f} MB, RSS high-water +{r['peak_rss_mb']:.0f} MB, "
                          f"module state {r['setup_mb']:.0f} MB")
