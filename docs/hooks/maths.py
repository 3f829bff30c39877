"""mkdocs hook: the pages' TeX maths typeset as MathML when the site is built.

``pymdownx.arithmatex`` (generic mode) wraps ``$...$`` in ``<span class="arithmatex">\\(...\\)</span>``
and ``$$...$$`` in ``<div class="arithmatex">\\[...\\]</div>``; this hook replaces the TeX inside
each with the MathML that ``latex2mathml`` writes for it. Browsers render MathML natively, so
the site needs no script and no network, neither at build time nor when it is viewed.

A command latex2mathml does not know comes out as an identifier spelled with its backslash
(``\\foo`` -> ``<mi>\\foo</mi>``): that is refused, naming the page and the maths, so that a
strict build fails instead of showing raw TeX.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

# arithmatex's generic output: the TeX is HTML-escaped between \( \) or \[ \]
_MATH = re.compile(r'<(span|div) class="arithmatex">\s*\\([(\[])(.*?)\\[)\]]\s*</\1>', re.S)
_UNKNOWN = re.compile(r">(\\[A-Za-z]+)<")  # a command latex2mathml passed through as text


def tex_to_mathml(tex: str, *, display: bool, where: str = "") -> str:
    """MathML for ``tex`` (block or inline); ValueError for TeX that would not typeset."""
    try:
        out = convert(tex.strip(), display="block" if display else "inline")
    except Exception as exc:  # latex2mathml raises its own errors, and IndexError on a bad brace
        raise ValueError(f"{where}maths {tex.strip()!r} does not typeset: {exc}") from None
    unknown = _UNKNOWN.search(out)
    if unknown:
        raise ValueError(
            f"{where}maths {tex.strip()!r} does not typeset: unknown command {unknown.group(1)}"
        )
    return out


def render(page_html: str, *, where: str = "") -> str:
    """``page_html`` with every arithmatex span or div holding MathML instead of TeX."""

    def one(m: re.Match[str]) -> str:
        tag, opener, tex = m.group(1), m.group(2), html.unescape(m.group(3))
        mathml = tex_to_mathml(tex, display=opener == "[", where=where)
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return _MATH.sub(one, page_html)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return render(html, where=f"{page.file.src_uri}: ")
