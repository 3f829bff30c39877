"""Small private helpers shared by the core and the forecaster (each defined once, here).

Argument checks share one grammar, ``"name: expected <what>, got <what was seen>"``, and one
rule for the exception type: the wrong *kind* of value (a float where an integer is wanted, a
string where a number is wanted, a list where a tensor is wanted) raises TypeError; the right
kind with a bad value (out of range, not one of the choices, not finite) raises ValueError.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import tempfile
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "atomic_write",
    "check_bool",
    "check_choice",
    "check_device",
    "check_finite",
    "check_int",
    "check_number",
    "check_path",
    "check_tensor",
    "choices_of",
    "describe",
    "expected",
    "progress_disabled",
]


def describe(x: object) -> str:
    """How an argument looked, for error messages: dtype and shape for tensors and arrays, the
    value for scalars and strings, else the type."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} numpy array of shape {x.shape}"
    if isinstance(x, (bool, numbers.Number, str)) or x is None:
        return f"{type(x).__name__} {x!r}"
    return type(x).__name__


def expected(name: str, what: str, got: object) -> str:
    """The one error grammar: ``"name: expected what, got <describe(got)>"``."""
    return f"{name}: expected {what}, got {describe(got)}"


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


def check_int(
    name: str, value: object, *, minimum: int | None = 1, maximum: int | None = None
) -> int:
    """``value`` as an ``int`` if it is an integer (Python or numpy, not a bool) in
    [minimum, maximum]. TypeError for a non-integer (``2.0`` included), ValueError out of range."""
    if minimum is None and maximum is None:
        want = "an integer"
    elif minimum == 1 and maximum is None:
        want = "a positive integer"
    elif minimum == 0 and maximum is None:
        want = "a non-negative integer"
    elif minimum is not None and maximum is not None:
        want = f"an integer in {minimum}..{maximum}"
    else:
        want = f"an integer {_range_text(minimum, maximum, False, False)}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(expected(name, want, value))
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(expected(name, want, value))
    return v


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a ``float`` if it is a real number (not a bool) in the given range; finite
    unless ``finite=False``. TypeError for a non-number, ValueError for a bad value."""
    rng = _range_text(minimum, maximum, open_min, open_max)
    want = ("a finite number" if finite else "a number") + (f" {rng}" if rng else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(expected(name, want, value))
    v = float(value)
    bad = math.isnan(v) or (finite and not math.isfinite(v))
    bad = bad or (minimum is not None and (v <= minimum if open_min else v < minimum))
    bad = bad or (maximum is not None and (v >= maximum if open_max else v > maximum))
    if bad:
        raise ValueError(expected(name, want, value))
    return v


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (Python or numpy); TypeError otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(expected(name, "True or False", value))
    return bool(value)


def choices_of(options: Any) -> tuple[str, ...]:
    """The allowed strings of a ``Literal[...]`` type, a mapping's keys or a sequence."""
    args = typing.get_args(options)
    if args:
        return tuple(args)
    if isinstance(options, typing.Mapping):
        return tuple(options)
    return tuple(options)


def check_choice(name: str, value: object, options: Any) -> str:
    """``value`` if it is one of ``options`` (a Literal type, a mapping or a sequence of strings).
    TypeError for a non-string, ValueError for an unknown string."""
    allowed = choices_of(options)
    want = "one of " + ", ".join(repr(c) for c in allowed)
    if not isinstance(value, str):
        raise TypeError(expected(name, want, value))
    if value not in allowed:
        raise ValueError(expected(name, want, value))
    return value


def check_path(name: str, value: object) -> Path:
    """``value`` as a Path if it is a str or ``os.PathLike``; TypeError otherwise."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(expected(name, "a str or os.PathLike path", value))
    return Path(value)


def check_tensor(name: str, value: object, *, floating: bool = False) -> torch.Tensor:
    """``value`` if it is a real (not complex, not bool) tensor, floating-point if asked."""
    if not isinstance(value, torch.Tensor):
        hint = (
            " (wrap it with torch.as_tensor)" if isinstance(value, (np.ndarray, Sequence)) else ""
        )
        raise TypeError(expected(name, "a torch.Tensor" + hint, value))
    if (
        value.is_complex()
        or value.dtype == torch.bool
        or (floating and not value.is_floating_point())
    ):
        raise TypeError(
            expected(name, "a floating-point tensor" if floating else "a real tensor", value)
        )
    return value


def check_device(name: str, value: object) -> torch.device:
    """``value`` (a device name or ``torch.device``) as a device this machine has: cpu, cuda
    (with as many GPUs as its index needs) or mps; one-line TypeError / ValueError otherwise."""
    want = "a device such as 'cpu', 'cuda', 'cuda:1' or 'mps'"
    if not isinstance(value, (str, torch.device)):
        raise TypeError(expected(name, f"{want} (a str or torch.device)", value))
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name}: expected {want}, got {str(value)!r}") from None
    have = None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            have = f"this torch {torch.__version__} sees no CUDA device"
        elif device.index is not None and device.index >= count:
            have = f"{count} CUDA device(s)"
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            have = "no MPS device"
    elif device.type != "cpu":
        raise ValueError(f"{name}: expected {want}, got {str(value)!r}")
    if have is not None:
        raise ValueError(f"{name}: expected a device this machine has, got {str(value)!r} ({have})")
    return device


def check_finite(name: str, x: torch.Tensor, *, hint: str = "") -> None:
    """ValueError naming ``name``, the count and the first position if floating tensor ``x``
    holds NaN or inf. One device sync: call it once per input or chunk, never in a step loop."""
    bad = ~torch.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        flat = int(torch.argmax(bad.reshape(-1).to(torch.uint8)))
        first = tuple(int(i) for i in np.unravel_index(flat, tuple(x.shape)))
        raise ValueError(
            f"{name}: expected finite values{hint}, got {n_bad} NaN/inf value(s), the first at "
            f"index {first}, in {describe(x)}"
        )


def progress_disabled(progress: bool | None) -> bool:
    """tqdm ``disable`` flag: False never shows a bar; None or True show one only on a terminal."""
    if progress is False:
        return True
    return not (sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def _umask() -> int:
    """The process's umask now (it can change after import): read from /proc where Linux
    shows it, else set and restored at once (the only portable way)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it into place: a failure
    leaves the old file (or none), never a half-written one. The file gets the permissions a
    plain ``open(path, "w")`` would give under the current umask (mkstemp alone makes 0600).
    An OSError (a full disk, a lost permission) names ``path``, not the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None:
            raise OSError(f"cannot write {path}: {exc}") from exc
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
