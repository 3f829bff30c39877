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
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from .._utils import (
    check_choice,
    check_int,
    check_number,
    check_tensor,
    expected,
    progress_bar,
)
from ..distributed import Ranks
from ..memory import check_fits
from ..metrics import ForecastMetrics
from ..samplers import SAMPLERS, Sampler
from ..schedules import Spacing
from .baselines import residual_baselines
from .data import ForecastDataset, ForecastSplit, WindowBatch
from .model import Forecast, ITransformerDiffusion

__all__ = [
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
]

# Sampling and scoring one batch peaks at about three float32 copies of its samples
# [S, B, H, N] (measured on the CPU at S = 200..800, B = 64..256: 3.0x): the sampler's output,
# the forecast's scaled copy, the metrics' sorted copy. A lower bound: a run refused for
# needing more than the memory available could not have run.
PEAK_COPIES = 3


@runtime_checkable
class Forecaster(Protocol):
    """What :func:`evaluate_split` scores: anything with this ``forecast`` (the diffusion
    forecaster, the baselines of :mod:`~diffsample.forecast.baselines`, a user's own model).

    ``forecast`` returns a :class:`~diffsample.forecast.forecast.Forecast` with samples
    ``[S, B, H, N]`` and a point ``[B, H, N]`` in the split's (scaled) units; the draws of a
    window should be keyed by its id and ``seed``, so that its samples do not depend on the
    batch. ``name`` names it in results; ``device`` is where it wants the windows.
    """

    name: str

    @property
    def device(self) -> torch.device: ...

    def forecast(
        self,
        history: torch.Tensor,
        n_samples: int,
        *,
        time_features: torch.Tensor | None = ...,
        window_ids: torch.Tensor | None = ...,
        seed: int = ...,
        progress: bool | None = ...,
    ) -> Forecast: ...


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The scores of a split and how they were obtained.

    Attributes:
        metrics: metric name -> value: every key of :meth:`diffsample.ForecastMetrics.compute`
            (``crps``, ``quantile_crps``, ``mse_mean``, ``coverage_90``, ...) for the samples,
            plus ``point_mse`` and ``point_mae`` of the backbone's point forecast.
        sampler: the sampler's name (a function's ``__name__``); for a forecaster other than
            the diffusion one, its ``name``.
        steps: K sampling steps (0 for a forecaster other than the diffusion one).
        samples: S samples per window.
        windows: windows scored.
        seconds: wall time of the forecast calls (backbone and sampling), device synchronised.
        scoring_seconds: wall time of the metrics.
        per_step: column name -> H values, the scores of each horizon step averaged over
            windows and variates (:func:`step_table` of the accumulator's per-step
            breakdown); empty if not computed.
        peak_memory_bytes: on CUDA, the most device memory allocated during the evaluation
            (sampling and scoring); None on other devices.
        spacing: the grid of the sampling steps; None for a forecaster other than the
            diffusion one.
    """

    metrics: Mapping[str, float]
    sampler: str
    steps: int
    samples: int
    windows: int
    seconds: float
    scoring_seconds: float = 0.0
    per_step: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    peak_memory_bytes: int | None = None
    spacing: str | None = None

    @property
    def seconds_per_window(self) -> float:
        """Wall time of the forecast calls per window scored."""
        return self.seconds / max(self.windows, 1)

    def __post_init__(self) -> None:
        # private copies: the caller's dicts changing later must not change a frozen record
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})
        per_step = {k: tuple(float(x) for x in v) for k, v in self.per_step.items()}
        object.__setattr__(self, "per_step", per_step)

    def as_dict(self) -> dict[str, float | int | str]:
        """One flat JSON-ready dict: the metrics, then ``windows``, ``samples``, ``steps``,
        ``sampler``, ``sampling_seconds`` and ``scoring_seconds`` (rounded to milliseconds).
        NaN metrics stay NaN here; :func:`diffsample.forecast.report.write_json` writes them
        as null."""
        return {
            **self.metrics,
            "windows": self.windows,
            "samples": self.samples,
            "steps": self.steps,
            "sampler": self.sampler,
            **({} if self.spacing is None else {"spacing": self.spacing}),
            "sampling_seconds": round(self.seconds, 3),
            "scoring_seconds": round(self.scoring_seconds, 3),
            "seconds_per_window": round(self.seconds_per_window, 6),
            **(
                {}
                if self.peak_memory_bytes is None
                else {"peak_memory_bytes": self.peak_memory_bytes}
            ),
        }


# the per-step table's columns, in the order of 0.4.0's StepMetrics (then coverage_<p>)
STEP_COLUMNS = ("point_mse", "point_mae", "mse_mean", "mae_mean", "crps")


def step_table(metrics: ForecastMetrics) -> dict[str, tuple[float, ...]]:
    """The per-horizon-step table of an accumulator with ``breakdown_dim`` on the horizon:
    ``step`` (1..H), ``point_mse``, ``point_mae`` (if a point was scored), ``mse_mean``,
    ``mae_mean``, ``crps``, ``coverage_<p>`` per level; empty before the first update."""
    by_step = metrics.breakdown()
    if not by_step:
        return {}
    horizon = len(by_step["crps"])
    out: dict[str, tuple[float, ...]] = {"step": tuple(float(h + 1) for h in range(horizon))}
    wanted = [*STEP_COLUMNS, *(k for k in by_step if k.startswith("coverage_"))]
    out.update({k: by_step[k] for k in wanted if k in by_step})
    return out


class StepMetrics:
    """Scores per horizon step, streaming. Deprecated: use ``ForecastMetrics(breakdown_dim=1)``
    (its ``breakdown()``), which :func:`evaluate_split` uses; this wrapper over it stays because
    0.4.0 exported it, with the same columns and results.

    Columns of :meth:`compute`: ``step`` (1..H), ``point_mse``, ``point_mae`` (the backbone's
    point forecast), ``mse_mean``, ``mae_mean`` (the mean of the samples), ``crps`` (exact,
    ecdf), ``coverage_<p>`` per interval level (p in percent), each averaged over windows and
    variates.

    Args:
        levels: central interval levels, each in (0, 1).
    """

    def __init__(self, *, levels: Sequence[float] = (0.5, 0.9)) -> None:
        warnings.warn(
            "StepMetrics is deprecated: use diffsample.metrics.ForecastMetrics(breakdown_dim=1) "
            "and its breakdown()",
            DeprecationWarning,
            stacklevel=2,
        )
        levels = tuple(
            check_number(f"levels[{i}]", v, minimum=0.0, maximum=1.0, open_min=True, open_max=True)
            for i, v in enumerate(levels)
        )
        # the median is the only quantile level needed: no quantile CRPS is reported
        self._metrics = ForecastMetrics(
            levels=levels, quantiles=(0.5,), variate_dim=None, breakdown_dim=1
        )

    def update(
        self, samples: torch.Tensor, obs: torch.Tensor, point: torch.Tensor | None = None
    ) -> None:
        """Add one batch.

        Args:
            samples: ``[S, B, H, N]``.
            obs: ``[B, H, N]``.
            point: ``[B, H, N]`` point forecast, or None (its columns are then not reported).
        """
        check_tensor("samples", samples, floating=True)
        check_tensor("obs", obs, floating=True)
        if samples.ndim != 4 or obs.shape != samples.shape[1:]:
            raise ValueError(
                f"samples, obs: expected [S, B, H, N] and [B, H, N], got "
                f"{tuple(samples.shape)} and {tuple(obs.shape)}"
            )
        self._metrics.update(samples, obs, point=point)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The additive state (copies, :meth:`ForecastMetrics.state_dict`); sum them across
        processes and load the result."""
        return self._metrics.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the state by ``state`` (a :meth:`state_dict`, e.g. summed over ranks)."""
        if not isinstance(state, Mapping):
            raise TypeError(expected("state", "a StepMetrics.state_dict()", state))
        self._metrics.load_state_dict(dict(state))

    def overall(self, column: str) -> float:
        """A column's mean over every step, window and variate (NaN before the first update)."""
        return self._metrics.compute().get(column, math.nan)

    def compute(self) -> dict[str, tuple[float, ...]]:
        """Column name -> H values (means per step); empty before the first update."""
        return step_table(self._metrics)


