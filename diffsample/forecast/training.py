"""Two-stage mixed-precision trainer for ITransformerDiffusion, with per-epoch checkpoints.

Stage 1 trains the iTransformer backbone on the point MSE (Time-Series-Library protocol: Adam,
learning rate halved every epoch, early stopping on validation MSE). Stage 2 freezes it, fixes
the per-variate residual statistics on the training windows, and trains the denoiser on the
diffusion loss (AdamW, early stopping on a validation diffusion loss drawn with fixed noise).
The best weights of each stage are kept. Then, if ``calibration`` asks, the spread of the
samples is calibrated per horizon step and variate (``model.res_scale [H, N]``) on the training
("train_spread") or validation ("val_spread") windows: :mod:`diffsample.forecast.calibration`.

Mixed precision: one code path, ``torch.amp.autocast(device_type, dtype, enabled)`` and a
GradScaler enabled only for fp16. "auto" picks bf16 on GPUs that support it, fp16 on other
GPUs, and full fp32 on CPU.

Trust: a non-finite training or validation loss stops the run with :class:`NonFiniteLossError`
(naming stage, epoch and batch) and nothing is written for that epoch. With ``checkpoint=``
every finished epoch is written atomically with all a run needs to go on (weights, optimizer,
GradScaler, learning rate, every RNG, early-stopping state, history), marked unfinished;
``resume=True`` continues from it and, on the same machine, ends with the same weights as a run
never interrupted. Only the end of stage 2 writes a finished checkpoint. The file's format and
the resume checks: :mod:`diffsample.forecast.checkpoint`.

Randomness: the batch order draws from a CPU generator seeded ``seed``, the diffusion steps and
noise from a device generator seeded ``seed + 1``, the validation noise from one seeded
``seed + 2`` afresh each epoch, and dropout from the global RNG, seeded ``seed + 3`` inside
``torch.random.fork_rng``: the caller's global RNG is as it was when ``train`` returns. The
run's state, its stages and streams: :mod:`diffsample.forecast.training_run`.

Dimensions: B windows per batch, L lookback, H horizon, N variates, F time features.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._utils import check_bool, check_path, expected, progress_bar
from .baselines import residual_stats
from .calibration import calibrate, check_calibration, fit_spread_scale
from .checkpoint import check_resume_device, model_payload, read_resume, write_checkpoint
from .data import ForecastDataset, ForecastSplit, WindowBatch
from .model import ITransformerDiffusion
from .model_config import ForecastConfig
from .train_config import (
    AmpMode,
    Calibration,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
    autocast,
    dtype_name,
    placement,
    resolve_amp,
)
from .training_run import (
    Fitting,
    LossWatch,
    PassResult,
    Run,
    Stage,
    batches,
    capped,
    check_compatible,
    eager_checks,
    epoch_order,
    forked_devices,
    rank_seed,
    restore,
    seed_global_rng,
    stages,
    val_windows,
)

__all__ = [
    "AmpMode",
    "Calibration",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "check_train_settings",
    "fit_spread_scale",
    "resolve_amp",
    "train",
]

log = logging.getLogger(__name__)


def train(
    model: ITransformerDiffusion,
    data: ForecastDataset,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen: one shared default is safe)
    *,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    group: Any = None,
) -> TrainResult:
    """Train both stages in place and return what happened.

    Under torchrun (or given a process ``group``) each process trains a DistributedDataParallel
    copy on its share of every epoch's shuffled windows (DistributedSampler), the batch size
    being per process; the validation losses are summed over the ranks, so every rank stops
    early at the same epoch and returns the same model and result; rank 0 alone prints,
    logs and writes the checkpoint.

    Args:
        model: the forecaster; its config must match the data (lookback, horizon, variates, F).
            ``model.data_spec`` is set to ``data.spec()``.
        data: a ForecastDataset (``load_dataset``); train for fitting, val for early stopping.
        config: TrainConfig.
        device: default CUDA when available, else CPU.
        checkpoint: after every epoch, write the run's state here atomically (an unfinished
            checkpoint, which ``ITransformerDiffusion.load`` refuses by default); at the end,
            the finished model. An existing file is overwritten unless ``resume``.
        resume: continue the run saved in ``checkpoint`` from its last finished epoch, with the
            same ``model`` config, ``config`` and data (each checked); the epoch that was in
            flight is run again, so the result equals that of an uninterrupted run on the same
            machine. The model's weights are replaced by the checkpoint's. A finished
            checkpoint written by ``train`` is loaded and its result returned, untrained further.
        progress: on a terminal, None or True show a bar for each epoch's training and
            validation passes; off a terminal (a log file, a pipe) True writes a line to stderr
            every ``diffsample._utils.PROGRESS_INTERVAL`` seconds (30) of a pass, with the
            batches done, the rate and the time left, and None writes none; False: nothing.
        on_epoch: called with each epoch's record, e.g. ``print`` (only epochs run by this call;
            distributed, on rank 0 only).
        group: a ``torch.distributed`` process group to train over; None: the default group
            under torchrun (started here if needed: gloo on the CPU, nccl on CUDA, each process
            on its ``LOCAL_RANK`` GPU), else this process alone; False: this process alone even
            under torchrun. Distributed, every rank must call ``train`` with the same config,
            checkpoint (given or not) and resume (checked: a ValueError on every rank).

    Returns:
        A :class:`TrainResult`; the model holds the best weights of each stage, in eval mode.

    Raises:
        NonFiniteLossError: a training or validation loss became NaN or infinite.
        ValueError: the model does not fit the data; a calibration the model cannot run
            (:func:`check_train_settings`); ``resume`` without a checkpoint file, or with one
            whose model config, train config or data differ (naming the field).
        TypeError: an argument of the wrong kind.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(expected("config", "a TrainConfig", config))
    check_compatible(model, data)
    resume = check_bool("resume", resume)
    path = check_path("checkpoint", checkpoint) if checkpoint is not None else None
    device, ranks = placement(device, group)
    ranks.check_same(
        "train", (dataclasses.asdict(config), path is not None, resume, len(data.train))
    )
    check_train_settings(config, model.config, data, device=device, world=ranks.world)
    saved = None
    if resume:
        saved = read_resume(
            path, model_config=model.config, train_config=config, data=data, world=ranks.world
        )
    model.to(device)
    if saved is not None and saved.get("finished") is True:
        return _finished_result(model, saved)
    model.data_spec = data.spec()
    amp_dtype = resolve_amp(config.amp, device)
    if saved is not None:  # the RNG states and the precision only continue on the same kind
        check_resume_device(saved, path, device.type, dtype_name(amp_dtype))
    run = Run.start(
        model,
        data,
        config,
        device=device,
        amp_dtype=amp_dtype,
        ranks=ranks,
        checkpoint=path,
        progress=progress,
        on_epoch=on_epoch,
    )
    try:  # dropout draws from the global RNG: forked, so the caller's stream is left alone
        with torch.random.fork_rng(devices=forked_devices(device)):
            best_diff = _train_stages(run, saved)
    finally:  # an error or an interrupt leaves the model trainable, as it came
        model.backbone.requires_grad_(True)
    model.eval()
    if path is not None:
        weights = model_payload(model.config, model.state_dict(), model.data_spec)
        payload = {**weights, "finished": True, "run": run.run_record(best_val_diffusion=best_diff)}
        # the file is there when train returns, on every rank
        ranks.on_main(lambda: write_checkpoint(path, payload), f"writing the checkpoint {path}")
    seconds = ranks.max(run.seconds())  # the slowest rank's: one result on every rank
    return TrainResult(
        tuple(run.history), run.best_point, best_diff, dtype_name(amp_dtype), seconds
    )


