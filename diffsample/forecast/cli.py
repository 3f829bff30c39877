"""The ``diffsample`` command: demo, train, evaluate.

    diffsample demo                                   # synthetic data, ~1-2 minutes on a laptop CPU
    diffsample train --data ETTh1 --out runs/etth1    # ETT CSV from $DIFFSAMPLE_ETT_DIR, a path, or --download
    diffsample evaluate runs/etth1/model.pt --data ETTh1 --samples 100 --steps 50

Only this module parses arguments; the library takes frozen configs and keyword arguments, and
the choices and defaults offered here are read from the library (its Literal types, its
sampler registry, its config defaults). Results are written atomically as JSON next to the
checkpoint (or where --out says). A bad argument ends the command with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

from .._utils import atomic_write, choices_of, expected
from ..prediction import Prediction
from ..samplers import SAMPLERS
from .data import ForecastDataset, load_dataset
from .evaluation import Evaluation, evaluate_split
from .model import DenoiserName, ForecastConfig, ITransformerDiffusion, ScheduleName
from .training import AmpMode, TrainConfig, train

__all__ = ["main"]

# what a user can get wrong: bad values and types, missing or unreadable files, no network
_USER_ERRORS = (ValueError, TypeError, OSError)
_SPLITS = ("test", "val", "train")  # the ForecastDataset attributes a checkpoint can be scored on


# ---------------------------------------------------------------------------------------- commands
def _demo(a: argparse.Namespace) -> dict[str, Any]:
    data = load_dataset(None, lookback=a.lookback, horizon=a.horizon)
    config = ForecastConfig(  # small enough for a laptop CPU in a minute or two
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
    return _train_and_report(a, data, config, tc)


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
        schedule=a.schedule,
    )
    tc = TrainConfig(
        point_epochs=a.epochs,
        diffusion_epochs=a.diffusion_epochs,
        batch_size=a.batch_size,
        max_batches_per_epoch=a.batches_per_epoch,
        amp=a.amp,
        seed=a.seed,
    )
    return _train_and_report(a, data, config, tc)


def _train_and_report(
    a: argparse.Namespace, data: ForecastDataset, config: ForecastConfig, tc: TrainConfig
) -> dict[str, Any]:
    device = _device(a.device)
    torch.manual_seed(a.seed)  # the weight initialisation (the library never seeds globally)
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
    ev = evaluate_split(
        model,
        data.test,
        n_samples=a.samples,
        num_steps=a.steps,
        sampler=a.sampler,
        max_windows=a.windows,
        seed=a.seed,
        progress=a.progress,
    )
    report = {
        "data": data.source,
        "config": dataclasses.asdict(config),
        "train": dataclasses.asdict(tc),
        "history": list(result.history),
        "test": ev.as_dict(),
    }
    _print_scores(ev, "test")
    _write_json(report, out_dir / "results.json")
    print(f"results: {out_dir / 'results.json'}")
    return report


def _evaluate(a: argparse.Namespace) -> dict[str, Any]:
    device = _device(a.device)
    model = ITransformerDiffusion.load(a.checkpoint, map_location=device)
    c = model.config
    data = load_dataset(a.data, lookback=c.lookback, horizon=c.horizon, download=a.download)
    ev = evaluate_split(
        model,
        getattr(data, a.split),
        n_samples=a.samples,
        num_steps=a.steps,
        sampler=a.sampler,
        batch_size=a.batch_size,
        max_windows=a.windows,
        seed=a.seed,
        progress=a.progress,
    )
    _print_scores(ev, a.split)
    out = Path(a.out) if a.out else Path(a.checkpoint).with_name(f"eval_{a.split}.json")
    report = {
        "checkpoint": str(a.checkpoint),
        "data": data.source,
        "split": a.split,
        "scores": ev.as_dict(),
    }
    _write_json(report, out)
    print(f"results: {out}")
    return report


# ---------------------------------------------------------------------------------------- helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(expected("--device", "auto, cpu, cuda, cuda:1, ...", name)) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: expected a device this machine has, got {name!r} (no CUDA)")
    return device


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_scores(ev: Evaluation, split: str) -> None:
    m = ev.metrics
    print(
        f"{split} set: {ev.windows} windows x {ev.samples} samples, {ev.sampler} {ev.steps} steps, "
        f"sampled in {ev.seconds:.2f} s (scaled units)"
    )
    print(f"  point forecast (iTransformer)  mse {m['point_mse']:.4f}  mae {m['point_mae']:.4f}")
    print(f"  mean of the samples            mse {m['mse_mean']:.4f}  mae {m['mae_mean']:.4f}")
    print(f"  median of the samples          mse {m['mse_median']:.4f}  mae {m['mae_median']:.4f}")
    print(
        f"  CRPS {m['crps']:.4f} | quantile CRPS {m['quantile_crps']:.4f} | CRPS-sum {m['quantile_crps_sum']:.4f}"
    )
    for level in (50, 90):
        print(
            f"  {level}% central interval: coverage {m[f'coverage_{level}']:.3f} (nominal {level / 100:.2f}), "
            f"width {m[f'width_{level}']:.3f}"
        )


def _write_json(obj: Any, path: Path) -> None:
    def write(f: IO[bytes]) -> None:
        f.write(json.dumps(obj, indent=2, default=str).encode())

    atomic_write(path, write)


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
        q.add_argument("--sampler", choices=choices_of(SAMPLERS), default="ddim")
        q.add_argument(
            "--windows", type=int, default=windows, help="score only the first N windows"
        )
        q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
        q.add_argument("--seed", type=int, default=TrainConfig.seed)
        q.add_argument("--no-progress", dest="progress", action="store_false", default=None)

    def window_lengths(q: argparse.ArgumentParser) -> None:
        q.add_argument("--lookback", type=int, default=ForecastConfig.lookback)
        q.add_argument("--horizon", type=int, default=ForecastConfig.horizon)

    d = sub.add_parser(
        "demo", help="train a small model on the built-in synthetic data and score it"
    )
    d.add_argument("--out", default="runs/demo")
    window_lengths(d)
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
    window_lengths(t)
    t.add_argument("--d-model", type=int, default=ForecastConfig.d_model)
    t.add_argument("--denoiser", choices=choices_of(DenoiserName), default=ForecastConfig.denoiser)
    t.add_argument(
        "--prediction", choices=choices_of(Prediction), default=ForecastConfig.prediction
    )
    t.add_argument("--schedule", choices=choices_of(ScheduleName), default=ForecastConfig.schedule)
    t.add_argument(
        "--epochs",
        type=int,
        default=TrainConfig.point_epochs,
        help="stage 1 (point forecast) epochs",
    )
    t.add_argument("--diffusion-epochs", type=int, default=TrainConfig.diffusion_epochs)
    t.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    t.add_argument("--batches-per-epoch", type=int, default=TrainConfig.max_batches_per_epoch)
    t.add_argument("--amp", choices=choices_of(AmpMode), default=TrainConfig.amp)
    common(t, samples=100, steps=50, windows=None)
    t.set_defaults(run=_train)

    e = sub.add_parser("evaluate", help="score a saved model on a split")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None)
    e.add_argument("--download", action="store_true")
    e.add_argument("--split", choices=_SPLITS, default="test")
    e.add_argument("--batch-size", type=int, default=256, help="windows per forecast call")
    e.add_argument("--out", default=None)
    common(e, samples=100, steps=50, windows=None)
    e.set_defaults(run=_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except _USER_ERRORS as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"diffsample {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