def check_evaluation_args(
    *,
    n_samples: object,
    num_steps: object,
    sampler: object,
    batch_size: object,
    max_windows: object,
    num_train_steps: int | None = None,
) -> tuple[int, int, int, int | None]:
    """The sampling settings of :func:`evaluate_split`, checked (the command checks them before
    training, so that a bad value fails in a second, not after the training it follows).

    Args:
        n_samples: S, as for :func:`evaluate_split`.
        num_steps: K.
        sampler: a name in :data:`diffsample.SAMPLERS` or a sampler function.
        batch_size: windows per forecast call.
        max_windows: a window count, or None.
        num_train_steps: the model's T, if known: ``num_steps`` may not exceed it.

    Returns:
        ``(n_samples, num_steps, batch_size, max_windows)`` as ints (``max_windows`` may be None).

    Raises:
        TypeError: a non-integer count, a sampler that is neither a name nor a callable.
        ValueError: a count below 1, an unknown sampler name, more steps than T.
    """
    if isinstance(sampler, str):
        check_choice("sampler", sampler, SAMPLERS)
    elif not callable(sampler):
        raise TypeError(expected("sampler", "a name in SAMPLERS or a sampler function", sampler))
    steps = check_int("num_steps", num_steps)
    if num_train_steps is not None:
        check_num_steps(steps, num_train_steps)
    return (
        check_int("n_samples", n_samples),
        steps,
        check_int("batch_size", batch_size),
        None if max_windows is None else check_int("max_windows", max_windows),
    )


