"""The ``diffsample`` command: demo, train, evaluate.

    diffsample demo                                   # synthetic data, about half a minute on a CPU
    diffsample train --data ETTh1 --out runs/etth1    # ETT CSV from $DIFFSAMPLE_ETT_DIR, a path, or --download
    diffsample train --root_path ./dataset/ETT-small/ --data_path ETTh1.csv --data ETTh1 \\
        --seq_len 96 --pred_len 96 --enc_in 7 --out runs/etth1   # Time-Series-Library flag names
    diffsample train --resume --out runs/etth1 ...    # continue a killed run (the same flags)
    diffsample evaluate runs/etth1/model.pt --samples 100 --steps 10   # on the data it was trained on

Flags take Time-Series-Library's names (``--seq_len``, ``--d_model``, ``--learning_rate``, ...),
with ``-`` or ``_`` alike; every default shown is the library's (ForecastConfig, TrainConfig,
evaluate_split). The results go beside the checkpoint: a JSON file (configuration, data,
machine, versions, wall times, scores), a per-horizon-step CSV, the samples (with
--save-samples) and a fan chart PNG (with matplotlib), in that order. A bad argument (a
mistyped flag value too) or an output that cannot be written ends the command before any
training with one line on stderr and exit status 2, never a traceback. Output paths are
guarded (:mod:`diffsample.forecast.outputs`): no output replaces the checkpoint or the data
read, an unfinished run is not started over without --resume or --overwrite, and one run at
a time holds a folder.

Dimensions (in what it prints and writes): S samples, W windows scored, H horizon, N variates.
Only this module parses arguments; it turns them into the library's frozen configs and keyword
arguments, and prints. What it writes is built by :mod:`diffsample.forecast.report`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import re
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from .. import __version__
from .._utils import check_int, choices_of, expected
from ..distributed import local_device, torchrun_rank_world
from ..samplers import SAMPLERS
from .data import (
    ForecastDataset,
    Protocol,
    WindowBatch,
    check_data_spec,
    load_dataset,
    reload_data,
)
from .evaluation import (
    Evaluation,
    check_evaluation_args,
    check_num_steps,
    check_sampling_memory,
    evaluate_baselines,
    evaluate_split,
    sampling_bytes,
)
from .model import Forecast, ForecastConfig, ITransformerDiffusion
from .outputs import (
    RunLock,
    check_fresh_start,
    check_out_arg,
    check_writable_files,
    refuse_inputs,
)
from .report import (
    OutputFiles,
    SampleStore,
    WindowKeeper,
    check_output_file,
    fan_chart,
    have_matplotlib,
    per_step_columns,
    prepare_output_dir,
    results_dict,
    spread_windows,
    write_json,
    write_per_step_csv,
)
from .training import TrainConfig, TrainResult, check_train_settings, train
from .tslib import TSLIB_DEFAULTS, PointKeeper, TSLibRun, add_flags, given_flags, is_tslib

__all__ = ["main"]

# what --help shows above the commands: plain text (the module docstring is the API docs')
_DESCRIPTION = """\
Train, sample and score the reference diffusion forecaster.

  diffsample demo                                   # synthetic data, about half a minute on a CPU
  diffsample train --data ETTh1 --out runs/etth1    # ETT CSV from $DIFFSAMPLE_ETT_DIR, a path, or --download
  diffsample train --root_path ./dataset/ETT-small/ --data_path ETTh1.csv --data ETTh1 \\
      --seq_len 96 --pred_len 96 --enc_in 7 --out runs/etth1   # Time-Series-Library flag names
  diffsample train --resume --out runs/etth1 ...    # continue a killed run (the same flags)
  diffsample evaluate runs/etth1/model.pt --samples 100 --steps 10   # on the data it was trained on
  diffsample --task_name long_term_forecast --is_training 1 --model iTransformer ...
                                                    # a Time-Series-Library script's command line

