"""The ``diffsample`` command: demo, train, evaluate.

    diffsample demo                                   # synthetic data, ~1-2 minutes on a laptop CPU
    diffsample train --data ETTh1 --out runs/etth1    # ETT CSV from $DIFFSAMPLE_ETT_DIR, a path, or --download
    diffsample evaluate runs/etth1/model.pt --data ETTh1 --samples 100 --steps 50

Only this module parses arguments; the library takes frozen configs and keyword arguments.
Results are written atomically as JSON next to the checkpoint (or where --out says).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._utils import atomic_write, check_int
from ..metrics import ForecastMetrics
from .data import ForecastDataset, ForecastSplit, load_dataset
from .model import ForecastConfig, ITransformerDiffusion
from .training import TrainConfig, train

__all__ = ["evaluate_split", "main"]


def evaluate_split(
    model: ITransformerDiffusion,
    split: ForecastSplit,
    *,
    n_samples: int = 100,
    num_steps: int = 50,
    sampler: str = "ddim",
    batch_size: int = 256,
    max_windows: int | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool | None = None,
) -> dict[str, float]:
    """Score a split window by window batch, streaming: samples are never all kept.

    Windows keep their split index as noise key, so the result does not depend on batch_size.
    Returns the metrics of :class:`diffsample.metrics.ForecastMetrics` for the samples, plus
    ``point_mse`` / ``point_mae`` of the backbone's point forecast and the sampling time.
    """
    device = device or next(model.parameters()).device
    split = split.to(device)
    n = (
        len(split)
        if max_windows is None
        else min(check_int("max_windows", max_windows), len(split))
    )
    metrics = ForecastMetrics()
    sq = ab = torch.zeros((), dtype=torch.float64, device=device)
    count, seconds = 0, 0.0
    model.eval()
    for lo in range(0, n, batch_size):
        b = split.windows(torch.arange(lo, min(lo + batch_size, n)))
        t0 = time.perf_counter()
        samples, y_det = model.forecast(
            b.x,
            n_samples,
            time_features=b.x_mark,
            sampler=sampler,
            num_steps=num_steps,
            seed=seed,
            window_ids=b.index,
            progress=progress,
            return_point=True,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        metrics.update(samples, b.y)
        err = (y_det - b.y).double()
        sq, ab, count = sq + (err**2).sum(), ab + err.abs().sum(), count + err.numel()
    out = {k: float(v) for k, v in metrics.compute().items()}
    out.update(
        point_mse=float(sq) / count,
        point_mae=float(ab) / count,
        windows=n,
        samples=n_samples,
        steps=num_steps,
        sampler=sampler,
        sampling_seconds=round(seconds, 3),
    )
    return out


# ---------------------------------------------------------------------------------------- commands
def _demo(a: argparse.Namespace) -> dict[str, Any]:
    data = load_dataset(None, lookback=a.lookback, horizon=a.horizon)
    config = ForecastConfig(
        lookback=a.lookback,
        horizon=a.horizon,
        n_variates=data.n_variates,
        n_time_features=data.n_marks,
        d_model=64,
        d_ff=64,
        n_heads=4,
        denoiser_width=64,
    )
    tc = TrainConfig(
        point_epochs=a.epochs,
        point_lr=1e-3,
        diffusion_epochs=2 * a.epochs,
        diffusion_lr=2e-3,
        max_batches_per_epoch=a.batches_per_epoch,
        seed=a.seed,
    )
    return _train_and_report(a, data, config, tc, windows=a.windows)


def _train(a: argparse.Namespace) -> dict[str, Any]:
    data = load_dataset(a.data, lookback=a.lookback, horizon=a.horizon, download=a.download)
    config = ForecastConfig(
        lookback=a.lookback,
        horizon=a.horizon,
        n_variates=data.n_variates,
        n_time_features=data.n_marks,
        d_model=a.d_model,
        d_ff=a.d_model,
        denoiser=a.denoiser,
        prediction=a.prediction,
    )
    tc = TrainConfig(
        point_epochs=a.epochs,
        diffusion_epochs=a.diffusion_epochs,
        batch_size=a.batch_size,
        max_batches_per_epoch=a.batches_per_epoch,
        amp=a.amp,
        seed=a.seed,
    )
    return _train_and_report(a, data, config, tc, windows=a.windows)


def _train_and_report(
    a: argparse.Namespace,
    data: ForecastDataset,
    config: ForecastConfig,
    tc: TrainConfig,
    *,
    windows: int | None,
) -> dict[str, Any]:
    torch.manual_seed(a.seed)
    device = _device(a.device)
    out_dir = Path(a.out)
    model = ITransformerDiffusion(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"data: {data.source} | train/val/test windows {len(data.train)}/{len(data.val)}/{len(data.test)} | "
        f"model: {n_params / 1e6:.2f}M parameters ({config.denoiser} denoiser) | device: {device}"
    )
    result = train(
        model,
        data,
        tc,
        device=device,
        checkpoint=out_dir / "model.pt",
        progress=a.progress,
        on_epoch=lambda r: print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in r.items())),
    )
    print(f"trained in {result.seconds:.1f} s; checkpoint {out_dir / 'model.pt'}")
    scores = evaluate_split(
        model,
        data.test,
        n_samples=a.samples,
        num_steps=a.steps,
        sampler=a.sampler,
        max_windows=windows,
        seed=a.seed,
        device=device,
        progress=a.progress,
    )
    report = {
        "data": data.source,
        "config": dataclasses.asdict(config),
        "train": dataclasses.asdict(tc),
        "history": list(result.history),
        "test": scores,
    }
    _print_scores(scores)
    _write_json(report, out_dir / "results.json")
    print(f"results: {out_dir / 'results.json'}")
    return report


def _evaluate(a: argparse.Namespace) -> dict[str, Any]:
    device = _device(a.device)
    model = ITransformerDiffusion.load(a.checkpoint, map_location=device)
    c = model.config
    data = load_dataset(a.data, lookback=c.lookback, horizon=c.horizon, download=a.download)
    scores = evaluate_split(
        model,
        getattr(data, a.split),
        n_samples=a.samples,
        num_steps=a.steps,
        sampler=a.sampler,
        batch_size=a.batch_size,
        max_windows=a.windows,
        seed=a.seed,
        device=device,
        progress=a.progress,
    )
    _print_scores(scores)
    out = Path(a.out) if a.out else Path(a.checkpoint).with_name(f"eval_{a.split}.json")
    _write_json(
        {"checkpoint": str(a.checkpoint), "data": data.source, "split": a.split, "scores": scores},
        out,
    )
    print(f"results: {out}")
    return scores


# ---------------------------------------------------------------------------------------- helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_scores(s: dict[str, Any]) -> None:
    print(
        f"test set: {s['windows']} windows x {s['samples']} samples, {s['sampler']} {s['steps']} steps, "
        f"sampled in {s['sampling_seconds']:.2f} s (scaled units)"
    )
    print(f"  point forecast (iTransformer)  mse {s['point_mse']:.4f}  mae {s['point_mae']:.4f}")
    print(f"  mean of the samples            mse {s['mse_mean']:.4f}  mae {s['mae_mean']:.4f}")
    print(f"  median of the samples          mse {s['mse_median']:.4f}  mae {s['mae_median']:.4f}")
    print(
        f"  CRPS {s['crps']:.4f} | quantile CRPS {s['quantile_crps']:.4f} | CRPS-sum {s['quantile_crps_sum']:.4f}"
    )
    for level in (50, 90):
        print(
            f"  {level}% central interval: coverage {s[f'coverage_{level}']:.3f} (nominal {level / 100:.2f}), "
            f"width {s[f'width_{level}']:.3f}"
        )


def _write_json(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffsample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(
        q: argparse.ArgumentParser, *, samples: int, steps: int, windows: int | None
    ) -> None:
        q.add_argument(
            "--samples", type=int, default=samples, help="samples per window (default %(default)s)"
        )
        q.add_argument(
            "--steps", type=int, default=steps, help="sampling steps (default %(default)s)"
        )
        q.add_argument("--sampler", choices=["ddim", "ddpm", "dpmpp_2m"], default="ddim")
        q.add_argument(
            "--windows", type=int, default=windows, help="score only the first N test windows"
        )
        q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--no-progress", dest="progress", action="store_false", default=None)

    d = sub.add_parser(
        "demo", help="train a small model on the built-in synthetic data and score it"
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--lookback", type=int, default=96)
    d.add_argument("--horizon", type=int, default=96)
    d.add_argument("--epochs", type=int, default=4)
    d.add_argument("--batches-per-epoch", type=int, default=100)
    common(d, samples=32, steps=20, windows=128)
    d.set_defaults(run=_demo)

    t = sub.add_parser(
        "train", help="train on a CSV (ETT protocol or 70/10/20) or the synthetic data"
    )
    t.add_argument(
        "--data",
        default=None,
        help="ETTh1 | ETTh2 | ETTm1 | ETTm2 | a CSV path | synthetic (default)",
    )
    t.add_argument(
        "--download", action="store_true", help="fetch a named ETT file into the cache if missing"
    )
    t.add_argument("--out", required=True)
    t.add_argument("--lookback", type=int, default=96)
    t.add_argument("--horizon", type=int, default=96)
    t.add_argument("--d-model", type=int, default=128)
    t.add_argument("--denoiser", choices=["token", "unet"], default="token")
    t.add_argument("--prediction", choices=["eps", "x0", "v"], default="v")
    t.add_argument("--epochs", type=int, default=10, help="stage 1 (point forecast) epochs")
    t.add_argument("--diffusion-epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--batches-per-epoch", type=int, default=None)
    t.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    common(t, samples=100, steps=50, windows=None)
    t.set_defaults(run=_train)

    e = sub.add_parser("evaluate", help="score a saved model on a split")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None)
    e.add_argument("--download", action="store_true")
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--batch-size", type=int, default=256, help="windows per forecast call")
    e.add_argument("--out", default=None)
    common(e, samples=100, steps=50, windows=None)
    e.set_defaults(run=_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, ConnectionError) as exc:
        print(f"diffsample {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
