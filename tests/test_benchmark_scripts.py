"""The scripts under benchmarks/ run against edgevit's API as it is today: they import it and read build results, and
no test runs them whole (each takes minutes to hours). Issue 27 turned a build's manifest into a typed record, and
all three scripts that read ``r.manifest["latency_ms"]`` broke without a test failing: a type check of the scripts
against the package now fails on such a change, and the row functions run on a real build's manifest."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory) -> Path:
    pytest.importorskip("mypy")
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(paths, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    """mypy on ``paths``, checked against the installed package (its imports followed silently)."""
    return subprocess.run([sys.executable, "-m", "mypy", *map(str, paths), "--follow-imports=silent",
                           "--ignore-missing-imports", "--no-error-summary", "--cache-dir", str(cache), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_benchmark_scripts_type_check_against_the_package(mypy_cache):
    # union-attr: build() returns None on the ranks of a torchrun job other than 0, which these scripts never are
    p = _mypy(SCRIPTS, mypy_cache, "--disable-error-code", "union-attr")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_the_type_check_catches_indexing_a_typed_record(tmp_path, mypy_cache):
    """The check above is not vacuous: the very mistake that broke the scripts fails it."""
    bad = tmp_path / "bad.py"
    bad.write_text("from edgevit.build import build\n\nr = build('vit-tiny-fmnist')\n"
                   "assert r is not None\nprint(r.manifest['latency_ms'])\n")
    p = _mypy([bad], mypy_cache)
    assert p.returncode == 1 and "not indexable" in p.stdout, p.stdout


def row_functions_read(manifest: dict) -> dict:
    """Every benchmark's row function on one build's manifest (called from the peer-column test, which builds with
    the peers these rows read)."""
    return {"recipes": _script("recipes").latency_row(manifest, "vit-tiny-fmnist", "fast"),
            "searched": _script("searched").row(manifest, "vit-tiny-fmnist", False, 12.3),
            "hog_check": _script("hog_check").ratio_of(manifest)}
