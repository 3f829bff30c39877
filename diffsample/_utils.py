"""Small private helpers shared by the core modules (each defined once, here)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Callable, Optional, Union

import torch


def describe(x: object) -> str:
    """How an argument looked, for error messages: dtype and shape for tensors, else the type."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}" if isinstance(x, (int, float, str)) else type(x).__name__


def check_int(name: str, value: object, *, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """``value`` if it is an int (not a bool) in [minimum, maximum]; else ValueError naming ``name``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        want = f"an integer in {minimum}..{maximum}" if maximum is not None else (
            "a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return value  # type: ignore[return-value]


def progress_disabled(progress: Optional[bool]) -> bool:
    """tqdm ``disable`` flag: False never shows a bar; None or True show one only on a terminal."""
    if progress is False:
        return True
    return not (sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Union[str, "os.PathLike[str]"], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it into place: a failure
    leaves the old file (or none), never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
