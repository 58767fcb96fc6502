"""README's quickstart commands: the ones CI runs, and the main command in a fresh virtual environment.

* ``.ci/run`` ends with README's test command, exactly (always checked);
* README's main command (install + the demo) run verbatim in a new venv made here, then README's test
  command collecting the whole suite there (every test module imports with what the install gave).
  That costs ~2 minutes and needs the package index ``.ci/run`` installs from, so it runs where
  ``FASTSORT_TEST_README_VENV=1`` (``.ci/run`` sets it) and skips elsewhere; it is marked ``slow``,
  so it runs in ``.ci/run``'s second command and the default suite stays within its time.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quickstart_commands():
    """The ``bash`` blocks of README's Quickstart section, in order: ``[main command, test command]``."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    assert len(blocks) == 2, f"README's Quickstart should hold two bash blocks (main job, tests), found {blocks}"
    return [b.strip() for b in blocks]


def test_ci_runs_the_readme_test_command():
    main, tests = quickstart_commands()
    assert "pip install" in main and "fastsort.demo" in main, main
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    commands = [line.strip() for line in tests.splitlines()]
    assert commands[0] == "python -m pytest tests -q", commands
    assert ci[-len(commands):] == commands, \
        f".ci/run should end with README's test commands {commands!r}, ends with {ci[-len(commands):]!r}"


@pytest.mark.slow  # (~2 min: in the slow part, which .ci/run runs after the default one)
@pytest.mark.skipif(os.environ.get("FASTSORT_TEST_README_VENV") != "1",
                    reason="runs README's main command in a fresh venv (~2 min): FASTSORT_TEST_README_VENV=1, "
                           "set by .ci/run")
def test_readme_main_command_in_a_fresh_venv(tmp_path):
    main, tests = quickstart_commands()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TRITON_INTERPRET", "FASTSORT_TEST_README_VENV",
                        "FASTSORT_REQUIRE_ORACLES")}  # (torchsort, built from source by .ci/run, is not in the venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    run = subprocess.run(["bash", "-c", main], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"README's main command failed (rc {run.returncode}):\n{run.stdout[-3000:]}\n" \
                                f"{run.stderr[-3000:]}"
    assert "| CrossEntropy" in run.stdout and "top-1 %" in run.stdout, run.stdout[-3000:]
    python = venv / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import fastsort, sys; sys.exit(0 if fastsort.__file__.startswith("
                           f"{str(ROOT)!r}) else 1)"], env=env).returncode == 0
    collect = subprocess.run(["bash", "-ec", tests.replace(" -q", " -q --collect-only")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert collect.returncode == 0 and re.search(r"\d+ tests collected", collect.stdout), \
        f"README's test command does not collect in the fresh venv:\n{collect.stdout[-3000:]}\n{collect.stderr[-2000:]}"
