"""``sample_many``: fold n_samples into the batch, chunk rows to fit memory, keep results
independent of the chunking.

Dimensions: S samples per condition, B conditions, M = S * B rows, C rows of one chunk,
E event shape, K sampling steps.

Row r holds sample ``r // B`` of condition ``r % B``, so the rows reshape to ``[S, B, *E]``
without a copy. The noise of a row is keyed by (seed, condition id, sample index, step)
(see :mod:`diffsample.noise`), never by its chunk or batch position.

A call is planned first (:func:`diffsample.planning.plan_sampling`: every argument check, the
memory probe of :mod:`diffsample.chunking`, the rows per call), then run here chunk by chunk,
eagerly or as replays of one captured chunk, with OOM back-off.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._utils import check_int, expected, progress_bar

# the chunking constants (defined here until the planning/chunking split) still import from here
from .chunking import (  # noqa: F401
    CPU_MIN_ROWS,
    CPU_WORKING_SET,
    DEFAULT_FRACTION,
    PLAN_CACHE,
    PROBE_ROWS,
    SAMPLER_STATE_ROWS,
    cond_rows,
    plan_rows,
    row_indices,
)
from .graph import ChunkGraph, HostSyncError
from .memory import back_off, is_oom
from .noise import keyed_normal, keyed_normal_steps, row_keys
from .planning import MAX_SAMPLES, Plan, plan_sampling, probe_for, sampler_extras
from .prediction import Denoiser
from .samplers import SAMPLERS, Known, Sampler, check_grid  # noqa: F401 (re-exported)
from .schedules import NoiseSchedule

__all__ = ["clear_plan_cache", "plan_chunk", "row_cost", "sample_many"]

log = logging.getLogger(__name__)

# A stochastic sampler's keyed noise is drawn for several steps at once, up to this many bytes
# (per-op overhead dominates one step of a small chunk); see _StepNoise.
NOISE_BLOCK_BYTES = 1 << 20


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
    plan = plan_sampling(
        sampler,
        denoiser,
        event_shape,
        n_samples,
        schedule=schedule,
        timesteps=timesteps,
        cond=cond,
        cond_ids=cond_ids,
        prior_mean=prior_mean,
        known_values=known_values,
        known_mask=known_mask,
        max_batch=max_batch,
        memory_budget=memory_budget,
        seed=seed,
        device=device,
        dtype=dtype,
        autocast=autocast,
        graph=graph,
        sampler_kwargs=sampler_kwargs,
    )
    graph = plan.graph
    why_not = _graph_unavailable(plan.device, plan.callback, plan.cond) if graph else None
    if why_not is not None:
        warnings.warn(f"sample_many: graph=True {why_not}; sampling eagerly", stacklevel=2)
        graph = False
    K = len(plan.timesteps)
    with (
        torch.no_grad(),
        progress_bar(
            total=math.ceil(plan.M / plan.chunk) * K,
            desc="sample_many",
            unit="step",
            progress=progress,
        ) as bar,
    ):
        bar.set_postfix(rows=plan.M, chunk=plan.chunk)
        out = _Chunks(plan, graph, bar).run()  # [S * B, *E]
    return out.view(plan.S, plan.B, *plan.E)


class _Chunks:
    """The running half of :func:`sample_many`: the plan's M rows, chunk by chunk, through the
    sampler, eagerly or (``graph``) as replays of the first chunk's captured step loop; an
    out-of-memory chunk halves the rows per call and is redone, finished chunks are kept."""

    def __init__(self, plan: Plan, graph: bool, bar: Any) -> None:
        self.plan, self.graph, self.bar = plan, graph, bar
        self.chunk = plan.chunk  # rows per call, lowered by an OOM
        self.replay: ChunkGraph | None = None
        self.cond = {**plan.cond, **plan.extras}  # each [B, ...]

    def run(self) -> torch.Tensor:
        """All rows ``[M, *E]``."""
        p = self.plan
        out = torch.empty((p.M, *p.E), dtype=p.dtype, device=p.device)  # [S * B, *E]
        r0 = 0
        while r0 < p.M:
            r1 = min(r0 + self.chunk, p.M)
            # graph mode: every chunk has `chunk` rows; the last one's padding repeats its
            # last row (same keys, same cond) and is dropped in `draw`
            s_idx, b_idx = row_indices(
                r0, r0 + self.chunk if self.graph else r1, p.B, p.device, end=r1
            )
            keys = row_keys(p.key, p.ids[b_idx], s_idx)  # [C]
            rows = cond_rows(self.cond, p.B, b_idx)
            try:
                y = self.draw(keys, rows, r1 - r0)
            except Exception as exc:
                if not is_oom(exc) or r1 - r0 == 1:
                    raise
                failed = True
            else:
                failed = False
            if failed:  # outside the except block, so the failed chunk's tensors are released
                self.back_off(r0, r1)
                continue
            out[r0:r1] = _check_samples(y, r0, r1, p.B)
            r0 = r1
        return out

    def draw(self, keys: torch.Tensor, rows: Mapping[str, Any], n: int) -> torch.Tensor:
        """The first ``n`` rows' samples ``[n, *E]`` of one chunk (keys ``[C]``, cond rows
        ``[C, ...]``), eagerly or by a graph replay (captured on the first chunk)."""
        if not self.graph:
            return self.sample(keys, rows, self.on_step)
        if self.replay is None:
            self.replay, y = _capture(self.sample, keys, rows)
            self.graph = self.replay is not None
        else:
            y = self.replay(keys, rows)
        self.bar.update(len(self.plan.timesteps))
        return y[:n]  # [n, *E]: the padded rows dropped

    def sample(
        self, keys: torch.Tensor, rows: Mapping[str, Any], callback: Any = None
    ) -> torch.Tensor:
        """One chunk, eagerly: keys [C] -> samples [C, *E] (what a chunk graph captures)."""
        p = self.plan
        rows = dict(rows)
        extra = sampler_extras({k: rows.pop(k) for k in p.extras})
        x_T = keyed_normal(keys, -1, p.E, dtype=p.dtype)  # [C, *E]
        if "prior_mean" in extra:  # x_T ~ N(mu, I)
            x_T = x_T + extra["prior_mean"]
        return p.sample_fn(
            p.denoiser,
            x_T,
            p.schedule,
            p.timesteps,
            cond=rows,
            noise_sampler=_StepNoise(keys, p.E, p.dtype, len(p.timesteps)),
            progress=False,
            callback=callback,
            **extra,
            **p.sampler_kwargs,
        )

    def on_step(self, info: dict[str, Any]) -> None:
        self.bar.update(1)
        if self.plan.callback is not None:
            self.plan.callback(info)

    def back_off(self, r0: int, r1: int) -> None:
        """After chunk r0..r1-1 ran out of memory: fewer rows per call from r0 on, eagerly (a
        graph of the old size would not fit), and the probe's cached limit lowered."""
        p = self.plan
        self.replay, self.graph = None, False
        self.chunk = back_off(r1 - r0, p.device, "sample_many")
        p.probe.limit_to(self.chunk)
        self.bar.total = self.bar.n + math.ceil((p.M - r0) / self.chunk) * len(p.timesteps)
        self.bar.set_postfix(rows=p.M, chunk=self.chunk)


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
            stacklevel=5,  # the caller of sample_many, through _Chunks.run and .draw
        )
        return None, run(keys, rows)
    try:
        replay.capture()
    except Exception as exc:  # a sync, a CPU op or an uncapturable kernel in the step loop
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(
            f"sample_many: graph=True could not capture the step loop "
            f"({type(exc).__name__}: {first_line}); sampling eagerly",
            stacklevel=5,  # the caller of sample_many, through _Chunks.run and .draw
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
    probe, B = probe_for(denoiser, event_shape, cond, device, dtype, autocast, t_probe)
    S = check_int("n_samples", n_samples, maximum=MAX_SAMPLES)
    return plan_rows(probe, S * B, max_batch, memory_budget)


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
    probe, _ = probe_for(denoiser, event_shape, cond, device, dtype, autocast, t_probe)
    fixed, per_row, _ = probe.measure(fresh=True)
    return fixed, per_row


def clear_plan_cache() -> None:
    """Forget every cached memory probe (:func:`sample_many` then probes again on its next
    call). Entries also go when their denoiser is garbage-collected."""
    PLAN_CACHE.clear()
