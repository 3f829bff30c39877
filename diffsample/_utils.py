"""Small private helpers shared by the core modules (each defined once, here)."""

from __future__ import annotations

import sys
from typing import Optional

import torch


def describe(x: object) -> str:
    """How an argument looked, for error messages: dtype and shape for tensors, else the type."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}" if isinstance(x, (int, float, str)) else type(x).__name__


def progress_disabled(progress: Optional[bool]) -> bool:
    """tqdm ``disable`` flag: False never shows a bar; None or True show one only on a terminal."""
    if progress is False:
        return True
    return not (sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
