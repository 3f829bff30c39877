"""Rows per denoiser call for :func:`~diffsample.batching.sample_many`: the memory probe of
one sampling set-up and its cache, the chunk size it gives, and the row layout of a chunk.

Dimensions: S samples per condition, B conditions, M = S * B rows, C rows of one chunk,
E event shape.

Row r holds sample ``r // B`` of condition ``r % B`` (:func:`row_indices`), so the rows reshape
to ``[S, B, *E]`` without a copy; a chunk's cond rows are gathered (or, for B = 1, expanded)
from the ``[B, ...]`` tensors (:func:`cond_rows`), never repeated S times up front.
"""

from __future__ import annotations

import logging
import math
import numbers
import weakref
from collections.abc import Mapping
from typing import Any

import torch

from ._utils import check_int, check_number
from .memory import fit_row_cost, free_bytes
from .prediction import Denoiser, check_output

__all__ = [
    "CPU_MIN_ROWS",
    "CPU_WORKING_SET",
    "DEFAULT_FRACTION",
    "PLAN_CACHE",
    "PROBE_ROWS",
    "SAMPLER_STATE_ROWS",
    "Probe",
    "cond_rows",
    "plan_rows",
    "row_indices",
]

# plan_chunk's debug line goes where it always went, the batching module's logger
log = logging.getLogger("diffsample.batching")

# On CPU the chunk is chosen for speed as well as memory. Time per row is flat over a middle
# range and rises on both sides: small calls pay per-call overhead, large ones leave the cache.
# Measured on a 2-core Xeon (token denoiser, ~53 KB per row, DDIM, best of interleaved runs):
# 32 rows per call 1.5-1.7x the best, 64 rows 1.1-1.2x, 256-512 rows the best, 2048+ rows
# 1.15-1.6x. So the default aims for a working set of CPU_WORKING_SET bytes per call (256-512
# rows for that denoiser) and never fewer than CPU_MIN_ROWS rows. See benchmarks/bench_sampling.py.
CPU_WORKING_SET = 16 << 20
CPU_MIN_ROWS = 64
# The probe: two small calls whose peak memory gives the per-row cost.
PROBE_ROWS = (16, 64)
# Sampler state beside the denoiser call (x, x0, eps, noise, the previous x0, the update),
# in units of one row's event, added to the probed per-row cost.
SAMPLER_STATE_ROWS = 6
# Share of free memory used when no budget is given (CUDA) or derived (CPU).
DEFAULT_FRACTION = {"cuda": 0.8, "cpu": 0.5}

# denoiser -> {probe key: (fixed, per_row, limit)}; weak, so an entry dies with its denoiser
PLAN_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[float, float, int | None]]]
PLAN_CACHE = weakref.WeakKeyDictionary()


class Probe:
    """The memory probe of one sampling set-up, cached per denoiser object and key: event
    shape, dtype, device, autocast, the cond tensors' shapes past B and dtypes, and the probe
    step. Memory depends on the architecture and the shapes, not on weight values; a wrong
    guess is caught by the OOM back-off, which also lowers the cached limit."""

    def __init__(
        self,
        owner: Any,
        denoiser: Denoiser,
        E: tuple[int, ...],
        cond: Mapping[str, Any],
        B: int,
        device: torch.device,
        dtype: torch.dtype,
        autocast: torch.dtype | None,
        t_probe: int,
    ) -> None:
        self.denoiser, self.E, self.cond, self.B = denoiser, E, cond, B
        self.device, self.dtype, self.t_probe = device, dtype, t_probe
        sig = tuple(
            (k, tuple(v.shape[1:]), v.dtype) if isinstance(v, torch.Tensor) else (k, type(v))
            for k, v in sorted(cond.items())
        )
        self.key = (E, dtype, str(device), autocast, sig, t_probe)
        try:
            self.entries = PLAN_CACHE.setdefault(owner, {})
        except TypeError:  # not weakly referenceable (a bound method is made anew each time)
            self.entries = {}

    def measure(self, *, fresh: bool = False) -> tuple[float, float, int | None]:
        """(fixed, per_row, limit) bytes: the cached probe, or two probe calls."""
        if fresh or self.key not in self.entries:
            self.entries[self.key] = self._run()
        return self.entries[self.key]

    def limit_to(self, rows: int) -> None:
        """Record that a chunk of more than ``rows`` rows ran out of memory."""
        if self.key in self.entries:
            fixed, per_row, limit = self.entries[self.key]
            self.entries[self.key] = (fixed, per_row, rows if limit is None else min(limit, rows))

    def _run(self) -> tuple[float, float, int | None]:
        E, B, device = self.E, self.B, self.device

        def call(n: int) -> None:
            x = torch.zeros((n, *E), dtype=self.dtype, device=device)  # [n, *E]
            t = torch.full((1,), self.t_probe, dtype=torch.long, device=device).expand(n)  # [n]
            rows = cond_rows(self.cond, B, row_indices(0, n, B, device)[1])
            check_output(self.denoiser(x, t, **rows), x)

        with torch.no_grad():
            fixed, per_row, limit = fit_row_cost(call, device, PROBE_ROWS)
        state = SAMPLER_STATE_ROWS * math.prod(E) * torch.empty((), dtype=self.dtype).element_size()
        return fixed, per_row + state, limit


