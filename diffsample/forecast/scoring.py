"""Scoring a split the way the ``diffsample`` command does: :func:`score`.

:class:`Scoring` (:mod:`diffsample.forecast.sampling_config`, and importable from here) holds
how a split is sampled and scored and what is kept, checked when built; :func:`score` samples and scores a split with the head's baselines beside it (Gaussian
residuals with train- or validation-fitted sigma, bootstrapped training residuals: the same
windows, samples and seed), says the scores, then writes the files named after the results
file, each atomically and in order of worth: results JSON, per-step CSV, samples, TSLib's
files, fan chart; under torchrun rank 0 writes (the scores are every rank's windows').
:mod:`diffsample.forecast.run` guards the outputs and calls it after training or loading.

Progress goes to ``say``, a line at a time (the command prints on rank 0; None: silent).

Dimensions: S samples, W windows scored, H horizon, N variates.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .._utils import check_choice
from ..distributed import torchrun_rank_world
from .data import ForecastDataset, ForecastSplit, WindowBatch
from .evaluation import Evaluation, evaluate_baselines, evaluate_split
from .model import Forecast, ForecastConfig, ITransformerDiffusion
from .report import (
    OutputFiles,
    SampleStore,
    WindowKeeper,
    fan_chart,
    have_matplotlib,
    per_step_columns,
    results_dict,
    spread_windows,
    write_json,
    write_per_step_csv,
)
from .sampling_config import SamplingConfig, Scoring
from .training import TrainConfig, TrainResult
from .tslib import PointKeeper, TSLibRun

__all__ = [
    "MISSING_MATPLOTLIB",
    "SPLITS",
    "OnBatch",
    "RunResult",
    "Say",
    "Scoring",
    "can_plot",
    "score",
    "silent",
]

PathLike = str | os.PathLike[str]
Say = Callable[[str], None]
OnBatch = Callable[[WindowBatch, Forecast], None]
SPLITS = ("test", "val", "train")  # the ForecastDataset attributes a model can be scored on
MISSING_MATPLOTLIB = (
    "note: no fan chart: matplotlib is not installed (pip install 'diffsample[plot]')"
)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a run scored and wrote.

    Attributes:
        model: the model scored (trained in place by
            :func:`~diffsample.forecast.run.train_and_score`).
        data: the data it was scored on.
        evaluation: the head's scores (:func:`~diffsample.forecast.evaluate_split`).
        baselines: name -> the baselines' scores on the same windows; None: not scored.
        files: what was written, name -> path, in the order written (``results``,
            ``per_step``, ``samples``, TSLib's ``tslib_pred`` / ``tslib_true`` /
            ``tslib_metrics``, ``fan_chart``); empty on the ranks that do not write.
        training: what training did, for :func:`~diffsample.forecast.run.train_and_score`;
            else None.
    """

    model: ITransformerDiffusion
    data: ForecastDataset
    evaluation: Evaluation
    baselines: dict[str, Evaluation] | None
    files: dict[str, Path]
    training: TrainResult | None = None


