"""Sampling report for a CUDA machine: the seed-style loop vs sample_many, at ETTh1 test-set shapes.

    python benchmarks/gpu_report.py --out report.json            # on a GPU
    python benchmarks/gpu_report.py --device cpu --windows 8 --samples 8 --steps 5   # a smoke run

Modes (DDIM, the default token denoiser, S samples per window, B windows):
  seed_loop       Python loop over samples, each a full chain over the B windows
  all_at_once     sample_many with every row in one call
  quarter_budget  sample_many under a memory budget that fits a quarter of the rows
  bf16_autocast   all_at_once under torch.autocast(bfloat16)
Prints a table and writes JSON (machine, settings, seconds, peak memory, speed-ups).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from diffsample._utils import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    budget_for_rows,
    folded,
    machine,
    make_cond,
    make_denoiser,
    peak,
    seed_loop,
    timed,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--windows", type=int, default=2785, help="B (2785 = the ETTh1 test set at L = H = 96)"
    )
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--loop-samples",
        type=int,
        default=None,
        help="time the seed loop on this many samples and scale to --samples (says so in the output)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; pass --device cpu for a smoke run")
    net, z = make_denoiser(str(device)), make_cond(a.windows, str(device))
    S, K, M = a.samples, a.steps, a.samples * a.windows
    rows = {}

    def record(name, fn, repeats, scale=1.0, note=None):
        fn()  # warm-up: kernels, allocator, dispatch
        sec, out = timed(fn, device, repeats)
        rows[name] = {
            "seconds": sec * scale,
            "peak_mib": round(peak(fn, device) / 2**20, 1),
            "note": note,
        }
        print(f"  {name:15s} {sec * scale:9.3f} s", flush=True)
        return out

    print(f"{machine()} | B={a.windows} S={S} DDIM-{K} rows={M}", flush=True)
    loop_s = a.loop_samples or S
    record(
        "seed_loop",
        lambda: seed_loop(net, z, loop_s, K),
        1,
        scale=S / loop_s,
        note=None if loop_s == S else f"timed on {loop_s} samples, scaled to {S}",
    )
    ref = record("all_at_once", lambda: folded(net, z, S, K, max_batch=M), a.repeats)
    budget = budget_for_rows(net, z, -(-M // 4))
    out = record("quarter_budget", lambda: folded(net, z, S, K, memory_budget=budget), a.repeats)
    torch.testing.assert_close(
        out, ref, rtol=1e-3, atol=1e-3
    )  # chunking does not change the samples
    if device.type == "cuda" and torch.cuda.is_bf16_supported():

        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return folded(net, z, S, K, max_batch=M)

        out = record("bf16_autocast", bf16, a.repeats)
        rows["bf16_autocast"]["max_abs_diff_vs_fp32"] = float((out - ref).abs().max())
    base = rows["seed_loop"]["seconds"]
    for r in rows.values():
        r["speedup_vs_loop"] = round(base / r["seconds"], 2)
    report = {
        "machine": machine(),
        "device": str(device),
        "windows": a.windows,
        "samples": S,
        "steps": K,
        "rows": M,
        "modes": rows,
    }
    print("\n| mode | seconds | peak MiB | x loop |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.3f} | {r['peak_mib']} | {r['speedup_vs_loop']} |")
    if a.out is not None:
        atomic_write(a.out, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return report


if __name__ == "__main__":
    main()
