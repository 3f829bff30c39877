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
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = [
    "PROGRESS_INTERVAL",
    "ProgressLines",
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
    "progress_bar",
    "progress_interval",
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


def _stderr_is_terminal() -> bool:
    err = sys.stderr
    return err is not None and hasattr(err, "isatty") and bool(err.isatty())


# seconds between two progress lines off a terminal (a log file, a pipe, a batch job's output);
# the environment variable DIFFSAMPLE_PROGRESS_INTERVAL overrides it (e.g. 300 for a long job)
PROGRESS_INTERVAL = 30.0


def progress_interval() -> float:
    """Seconds between progress lines: ``$DIFFSAMPLE_PROGRESS_INTERVAL`` if set, else
    ``PROGRESS_INTERVAL``; ValueError naming the variable for a value that is not a number >= 0."""
    text = os.environ.get("DIFFSAMPLE_PROGRESS_INTERVAL")
    if text is None or not text.strip():
        return PROGRESS_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"DIFFSAMPLE_PROGRESS_INTERVAL: expected a number of seconds >= 0, got {text!r}"
        )
    return value


T = TypeVar("T")


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


class ProgressLines(Generic[T]):
    """A progress bar for output that is not a terminal: a plain line on stderr every
    ``interval`` seconds (:func:`progress_interval` by default: 30), with done/total, the rate and the
    time left, and a closing line if any line was written (a loop shorter than the interval
    stays quiet). The part of tqdm's interface that this package uses: iteration, ``update``,
    ``close``, ``set_postfix``, ``set_postfix_str``, ``n``, ``total`` and ``with``.

    ``clock`` (seconds, monotonic) and ``file`` are for tests.
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        file: IO[str] | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval = progress_interval() if interval is None else interval
        self.n, self.lines, self.postfix = 0, 0, ""
        self._clock, self._file = clock, file
        self._t0 = self._last = clock()
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("progress: nothing to iterate over (give an iterable)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> ProgressLines[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def set_postfix_str(self, s: str = "") -> None:
        self.postfix = s

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write(self._status(now))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.lines:  # the log shows where a reported loop ended
            elapsed = self._clock() - self._t0
            done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
            self._write(
                f"{self.desc}: {done} {_plural(self.unit)} in {_duration(elapsed)}"
                f"{self._rate(elapsed)}"
            )

    def _rate(self, elapsed: float) -> str:
        if self.n <= 0 or elapsed <= 0:
            return ""
        per_second = self.n / elapsed
        if per_second >= 1:
            return f", {per_second:.3g} {_plural(self.unit)}/s"
        return f", {elapsed / self.n:.3g} s/{self.unit}"

    def _status(self, now: float) -> str:
        elapsed = now - self._t0
        if self.total:
            done = f"{self.n}/{self.total} {_plural(self.unit)} ({100 * self.n / self.total:.0f}%)"
        else:
            done = f"{self.n} {_plural(self.unit)}"
        text = f"{self.desc}: {done} in {_duration(elapsed)}{self._rate(elapsed)}"
        if self.total and 0 < self.n < self.total:
            text += f", about {_duration(elapsed / self.n * (self.total - self.n))} left"
        return text + (f" ({self.postfix})" if self.postfix else "")

    def _write(self, line: str) -> None:
        out = self._file if self._file is not None else sys.stderr
        if out is None:  # pythonw: no stderr at all
            return
        print(line, file=out, flush=True)
        self.lines += 1


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    progress: bool | None = None,
    leave: bool = False,
) -> Any:
    """The progress display of a loop: a tqdm bar on a terminal; off a terminal (a log file, a
    pipe), :class:`ProgressLines` (a line every :func:`progress_interval` seconds) if ``progress``
    is True, nothing if it is None (the quiet default of scripts and tests); nothing at all for
    False. Either way the object iterates over ``iterable`` and has ``update``, ``close``,
    ``set_postfix`` and ``set_postfix_str``.
    """
    if progress is not None:
        progress = check_bool("progress", progress)
    if progress is not False and _stderr_is_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    if progress is True:
        return ProgressLines(iterable, total=total, desc=desc, unit=unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=True)


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
