"""``python benchmarks/run.py --quick`` (the benchmark report) runs and writes what it promises.

One run of the quick mode in a subprocess (~30-60 s on 2 shared cores), then checks on its
output: exit status 0; the markdown table with its machine header on stdout; a row for every
op x method of the registry (so a new method shows up without touching this file) and for the
floors; the JSON's schema (header keys, every measured number positive, both modes for every
fastsort method); no peer or kernel backend that disagrees with fastsort's torch backend; a
non-empty PNG per op.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one quick report, ~50 s on 2 cores: run by .ci/run after the default suite

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER_KEYS = {"cpu", "logical_cores", "gpu", "device", "torch", "triton", "numba", "fastsort", "peers", "commit",
               "dirty", "date", "command"}
RESULT_KEYS = {"id", "label", "kind", "op", "n", "B", "mode", "status"}
MEASURED = ("median_ms", "peak_mb", "first_call_ms")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    # as a user runs it: the kernels compiled for real (tests/conftest.py sets Triton's interpreter)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=env)
    assert proc.returncode == 0, f"run.py --quick failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    with open(out / "report.json") as f:
        data = json.load(f)
    return proc.stdout, data, out


def _rows(stdout):
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| op |")]


def test_table_and_header(report):
    stdout, data, _ = report
    assert stdout.startswith("# fastsort benchmark report"), stdout[:500]
    for field in ("**machine**", "**software**", "**git**", "**date**", "**command**", "run.py --quick"):
        assert field in stdout, field
    assert "| op | n | B | implementation | fwd+bwd ms | fwd ms |" in stdout
    labels = {(r[0], r[3]) for r in _rows(stdout)}

    import fastsort
    from fastsort.method import OPS

    for name, method in fastsort.METHODS.items():
        for op in method.ops:
            assert op in OPS
            assert (op, f"fastsort {name} [torch]") in labels, f"no row for {op} x {name}"
    for op, floor in (("sort", "torch.sort (floor)"), ("topk", "torch.topk (floor)"),
                      ("loss", "torch.nn.CrossEntropyLoss (floor)")):
        assert (op, floor) in labels
    assert " error: " not in stdout
    assert (report[2] / "report.md").read_text().strip() in stdout


def test_json_schema(report):
    _, data, _ = report
    assert data["schema"].startswith("fastsort-benchmark-report/")
    assert HEADER_KEYS <= set(data["header"]), HEADER_KEYS - set(data["header"])
    assert data["header"]["logical_cores"] >= 1 and data["header"]["device"] == "cpu"
    assert data["config"]["profile"] == "quick" and data["wall_s"] > 0
    ok = [r for r in data["results"] if r["status"] == "ok"]
    assert len(ok) >= 50
    for r in data["results"]:
        assert RESULT_KEYS <= set(r), (RESULT_KEYS - set(r), r)
        assert r["status"] in ("ok", "capped", "skipped", "error"), r
        assert r["status"] != "error", r
        assert r["n"] >= 1 and r["B"] >= 1
        if r["status"] == "ok":
            for key in MEASURED:
                assert isinstance(r[key], float) and r[key] > 0, (key, r)
        else:
            assert r["reason"], r
    import fastsort

    measured = {(r["op"], r.get("method"), r["mode"]) for r in ok
                if r["kind"] == "fastsort" and r["backend"] == "torch"}
    for name, method in fastsort.METHODS.items():
        for op in method.ops:
            for mode in ("fwd+bwd", "fwd"):
                assert (op, name, mode) in measured, f"{op} x {name} ({mode}) was not measured"
    # every peer that computes a fastsort method's function gives its result, and every kernel backend the
    # torch backend's (the table's "same result" / "DIFFERS" note)
    compared = [r for r in ok if "agrees" in r]
    assert compared, "no peer was compared with fastsort"
    bad = [(r["op"], r["id"], r["n"], r["mode"], r["check"], r["reference"]) for r in compared if not r["agrees"]]
    assert not bad, bad
    # ratios: the best peer's own ratio is 1
    for r in ok:
        if r.get("best_peer") == r["id"]:
            assert abs(r["best_peer_over_this"] - 1.0) < 1e-12


def test_plots(report):
    _, data, out = report
    assert data["plots"], "no plots written"
    with_results = {r["op"] for r in data["results"] if r["status"] == "ok"}
    assert {p[:-4] for p in data["plots"]} == with_results
    for name in data["plots"]:
        blob = (out / name).read_bytes()
        assert len(blob) > 1000 and blob.startswith(PNG_SIGNATURE), name
