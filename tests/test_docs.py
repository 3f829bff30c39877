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


# ------------------------------------------------------------------------------ maths and layout
def _hook(name: str):
    """A module of docs/hooks/ (mkdocs loads them by path, so do the tests)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page_html(page: Path) -> str:
    """A page through Python-Markdown with the site's maths and table extensions, as mkdocs
    renders it before the hooks run."""
    markdown = pytest.importorskip("markdown")
    pytest.importorskip("pymdownx")
    md = markdown.Markdown(
        extensions=[
            "tables",
            "attr_list",
            "md_in_html",
            "pymdownx.superfences",
            "pymdownx.arithmatex",
        ],
        extension_configs={"pymdownx.arithmatex": {"generic": True}},
    )
    return md.convert(page.read_text())


def test_maths_hook_writes_mathml_and_refuses_tex_it_cannot_typeset():
    pytest.importorskip("latex2mathml")
    maths = _hook("maths")
    page = (
        '<p>pairs <span class="arithmatex">\\((t_i, t_{i+1})\\)</span> and a &lt; b</p>\n'
        '<div class="arithmatex">\\[\nx_s = \\alpha_s \\hat{x}_0 &lt; 1\n\\]</div>'
    )
    out = maths.render(page)
    assert out.count("<math") == 2 and "\\(" not in out and "\\[" not in out
    assert 'display="inline"' in out and 'display="block"' in out
    assert "<msub><mi>t</mi><mrow><mi>i</mi><mo>+</mo><mn>1</mn></mrow></msub>" in out.replace(
        "&#x0002B;", "+"
    )
    assert "&#x0003C;" in out or "&lt;" in out  # the unescaped "<" became an operator again
    assert "a &lt; b" in out  # text outside the maths is left alone
    with pytest.raises(
        ValueError, match=r"p\.md: maths '\\\\foo \+ 1' does not typeset: unknown command \\foo"
    ):
        maths.render('<span class="arithmatex">\\(\\foo + 1\\)</span>', where="p.md: ")


RAW_TEX = re.compile(r"[A-Za-z)\]]_\{|\^\{|\\(?:frac|sum|int|alpha|sigma|lvert|mathbb)\b")


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=_page_id)
def test_page_maths_typesets_and_no_raw_tex_shows(page):
    """Every $...$ and $$...$$ of a page converts to MathML, and what is left outside the maths
    and the code holds no TeX (the samplers page once showed a raw ``t_{i+1}``)."""
    pytest.importorskip("latex2mathml")
    html = _hook("maths").render(_page_html(page), where=f"{_page_id(page)}: ")
    prose = re.sub(r"<math.*?</math>|<code>.*?</code>|<pre.*?</pre>", "", html, flags=re.S)
    raw = RAW_TEX.findall(prose)
    assert not raw, f"{_page_id(page)}: TeX outside $...$ shows raw: {raw[:5]}"


def test_samplers_and_crps_pages_typeset_their_maths():
    for name, at_least in (("concepts/samplers.md", 10), ("crps.md", 40)):
        html = _page_html(DOCS / name)
        assert html.count('class="arithmatex"') >= at_least, name


def _tables(text: str) -> list[list[str]]:
    """The header row of each markdown table of a page, as cells."""
    lines = text.splitlines()
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line, nxt in zip(lines, [*lines[1:], ""], strict=True)
        if line.startswith("|") and re.fullmatch(r"\|(?:\s*:?-+:?\s*\|)+", nxt.strip())
    ]


def test_results_tables_fit_the_content_width():
    """At most 8 columns a table (the content column holds 8 of the theme's cells at 4rem, see
    docs/assets/extra.css): the 9-column results tables hid their point-MSE columns behind a
    horizontal scroll. Measured in headless Chromium at 1280 px: every results table fits."""
    tables = _tables((DOCS / "results.md").read_text())
    wide = [t[:3] for t in tables if len(t) > 8]
    assert not wide, f"docs/results.md: tables wider than 8 columns: {wide}"
    assert len(tables) >= 8


def test_docs_extra_installs_what_the_build_needs():
    """The hooks' imports and the signature formatter come with `pip install -e ".[docs]"`."""
    text = (REPO / "pyproject.toml").read_text()
    docs_extra = re.search(r"^docs = \[(.*)\]\s*$", text, re.M).group(1)
    for package in ("mkdocs", "mkdocs-material", "mkdocstrings", "latex2mathml", "ruff"):
        assert f'"{package}' in docs_extra, package
    config = (REPO / "mkdocs.yml").read_text()
    for hook in re.findall(r"^\s+-\s+(docs/hooks/\S+\.py)", config, re.M):
        assert (REPO / hook).is_file(), hook
    assert "docs/hooks/maths.py" in config and "docs/hooks/signatures.py" in config
    assert "cdn" not in config.lower() and "https://" not in config  # nothing fetched to view
