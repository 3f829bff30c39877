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
import numbers
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._utils import (
    check_bool,
    check_choice,
    check_device,
    check_finite,
    check_int,
    check_number,
    check_tensor,
    describe,
    expected,
    progress_bar,
)
from .graph import ChunkGraph, HostSyncError
from .memory import back_off, check_fits, fit_row_cost, free_bytes, is_oom
from .noise import keyed_normal, keyed_normal_steps, noise_key, row_keys
from .prediction import Denoiser, autocast_denoiser, check_output
from .samplers import SAMPLERS, Known, Sampler, check_grid
from .schedules import NoiseSchedule

__all__ = ["clear_plan_cache", "plan_chunk", "row_cost", "sample_many"]

log = logging.getLogger(__name__)

# On CPU the chunk is chosen for speed as well as memory. Time per row is flat over a middle
# range and rises on both sides: small calls pay per-call overhead, large ones leave the cache.
# Measured on a 2-core Xeon (token denoiser, ~53 KB per row, DDIM, best of interleaved runs):
# 32 rows per call 1.5-1.7x the best, 64 rows 1.1-1.2x, 256-512 rows the best, 2048+ rows
# 1.15-1.6x. So the default aims for a working set of CPU_WORKING_SET bytes per call (256-512
# rows for that denoiser) and never fewer than CPU_MIN_ROWS rows. See benchmarks/bench_sampling.py.
CPU_WORKING_SET = 16 << 20
CPU_MIN_ROWS = 64
# A stochastic sampler's keyed noise is drawn for several steps at once, up to this many bytes
# (per-op overhead dominates one step of a small chunk); see _StepNoise.
NOISE_BLOCK_BYTES = 1 << 20
# The probe: two small calls whose peak memory gives the per-row cost.
PROBE_ROWS = (16, 64)
# Sampler state beside the denoiser call (x, x0, eps, noise, the previous x0, the update),
# in units of one row's event, added to the probed per-row cost.
SAMPLER_STATE_ROWS = 6
# Share of free memory used when no budget is given (CUDA) or derived (CPU).
DEFAULT_FRACTION = {"cuda": 0.8, "cpu": 0.5}

# Sampler arguments that sample_many sets itself (cond and progress are its own parameters).
_RESERVED = ("noise_sampler", "generator", "known")
# Sample indices key the noise as 32-bit words (diffsample.noise.row_keys).
_MAX_SAMPLES = 1 << 32


