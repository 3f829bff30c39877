"""Where a run writes: checked before any work, and held for the run's life.

The ``diffsample`` command calls these before it trains or samples anything, so that a slip in
``--out`` fails in a second, with one line, and loses nothing:

    check_out_arg(text)                 an empty --out (an unset shell variable) is refused
    refuse_inputs(outputs, inputs)      no output file is the checkpoint or the data read
    check_fresh_start(checkpoint, ...)  an unfinished run is not started over without asking
    check_writable_files(paths)         every output name can be written as a file
    RunLock(folder)                     one run at a time in a folder (fcntl.flock)

Every refusal is an :class:`~diffsample.forecast.report.OutputError` (an OSError) or a
ValueError whose message names the flag and the path.
"""

from __future__ import annotations

import errno
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from .._utils import expected
from .report import OutputError

try:  # POSIX; elsewhere a run takes no lock (RunLock.held stays False)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "RunLock",
    "check_fresh_start",
    "check_out_arg",
    "check_writable_files",
    "refuse_inputs",
]

PathLike = str | os.PathLike[str]
LOCK_NAME = ".diffsample.lock"  # inside the output folder, removed when the run ends


def check_out_arg(value: object, *, name: str = "--out") -> Path:
    """``value`` as a Path; an empty or blank string is refused: ``--out "$RUN"`` with ``RUN``
    unset would otherwise mean the current folder and overwrite what is there."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(expected(name, "a path", value))
    if not os.fspath(value).strip():
        raise ValueError(
            expected(name, "a folder or file name (an unset shell variable?)", os.fspath(value))
        )
    return Path(value)


def refuse_inputs(
    outputs: Iterable[PathLike], inputs: Mapping[str, PathLike | None], *, name: str = "--out"
) -> None:
    """ValueError if an output file would replace an input the run reads.

    Compared as files (``os.path.samefile``), so another spelling of the same path, a symlink
    or a hard link to an input is caught too; an output that does not exist yet cannot be one.

    Args:
        outputs: the files the run will write.
        inputs: what each input is -> its path (e.g. ``{"the checkpoint": path, "the data":
            data.source}``); None, or a source that is not a file (synthetic data), is skipped.
        name: the flag the outputs come from.
    """
    existing = {what: Path(p) for what, p in inputs.items() if p is not None and Path(p).is_file()}
    for out in map(Path, outputs):
        if not out.exists():
            continue
        for what, p in existing.items():
            if os.path.samefile(out, p):
                raise ValueError(
                    f"{name}: the output file {out} is {what} this run reads ({p}); writing it "
                    f"would replace it: choose another {name}"
                )


def check_writable_files(paths: Iterable[PathLike], *, name: str = "--out") -> None:
    """Each path can be written as a file the way ``atomic_write`` writes it (a temp file beside
    it, renamed into place): no directory in the way, a name the file system takes, for the temp
    file too. Nothing is left behind. Call it once the folder exists and is locked.

    Raises:
        OutputError: naming the flag, the path and the cause.
    """
    for p in map(Path, paths):
        if p.is_dir() and not p.is_symlink():  # a symlink is replaced, never followed
            raise OutputError(
                f"{name}: cannot write the file {p}: a directory of that name is in the way", p
            )
        try:  # the name atomic_write's temp file takes (14 characters longer)
            fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
            os.close(fd)
            os.unlink(probe)
            if not os.path.lexists(p):
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                os.unlink(p)
        except OSError as exc:
            cause = exc.strerror or type(exc).__name__
            raise OutputError(f"{name}: cannot write the file {p}: {cause}", p, exc.errno) from None


def check_fresh_start(checkpoint: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run over ``checkpoint`` unless it holds a finished run (replaced as
    before), nothing, or ``--resume`` / ``--overwrite`` says what to do with it.

    An unfinished run's checkpoint is what ``--resume`` continues; starting afresh would replace
    it after the first epoch. A file that is not a diffsample checkpoint at all is not replaced
    either without ``--overwrite``. Only the file's ``finished`` flag is read (memory-mapped,
    ``weights_only``: no code runs, no tensor is loaded).

    Raises:
        ValueError: both flags, or a checkpoint that is unfinished or unreadable.
    """
    if resume and overwrite:
        raise ValueError("--overwrite: expected --resume or --overwrite, got both")
    if resume or overwrite or not checkpoint.is_file():
        return
    state = _run_state(checkpoint)
    if state == "finished":
        return
    if state == "unfinished":
        raise ValueError(
            f"--out: {checkpoint} holds an unfinished training run; continue it with --resume "
            "(and the same flags), or pass --overwrite to start afresh and lose it"
        )
    raise ValueError(
        f"--out: {checkpoint} exists and is not a diffsample checkpoint; pass --overwrite to "
        "replace it, or choose another --out"
    )


def _run_state(path: Path) -> str:
    """``"finished"``, ``"unfinished"`` or ``"unreadable"``: the checkpoint's flag, or why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip written by torch.save, a foreign pickle, ...
        return "unreadable"
    if not isinstance(payload, Mapping) or not str(payload.get("format", "")).startswith(
        "diffsample."
    ):
        return "unreadable"
    return "finished" if payload.get("finished") is True else "unfinished"


class RunLock:
    """An exclusive lock on an output folder for the life of a run (a context manager).

    ``fcntl.flock`` on ``<folder>/.diffsample.lock``, which holds the process id: a second run
    into the same folder is refused with one line naming the first's process. The kernel drops
    the lock when the process ends, so a run that crashed or was killed leaves no stale lock
    (its file, if left, is reused). On release the file is removed. Where ``fcntl`` is missing
    (Windows) or the file system has no locks, no lock is taken (``held`` is False).

    Args:
        folder: the output folder (it must exist).
        name: the flag it comes from, for the message.
    """

    def __init__(self, folder: PathLike, *, name: str = "--out") -> None:
        self.folder, self.name = Path(folder), name
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`~diffsample.forecast.report.OutputError` naming the
        process that holds it."""
        if fcntl is None or self._fd is not None:
            return self
        for _ in range(100):  # a file removed by its releaser between our open and flock: again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                cause = exc.strerror or type(exc).__name__
                raise OutputError(
                    f"{self.name}: cannot create the lock file {self.path}: {cause}",
                    self.path,
                    exc.errno,
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(
                        f"{self.name}: {self.folder} is in use by another diffsample run "
                        f"(process {holder}); wait for it to end, or choose another {self.name}",
                        self.folder,
                        exc.errno,
                    ) from None
                return self  # no locks on this file system (ENOLCK, EOPNOTSUPP): go unlocked
            if _same_file(fd, self.path):
                break
            os.close(fd)
        else:  # pragma: no cover - a hundred releases racing one start
            raise OutputError(f"{self.name}: cannot lock {self.path}", self.path)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: a run that opened the file
        before it went checks that it locked the file still there)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False