Flags take Time-Series-Library's names (--seq_len, --d_model, --learning_rate, ...), with - or _
alike; every default shown is the library's (with --task_name, TSLib's where the two differ:
--d_model 512, --d_ff 2048). A TSLib script runs with "python -u run.py" replaced by
"diffsample": see docs/forecaster.md, "Running a Time-Series-Library script".
The results go beside the checkpoint: a JSON file, a per-horizon-step CSV, the samples (with
--save-samples) and a fan chart PNG (with matplotlib). A bad argument ends the command before
any training with one line on stderr and exit status 2.
"""

# what a user can get wrong: bad values and types, missing or unreadable files, a full disk, no
# network, a diverged run (NonFiniteLossError), no such device
_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)
_COMMANDS = ("demo", "train", "evaluate")
_SPLITS = ("test", "val", "train")  # the ForecastDataset attributes a checkpoint can be scored on
# Time-Series-Library's --data names -> the split protocol of load_dataset
_TSL_DATA: dict[str, Protocol] = {
    "ETTh1": "etth",
    "ETTh2": "etth",
    "ETTm1": "ettm",
    "ETTm2": "ettm",
    "custom": "custom",
}
_MISSING_MATPLOTLIB = (
    "note: no fan chart: matplotlib is not installed (pip install 'diffsample[plot]')"
)

# config field -> (flag, other spellings, help); type, choices and default come from the field
_MODEL_FLAGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "lookback": ("--seq_len", ("--lookback",), "L, the history length in time steps"),
    "horizon": ("--pred_len", ("--horizon",), "H, the forecast length in time steps"),
    "d_model": ("--d_model", (), "D, the width of the iTransformer backbone"),
    "n_heads": ("--n_heads", (), "attention heads of the backbone"),
    "n_layers": ("--e_layers", (), "encoder layers of the backbone"),
    "d_ff": ("--d_ff", (), "feed-forward width of the backbone"),
    "dropout": ("--dropout", (), "dropout of the backbone"),
    "denoiser": ("--denoiser", (), "the residual denoiser: token transformer or 1D U-Net"),
    "denoiser_width": (
        "--denoiser_width",
        (),
        "the denoiser's width (D of the token transformer, the U-Net's embedding)",
    ),
    "denoiser_layers": ("--denoiser_layers", (), "transformer layers of the token denoiser"),
    "denoiser_heads": ("--denoiser_heads", (), "attention heads of the denoiser"),
    "unet_channels": ("--unet_channels", (), "channels per level of the U-Net denoiser"),
    "prediction": ("--prediction", (), "what the denoiser predicts"),
    "schedule": ("--schedule", (), "the noise schedule"),
    "num_train_steps": (
        "--diffusion_steps",
        ("--num_train_steps",),
        "T, the noise schedule's training steps",
    ),
    "history_stats": (
        "--history_stats",
        (),
        "what the denoiser sees of each variate's history besides z: its log std (scale), "
        "its log std and mean (scale_level), nothing (none)",
    ),
}
_TRAIN_FLAGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "batch_size": ("--batch_size", (), "windows per training batch"),
    "point_epochs": (
        "--train_epochs",
        ("--epochs",),
        "stage 1 (point forecast) epochs, at most (early stopping)",
    ),
    "point_lr": ("--learning_rate", (), "stage 1 learning rate (Adam)"),
    "point_lr_decay": (
        "--lr_decay",
        (),
        "stage 1 learning rate factor after each epoch (Time-Series-Library's lradj type1: 0.5)",
    ),
    "diffusion_epochs": (
        "--diffusion_epochs",
        (),
        "stage 2 (denoiser) epochs, at most (early stopping)",
    ),
    "diffusion_lr": ("--diffusion_learning_rate", (), "stage 2 learning rate (AdamW)"),
    "diffusion_lr_decay": (
        "--diffusion_lr_decay",
        (),
        "stage 2 learning rate factor after each epoch (1: constant)",
    ),
    "diffusion_draws": (
        "--diffusion_draws",
        (),
        "stage 2: (step, noise) draws per window in each batch",
    ),
    "weight_decay": ("--weight_decay", (), "weight decay of both stages"),
    "patience": ("--patience", (), "epochs without a better validation loss before a stage stops"),
    "max_batches_per_epoch": (
        "--batches_per_epoch",
        (),
        "training batches per epoch at most; none: every window once",
    ),
    "max_val_batches": (
        "--val_batches",
        (),
        "validation batches per pass at most (evenly spaced windows; for smoke runs); none: "
        "every validation window",
    ),
    "grad_clip": ("--grad_clip", (), "largest global gradient norm; none: no clipping"),
    "amp": ("--amp", (), "mixed precision: auto is bf16 (or fp16) on a GPU and fp32 on a CPU"),
    "seed": ("--seed", (), "seeds the weights, batch order, training noise and sampling noise"),
    "calibration": (
        "--calibration",
        (),
        "after stage 2, scale the samples' spread per horizon step and variate to match the true "
        "residuals of the training (train_spread) or validation (val_spread) windows; none: no "
        "scaling",
    ),
    "calibration_samples": (
        "--calibration_samples",
        (),
        "samples per window of the calibration",
    ),
    "calibration_steps": (
        "--calibration_steps",
        (),
        "sampling steps (DPM-Solver++(2M)) of the calibration",
    ),
    "calibration_windows": (
        "--calibration_windows",
        (),
        "windows of the calibration, evenly spaced; none: all",
    ),
}
# the demo: the train command on the synthetic data, sized for about half a minute on a CPU
_DEMO = {
    "lookback": 96,
    "horizon": 24,
    "d_model": 64,
    "d_ff": 64,
    "n_heads": 4,
    "denoiser_width": 32,
    "point_epochs": 4,
    "point_lr": 1e-3,
    "diffusion_epochs": 8,
    "diffusion_lr": 2e-3,
    "max_batches_per_epoch": 60,
    "samples": 32,
    "steps": 10,
    "windows": 256,
    # one thread: a model this small gains little from a second, and on a busy machine an idle
    # OpenMP thread spins (measured: 26 s with one thread, 139 s with two, on a loaded 2-core CPU)
    "threads": 1,
}


# ---------------------------------------------------------------------------------------- commands
def _demo(a: argparse.Namespace) -> None:
    _train_and_report(a, "demo", source=None, protocol="auto")


def _train(a: argparse.Namespace) -> None:
    tsl = _tslib_run(a)
    source, protocol = _located(a)
    _train_and_report(a, "train", source=source, protocol=protocol, tsl=tsl)


def _tslib_run(a: argparse.Namespace) -> TSLibRun | None:
    """A TSLib script's command line (``--task_name`` given), checked, its notice printed and
    its defaults (--out, the device) filled in; None for diffsample's own command line."""
    flags = given_flags(a)
    if not hasattr(a, "tsl_task_name"):
        if flags:
            raise ValueError(
                f"{flags[0]}: a Time-Series-Library flag, expected with --task_name "
                "long_term_forecast (as a TSLib script passes it)"
            )
        return None
    tsl = TSLibRun.from_args(a)
    if torchrun_rank_world()[1] > 1:
        raise ValueError(
            "--task_name: TSLib's result files need every window in one process; run the "
            "script without torchrun"
        )
    if a.out is None:
        a.out = str(tsl.out)
    if tsl.device is not None and a.device == "auto":
        a.device = tsl.device
    notice = tsl.notice()
    if notice is not None:
        _say(notice)
    return tsl