def sample_many(
    sampler: str | Sampler,
    denoiser: Denoiser,
    event_shape: Sequence[int],
    n_samples: int,
    *,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    cond: Mapping[str, Any] | None = None,
    cond_ids: torch.Tensor | Sequence[int] | None = None,
    prior_mean: torch.Tensor | None = None,
    known_values: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    max_batch: int | None = None,
    memory_budget: int | float | None = None,
    seed: int | Sequence[int] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    autocast: torch.dtype | None = None,
    graph: bool = False,
    progress: bool | None = None,
    **sampler_kwargs: Any,
) -> torch.Tensor:
    """Draw ``n_samples`` samples for each of B conditions in as few denoiser calls as fit.

    Example::

        schedule = NoiseSchedule.cosine(1000)
        y = sample_many("ddim", model, (96, 7), 100, cond={"z": z},   # z: [B, 7, 64]
                        schedule=schedule, timesteps=schedule.timesteps(50), seed=0)
        y.shape                                                       # [100, B, 96, 7]

    Args:
        sampler: a sampler function (``sample_ddpm``, ``sample_ddim``, ``sample_dpmpp_2m``,
            ``sample_dpmpp_3m`` or any :class:`~diffsample.samplers.Sampler`) or its name, a key
            of :data:`~diffsample.SAMPLERS`.
        denoiser: ``denoiser(x_t [M, *E], t [M] long, **cond) -> [M, *E]``. ``t`` is a stride-0
            view of one step (see :class:`~diffsample.prediction.Denoiser`). If it has a
            ``prepare_cond(**cond) -> dict`` method (:class:`~diffsample.prediction.PreparesCond`),
            that is called once on the B conditions and its tensors are gathered per chunk
            instead of ``cond``.
        event_shape: E, the shape of one sample.
        n_samples: S >= 1 samples per condition.
        schedule: the training schedule (keyword-only, required).
        timesteps: descending grid ``[K]`` from ``schedule.timesteps(K)`` (keyword-only, required).
        cond: keyword tensors for the denoiser, each ``[B, ...]`` (one row per condition); they
            are expanded (B = 1) or gathered per chunk, never repeated S times up front. Non-tensor
            values are passed through. Floating tensors must be finite (checked once).
        cond_ids: ``[B]`` integer ids keying each condition's noise (default ``0..B-1``). Pass
            global window indices to get the same samples for a window in any test batch.
        prior_mean: ``[B, *E]`` mu of a CARD-style model (x_T ~ N(mu, I); see the samplers'
            ``prior_mean``), gathered per chunk like ``cond``. None: mu = 0.
        known_values: ``[B, *E]`` known data (imputation), with ``known_mask``; re-imposed at
            every step with keyed forward noise (see :class:`~diffsample.samplers.Known`).
            Positions outside the mask are never read (NaN is fine there).
        known_mask: ``[B, *E]`` bool, True where ``known_values`` holds a known value.
        max_batch: rows per denoiser call (an upper bound when ``memory_budget`` is also given).
        memory_budget: bytes (int) or a fraction in (0, 1] of free device memory. Default: a
            share of free memory; on CPU also a cache-sized working set per call (speed). The
            probe's result is cached per denoiser, shapes, dtype and device, so a loop of calls
            pays for it once.
        seed: the noise key: an int, or a tuple of ints such as ``(seed, step)`` that marks a
            call of a loop as its own draw (see :func:`~diffsample.noise.noise_key`). With a
            key the result is bit-reproducible and independent of the chunking. None (the
            default): a new key drawn from torch's default generator, so each call draws new
            noise and ``torch.manual_seed`` makes a script reproducible.
        device: where to sample; default the device of ``cond``'s tensors, else of the
            denoiser's parameters, else CPU.
        dtype: dtype of the samples (the noise is drawn in float32 and cast).
        autocast: run only the denoiser (and its ``prepare_cond``) under
            ``torch.autocast(device.type, autocast)``, e.g. ``torch.bfloat16``; its output is
            cast back to ``dtype`` before conversion, and x, the update arithmetic and the
            schedule coefficients stay in ``dtype``. None (default): no autocast.
        graph: CUDA only: capture one chunk's whole step loop (denoiser, update, keyed noise) as
            a CUDA graph and replay it per chunk; chunks have a fixed size (the last is padded
            and the padded rows dropped). Where it cannot run (not CUDA, a per-step
            ``callback``, a non-tensor cond value, a failed capture) it warns once and samples
            eagerly. With it the progress bar advances once per chunk.
        progress: None: a bar when stderr is a terminal, else nothing; True: a bar on a
            terminal, else a line every 30 s (``diffsample._utils.progress_bar``); False: none.
        **sampler_kwargs: passed to the sampler: ``prediction``, ``eta``, ``clip_x0``,
            ``clip_eps``, ``variance``, ``callback``, ... (not ``generator``,
            ``noise_sampler`` or ``known``: the noise is keyed by ``seed``, and known values
            come as ``known_values``/``known_mask``).

    Returns:
        Samples ``[S, B, *E]``. For a given seed x_T is bitwise identical whatever the chunking,
        and the outputs agree to the float round-off of the denoiser's kernels (graph mode
        included: it replays the eager kernels).

    Raises:
        TypeError: an argument of the wrong kind (a float ``n_samples``, a non-tensor
            ``timesteps``, float ``cond_ids``, ...).
        ValueError: bad sizes, an output larger than the free memory, a cond tensor whose
            first dimension is not B, cond_ids of the wrong length, NaN/inf in a cond tensor,
            a denoiser output whose shape is not ``[M, *event_shape]``, non-finite samples
            (the chunk's rows are named).
        torch.OutOfMemoryError: (``torch.cuda.OutOfMemoryError`` on torch < 2.4) if even one row
            does not fit. Smaller OOMs, in the memory probe or in a chunk, halve the rows per
            call; a chunk that failed is redone, finished chunks are kept.
    """
    sample_fn = _resolve_sampler(sampler)
    E = _check_event_shape(event_shape)
    S = check_int("n_samples", n_samples, maximum=_MAX_SAMPLES)
    key = _resolve_seed(seed)
    graph = check_bool("graph", graph)
    _check_dtype(dtype)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(expected("schedule", "a NoiseSchedule", schedule))
    # the samplers read their coefficients on the host: a device copy would cost a sync per
    # chunk (and break graph capture, which forbids syncs)
    if schedule.device.type != "cpu":
        schedule = schedule.to("cpu")
    grid = check_grid(timesteps, schedule.num_train_steps)  # [K] host ints
    bad = [k for k in _RESERVED if k in sampler_kwargs]
    if bad:
        raise TypeError(
            f"sample_many: {bad} are set by sample_many itself (the noise is keyed by seed=, "
            "known values come as known_values= and known_mask=)"
        )
    extras = _per_condition(E, prior_mean, known_values, known_mask)
    cond, B, device = _prepare_cond(cond, cond_ids, device, denoiser, extras)
    extras = {k: cond.pop(k) for k in extras}  # on the device, [B, *E] each
    ids = _check_cond_ids(cond_ids, B, device)
    M = S * B
    _check_output_fits(S, B, E, dtype, device)
    for k, v in cond.items():  # once, before sampling: NaN in a condition means NaN samples
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            check_finite(f"cond[{k!r}]", v)
    _check_extras(extras)
    owner = denoiser
    denoiser = autocast_denoiser(denoiser, device.type, _check_autocast(autocast))
    user_callback = sampler_kwargs.pop("callback", None)
    n_steps = len(grid)
    grid_t = torch.tensor(grid, dtype=torch.long)  # [K] on the host: no transfer in a capture
    with torch.no_grad():
        cond = _prepared_cond(denoiser, cond, B)
        probe = _Probe(owner, denoiser, E, cond, B, device, dtype, autocast, grid[0])
        chunk = _plan(probe, M, max_batch, memory_budget)
        why_not = _graph_unavailable(device, user_callback, cond) if graph else None
        if why_not is not None:
            warnings.warn(f"sample_many: graph=True {why_not}; sampling eagerly", stacklevel=2)
            graph = False
        out = torch.empty((M, *E), dtype=dtype, device=device)  # [S * B, *E]
        with progress_bar(
            total=math.ceil(M / chunk) * n_steps, desc="sample_many", unit="step", progress=progress
        ) as bar:
            bar.set_postfix(rows=M, chunk=chunk)

            def on_step(info: dict[str, Any]) -> None:
                bar.update(1)
                if user_callback is not None:
                    user_callback(info)

            def run(
                keys: torch.Tensor, rows: Mapping[str, Any], callback: Any = None
            ) -> torch.Tensor:
                """One chunk: keys [C] -> samples [C, *E]."""
                rows = dict(rows)
                extra = _sampler_extras({k: rows.pop(k) for k in extras})
                x_T = keyed_normal(keys, -1, E, dtype=dtype)  # [C, *E]
                if "prior_mean" in extra:  # x_T ~ N(mu, I)
                    x_T = x_T + extra["prior_mean"]
                return sample_fn(
                    denoiser,
                    x_T,
                    schedule,
                    grid_t,
                    cond=rows,
                    noise_sampler=_StepNoise(keys, E, dtype, n_steps),
                    progress=False,
                    callback=callback,
                    **extra,
                    **sampler_kwargs,
                )

            replay: ChunkGraph | None = None
            r0 = 0
            while r0 < M:
                r1 = min(r0 + chunk, M)
                # graph mode: every chunk has `chunk` rows; the last one's padding repeats its
                # last row (same keys, same cond) and is dropped below
                s_idx, b_idx = _rows(r0, r0 + chunk if graph else r1, B, device, end=r1)
                keys = row_keys(key, ids[b_idx], s_idx)  # [C]
                rows = _cond_rows({**cond, **extras}, B, b_idx)
                try:
                    if not graph:
                        y = run(keys, rows, on_step)
                    else:
                        if replay is None:
                            replay, y = _capture(run, keys, rows)
                            graph = replay is not None
                        else:
                            y = replay(keys, rows)
                        y = y[: r1 - r0]  # [rows, *E]: the padded rows dropped
                        bar.update(n_steps)
                except Exception as exc:
                    if not is_oom(exc) or r1 - r0 == 1:
                        raise
                    failed = True
                else:
                    failed = False
                if failed:  # outside the except block, so the failed chunk's tensors are released
                    replay, graph = None, False  # the eager loop backs off; a graph would not fit
                    chunk = back_off(r1 - r0, device, "sample_many")
                    probe.limit_to(chunk)
                    bar.total = bar.n + math.ceil((M - r0) / chunk) * n_steps
                    bar.set_postfix(rows=M, chunk=chunk)
                    continue
                out[r0:r1] = _check_samples(y, r0, r1, B)
                r0 = r1
    return out.view(S, B, *E)