def check_num_steps(
    num_steps: int,
    num_train_steps: int,
    *,
    name: str = "num_steps",
    t_name: str = "the model's num_train_steps",
) -> int:
    """``num_steps`` if a grid of that many sampling steps fits the model's T training steps.

    Every sampling setting goes through this before any work (``evaluate_split``, ``train``'s
    calibration, the command before training), not at the first sampling call after it.

    Raises:
        ValueError: ``num_steps > num_train_steps``, naming ``name`` and where T comes from.
    """
    steps = check_int(name, num_steps)
    if steps > num_train_steps:
        raise ValueError(
            f"{name}: expected at most T = {num_train_steps} sampling steps ({t_name}), got {steps}"
        )
    return steps


def sampling_bytes(n_samples: int, windows: int, horizon: int, n_variates: int) -> int:
    """Memory that sampling and scoring one call of ``windows`` windows peaks at, about:
    ``PEAK_COPIES`` float32 copies of the samples ``[S, B, H, N]``."""
    return PEAK_COPIES * n_samples * windows * horizon * n_variates * 4


def check_sampling_memory(
    needed: int,
    device: str | torch.device,
    *,
    name: str,
    what: str,
    hint: str,
) -> None:
    """ValueError if ``needed`` bytes exceed what ``device`` has available
    (:func:`diffsample.memory.check_fits`), before anything is allocated.

    Args:
        needed: bytes (e.g. :func:`sampling_bytes`).
        device: where they would be allocated.
        name: the argument(s) to blame.
        what: what needs them, e.g. ``"100 samples x 256 windows x [96, 7] (H, N)"``.
        hint: what to lower.
    """
    check_fits(needed, device, name=name, what=what, hint=hint, purpose=" to sample and score")