def _train_and_report(
    a: argparse.Namespace,
    command: str,
    *,
    source: str | None,
    protocol: Protocol,
    tsl: TSLibRun | None = None,
) -> None:
    # every check before any work: a bad --samples or an unwritable --out fails now, not after
    # the hour of training it would follow; nothing is created for a run that cannot start
    device = _device(a.device)
    out = check_out_arg(a.out)
    _check_sampling(a, batch_size=_EVAL_BATCH)
    check_num_steps(a.steps, a.num_train_steps, name="--steps", t_name="--diffusion_steps")
    tc = TrainConfig(**{field: getattr(a, field) for field in _TRAIN_FLAGS})
    data = load_dataset(
        source, lookback=a.lookback, horizon=a.horizon, protocol=protocol, download=a.download
    )
    _check_enc_in(a.enc_in, data)
    config = ForecastConfig(
        n_variates=data.n_variates,
        n_time_features=data.n_marks,
        **{field: _field_value(a, field) for field in _MODEL_FLAGS},
    )
    check_train_settings(tc, config, data, device=device, world=torchrun_rank_world()[1])
    _check_memory(a, config, len(data.test), _EVAL_BATCH, device)
    files = OutputFiles.beside(out / "results.json")
    checkpoint = out / "model.pt"
    writes = [checkpoint, *_outputs(a, files), *([] if tsl is None else tsl.files())]
    refuse_inputs(writes, {"the data": data.source})
    prepare_output_dir(out, name="--out")
    if tsl is not None:
        prepare_output_dir(tsl.results, name="TSLib's results folder")
    with _lock(out):
        check_fresh_start(checkpoint, resume=a.resume, overwrite=a.overwrite)
        _check_writable(writes)
        plot = _can_plot()
        _train_locked(a, command, data, config, tc, files, checkpoint, device, plot=plot, tsl=tsl)


def _train_locked(
    a: argparse.Namespace,
    command: str,
    data: ForecastDataset,
    config: ForecastConfig,
    tc: TrainConfig,
    files: OutputFiles,
    checkpoint: Path,
    device: torch.device,
    *,
    plot: bool,
    tsl: TSLibRun | None = None,
) -> None:
    """Train and score, every check passed and --out locked."""
    torch.manual_seed(a.seed)  # the weight initialisation (the library never seeds globally)
    model = ITransformerDiffusion(config)
    n_params = sum(p.numel() for p in model.parameters())
    _say(
        f"data: {data.source} | windows train/val/test {len(data.train)}/{len(data.val)}/"
        f"{len(data.test)} | model: {n_params / 1e6:.2f}M parameters ({config.denoiser} "
        f"denoiser) | device: {device}"
    )
    if a.resume:
        _say(f"resuming the run in {checkpoint}")
    calibration = "" if tc.calibration == "none" else ", then the spread calibration"
    _say(
        f"training: stage 1 (point forecast) up to {tc.point_epochs} epochs, stage 2 (denoiser) "
        f"up to {tc.diffusion_epochs} epochs{calibration}"
    )
    result = train(
        model,
        data,
        tc,
        device=device,
        checkpoint=checkpoint,
        resume=a.resume,
        progress=a.progress,
        on_epoch=_epoch_printer(tc),
    )
    _say(f"trained in {result.seconds:.1f} s; checkpoint {checkpoint}")
    _score_and_write(
        a,
        command,
        model,
        data,
        "test",
        files,
        device,
        plot=plot,
        checkpoint=checkpoint,
        batch_size=_EVAL_BATCH,
        train_config=tc,
        result=result,
        tsl=tsl,
    )


def _evaluate(a: argparse.Namespace) -> None:
    device = _device(a.device)
    _check_sampling(a, batch_size=a.batch_size)
    checkpoint = Path(a.checkpoint)
    files = OutputFiles.beside(_results_path(a.out, checkpoint, a.split))
    writes = _outputs(a, files)
    refuse_inputs(writes, {"the checkpoint": checkpoint})
    check_output_file(files.results, name="--out")
    with _lock(files.results.parent):
        _check_writable(writes)
        _evaluate_locked(a, checkpoint, files, device)


