"""Packaging: every package of the source tree is installed, ``kernels/`` only as ``fastsort.kernels``."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def _setuptools_config():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_directory_is_listed():
    cfg = _setuptools_config()
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fastsort").rglob("__init__.py")}
    found |= {"fastsort.kernels"}
    assert set(cfg["packages"]) == found


def test_kernels_install_under_fastsort_only():
    cfg = _setuptools_config()
    assert cfg["package-dir"]["fastsort.kernels"] == "kernels"
    assert "kernels" not in cfg["packages"]