# ---------------------------------------------------------------------------------------- score
def score(
    model: ITransformerDiffusion,
    data: ForecastDataset,
    split: str = "test",
    *,
    results: PathLike,
    scoring: Scoring | None = None,
    device: str | torch.device | None = None,
    command: str = "score",
    checkpoint: PathLike | None = None,
    train_config: TrainConfig | None = None,
    training: TrainResult | None = None,
    tslib: TSLibRun | None = None,
    plot: bool | None = None,
    progress: bool | None = None,
    on_batch: OnBatch | None = None,
    say: Say | None = None,
) -> RunResult:
    """Sample and score ``data``'s ``split`` (the baselines beside the head), say the scores,
    then write the files named after ``results`` (the scores first). No path checks or lock:
    :func:`~diffsample.forecast.run.train_and_score` and
    :func:`~diffsample.forecast.run.score_checkpoint` make them before any work.

    Args:
        model: a trained model.
        data: its data.
        split: ``"test"``, ``"val"`` or ``"train"``.
        results: the results file ``<name>.json``; the others are ``<name>_per_step.csv``,
            ``<name>_samples.npz`` (``save_samples``) and ``<name>_fan_chart.png``.
        scoring: the sampling and scoring (default ``Scoring()``).
        device: where the model is, as ``results.json`` records it; None: its parameters'.
        command: what ``results.json`` names the run.
        checkpoint: the model's file, recorded.
        train_config: the trainer's settings, if trained in this run, recorded.
        training: what training did, if in this run (its epochs and time are recorded).
        tslib: a Time-Series-Library run: its pred.npy, true.npy, metrics.npy and ledger line.
        plot: draw the fan chart; None: if matplotlib imports (else a note to ``say``).
        progress: the sampling bar, as for ``evaluate_split``.
        on_batch: also called with each batch and its forecast, as for ``evaluate_split``
            (e.g. a diagnosis of the samples), after the run's own keeping.
        say: takes each progress line; None: silent.
    """
    scoring, say = scoring or Scoring(), say or silent
    check_choice("split", split, SPLITS)
    files = OutputFiles.beside(results)
    where = next(model.parameters()).device if device is None else torch.device(device)
    plot = can_plot(say) if plot is None else plot
    scored = getattr(data, split)
    n, picked = _picked(len(scored), scoring.windows)
    kept = _Kept(scored, picked or list(range(n)), model.config, scoring, tslib, on_batch)
    world = torchrun_rank_world()[1]
    scoring = runnable(scoring, where, say)
    say(f"sampling the {split} set: {n} windows x {_sampling_text(scoring, world)}")
    if kept.store is not None:
        mib = kept.store.samples.numel() * kept.store.samples.element_size() / 2**20
        say(f"--save-samples: keeping all {mib:.0f} MiB of samples in memory to write them")
    ev, baselines = _evaluate(model, data, split, scoring, picked, kept, progress)
    for line in _score_lines(ev, baselines, split, data.source):
        say(line)
    written: dict[str, Path] = {}
    if torchrun_rank_world()[0] == 0:  # rank 0 writes (the scores are every rank's windows')
        report = results_dict(
            command=command,
            data=data.spec(),
            split=split,
            evaluation=ev,
            config=model.config,
            device=where,
            checkpoint=checkpoint,
            train_config=train_config,
            history=() if training is None else training.history,
            training_seconds=None if training is None else training.seconds,
            files={
                "per_step": files.per_step,
                "fan_chart": files.fan_chart if plot else None,
                "samples": files.samples if kept.store is not None else None,
            },
            processes=world,
            baselines=baselines,
        )
        report = _with_sampling(report, scoring.sampling)
        written = _write(report, ev, baselines, files, data, split, kept, tslib, plot, say)
    return RunResult(model, data, ev, baselines, written, training)


def _picked(n_split: int, windows: int | None) -> tuple[int, list[int] | None]:
    """(W, the split indices scored or None for the first W = all): ``windows`` spread evenly
    over the split's period, not its first ones."""
    if windows is None:
        return n_split, None
    n = min(windows, n_split)
    return n, spread_windows(n_split, n)


def runnable(scoring: Scoring, device: torch.device, say: Say) -> Scoring:
    """``scoring`` as it runs on ``device``: CUDA graphs need a CUDA device, so elsewhere
    ``graph`` is turned off with a note to ``say`` (the fallback ``sample_many`` documents,
    said once up front instead of warned at the first forecast call). Autocast runs anywhere
    (on a CPU, CPU autocast)."""
    if not scoring.sampling.graph or device.type == "cuda":
        return scoring
    say(f"note: --graph: CUDA graphs need a CUDA device; sampling eagerly on {device}")
    eager = dataclasses.replace(scoring.sampling, graph=False)
    return dataclasses.replace(scoring, sampling=eager)