def _evaluate_locked(
    a: argparse.Namespace, checkpoint: Path, files: OutputFiles, device: torch.device
) -> None:
    """Load, check and score a checkpoint, every output checked and its folder locked."""
    plot = _can_plot()
    try:
        model = ITransformerDiffusion.load(
            checkpoint, map_location=device, allow_unfinished=a.allow_unfinished
        )
    except ValueError as exc:  # the library's advice, in the command's words
        raise ValueError(
            str(exc)
            .replace("pass allow_unfinished=True", "pass --allow-unfinished")
            .replace("train(..., checkpoint=path, resume=True)", "diffsample train --resume")
        ) from None
    c = model.config
    check_num_steps(a.steps, c.num_train_steps, name="--steps", t_name=f"the model in {checkpoint}")
    data = _evaluation_data(a, model)
    refuse_inputs(_outputs(a, files), {"the data": data.source})
    _check_memory(a, c, len(getattr(data, a.split)), a.batch_size, device)
    n_params = sum(p.numel() for p in model.parameters())
    _say(
        f"checkpoint: {checkpoint} ({n_params / 1e6:.2f}M parameters, {model.config.denoiser} "
        f"denoiser) | data: {data.source} | device: {device}"
    )
    _score_and_write(
        a,
        "evaluate",
        model,
        data,
        a.split,
        files,
        device,
        plot=plot,
        checkpoint=checkpoint,
        batch_size=a.batch_size,
    )


def _score_and_write(
    a: argparse.Namespace,
    command: str,
    model: ITransformerDiffusion,
    data: ForecastDataset,
    split_name: str,
    files: OutputFiles,
    device: torch.device,
    *,
    plot: bool,
    checkpoint: Path,
    batch_size: int,
    train_config: TrainConfig | None = None,
    result: TrainResult | None = None,
    tsl: TSLibRun | None = None,
) -> None:
    """Sample and score a split, print the scores, then write the files (scores first)."""
    split = getattr(data, split_name)
    n = len(split) if a.windows is None else min(a.windows, len(split))
    # --windows N: N windows spread evenly over the split's period, not its first N
    picked = list(range(n)) if a.windows is None else spread_windows(len(split), n)
    rank, world = torchrun_rank_world()
    mine = picked[rank::world]  # the windows evaluate_split gives this rank
    keeper = WindowKeeper([mine[i] for i in spread_windows(len(mine))] if mine else [])
    c = model.config
    store = (
        SampleStore(n, a.samples, c.horizon, c.n_variates, split=split) if a.save_samples else None
    )
    points = PointKeeper() if tsl is not None else None

    def on_batch(b: WindowBatch, fc: Forecast) -> None:
        keeper(b, fc)
        if store is not None:
            store(b, fc)
        if points is not None:
            points(b, fc)

    spread = "" if world == 1 else f", across {world} processes"
    _say(
        f"sampling the {split_name} set: {n} windows x {a.samples} samples, {a.sampler} "
        f"{a.steps} steps, {batch_size} windows per call{spread}"
    )
    if store is not None:
        mib = store.samples.numel() * store.samples.element_size() / 2**20
        _say(f"--save-samples: keeping all {mib:.0f} MiB of samples in memory to write them")
    ev = evaluate_split(
        model,
        split,
        n_samples=a.samples,
        num_steps=a.steps,
        sampler=a.sampler,
        batch_size=batch_size,
        windows=None if a.windows is None else picked,
        seed=a.seed,
        progress=a.progress,
        on_batch=on_batch,
    )
    baselines = None
    if a.baselines:  # the same windows, samples and seed: one run, one comparison
        baselines = evaluate_baselines(
            model,
            data,
            split_name,
            n_samples=a.samples,
            batch_size=batch_size,
            windows=None if a.windows is None else picked,
            seed=a.seed,
        )
    rate = ev.windows * ev.samples / max(ev.seconds, 1e-9)
    peak = "" if ev.peak_memory_bytes is None else f", peak {ev.peak_memory_bytes / 2**20:.0f} MiB"
    _say(
        f"sampled in {ev.seconds:.1f} s ({rate:.0f} samples/s, "
        f"{1e3 * ev.seconds_per_window:.1f} ms per window{peak}), scored in "
        f"{ev.scoring_seconds:.1f} s"
    )
    _print_scores(ev, split_name, data.source)
    if baselines is not None:
        _print_baselines(ev, baselines)
    if _rank() != 0:  # rank 0 writes the files (the scores are every rank's windows')
        return
    report = results_dict(
        command=command,
        data=data.spec(),
        split=split_name,
        evaluation=ev,
        config=c,
        device=device,
        checkpoint=checkpoint,
        train_config=train_config,
        history=() if result is None else result.history,
        training_seconds=None if result is None else result.seconds,
        files={
            "per_step": files.per_step,
            "fan_chart": files.fan_chart if plot else None,
            "samples": files.samples if store is not None else None,
        },
        processes=world,
        baselines=baselines,
    )
    # the scores are on screen already; the results file is written first, each file atomically
    _say(f"results: {write_json(files.results, report)}")
    per_step = per_step_columns(ev, baselines)
    _say(f"per-step scores: {write_per_step_csv(files.per_step, per_step)}")
    if store is not None:  # before the chart: an optional picture never costs the samples
        saved = store.save(
            files.samples,
            data=data.spec(),
            split=split_name,
            units="scaled (the data spec's scaler_mean and scaler_std map them back)",
        )
        _say(f"samples: {saved} ([S, W, H, N] = {list(store.samples.shape)} float32)")
    if tsl is not None and points is not None:  # TSLib's files, beside ours
        for line in tsl.write(points, data):
            _say(line)
    if plot:
        samples, truth, history, ids = keeper.stacked()
        inv = data.scaler.inverse_transform  # the chart in the data's own units
        chart = fan_chart(
            files.fan_chart,
            inv(samples),
            inv(truth),
            history=inv(history),
            window_ids=ids,
            variate_name=data.columns[-1],
            title=f"{Path(data.source).name}, {split_name} split: {ev.samples} samples, "
            f"{ev.sampler} {ev.steps} steps",
        )
        _say(f"fan chart: {chart}")