def _train_stages(run: Run, saved: Mapping[str, Any] | None) -> float:
    """Both stages (from the start, or from where ``saved`` stopped), then the calibration;
    returns the best validation diffusion loss."""
    model, config = run.model, run.config
    point, diffusion = stages(run)
    if saved is None:
        seed_global_rng(run.device, rank_seed(config, 3, run.ranks))
        start = 1
    else:
        start = restore(run, saved)
    if start == 1:
        run.best_point = _fit(run, point, saved)
    model.backbone.requires_grad_(False).eval()
    if start == 1:  # a run resumed in stage 2 has its statistics in the checkpoint
        model.set_residual_stats(
            *residual_stats(model, run.train_split, batch_size=config.batch_size)
        )
    best_diff = _fit(run, diffusion, saved if start == 2 else None)
    if config.calibration != "none":
        group = run.ranks.group if run.ranks.group is not None else False
        calibrate(model, config, run.train_split, run.val_split, group=group)
    return best_diff


def check_train_settings(
    config: TrainConfig,
    model_config: ForecastConfig,
    data: ForecastDataset,
    *,
    device: str | torch.device = "cpu",
    world: int = 1,
) -> None:
    """What a TrainConfig asks of a model and data that the config alone cannot check, checked
    before any training (``train`` calls it first): the calibration's sampling steps against the
    model's T, and its samples against the memory ``device`` has available. Without this a
    run would train both stages, then fail in the calibration and stay unfinished (and
    ``resume`` with a corrected value is refused: the config differs).

    Args:
        config: the trainer's settings.
        model_config: the model's (its T, H and N).
        data: the data to be trained on (the calibration's windows).
        device: where the calibration would sample.
        world: processes sharing the calibration's windows (torchrun).

    Raises:
        ValueError: naming the field.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(expected("config", "a TrainConfig", config))
    check_calibration(config, model_config, data, device=device, world=world)


def _fit(run: Run, stage: Stage, saved: Mapping[str, Any] | None) -> float:
    """Train a stage's module with early stopping, from scratch or from ``saved`` (a checkpoint
    of this stage); keep and restore its best weights and return its best validation loss."""
    fit = Fitting.start(run, stage, saved)
    for epoch in range(fit.first, 0 if fit.stopping.stopped else stage.epochs):
        loss, val = _epoch_and_validation(run, fit, epoch)
        record = {
            "stage": stage.number,
            "epoch": epoch + 1,
            stage.names[0]: loss.mean,
            stage.names[1]: val.mean,
            "lr": fit.opt.param_groups[0]["lr"],
        }
        run.history.append(record)
        if run.ranks.main:
            log.info("epoch %s", record)
        fit.end_epoch(val.mean, run.config.patience)
        if stage.number == 1:
            run.best_point = fit.stopping.best  # what a checkpoint's run record reports so far
        if run.checkpoint is not None:
            _save_epoch(run.checkpoint, run, fit, epoch + 1)
        if run.on_epoch is not None:  # after the write: an epoch reported is an epoch saved
            run.on_epoch(record)
        if fit.stopping.stopped:
            break
    fit.module.load_state_dict(fit.stopping.best_state)
    return fit.stopping.best


def _epoch_and_validation(run: Run, fit: Fitting, epoch: int) -> tuple[PassResult, PassResult]:
    """One training pass and one validation pass of epoch ``epoch`` (from 0); a non-finite loss
    puts the stage's best weights back into its module and raises NonFiniteLossError."""
    stage, module = fit.stage, fit.module
    module.train()
    desc = f"stage {stage.number} epoch {epoch + 1}/{stage.epochs}"
    try:
        order = epoch_order(run, stage.number, epoch)
        loss = _epoch(fit.loss_fn, order, module, fit.opt, fit.scaler, run, desc)
        _raise_if_bad(loss, stage.number, epoch + 1, "train")
        module.eval()
        val = _evaluate(stage.val_fn(), run.val_split, run, f"{desc} validation")
        _raise_if_bad(val, stage.number, epoch + 1, "val")
    except NonFiniteLossError:
        # the epoch stepped past good weights (on a GPU past the bad batch too: one check an
        # epoch, no sync a batch): leave the caller's model with its best weights
        module.load_state_dict(fit.stopping.best_state)
        raise
    return loss, val


