"""Sampling report for one card: the whole ETTh1 test set, sampled and scored, and where the time goes.

    python benchmarks/gpu_report.py --out gpu.json              # on a CUDA machine (~2-4 min)
    python benchmarks/gpu_report.py --tiny --out tiny.json      # a seconds-long smoke run (CPU ok)
    python benchmarks/gpu_report.py --checkpoint model.pt ...   # trained weights instead of random

Dimensions: S samples per window, B windows (2785 = the ETTh1 test set at L = H = 96),
H = 96 horizon, N = 7 variates, K DDIM steps, M = S * B rows.

Everything uses the reference forecaster (``ForecastConfig()``: iTransformer backbone, token
denoiser, v-prediction, cosine schedule); without ``--checkpoint`` its weights are random
(synthetic: timing is the same, the CRPS means nothing) and the JSON says so. The windows are
synthetic too (random history and targets at ETTh1 shapes): nothing is read or installed.

Modes (sampling only, z from the backbone once):
  seed_loop       Python loop over samples, each a full DDIM chain over the B windows; timed on
                  --loop-samples samples and scaled to S (labelled "extrapolated")
  eager_fp32      sample_many, default chunking
  eager_bf16      sample_many(autocast=torch.bfloat16): only the denoiser in bf16
  eager_rows      sample_many(max_batch=--graph-rows), the baseline of the next two
  graph_rows      sample_many(max_batch=--graph-rows, graph=True): one CUDA graph replay per chunk
  graph_rows_bf16 the same under bf16 autocast
Then the full test set: backbone + sampling + CRPS on the device, fp32 eager and with the
fastest sampling mode measured. For each: seconds (best of --repeats after a warm-up), peak
memory, rows/s; for the default chunking also the share of time spent outside the denoiser
(the sampler's arithmetic, keyed noise, copies: total minus K denoiser calls per chunk alone).
Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffsample import crps, plan_chunk, sample_ddim, sample_many
from diffsample._utils import atomic_write
from diffsample.forecast.model import ForecastConfig, ITransformerDiffusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, sync


def build_model(checkpoint: Path | None, device: torch.device) -> tuple[ITransformerDiffusion, str]:
    """The reference forecaster on ``device`` and a note on where its weights come from."""
    if checkpoint is not None:
        model = ITransformerDiffusion.load(checkpoint, map_location="cpu")
        return model.to(device).eval().requires_grad_(False), f"trained: {checkpoint}"
    torch.manual_seed(0)
    model = ITransformerDiffusion(ForecastConfig())
    for p in model.denoiser.parameters():  # non-zero everywhere: the zero-initialised output
        torch.nn.init.normal_(p, std=0.02)  # layers would make the chain trivial
    note = "synthetic: random weights (no --checkpoint); timing is representative, CRPS is not"
    return model.to(device).eval().requires_grad_(False), note


def measure(
    fn: Callable[[], Any], device: torch.device, repeats: int
) -> tuple[float, float | None, Any, list[str]]:
    """(best seconds, peak MiB, last result, warnings seen): one warm-up, then ``repeats``
    timed runs (device synchronised inside); peak memory over the timed runs (CUDA; None
    elsewhere: the CPU storage tracker would slow the run it measures)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn()  # warm-up: kernels, allocator, cuBLAS handles, graph capture paths
        if device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        best, out = math.inf, None
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            out = fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        peak = None
        if device.type == "cuda":
            peak = round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)
    return best, peak, out, sorted({str(w.message) for w in seen})


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    """The flags (``--tiny`` sets every size small) and the device, refused where the full
    report cannot run."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=None, help="default: cuda if available (else --tiny on cpu)")
    p.add_argument("--windows", type=int, default=2785, help="B (2785: the ETTh1 test set)")
    p.add_argument("--samples", type=int, default=100, help="S per window")
    p.add_argument("--steps", type=int, default=50, help="K DDIM steps")
    p.add_argument("--loop-samples", type=int, default=2, help="samples the seed loop is timed on")
    p.add_argument("--graph-rows", type=int, default=8192, help="rows per call of the graph modes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--checkpoint", type=Path, default=None, help="a trained model (else random)")
    p.add_argument("--tiny", action="store_true", help="B=6 S=4 K=3: a smoke run of every mode")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    a = p.parse_args(argv)
    if a.tiny:
        a.windows, a.samples, a.steps, a.loop_samples, a.graph_rows, a.repeats = 6, 4, 3, 2, 8, 1
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; pass --tiny (or --device cpu)")
    if device.type != "cuda" and not a.tiny:
        p.error(f"--device {device}: the full report is for a CUDA device; pass --tiny on a CPU")
    return a, device


class Bench:
    """What every mode samples: the flags (B = a.windows, S = a.samples, K = a.steps), the
    model, the synthetic windows, z from the backbone and the grid; ``modes`` collects each
    mode's record as it is measured. (A plain class: tests load this file without registering
    it in sys.modules, which a dataclass needs.)"""

    def __init__(
        self,
        a: argparse.Namespace,
        device: torch.device,
        model: ITransformerDiffusion,
        weights: str,
        windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        z: torch.Tensor,
    ) -> None:
        self.a, self.device, self.model, self.weights = a, device, model, weights
        self.history, self.tf, self.target = windows  # [B, L, N], [B, L, F], [B, H, N]
        self.z = z  # [B, N, Dz]
        self.grid = model.schedule.timesteps(a.steps)  # [K] DDIM timesteps
        self.modes: dict[str, dict[str, Any]] = {}

    @property
    def rows(self) -> int:
        """M = S * B, the rows sampled."""
        return self.a.samples * self.a.windows

    @property
    def event(self) -> tuple[int, int]:
        """E = (H, N), one window's forecast."""
        return self.model.config.horizon, self.model.config.n_variates

    def folded(self, **kw: Any) -> torch.Tensor:
        """sample_many over the B windows: ``[S, B, H, N]``."""
        m = self.model
        return sample_many(
            "ddim", m.denoiser, self.event, self.a.samples, cond={"z": self.z}, schedule=m.schedule,
            timesteps=self.grid, prediction=m.config.prediction, seed=0,
            progress=False, **kw,
        )  # fmt: skip

    def seed_loop(self) -> torch.Tensor:
        """The seed repository's loop over --loop-samples samples: ``[S', B, H, N]``."""
        m, device, x_shape = self.model, self.device, (self.a.windows, *self.event)
        gen = torch.Generator(device=device).manual_seed(0)
        return torch.stack([
            sample_ddim(m.denoiser, torch.randn(*x_shape, generator=gen, device=device), m.schedule,
                        self.grid, cond={"z": self.z}, prediction=m.config.prediction,
                        progress=False)
            for _ in range(self.a.loop_samples)
        ])  # fmt: skip

    def record(self, name: str, fn: Callable[[], Any], *, scale: float = 1.0, **info: Any) -> Any:
        """Time ``fn`` (best of --repeats; the seed loop once), keep its record, print its line."""
        sec, peak, out, warned = measure(
            fn, self.device, 1 if name == "seed_loop" else self.a.repeats
        )
        self.modes[name] = {"seconds": sec * scale, "peak_mib": peak, **info}
        self.modes[name]["rows_per_s"] = round(self.rows / self.modes[name]["seconds"], 1)
        if warned:
            self.modes[name]["warnings"] = warned
        print(f"  {name:16s} {sec * scale:9.3f} s", flush=True)
        return out


