"""Two-stage mixed-precision trainer for ITransformerDiffusion.

Stage 1 trains the iTransformer backbone on the point MSE (Time-Series-Library protocol: Adam,
learning rate halved every epoch, early stopping on validation MSE). Stage 2 freezes it, fixes
the per-variate residual statistics on the training windows, and trains the denoiser on the
diffusion loss (AdamW, early stopping on a validation diffusion loss drawn with fixed noise).
The best weights of each stage are kept, and written atomically when a path is given.

Mixed precision: one code path, ``torch.amp.autocast(device_type, dtype, enabled)`` and a
GradScaler enabled only for fp16. "auto" picks bf16 on GPUs that support it, fp16 on other
GPUs, and full fp32 on CPU.

Dimensions: B windows per batch, L lookback, H horizon, N variates, F time features.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from .._utils import check_choice, check_int, check_number, expected, progress_disabled
from .data import ForecastDataset, ForecastSplit, WindowBatch
from .model import ITransformerDiffusion

__all__ = ["AmpMode", "TrainConfig", "TrainResult", "resolve_amp", "train"]

log = logging.getLogger(__name__)


AmpMode = Literal["auto", "bf16", "fp16", "off"]


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
    diffusion_epochs: int = 20
    diffusion_lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    max_batches_per_epoch: int | None = None  # cap for quick runs; None = every window once
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    amp: AmpMode = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        checked: dict[str, object] = {
            "batch_size": check_int("batch_size", self.batch_size),
            "patience": check_int("patience", self.patience),
            "point_epochs": check_int("point_epochs", self.point_epochs, minimum=0),
            "diffusion_epochs": check_int("diffusion_epochs", self.diffusion_epochs, minimum=0),
            "point_lr": check_number("point_lr", self.point_lr, minimum=0.0, open_min=True),
            "diffusion_lr": check_number(
                "diffusion_lr", self.diffusion_lr, minimum=0.0, open_min=True
            ),
            "point_lr_decay": check_number(
                "point_lr_decay", self.point_lr_decay, minimum=0.0, maximum=1.0, open_min=True
            ),
            "weight_decay": check_number("weight_decay", self.weight_decay, minimum=0.0),
            "amp": check_choice("amp", self.amp, AmpMode),
            "seed": check_int("seed", self.seed, minimum=0),
        }
        if self.max_batches_per_epoch is not None:
            checked["max_batches_per_epoch"] = check_int(
                "max_batches_per_epoch", self.max_batches_per_epoch
            )
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
        history: one record per epoch: stage, epoch, train and validation loss, learning rate.
        best_val_point: the best validation MSE of stage 1 (its weights are the ones kept).
        best_val_diffusion: the best validation diffusion loss of stage 2.
        amp_dtype: "bfloat16", "float16", or None for full precision.
        seconds: wall time of both stages.
    """

    history: tuple[dict[str, float], ...]
    best_val_point: float
    best_val_diffusion: float
    amp_dtype: str | None
    seconds: float


