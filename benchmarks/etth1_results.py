"""The forecaster's results table on one dataset: the diffusion head beside its baselines.

For each seed: train with the library's defaults (``ForecastConfig()`` sized to the data,
``TrainConfig(seed=seed)``: what ``diffsample train --data X`` does), then score every test
window with the command's own pipeline (:func:`evaluate_split` for the head,
:func:`evaluate_baselines` for the same backbone with Gaussian residuals of train- or
validation-fitted sigma and with bootstrapped training residual windows: the same windows,
samples and estimators), the ProbTS convention (raw units, one test window every H steps, each
normalised by its own sum |y|) and the sample mean's shift from the point forecast. Writes
``results.json`` and ``results.md`` under ``--out`` after every seed, each atomically.

    python benchmarks/etth1_results.py --data ETTh2 --seeds 0 1 2 --out benchmarks/results/etth2

``--data``: an ETT name (from $DIFFSAMPLE_ETT_DIR, else ../shared/data/ETT-small beside the
repository), a CSV path (custom 70/10/20 split) or ``synthetic(...)``. ``--model k=v`` and
``--train k=v`` change one config field (an ablation row), e.g. ``--model history_stats=none``.
Dimensions: S samples, W windows, H horizon, N variates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from diffsample.forecast import (
    ForecastConfig,
    ForecastDataset,
    ITransformerDiffusion,
    TrainConfig,
    load_dataset,
)
from diffsample.forecast.baselines import residual_baselines
from diffsample.forecast.report import machine_info, write_json
from diffsample.forecast.run import Scoring, score_checkpoint, train_and_score
from diffsample.metrics import ForecastMetrics, quantile_crps

REPO = Path(__file__).resolve().parents[1]
# fmt: off
TINY = {"lookback": 24, "horizon": 12, "d_model": 16, "n_heads": 2, "d_ff": 16, "denoiser_width": 16,
        "denoiser_layers": 1, "denoiser_heads": 2, "num_train_steps": 50}
TINY_TRAIN = {"batch_size": 16, "point_epochs": 1, "diffusion_epochs": 1, "max_batches_per_epoch": 2}
# fmt: on
# ProbTS's ETTh1 96 -> 96 table (Zhang et al., 2024); its point models' CRPS is their NMAE
PROBTS_ETTH1 = {"iTransformer": 0.321, "PatchTST": 0.328, "CSDI": 0.437, "TimeGrad": 0.455}


def load(source: str, lookback: int, horizon: int) -> ForecastDataset:
    """The data, located the library's one way; the shared folder beside the repo if unset."""
    shared = REPO.parent / "shared" / "data" / "ETT-small"
    if not os.environ.get("DIFFSAMPLE_ETT_DIR") and shared.is_dir():
        os.environ["DIFFSAMPLE_ETT_DIR"] = str(shared)
    return load_dataset(source, lookback=lookback, horizon=horizon)


def overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``k=v`` pairs, each value read as JSON where it parses (``3``, ``0.5``, ``null``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected field=value, got {pair!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


class Shift:
    """The sample mean's distance from the point forecast, and the samples' spread against the
    true errors', per horizon step and variate (an ``on_batch`` hook): float64 sums [H, N];
    and the coverage per variate, which the headline averages (a variate over-covered and
    one under-covered can average to the nominal level)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.by_variate = ForecastMetrics(breakdown_dim=2)  # axis 2 of [B, H, N]

    def __call__(self, b: Any, fc: Any) -> None:
        r = (fc.samples - fc.point).double()  # [S, B, H, N]
        parts = {
            "shift": r.mean(0).sum(0),
            "spread2": r.pow(2).mean(0).sum(0),
            "error2": (b.y - fc.point).double().pow(2).sum(0),
            "mean_var": fc.samples.double().var(0).sum(0) / fc.samples.shape[0],  # MC noise
        }
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0) + v.cpu()
        self.count += b.y.shape[0]
        self.by_variate.update(fc.samples, b.y)

    def summary(self) -> dict[str, list[float]]:
        s = {k: v / self.count for k, v in self.sums.items()}  # [H, N]
        H = s["shift"].shape[0]
        quarters = [slice(i * H // 4, (i + 1) * H // 4) for i in range(4)]
        return {
            "mc_noise_of_sample_mean": [float(s["mean_var"].mean())],  # in its MSE, at this S
            "shift_by_variate": s["shift"].mean(0).tolist(),
            "shift_by_quarter": [float(s["shift"][q].mean()) for q in quarters],
            "spread_ratio_by_variate": (s["spread2"].mean(0) / s["error2"].mean(0)).sqrt().tolist(),
            "spread_ratio_by_quarter": [
                float((s["spread2"][q].mean() / s["error2"][q].mean()).sqrt()) for q in quarters
            ],
            **{
                f"{k}_by_variate": list(v)
                for k, v in self.by_variate.breakdown().items()
                if k in ("coverage_50", "coverage_90")
            },
        }


@torch.no_grad()
def probts(
    model: ITransformerDiffusion, data: ForecastDataset, S: int, seed: int, spacing: str = "logsnr"
) -> dict:
    """ProbTS's CRPS on raw values of one test window every H steps (29 on ETT at 96 -> 96),
    for the head, the baselines and the point forecast (NMAE); the same keyed samples as the
    full run."""
    test = data.test
    # ProbTS's rolling test: ceil((len - 1) / H) windows H apart, the last one left out
    b = test.windows(torch.arange(0, len(test) - 1, model.config.horizon))
    y = data.scaler.inverse_transform(b.y)  # [W, H, N] raw
    kw = {"time_features": b.x_mark, "window_ids": b.index, "seed": seed}
    fcs = {"diffusion head": model.forecast(b.x, S, progress=False, spacing=spacing, **kw)}
    fcs |= {k: f.forecast(b.x, S, **kw) for k, f in residual_baselines(model, data).items()}
    out = {
        k: float(quantile_crps(fc.in_data_units().samples, y, window_dim=0))
        for k, fc in fcs.items()
    }
    point = fcs["diffusion head"].in_data_units().point[None]
    return {**out, "point (NMAE)": float(quantile_crps(point, y, window_dim=0)), "windows": len(y)}


def run_seed(args: argparse.Namespace, data: ForecastDataset, seed: int) -> dict[str, Any]:
    """Train (or reuse a finished run's model.pt) and score with the command's pipeline:
    the head and its baselines on the same windows, results.json and the per-step CSV in
    ``--out/seed<seed>/``, the sample mean's shift from an on_batch hook."""
    config = ForecastConfig(
        **{**args.model, "n_variates": data.n_variates, "n_time_features": data.n_marks}
    )
    scoring = Scoring(
        n_samples=args.samples,
        num_steps=args.steps,
        sampler=args.sampler,
        spacing=args.spacing,
        seed=seed,
        windows=args.windows,
    )
    shift, out = Shift(), args.out / f"seed{seed}"
    if args.reuse and (out / "model.pt").is_file():
        r = score_checkpoint(out / "model.pt", results=out / "results.json", scoring=scoring,
                             progress=False, on_batch=shift)  # fmt: skip
    else:
        tc = TrainConfig(**{**args.train, "seed": seed})
        r = train_and_score(data, config, tc, out, scoring=scoring, overwrite=True,
                            progress=False, on_batch=shift)  # fmt: skip
    return {
        "seed": seed,
        "train_seconds": None if r.training is None else round(r.training.seconds, 1),
        "sampling_seconds": round(r.evaluation.seconds, 1),
        "scores": {
            "diffusion head": r.evaluation.as_dict(),
            **{k: v.as_dict() for k, v in (r.baselines or {}).items()},
        },
        "probts": probts(r.model, data, args.samples, seed, args.spacing),
        "diagnosis": shift.summary(),
        "res_scale": float(r.model.res_scale.mean()),
    }


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def markdown(record: dict[str, Any]) -> str:
    seeds, meta = record["seeds"], record["meta"]
    methods = list(seeds[0]["scores"])
    best = [min(s["scores"][m]["crps"] for m in methods[1:]) for s in seeds]
    lines = [
        f"# {meta['data']}: {len(seeds)} seeds, {meta['windows']} test windows, {meta['samples']} samples, {meta['sampler']}-{meta['steps']} ({meta['spacing']} grid)",
        "",
        f"Machine: {meta['machine']['cpu']} ({meta['machine']['torch_threads']} threads). Training s per seed: {[s['train_seconds'] for s in seeds]}; sampling s: {[s['sampling_seconds'] for s in seeds]}.",
        "",
        "| method | CRPS | cov50 | cov90 | sample-mean MSE | point MSE | ProbTS CRPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        cols = ("crps", "coverage_50", "coverage_90", "mse_mean", "point_mse")
        cells = [mean_sd([s["scores"][m][k] for s in seeds]) for k in cols]
        lines.append(f"| {m} | {' | '.join(cells)} | {mean_sd([s['probts'][m] for s in seeds])} |")
    nmae = mean_sd([s["probts"]["point (NMAE)"] for s in seeds])
    lines.append(f"| point forecast (NMAE) | - | - | - | - | - | {nmae} |")
    head = [s["scores"]["diffusion head"]["crps"] for s in seeds]
    gain = ", ".join(f"{100 * (1 - h / b):.1f}%" for h, b in zip(head, best, strict=True))
    lines += ["", f"Head's CRPS below the best baseline, per seed: {gain}.", ""]
    d = [s["diagnosis"] for s in seeds]
    for key in d[0]:  # shift and spread ratio, by horizon quarter and by variate
        cells = [statistics.fmean(x[key][i] for x in d) for i in range(len(d[0][key]))]
        lines.append(f"- {key.replace('_', ' ')}: " + ", ".join(f"{c:+.3f}" for c in cells))
    for level in (0.5, 0.9):  # calibration variate by variate, which the headline can hide
        key = f"coverage_{level * 100:.0f}_by_variate"
        by_variate = [statistics.fmean(c) for c in zip(*(x[key] for x in d), strict=True)]
        gap = statistics.fmean(abs(c - level) for c in by_variate)
        lines.append(f"- coverage {level:.0%}: a variate's mean distance from {level}: {gap:.3f}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="ETTh1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--spacing", default="logsnr", help="the grid of the steps")
    p.add_argument("--windows", type=int, default=None, help="W test windows, spread evenly")
    p.add_argument("--model", nargs="*", default=[], help="ForecastConfig field=value")
    p.add_argument("--train", nargs="*", default=[], help="TrainConfig field=value")
    p.add_argument("--tiny", action="store_true", help="a tiny model, for smoke tests")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reuse", action="store_true", help="score a seed's finished model.pt again")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = {**(TINY if args.tiny else {}), **overrides(args.model)}
    args.train = {**(TINY_TRAIN if args.tiny else {}), **overrides(args.train)}
    data = load(args.data, args.model.get("lookback", 96), args.model.get("horizon", 96))
    args.out.mkdir(parents=True, exist_ok=True)
    n_test = len(data.test) if args.windows is None else min(args.windows, len(data.test))
    command = "python benchmarks/etth1_results.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    settings = {
        k: vars(args)[k]
        for k in ("data", "samples", "steps", "sampler", "spacing", "model", "train")
    }
    meta = {**settings, "source": data.source, "windows": n_test, "command": command,
            "machine": machine_info("cpu"), "probts_published_etth1": PROBTS_ETTH1}  # fmt: skip
    record: dict[str, Any] = {"meta": meta, "seeds": []}
    for seed in args.seeds:
        record["seeds"].append(run_seed(args, data, seed))
        crps = {k: round(v["crps"], 4) for k, v in record["seeds"][-1]["scores"].items()}
        print(f"seed {seed}: CRPS {crps}", flush=True)
        write_json(args.out / "results.json", record)  # after every seed, atomically
        tmp = args.out / "results.md.tmp"
        tmp.write_text(markdown(record))
        os.replace(tmp, args.out / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
