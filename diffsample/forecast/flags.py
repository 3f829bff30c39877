"""The ``diffsample`` command's flags, as data: the config field behind each flag, the demo's
settings, the help text. :mod:`diffsample.forecast.parser` builds the parser from them (a
field's type, choices and default read from its dataclass, so every default shown is the
library's); :mod:`diffsample.forecast.cli` turns the parsed flags into the configs.

Flags take Time-Series-Library's names (``--seq_len``, ``--d_model``, ``--learning_rate``, ...),
with ``-`` or ``_`` alike; a config field's table entry is ``(flag, other spellings, help)``.
"""

from __future__ import annotations

from .data import Protocol

__all__ = [
    "COMMANDS",
    "DEMO",
    "DESCRIPTION",
    "MODEL_FLAGS",
    "SAMPLING_FLAGS",
    "TRAIN_FLAGS",
    "TSL_DATA",
]

COMMANDS = ("demo", "train", "evaluate")

# what --help shows above the commands: plain text (the module docstring is the API docs')
DESCRIPTION = """\
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

# Time-Series-Library's --data names -> the split protocol of load_dataset
TSL_DATA: dict[str, Protocol] = {
    "ETTh1": "etth",
    "ETTh2": "etth",
    "ETTm1": "ettm",
    "ETTm2": "ettm",
    "custom": "custom",
}

# config field -> (flag, other spellings, help); type, choices and default come from the field
MODEL_FLAGS: dict[str, tuple[str, tuple[str, ...], str]] = {
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
TRAIN_FLAGS: dict[str, tuple[str, tuple[str, ...], str]] = {
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
# SamplingConfig field -> (flag, other spellings, help); its seed is --seed (train's seeds the
# sampling noise too, TrainConfig.seed; evaluate's is its own)
SAMPLING_FLAGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "n_samples": ("--samples", (), "S, samples per window"),
    "num_steps": ("--steps", (), "K, sampling steps"),
    "sampler": ("--sampler", (), "the sampler"),
    "spacing": (
        "--spacing",
        (),
        "the grid of the sampling steps (logsnr: evenly in log-SNR, down to t = 0; trailing, "
        "before 0.6.0: evenly in t, which narrowed the samples at 10 steps)",
    ),
    "eta": (
        "--eta",
        (),
        "DDIM's eta (0: deterministic, 1: DDPM-like noise), for --sampler ddim; none: the "
        "sampler's default",
    ),
    "clip_x0": ("--clip_x0", (), "clamp each x0 estimate to [-C, C]; none: no clipping"),
    "clip_eps": (
        "--clip_eps",
        (),
        "with --clip_x0, the eps of DDIM's update: the network's (raw) or re-derived from "
        "the clipped x0 (rederive); needed for ddim, no effect on the others",
    ),
    "autocast": (
        "--autocast",
        (),
        "run the denoiser (only) under torch.autocast in bf16 or fp16; the samples and the "
        "update stay float32. On a CPU it runs under CPU autocast",
    ),
    "graph": (
        "--graph",
        (),
        "capture the sampling loop as a CUDA graph and replay it (faster at small batches; "
        "CUDA only: on another device a note and eager sampling) (default: off)",
    ),
    "max_batch": (
        "--max_batch",
        (),
        "rows (samples x windows) per denoiser call at most; none: as the memory budget allows",
    ),
    "memory_budget": (
        "--memory_budget",
        (),
        "memory of one denoiser call's rows: bytes (an integer) or a fraction of the free "
        "device memory (a number in (0, 1]); none: a share of free memory (on a CPU, a "
        "cache-sized working set)",
    ),
}
# the demo: the train command on the synthetic data, sized for about half a minute on a CPU
DEMO = {
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
    "n_samples": 32,
    "num_steps": 10,
    "windows": 256,
    # one thread: a model this small gains little from a second, and on a busy machine an idle
    # OpenMP thread spins (measured: 26 s with one thread, 139 s with two, on a loaded 2-core CPU)
    "threads": 1,
}
