"""Docs that show: every ```python block in README.md and docs/*.md runs, and where a ```text
block follows it, what it prints is that text (blocks of one page share a namespace).
Illustrative snippets that need files or a network are fenced as ```py and not run."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(python|text)\n(.*?)```", re.S)


def _pairs(text: str):
    blocks = BLOCK.findall(text)
    for i, (kind, code) in enumerate(blocks):
        if kind == "python":
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            yield code, (nxt[1] if nxt and nxt[0] == "text" else None)


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists()], ids=lambda p: p.name)
def test_page_examples_run_and_print_what_they_say(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for code, expected in _pairs(page.read_text()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(page), "exec"), namespace)
        if expected is not None:
            assert out.getvalue().strip() == expected.strip(), (
                f"{page.name}: output differs for\n{code}"
            )


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)```", readme, re.S)[0].strip().splitlines()
    test_cmd = [c for c in commands if "pytest" in c]
    assert len(test_cmd) == 1, commands
    assert test_cmd[0].strip() in [line.strip() for line in ci.splitlines()]


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize(
    "page",
    [p for p in [*PAGES, REPO / "CHANGELOG.md", REPO / "CONTRIBUTING.md"] if p.exists()],
    ids=lambda p: p.name,
)
def test_relative_links_point_to_files_that_exist(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page.name} links to files that do not exist: {missing}"
