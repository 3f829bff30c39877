"""mkdocs hook: fail the build where the API signatures could not be wrapped.

mkdocstrings formats each separate signature to ``line_length`` with black or ruff when one is
installed, and otherwise leaves it one long line, clipped by its code block, with only an
INFO message. The docs extra installs ruff; this makes a build without either an error.
"""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

from mkdocs.exceptions import PluginError


def formatter_available() -> bool:
    """Whether mkdocstrings can format signatures here (black, or ruff as a package or binary)."""
    return any(importlib.util.find_spec(m) is not None for m in ("black", "ruff")) or bool(
        shutil.which("ruff")
    )


def on_config(config: Any) -> Any:
    if not formatter_available():
        raise PluginError(
            "the API signatures need black or ruff to be wrapped: pip install -e '.[docs]'"
        )
    return config