def _save_epoch(path: Path, run: Run, fit: Fitting, epoch: int) -> None:
    """The unfinished checkpoint after an epoch, written by rank 0: ``state_dict`` is the model
    as it would stand if training stopped here (this stage's best weights), ``resume`` what
    continuing needs."""
    resume = fit.resume_entry(run)  # on every rank: it gathers the ranks' RNG states
    model = run.model

    def write() -> None:
        weights = model_payload(model.config, fit.best_weights(model), model.data_spec)
        write_checkpoint(
            path,
            {
                **weights,
                "finished": False,
                "stage": fit.stage.number,
                "epoch": epoch,
                "run": run.run_record(),
                "resume": resume,
            },
        )

    run.ranks.on_main(write, f"writing the checkpoint {path}")


def _raise_if_bad(p: PassResult, stage: int, epoch: int, split: str) -> None:
    if p.bad_batch is not None or not math.isfinite(p.mean):
        loss = p.bad_loss if p.bad_batch is not None else p.mean
        raise NonFiniteLossError(
            stage=stage, epoch=epoch, batch=p.bad_batch, split=split, loss=loss
        )


def _epoch(
    loss_fn: Callable[[WindowBatch], torch.Tensor],
    order: torch.Tensor,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: Any,
    run: Run,
    desc: str,
) -> PassResult:
    """One pass over (a capped number of) batches of the training windows ``order [n]``;
    returns the mean loss.

    On the CPU a non-finite loss ends the pass before its step (checking is free there); on
    other devices, and distributed (where every rank must take the same steps), the pass runs
    on and reports the first one at its end.
    """
    config, split = run.config, run.train_split
    some = capped(batches(split, order, config.batch_size), config.max_batches_per_epoch)
    n_batches = math.ceil(order.numel() / config.batch_size)
    total = min(n_batches, config.max_batches_per_epoch or n_batches)
    watch = LossWatch(run.device)
    count = 0
    bar = progress_bar(some, total=total, desc=desc, unit="batch", progress=run.progress)
    for i, batch in enumerate(bar):
        with autocast(run.device, run.amp_dtype):
            loss = loss_fn(batch)
        watch.add(loss, i)
        count += 1
        if eager_checks(run) and not bool(torch.isfinite(loss)):
            break  # before the step: the weights stay those of the last good batch
        _step(loss, module, opt, scaler, config.grad_clip)
    return watch.result(count, run.ranks)


