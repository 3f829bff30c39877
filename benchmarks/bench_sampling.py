"""Sampling speed: the seed-style loop over samples vs sample_many (pytest-benchmark).

Not part of the default test run. Run::

    python -m pytest benchmarks/bench_sampling.py --benchmark-only --benchmark-json bench.json

Each benchmark times one full sampling run (DDIM, the token denoiser at ETTh1 shapes), records
rows, chunk and peak memory in extra_info, and checks the result against the reference run.
``test_cpu_autocast_and_compile`` compares eager fp32 with bf16 autocast and with
``torch.compile`` of the denoiser (compile time excluded: a warm-up round; see
docs/benchmarks.md for why neither is on by default on a CPU).
Environment: DIFFSAMPLE_BENCH_STEPS (default 50), DIFFSAMPLE_BENCH_B (default "16,64,256"),
DIFFSAMPLE_BENCH_S (samples per window in the batch benchmarks, default 32),
DIFFSAMPLE_BENCH_ROUNDS (interleaved rounds of ``test_sample_many_vs_one_batched_call``, 9).
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import pytest
import torch
from common import EVENT, budget_for_rows, folded, make_cond, make_denoiser, peak, seed_loop

from diffsample import SAMPLERS, NoiseSchedule, plan_chunk, sample_many
from diffsample.noise import keyed_normal, row_keys

K = int(os.environ.get("DIFFSAMPLE_BENCH_STEPS", "50"))
BS = [int(b) for b in os.environ.get("DIFFSAMPLE_BENCH_B", "16,64,256").split(",")]
S_BATCH = int(os.environ.get("DIFFSAMPLE_BENCH_S", "32"))
ROUNDS = int(os.environ.get("DIFFSAMPLE_BENCH_ROUNDS", "9"))  # interleaved rounds of a ratio
DEVICE = torch.device("cpu")
NET = make_denoiser()


def run(benchmark, fn, *, rows, chunk, rounds=1):
    out = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        rows=rows, chunk=chunk, steps=K, peak_mib=round(peak(fn, DEVICE) / 2**20, 1)
    )
    return out


# ---------------------------------------------------------------- one window, S = 100
@pytest.mark.parametrize("mode", ["seed_loop", "sample_many"])
def test_one_window_100_samples(benchmark, mode):
    benchmark.group = f"one window, S=100, DDIM-{K}"
    z = make_cond(1)
    fn = (
        (lambda: seed_loop(NET, z, 100, K))
        if mode == "seed_loop"
        else (lambda: folded(NET, z, 100, K))
    )
    out = run(
        benchmark,
        fn,
        rows=100,
        chunk=1 if mode == "seed_loop" else plan_chunk(NET, EVENT, 100, cond={"z": z}),
    )
    assert out.shape == (100, 1, *EVENT) and bool(torch.isfinite(out).all())


# ---------------------------------------------------------------- B windows, S samples each
MODES = ["seed_loop", "all_at_once", "default", "quarter_budget"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B", BS)
def test_batch_modes(benchmark, B, mode):
    benchmark.group = f"B={B}, S={S_BATCH}, DDIM-{K}"
    z, M = make_cond(B), B * S_BATCH
    if mode == "seed_loop":
        fn, chunk = functools.partial(seed_loop, NET, z, S_BATCH, K), B
    else:
        chunking: dict[str, int] = {}  # "default": automatic
        if mode == "all_at_once":
            chunking = {"max_batch": M}
        elif mode == "quarter_budget":
            chunking = {"memory_budget": budget_for_rows(NET, z, -(-M // 4))}
        chunk = plan_chunk(NET, EVENT, S_BATCH, cond={"z": z}, **chunking)
        fn = functools.partial(folded, NET, z, S_BATCH, K, **chunking)
    out = run(benchmark, fn, rows=M, chunk=chunk)
    assert out.shape == (S_BATCH, B, *EVENT) and bool(torch.isfinite(out).all())
    if mode in ("default", "quarter_budget"):  # chunking must not change the samples
        torch.testing.assert_close(
            out, folded(NET, z, S_BATCH, K, max_batch=M), rtol=1e-4, atol=1e-4
        )


# ---------------------------------------------------------------- time vs rows per call
@pytest.mark.parametrize("max_batch", [64, 128, 256, 512, 1024, 2048, 8192])
@pytest.mark.parametrize("B", BS)
def test_max_batch_curve(benchmark, B, max_batch):
    M = B * S_BATCH
    if max_batch > M:
        pytest.skip(f"max_batch {max_batch} > rows {M}")
    benchmark.group = f"curve B={B}, S={S_BATCH}, DDIM-{K}"
    z = make_cond(B)
    run(benchmark, lambda: folded(NET, z, S_BATCH, K, max_batch=max_batch), rows=M, chunk=max_batch)


# ---------------------------------------------------------------- the price of keyed noise
@pytest.mark.parametrize("kind", ["torch_randn", "keyed_normal"])
def test_noise_cost(benchmark, kind):
    """Noise for 8192 rows x one step, against torch.randn; compare with one denoiser call per row."""
    benchmark.group = "noise for 8192 rows [8192, 96, 7]"
    keys = row_keys(0, torch.arange(8192) % 256, torch.arange(8192) // 256)
    fn = (
        (lambda: torch.randn(8192, *EVENT))
        if kind == "torch_randn"
        else (lambda: keyed_normal(keys, 3, EVENT))
    )
    out = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (8192, *EVENT)


# ---------------------------------------------------------------- bf16 autocast, torch.compile
@pytest.mark.parametrize("mode", ["eager_fp32", "autocast_bf16", "compiled"])
def test_cpu_autocast_and_compile(benchmark, mode):
    """B = 16 windows x S = 32 at the default chunking; "compiled" wraps the denoiser in
    torch.compile (inductor) and pays its compilation in the warm-up round, not the timing."""
    benchmark.group = f"CPU eager vs bf16 vs torch.compile, B=16, S={S_BATCH}, DDIM-{K}"
    z, M = make_cond(16), 16 * S_BATCH
    net = torch.compile(NET) if mode == "compiled" else NET
    kw = {"autocast": torch.bfloat16} if mode == "autocast_bf16" else {}
    fn = functools.partial(folded, net, z, S_BATCH, K, **kw)
    out = benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(rows=M, steps=K, mode=mode)
    ref = folded(NET, z, S_BATCH, K)
    tol = 0.05 if mode == "autocast_bf16" else 1e-4  # bf16: 8 significant bits in the network
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol * float(ref.abs().max()))


# ---------------------------------------------------------------- sample_many vs one batched call
class TimeGradLikeEps(torch.nn.Module):
    """A TimeGrad-style eps-network (~15k parameters): gated dilated-conv residual layers over
    the N target dimensions, a step embedding and a conditioning vector h per row.
    x_t [M, N], t [M], h [M, 40] -> eps [M, N]."""

    def __init__(self, N: int = 8, C: int = 12, layers: int = 8, emb: int = 24) -> None:
        super().__init__()
        self.inp, self.emb = torch.nn.Conv1d(1, C, 1), torch.nn.Embedding(100, emb)
        self.up = torch.nn.Linear(40, N)
        self.dil = torch.nn.ModuleList(
            torch.nn.Conv1d(C, 2 * C, 3, padding=1) for _ in range(layers)
        )
        self.step = torch.nn.ModuleList(torch.nn.Linear(emb, C) for _ in range(layers))
        self.cond = torch.nn.ModuleList(torch.nn.Conv1d(1, 2 * C, 1) for _ in range(layers))
        self.res = torch.nn.ModuleList(torch.nn.Conv1d(C, 2 * C, 1) for _ in range(layers))
        self.skip, self.out = torch.nn.Conv1d(C, C, 1), torch.nn.Conv1d(C, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, h: torch.Tensor) -> torch.Tensor:
        e, c = self.emb(t), self.up(h)[:, None, :]  # [M, emb], [M, 1, N]
        y, skip = torch.relu(self.inp(x[:, None, :])), 0.0  # [M, C, N]
        for dil, step, cond, res in zip(self.dil, self.step, self.cond, self.res, strict=True):
            g, f = (dil(y + step(e)[:, :, None]) + cond(c)).chunk(2, 1)
            r, s = res(torch.sigmoid(g) * torch.tanh(f)).chunk(2, 1)
            y, skip = (y + r) / 2**0.5, skip + s
        return self.out(torch.relu(self.skip(skip / len(self.dil) ** 0.5)))[:, 0, :]  # [M, N]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("B", [1, 8])
def test_sample_many_vs_one_batched_call(benchmark, sampler, B):
    """The same work two ways, S = 100 samples x 100 steps of a ~15k-parameter denoiser
    (TimeGrad's T = 100 schedule): one direct sampler call on all S * B rows (cond repeated,
    torch.randn noise) against sample_many (keyed noise, the cached plan). Rounds interleaved;
    the median ratio batched / sample_many goes to extra_info (>= 1: sample_many no slower)."""
    benchmark.group = f"sample_many vs one batched call, {sampler}-100, S=100"
    torch.manual_seed(0)
    net = TimeGradLikeEps().eval().requires_grad_(False)
    sch = NoiseSchedule.linear(100, beta_end=0.1)
    grid, h, S = sch.timesteps(100), torch.randn(B, 40), 100

    def batched() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(S * B, 8, generator=g)
        return SAMPLERS[sampler](net, x, sch, grid, cond={"h": h.repeat(S, 1)}, generator=g)

    def many() -> torch.Tensor:
        return sample_many(sampler, net, (8,), S, cond={"h": h}, schedule=sch, timesteps=grid,
                           seed=0, progress=False)  # fmt: skip

    ratios = []
    with torch.no_grad():
        many(), batched()  # warm-up (and the plan cache)
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            batched()
            t1 = time.perf_counter()
            many()
            ratios.append((t1 - t0) / (time.perf_counter() - t1))
        out = benchmark.pedantic(many, rounds=3, iterations=1, warmup_rounds=0)
        # the same work: sample_many is the sampler on its keyed x_T and keyed step noise
        keys = row_keys(0, torch.arange(S * B) % B, torch.arange(S * B) // B)
        direct = SAMPLERS[sampler](
            net, keyed_normal(keys, -1, (8,)), sch, grid, cond={"h": h.repeat(S, 1)},
            noise_sampler=functools.partial(keyed_normal, keys, event_shape=(8,)),
        )  # fmt: skip
    torch.testing.assert_close(out.reshape(S * B, 8), direct, rtol=1e-5, atol=1e-5)
    params = sum(p.numel() for p in net.parameters())
    benchmark.extra_info.update(
        params=params, rows=S * B, steps=100, median_ratio=round(statistics.median(ratios), 3)
    )