def plan_rows(
    probe: Probe, rows: int, max_batch: int | None, memory_budget: int | float | None
) -> int:
    """Rows per call for ``rows`` rows in all (see :func:`~diffsample.batching.plan_chunk`)."""
    if max_batch is not None:
        max_batch = check_int("max_batch", max_batch)
    budget_bytes, budget_fraction = _check_budget(memory_budget)
    device = probe.device
    cap = rows if max_batch is None else min(max_batch, rows)
    if max_batch is not None and memory_budget is None:
        return cap
    if cap <= CPU_MIN_ROWS and memory_budget is None and device.type != "cuda":
        return cap  # nothing to gain from a probe; OOM back-off still guards the call
    if budget_bytes is None:
        fraction = budget_fraction or DEFAULT_FRACTION.get(device.type, 0.5)
        budget_bytes = fraction * free_bytes(device)
    fixed, per_row, limit = probe.measure()
    if memory_budget is None and device.type != "cuda":  # speed: a cache-sized working set per call
        cap = min(cap, max(CPU_MIN_ROWS, int(CPU_WORKING_SET // per_row)))
    if limit is not None:  # a probe (or an earlier chunk) ran out of memory above `limit` rows
        cap = min(cap, limit)
    fits = int((budget_bytes - fixed) // per_row)
    if fits < 1:
        raise ValueError(
            f"memory_budget: {budget_bytes / 2**20:.1f} MiB does not fit one row: a row costs "
            f"~{per_row / 2**20:.2f} MiB plus ~{fixed / 2**20:.1f} MiB fixed on {device}"
        )
    log.debug(
        "plan_chunk: fixed=%d B, per_row=%d B, budget=%d B, limit=%s -> %d rows",
        fixed,
        per_row,
        budget_bytes,
        limit,
        fits,
    )
    return max(1, min(cap, fits))


def row_indices(
    r0: int, r1: int, B: int, device: torch.device, *, end: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample and condition index ``[r1 - r0]`` each of rows r0..r1-1 (row r = sample r // B of
    condition r % B); rows at or past ``end`` repeat row ``end - 1`` (a padded graph chunk)."""
    r = torch.arange(r0, r1, device=device)  # [rows]
    if end is not None and end < r1:
        r = r.clamp(max=end - 1)
    return r // B, r % B


def cond_rows(cond: Mapping[str, Any], B: int, b_idx: torch.Tensor) -> dict[str, Any]:
    """The cond tensors' rows ``[rows, ...]`` for condition indices ``b_idx [rows]``: a stride-0
    view when B = 1, else a gather."""
    if B == 1:
        return {
            k: v.expand(len(b_idx), *v.shape[1:]) if isinstance(v, torch.Tensor) else v
            for k, v in cond.items()
        }
    return {
        k: v.index_select(0, b_idx) if isinstance(v, torch.Tensor) else v for k, v in cond.items()
    }


def _check_budget(memory_budget: object) -> tuple[float | None, float | None]:
    """(bytes, fraction) of a ``memory_budget``: an int is bytes, a float a fraction in (0, 1]."""
    if memory_budget is None:
        return None, None
    try:
        if isinstance(memory_budget, numbers.Integral) and not isinstance(memory_budget, bool):
            return float(check_int("memory_budget", memory_budget)), None
        return None, check_number(
            "memory_budget", memory_budget, minimum=0, maximum=1, open_min=True
        )
    except (TypeError, ValueError) as exc:
        hint = " (bytes as an int, or a fraction of free memory as a float)"
        raise type(exc)(f"{exc}{hint}") from None
