"""Two-stage mixed-precision trainer for ITransformerDiffusion, with per-epoch checkpoints.

Stage 1 trains the iTransformer backbone on the point MSE (Time-Series-Library protocol: Adam,
learning rate halved every epoch, early stopping on validation MSE). Stage 2 freezes it, fixes
the per-variate residual statistics on the training windows, and trains the denoiser on the
diffusion loss (AdamW, early stopping on a validation diffusion loss drawn with fixed noise).
The best weights of each stage are kept. Then the spread of the samples is calibrated
(``calibration``): a trained denoiser, sampled with a few-step ODE solver, returns residuals
narrower than those it was trained on (on ETTh1 about 0.78 of their rms on the training windows
themselves, so it is the denoiser and sampler, not the backbone's fit, that contracts them); one
scale per horizon step and variate (``model.res_scale [H, N]``) makes the samples' second moment
equal to the true residuals' on the training windows ("train_spread", the default: the same
level that ``res_std`` and the Gaussian baseline use) or on the validation windows
("val_spread": also absorbs a shift of level between the training and validation periods,
which helps only where the test period shares it) (:func:`fit_spread_scale`).

Mixed precision: one code path, ``torch.amp.autocast(device_type, dtype, enabled)`` and a
GradScaler enabled only for fp16. "auto" picks bf16 on GPUs that support it, fp16 on other
GPUs, and full fp32 on CPU.

Trust: a non-finite training or validation loss stops the run with :class:`NonFiniteLossError`
(naming stage, epoch and batch) and nothing is written for that epoch. With ``checkpoint=``
every finished epoch is written atomically with all a run needs to go on (weights, optimizer,
GradScaler, learning rate, every RNG, early-stopping state, history), marked unfinished;
``resume=True`` continues from it and, on the same machine, ends with the same weights as a run
never interrupted. Only the end of stage 2 writes a finished checkpoint.

Randomness: the batch order draws from a CPU generator seeded ``seed``, the diffusion steps and
noise from a device generator seeded ``seed + 1``, the validation noise from one seeded
``seed + 2`` afresh each epoch, and dropout from the global RNG, seeded ``seed + 3`` inside
``torch.random.fork_rng``: the caller's global RNG is as it was when ``train`` returns.

Dimensions: B windows per batch, L lookback, H horizon, N variates, F time features.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from .._utils import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_path,
    expected,
    progress_bar,
)
from ..distributed import Ranks, local_device
from .baselines import residual_stats
from .data import ForecastDataset, ForecastSplit, WindowBatch, check_data_spec
from .evaluation import check_num_steps, check_sampling_memory, forecast_windows, sampling_bytes
from .model import (
    BEFORE_FIELD,
    ForecastConfig,
    ITransformerDiffusion,
    _read_checkpoint,
    _write_checkpoint,
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


AmpMode = Literal["auto", "bf16", "fp16", "off"]
Calibration = Literal["train_spread", "val_spread", "none"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Trainer settings. Defaults follow the iTransformer ETT recipe for stage 1.

    Every field is checked at construction (TypeError for the wrong kind of value, ValueError
    for a bad one, each naming the field), so a run fails before it starts, not epochs into it
    or silently (a negative ``grad_clip`` would flip the gradients: gradient ascent).
    """

    batch_size: int = 32
    point_epochs: int = 10
    point_lr: float = 1e-4
    point_lr_decay: float = 0.5  # multiply the learning rate by this after every epoch
    diffusion_epochs: int = 30
    diffusion_lr: float = 1e-3
    # multiply the stage-2 learning rate by this after every epoch (1.0 keeps it constant). At a
    # constant 1e-3 the validation diffusion loss still fell after 20 epochs; 30 epochs decaying
    # by 0.9 (1e-3 down to 5e-5) lowered ETTh1 CRPS by 1.1% on the same backbone (docs/results.md)
    diffusion_lr_decay: float = 0.9
    # (t, noise) draws per window in each stage-2 batch (ITransformerDiffusion.diffusion_loss):
    # a less noisy gradient for the same backbone cost. On ETTh1 (3 seeds, docs/results.md) 4
    # draws lowered the validation diffusion loss (0.747 -> 0.737) and CRPS by 0.26%, but made
    # the sample mean worse than the point forecast (MSE 0.3895 against 0.3888; 0.3865 with 1)
    # for 1.75x the training time, so the default stays 1
    diffusion_draws: int = 1
    weight_decay: float = 0.0
    patience: int = 3
    max_batches_per_epoch: int | None = None  # cap for quick runs; None = every window once
    # cap for smoke runs: each validation pass scores max_val_batches x batch_size evenly spaced
    # validation windows (early stopping then sees only those); None = every validation window
    max_val_batches: int | None = None
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    amp: AmpMode = "auto"
    seed: int = 0
    # after stage 2: fit model.res_scale [H, N] (fit_spread_scale) on the training windows
    # ("train_spread") or the validation windows ("val_spread") from calibration_samples
    # DPM-Solver++(2M) samples of calibration_steps steps per window; "none" leaves it at ones
    calibration: Calibration = "none"
    calibration_samples: int = 16
    calibration_steps: int = 10
    calibration_windows: int | None = 2048  # evenly spaced windows (a cost cap); None = all

    def __post_init__(self) -> None:
        checked: dict[str, object] = {
            "batch_size": check_int("batch_size", self.batch_size),
            "patience": check_int("patience", self.patience),
            "point_epochs": check_int("point_epochs", self.point_epochs, minimum=0),
            "diffusion_epochs": check_int("diffusion_epochs", self.diffusion_epochs, minimum=0),
            "diffusion_draws": check_int("diffusion_draws", self.diffusion_draws),
            "point_lr": check_number("point_lr", self.point_lr, minimum=0.0, open_min=True),
            "diffusion_lr": check_number(
                "diffusion_lr", self.diffusion_lr, minimum=0.0, open_min=True
            ),
            "point_lr_decay": check_number(
                "point_lr_decay", self.point_lr_decay, minimum=0.0, maximum=1.0, open_min=True
            ),
            "diffusion_lr_decay": check_number(
                "diffusion_lr_decay",
                self.diffusion_lr_decay,
                minimum=0.0,
                maximum=1.0,
                open_min=True,
            ),
            "weight_decay": check_number("weight_decay", self.weight_decay, minimum=0.0),
            "amp": check_choice("amp", self.amp, AmpMode),
            "seed": check_int("seed", self.seed, minimum=0),
            "calibration": check_choice("calibration", self.calibration, Calibration),
            # the second moment needs at least two samples to be more than one draw's square
            "calibration_samples": check_int(
                "calibration_samples", self.calibration_samples, minimum=2
            ),
            "calibration_steps": check_int("calibration_steps", self.calibration_steps),
        }
        if self.calibration_windows is not None:
            checked["calibration_windows"] = check_int(
                "calibration_windows", self.calibration_windows
            )
        if self.max_batches_per_epoch is not None:
            checked["max_batches_per_epoch"] = check_int(
                "max_batches_per_epoch", self.max_batches_per_epoch
            )
        if self.max_val_batches is not None:
            checked["max_val_batches"] = check_int("max_val_batches", self.max_val_batches)
        if self.grad_clip is not None:
            checked["grad_clip"] = check_number(
                "grad_clip", self.grad_clip, minimum=0.0, open_min=True
            )
        for name, value in checked.items():  # plain int / float, as dataclasses.asdict reports
            object.__setattr__(self, name, value)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What training did.

    Attributes:
        history: one record per epoch: stage, epoch, train and validation loss, learning rate
            (a resumed run's include the epochs before the interruption).
        best_val_point: the best validation MSE of stage 1 (its weights are the ones kept).
        best_val_diffusion: the best validation diffusion loss of stage 2.
        amp_dtype: "bfloat16", "float16", or None for full precision.
        seconds: wall time of both stages (of every session, for a resumed run).
    """

    history: tuple[dict[str, float], ...]
    best_val_point: float
    best_val_diffusion: float
    amp_dtype: str | None
    seconds: float


class NonFiniteLossError(RuntimeError):
    """A training or validation loss became NaN or infinite: the run diverged and stopped.

    Nothing was written for the epoch it happened in; a checkpoint from an earlier epoch stays
    as it was (unfinished, so ``ITransformerDiffusion.load`` refuses it by default). The
    model's weights in memory are those of the failed epoch: do not use them.

    Attributes:
        stage: 1 (point forecast) or 2 (diffusion).
        epoch: the epoch of that stage, counted from 1.
        batch: the first batch whose loss was not finite, counted from 1; None when only the
            epoch's mean overflowed.
        split: ``"train"`` or ``"val"``.
        loss: the loss seen (nan, inf or -inf).
    """

    def __init__(
        self, *, stage: int, epoch: int, batch: int | None, split: str, loss: float
    ) -> None:
        self.stage, self.epoch, self.batch, self.split, self.loss = stage, epoch, batch, split, loss
        where = f"stage {stage} epoch {epoch}" + (f" batch {batch}" if batch is not None else "")
        what = "training" if split == "train" else "validation"
        super().__init__(
            f"{where}: the {what} loss is {loss}; training diverged and stopped, nothing was "
            "saved for this epoch (lower the learning rate, keep grad_clip on, or try amp='off')"
        )


def resolve_amp(amp: AmpMode, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a setting on a device, or None for full precision."""
    check_choice("amp", amp, AmpMode)
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@dataclasses.dataclass(frozen=True)
class _Stage:
    """What differs between the two stages; ``_fit`` runs either."""

    number: int
    prefix: str  # the trained module's name in the model's state_dict
    make_optimizer: Callable[[], torch.optim.Optimizer]
    loss_fn: Callable[[WindowBatch], torch.Tensor]
    val_fn: Callable[[], Callable[[WindowBatch], torch.Tensor]]  # called once per validation
    epochs: int
    lr_decay: float
    names: tuple[str, str]  # the history's keys for the train and validation loss


@dataclasses.dataclass
class _Run:
    """Everything one call of ``train`` shares between its stages (mutable: the history grows)."""

    model: ITransformerDiffusion
    config: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    train_split: ForecastSplit
    val_split: ForecastSplit
    g: torch.Generator  # batch order (CPU)
    g_dev: torch.Generator  # diffusion t and noise (on the device)
    checkpoint: Path | None
    progress: bool | None
    on_epoch: Callable[[dict[str, float]], None] | None
    history: list[dict[str, float]]
    best_point: float
    seconds_before: float  # of the sessions before a resume
    t0: float
    ranks: Ranks = dataclasses.field(default_factory=Ranks)  # one process, unless distributed

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def run_record(self, **extra: Any) -> dict[str, Any]:
        """The checkpoint's ``run`` entry: what TrainResult reports, and the train config."""
        return {
            "train_config": dataclasses.asdict(self.config),
            "history": [dict(r) for r in self.history],
            "best_val_point": self.best_point,
            "amp_dtype": _dtype_name(self.amp_dtype),
            "device_type": self.device.type,
            "world_size": self.ranks.world,
            "val_windows": _val_windows(len(self.val_split), self.config).numel(),
            "seconds": self.seconds(),
            **extra,
        }


def train(
    model: ITransformerDiffusion,
    data: ForecastDataset,
    config: TrainConfig = TrainConfig(),
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
    _check_compatible(model, data)
    resume = check_bool("resume", resume)
    path = check_path("checkpoint", checkpoint) if checkpoint is not None else None
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    ranks = Ranks.resolve(group, device)
    if ranks.group is not None and device.type == "cuda":  # DDP wants the GPU's index
        device = local_device(device)
        device = (
            device
            if device.index is not None
            else torch.device("cuda", torch.cuda.current_device())
        )
    ranks.check_same(
        "train", (dataclasses.asdict(config), path is not None, resume, len(data.train))
    )
    check_train_settings(config, model.config, data, device=device, world=ranks.world)
    saved = _resume_state(path, model, data, config, ranks) if resume else None
    model.to(device)
    if saved is not None and saved.get("finished") is True:
        return _finished_result(model, saved)
    model.data_spec = data.spec()
    amp_dtype = resolve_amp(config.amp, device)
    if saved is not None:  # the RNG states and the precision only continue on the same kind
        record = saved["run"]
        was = (record.get("device_type", device.type), record.get("amp_dtype"))
        if was != (device.type, _dtype_name(amp_dtype)):
            raise ValueError(
                f"resume: {path} was trained on {was[0]} with amp dtype {was[1]}; this run is on "
                f"{device.type} with {_dtype_name(amp_dtype)}: resume on the same kind of device"
            )
    run = _Run(
        model=model,
        config=config,
        device=device,
        amp_dtype=amp_dtype,
        train_split=data.train.to(device),
        val_split=data.val.to(device),
        g=torch.Generator().manual_seed(config.seed),
        g_dev=torch.Generator(device=device).manual_seed(_rank_seed(config, 1, ranks)),
        checkpoint=path,
        progress=progress if ranks.main else False,
        on_epoch=on_epoch if ranks.main else None,
        history=[],
        best_point=math.inf,
        seconds_before=0.0,
        t0=time.perf_counter(),
        ranks=ranks,
    )

    # stage 1: the point forecast
    def point(b: WindowBatch) -> torch.Tensor:
        return model.point_loss(b.x, b.y, b.x_mark)

    stage1 = _Stage(
        1,
        "backbone",
        lambda: torch.optim.Adam(
            model.backbone.parameters(), lr=config.point_lr, weight_decay=config.weight_decay
        ),
        point,
        lambda: point,
        config.point_epochs,
        config.point_lr_decay,
        ("train_point_mse", "val_point_mse"),
    )

    # stage 2: the residual diffusion, on statistics fixed from the training windows
    def diffusion_val() -> Callable[[WindowBatch], torch.Tensor]:  # the same t, noise each pass
        g_val = torch.Generator(device=device).manual_seed(_rank_seed(config, 2, ranks))
        return lambda b: model.diffusion_loss(
            b.x, b.y, b.x_mark, generator=g_val, draws=config.diffusion_draws
        )

    stage2 = _Stage(
        2,
        "denoiser",
        lambda: torch.optim.AdamW(
            model.denoiser.parameters(), lr=config.diffusion_lr, weight_decay=config.weight_decay
        ),
        lambda b: model.diffusion_loss(
            b.x, b.y, b.x_mark, generator=run.g_dev, draws=config.diffusion_draws
        ),
        diffusion_val,
        config.diffusion_epochs,
        config.diffusion_lr_decay,
        ("train_diffusion_loss", "val_diffusion_loss"),
    )

    # dropout draws from the global RNG: forked, so the caller's stream is left alone
    forked = []
    if device.type == "cuda":
        forked = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=forked):
            if saved is None:
                _seed_global_rng(device, _rank_seed(config, 3, ranks))
                start = 1
            else:
                start = _restore(run, saved)
            if start == 1:
                run.best_point = _fit(run, stage1, saved)
            model.backbone.requires_grad_(False).eval()
            if start == 1:  # a run resumed in stage 2 has its statistics in the checkpoint
                model.set_residual_stats(
                    *residual_stats(model, run.train_split, batch_size=config.batch_size)
                )
            best_diff = _fit(run, stage2, saved if start == 2 else None)
            if config.calibration != "none":
                held = run.val_split if config.calibration == "val_spread" else run.train_split
                model.set_residual_scale(
                    fit_spread_scale(
                        model,
                        held,
                        n_samples=config.calibration_samples,
                        num_steps=config.calibration_steps,
                        max_windows=config.calibration_windows,
                        batch_size=max(config.batch_size, 256),
                        seed=config.seed,
                        group=ranks.group if ranks.group is not None else False,
                    )
                )
    finally:  # an error or an interrupt leaves the model trainable, as it came
        model.backbone.requires_grad_(True)
    model.eval()
    if path is not None:
        record = run.run_record(best_val_diffusion=best_diff)
        payload = {**model._checkpoint_payload(), "finished": True, "run": record}
        # the file is there when train returns, on every rank
        ranks.on_main(lambda: _write_checkpoint(path, payload), f"writing the checkpoint {path}")
    seconds = ranks.max(run.seconds())  # the slowest rank's: one result on every rank
    return TrainResult(
        tuple(run.history), run.best_point, best_diff, _dtype_name(amp_dtype), seconds
    )


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
    if config.calibration == "none":
        return
    c = model_config
    check_num_steps(config.calibration_steps, c.num_train_steps, name="calibration_steps")
    held = data.val if config.calibration == "val_spread" else data.train
    n = (
        len(held)
        if config.calibration_windows is None
        else min(config.calibration_windows, len(held))
    )
    per_call = min(max(config.batch_size, 256), -(-n // world))  # as train calls fit_spread_scale
    S = config.calibration_samples
    check_sampling_memory(
        sampling_bytes(S, per_call, c.horizon, c.n_variates),
        device,
        name="calibration_samples",
        what=f"{S} samples x {per_call} windows x [{c.horizon}, {c.n_variates}] (H, N)",
        hint="lower calibration_samples",
    )


def _fit(run: _Run, stage: _Stage, saved: Mapping[str, Any] | None) -> float:
    """Train a stage's module with early stopping, from scratch or from ``saved`` (a checkpoint
    of this stage); keep and restore its best weights and return its best validation loss."""
    module: nn.Module = getattr(run.model, stage.prefix)
    loss_fn = stage.loss_fn
    if run.ranks.group is not None:  # DDP starts every rank from rank 0's weights
        loss_fn = DistributedDataParallel(
            _StageLoss(module, stage.loss_fn),
            device_ids=[run.device.index] if run.device.type == "cuda" else None,
            process_group=run.ranks.group,
        )
    opt = stage.make_optimizer()
    scaler = _grad_scaler(run.device, enabled=run.amp_dtype == torch.float16)
    best_state = copy.deepcopy(module.state_dict())  # a resumed model holds the best weights now
    best, stale, stopped, first = math.inf, 0, False, 0
    if saved is not None:
        state = saved["resume"]
        best, stale, stopped = float(state["best"]), int(state["stale"]), bool(state["stopped"])
        first = int(saved["epoch"])  # epochs of this stage already done
        module.load_state_dict(state["current"])
        opt.load_state_dict(state["optimizer"])
        if state["scaler"] and scaler.is_enabled():  # a disabled scaler saves {}
            scaler.load_state_dict(state["scaler"])
    for epoch in range(first, 0 if stopped else stage.epochs):
        module.train()
        desc = f"stage {stage.number} epoch {epoch + 1}/{stage.epochs}"
        try:
            order = _epoch_order(run, stage.number, epoch)
            loss = _epoch(loss_fn, order, module, opt, scaler, run, desc)
            _raise_if_bad(loss, stage.number, epoch + 1, "train")
            module.eval()
            val = _evaluate(stage.val_fn(), run.val_split, run, f"{desc} validation")
            _raise_if_bad(val, stage.number, epoch + 1, "val")
        except NonFiniteLossError:
            # the epoch stepped past good weights (on a GPU past the bad batch too: one check an
            # epoch, no sync a batch): leave the caller's model with its best weights
            module.load_state_dict(best_state)
            raise
        record = {
            "stage": stage.number,
            "epoch": epoch + 1,
            stage.names[0]: loss.mean,
            stage.names[1]: val.mean,
            "lr": opt.param_groups[0]["lr"],
        }
        run.history.append(record)
        if run.ranks.main:
            log.info("epoch %s", record)
        if val.mean < best:
            best, best_state, stale = val.mean, copy.deepcopy(module.state_dict()), 0
        else:
            stale += 1
            stopped = stale >= run.config.patience
        if not stopped:
            for group in opt.param_groups:
                group["lr"] *= stage.lr_decay
        if stage.number == 1:
            run.best_point = best  # what a checkpoint's run record reports so far
        if run.checkpoint is not None:
            resume = {
                "stopped": stopped,
                "best": best,
                "stale": stale,
                "current": module.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(),
                # every rank's (each draws its own diffusion noise and dropout); one: a dict
                "rng": _rng_states(run)
                if run.ranks.group is None
                else run.ranks.gather(_rng_states(run)),
            }
            path = run.checkpoint
            save = functools.partial(_save_unfinished, path, run, stage, epoch + 1, best_state)
            run.ranks.on_main(functools.partial(save, resume), f"writing the checkpoint {path}")
        if run.on_epoch is not None:  # after the write: an epoch reported is an epoch saved
            run.on_epoch(record)
        if stopped:
            break
    module.load_state_dict(best_state)
    return best


def _save_unfinished(
    path: Path,
    run: _Run,
    stage: _Stage,
    epoch: int,
    best_state: Mapping[str, torch.Tensor],
    resume: Mapping[str, Any],
) -> None:
    """The checkpoint after an epoch: ``state_dict`` is the model as it would stand if training
    stopped here (this stage's best weights), ``resume`` what continuing needs."""
    weights = {
        **run.model.state_dict(),
        **{f"{stage.prefix}.{k}": v for k, v in best_state.items()},
    }
    _write_checkpoint(
        path,
        {
            **run.model._checkpoint_payload(weights),
            "finished": False,
            "stage": stage.number,
            "epoch": epoch,
            "run": run.run_record(),
            "resume": dict(resume),
        },
    )


class _Pass(NamedTuple):
    """A pass over batches: the mean loss, and the first non-finite one (batch from 1), if any."""

    mean: float
    bad_batch: int | None
    bad_loss: float


def _raise_if_bad(p: _Pass, stage: int, epoch: int, split: str) -> None:
    if p.bad_batch is not None or not math.isfinite(p.mean):
        loss = p.bad_loss if p.bad_batch is not None else p.mean
        raise NonFiniteLossError(
            stage=stage, epoch=epoch, batch=p.bad_batch, split=split, loss=loss
        )


class _Watch:
    """The first non-finite loss of a pass, tracked on the loss's device: a CUDA run learns
    of it at the pass's one host sync instead of paying a sync per batch."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device, dtype=torch.float64)
        self.bad = torch.full((), -1, device=device, dtype=torch.int64)  # batch index, -1 none
        self.bad_loss = torch.zeros((), device=device, dtype=torch.float64)

    def add(self, loss: torch.Tensor, i: int, weight: int = 1) -> None:
        loss = loss.detach().double()
        new = ~torch.isfinite(loss) & (self.bad < 0)
        self.bad = torch.where(new, i, self.bad)
        self.bad_loss = torch.where(new, loss, self.bad_loss)
        self.total += loss * weight

    def result(self, count: int, ranks: Ranks) -> _Pass:
        """The pass's mean; distributed, over every rank's batches (a non-finite loss on any
        rank makes it non-finite on all, the batch unknown)."""
        if ranks.group is not None:
            sums = torch.stack([self.total, self.total.new_tensor(float(count))])
            ranks.sum_([sums])
            total, n = sums.tolist()
            return _Pass(total / max(n, 1.0), None, total)
        total, bad, bad_loss = torch.stack(
            [self.total, self.bad.double(), self.bad_loss]
        ).tolist()  # the one sync
        return _Pass(total / max(count, 1), int(bad) + 1 if bad >= 0 else None, bad_loss)


def _grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """GradScaler for fp16 (a no-op when disabled)."""
    return torch.amp.GradScaler(device.type, enabled=enabled)


def _epoch(
    loss_fn: Callable[[WindowBatch], torch.Tensor],
    order: torch.Tensor,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: Any,
    run: _Run,
    desc: str,
) -> _Pass:
    """One pass over (a capped number of) batches of the training windows ``order [n]``;
    returns the mean loss.

    On the CPU a non-finite loss ends the pass before its step (checking is free there); on
    other devices, and distributed (where every rank must take the same steps), the pass runs
    on and reports the first one at its end.
    """
    config, split = run.config, run.train_split
    batches = _capped(_batches(split, order, config.batch_size), config.max_batches_per_epoch)
    n_batches = math.ceil(order.numel() / config.batch_size)
    total = min(n_batches, config.max_batches_per_epoch or n_batches)
    watch = _Watch(run.device)
    count = 0
    bar = progress_bar(batches, total=total, desc=desc, unit="batch", progress=run.progress)
    for i, batch in enumerate(bar):
        with _autocast(run):
            loss = loss_fn(batch)
        watch.add(loss, i)
        count += 1
        if _eager_checks(run) and not bool(torch.isfinite(loss)):
            break  # before the step: the weights stay those of the last good batch
        _step(loss, module, opt, scaler, config.grad_clip)
    return watch.result(count, run.ranks)


def _eager_checks(run: _Run) -> bool:
    """Check each loss as it comes (one CPU process, where it costs no sync), else once per pass."""
    return run.device.type == "cpu" and run.ranks.group is None


def _epoch_order(run: _Run, stage: int, epoch: int) -> torch.Tensor:
    """The training windows of an epoch, in the order this rank visits them ``[n]``: one
    process shuffles all of them with the run's generator; distributed, DistributedSampler
    shuffles them alike on every rank (seeded by the run's seed, the stage and the epoch, so a
    resumed run repeats it) and hands each rank its share (padded to equal counts)."""
    n = len(run.train_split)
    if run.ranks.group is None:
        return torch.randperm(n, generator=run.g)
    windows = cast("Dataset[int]", range(n))  # the sampler only takes len() of it
    sampler: DistributedSampler[int] = DistributedSampler(
        windows,
        num_replicas=run.ranks.world,
        rank=run.ranks.rank,
        shuffle=True,
        seed=run.config.seed + 1000 * stage,
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def _batches(split: ForecastSplit, order: torch.Tensor, batch_size: int) -> Iterator[WindowBatch]:
    """Batches of the windows ``order [n]`` (valid indices by construction: no check, no sync)."""
    order = order.to(split.values.device)
    for lo in range(0, order.numel(), batch_size):
        yield split._gather(order[lo : lo + batch_size])


class _StageLoss(nn.Module):
    """A stage's loss as a module whose only parameters are the trained module's, so that
    DistributedDataParallel averages exactly their gradients (the frozen backbone of stage 2
    and the idle denoiser of stage 1 stay out of it)."""

    def __init__(self, module: nn.Module, loss_fn: Callable[[WindowBatch], torch.Tensor]):
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn  # a closure over the model, not a registered submodule

    def forward(self, batch: WindowBatch) -> torch.Tensor:
        return self.loss_fn(batch)


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


def _val_windows(n: int, config: TrainConfig) -> torch.Tensor:
    """The validation windows a pass scores ``[W]``: all ``n``, or with ``max_val_batches``
    that many batches' worth spread evenly over the split (the same ones every epoch)."""
    if config.max_val_batches is None or config.max_val_batches * config.batch_size >= n:
        return torch.arange(n)
    w = config.max_val_batches * config.batch_size
    return torch.linspace(0, n - 1, w, dtype=torch.float64).round().long()  # [W], distinct


@torch.no_grad()
def _evaluate(
    loss_fn: Callable[[WindowBatch], torch.Tensor],
    split: ForecastSplit,
    run: _Run,
    desc: str,
) -> _Pass:
    """Window-weighted mean of a loss over the validation windows of a split (every window, or
    ``max_val_batches`` batches' worth; distributed: each rank scores its share and the sums
    are added up)."""
    windows = _val_windows(len(split), run.config)  # [W]
    mine = windows[run.ranks.shard(windows.numel())]  # this rank's share
    batch_size = run.config.batch_size
    watch, n = _Watch(run.device), 0
    batches = progress_bar(
        _batches(split, mine, batch_size),
        total=math.ceil(mine.numel() / batch_size),
        desc=desc,
        unit="batch",
        progress=run.progress,
    )
    for i, batch in enumerate(batches):
        with _autocast(run):
            watch.add(loss_fn(batch), i, weight=batch.x.shape[0])
        n += batch.x.shape[0]
    return watch.result(n, run.ranks)


def _autocast(run: _Run) -> torch.autocast:
    dtype = run.amp_dtype
    return torch.autocast(run.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def fit_spread_scale(
    model: ITransformerDiffusion,
    split: ForecastSplit,
    *,
    n_samples: int = 16,
    num_steps: int = 10,
    sampler: str = "dpmpp_2m",
    max_windows: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    group: Any = None,
) -> torch.Tensor:
    """The spread calibration ``[H, N]`` of a trained model, matched on the windows of a split.

    With r = (y - y_det - res_mean) / res_std the normalised residual, true on the windows and
    sampled from the denoiser (before any ``res_scale``)::

        scale[h, n] = sqrt( mean_w r_true[w, h, n]^2 / mean_w mean_s r_sample[s, w, h, n]^2 )

    i.e. the factor that makes the samples' second moment about the point forecast equal to the
    true residuals' on ``split``, per horizon step and variate. A ratio, not a fitted sigma: the
    denoiser's own dependence of the spread on the window (through z) is kept, only its
    contraction is undone. Pass it to :meth:`ITransformerDiffusion.set_residual_scale`.

    Args:
        model: a trained forecaster (both stages).
        split: the windows to match (the training or the validation split; never the test split).
        n_samples: S samples per window (>= 2).
        num_steps: K sampling steps.
        sampler: a name in :data:`diffsample.SAMPLERS`.
        max_windows: score this many evenly spaced windows of ``split``; None: all.
        batch_size: windows per forecast call.
        seed: keys the sampling noise (with each window's index).
        group: as for :func:`~diffsample.forecast.evaluate_split`: under torchrun (or given a
            process group) each rank samples its share of the windows and the sums are added
            up; False: this process alone.

    Returns:
        ``[H, N]`` float32, positive, on the model's device (the same on every rank).
    """
    if not isinstance(model, ITransformerDiffusion):
        raise TypeError(expected("model", "an ITransformerDiffusion", model))
    if not isinstance(split, ForecastSplit):
        raise TypeError(expected("split", "a ForecastSplit (e.g. data.val)", split))
    n_samples = check_int("n_samples", n_samples, minimum=2)
    batch_size = check_int("batch_size", batch_size)
    if max_windows is not None:
        max_windows = check_int("max_windows", max_windows)
    check_num_steps(num_steps, model.config.num_train_steps)
    if len(split) == 0:
        raise ValueError("split: expected at least one window, got an empty split")
    device = next(model.parameters()).device
    ranks = Ranks.resolve(group, device)
    split = split.to(device)
    n = len(split) if max_windows is None else min(max_windows, len(split))
    idx = torch.linspace(0, len(split) - 1, n, device=device).round().long()  # [W]
    idx = idx[ranks.shard(n, device)]  # this rank's share (all of them for one process)
    c = model.config
    true_ms = torch.zeros(c.horizon, c.n_variates, dtype=torch.float64, device=device)
    sample_ms = torch.zeros_like(true_ms)
    batches = forecast_windows(
        model,
        split,
        idx,
        n_samples,
        batch_size=batch_size,
        sampler=sampler,
        num_steps=num_steps,
        seed=seed,
    )
    for b, fc, _ in batches:
        scale = model.res_std * model.res_scale  # [H, N]: undo the scale in use, if any
        r_true = (b.y - fc.point - model.res_mean) / model.res_std  # [B, H, N]
        r = (fc.samples - fc.point - model.res_mean) / scale  # [S, B, H, N]
        true_ms += r_true.double().pow(2).sum(0)
        sample_ms += r.double().pow(2).mean(0).sum(0)
    ranks.sum_([true_ms, sample_ms])
    return (true_ms / sample_ms.clamp_min(1e-12)).sqrt().float()


def _capped(it: Iterator[WindowBatch], cap: int | None) -> Iterator[WindowBatch]:
    for i, batch in enumerate(it):
        if cap is not None and i >= cap:
            return
        yield batch


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).replace("torch.", "") if dtype is not None else None


# ---------------------------------------------------------------------- RNG and resume
def _rank_seed(config: TrainConfig, offset: int, ranks: Ranks) -> int:
    """The seed of one of a run's random streams on a rank (rank 0's is a single process's)."""
    return config.seed + offset + 1000 * ranks.rank


def _seed_global_rng(device: torch.device, seed: int) -> None:
    """Seed the global CPU RNG and, on CUDA, the device's own (not every GPU's)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _rng_states(run: _Run) -> dict[str, torch.Tensor | None]:
    """Every RNG a run draws from, as CPU byte tensors."""
    cuda = run.device.type == "cuda"
    return {
        "batch_order": run.g.get_state(),
        "diffusion": run.g_dev.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(run.device) if cuda else None,
    }


def _restore(run: _Run, saved: Mapping[str, Any]) -> int:
    """Load a checkpoint's weights, RNG states and history into ``run``; returns its stage."""
    run.model.load_state_dict(saved["state_dict"])
    rng = saved["resume"]["rng"]
    if isinstance(rng, list):  # a distributed run's: one per rank
        rng = rng[run.ranks.rank]
    run.g.set_state(rng["batch_order"])
    run.g_dev.set_state(rng["diffusion"])
    torch.set_rng_state(rng["torch"])
    if run.device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], run.device)
    record = saved["run"]
    run.history = [dict(r) for r in record["history"]]
    run.best_point = float(record["best_val_point"])
    run.seconds_before = float(record["seconds"])
    if run.ranks.main:
        log.info("resuming after stage %s epoch %s", saved["stage"], saved["epoch"])
    return int(saved["stage"])


def _resume_state(
    path: Path | None,
    model: ITransformerDiffusion,
    data: ForecastDataset,
    config: TrainConfig,
    ranks: Ranks,
) -> dict[str, Any]:
    """The checkpoint to resume from, checked against the model, the train config, the data
    and the number of processes."""
    if path is None:
        raise ValueError("resume: expected a checkpoint path to resume from, got checkpoint=None")
    if not path.is_file():
        raise ValueError(
            f"resume: expected the checkpoint of an interrupted run, but {path} does not exist "
            "(start the run without resume)"
        )
    saved = _read_checkpoint(path, map_location="cpu")
    record = saved.get("run")
    if not isinstance(record, Mapping) or (
        saved.get("finished") is not True and not isinstance(saved.get("resume"), Mapping)
    ):
        raise ValueError(f"resume: {path} holds no training state to resume (not written by train)")
    _same(path, "model config", saved["config"], model.config)
    _same(path, "train config", record.get("train_config"), config)
    world = record.get("world_size", 1)  # a release before distributed training: one process
    if saved.get("finished") is not True and world != ranks.world:
        raise ValueError(
            f"resume: {path} was trained by {world} process(es); this run has {ranks.world}: "
            "resume with as many (each continues its own random streams)"
        )
    spec = saved.get("data_spec")
    if not isinstance(spec, Mapping):
        raise ValueError(f"resume: {path} records no data spec; cannot check the data")
    try:
        check_data_spec(spec, data)
    except ValueError as exc:
        raise ValueError(f"resume: {path}: {exc}") from None
    return saved


def _same(path: Path, what: str, saved: object, given: Any) -> None:
    """ValueError naming the first field of the config dataclass ``given`` that ``saved`` does
    not match; a field the saved run predates counts as what that run used (``BEFORE_FIELD``,
    else the field's default)."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"resume: {path} records no {what}")
    for field in dataclasses.fields(given):
        name, value = field.name, getattr(given, field.name)
        old = saved.get(name, BEFORE_FIELD.get(name, field.default))
        with contextlib.suppress(TypeError, ValueError):  # as the config reads it (True ->
            old = getattr(dataclasses.replace(given, **{name: old}), name)  # "scale_level")
        if _plain(old) != _plain(value):
            raise ValueError(
                f"resume: {path} was trained with another {what}: {name}={old!r} there, "
                f"{name}={value!r} here (resume with the run's own settings, or start afresh)"
            )


def _plain(v: object) -> object:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


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


def _check_compatible(model: ITransformerDiffusion, data: ForecastDataset) -> None:
    if not isinstance(model, ITransformerDiffusion):
        raise TypeError(expected("model", "an ITransformerDiffusion", model))
    if not isinstance(data, ForecastDataset):
        raise TypeError(expected("data", "a ForecastDataset (load_dataset)", data))
    c = model.config
    want = {
        "lookback": data.lookback,
        "horizon": data.horizon,
        "n_variates": data.n_variates,
        "n_time_features": data.n_marks,
    }
    have = {k: getattr(c, k) for k in want}
    if c.n_time_features == 0:
        want["n_time_features"] = 0  # a model may ignore the time features
    if have != want:
        raise ValueError(f"model, data: the model's config {have} does not match the data {want}")