def resolve_amp(amp: AmpMode, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a setting on a device, or None for full precision."""
    check_choice("amp", amp, AmpMode)
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def train(
    model: ITransformerDiffusion,
    data: ForecastDataset,
    config: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train both stages in place and return what happened.

    Args:
        model: the forecaster; its config must match the data (lookback, horizon, variates, F).
        data: a ForecastDataset (``load_dataset``); train for fitting, val for early stopping.
        config: TrainConfig.
        device: default CUDA when available, else CPU.
        checkpoint: write the best model here (atomically) after each stage.
        progress: None or True: progress bars on a terminal; False: none.
        on_epoch: called with each epoch's record, e.g. ``print``.

    Returns:
        A :class:`TrainResult`; the model holds the best weights of each stage, in eval mode.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(expected("config", "a TrainConfig", config))
    _check_compatible(model, data)
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    model.to(device)
    train_split, val_split = data.train.to(device), data.val.to(device)
    amp_dtype = resolve_amp(config.amp, device)
    g = torch.Generator().manual_seed(config.seed)  # batch order
    g_dev = torch.Generator(device=device).manual_seed(config.seed + 1)  # diffusion t and noise
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def record(rec: dict[str, float]) -> None:
        history.append(rec)
        log.info("epoch %s", rec)
        if on_epoch is not None:
            on_epoch(rec)

    def fit(
        stage: int,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        loss_fn: Callable[[WindowBatch], torch.Tensor],
        val_fn: Callable[[], Callable[[WindowBatch], torch.Tensor]],
        epochs: int,
        lr_decay: float,
        names: tuple[str, str],
    ) -> float:
        """Train ``module`` for up to ``epochs`` with early stopping; keep and restore its best weights."""
        best, best_state, stale = math.inf, copy.deepcopy(module.state_dict()), 0
        scaler = _grad_scaler(device, enabled=amp_dtype == torch.float16)
        for epoch in range(epochs):
            module.train()
            loss = _epoch(
                loss_fn,
                module,
                opt,
                scaler,
                train_split,
                config,
                g,
                amp_dtype,
                device,
                progress,
                f"stage {stage} epoch {epoch + 1}/{epochs}",
            )
            module.eval()
            val = _evaluate(val_fn(), val_split, config.batch_size, amp_dtype, device)
            record(
                {
                    "stage": stage,
                    "epoch": epoch + 1,
                    names[0]: loss,
                    names[1]: val,
                    "lr": opt.param_groups[0]["lr"],
                }
            )
            if val < best:
                best, best_state, stale = val, copy.deepcopy(module.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
            for group in opt.param_groups:
                group["lr"] *= lr_decay
        module.load_state_dict(best_state)
        return best

    # stage 1: the point forecast
    def point(b: WindowBatch) -> torch.Tensor:
        return model.point_loss(b.x, b.y, b.x_mark)

    opt = torch.optim.Adam(
        model.backbone.parameters(), lr=config.point_lr, weight_decay=config.weight_decay
    )
    best_point = fit(
        1,
        model.backbone,
        opt,
        point,
        lambda: point,
        config.point_epochs,
        config.point_lr_decay,
        ("train_point_mse", "val_point_mse"),
    )
    model.backbone.requires_grad_(False).eval()

    # stage 2: the residual diffusion, on statistics fixed from the training windows
    model.set_residual_stats(*_residual_stats(model, train_split, config.batch_size, device))
    if checkpoint is not None and config.point_epochs:
        model.save(checkpoint)

    def diffusion_val() -> Callable[[WindowBatch], torch.Tensor]:  # the same t, noise each pass
        g_val = torch.Generator(device=device).manual_seed(config.seed + 2)
        return lambda b: model.diffusion_loss(b.x, b.y, b.x_mark, generator=g_val)

    opt = torch.optim.AdamW(
        model.denoiser.parameters(), lr=config.diffusion_lr, weight_decay=config.weight_decay
    )
    best_diff = fit(
        2,
        model.denoiser,
        opt,
        lambda b: model.diffusion_loss(b.x, b.y, b.x_mark, generator=g_dev),
        diffusion_val,
        config.diffusion_epochs,
        1.0,
        ("train_diffusion_loss", "val_diffusion_loss"),
    )
    model.backbone.requires_grad_(True)
    model.eval()
    if checkpoint is not None:
        model.save(checkpoint)
    return TrainResult(
        tuple(history),
        best_point,
        best_diff,
        str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        time.perf_counter() - t0,
    )


def _grad_scaler(device: torch.device, enabled: bool) -> Any:
    """GradScaler for fp16 (a no-op when disabled); torch < 2.3 only has the CUDA one."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # pragma: no cover - torch 2.2


def _epoch(
    loss_fn: Callable[[WindowBatch], torch.Tensor],
    module: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: Any,
    split: ForecastSplit,
    config: TrainConfig,
    generator: torch.Generator,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    progress: bool | None,
    desc: str,
) -> float:
    """One pass over (a capped number of) shuffled training batches; returns the mean loss."""
    batches = _capped(
        split.batches(config.batch_size, shuffle=True, generator=generator),
        config.max_batches_per_epoch,
    )
    n_batches = math.ceil(len(split) / config.batch_size)
    total = min(n_batches, config.max_batches_per_epoch or n_batches)
    total_loss = torch.zeros((), device=device)
    count = 0
    bar = tqdm(batches, total=total, desc=desc, leave=False, disable=progress_disabled(progress))
    for batch in bar:
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
        scaler.step(opt)
        scaler.update()
        total_loss += loss.detach()
        count += 1
    return float(total_loss) / max(count, 1)  # one sync per epoch


@torch.no_grad()
def _evaluate(
    loss_fn: Callable[[WindowBatch], torch.Tensor],
    split: ForecastSplit,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    device: torch.device,
) -> float:
    """Window-weighted mean of a loss over every window of a split."""
    total, n = torch.zeros((), device=device, dtype=torch.float64), 0
    for batch in split.batches(batch_size):
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            total += loss_fn(batch).double() * batch.x.shape[0]
        n += batch.x.shape[0]
    return float(total) / n


@torch.no_grad()
def _residual_stats(
    model: ITransformerDiffusion, split: ForecastSplit, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-variate mean and std ``[N]`` of y - y_det over every training window (float64 sums)."""
    N = model.config.n_variates
    s1 = torch.zeros(N, dtype=torch.float64, device=device)
    s2 = torch.zeros(N, dtype=torch.float64, device=device)
    n = 0
    for batch in split.batches(batch_size):
        y_det, _ = model(batch.x, batch.x_mark)
        r = (batch.y - y_det).double().reshape(-1, N)  # [B * H, N]
        s1 += r.sum(0)
        s2 += (r * r).sum(0)
        n += r.shape[0]
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def _capped(it: Iterator[WindowBatch], cap: int | None) -> Iterator[WindowBatch]:
    for i, batch in enumerate(it):
        if cap is not None and i >= cap:
            return
        yield batch


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
