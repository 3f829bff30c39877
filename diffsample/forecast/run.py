"""The run pipeline: train and score, or score a checkpoint, and write the results.

What the ``diffsample`` command runs, as plain functions of the data, the configs and a
:class:`Scoring`, for scripts and examples that want the command's results without its flags::

    train_and_score(data, config, train_config, out)   # train, then score the test split
    score_checkpoint(checkpoint)                        # a saved model on its own data
    score(model, data, "test", results=path)            # a model in hand; no path checks

(:class:`Scoring` and :class:`SamplingConfig` live in :mod:`diffsample.forecast.sampling_config`,
:class:`RunResult` and :func:`score` in :mod:`diffsample.forecast.scoring`; all import from here
too.)

Every check comes before any work (a bad setting or an output that cannot be written fails in
a second, not after the training it would follow), and the outputs are guarded as
:mod:`diffsample.forecast.outputs` describes: no output replaces the checkpoint or the data
read, an unfinished run is not started over without ``resume`` or ``overwrite``, one run at a
time holds a folder. The head is scored beside its baselines (Gaussian residuals with train- or
validation-fitted sigma, bootstrapped training residuals) on the same windows and samples; the
files are written in the order results JSON, per-step CSV, samples, TSLib's files, fan chart,
each atomically, by rank 0 under torchrun. Progress goes to ``say``, a line at a time (the
command prints on rank 0; None: silent). Error messages name the command's flags (``--out``,
``--samples``), which are the fields of :class:`Scoring` and the arguments here.

Dimensions: S samples, W windows scored, H horizon, N variates.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._utils import check_choice
from ..distributed import local_device, torchrun_rank_world
from .data import ForecastDataset, Protocol, check_data_spec, load_dataset, reload_data
from .evaluation import check_sampling_memory, sampling_bytes
from .model import ForecastConfig, ITransformerDiffusion
from .outputs import RunLock, check_fresh_start, check_out_arg, check_writable_files, refuse_inputs
from .report import OutputFiles, check_output_file, prepare_output_dir
from .sampling_config import SamplingConfig, Scoring, check_num_steps
from .scoring import SPLITS, OnBatch, RunResult, Say, can_plot, score, silent
from .training import TrainConfig, check_train_settings, train
from .tslib import TSLibRun

__all__ = [
    "RunResult",
    "SamplingConfig",
    "Scoring",
    "check_scoring_memory",
    "checkpoint_data",
    "score",
    "score_checkpoint",
    "train_and_score",
]

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------------------- train
def train_and_score(
    data: ForecastDataset,
    config: ForecastConfig,
    train_config: TrainConfig,
    out: PathLike,
    *,
    scoring: Scoring | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    command: str = "train",
    tslib: TSLibRun | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_batch: OnBatch | None = None,
    say: Say | None = None,
) -> RunResult:
    """Train a new :class:`ITransformerDiffusion` (weights seeded by ``train_config.seed``) on
    ``data``, then score its test split and write ``out/model.pt`` and the results beside it.

    Args:
        data: the data; ``config`` sized to it (``n_variates``, ``n_time_features``).
        config: the model.
        train_config: the trainer.
        out: the run's folder: ``model.pt`` (a checkpoint every epoch), ``results.json``,
            ``results_per_step.csv``, ``results_samples.npz``, ``results_fan_chart.png``.
        scoring: the test split's sampling and scoring (default ``Scoring()``).
        device: where to train and sample.
        resume: continue the unfinished run in ``out/model.pt``.
        overwrite: start afresh over an unfinished run (or another file) in ``out/model.pt``.
        command: what ``results.json`` names the run.
        tslib: a Time-Series-Library command line's run: its result files are written too.
        progress: bars (or lines) of the training and sampling passes, as for ``train``.
        on_epoch: called after each epoch's line with its record, as for ``train``.
        on_batch: called with each scored batch and its forecast, as for ``evaluate_split``.
        say: takes each progress line (one per stage and epoch); None: silent.

    Raises:
        ValueError: a bad setting, or an output that cannot be written; before any training.
    """
    scoring, say = scoring or Scoring(), say or silent
    device, out = local_device(torch.device(device)), check_out_arg(out)
    check_num_steps(
        scoring.sampling.num_steps,
        config.num_train_steps,
        name="--steps",
        t_name="--diffusion_steps",
    )
    _check_sized(config, data)
    check_train_settings(train_config, config, data, device=device, world=torchrun_rank_world()[1])
    check_scoring_memory(scoring, config, len(data.test), device)
    files = OutputFiles.beside(out / "results.json")
    checkpoint = out / "model.pt"
    writes = [checkpoint, *_outputs(files, scoring), *([] if tslib is None else tslib.files())]
    refuse_inputs(writes, {"the data": data.source})
    prepare_output_dir(out, name="--out")
    if tslib is not None:
        prepare_output_dir(tslib.results, name="TSLib's results folder")
    with _lock(out):
        check_fresh_start(checkpoint, resume=resume, overwrite=overwrite)
        _check_writable(writes)
        plot = can_plot(say)
        torch.manual_seed(train_config.seed)  # the weights (the library never seeds globally)
        model = ITransformerDiffusion(config)
        _say_training(say, model, data, train_config, device, checkpoint, resume=resume)
        result = train(
            model,
            data,
            train_config,
            device=device,
            checkpoint=checkpoint,
            resume=resume,
            progress=progress,
            on_epoch=_epoch_printer(train_config, say, on_epoch),
        )
        say(f"trained in {result.seconds:.1f} s; checkpoint {checkpoint}")
        return score(
            model,
            data,
            "test",
            scoring=scoring,
            results=files.results,
            device=device,
            command=command,
            checkpoint=checkpoint,
            train_config=train_config,
            training=result,
            tslib=tslib,
            plot=plot,
            progress=progress,
            on_batch=on_batch,
            say=say,
        )


def _check_sized(config: ForecastConfig, data: ForecastDataset) -> None:
    """``config`` sized to ``data``, as ``train`` checks it, but before any work here (a
    model may ignore the time features: ``n_time_features`` 0)."""
    want = {
        "lookback": data.lookback,
        "horizon": data.horizon,
        "n_variates": data.n_variates,
        "n_time_features": data.n_marks if config.n_time_features else 0,
    }
    have = {k: getattr(config, k) for k in want}
    if have != want:
        raise ValueError(f"config: expected a model sized to the data, {want}, got {have}")


def _say_training(
    say: Say,
    model: ITransformerDiffusion,
    data: ForecastDataset,
    tc: TrainConfig,
    device: torch.device,
    checkpoint: Path,
    *,
    resume: bool,
) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"data: {data.source} | windows train/val/test {len(data.train)}/{len(data.val)}/"
        f"{len(data.test)} | model: {n_params / 1e6:.2f}M parameters ({model.config.denoiser} "
        f"denoiser) | device: {device}"
    )
    if resume:
        say(f"resuming the run in {checkpoint}")
    calibration = "" if tc.calibration == "none" else ", then the spread calibration"
    say(
        f"training: stage 1 (point forecast) up to {tc.point_epochs} epochs, stage 2 (denoiser) "
        f"up to {tc.diffusion_epochs} epochs{calibration}"
    )


def _epoch_printer(
    tc: TrainConfig, say: Say, then: Callable[[dict[str, float]], None] | None
) -> Callable[[dict[str, float]], None]:
    """``on_epoch`` for train: one line per epoch, with its stage's epoch budget and time (from
    now: made as training starts), then ``then``."""
    totals = {1: tc.point_epochs, 2: tc.diffusion_epochs}
    last = [time.perf_counter()]

    def show(r: dict[str, float]) -> None:
        now = time.perf_counter()
        stage, epoch = int(r["stage"]), int(r["epoch"])
        rest = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k not in ("stage", "epoch"))
        say(f"stage {stage} epoch {epoch}/{totals[stage]}: {rest} ({now - last[0]:.1f} s)")
        last[0] = now
        if then is not None:
            then(r)

    return show


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------- evaluate
def score_checkpoint(
    checkpoint: PathLike,
    *,
    split: str = "test",
    source: PathLike | None = None,
    protocol: Protocol = "auto",
    download: bool = False,
    results: PathLike | None = None,
    scoring: Scoring | None = None,
    device: str | torch.device = "cpu",
    allow_unfinished: bool = False,
    progress: bool | None = None,
    on_batch: OnBatch | None = None,
    say: Say | None = None,
) -> RunResult:
    """Score a saved model on a split of the data it was trained on, and write the results.

    Args:
        checkpoint: a ``model.pt`` written by :func:`train_and_score` or ``train``.
        split: ``"test"``, ``"val"`` or ``"train"``.
        source: the data (as for :func:`~diffsample.forecast.load_dataset`); None: the
            checkpoint's own (:func:`checkpoint_data`: refused unless it matches).
        protocol: the split protocol of ``source``.
        download: fetch a named ETT file into the cache if missing.
        results: the results file; None: ``eval_<split>.json`` beside the checkpoint. The
            other files are named after it (``<name>_per_step.csv``, ...).
        scoring: the sampling and scoring (default ``Scoring()``).
        device: where to sample.
        allow_unfinished: also score a run that has not finished (its best weights so far).
        progress: the sampling bar, as for ``evaluate_split``.
        on_batch: called with each scored batch and its forecast, as for ``evaluate_split``.
        say: takes each progress line; None: silent.

    Raises:
        ValueError: a bad setting, other data than the model's, an output that cannot be
            written or that is the checkpoint or the data read; before any sampling.
    """
    scoring, say = scoring or Scoring(), say or silent
    check_choice("split", split, SPLITS)
    path = Path(checkpoint)
    files = OutputFiles.beside(path.with_name(f"eval_{split}.json") if results is None else results)
    writes = _outputs(files, scoring)
    refuse_inputs(writes, {"the checkpoint": path})
    check_output_file(files.results, name="--out")
    with _lock(files.results.parent):
        _check_writable(writes)
        plot = can_plot(say)
        model = ITransformerDiffusion.load(
            path, map_location=device, allow_unfinished=allow_unfinished
        )
        c = model.config
        check_num_steps(
            scoring.sampling.num_steps,
            c.num_train_steps,
            name="--steps",
            t_name=f"the model in {path}",
        )
        data = checkpoint_data(
            model,
            source=source,
            protocol=protocol,
            download=download,
            checkpoint=checkpoint,
            say=say,
        )
        refuse_inputs(writes, {"the data": data.source})
        check_scoring_memory(scoring, c, len(getattr(data, split)), device)
        n_params = sum(p.numel() for p in model.parameters())
        say(
            f"checkpoint: {path} ({n_params / 1e6:.2f}M parameters, {c.denoiser} denoiser) | "
            f"data: {data.source} | device: {device}"
        )
        return score(
            model,
            data,
            split,
            scoring=scoring,
            results=files.results,
            device=device,
            command="evaluate",
            checkpoint=path,
            plot=plot,
            progress=progress,
            on_batch=on_batch,
            say=say,
        )


def checkpoint_data(
    model: ITransformerDiffusion,
    *,
    source: PathLike | None = None,
    protocol: Protocol = "auto",
    download: bool = False,
    checkpoint: PathLike = "the checkpoint",
    say: Say | None = None,
) -> ForecastDataset:
    """The data a saved model is scored on: its own by default, from its ETT name or synthetic
    call (``reload_data``: never a path the file names); ``source``, the caller's, only if it
    matches the model's data spec (without one, a note goes to ``say``).

    Raises:
        ValueError: no ``source`` and no data spec, or data other than the model's.
        FileNotFoundError: the model's own data are not where they are looked for.
    """
    spec, c = model.data_spec, model.config
    if source is None:
        if spec is None:
            raise ValueError(
                f"--data: {os.fspath(checkpoint)} does not record the data it was trained on "
                "(saved before training, or by an older version); pass --data"
            )
        try:
            return reload_data(spec, download=download)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{exc} (the data the checkpoint was trained on; pass --data to say where it is "
                "now)"
            ) from None
    data = load_dataset(
        source, lookback=c.lookback, horizon=c.horizon, protocol=protocol, download=download
    )
    if spec is None:
        (say or silent)(
            "note: the checkpoint does not record its training data; the data given "
            "could not be checked"
        )
    else:
        check_data_spec(spec, data)
    return data


def check_scoring_memory(
    scoring: Scoring, config: ForecastConfig, n_split: int, device: str | torch.device
) -> None:
    """``scoring``'s samples against the memory available, before anything is allocated: each
    forecast call's samples (and the metrics' copies) on ``device``, and with ``save_samples``
    all of them ``[S, W, H, N]`` float32 on the CPU.

    Raises:
        ValueError: they do not fit, naming the flag to lower.
    """
    device = torch.device(device)
    S = scoring.sampling.n_samples
    n = n_split if scoring.windows is None else min(scoring.windows, n_split)
    per_call = min(scoring.batch_size, -(-n // torchrun_rank_world()[1]))
    H, N = config.horizon, config.n_variates
    needed = {device: sampling_bytes(S, per_call, H, N)}
    what = {device: f"{S} samples x [{H}, {N}] (H, N) for {per_call} windows per call"}
    if scoring.save_samples:
        cpu = torch.device("cpu")
        needed[cpu] = needed.get(cpu, 0) + (S + 2) * n * H * N * 4  # + targets, point
        kept = f"{n} windows kept (--save-samples)"
        what[cpu] = f"{what[cpu]} and {kept}" if cpu in what else f"{S} samples x {kept}"
    for where, nbytes in needed.items():
        check_sampling_memory(
            nbytes,
            where,
            name="--samples",
            what=what[where],
            hint="lower --samples, --windows or --batch_size",
        )


# ---------------------------------------------------------------------------------------- outputs
def _outputs(files: OutputFiles, scoring: Scoring) -> list[Path]:
    """The result files a run may write (the fan chart whether or not it will be drawn)."""
    return [files.results, files.per_step, files.fan_chart] + (
        [files.samples] if scoring.save_samples else []
    )


def _check_writable(paths: list[Path]) -> None:
    """The output names, checked by the rank that writes them (probes of several ranks at one
    name would collide)."""
    if torchrun_rank_world()[0] == 0:
        check_writable_files(paths)


def _lock(folder: Path) -> contextlib.AbstractContextManager[object]:
    """The output folder's lock for the run's life; under torchrun rank 0's (the one that
    writes)."""
    if torchrun_rank_world()[0] == 0:
        return RunLock(folder, name="--out")
    return contextlib.nullcontext()
