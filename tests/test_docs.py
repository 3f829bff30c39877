"""Docs that show: every ```python block in README.md and docs/**/*.md runs, and where a ```text
block follows it, what it prints is that text (blocks of one page share a namespace).
Illustrative snippets that need files or a network are fenced as ```py and not run. Relative
links point to files that exist, and mkdocs.yml's nav lists every page of docs/ exactly once."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
BLOCK = re.compile(r"```(python|text)\n(.*?)```", re.S)


def _pairs(text: str):
    blocks = BLOCK.findall(text)
    for i, (kind, code) in enumerate(blocks):
        if kind == "python":
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            yield code, (nxt[1] if nxt and nxt[0] == "text" else None)


def _page_id(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists()], ids=_page_id)
def test_page_examples_run_and_print_what_they_say(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for code, expected in _pairs(page.read_text()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(page), "exec"), namespace)
        if expected is not None:
            assert out.getvalue().strip() == expected.strip(), (
                f"{_page_id(page)}: output differs for\n{code}"
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
    ids=_page_id,
)
def test_relative_links_point_to_files_that_exist(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{_page_id(page)} links to files that do not exist: {missing}"


# "  - Title: page.md" (the title may be quoted); the nav block ends at the next top-level key
NAV_ENTRY = re.compile(r"""^\s*-\s+(?:"[^"\n]*"|'[^'\n]*'|[^:\n]+):\s+([^\s#]+\.md)\s*(?:#.*)?$""")


def _nav_pages(config: str) -> list[str]:
    lines = config.splitlines()
    start = lines.index("nav:") + 1
    block = []
    for line in lines[start:]:
        if line.strip() and not line[0].isspace():  # the next top-level key
            break
        block.append(line)
    return [m.group(1) for line in block if (m := NAV_ENTRY.match(line))]


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages((REPO / "mkdocs.yml").read_text())
    assert nav, "mkdocs.yml: no nav entries found"
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    twice = sorted({p for p in nav if nav.count(p) > 1})
    missing = [p for p in nav if not (DOCS / p).is_file()]
    unlisted = [p for p in pages if p not in nav]
    assert not twice, f"mkdocs.yml: pages listed twice in the nav: {twice}"
    assert not missing, f"mkdocs.yml: nav entries without a page in docs/: {missing}"
    assert not unlisted, f"docs/ pages missing from mkdocs.yml's nav: {unlisted}"