def _check_windows(windows: object, n_split: int, max_windows: object) -> torch.Tensor | None:
    """``windows`` as a long tensor ``[n]`` of ascending, distinct split indices, or None."""
    if windows is None:
        return None
    if max_windows is not None:
        raise ValueError("windows, max_windows: expected one of them, got both")
    if isinstance(windows, (str, bytes)) or not isinstance(windows, (torch.Tensor, Sequence)):
        raise TypeError(expected("windows", "a sequence or tensor of split indices", windows))
    t = torch.as_tensor(windows)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim != 1 or t.numel() == 0:
        raise TypeError(expected("windows", "a non-empty 1-D sequence of integer indices", t))
    t = t.long().cpu()
    if int(t.min()) < 0 or int(t.max()) >= n_split or bool((t[1:] <= t[:-1]).any()):
        raise ValueError(
            f"windows: expected ascending, distinct indices in 0..{n_split - 1}, got "
            f"{t[:8].tolist()}{'...' if t.numel() > 8 else ''}"
        )
    return t


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
    :meth:`ITransformerDiffusion.forecast`: sampler, num_steps, seed...).
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
    n_samples: int = 100,
    num_steps: int = 10,
    sampler: str | Sampler = "dpmpp_2m",
    spacing: Spacing = "logsnr",
    batch_size: int = 256,
    max_windows: int | None = None,
    windows: Sequence[int] | torch.Tensor | None = None,
    seed: int = 0,
    progress: bool | None = None,
    on_batch: Callable[[WindowBatch, Forecast], None] | None = None,
    group: Any = None,
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
            same way; ``num_steps`` and ``sampler`` apply to the diffusion forecaster only.
        split: windows with history x ``[W, L, N]`` and targets y ``[W, H, N]``.
        n_samples: S samples per window.
        num_steps: K sampling steps.
        spacing: their grid (:meth:`ITransformerDiffusion.forecast`; "logsnr" by default).
        sampler: a name in :data:`diffsample.SAMPLERS` or a sampler function. The defaults
            (DPM-Solver++(2M), 10 steps, 100 samples) score ETTh1 within 1% of DDIM-50 (better)
            at a fifth of the cost; 100 samples because interval coverage read from fewer is
            biased low.
        batch_size: windows per :meth:`~ITransformerDiffusion.forecast` call.
        max_windows: score only the first this many windows.
        windows: score only these split indices (ascending, no repeats), e.g.
            ``report.spread_windows(len(split), k)`` for k windows spread over the period
            (the command's ``--windows``). A window keeps the noise it has in a full run.
        seed: keys the noise together with each window's index in the split.
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

    Returns:
        An :class:`Evaluation`; ``.as_dict()`` gives the scores the ``diffsample`` command writes.
        Distributed, ``seconds`` and ``scoring_seconds`` are the slowest rank's and
        ``peak_memory_bytes`` this rank's.

    Raises:
        ValueError: a bad setting, more ``num_steps`` than the model's T, or a forecast call
            whose samples cannot fit in the memory the device has available (checked before
            any is drawn, :func:`sampling_bytes`).
        TypeError: an argument of the wrong kind.
    """
    run = _check_run(
        model,
        split,
        n_samples=n_samples,
        num_steps=num_steps,
        sampler=sampler,
        spacing=spacing,
        batch_size=batch_size,
        max_windows=max_windows,
        windows=windows,
        seed=seed,
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
        model, split, mine, run, seed=seed, progress=progress, on_batch=on_batch
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
    return Evaluation(
        metrics=scores,
        sampler=run.name,
        spacing=run.sampling.get("spacing"),
        steps=run.num_steps,
        samples=run.n_samples,
        windows=run.windows,
        seconds=seconds,
        scoring_seconds=scoring,
        per_step=per_step,
        peak_memory_bytes=int(torch.cuda.max_memory_allocated(device))
        if device.type == "cuda"
        else None,
    )


@dataclasses.dataclass(frozen=True)
class _Run:
    """One :func:`evaluate_split` call, checked.

    Attributes:
        name: the sampler's name, or the forecaster's.
        num_steps: K (0 for a forecaster other than the diffusion one).
        n_samples: S.
        batch_size: windows per forecast call.
        windows: n windows scored, over every rank.
        picked: the split indices given as ``windows=`` ``[n]``, or None (the first n).
        device: the model's.
        ranks: the processes sharing the windows.
        sampling: the sampler's keywords for the forecast calls (none for other forecasters).
    """

    name: str
    num_steps: int
    n_samples: int
    batch_size: int
    windows: int
    picked: torch.Tensor | None
    device: torch.device
    ranks: Ranks
    sampling: Mapping[str, Any]


def _check_run(
    model: ITransformerDiffusion | Forecaster,
    split: object,
    *,
    n_samples: object,
    num_steps: object,
    sampler: str | Sampler,
    spacing: object,
    batch_size: object,
    max_windows: object,
    windows: object,
    seed: int,
    on_batch: object,
    group: Any,
) -> _Run:
    """Every check of :func:`evaluate_split`, in order, before any window is sampled (the
    memory check included); distributed, the ranks' arguments are compared."""
    diffusion = isinstance(model, ITransformerDiffusion)
    if not diffusion and not isinstance(model, Forecaster):
        raise TypeError(
            expected(
                "model", "an ITransformerDiffusion or a Forecaster (name, device, forecast)", model
            )
        )
    if not isinstance(split, ForecastSplit):
        raise TypeError(expected("split", "a ForecastSplit (e.g. load_dataset(...).test)", split))
    t_steps = model.config.num_train_steps if isinstance(model, ITransformerDiffusion) else None
    n_samples, num_steps, batch_size, max_windows = check_evaluation_args(
        n_samples=n_samples,
        num_steps=num_steps,
        sampler=sampler,
        batch_size=batch_size,
        max_windows=max_windows,
        num_train_steps=t_steps,
    )
    check_choice("spacing", spacing, Spacing)
    if on_batch is not None and not callable(on_batch):
        raise TypeError(expected("on_batch", "a callable or None", on_batch))
    if len(split) == 0:
        raise ValueError("split: expected at least one window, got an empty split")
    picked = _check_windows(windows, len(split), max_windows)  # [n] split indices, or None
    n = len(split) if max_windows is None else min(max_windows, len(split))
    n = n if picked is None else len(picked)
    device = _device_of(model)
    ranks = Ranks.resolve(group, device)
    if diffusion:
        name = sampler if isinstance(sampler, str) else getattr(sampler, "__name__", "custom")
    else:
        name, num_steps = str(getattr(model, "name", type(model).__name__)), 0
    ranks.check_same("evaluate_split", (n, n_samples, num_steps, name, spacing, batch_size, seed))
    if n < ranks.world:
        raise ValueError(
            f"max_windows: expected at least one window for each of the {ranks.world} "
            f"processes, got {n} windows"
        )
    per_call = min(batch_size, -(-n // ranks.world))  # B of the largest call on this rank
    H, N = split.horizon, split.values.shape[1]
    check_sampling_memory(
        sampling_bytes(n_samples, per_call, H, N),
        device,
        name="n_samples, batch_size",
        what=f"{n_samples} samples x {per_call} windows x [{H}, {N}] (H, N)",
        hint="lower n_samples or batch_size",
    )
    sampling = {"sampler": sampler, "num_steps": num_steps, "spacing": spacing} if diffusion else {}
    return _Run(name, num_steps, n_samples, batch_size, n, picked, device, ranks, sampling)


def _score_windows(
    model: ITransformerDiffusion | Forecaster,
    split: ForecastSplit,
    mine: torch.Tensor,
    run: _Run,
    *,
    seed: int,
    progress: bool | None,
    on_batch: Callable[[WindowBatch, Forecast], None] | None,
) -> tuple[ForecastMetrics, float, float]:
    """Forecast and score this rank's windows ``mine [m]`` under one progress bar: the
    accumulator (this rank's sums), the forecast calls' seconds and the scoring seconds."""
    metrics = ForecastMetrics(breakdown_dim=1)  # [B, H, N]: the table per horizon step
    seconds, scoring = 0.0, 0.0
    bar = progress_bar(
        total=mine.numel(),
        unit="window",
        desc=f"sampling {split.name}",
        progress=progress if run.ranks.main else False,
    )
    try:
        batches = forecast_windows(
            model, split, mine, run.n_samples, batch_size=run.batch_size, seed=seed, **run.sampling
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
            bar.set_postfix_str(f"{bar.n * run.n_samples / max(seconds, 1e-9):.0f} samples/s")
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
    ``evaluate_kwargs`` (``n_samples``, ``windows``, ``seed``, ``batch_size``...; pass the
    head's, so that all four come from the same windows and the same estimators; a
    ``sampler`` or ``num_steps`` among them is checked and does not apply).

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
