"""``sample_many``: fold n_samples into the batch, chunk rows to fit memory, keep results
independent of the chunking.

Dimensions: S samples per condition, B conditions, M = S * B rows, E event shape,
K sampling steps.

Row r holds sample ``r // B`` of condition ``r % B``, so the rows reshape to ``[S, B, *E]``
without a copy. The noise of a row is keyed by (seed, condition id, sample index, step)
(see :mod:`diffsample.noise`), never by its chunk or batch position.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ._utils import check_int, describe, progress_disabled
from .memory import fit_row_cost, free_bytes, is_oom
from .noise import keyed_normal, row_keys
from .prediction import Denoiser, check_output
from .samplers import SAMPLERS, Sampler, _check_grid

__all__ = ["plan_chunk", "row_cost", "sample_many"]

log = logging.getLogger(__name__)

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

_RESERVED = ("cond", "noise_sampler", "generator", "progress")


def sample_many(
    sampler: str | Sampler,
    denoiser: Denoiser,
    event_shape: Sequence[int],
    n_samples: int,
    *,
    cond: Mapping[str, Any] | None = None,
    cond_ids: torch.Tensor | Sequence[int] | None = None,
    max_batch: int | None = None,
    memory_budget: int | float | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
    **sampler_kwargs: Any,
) -> torch.Tensor:
    """Draw ``n_samples`` samples for each of B conditions in as few denoiser calls as fit.

    Example::

        schedule = NoiseSchedule.cosine(1000)
        y = sample_many("ddim", model, (96, 7), 100, cond={"z": z},   # z: [B, 7, 64]
                        schedule=schedule, timesteps=schedule.timesteps(50))
        y.shape                                                       # [100, B, 96, 7]

    Args:
        sampler: a sampler function (``sample_ddpm``, ``sample_ddim``, ``sample_dpmpp_2m`` or one
            with the same signature) or its name ("ddpm", "ddim", "dpmpp_2m").
        denoiser: ``denoiser(x_t [M, *E], t [M] long, **cond) -> [M, *E]``.
        event_shape: E, the shape of one sample.
        n_samples: S >= 1 samples per condition.
        cond: keyword tensors for the denoiser, each ``[B, ...]`` (one row per condition); they
            are expanded (B = 1) or gathered per chunk, never repeated S times up front. Non-tensor
            values are passed through.
        cond_ids: ``[B]`` integer ids keying each condition's noise (default ``0..B-1``). Pass
            global window indices to get the same samples for a window in any test batch.
        max_batch: rows per denoiser call (an upper bound when ``memory_budget`` is also given).
        memory_budget: bytes (int) or a fraction in (0, 1] of free device memory. Default: a
            share of free memory; on CPU also a cache-sized working set per call (speed).
        seed: keys the noise together with cond_ids, sample index and step.
        device: where to sample; default the device of ``cond``'s tensors, else of the
            denoiser's parameters, else CPU.
        dtype: dtype of the samples (the noise is drawn in float32 and cast).
        progress: None or True: a progress bar when stderr is a terminal; False: none.
        **sampler_kwargs: passed to the sampler: ``schedule``, ``timesteps`` (required),
            ``prediction``, ``eta``, ``clip_x0``, ``callback``, ...

    Returns:
        Samples ``[S, B, *E]``. For a given seed x_T is bitwise identical whatever the chunking,
        and the outputs agree to the float round-off of the denoiser's kernels.

    Raises:
        ValueError: bad sizes, a cond tensor whose first dimension is not B, cond_ids of the
            wrong length, a denoiser output whose shape is not ``[M, *event_shape]``.
        torch.OutOfMemoryError: if even one row does not fit. Smaller OOMs shrink the chunk and
            redo only the chunk that failed.
    """
    sample_fn = _resolve_sampler(sampler)
    E = _check_event_shape(event_shape)
    check_int("n_samples", n_samples)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    bad = [k for k in _RESERVED if k in sampler_kwargs]
    if bad:
        raise TypeError(
            f"sample_many: {bad} are set by sample_many itself; pass cond= and progress= directly"
        )
    for k in ("schedule", "timesteps"):
        if k not in sampler_kwargs:
            raise TypeError(
                f"sample_many: missing sampler argument {k}=... (e.g. schedule.timesteps(50))"
            )
    grid = _check_grid(
        sampler_kwargs["timesteps"], getattr(sampler_kwargs["schedule"], "num_train_steps", 1 << 62)
    )
    cond = dict(cond or {})
    B = _num_conditions(cond, cond_ids)
    device = _resolve_device(device, cond, denoiser)
    ids = _check_cond_ids(cond_ids, B, device)
    S, M = n_samples, n_samples * B
    cond = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}

    user_callback = sampler_kwargs.pop("callback", None)
    with torch.no_grad():
        chunk = _plan(
            denoiser, E, M, max_batch, memory_budget, device, dtype, cond, B, t_probe=grid[0]
        )
        n_steps = len(grid)
        out = torch.empty((M, *E), dtype=dtype, device=device)  # [S * B, *E]
        bar = tqdm(
            total=math.ceil(M / chunk) * n_steps,
            desc="sample_many",
            unit="step",
            disable=progress_disabled(progress),
        )
        bar.set_postfix(rows=M, chunk=chunk)

        def on_step(info: dict) -> None:
            bar.update(1)
            if user_callback is not None:
                user_callback(info)

        r0 = 0
        while r0 < M:
            r1 = min(r0 + chunk, M)
            s_idx, b_idx = _rows(r0, r1, B, device)
            keys = row_keys(seed, ids[b_idx], s_idx)  # [rows]
            try:
                out[r0:r1] = sample_fn(
                    denoiser,
                    keyed_normal(keys, -1, E, dtype=dtype),
                    cond=_cond_rows(cond, B, b_idx),
                    noise_sampler=lambda i, keys=keys: keyed_normal(keys, i, E, dtype=dtype),
                    progress=False,
                    callback=on_step,
                    **sampler_kwargs,
                )
            except Exception as exc:
                if not is_oom(exc) or r1 - r0 == 1:
                    bar.close()
                    raise
                failed = True
            else:
                failed = False
            if failed:  # outside the except block, so the failed chunk's tensors are released
                chunk = max((r1 - r0) // 2, 1)
                log.info(
                    "sample_many: out of memory at %d rows per call; retrying with %d",
                    r1 - r0,
                    chunk,
                )
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                bar.total = bar.n + math.ceil((M - r0) / chunk) * n_steps
                bar.set_postfix(rows=M, chunk=chunk)
                continue
            r0 = r1
        bar.close()
    return out.view(S, B, *E)


def plan_chunk(
    denoiser: Denoiser,
    event_shape: Sequence[int],
    n_samples: int,
    *,
    cond: Mapping[str, Any] | None = None,
    max_batch: int | None = None,
    memory_budget: int | float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    t_probe: int = 0,
) -> int:
    """Rows per denoiser call that :func:`sample_many` would use for the same arguments.

    ``max_batch`` alone is taken as is. Otherwise two probe calls measure the per-row memory
    (:func:`row_cost`) and the chunk is the largest that fits the budget, also at most
    ``max_batch``; on CPU without an explicit budget, also at most what keeps one call's working set
    near ``CPU_WORKING_SET`` bytes (speed), and at least ``CPU_MIN_ROWS``.
    """
    cond = dict(cond or {})
    B = _num_conditions(cond, None)
    device = _resolve_device(device, cond, denoiser)
    cond = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    return _plan(
        denoiser,
        _check_event_shape(event_shape),
        n_samples * B,
        max_batch,
        memory_budget,
        device,
        dtype,
        cond,
        B,
        t_probe=t_probe,
    )


def row_cost(
    denoiser: Denoiser,
    event_shape: Sequence[int],
    *,
    cond: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    t_probe: int = 0,
) -> tuple[float, float]:
    """Memory of sampling as ``(fixed, per_row)`` bytes: two probe calls of the denoiser at
    ``PROBE_ROWS`` rows (cond rows gathered as sample_many gathers them) plus the sampler's own
    state, ``SAMPLER_STATE_ROWS`` events per row."""
    cond = dict(cond or {})
    B = _num_conditions(cond, None)
    device = _resolve_device(device, cond, denoiser)
    E = _check_event_shape(event_shape)

    def call(n: int) -> None:
        x = torch.zeros((n, *E), dtype=dtype, device=device)
        t = torch.full((n,), t_probe, dtype=torch.long, device=device)
        check_output(denoiser(x, t, **_cond_rows(cond, B, _rows(0, n, B, device)[1])), x)

    with torch.no_grad():
        fixed, per_row = fit_row_cost(call, device, PROBE_ROWS)
    return fixed, per_row + SAMPLER_STATE_ROWS * math.prod(E) * torch.empty(
        (), dtype=dtype
    ).element_size()


def _plan(
    denoiser: Denoiser,
    E: tuple[int, ...],
    rows: int,
    max_batch: int | None,
    memory_budget: int | float | None,
    device: torch.device,
    dtype: torch.dtype,
    cond: Mapping[str, Any],
    B: int,
    *,
    t_probe: int,
) -> int:
    if max_batch is not None:
        check_int("max_batch", max_batch)
    if memory_budget is not None:
        ok = isinstance(memory_budget, (int, float)) and not isinstance(memory_budget, bool)
        ok = ok and (
            0 < memory_budget <= 1 if isinstance(memory_budget, float) else memory_budget > 0
        )
        if not ok:
            raise ValueError(
                f"memory_budget: expected bytes (int > 0) or a fraction of free memory (float in (0, 1]), "
                f"got {memory_budget!r}"
            )
    cap = rows if max_batch is None else min(max_batch, rows)
    if max_batch is not None and memory_budget is None:
        return cap
    if cap <= CPU_MIN_ROWS and memory_budget is None and device.type != "cuda":
        return cap  # nothing to gain from a probe; OOM back-off still guards the call
    if isinstance(memory_budget, int):
        budget = float(memory_budget)
    else:
        fraction = (
            memory_budget if memory_budget is not None else DEFAULT_FRACTION.get(device.type, 0.5)
        )
        budget = fraction * free_bytes(device)
    fixed, per_row = row_cost(denoiser, E, cond=cond, device=device, dtype=dtype, t_probe=t_probe)
    if memory_budget is None and device.type != "cuda":  # speed: a cache-sized working set per call
        cap = min(cap, max(CPU_MIN_ROWS, int(CPU_WORKING_SET // per_row)))
    fits = int((budget - fixed) // per_row)
    if fits < 1:
        raise ValueError(
            f"memory_budget: {budget / 2**20:.1f} MiB does not fit one row: a row costs ~{per_row / 2**20:.2f} MiB "
            f"plus ~{fixed / 2**20:.1f} MiB fixed on {device}"
        )
    log.debug(
        "plan_chunk: fixed=%d B, per_row=%d B, budget=%d B -> %d rows", fixed, per_row, budget, fits
    )
    return max(1, min(cap, fits))


def _rows(r0: int, r1: int, B: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample and condition index of rows r0..r1-1 (row r = sample r // B of condition r % B)."""
    r = torch.arange(r0, r1, device=device)
    return r // B, r % B


