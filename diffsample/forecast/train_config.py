"""What ``train`` takes, returns and raises: its settings (:class:`TrainConfig`, a frozen dataclass
checked at construction) and what they resolve to on a machine (the autocast dtype of the AMP
setting, the device and process group), its result (:class:`TrainResult`) and its error
(:class:`NonFiniteLossError`).

``train`` is :mod:`diffsample.forecast.training`'s (which re-exports these names). The command
derives its training flags from TrainConfig's fields (:mod:`diffsample.forecast.flags`), and a
checkpoint records it, so that a resumed run is checked against it
(:mod:`diffsample.forecast.checkpoint`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch

from .._utils import check_choice, check_int, check_number
from ..distributed import Ranks, local_device

__all__ = [
    "AmpMode",
    "Calibration",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "autocast",
    "dtype_name",
    "grad_scaler",
    "placement",
    "resolve_amp",
]

AmpMode = Literal["auto", "bf16", "fp16", "off"]
# what the spread calibration after stage 2 matches (diffsample.forecast.calibration)
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
    as it was (unfinished, so ``ITransformerDiffusion.load`` refuses it by default). The model
    in memory is left with the best weights so far of the stage that failed (those of that
    checkpoint), not with the failed epoch's.

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


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s kind, or disabled for None (full precision)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """GradScaler for fp16 (a no-op when disabled)."""
    return torch.amp.GradScaler(device.type, enabled=enabled)


def dtype_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).replace("torch.", "") if dtype is not None else None


def placement(device: str | torch.device | None, group: Any) -> tuple[torch.device, Ranks]:
    """The device to train on (default CUDA when available, else CPU) and the ranks of
    ``group``; distributed on CUDA, the device gets its index (DDP wants the GPU's index)."""
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    ranks = Ranks.resolve(group, device)
    if ranks.group is not None and device.type == "cuda":
        device = local_device(device)
        device = (
            device
            if device.index is not None
            else torch.device("cuda", torch.cuda.current_device())
        )
    return device, ranks
