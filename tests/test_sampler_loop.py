"""The grid walk every sampler shares (diffsample.walk.Walk.run): one denoiser call, one
callback and one progress step per grid step, the documented callback keys, the final step
returning the x0 estimate, data-space values with a prior mean and known values, the keyed
noise streams each sampler reads, and the x0 history a multistep update sees."""

from __future__ import annotations

import pytest
import torch

from diffsample import SAMPLERS, Known, NoiseSchedule
from diffsample import walk as walk_mod
from diffsample.walk import Walk

SCH = NoiseSchedule.cosine(1000)
E = (4, 2)
M = 3
STOCHASTIC = {"ddpm": {}, "ddim": {"eta": 0.5}}  # the samplers (and settings) that draw noise
CASES = [(name, {}) for name in SAMPLERS] + [("ddim", {"eta": 0.5})]


class Recorder:
    """A smooth eps-denoiser that records the t of every call."""

    def __init__(self) -> None:
        self.ts: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.ts.append(t)
        return 0.3 * torch.tanh(x) + 1e-4 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def noise(i: int) -> torch.Tensor:
    """Keyed standard normal noise [M, *E] of stream i (a seeded generator per stream)."""
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(M, *E, generator=g, dtype=torch.float64)


def start() -> torch.Tensor:
    return torch.randn(M, *E, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}{kw}" for n, kw in CASES])
@pytest.mark.parametrize("K", [1, 2, 3, 6])
def test_one_denoiser_call_and_one_callback_per_step_and_the_last_returns_x0(name, kw, K):
    grid = SCH.timesteps(K)
    den, seen = Recorder(), []
    out = SAMPLERS[name](
        den, start(), SCH, grid, callback=seen.append, noise_sampler=noise, progress=False, **kw
    )
    t = grid.tolist()
    assert [sorted(d) for d in seen] == [["i", "t", "t_next", "x", "x0"]] * K
    assert [(d["i"], d["t"], d["t_next"]) for d in seen] == list(
        zip(range(K), t, [*t[1:], -1], strict=True)
    )
    # the denoiser once per step, with t as a stride-0 [M] view of that step
    assert [(tuple(s.shape), s.stride(), s.dtype) for s in den.ts] == [((M,), (0,), torch.long)] * K
    assert [int(s[0]) for s in den.ts] == t
    # the final step to clean data returns the x0 estimate itself, no update, no noise
    assert torch.equal(seen[-1]["x"], seen[-1]["x0"])
    assert torch.equal(out, seen[-1]["x"])
    # each earlier step moved x off its x0 estimate (the update ran)
    assert all(not torch.equal(d["x"], d["x0"]) for d in seen[:-1])


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}{kw}" for n, kw in CASES])
def test_the_callback_sees_data_space_and_the_sample_keeps_the_known_values(name, kw):
    K, x = 5, start()
    mu = torch.linspace(-2, 2, E[0] * E[1], dtype=torch.float64).reshape(E)  # broadcast [*E]
    mask = torch.zeros(M, *E, dtype=torch.bool)
    mask[:, 0] = True
    values = torch.where(mask, torch.full((M, *E), 3.0, dtype=torch.float64), torch.nan)
    run = SAMPLERS[name]
    common = dict(noise_sampler=noise, progress=False, **kw)
    seen = []
    out = run(
        Recorder(),
        x,
        SCH,
        SCH.timesteps(K),
        prior_mean=mu,
        known=Known(values, mask),
        callback=seen.append,
        **common,
    )
    assert torch.equal(out[mask], values[mask])  # the known values themselves
    assert torch.isfinite(out).all()  # the NaN placeholders never reach x
    # the walk runs on x - mu, the callback sees x itself: on an unmasked run with a prior mean,
    # the last x the callback sees is the returned sample (mu added back, not twice)
    seen = []
    out = run(Recorder(), x, SCH, SCH.timesteps(K), prior_mean=mu, callback=seen.append, **common)
    assert torch.equal(out, seen[-1]["x"]) and torch.equal(out, seen[-1]["x0"])


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}{kw}" for n, kw in CASES])
@pytest.mark.parametrize("known", [False, True])
def test_each_sampler_reads_the_documented_noise_streams(name, kw, known):
    """Stream i (0 <= i < K - 1) is step i's noise of a stochastic sampler, stream -2 - i the
    known values' forward noise at step i; the final step draws none. sample_many's keyed
    noise, and so its independence of the chunking, rests on these indices."""
    K, read = 4, []

    def recording(i: int) -> torch.Tensor:
        read.append(i)
        return noise(i)

    extra = {}
    if known:
        mask = torch.zeros(M, *E, dtype=torch.bool)
        mask[0] = True
        extra["known"] = Known(torch.ones(M, *E, dtype=torch.float64), mask)
    SAMPLERS[name](
        Recorder(),
        start(),
        SCH,
        SCH.timesteps(K),
        noise_sampler=recording,
        progress=False,
        **extra,
        **kw,
    )
    steps = list(range(K - 1)) if name in STOCHASTIC and kw == STOCHASTIC[name] else []
    want = {i: [-2 - i] if known else [] for i in range(K)}
    for i in steps:
        want[i].append(i)
    assert read == [j for i in range(K) for j in want[i]]


def test_the_progress_bar_counts_every_step_and_closes(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n, self.closed = kw, 0, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed += 1

    monkeypatch.setattr(walk_mod, "progress_bar", lambda **kw: Bar(**kw))
    for name, run in SAMPLERS.items():
        run(Recorder(), start(), SCH, SCH.timesteps(6), progress=False, noise_sampler=noise)
        assert bars[-1].kw["total"] == 6 and bars[-1].kw["desc"] == name
        assert (bars[-1].n, bars[-1].closed) == (6, 1)
    assert len(bars) == len(SAMPLERS)


@pytest.mark.parametrize("history", [0, 1, 2])
def test_run_hands_the_update_the_previous_x0_estimates_newest_first(history):
    K = 5
    den = Recorder()
    w = Walk(
        den,
        start(),
        SCH,
        SCH.timesteps(K),
        cond=None,
        prediction="eps",
        clip_x0=None,
        clip_eps=None,
        prior_mean=None,
        known=None,
        generator=None,
        noise_sampler=None,
        callback=None,
        progress=False,
        name="test",
    )
    x0s, calls = [], []

    def update(i, x, x0, eps, prev):
        x0s.append(x0)
        calls.append((i, prev))
        return x - 0.1 * eps  # any step

    out = w.run(update, history=history)
    assert [i for i, _ in calls] == list(range(K - 1))  # never on the final step
    for i, prev in calls:
        want = x0s[max(0, i - history) : i][::-1]  # up to `history` earlier x0, newest first
        assert len(prev) == len(want) and all(a is b for a, b in zip(prev, want, strict=True))
    assert len(den.ts) == K and out.shape == (M, *E)