def _cond_rows(cond: Mapping[str, Any], B: int, b_idx: torch.Tensor) -> dict:
    """The cond tensors' rows for condition indices b_idx: a stride-0 view when B = 1, else a gather."""
    if B == 1:
        return {
            k: v.expand(len(b_idx), *v.shape[1:]) if isinstance(v, torch.Tensor) else v
            for k, v in cond.items()
        }
    return {
        k: v.index_select(0, b_idx) if isinstance(v, torch.Tensor) else v for k, v in cond.items()
    }


def _resolve_sampler(sampler: str | Sampler) -> Sampler:
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(
                f"sampler: unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)} or a function"
            )
        return SAMPLERS[sampler]
    if not callable(sampler):
        raise TypeError(f"sampler: expected a sampler function or name, got {describe(sampler)}")
    return sampler


def _check_event_shape(event_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        E = tuple(int(d) for d in event_shape)
        ok = all(d >= 1 for d in E) and all(float(d) == d for d in event_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"event_shape: expected a sequence of positive integers, got {event_shape!r}"
        )
    return E


def _num_conditions(cond: Mapping[str, Any], cond_ids: Any) -> int:
    sizes = {
        k: v.shape[0] if v.ndim else None for k, v in cond.items() if isinstance(v, torch.Tensor)
    }
    if any(n is None for n in sizes.values()):
        raise ValueError(
            f"cond: every tensor needs a leading condition dimension B; got 0-d tensors for "
            f"{[k for k, n in sizes.items() if n is None]}"
        )
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"cond: every tensor must have the same leading dimension B (one row per condition); "
            f"got {sizes}"
        )
    if sizes:
        return next(iter(sizes.values()))
    return 1 if cond_ids is None else len(cond_ids)


def _check_cond_ids(cond_ids: Any, B: int, device: torch.device) -> torch.Tensor:
    if cond_ids is None:
        return torch.arange(B, device=device)
    ids = torch.as_tensor(cond_ids, device=device)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise ValueError(f"cond_ids: expected integer ids, got dtype {ids.dtype}")
    if ids.shape != (B,):
        raise ValueError(
            f"cond_ids: expected shape [{B}] (one id per condition, B from cond), got {tuple(ids.shape)}"
        )
    return ids.long()


def _resolve_device(device: Any, cond: Mapping[str, Any], denoiser: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for v in cond.values():
        if isinstance(v, torch.Tensor):
            return v.device
    if isinstance(denoiser, torch.nn.Module):
        for p in denoiser.parameters():
            return p.device
    return torch.device("cpu")
