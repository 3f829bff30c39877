"""The reference forecaster on ETTh1 through the Python API, start to finish: load the data,
build and train ITransformerDiffusion, forecast a few windows, score the test split, and draw
a fan chart.

Dimensions: S samples, B windows, W windows scored, L lookback, H horizon, N variates.

The defaults are a real run (the reference configuration, 100 samples x 10 DPM-Solver++(2M) steps on the
whole test set: minutes on a GPU, a quarter of an hour or more on a 2-core CPU); CI runs it tiny::

    python examples/etth1_forecaster.py --data path/to/ETTh1.csv --out runs/etth1_api
    python examples/etth1_forecaster.py --data path/to/ETTh1.csv --out /tmp/x \\
        --epochs 1 --diffusion-epochs 1 --batches-per-epoch 2 --val-batches 2 --windows 8 \\
        --samples 8 --steps 5 --d-model 16 --denoiser-width 16

It prints one line per stage and per epoch (losses, learning rate, seconds); training passes
longer than half a minute also report their progress on stderr, on a terminal as a bar and
in a log file as a line every 30 s (``--quiet``: neither).

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
    evaluate_split,
    load_dataset,
    train,
)
from diffsample.forecast.report import fan_chart, have_matplotlib, spread_windows


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


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="ETTh1", help="ETTh1 or the CSV's path")
    p.add_argument("--download", action="store_true", help="fetch ETTh1 if it is not found")
    p.add_argument("--out", default="runs/etth1_api", help="folder for model.pt and the chart")
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
    p.add_argument("--windows", type=int, default=None, help="test windows (default: all)")
    p.add_argument("--samples", type=int, default=100, help="S, samples per window")
    p.add_argument("--steps", type=int, default=10, help="K, DPM-Solver++(2M) steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    a = p.parse_args()
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

    # 4. forecast a few test windows: samples [S, B, H, N] and the point forecast [B, H, N]
    n = len(data.test) if a.windows is None else min(a.windows, len(data.test))
    ids = spread_windows(n)
    batch = data.test.to(a.device).windows(ids)
    fc = model.forecast(
        batch.x,
        a.samples,
        time_features=batch.x_mark,
        num_steps=a.steps,
        window_ids=batch.index,  # the noise keys: the same samples as in evaluate_split below
    )
    print(f"forecast: samples {tuple(fc.samples.shape)}, point {tuple(fc.point.shape)}")

    # 5. score the test split, streaming (all samples are never held at once)
    ev = evaluate_split(
        model,
        data.test,
        n_samples=a.samples,
        num_steps=a.steps,
        max_windows=a.windows,
        progress=progress,
    )
    m = ev.metrics
    print(
        f"test: {ev.windows} windows x {ev.samples} samples in {ev.seconds:.1f} s | point MSE "
        f"{m['point_mse']:.4f} MAE {m['point_mae']:.4f} | CRPS {m['crps']:.4f} | coverage "
        f"50% {m['coverage_50']:.3f} 90% {m['coverage_90']:.3f}"
    )
    first, last = ev.per_step["crps"][0], ev.per_step["crps"][-1]
    print(f"CRPS by horizon step: {first:.4f} at step 1, {last:.4f} at step {data.horizon}")

    # 6. a fan chart of the target variate (OT), in the CSV's units
    if have_matplotlib():
        inv = data.scaler.inverse_transform
        chart = fan_chart(
            out / "fan_chart.png",
            inv(fc.samples),
            inv(batch.y),
            history=inv(batch.x),
            window_ids=ids,
            variate_name=data.columns[-1],
            title=f"ETTh1 test windows: {a.samples} samples, DPM-Solver++(2M) {a.steps} steps",
        )
        print(f"fan chart: {chart}")
    else:
        print("no fan chart: matplotlib is not installed (pip install 'diffsample[plot]')")


if __name__ == "__main__":
    main()
