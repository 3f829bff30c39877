"""Scoring a split: probabilistic forecasts batch by batch into streaming metrics, with timings.

Dimensions: S samples, B windows per forecast call, W windows scored, H horizon, N variates,
V interval levels.

    for each batch of B windows:  Forecast(samples [S, B, H, N], point [B, H, N]) = model.forecast(...)
                                   ForecastMetrics.update(samples, y, point=point)
                                       float64 sums, overall and [H] per horizon step, from
                                       one sort of the samples; nothing kept
                                   on_batch(batch, forecast)             the caller's hook
    Evaluation(metrics, sampler, steps, samples, windows, seconds, scoring_seconds, per_step)

The backbone's point_mse and point_mae are scored by the same accumulator. Windows keep their index
in the split as the key of their noise, so the scores do not depend on the batch size (up to
the float round-off of the denoiser's kernels). One progress bar covers the whole split
(windows done, samples per second, time left), not one per batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .._utils import check_int, expected, progress_bar
from ..distributed import Ranks
from ..metrics import ForecastMetrics
from ..samplers import Sampler
from ..schedules import Spacing
from .baselines import residual_baselines
from .data import ForecastDataset, ForecastSplit, WindowBatch

# the checks, the record and the per-step table live in their own modules (by concept) and
# still import from here
from .evaluation_checks import (
    PEAK_COPIES,
    check_evaluation_args,
    check_sampling_memory,
    check_windows,
    sampling_bytes,
)
from .evaluation_record import STEP_COLUMNS, Evaluation, Forecaster, StepMetrics, step_table
from .model import Forecast, ITransformerDiffusion
from .sampling_config import SamplingConfig, check_num_steps, resolve_sampling

__all__ = [
    "PEAK_COPIES",
    "STEP_COLUMNS",
    "Evaluation",
    "Forecaster",
    "StepMetrics",
    "check_evaluation_args",
    "check_num_steps",
    "check_sampling_memory",
    "evaluate_baselines",
    "evaluate_split",
    "forecast_windows",
    "sampling_bytes",
    "step_table",
]


def forecast_windows(
    model: ITransformerDiffusion | Forecaster,
    split: ForecastSplit,
    windows: torch.Tensor,
    n_samples: int,
    *,
    batch_size: int,
    **forecast_kwargs: Any,
) -> Iterator[tuple[WindowBatch, Forecast, float]]:
    """Forecast the windows ``windows [W]`` (indices into ``split``) in batches of
    ``batch_size``: yields ``(batch, forecast, seconds)``, ``seconds`` the forecast's wall time
    (the device synchronised, so it is the kernels' time, not their launch). The noise of each
    window is keyed by its index in the split, so a window gets the same samples in any batch.
    ``forecast_kwargs`` go to the forecaster's ``forecast`` (for
    :meth:`ITransformerDiffusion.forecast`: ``sampling=``, or sampler, num_steps, seed...).
    """
    device = _device_of(model)
    for lo in range(0, windows.numel(), batch_size):
        b = split.windows(windows[lo : lo + batch_size])
        t0 = time.perf_counter()
        fc = model.forecast(
            b.x,
            n_samples,
            time_features=b.x_mark,
            window_ids=b.index,
            progress=False,
            **forecast_kwargs,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield b, fc, time.perf_counter() - t0


def evaluate_split(
    model: ITransformerDiffusion | Forecaster,
    split: ForecastSplit,
    *,
    n_samples: int | None = None,
    num_steps: int | None = None,
    sampler: str | Sampler | None = None,
    spacing: Spacing | None = None,
    batch_size: int = 256,
    max_windows: int | None = None,
    windows: Sequence[int] | torch.Tensor | None = None,
    seed: int | tuple[int, ...] | None = None,
    progress: bool | None = None,
    on_batch: Callable[[WindowBatch, Forecast], None] | None = None,
    group: Any = None,
    sampling: SamplingConfig | None = None,
) -> Evaluation:
    """Score the windows of a split (all by default; the first ``max_windows``; or the given
    ``windows``), streaming: the samples of one batch are scored and dropped before the next
    is drawn.

    Runs on the model's device (the split is moved there). Under torchrun, or given a process
    ``group``, each rank scores the windows ``rank, rank + world, ...`` and the metric sums are
    added up by one ``all_reduce`` (no sample leaves its rank): every rank returns the scores of
    all windows, equal to a single process's to float round-off (the noise is keyed by window).

    Args:
        model: a trained :class:`ITransformerDiffusion`, or any :class:`Forecaster` (e.g. a
            baseline of :func:`~diffsample.forecast.baselines.residual_baselines`), scored the
            same way; of the sampling settings only ``n_samples`` and ``seed`` (an int) apply
            to a forecaster other than the diffusion one.
        split: windows with history x ``[W, L, N]`` and targets y ``[W, H, N]``.
        n_samples: S samples per window; None: ``sampling``'s (default 100).
        num_steps: K sampling steps; None: ``sampling``'s (default 10).
        sampler: a name in :data:`diffsample.SAMPLERS` or a sampler function; None:
            ``sampling``'s (default "dpmpp_2m"). The defaults (DPM-Solver++(2M), 10 steps,
            100 samples) score ETTh1 within 1% of DDIM-50 (better) at a fifth of the cost; 100
            samples because interval coverage read from fewer is biased low.
        spacing: the grid of the steps (:meth:`ITransformerDiffusion.forecast`); None:
            ``sampling``'s (default "logsnr").
        batch_size: windows per :meth:`~ITransformerDiffusion.forecast` call.
        max_windows: score only the first this many windows.
        windows: score only these split indices (ascending, no repeats), e.g.
            ``report.spread_windows(len(split), k)`` for k windows spread over the period
            (the command's ``--windows``). A window keeps the noise it has in a full run.
        seed: keys the noise together with each window's index in the split; None:
            ``sampling``'s (default 0).
        progress: one bar for the whole split (windows, samples per second, time left) when
            stderr is a terminal (None or True); off a terminal, True prints a line every 30 s
            and None nothing; False: none.
        on_batch: called after each batch is scored with the batch and its forecast
            (``samples [S, B, H, N]``, ``point [B, H, N]``, on the model's device), e.g. to
            keep some samples (:mod:`diffsample.forecast.report`); the loop keeps nothing.
            Distributed, each rank calls it for its own windows.
        group: a ``torch.distributed`` process group to shard the windows over; None: the
            default group under torchrun, else this process alone; False: this process alone
            even under torchrun (e.g. scoring on rank 0 only). Distributed, every rank must
            call this with the same arguments (checked: a ValueError on every rank).
        sampling: every sampling setting at once (a :class:`SamplingConfig`: also eta,
            clipping, autocast, graph, max_batch, memory_budget); the loose keywords above
            may repeat its values, not contradict them.

    Returns:
        An :class:`Evaluation`; ``.as_dict()`` gives the scores the ``diffsample`` command writes.
        Distributed, ``seconds`` and ``scoring_seconds`` are the slowest rank's and
        ``peak_memory_bytes`` this rank's.

    Raises:
        ValueError: a bad setting, a loose keyword that contradicts ``sampling``, more
            ``num_steps`` than the model's T, or a forecast call whose samples cannot fit in
            the memory the device has available (checked before any is drawn,
            :func:`sampling_bytes`).
        TypeError: an argument of the wrong kind.
    """
    sampling = resolve_sampling(
        sampling,
        n_samples=n_samples,
        num_steps=num_steps,
        sampler=sampler,
        spacing=spacing,
        seed=seed,
    )
    run = _check_run(
        model,
        split,
        sampling,
        batch_size=batch_size,
        max_windows=max_windows,
        windows=windows,
        on_batch=on_batch,
        group=group,
    )
    device, ranks = run.device, run.ranks
    split = split.to(device)
    mine = ranks.shard(run.windows, device)  # [~n / world] positions: all of them for one process
    if run.picked is not None:
        mine = run.picked.to(device)[mine]  # the split indices at those positions
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    metrics, seconds, scoring = _score_windows(
        model, split, mine, run, progress=progress, on_batch=on_batch
    )
    t0 = time.perf_counter()
    if ranks.group is not None:  # the sums of every rank's windows, on every rank
        state = metrics.state_dict()
        ranks.sum_(list(state.values()))
        metrics.load_state_dict(state)
    scores = metrics.compute()  # ends with point_mse, point_mae
    per_step = step_table(metrics)
    scoring += time.perf_counter() - t0
    seconds, scoring = ranks.max(seconds), ranks.max(scoring)
    diffusion = run.sampling if run.diffusion else None
    return Evaluation(
        metrics=scores,
        sampler=run.name,
        spacing=None if diffusion is None else diffusion.spacing,
        steps=0 if diffusion is None else diffusion.num_steps,
        samples=run.sampling.n_samples,
        windows=run.windows,
        seconds=seconds,
        scoring_seconds=scoring,
        per_step=per_step,
        peak_memory_bytes=int(torch.cuda.max_memory_allocated(device))
        if device.type == "cuda"
        else None,
        sampling=diffusion,
    )


@dataclasses.dataclass(frozen=True)
class _Run:
    """One :func:`evaluate_split` call, checked.

    Attributes:
        name: the sampler's name, or the forecaster's.
        diffusion: whether the forecaster is the diffusion one (the whole ``sampling``
            applies), or another (``n_samples`` and ``seed`` only).
        sampling: the sampling settings.
        batch_size: windows per forecast call.
        windows: n windows scored, over every rank.
        picked: the split indices given as ``windows=`` ``[n]``, or None (the first n).
        device: the model's.
        ranks: the processes sharing the windows.
    """

    name: str
    diffusion: bool
    sampling: SamplingConfig
    batch_size: int
    windows: int
    picked: torch.Tensor | None
    device: torch.device
    ranks: Ranks

    def forecast_kwargs(self) -> dict[str, Any]:
        """What each forecast call takes besides the windows and S: the whole config for the
        diffusion forecaster, the seed for another."""
        return {"sampling": self.sampling} if self.diffusion else {"seed": self.sampling.seed}


def _check_run(
    model: ITransformerDiffusion | Forecaster,
    split: object,
    sampling: SamplingConfig,
    *,
    batch_size: object,
    max_windows: object,
    windows: object,
    on_batch: object,
    group: Any,
) -> _Run:
    """Every check of :func:`evaluate_split` past the sampling settings', in order, before any
    window is sampled (the memory check included); distributed, the ranks' arguments are
    compared."""
    diffusion = _check_model(model, sampling)
    if not isinstance(split, ForecastSplit):
        raise TypeError(expected("split", "a ForecastSplit (e.g. load_dataset(...).test)", split))
    batch_size = check_int("batch_size", batch_size)
    max_windows = None if max_windows is None else check_int("max_windows", max_windows)
    if on_batch is not None and not callable(on_batch):
        raise TypeError(expected("on_batch", "a callable or None", on_batch))
    if len(split) == 0:
        raise ValueError("split: expected at least one window, got an empty split")
    picked = check_windows(windows, len(split), max_windows)  # [n] split indices, or None
    n = len(split) if max_windows is None else min(max_windows, len(split))
    n = n if picked is None else len(picked)
    device = _device_of(model)
    ranks = Ranks.resolve(group, device)
    name = sampling.sampler_name if diffusion else str(getattr(model, "name", type(model).__name__))
    ranks.check_same("evaluate_split", (n, batch_size, name, sampling.as_dict()))
    if n < ranks.world:
        raise ValueError(
            f"max_windows: expected at least one window for each of the {ranks.world} "
            f"processes, got {n} windows"
        )
    per_call = min(batch_size, -(-n // ranks.world))  # B of the largest call on this rank
    S, H, N = sampling.n_samples, split.horizon, split.values.shape[1]
    check_sampling_memory(
        sampling_bytes(S, per_call, H, N),
        device,
        name="n_samples, batch_size",
        what=f"{S} samples x {per_call} windows x [{H}, {N}] (H, N)",
        hint="lower n_samples or batch_size",
    )
    return _Run(name, diffusion, sampling, batch_size, n, picked, device, ranks)


def _check_model(model: object, sampling: SamplingConfig) -> bool:
    """Whether ``model`` is the diffusion forecaster (its T checked against the steps), else
    a :class:`Forecaster` (which takes an int seed); TypeError for anything else."""
    if isinstance(model, ITransformerDiffusion):
        check_num_steps(sampling.num_steps, model.config.num_train_steps)
        return True
    if not isinstance(model, Forecaster):
        raise TypeError(
            expected(
                "model", "an ITransformerDiffusion or a Forecaster (name, device, forecast)", model
            )
        )
    if not isinstance(sampling.seed, int):
        raise TypeError(
            expected("seed", "an int for a forecaster other than the diffusion one", sampling.seed)
        )
    return False


def _score_windows(
    model: ITransformerDiffusion | Forecaster,
    split: ForecastSplit,
    mine: torch.Tensor,
    run: _Run,
    *,
    progress: bool | None,
    on_batch: Callable[[WindowBatch, Forecast], None] | None,
) -> tuple[ForecastMetrics, float, float]:
    """Forecast and score this rank's windows ``mine [m]`` under one progress bar: the
    accumulator (this rank's sums), the forecast calls' seconds and the scoring seconds."""
    metrics = ForecastMetrics(breakdown_dim=1)  # [B, H, N]: the table per horizon step
    seconds, scoring = 0.0, 0.0
    S = run.sampling.n_samples
    bar = progress_bar(
        total=mine.numel(),
        unit="window",
        desc=f"sampling {split.name}",
        progress=progress if run.ranks.main else False,
    )
    try:
        batches = forecast_windows(
            model, split, mine, S, batch_size=run.batch_size, **run.forecast_kwargs()
        )
        for b, fc, sampled in batches:  # the one bar is this loop's
            t1 = time.perf_counter()
            metrics.update(fc.samples, b.y, point=fc.point)
            if run.device.type == "cuda":  # the metrics' kernels too
                torch.cuda.synchronize(run.device)
            seconds, scoring = seconds + sampled, scoring + time.perf_counter() - t1
            if on_batch is not None:
                on_batch(b, fc)
            bar.update(b.x.shape[0])
            bar.set_postfix_str(f"{bar.n * S / max(seconds, 1e-9):.0f} samples/s")
    finally:
        bar.close()
    return metrics, seconds, scoring


def _device_of(model: ITransformerDiffusion | Forecaster) -> torch.device:
    """Where a forecaster runs: a module's parameters' device, else its ``device``."""
    if isinstance(model, torch.nn.Module):
        return next(model.parameters()).device
    return torch.device(model.device)


def evaluate_baselines(
    model: ITransformerDiffusion,
    data: ForecastDataset,
    split: str = "test",
    **evaluate_kwargs: Any,
) -> dict[str, Evaluation]:
    """The three baselines of :func:`~diffsample.forecast.baselines.residual_baselines` on
    ``model``'s backbone, each scored by :func:`evaluate_split` on ``data``'s ``split`` with
    ``evaluate_kwargs`` (``n_samples``, ``windows``, ``seed``, ``batch_size``, ``sampling``...;
    pass the head's, so that all four come from the same windows and the same estimators; the
    settings that do not apply to a baseline, ``sampler``, ``num_steps`` and the like, are
    checked and unused).

    Returns:
        ``{"gaussian_train_sigma": ..., "gaussian_val_sigma": ..., "bootstrap": ...}``.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(expected("split", '"train", "val" or "test"', split))
    scored = getattr(data, split)
    return {
        name: evaluate_split(f, scored, **{"progress": False, **evaluate_kwargs})
        for name, f in residual_baselines(model, data).items()
    }