def _step(
    loss: torch.Tensor,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: Any,
    grad_clip: float | None,
) -> None:
    """Backward pass and one optimizer step (through the GradScaler, clipped if asked)."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()


@torch.no_grad()
def _evaluate(
    loss_fn: Callable[[WindowBatch], torch.Tensor],
    split: ForecastSplit,
    run: Run,
    desc: str,
) -> PassResult:
    """Window-weighted mean of a loss over the validation windows of a split (every window, or
    ``max_val_batches`` batches' worth; distributed: each rank scores its share and the sums
    are added up)."""
    windows = val_windows(len(split), run.config)  # [W]
    mine = windows[run.ranks.shard(windows.numel())]  # this rank's share
    batch_size = run.config.batch_size
    watch, n = LossWatch(run.device), 0
    some = progress_bar(
        batches(split, mine, batch_size),
        total=math.ceil(mine.numel() / batch_size),
        desc=desc,
        unit="batch",
        progress=run.progress,
    )
    for i, batch in enumerate(some):
        with autocast(run.device, run.amp_dtype):
            watch.add(loss_fn(batch), i, weight=batch.x.shape[0])
        n += batch.x.shape[0]
    return watch.result(n, run.ranks)


def _finished_result(model: ITransformerDiffusion, saved: Mapping[str, Any]) -> TrainResult:
    """A finished run resumed: its weights into ``model``, its record as the result."""
    model.load_state_dict(saved["state_dict"])
    model.data_spec = dict(saved["data_spec"])
    model.eval()
    record = saved["run"]
    return TrainResult(
        tuple(dict(r) for r in record["history"]),
        float(record["best_val_point"]),
        float(record["best_val_diffusion"]),
        record["amp_dtype"],
        float(record["seconds"]),
    )