def set_up(a: argparse.Namespace, device: torch.device) -> Bench:
    """The model and the synthetic windows (seeded), and z from the backbone once."""
    model, weights = build_model(a.checkpoint, device)
    c = model.config
    B = a.windows
    g = torch.Generator().manual_seed(7)
    history = torch.randn(B, c.lookback, c.n_variates, generator=g).to(device)  # [B, L, N]
    tf = torch.randn(B, c.lookback, c.n_time_features, generator=g).to(device)  # [B, L, F]
    target = torch.randn(B, c.horizon, c.n_variates, generator=g).to(device)  # [B, H, N]
    with torch.no_grad():
        _, z = model(history, tf if c.n_time_features else None)  # z [B, N, D]
        z = model.condition(history, z)  # [B, N, Dz]: what forecast() hands the denoiser
    return Bench(a, device, model, weights, (history, tf, target), z)


def sampling_modes(bench: Bench) -> tuple[int, int]:
    """The seed loop and the five sample_many modes; returns ``(chunk, rows)``: the default
    chunk and the rows per call of the fixed-chunk modes."""
    a, device, modes = bench.a, bench.device, bench.modes
    S, M, E = a.samples, bench.rows, bench.event
    bf16 = (device.type == "cuda" and torch.cuda.is_bf16_supported()) or device.type == "cpu"
    bench.record(
        "seed_loop", bench.seed_loop, scale=S / a.loop_samples,
        extrapolated=f"timed on {a.loop_samples} of {S} samples and scaled by {S / a.loop_samples:g}",
    )  # fmt: skip
    chunk = plan_chunk(bench.model.denoiser, E, S, cond={"z": bench.z}, device=device)
    ref = bench.record("eager_fp32", bench.folded, chunk=chunk)
    if bf16:
        out = bench.record("eager_bf16", lambda: bench.folded(autocast=torch.bfloat16), chunk=chunk)
        modes["eager_bf16"]["max_abs_diff_vs_fp32"] = float((out - ref).abs().max())
    rows = min(a.graph_rows, M)
    base = bench.record("eager_rows", lambda: bench.folded(max_batch=rows), chunk=rows)
    per_call = "each call warms up on its first chunk (eager) and captures, then replays"
    out = bench.record(
        "graph_rows", lambda: bench.folded(max_batch=rows, graph=True), chunk=rows, note=per_call
    )
    modes["graph_rows"]["max_abs_diff_vs_eager"] = float((out - base).abs().max())
    if bf16:
        bench.record(
            "graph_rows_bf16",
            lambda: bench.folded(max_batch=rows, graph=True, autocast=torch.bfloat16),
            chunk=rows, note=per_call,
        )  # fmt: skip
    return chunk, rows


