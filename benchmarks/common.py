"""Shared pieces of the sampling benchmarks: the denoiser at ETTh1 shapes, the seed-style loop,
and the modes compared. Used by bench_sampling.py (pytest-benchmark) and gpu_report.py.

Dimensions: S samples, B windows, H = 96 horizon, N = 7 variates, D = 128 token width.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from diffsample import NoiseSchedule, sample_ddim, sample_many
from diffsample.batching import row_cost
from diffsample.forecast.denoisers import TokenDenoiser
from diffsample.memory import peak_bytes

H, N, D = 96, 7, 128
EVENT = (H, N)
SCHEDULE = NoiseSchedule.cosine(1000)


def make_denoiser(device: str = "cpu", seed: int = 0) -> TokenDenoiser:
    """The default forecaster's denoiser (~0.57M parameters) with random, non-zero weights."""
    torch.manual_seed(seed)
    net = TokenDenoiser(H, D)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return net.to(device).eval().requires_grad_(False)


def make_cond(B: int, device: str = "cpu", seed: int = 1) -> torch.Tensor:
    """Backbone tokens z [B, N, D] standing in for real windows."""
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed)).to(device)


def seed_loop(net, z: torch.Tensor, S: int, K: int, seed: int = 0) -> torch.Tensor:
    """The seed repository's way: a Python loop over samples, each a full chain over the B windows."""
    g = torch.Generator(device=z.device).manual_seed(seed)
    ts = SCHEDULE.timesteps(K)
    out = [
        sample_ddim(
            net,
            torch.randn(z.shape[0], *EVENT, generator=g, device=z.device),
            SCHEDULE,
            ts,
            cond={"z": z},
            progress=False,
        )
        for _ in range(S)
    ]
    return torch.stack(out)  # [S, B, H, N]


def folded(net, z: torch.Tensor, S: int, K: int, **kw) -> torch.Tensor:
    """sample_many: the S samples folded into the batch; chunking from kw (default: automatic)."""
    return sample_many(
        "ddim",
        net,
        EVENT,
        S,
        cond={"z": z},
        schedule=SCHEDULE,
        timesteps=SCHEDULE.timesteps(K),
        progress=False,
        **{"seed": 0, **kw},
    )


def budget_for_rows(net, z: torch.Tensor, rows: int) -> int:
    """A memory budget (bytes) under which sample_many plans ``rows`` rows per call."""
    fixed, per_row = row_cost(net, EVENT, cond={"z": z}, t_probe=999)
    return int(fixed + per_row * (rows + 0.5))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], torch.Tensor], device: torch.device, repeats: int = 1
) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` runs (device synchronised inside), and the last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak(fn: Callable[[], torch.Tensor], device: torch.device) -> int:
    """Extra peak memory of one run (CUDA allocator stats; a storage tracker elsewhere)."""
    return peak_bytes(fn, device)


def machine() -> dict[str, str | None]:
    import os
    import platform

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "gpu": None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