class _StepNoise:
    """``noise_sampler(i)`` of one chunk, keys ``[C]``: the keyed noise ``[C, *E]`` of step i,
    drawn for consecutive steps in blocks of about ``NOISE_BLOCK_BYTES`` (bit for bit the
    per-step noise; fewer, larger tensor ops). Other streams (known values' i < -1) one by
    one."""

    def __init__(self, keys: torch.Tensor, E: tuple[int, ...], dtype: torch.dtype, K: int):
        self.keys, self.E, self.dtype, self.K = keys, E, dtype, K
        per_step = keys.shape[0] * math.prod(E) * 4  # float32 bytes of one step
        self.size = max(1, min(K, NOISE_BLOCK_BYTES // per_step))
        self.first, self.block = 0, torch.empty(0)

    def __call__(self, i: int) -> torch.Tensor:
        if i < 0:
            return keyed_normal(self.keys, i, self.E, dtype=self.dtype)
        if not self.first <= i < self.first + len(self.block):
            n = max(1, min(self.size, self.K - i))
            self.first = i
            self.block = keyed_normal_steps(self.keys, i, n, self.E, dtype=self.dtype)
        return self.block[i - self.first]


# per-condition tensors that travel with the cond rows (gathered per chunk, static graph
# inputs) under names no keyword argument can have
_MU, _KV, _KM = "@prior_mean", "@known_values", "@known_mask"


def _per_condition(
    E: tuple[int, ...], prior_mean: object, known_values: object, known_mask: object
) -> dict[str, torch.Tensor]:
    """The per-condition tensors ``[B, *E]`` that were given, checked for kind and event shape."""
    if (known_values is None) != (known_mask is None):
        raise ValueError(
            "known_values, known_mask: expected both (the values and where they are known) or "
            f"neither, got known_values={describe(known_values)}, known_mask={describe(known_mask)}"
        )
    given = {_MU: ("prior_mean", prior_mean), _KV: ("known_values", known_values)}
    given[_KM] = ("known_mask", known_mask)
    out: dict[str, torch.Tensor] = {}
    for key, (name, v) in given.items():
        if v is None:
            continue
        if key == _KM:
            if not (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
                raise TypeError(expected(name, "a bool tensor (True where the value is known)", v))
        else:
            v = check_tensor(name, v, floating=True)
        if v.ndim != len(E) + 1 or tuple(v.shape[1:]) != E:
            raise ValueError(expected(name, f"shape [B, {', '.join(map(str, E))}] ([B, *E])", v))
        out[key] = v
    return out


def _check_extras(extras: Mapping[str, torch.Tensor]) -> None:
    """Finite prior mean, and finite known values where the mask says known (one sync each)."""
    if _MU in extras:
        check_finite("prior_mean", extras[_MU])
    if _KV in extras:
        check_finite(
            "known_values", torch.where(extras[_KM], extras[_KV], 0.0), hint=" where known_mask"
        )


def _sampler_extras(rows: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The sampler keywords for one chunk's per-condition rows ``[C, *E]``."""
    extra: dict[str, Any] = {}
    if _MU in rows:
        extra["prior_mean"] = rows[_MU]
    if _KV in rows:
        extra["known"] = Known(rows[_KV], rows[_KM])
    return extra


def _resolve_seed(seed: object) -> int:
    """The noise key of a call: the seed folded to one int, or (None) a key drawn from torch's
    default generator, which ``torch.manual_seed`` seeds."""
    if seed is None:
        return int(torch.randint(0, 2**62, (), dtype=torch.long))
    return noise_key(seed)  # type: ignore[arg-type]  # noise_key checks the kind


def _check_output_fits(
    S: int, B: int, E: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    """Refuse an output ``[S, B, *E]`` larger than the memory available on ``device``, before
    any allocation (the probe included)."""
    need = S * B * math.prod(E) * torch.empty((), dtype=dtype).element_size()
    check_fits(
        need,
        device,
        name="n_samples",
        what=f"the output of {S} samples x {B} conditions x {math.prod(E)} values",
        hint="draw fewer samples per call",
    )


def _capture(
    run: Callable[..., torch.Tensor], keys: torch.Tensor, rows: Mapping[str, Any]
) -> tuple[ChunkGraph | None, torch.Tensor]:
    """(the chunk graph, the first chunk's samples [C, *E]), or (None, those samples) with
    one warning when the capture fails. The warm-up's own errors (a broken denoiser, OOM)
    propagate as they would eagerly."""
    try:  # warm-up: the first chunk, eagerly, on a side stream
        replay = ChunkGraph(run, keys, rows)
    except HostSyncError as exc:
        warnings.warn(
            f"sample_many: graph=True found a host-device sync in the step loop ({exc}); "
            "sampling eagerly",
            stacklevel=3,
        )
        return None, run(keys, rows)
    try:
        replay.capture()
    except Exception as exc:  # a sync, a CPU op or an uncapturable kernel in the step loop
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(
            f"sample_many: graph=True could not capture the step loop "
            f"({type(exc).__name__}: {first_line}); sampling eagerly",
            stacklevel=3,
        )
        return None, replay.first
    return replay, replay.first


def _graph_unavailable(device: torch.device, callback: Any, cond: Mapping[str, Any]) -> str | None:
    """Why graph mode cannot run here (None if it can)."""
    if device.type != "cuda":
        return f"needs a CUDA device, got {device}"
    if not torch.cuda.is_available():  # pragma: no cover - a cuda device without CUDA fails earlier
        return "needs CUDA, which is not available"
    if callback is not None:
        return "cannot run a per-step callback (host work) inside a CUDA graph"
    odd = [k for k, v in cond.items() if not isinstance(v, torch.Tensor)]
    if odd:
        return f"needs tensor cond values (static graph inputs), got non-tensors for {odd}"
    return None


def _check_autocast(autocast: object) -> torch.dtype | None:
    if autocast is None:
        return None
    if not (isinstance(autocast, torch.dtype) and autocast.is_floating_point):
        raise TypeError(
            expected("autocast", "None or a floating torch.dtype such as torch.bfloat16", autocast)
        )
    return autocast


def _prepared_cond(denoiser: Any, cond: dict[str, Any], B: int) -> dict[str, Any]:
    """``denoiser.prepare_cond(**cond)`` (the per-condition hook), checked to keep one row per
    condition, or ``cond`` itself for a denoiser without the hook."""
    prepare = getattr(denoiser, "prepare_cond", None)
    if not callable(prepare):
        return cond
    prepared = prepare(**cond)
    if not isinstance(prepared, Mapping):
        raise TypeError(expected("denoiser.prepare_cond", "a dict of keyword arguments", prepared))
    sizes = {k: tuple(v.shape) for k, v in prepared.items() if isinstance(v, torch.Tensor)}
    wrong = {k: shape for k, shape in sizes.items() if not shape or shape[0] != B}
    if wrong:
        raise ValueError(
            f"denoiser.prepare_cond: expected tensors with the leading dimension B={B} (one row "
            f"per condition), got shapes {wrong}"
        )
    return dict(prepared)


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
    autocast: torch.dtype | None = None,
    t_probe: int = 0,
) -> int:
    """Rows per denoiser call that :func:`sample_many` would use for the same arguments.

    ``max_batch`` alone is taken as is. Otherwise two probe calls measure the per-row memory
    (:func:`row_cost`) and the chunk is the largest that fits the budget, also at most
    ``max_batch``; on CPU without an explicit budget, also at most what keeps one call's working set
    near ``CPU_WORKING_SET`` bytes (speed), and at least ``CPU_MIN_ROWS``. If a probe call ran
    out of memory, the chunk is at most the largest probe that ran. The probe's result is
    cached (see :func:`clear_plan_cache`).

    Args:
        denoiser: as in :func:`sample_many`; its ``prepare_cond`` hook is applied as there.
        event_shape: E, as in :func:`sample_many`.
        n_samples: S; with cond tensors ``[B, ...]`` the rows are ``n_samples * B``.
        cond: as in :func:`sample_many`.
        max_batch: as in :func:`sample_many`.
        memory_budget: as in :func:`sample_many`.
        device: as in :func:`sample_many`.
        dtype: as in :func:`sample_many`.
        autocast: as in :func:`sample_many`.
        t_probe: the timestep the probe calls see (sample_many uses the grid's first).

    Returns:
        Rows per call, ``1 <= chunk <= n_samples * B``.
    """
    probe, B = _probe_for(denoiser, event_shape, cond, device, dtype, autocast, t_probe)
    S = check_int("n_samples", n_samples, maximum=_MAX_SAMPLES)
    return _plan(probe, S * B, max_batch, memory_budget)


def row_cost(
    denoiser: Denoiser,
    event_shape: Sequence[int],
    *,
    cond: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    autocast: torch.dtype | None = None,
    t_probe: int = 0,
) -> tuple[float, float]:
    """Memory of sampling as ``(fixed, per_row)`` bytes: two probe calls of the denoiser at
    ``PROBE_ROWS`` rows (cond rows gathered as sample_many gathers them) plus the sampler's own
    state, ``SAMPLER_STATE_ROWS`` events per row. A probe that runs out of memory is retried
    at half the rows (see :func:`diffsample.memory.fit_row_cost`). Always measured afresh (the
    result is also stored in the plan cache).

    Args:
        denoiser: as in :func:`sample_many`.
        event_shape: E, as in :func:`sample_many`.
        cond: as in :func:`sample_many`.
        device: as in :func:`sample_many`.
        dtype: as in :func:`sample_many`.
        autocast: as in :func:`sample_many`.
        t_probe: the timestep the probe calls see.

    Returns:
        ``(fixed, per_row)`` in bytes.
    """
    probe, _ = _probe_for(denoiser, event_shape, cond, device, dtype, autocast, t_probe)
    fixed, per_row, _ = probe.measure(fresh=True)
    return fixed, per_row


def clear_plan_cache() -> None:
    """Forget every cached memory probe (:func:`sample_many` then probes again on its next
    call). Entries also go when their denoiser is garbage-collected."""
    _PLAN_CACHE.clear()


def _probe_for(
    denoiser: Denoiser,
    event_shape: Sequence[int],
    cond: Mapping[str, Any] | None,
    device: str | torch.device | None,
    dtype: torch.dtype,
    autocast: torch.dtype | None,
    t_probe: int,
) -> tuple[_Probe, int]:
    """(the probe, B) for :func:`plan_chunk` and :func:`row_cost`, arguments checked."""
    E = _check_event_shape(event_shape)
    _check_dtype(dtype)
    t_probe = check_int("t_probe", t_probe, minimum=0)
    cond, B, dev = _prepare_cond(cond, None, device, denoiser)
    wrapped = autocast_denoiser(denoiser, dev.type, _check_autocast(autocast))
    with torch.no_grad():
        cond = _prepared_cond(wrapped, cond, B)
    return _Probe(denoiser, wrapped, E, cond, B, dev, dtype, autocast, t_probe), B


# denoiser -> {probe key: (fixed, per_row, limit)}; weak, so an entry dies with its denoiser
_PLAN_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[float, float, int | None]]]
_PLAN_CACHE = weakref.WeakKeyDictionary()


class _Probe:
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
            self.entries = _PLAN_CACHE.setdefault(owner, {})
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
            rows = _cond_rows(self.cond, B, _rows(0, n, B, device)[1])
            check_output(self.denoiser(x, t, **rows), x)

        with torch.no_grad():
            fixed, per_row, limit = fit_row_cost(call, device, PROBE_ROWS)
        state = SAMPLER_STATE_ROWS * math.prod(E) * torch.empty((), dtype=self.dtype).element_size()
        return fixed, per_row + state, limit


def _plan(
    probe: _Probe, rows: int, max_batch: int | None, memory_budget: int | float | None
) -> int:
    """Rows per call for ``rows`` rows in all (see :func:`plan_chunk`)."""
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


def _rows(
    r0: int, r1: int, B: int, device: torch.device, *, end: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample and condition index ``[r1 - r0]`` each of rows r0..r1-1 (row r = sample r // B of
    condition r % B); rows at or past ``end`` repeat row ``end - 1`` (a padded graph chunk)."""
    r = torch.arange(r0, r1, device=device)  # [rows]
    if end is not None and end < r1:
        r = r.clamp(max=end - 1)
    return r // B, r % B


def _cond_rows(cond: Mapping[str, Any], B: int, b_idx: torch.Tensor) -> dict[str, Any]:
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


def _check_samples(y: object, r0: int, r1: int, B: int) -> torch.Tensor:
    """The sampler's answer for rows r0..r1-1: a tensor ``[r1 - r0, *E]`` of finite values.

    One ``isfinite().all()`` per chunk (a single device sync); the inputs were checked finite,
    so a NaN here comes from the denoiser or the sampler.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(expected("sampler", f"a tensor of {r1 - r0} rows", y))
    if bool(torch.isfinite(y).all()):
        return y
    bad = (~torch.isfinite(y)).reshape(y.shape[0], -1).any(1).nonzero().flatten().tolist()
    first = r0 + bad[0]
    raise ValueError(
        f"denoiser: produced non-finite samples in rows {r0}..{r1 - 1} ({len(bad)} of "
        f"{r1 - r0} rows hold NaN/inf; the first is row {first}, sample {first // B} of "
        f"condition {first % B}) from finite x_T and cond; look for an overflow in the denoiser "
        "(fp16?) or a wrong prediction= type"
    )


def _resolve_sampler(sampler: str | Sampler) -> Sampler:
    if isinstance(sampler, str):
        return SAMPLERS[check_choice("sampler", sampler, SAMPLERS)]
    if not callable(sampler):
        raise TypeError(
            expected(
                "sampler", f"a sampler function or one of {', '.join(map(repr, SAMPLERS))}", sampler
            )
        )
    return sampler


def _check_event_shape(event_shape: object) -> tuple[int, ...]:
    if isinstance(event_shape, str) or not isinstance(event_shape, Sequence):
        raise TypeError(expected("event_shape", "a sequence of positive integers", event_shape))
    return tuple(check_int(f"event_shape[{i}]", d) for i, d in enumerate(event_shape))


def _check_dtype(dtype: object) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")


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


def _prepare_cond(
    cond: object,
    cond_ids: object,
    device: str | torch.device | None,
    denoiser: object,
    extras: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], int, torch.device]:
    """(cond and the per-condition ``extras`` in one dict on the sampling device, B, that
    device), after checking that every tensor has B rows."""
    if cond is None:
        cond = {}
    if not isinstance(cond, Mapping):
        raise TypeError(expected("cond", "a mapping of keyword tensors for the denoiser", cond))
    clash = [k for k in cond if isinstance(k, str) and k.startswith("@")]
    if clash:
        raise ValueError(f"cond: names starting with '@' are sample_many's own, got {clash}")
    cond = {**cond, **(extras or {})}
    B = _num_conditions(cond, cond_ids)
    dev = _resolve_device(device, cond, denoiser)
    moved = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    return moved, B, dev


def _num_conditions(cond: Mapping[str, Any], cond_ids: Any) -> int:
    sizes = {k: v.shape[0] for k, v in cond.items() if isinstance(v, torch.Tensor) and v.ndim}
    scalars = [k for k, v in cond.items() if isinstance(v, torch.Tensor) and not v.ndim]
    if scalars:
        raise ValueError(
            f"cond: every tensor needs a leading condition dimension B; got 0-d tensors for {scalars}"
        )
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"cond: every tensor must have the same leading dimension B (one row per condition); "
            f"got {sizes}"
        )
    B = next(iter(sizes.values())) if sizes else 1 if cond_ids is None else len(cond_ids)
    if B < 1:  # an empty batch of windows: nothing to sample, and no chunk size to plan
        raise ValueError(f"cond: expected at least one condition (B >= 1), got B = {B}")
    return B


def _check_cond_ids(cond_ids: Any, B: int, device: torch.device) -> torch.Tensor:
    if cond_ids is None:
        return torch.arange(B, device=device)
    if isinstance(cond_ids, (str, bytes)) or not isinstance(cond_ids, (torch.Tensor, Sequence)):
        raise TypeError(expected("cond_ids", "a tensor or sequence of integer ids", cond_ids))
    ids = torch.as_tensor(cond_ids, device=device)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise TypeError(expected("cond_ids", "integer ids", ids))
    if ids.shape != (B,):
        raise ValueError(
            expected("cond_ids", f"shape [{B}] (one id per condition, B from cond)", ids)
        )
    return ids.long()


def _resolve_device(device: Any, cond: Mapping[str, Any], denoiser: Any) -> torch.device:
    if device is not None:
        return check_device("device", device)
    for v in cond.values():
        if isinstance(v, torch.Tensor):
            return v.device
    if isinstance(denoiser, torch.nn.Module):
        for p in denoiser.parameters():
            return p.device
    return torch.device("cpu")