def _sampling_text(scoring: Scoring, world: int) -> str:
    """``S samples, <sampler> K steps (<spacing> grid), B windows per call`` and the settings
    that are not the defaults' (autocast, graph, eta, clipping, chunking)."""
    s = scoring.sampling
    extras = [f"{k} {v}" for k, v in _options(s).items()]
    extras += [] if world == 1 else [f"across {world} processes"]
    return ", ".join(
        [
            f"{s.n_samples} samples",
            f"{s.sampler_name} {s.num_steps} steps ({s.spacing} grid)",
            f"{scoring.batch_size} windows per call",
            *extras,
        ]
    )


def _options(s: SamplingConfig) -> dict[str, object]:
    """The sampling options set away from their defaults (off, None), name -> value."""
    values = {
        "autocast": None if s.autocast == "off" else s.autocast,
        "graph": "on" if s.graph else None,
        "eta": s.eta,
        "clip_x0": s.clip_x0,
        "clip_eps": s.clip_eps,
        "max_batch": s.max_batch,
        "memory_budget": s.memory_budget,
    }
    return {k: v for k, v in values.items() if v is not None}


def _with_sampling(report: Mapping[str, Any], sampling: SamplingConfig) -> dict[str, Any]:
    """The results file's content with the head's sampling settings, ``"sampling"``
    (:meth:`SamplingConfig.as_dict`), beside the trainer's (after ``"train"``)."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        out[key] = value
        if key == "train":
            out["sampling"] = sampling.as_dict()
    return out


def _evaluate(
    model: ITransformerDiffusion,
    data: ForecastDataset,
    split: str,
    scoring: Scoring,
    picked: list[int] | None,
    kept: _Kept,
    progress: bool | None,
) -> tuple[Evaluation, dict[str, Evaluation] | None]:
    """The head's scores, then its baselines' on the same windows, samples and seed."""
    ev = evaluate_split(
        model,
        getattr(data, split),
        sampling=scoring.sampling,
        batch_size=scoring.batch_size,
        windows=picked,
        progress=progress,
        on_batch=kept,
    )
    if not scoring.baselines:
        return ev, None
    baselines = evaluate_baselines(
        model,
        data,
        split,
        sampling=scoring.sampling,  # its n_samples and seed: the same samples per window
        batch_size=scoring.batch_size,
        windows=picked,
    )
    return ev, baselines


class _Kept:
    """The ``on_batch`` hook of a run: a few windows for the fan chart, every sample with
    ``save_samples``, the point forecasts for TSLib's files; then the caller's hook."""

    def __init__(
        self,
        split: ForecastSplit,
        picked: list[int],
        config: ForecastConfig,
        scoring: Scoring,
        tslib: TSLibRun | None,
        then: OnBatch | None,
    ) -> None:
        rank, world = torchrun_rank_world()
        mine = picked[rank::world]  # the windows evaluate_split gives this rank
        self.keeper = WindowKeeper([mine[i] for i in spread_windows(len(mine))] if mine else [])
        self.store = (
            SampleStore(
                len(picked), scoring.n_samples, config.horizon, config.n_variates, split=split
            )
            if scoring.save_samples
            else None
        )
        self.points = PointKeeper() if tslib is not None else None
        self.then = then

    def __call__(self, b: WindowBatch, fc: Forecast) -> None:
        self.keeper(b, fc)
        if self.store is not None:
            self.store(b, fc)
        if self.points is not None:
            self.points(b, fc)
        if self.then is not None:
            self.then(b, fc)


def _write(
    report: Mapping[str, Any],
    ev: Evaluation,
    baselines: Mapping[str, Evaluation] | None,
    files: OutputFiles,
    data: ForecastDataset,
    split: str,
    kept: _Kept,
    tslib: TSLibRun | None,
    plot: bool,
    say: Say,
) -> dict[str, Path]:
    """The files, each atomically, in order of worth: the scores (already said) first, an
    optional picture last, so that it never costs the samples."""
    written = {"results": write_json(files.results, report)}
    say(f"results: {written['results']}")
    written["per_step"] = write_per_step_csv(files.per_step, per_step_columns(ev, baselines))
    say(f"per-step scores: {written['per_step']}")
    if kept.store is not None:
        written["samples"] = kept.store.save(
            files.samples,
            data=data.spec(),
            split=split,
            units="scaled (the data spec's scaler_mean and scaler_std map them back)",
        )
        say(
            f"samples: {written['samples']} ([S, W, H, N] = {list(kept.store.samples.shape)} float32)"
        )
    if tslib is not None and kept.points is not None:  # TSLib's files, beside ours
        for line in tslib.write(kept.points, data):
            say(line)
        written.update((f"tslib_{p.stem}", p) for p in tslib.files())
    if plot:
        samples, truth, history, ids = kept.keeper.stacked()
        inv = data.scaler.inverse_transform  # the chart in the data's own units
        written["fan_chart"] = fan_chart(
            files.fan_chart,
            inv(samples),
            inv(truth),
            history=inv(history),
            window_ids=ids,
            variate_name=data.columns[-1],
            title=f"{Path(data.source).name}, {split} split: {ev.samples} samples, "
            f"{ev.sampler} {ev.steps} steps",
        )
        say(f"fan chart: {written['fan_chart']}")
    return written


# ---------------------------------------------------------------------------------------- lines
def _score_lines(
    ev: Evaluation, baselines: Mapping[str, Evaluation] | None, split: str, source: str
) -> list[str]:
    """The sampling time, the scores, and the head beside the same backbone's baselines (a head
    that does not beat them adds sampling cost and no value)."""
    m = ev.metrics
    rate = ev.windows * ev.samples / max(ev.seconds, 1e-9)
    peak = "" if ev.peak_memory_bytes is None else f", peak {ev.peak_memory_bytes / 2**20:.0f} MiB"
    lines = [
        f"sampled in {ev.seconds:.1f} s ({rate:.0f} samples/s, "
        f"{1e3 * ev.seconds_per_window:.1f} ms per window{peak}), scored in "
        f"{ev.scoring_seconds:.1f} s",
        f"{split} set of {source}: {ev.windows} windows x {ev.samples} samples, {ev.sampler} "
        f"{ev.steps} steps (scaled units)",
        f"  point forecast (iTransformer)  mse {m['point_mse']:.4f}  mae {m['point_mae']:.4f}",
        f"  mean of the samples            mse {m['mse_mean']:.4f}  mae {m['mae_mean']:.4f}",
        f"  median of the samples          mse {m['mse_median']:.4f}  mae {m['mae_median']:.4f}",
        f"  CRPS {m['crps']:.4f} | quantile CRPS {m['quantile_crps']:.4f} | "
        f"CRPS-sum {m['quantile_crps_sum']:.4f}",
    ]
    lines += [
        f"  {level}% central interval: coverage {m[f'coverage_{level}']:.3f} (nominal "
        f"{level / 100:.2f}), width {m[f'width_{level}']:.3f}"
        for level in (50, 90)
    ]
    if baselines is None:
        return lines
    lines.append("  beside the same backbone's baselines (same windows and samples):")
    lines.append(f"    {'':22s} {'CRPS':>7s} {'cov50':>6s} {'cov90':>6s} {'mean MSE':>9s}")
    for name, e in {"diffusion head": ev, **baselines}.items():
        b = e.metrics
        lines.append(
            f"    {name:22s} {b['crps']:7.4f} {b['coverage_50']:6.3f} {b['coverage_90']:6.3f} "
            f"{b['mse_mean']:9.4f}"
        )
    return lines


# ---------------------------------------------------------------------------------------- helpers
def can_plot(say: Say) -> bool:
    """Whether the fan chart can be drawn (matplotlib imports); if not, a note to ``say``."""
    if have_matplotlib():
        return True
    say(MISSING_MATPLOTLIB)
    return False


def silent(line: str) -> None:
    """``say`` when none is given: drops the line."""
