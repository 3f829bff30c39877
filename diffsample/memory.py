"""Memory probing for chunk sizing, and out-of-memory detection.

Dimensions: M rows (samples x conditions).

How much memory one denoiser call costs is measured, not guessed: ``peak_bytes`` runs a call
and reports the extra memory it peaked at. On CUDA that is the caching allocator's own
statistics (``reset_peak_memory_stats`` / ``max_memory_allocated``); on other devices a
dispatch-level tracker counts the bytes of every tensor storage the call creates and frees.
Two calls at two row counts give a linear fit (fixed + per_row * rows), which predicts the
largest chunk that fits a budget: memory grows linearly in rows for a per-row denoiser.

Out of memory, the probe and the sampling loop back off the same way (``back_off``): free the
allocator's cache and halve the row count, down to one row; an OOM at one row is re-raised.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

# a C++-side weak reference to a storage: it expires when the memory is released
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "available_bytes",
    "back_off",
    "check_fits",
    "fit_row_cost",
    "format_bytes",
    "free_bytes",
    "is_oom",
    "peak_bytes",
]

log = logging.getLogger(__name__)


def is_oom(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors (``torch.OutOfMemoryError``; from torch 2.4, the
    package's floor, ``torch.cuda.OutOfMemoryError`` is the same class)."""
    return isinstance(exc, torch.OutOfMemoryError)


def back_off(rows: int, device: torch.device, what: str) -> int:
    """After an out-of-memory error at ``rows`` rows per call: release the CUDA allocator's
    cached blocks and return the row count to try next, ``rows // 2`` (at least 1)."""
    smaller = max(rows // 2, 1)
    log.info("%s: out of memory at %d rows per call; retrying with %d", what, rows, smaller)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return smaller


def available_bytes(device: str | torch.device) -> int | None:
    """Memory a new allocation on ``device`` can still use, in bytes, or None where this
    machine does not tell.

    CUDA: free device memory plus what the caching allocator holds but does not use.
    CPU: ``MemAvailable`` from /proc/meminfo, else free physical pages (POSIX).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def free_bytes(device: str | torch.device) -> int:
    """:func:`available_bytes`, or 8 GiB where the machine does not tell (a planning guess:
    the OOM back-off corrects it)."""
    have = available_bytes(device)
    return 8 << 30 if have is None else have


def check_fits(
    needed: int,
    device: str | torch.device,
    *,
    name: str,
    what: str,
    hint: str,
    purpose: str = "",
) -> None:
    """ValueError naming ``name`` if ``needed`` bytes exceed what ``device`` has available,
    before anything is allocated (no check where the machine does not tell).

    Args:
        needed: bytes.
        device: where they would be allocated.
        name: the argument(s) to blame.
        what: what needs them, e.g. ``"100 samples x 256 windows x [96, 7] (H, N)"``.
        hint: what to lower.
        purpose: what for, e.g. ``" to sample and score"`` (after the size).
    """
    have = available_bytes(device)
    if have is not None and needed > have:
        raise ValueError(
            f"{name}: {what} need about {format_bytes(needed)}{purpose}, but {device} has "
            f"{format_bytes(have)} available; {hint}"
        )


def format_bytes(n: int) -> str:
    """Bytes in binary units, e.g. ``"5.9 TiB"``."""
    value, unit = float(n), "bytes"
    for u in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, u
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


class _StorageTracker(TorchDispatchMode):
    """Counts live bytes of the storages created under it; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[Any, int]] = {}  # data_ptr -> (weak ref, nbytes)
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_ptr(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for ptr in [
            p for p, (ref, _) in self.live.items() if ref.expired()
        ]:  # released since last op
            self.now -= self.live.pop(ptr)[1]
        for t in tree_flatten(out)[0]:
            if (
                isinstance(t, torch.Tensor) and _ptr(t) not in inputs
            ):  # views of inputs are not new memory
                storage = t.untyped_storage()
                ptr, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and ptr not in self.live:
                    self.live[ptr] = (StorageWeakRef(storage), nbytes)
                    self.now += nbytes
        self.peak = max(self.peak, self.now)
        return out


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def peak_bytes(fn: Callable[[], Any], device: str | torch.device) -> int:
    """Extra memory that ``fn()`` peaks at on ``device``, in bytes (its result is dropped)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with _StorageTracker() as tracker:
        fn()
    return int(tracker.peak)


def fit_row_cost(
    call: Callable[[int], Any], device: str | torch.device, rows: tuple[int, int]
) -> tuple[float, float, int | None]:
    """Fit peak memory of ``call(r)`` as ``fixed + per_row * r`` from two row counts.

    A probe call that runs out of memory does not end the fit: both row counts are halved
    (``back_off``; the smaller at least 1, the larger at least 2) and the pair is probed again
    until both calls fit. When one row fits and two do not, the cost is that of one row.

    Args:
        call: ``call(r)`` runs the work for ``r`` rows (its result is dropped).
        device: where ``call`` allocates.
        rows: two increasing row counts ``(r1, r2)``.

    Returns:
        ``(fixed, per_row, limit)``: bytes (fixed >= 0, per_row >= 1) and ``limit``, None when
        both probes ran at the row counts asked, else the largest row count that ran (a chunk
        should not exceed it: more rows ran out of memory).

    Raises:
        torch's out-of-memory error if even one row does not fit.
    """
    r1, r2 = rows
    if not 0 < r1 < r2:
        raise ValueError(f"rows: expected two increasing positive row counts, got {rows!r}")
    device = torch.device(device)
    largest_ran, oom_seen = 0, False
    while True:
        peaks: list[int] = []
        for r in (r1, r2):
            try:
                peaks.append(peak_bytes(functools.partial(call, r), device))
            except Exception as exc:
                if not is_oom(exc) or r == 1:
                    raise
                break  # leaving the except block releases the failed call's tensors
            largest_ran = max(largest_ran, r)
        if len(peaks) == 2:
            p1, p2 = peaks
            # a flat fit would promise infinite rows: at least half the mean cost per row
            per_row = max((p2 - p1) / (r2 - r1), p2 / r2 / 2, 1.0)
            return max(p2 - per_row * r2, 0.0), per_row, largest_ran if oom_seen else None
        oom_seen = True
        if peaks and r2 == 2:  # one row ran, two did not: nothing left to fit
            return 0.0, max(float(peaks[0]), 1.0), 1
        back_off(r2 if peaks else r1, device, "memory probe")
        r1, r2 = max(r1 // 2, 1), max(r2 // 2, 2)
