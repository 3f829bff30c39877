"""The sdist ships whole: built from this tree (no network: ``--no-isolation``), it holds every
file the test modules import or read, and its test suite collects without an import error."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = sorted((REPO / "tests").glob("*.py"))
# what a working tree holds and a fresh clone does not (build outputs, caches, runs)
_NOT_IN_A_CLONE = (".git", "*.egg-info", "__pycache__", ".*cache", ".hypothesis", ".benchmarks")
_NOT_IN_A_CLONE += ("build", "dist", "site", "runs", ".venv", "*.csv", "*.pt")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The sdist built from a copy of this tree, unpacked: its root folder. A copy without
    the egg-info of the editable install, as a fresh clone: setuptools adds every file an old
    SOURCES.txt lists, which would hide a file the manifest misses."""
    out = tmp_path_factory.mktemp("sdist")
    tree = tmp_path_factory.mktemp("clone") / "diffsample"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(*_NOT_IN_A_CLONE))
    cmd = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(out), str(tree)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (archive,) = out.glob("diffsample-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    (root,) = (p for p in out.iterdir() if p.is_dir())
    return root


def _local_imports(module: Path) -> set[str]:
    """The modules of tests/ that ``module`` imports (``from tiny import TINY``)."""
    tree = ast.parse(module.read_text())
    names = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    names |= {
        n.module.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
    }
    return {f"tests/{n}.py" for n in names if (REPO / "tests" / f"{n}.py").is_file()}


def _repo_paths(module: Path) -> set[str]:
    """The repository files ``module`` names as ``REPO / "a" / "b.py"`` (or ``parents[1] / ...``)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        parts: list[str] = []
        while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)):
                break
            parts.insert(0, node.right.value)
            node = node.left
        rooted = (isinstance(node, ast.Name) and node.id == "REPO") or (
            isinstance(node, ast.Subscript) and ast.unparse(node).endswith("parents[1]")
        )
        if parts and rooted and (REPO.joinpath(*parts)).exists():
            found.add("/".join(parts))
    return found


def test_the_helpers_are_found():
    """The scan itself: it sees what three test modules are known to need."""
    assert "tests/tiny.py" in _local_imports(REPO / "tests" / "test_forecast.py")
    assert ".ci/run" in _repo_paths(REPO / "tests" / "test_docs.py")
    assert "benchmarks/gpu_report.py" in _repo_paths(REPO / "tests" / "test_gpu_report.py")


@pytest.mark.slow
def test_the_sdist_holds_every_file_the_tests_need(sdist):
    needed = {"tests/conftest.py", "pyproject.toml", "LICENSE", "README.md"}
    for module in TESTS:
        needed |= {module.relative_to(REPO).as_posix()}
        needed |= _local_imports(module) | _repo_paths(module)
    for folder in ("docs", "examples"):  # read by glob (every page, every script)
        needed |= {
            p.relative_to(REPO).as_posix() for p in (REPO / folder).rglob("*") if p.is_file()
        }
    missing = sorted(p for p in needed if not (sdist / p).exists())
    assert not missing, f"files the tests need, missing from the sdist: {missing}"
    assert not list(sdist.rglob("*.csv")), "the sdist ships a CSV (the ETT data is never shipped)"


@pytest.mark.slow
def test_the_sdists_tests_collect(sdist):
    """Every test module of the sdist imports (the installed diffsample, the sdist's helpers)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=sdist,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "error" not in done.stdout.splitlines()[-1].lower(), done.stdout[-3000:]


def test_the_metadata_is_pep_639():
    """The licence as an SPDX expression with its file, no licence classifier beside it, and
    the classifiers an index filters on."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    meta = project["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert not [c for c in meta["classifiers"] if c.startswith("License ::")]
    assert "Typing :: Typed" in meta["classifiers"]
    for minor in range(10, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in meta["classifiers"]
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])
    assert "numba" in meta["optional-dependencies"]["bench"]
    assert "matplotlib" in meta["optional-dependencies"]["plot"]