# ---------------------------------------------------------------------------------------- checks
def _device(name: str) -> torch.device:
    """The --device, checked; under torchrun, ``cuda`` is each process's own GPU."""
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(expected("--device", "auto, cpu, cuda, cuda:1, ...", name)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device: expected a device this machine has, got {name!r} (this torch "
                f"{torch.__version__} sees no CUDA device)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device: expected a device this machine has, got {name!r} "
                f"({torch.cuda.device_count()} CUDA devices)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device: expected a device this machine has, got {name!r} (no MPS)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(expected("--device", "auto, cpu, cuda, cuda:1, mps", name))
    return local_device(device)


def _check_sampling(a: argparse.Namespace, *, batch_size: int) -> None:
    if a.save_samples and torchrun_rank_world()[1] > 1:
        raise ValueError(
            "--save-samples: not available under torchrun (the samples stay on the rank that "
            "drew them; only the metric sums are combined): evaluate in one process to keep them"
        )
    check_evaluation_args(
        n_samples=a.samples,
        num_steps=a.steps,
        sampler=a.sampler,
        batch_size=batch_size,
        max_windows=a.windows,
    )


def _check_memory(
    a: argparse.Namespace, c: ForecastConfig, n_split: int, batch_size: int, device: torch.device
) -> None:
    """--samples, --windows and --save-samples against the memory available, before anything
    is allocated: each forecast call's samples (and the metrics' copies) on the device, and with
    --save-samples all of them [S, W, H, N] float32 on the CPU."""
    n = n_split if a.windows is None else min(a.windows, n_split)
    world = torchrun_rank_world()[1]
    per_call = min(batch_size, -(-n // world))
    H, N = c.horizon, c.n_variates
    needed = {device: sampling_bytes(a.samples, per_call, H, N)}
    what = {device: f"{a.samples} samples x [{H}, {N}] (H, N) for {per_call} windows per call"}
    if a.save_samples:
        cpu = torch.device("cpu")
        needed[cpu] = needed.get(cpu, 0) + (a.samples + 2) * n * H * N * 4  # + targets, point
        kept = f"{n} windows kept (--save-samples)"
        what[cpu] = f"{what[cpu]} and {kept}" if cpu in what else f"{a.samples} samples x {kept}"
    for where, nbytes in needed.items():
        check_sampling_memory(
            nbytes,
            where,
            name="--samples",
            what=what[where],
            hint="lower --samples, --windows or --batch_size",
        )


def _outputs(a: argparse.Namespace, files: OutputFiles) -> list[Path]:
    """The result files this run may write (the fan chart whether or not it will be drawn)."""
    return [files.results, files.per_step, files.fan_chart] + (
        [files.samples] if a.save_samples else []
    )


def _check_writable(paths: list[Path]) -> None:
    """The output names, checked by the rank that writes them (probes of several ranks at one
    name would collide)."""
    if _rank() == 0:
        check_writable_files(paths)


def _lock(folder: Path) -> contextlib.AbstractContextManager[object]:
    """--out's lock for the run's life; under torchrun rank 0's (the one that writes)."""
    return RunLock(folder, name="--out") if _rank() == 0 else contextlib.nullcontext()


def _check_enc_in(enc_in: int | None, data: ForecastDataset) -> None:
    if enc_in is not None and enc_in != data.n_variates:
        raise ValueError(
            f"--enc_in: expected the data's {data.n_variates} variates "
            f"({', '.join(data.columns)} in {Path(data.source).name}), got {enc_in}"
        )


def _located(a: argparse.Namespace) -> tuple[str | None, Protocol]:
    """:func:`_source`, with a --root_path / --data_path CSV that is not there named by those
    flags (the loader would name its own argument)."""
    source, protocol = _source(a)
    if a.data_path is not None and source is not None and not Path(source).is_file():
        raise ValueError(
            f"--data_path: expected a CSV file in --root_path {a.root_path or '.'!r}, got "
            f"{a.data_path!r} ({source} is not a file)"
        )
    return source, protocol


def _source(a: argparse.Namespace) -> tuple[str | None, Protocol]:
    """(source for load_dataset, protocol) from --data, or from --root_path / --data_path with
    --data naming the split protocol as in Time-Series-Library."""
    if a.data_path is None:
        if a.root_path is not None:
            raise ValueError(
                "--root_path: expected --data_path with it (the CSV's name in that folder)"
            )
        return a.data, "auto"
    path = str(Path(a.root_path or ".") / a.data_path)
    if a.data is None:
        return path, "auto"
    if a.data not in _TSL_DATA:
        raise ValueError(
            expected(
                "--data",
                f"with --data_path, a Time-Series-Library dataset name ({', '.join(_TSL_DATA)})",
                a.data,
            )
        )
    return path, _TSL_DATA[a.data]


def _evaluation_data(a: argparse.Namespace, model: ITransformerDiffusion) -> ForecastDataset:
    """The data a checkpoint is scored on: its own by default, from its ETT name or synthetic
    call (``reload_data``: never a path the file names); --data, the user's, only if it
    matches."""
    spec, c = model.data_spec, model.config
    source, protocol = _located(a)
    if source is None:
        if spec is None:
            raise ValueError(
                f"--data: {a.checkpoint} does not record the data it was trained on (saved "
                "before training, or by an older version); pass --data"
            )
        try:
            return reload_data(spec, download=a.download)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{exc} (the data the checkpoint was trained on; pass --data to say where it is "
                "now)"
            ) from None
    data = load_dataset(
        source, lookback=c.lookback, horizon=c.horizon, protocol=protocol, download=a.download
    )
    if spec is None:
        _say(
            "note: the checkpoint does not record its training data; the data given "
            "could not be checked"
        )
    else:
        check_data_spec(spec, data)
    return data


def _results_path(out: str | None, checkpoint: Path, split: str) -> Path:
    name = f"eval_{split}.json"
    if out is None:
        return checkpoint.with_name(name)
    p = check_out_arg(out)
    return p / name if p.is_dir() or out.endswith(("/", "\\")) else p


def _can_plot() -> bool:
    if have_matplotlib():
        return True
    _say(_MISSING_MATPLOTLIB)
    return False


# ---------------------------------------------------------------------------------------- printing
def _say(line: str) -> None:
    if _rank() == 0:  # under torchrun, one voice: rank 0's
        print(line, flush=True)  # flushed: a log file shows each stage as it happens


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): no call to torch.distributed before
    the run starts the group."""
    return torchrun_rank_world()[0]


def _epoch_printer(tc: TrainConfig) -> Callable[[dict[str, float]], None]:
    """``on_epoch`` for train: one line per epoch, with its stage's epoch budget and time."""
    totals = {1: tc.point_epochs, 2: tc.diffusion_epochs}
    last = [time.perf_counter()]

    def show(r: dict[str, float]) -> None:
        now = time.perf_counter()
        stage, epoch = int(r["stage"]), int(r["epoch"])
        rest = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k not in ("stage", "epoch"))
        _say(f"stage {stage} epoch {epoch}/{totals[stage]}: {rest} ({now - last[0]:.1f} s)")
        last[0] = now

    return show


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_scores(ev: Evaluation, split: str, source: str) -> None:
    m = ev.metrics
    _say(
        f"{split} set of {source}: {ev.windows} windows x {ev.samples} samples, {ev.sampler} "
        f"{ev.steps} steps (scaled units)"
    )
    _say(f"  point forecast (iTransformer)  mse {m['point_mse']:.4f}  mae {m['point_mae']:.4f}")
    _say(f"  mean of the samples            mse {m['mse_mean']:.4f}  mae {m['mae_mean']:.4f}")
    _say(f"  median of the samples          mse {m['mse_median']:.4f}  mae {m['mae_median']:.4f}")
    _say(
        f"  CRPS {m['crps']:.4f} | quantile CRPS {m['quantile_crps']:.4f} | "
        f"CRPS-sum {m['quantile_crps_sum']:.4f}"
    )
    for level in (50, 90):
        _say(
            f"  {level}% central interval: coverage {m[f'coverage_{level}']:.3f} (nominal "
            f"{level / 100:.2f}), width {m[f'width_{level}']:.3f}"
        )


def _print_baselines(ev: Evaluation, baselines: Mapping[str, Evaluation]) -> None:
    """The head beside the same backbone's baselines: a head that does not beat them adds
    sampling cost and no value."""
    _say("  beside the same backbone's baselines (same windows and samples):")
    _say(f"    {'':22s} {'CRPS':>7s} {'cov50':>6s} {'cov90':>6s} {'mean MSE':>9s}")
    for name, e in {"diffusion head": ev, **baselines}.items():
        m = e.metrics
        _say(
            f"    {name:22s} {m['crps']:7.4f} {m['coverage_50']:6.3f} {m['coverage_90']:6.3f} "
            f"{m['mse_mean']:9.4f}"
        )


# ---------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors as one line, as every other error of the command:
    ``diffsample: error: argument --train_epochs/--epochs: invalid int value: 'x' (...)``,
    exit status 2, not the usage block."""

    def error(self, message: str) -> NoReturn:
        message = _FLAG_LIST.sub(lambda m: _short_flags(m[1]), message)
        self.exit(2, f"{_who()}: error: {message} ({self.prog} --help lists the flags)\n")


# argparse names a flag by all its spellings: "argument --batch_size/--batch-size: ..."
_FLAG_LIST = re.compile(r"(?<=argument )(--?[\w-]+(?:/--?[\w-]+)+)")


def _short_flags(spellings: str) -> str:
    """``--train_epochs/--train-epochs/--epochs`` -> ``--train_epochs/--epochs``: one spelling
    each (``-`` and ``_`` alike), so the line stays short."""
    seen: dict[str, str] = {}
    for flag in spellings.split("/"):
        seen.setdefault(flag.replace("-", "_"), flag)
    return "/".join(seen.values())


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written; each flag's spellings once with one metavar; its default after
    its help (a flag whose default is None says in its help what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings:  # a positional or a command: given, never defaulted
            return text
        if action.nargs == 0 or "default:" in text:  # on/off switches; a default in words
            return text
        if action.default is None:
            return f"{text} (default: none)"
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


def _spellings(flag: str, *aliases: str) -> list[str]:
    """``flag`` and its aliases, each with ``_`` and ``-`` alike (``--batch_size``, ``--batch-size``)."""
    out: list[str] = []
    for f in (flag, *aliases):
        body = f[2:]
        for s in (f, "--" + body.replace("-", "_"), "--" + body.replace("_", "-")):
            if s not in out:
                out.append(s)
    return out


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def _add_field(
    q: argparse._ActionsContainer, cls: type, field: str, spec: tuple[str, tuple[str, ...], str]
) -> None:
    """A flag for a config field: its type, choices and default read from the dataclass."""
    flag, aliases, help_text = spec
    hint = typing.get_type_hints(cls)[field]
    default = next(f.default for f in dataclasses.fields(cls) if f.name == field)
    kw: dict[str, Any] = {"dest": field, "default": default, "help": help_text}
    metavar = flag[2:].upper()
    args = [t for t in typing.get_args(hint) if t is not type(None)]
    if hint is bool:  # --flag / --no-flag
        kw.update(action=argparse.BooleanOptionalAction)
    elif typing.get_origin(hint) is typing.Literal:
        kw.update(choices=choices_of(hint))
    elif typing.get_origin(hint) is tuple:  # tuple[int, ...]
        kw.update(type=args[0], nargs="+", metavar="C")
    elif len(args) == 1 and type(None) in typing.get_args(hint):  # int | None, float | None
        kw.update(type=_optional(args[0]), metavar=f"{metavar}|none")
    else:
        kw.update(type=hint, metavar=metavar)
    q.add_argument(*_spellings(flag, *aliases), **kw)


def _field_value(a: argparse.Namespace, field: str) -> Any:
    v = getattr(a, field)
    return tuple(v) if isinstance(v, list) else v  # nargs="+" gives a list


# evaluate_split's defaults, read once (the flags show them)
_EVAL = {k: v.default for k, v in inspect.signature(evaluate_split).parameters.items()}
_EVAL_BATCH: int = _EVAL["batch_size"]


def _parser(*, tslib: bool = False) -> argparse.ArgumentParser:
    """The command's parser; ``tslib``: a TSLib script's command line, whose flags default to
    TSLib's values where the two differ (--d_model 512, --d_ff 2048, the CSV's place)."""
    p = _Parser(
        prog="diffsample",
        description=_DESCRIPTION,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"diffsample {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(_COMMANDS) + "}")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=_Formatter,
            allow_abbrev=False,
        )

    def data_flags(q: argparse.ArgumentParser, data_help: str) -> argparse._ArgumentGroup:
        g = q.add_argument_group("data")
        g.add_argument("--data", default=None, help=data_help)
        g.add_argument(
            *_spellings("--root_path"),
            default=None,
            help="folder of --data_path (Time-Series-Library; default: the current folder)",
        )
        g.add_argument(
            *_spellings("--data_path"),
            default=None,
            help="the CSV's file name in --root_path; --data then names its split protocol "
            f"({', '.join(_TSL_DATA)}; default: by the file's name). Without it, --data is the "
            "source",
        )
        g.add_argument(
            "--download",
            action="store_true",
            help="fetch a named ETT file into the cache if missing",
        )
        return g

    def model_and_training(q: argparse.ArgumentParser) -> None:
        g = q.add_argument_group("model (ForecastConfig)")
        for field, spec in _MODEL_FLAGS.items():
            _add_field(g, ForecastConfig, field, spec)
        g = q.add_argument_group("training (TrainConfig)")
        for field, spec in _TRAIN_FLAGS.items():
            _add_field(g, TrainConfig, field, spec)
        g.add_argument(
            *_spellings("--use_amp"),
            dest="amp",
            action="store_const",
            const="auto",
            default=argparse.SUPPRESS,
            help="Time-Series-Library's switch: the same as --amp auto",
        )
        g.add_argument(
            "--resume",
            action="store_true",
            help="continue the killed run saved in --out/model.pt (pass the same flags)",
        )
        g.add_argument(
            "--overwrite",
            action="store_true",
            help="start afresh over an unfinished run (or another file) in --out/model.pt, "
            "losing it; without it or --resume such a run is refused",
        )

    def sampling(
        q: argparse.ArgumentParser,
        *,
        out_help: str,
        out_default: str | None = None,
        out_required: bool = False,
    ) -> argparse._ArgumentGroup:
        s = g = q.add_argument_group("sampling and scoring")
        g.add_argument(
            "--samples",
            type=int,
            default=_EVAL["n_samples"],
            help="S, samples per window",
        )
        g.add_argument(
            "--steps",
            type=int,
            default=_EVAL["num_steps"],
            help="K, sampling steps",
        )
        g.add_argument(
            "--sampler",
            choices=choices_of(SAMPLERS),
            default=_EVAL["sampler"],
            help="the sampler",
        )
        g.add_argument(
            "--windows",
            type=_optional(int),
            default=None,
            help="score N windows spread evenly over the split's period; none: all",
        )
        g.add_argument(
            *_spellings("--save_samples"),
            action="store_true",
            help="also write the samples, [S, W, H, N] float32 with their window ids, start "
            "dates, units and scaler (.npz; read it with diffsample.forecast.load_samples)",
        )
        g.add_argument(
            "--baselines",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="also score the same backbone with Gaussian residuals (sigma fitted on the "
            "training and on the validation windows) and with bootstrapped training residual "
            "windows, on the same windows, into the same files",
        )
        g = q.add_argument_group("run")
        g.add_argument("--out", default=out_default, required=out_required, help=out_help)
        g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
        g.add_argument(
            "--threads",
            type=_optional(int),
            default=None,
            help="CPU threads of torch; none: torch's own choice. On a busy machine fewer "
            "threads are faster (an idle OpenMP thread spins)",
        )
        g.add_argument(
            *_spellings("--no_progress"),
            dest="progress",
            action="store_false",
            default=None,
            help="no progress bars (there are none without a terminal anyway)",
        )
        return s

    d = command("demo", "train a small model on the built-in synthetic data and score it")
    model_and_training(d)
    sampling(d, out_help="folder for model.pt and the results", out_default="runs/demo")
    d.set_defaults(run=_demo, data=None, download=False, enc_in=None, **_DEMO)

    t = command(
        "train",
        "train on a CSV (ETT protocol or 70/10/20) or the synthetic data, then score the test split",
    )
    g = data_flags(
        t, "ETTh1 | ETTh2 | ETTm1 | ETTm2 | a CSV path | synthetic (default: the synthetic data)"
    )
    g.add_argument(
        *_spellings("--enc_in"),
        type=int,
        default=None,
        help="N, the data's variates (Time-Series-Library); if given, checked against the data",
    )
    model_and_training(t)
    sampling(
        t,
        out_help="folder for model.pt and the results (with --task_name: "
        "<checkpoints>/<setting>/, as Time-Series-Library names it)",
        out_required=not tslib,
    )
    add_flags(t, _spellings)
    t.set_defaults(run=_train, **(TSLIB_DEFAULTS if tslib else {}))

    e = command("evaluate", "score a saved model on a split of the data it was trained on")
    e.add_argument("checkpoint", help="a model.pt written by diffsample train")
    data_flags(e, "the data to score on (default: the checkpoint's own; other data are refused)")
    g = sampling(
        e,
        out_help="the results file; a folder puts eval_<split>.json there (default: "
        "eval_<split>.json beside the checkpoint)",
    )
    g.add_argument("--split", choices=_SPLITS, default="test", help="the split to score")
    g.add_argument(
        *_spellings("--batch_size"), type=int, default=_EVAL_BATCH, help="windows per forecast call"
    )
    g.add_argument(
        *_spellings("--allow_unfinished"),
        action="store_true",
        help="also score the checkpoint of a run that has not finished (its best weights so far)",
    )
    g.add_argument("--seed", type=int, default=TrainConfig.seed, help="keys the sampling noise")
    e.set_defaults(run=_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tslib = is_tslib(argv)
    if tslib and (not argv or argv[0] not in _COMMANDS):  # "python -u run.py" -> "diffsample"
        argv = ["train", *argv]
    elif argv and argv[0].startswith("--") and argv[0] not in ("--help", "--version"):
        flag = argv[0].split("=")[0]
        print(
            f"{_who()}: error: {flag}: expected a command first ({', '.join(_COMMANDS)}), or "
            "--task_name for a Time-Series-Library script's command line (diffsample --help "
            "lists them)",
            file=sys.stderr,
        )
        return 2
    try:
        args = _parser(tslib=tslib).parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2: one line, _Parser.error)
        return exc.code if isinstance(exc.code, int) else 2
    threads = torch.get_num_threads()
    try:
        if args.threads is not None:  # for this command only (main may run in-process)
            torch.set_num_threads(_check_threads(args.threads))
        args.run(args)
    except KeyboardInterrupt:
        hint = (
            " (continue it with the same command and --resume)"
            if args.command != "evaluate"
            else ""
        )
        print(f"{_who()}: interrupted{hint}", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        print(f"{_who()}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, and a different status
        print(
            f"{_who()}: error: unexpected {type(exc).__name__}: {_one_line(exc)} (a bug in "
            "diffsample; please report it with the command line)",
            file=sys.stderr,
        )
        return 1
    finally:
        torch.set_num_threads(threads)
    return 0


def _check_threads(threads: object) -> int:
    """--threads within the machine's CPUs: a million threads kill the interpreter inside the
    OpenMP runtime, past any error handling."""
    cpus = os.cpu_count() or 1
    n = check_int("--threads", threads)
    if n > cpus:
        raise ValueError(expected("--threads", f"at most the {cpus} CPUs of this machine", threads))
    return n


def _who() -> str:
    return "diffsample" if _rank() == 0 else f"diffsample (rank {_rank()})"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