def outside_share(bench: Bench, chunk: int) -> float:
    """The share of eager_fp32's time outside the denoiser: K calls per chunk of the denoiser
    alone (with its prepare_cond hook, if it has one, as sample_many calls it)."""
    B, M, E = bench.a.windows, bench.rows, bench.event
    den, device = bench.model.denoiser, bench.device
    with torch.no_grad():
        prepare = getattr(den, "prepare_cond", None)
        cond = prepare(z=bench.z) if callable(prepare) else {"z": bench.z}  # each [B, ...]
    rows_idx = torch.arange(chunk, device=device) % B  # [chunk]
    cond_rows = {k: v[rows_idx] for k, v in cond.items()}  # each [chunk, ...]

    def denoiser_only() -> None:
        x = torch.randn(chunk, *E, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            for _ in range(math.ceil(M / chunk)):
                for t in bench.grid.tolist():
                    den(x, torch.full((1,), t, device=device).expand(chunk), **cond_rows)

    den_s, _, _, _ = measure(denoiser_only, device, bench.a.repeats)
    eager = bench.modes["eager_fp32"]
    outside = max(0.0, 1.0 - den_s / eager["seconds"])
    eager["denoiser_seconds"] = den_s
    eager["share_outside_denoiser"] = round(outside, 3)
    return outside


def scored_modes(bench: Bench, rows: int) -> tuple[str, float, float]:
    """The whole test set (backbone, sampling, CRPS) eager fp32 and in the fastest sampling
    mode: ``(fastest, mean CRPS, mean CRPS fast)``."""
    modes = bench.modes
    S, K = bench.a.samples, bench.a.steps
    sampling = [m for m in modes if m != "seed_loop"]
    fastest = min(sampling, key=lambda m: modes[m]["seconds"])
    fast_kw: dict[str, Any] = {
        "eager_fp32": {},
        "eager_bf16": {"autocast": torch.bfloat16},
        "eager_rows": {"max_batch": rows},
        "graph_rows": {"max_batch": rows, "graph": True},
        "graph_rows_bf16": {"max_batch": rows, "graph": True, "autocast": torch.bfloat16},
    }[fastest]

    def full_test_set(**kw: Any) -> torch.Tensor:
        """Backbone, S samples per window, CRPS per element, all on the device: mean CRPS."""
        fc = bench.model.forecast(
            bench.history, S, time_features=bench.tf, num_steps=K, progress=False, **kw
        )
        return crps(fc.samples, bench.target).mean()  # [S, B, H, N] against [B, H, N]

    score = bench.record("full_test_set", full_test_set, mode="eager_fp32")
    score_fast = bench.record("full_test_set_fast", lambda: full_test_set(**fast_kw), mode=fastest)
    return fastest, float(score), float(score_fast)


def report_dict(
    bench: Bench, outside: float, fastest: str, score: float, score_fast: float
) -> dict[str, Any]:
    """The JSON report; adds each mode's speed-up over the seed loop."""
    modes, device, c = bench.modes, bench.device, bench.model.config
    a, loop_s = bench.a, modes["seed_loop"]["seconds"]
    for r in modes.values():
        r["speedup_vs_loop"] = round(loop_s / r["seconds"], 2)
    return {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "machine": machine(),
        "device": str(device),
        "torch": torch.__version__,
        "weights": bench.weights,
        "data": "synthetic windows at ETTh1 test-set shapes (timing; the CRPS is not a result)",
        "config": {"windows": a.windows, "samples": a.samples, "steps": a.steps, "rows": bench.rows,
                   "sampler": "ddim", "prediction": c.prediction, "denoiser": c.denoiser,
                   "tiny": a.tiny},
        "full_test_set_seconds": modes["full_test_set"]["seconds"],
        "full_test_set_fast_seconds": modes["full_test_set_fast"]["seconds"],
        "full_test_set_fast_mode": fastest,
        "ratio_seed_loop_to_full_test_set": round(loop_s / modes["full_test_set"]["seconds"], 1),
        "seed_loop_seconds_extrapolated": loop_s,
        "share_outside_denoiser": round(outside, 3),
        "mean_crps": score,
        "mean_crps_fast": score_fast,
        "modes": modes,
    }  # fmt: skip


def print_table(modes: dict[str, dict[str, Any]], outside: float) -> None:
    print("\n| mode | seconds | peak MiB | rows/s | x loop |\n|---|---|---|---|---|")
    for name, r in modes.items():
        label = f"{name} (extrapolated)" if name == "seed_loop" else name
        print(
            f"| {label} | {r['seconds']:.3f} | {'-' if r['peak_mib'] is None else r['peak_mib']} "
            f"| {r['rows_per_s']:.0f} "
            f"| {r['speedup_vs_loop']} |"
        )
    print(f"share of eager_fp32 time outside the denoiser: {outside:.1%}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a, device = parse_args(argv)
    bench = set_up(a, device)
    sizes = f"B={a.windows} S={a.samples} DDIM-{a.steps} rows={bench.rows}"
    print(f"{machine()} | {sizes} | weights: {bench.weights}", flush=True)
    chunk, rows = sampling_modes(bench)
    outside = outside_share(bench, chunk)
    fastest, score, score_fast = scored_modes(bench, rows)
    report = report_dict(bench, outside, fastest, score, score_fast)
    print_table(bench.modes, outside)
    if a.out is not None:
        atomic_write(a.out, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return report


if __name__ == "__main__":
    main()
