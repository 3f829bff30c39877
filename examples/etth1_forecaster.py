"""The reference forecaster on ETTh1 through the Python API, start to finish: load the data,
build and train ITransformerDiffusion, forecast a few windows, then score the test split
beside the baselines it must beat and write what ``diffsample train`` writes (results.json, a
per-step CSV, a fan chart) with the command's own pipeline, ``diffsample.forecast.run.score``.

Dimensions: S samples, B windows, W windows scored, L lookback, H horizon, N variates.

The defaults are a real run (the reference configuration, 100 samples x 10 DPM-Solver++(2M) steps on the
whole test set: minutes on a GPU, a quarter of an hour or more on a 2-core CPU); CI runs it tiny::

    python examples/etth1_forecaster.py --data path/to/ETTh1.csv --out runs/etth1_api
    python examples/etth1_forecaster.py --data path/to/ETTh1.csv --out /tmp/x \\
        --epochs 1 --diffusion-epochs 1 --batches-per-epoch 2 --val-batches 2 --windows 8 \\
        --samples 8 --steps 5 --d-model 16 --denoiser-width 16

It prints one line per stage and per epoch (losses, learning rate, seconds), then the
command's lines for the scoring; training passes longer than half a minute also report their
progress on stderr, on a terminal as a bar and in a log file as a line every 30 s
(``--quiet``: neither).

``--data ETTh1`` (the default) finds the file in $DIFFSAMPLE_ETT_DIR or the download cache;
``--download`` fetches it there.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffsample.forecast import (
    ForecastConfig,
    ITransformerDiffusion,
    TrainConfig,
    load_dataset,
    train,
)
from diffsample.forecast.report import spread_windows
from diffsample.forecast.run import Scoring, score


def epoch_printer(config: TrainConfig) -> Callable[[dict[str, float]], None]:
    """``on_epoch`` for train: one readable line per epoch (the record is a dict of floats)."""
    epochs = {1: config.point_epochs, 2: config.diffusion_epochs}
    last = [time.perf_counter()]

    def show(r: dict[str, float]) -> None:
        now, stage = time.perf_counter(), int(r["stage"])
        if stage == 1:  # the point forecast's MSE, on the scaled (standardised) data
            losses = f"MSE train {r['train_point_mse']:.4f}, validation {r['val_point_mse']:.4f}"
        else:  # the denoiser's MSE against its target (eps, x0 or v) on normalised residuals
            losses = (
                f"denoising loss train {r['train_diffusion_loss']:.4f}, "
                f"validation {r['val_diffusion_loss']:.4f}"
            )
        print(
            f"stage {stage} epoch {int(r['epoch'])}/{epochs[stage]}: {losses}, "
            f"lr {r['lr']:.2e}, {now - last[0]:.1f} s",
            flush=True,
        )
        last[0] = now

    return show


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="ETTh1", help="ETTh1 or the CSV's path")
    p.add_argument("--download", action="store_true", help="fetch ETTh1 if it is not found")
    p.add_argument("--out", default="runs/etth1_api", help="folder for model.pt and the results")
    p.add_argument("--d-model", type=int, default=ForecastConfig.d_model, help="backbone width")
    p.add_argument(
        "--denoiser-width", type=int, default=ForecastConfig.denoiser_width, help="denoiser width"
    )
    p.add_argument("--epochs", type=int, default=TrainConfig.point_epochs, help="stage 1 epochs")
    p.add_argument("--diffusion-epochs", type=int, default=TrainConfig.diffusion_epochs)
    p.add_argument("--batches-per-epoch", type=int, default=None, help="default: all")
    p.add_argument(
        "--val-batches", type=int, default=None, help="validation batches per epoch (default: all)"
    )
    p.add_argument(
        "--windows", type=int, default=None, help="test windows, spread evenly (default: all)"
    )
    p.add_argument("--samples", type=int, default=100, help="S, samples per window")
    p.add_argument("--steps", type=int, default=10, help="K, DPM-Solver++(2M) steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    return p.parse_args()


def main() -> None:
    a = arguments()
    out = Path(a.out)

    # 1. data: the Time-Series-Library splits of ETTh1, scaled with train statistics
    data = load_dataset(a.data, lookback=96, horizon=96, download=a.download)
    print(
        f"{Path(data.source).name}: {data.n_variates} variates {', '.join(data.columns)}; "
        f"windows train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}"
    )

    # 2. model: iTransformer point forecast + a diffusion model of its residuals
    torch.manual_seed(0)
    model = ITransformerDiffusion(
        ForecastConfig(
            lookback=data.lookback,
            horizon=data.horizon,
            n_variates=data.n_variates,
            n_time_features=data.n_marks,
            d_model=a.d_model,
            d_ff=a.d_model,
            denoiser_width=a.denoiser_width,
        )
    )
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")

    # 3. training: stage 1 the backbone, stage 2 the denoiser; a checkpoint after every epoch
    config = TrainConfig(
        point_epochs=a.epochs,
        diffusion_epochs=a.diffusion_epochs,
        max_batches_per_epoch=a.batches_per_epoch,
        max_val_batches=a.val_batches,
    )
    print(
        f"training: stage 1 (point forecast, MSE) up to {config.point_epochs} epochs, stage 2 "
        f"(denoiser) up to {config.diffusion_epochs}; losses in scaled units",
        flush=True,
    )
    progress = None if a.quiet else True  # True: progress lines off a terminal too
    result = train(
        model,
        data,
        config,
        device=a.device,
        checkpoint=out / "model.pt",
        progress=progress,
        on_epoch=epoch_printer(config),
    )
    print(
        f"trained in {result.seconds:.1f} s: best validation MSE {result.best_val_point:.4f}, "
        f"best validation denoising loss {result.best_val_diffusion:.4f}"
    )

    # 4. forecast three test windows: samples [S, B, H, N] and the point forecast [B, H, N]
    batch = data.test.to(a.device).windows(spread_windows(len(data.test), 3))
    fc = model.forecast(
        batch.x,
        a.samples,
        time_features=batch.x_mark,
        num_steps=a.steps,
        window_ids=batch.index,  # the noise keys: a window draws the same samples in any call
    )
    print(f"forecast: samples {tuple(fc.samples.shape)}, point {tuple(fc.point.shape)}")

    # 5. score the test split (streaming: all samples are never held at once) beside the same
    # backbone's baselines (Gaussian residuals with train- or validation-fitted sigma,
    # bootstrapped training residuals), then write results.json, a per-step CSV and a fan
    # chart of the target variate (OT) in the CSV's units: what `diffsample train` does
    scored = score(
        model,
        data,
        "test",
        scoring=Scoring(n_samples=a.samples, num_steps=a.steps, windows=a.windows),
        results=out / "results.json",
        command="examples/etth1_forecaster.py",
        progress=progress,
        say=print,  # the command's lines: the scores, the baselines, each file written
    )
    crps = scored.evaluation.per_step["crps"]  # one value per horizon step
    print(f"CRPS by horizon step: {crps[0]:.4f} at step 1, {crps[-1]:.4f} at step {data.horizon}")


if __name__ == "__main__":
    main()
