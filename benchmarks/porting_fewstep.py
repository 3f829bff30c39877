"""Fewer steps for ported diffusion forecasters (issue 16): a CARD/TMDM-style and a
TimeGrad-style model, trained small on the synthetic series, sampled by the peer's own
ancestral sampler (DDPM over the full training grid) and by DPM-Solver++ at 10-20 steps, all
through ``sample_many``, scored by CRPS and timed in the same run.

    python benchmarks/porting_fewstep.py            # defaults: 6-7 min on a busy 2-core CPU
    python benchmarks/porting_fewstep.py --parts timegrad --seed 1 --out ...  # another model
    python benchmarks/porting_fewstep.py --parts card --no-skip --repeats 1 --out ...  # plain MLP
    python benchmarks/porting_fewstep.py --windows 16 --tg-windows 8 --samples 20 --repeats 2 \
        --card-train-steps 200 --tg-train-steps 100 --out /tmp/smoke.json   # a smoke run

Dimensions: S samples, B test windows, L lookback, H horizon, N variates, F history features,
D hidden width, C condition width (the RNN state), T train steps, K sampling steps,
P = S * B paths (TimeGrad).

- CARD/TMDM: a ridge point forecaster mu [B, H, N] from the lookback; an MLP eps-denoiser
  trained on the CARD forward process y_t = sqrt(abar) y0 + (1 - sqrt(abar)) mu +
  sqrt(1 - abar) eps (T = 1000, linear 1e-4..0.02, as TMDM); it sees y_t, t, mu and a history
  encoding. Sampled with ``prior_mean=mu`` (x_T ~ N(mu, I)).
- TimeGrad: a GRU over the history (lags 1 and 24, time features) whose output conditions a
  per-step diffusion over the N-variate vector (T = 100, linear 1e-4..0.1, as TimeGrad).
  Sampled autoregressively: P per-path conditions with ``n_samples=1``, one ``sample_many``
  call per horizon step with ``seed=(seed, h)``, the GRU fed each path's own draw.
- Both denoisers output eps and are trained on the eps loss; by default they add an input skip
  sigma_t u to a learned residual (``Trunk``; ``--no-skip``: plain MLPs). Grids: the library's
  default ``trailing`` spacing, and ``logsnr`` (``NoiseSchedule.timesteps(K, "logsnr")``, 0.5.0;
  the runs recorded used a copy of it in this script, with the same grids: steps evenly spaced in log-SNR
  from T - 1 down to 0, DPM-Solver's recommendation), which ends at step 0 where ``trailing``
  ends at T / K - 1 (step 9 of TimeGrad's 100, whose noise level is still sigma = 0.21).

CRPS (``diffsample.metrics.crps``, the empirical-CDF estimator) is in standardised units
(train mean and std per variate), averaged over windows, horizon and variates, and over the
repeats: repeat r is an independent draw (seed + r) timed in interleaved order, so the
reference's repeat-to-repeat spread is the Monte-Carlo noise floor of the ratios. The JSON is
written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffsample import NoiseSchedule, sample_many
from diffsample.forecast.data.synthetic import synthetic_values
from diffsample.metrics import crps

OUT = Path(__file__).parent / "results" / "porting_fewstep" / "results.json"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


# ------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Data:
    """The standardised series and its windows."""

    x: torch.Tensor  # [T_rows, N] standardised values
    tf: torch.Tensor  # [T_rows, 4] time features (hour and weekday, sin/cos)
    train_starts: torch.Tensor  # [B_train] window starts (history x[s : s + L])
    test_all: torch.Tensor  # [B_test] window starts of all test windows

    def test_starts(self, n: int) -> torch.Tensor:
        """[min(n, B_test)] starts of n test windows, evenly spaced over the test rows."""
        pick = torch.linspace(0, len(self.test_all) - 1, min(n, len(self.test_all)))
        return self.test_all[pick.round().long()]


def make_data(args: argparse.Namespace) -> Data:
    """The synthetic series, split 70 / 10 / 20 by rows (the validation part is unused here),
    standardised with the train rows' mean and std."""
    dates, raw = synthetic_values(args.rows, args.variates, args.data_seed)  # [T_rows, N]
    L, H, T = args.lookback, args.horizon, args.rows
    train_end, test_begin = int(0.7 * T), int(0.8 * T)
    mean, std = raw[:train_end].mean(0), raw[:train_end].std(0)
    x = torch.tensor((raw - mean) / std, dtype=torch.float32)  # [T_rows, N]
    day = dates.astype("datetime64[D]")
    hour = (dates.astype("datetime64[h]") - day).astype(np.int64)
    weekday = (day.astype(np.int64) + 3) % 7
    ang_h, ang_w = 2 * np.pi * hour / 24.0, 2 * np.pi * weekday / 7.0
    tf = torch.tensor(
        np.stack([np.sin(ang_h), np.cos(ang_h), np.sin(ang_w), np.cos(ang_w)], 1),
        dtype=torch.float32,
    )  # [T_rows, 4]
    train_starts = torch.arange(0, train_end - L - H + 1)
    test_all = torch.arange(test_begin - L, T - L - H + 1)  # targets in the test rows
    return Data(x, tf, train_starts, test_all)


def windows(d: Data, starts: torch.Tensor, L: int, H: int) -> tuple[torch.Tensor, torch.Tensor]:
    """History [B, L, N] and target [B, H, N] of the windows starting at ``starts``."""
    idx = starts[:, None] + torch.arange(L + H)  # [B, L + H]
    w = d.x[idx]  # [B, L + H, N]
    return w[:, :L], w[:, L:]


# ------------------------------------------------------------------------ point forecaster
def ridge_features(d: Data, starts: torch.Tensor, L: int) -> torch.Tensor:
    """[B, L * N + 5]: the flattened lookback, the first target step's time features, 1."""
    hist, _ = windows(d, starts, L, 0)
    tf0 = d.tf[starts + L]  # [B, 4]
    return torch.cat([hist.flatten(1), tf0, torch.ones(len(starts), 1)], 1).double()


def fit_ridge(d: Data, L: int, H: int, lam: float) -> torch.Tensor:
    """Closed-form ridge map W [L * N + 5, H * N] from the lookback to the horizon."""
    X = ridge_features(d, d.train_starts, L)  # [B_train, F_r]
    _, Y = windows(d, d.train_starts, L, H)
    Y = Y.flatten(1).double()  # [B_train, H * N]
    A = X.T @ X + lam * len(X) * torch.eye(X.shape[1], dtype=torch.float64)
    return torch.linalg.solve(A, X.T @ Y)


def point_forecast(d: Data, W: torch.Tensor, starts: torch.Tensor, L: int, H: int) -> torch.Tensor:
    """mu [B, H, N] (float32)."""
    N = d.x.shape[1]
    return (ridge_features(d, starts, L) @ W).float().view(len(starts), H, N)


def history_code(d: Data, starts: torch.Tensor, L: int, last: int) -> torch.Tensor:
    """The CARD denoiser's history encoding [B, F]: the last ``last`` hours of the lookback
    (flattened) and the first target step's time features (the spread depends on the hour)."""
    hist, _ = windows(d, starts, L, 0)
    return torch.cat([hist[:, L - last :].flatten(1), d.tf[starts + L]], 1)


# --------------------------------------------------------------------------- shared parts
def time_embedding(t: torch.Tensor, T: int, dim: int = 32) -> torch.Tensor:
    """Sinusoidal features [M, dim] of integer steps t [M] (scaled to 0..1000)."""
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(dim // 2) / (dim // 2))  # [dim / 2]
    ang = (t.float() * (1000.0 / T))[:, None] * freqs  # [M, dim / 2]
    return torch.cat([ang.sin(), ang.cos()], 1)


def step_embedding(proj: nn.Linear, t: torch.Tensor, T: int) -> torch.Tensor:
    """proj(time_embedding(t)) [M, D]; when t is one step broadcast (sampling: a stride-0
    view) it is computed once and expanded."""
    if t.ndim == 1 and t.numel() > 1 and t.stride(0) == 0:
        return proj(time_embedding(t[:1], T)).expand(len(t), -1)
    return proj(time_embedding(t, T))


class Trunk(nn.Module):
    """eps(x_t [M, d], t [M], c [M, D], u [M, d]) -> [M, d]: with ``skip``,
    sigma_t u + F(x_t, t, c), where u is the noised variable the diffusion walks (x_t itself,
    or y_t - mu for CARD) and sigma_t u is the exact eps of a N(0, I) variable (an input skip,
    as in the preconditioning of Karras et al. 2022); without it, F alone (a plain MLP, as
    TMDM's network). F = silu(x_proj(x) + c + temb) -> two residual SiLU layers -> out, the
    last layer zero at start. Why the skip: at t near T the eps target is almost u_t itself,
    and a plain MLP's error there is multiplied by sigma / alpha (about 157x at t = 999 of
    TMDM's schedule) in x0, which deterministic samplers never correct."""

    def __init__(
        self, d_in: int, D: int, d_out: int, schedule: NoiseSchedule, *, skip: bool
    ) -> None:
        super().__init__()
        self.T = schedule.num_train_steps
        self.x_proj, self.t_proj = nn.Linear(d_in, D), nn.Linear(32, D)
        self.h1, self.h2, self.out = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, d_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.skip = skip
        self.skip_gain: torch.Tensor  # [T] sigma_t, a buffer (moves with the module)
        self.register_buffer("skip_gain", (1 - schedule.alphas_cumprod).sqrt().float())

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, u: torch.Tensor
    ) -> torch.Tensor:
        h = torch.nn.functional.silu(self.x_proj(x) + c + step_embedding(self.t_proj, t, self.T))
        h = h + torch.nn.functional.silu(self.h1(h))
        h = h + torch.nn.functional.silu(self.h2(h))
        out = self.out(h)
        if not self.skip:
            return out
        tt = t[:1] if t.ndim == 1 and t.numel() > 1 and t.stride(0) == 0 else t  # one step: once
        return self.skip_gain[tt][:, None] * u + out


def train_loop(
    name: str,
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    net: nn.Module,
    steps: int,
    args: argparse.Namespace,
) -> list[float]:
    """Adam with cosine decay, then the weights replaced by their exponential moving average
    (decay ``--ema``; 0: the last weights); returns the mean loss of each tenth of the run."""
    params: list[torch.Tensor] = list(net.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=args.lr * 0.05)
    g = torch.Generator().manual_seed(args.seed + 1234)
    losses, curve, every = [], [], max(steps // 10, 1)
    for i in range(steps):
        loss = loss_fn(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # warm-up: a short average early on (decay (1 + i) / (10 + i))
            torch._foreach_lerp_(ema, params, 1.0 - min(args.ema, (1 + i) / (10 + i)))
        losses.append(loss.item())
        if (i + 1) % every == 0 or i + 1 == steps:
            curve.append(round(statistics.fmean(losses), 5))
            losses = []
            if len(curve) % 5 == 0 or i + 1 == steps:
                log(f"{name}: step {i + 1}/{steps}, loss {curve[-1]:.4f}")
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    return curve


# ------------------------------------------------------------------------------- CARD/TMDM
class CardDenoiser(nn.Module):
    """eps(y_t [M, H, N], t [M], c [M, D], mu [M, H, N]) -> [M, H, N], with
    c = cond_proj([mu, history]) computed once per condition (``prepare_cond``); the walk is
    on u = y_t - mu, the skip's input."""

    def __init__(
        self, H: int, N: int, F: int, D: int, schedule: NoiseSchedule, *, skip: bool
    ) -> None:
        super().__init__()
        self.H, self.N = H, N
        self.cond_proj = nn.Linear(H * N + F, D)
        self.trunk = Trunk(H * N, D, H * N, schedule, skip=skip)

    def prepare_cond(self, *, mu: torch.Tensor, hist: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"c": self.cond_proj(torch.cat([mu.flatten(1), hist], 1)), "mu": mu}  # [B, D]

    def forward(
        self, y: torch.Tensor, t: torch.Tensor, *, c: torch.Tensor, mu: torch.Tensor
    ) -> torch.Tensor:
        eps = self.trunk(y.flatten(1), t, c, (y - mu).flatten(1))  # [M, H * N]
        return eps.view(-1, self.H, self.N)


def train_card(
    net: CardDenoiser,
    sch: NoiseSchedule,
    y0: torch.Tensor,
    mu: torch.Tensor,
    hist: torch.Tensor,
    args: argparse.Namespace,
) -> list[float]:
    """eps-loss on the CARD forward process around mu (TMDM's training objective)."""
    abar = sch.alphas_cumprod.float()  # [T]
    T = len(abar)

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        i = torch.randint(0, len(y0), (args.batch,), generator=g)
        t = torch.randint(0, T, (args.batch,), generator=g)
        eps = torch.randn(args.batch, *y0.shape[1:], generator=g)  # [b, H, N]
        a = abar[t].sqrt()[:, None, None]
        y_t = a * y0[i] + (1 - a) * mu[i] + (1 - a**2).sqrt() * eps
        return (net(y_t, t, **net.prepare_cond(mu=mu[i], hist=hist[i])) - eps).square().mean()

    return train_loop("card train", loss_fn, net, args.card_train_steps, args)


# -------------------------------------------------------------------------------- TimeGrad
class TimeGradNet(nn.Module):
    """A GRU over [x_{tau-1}, x_{tau-24}, time features of tau] whose output [*, C] conditions
    the diffusion of x_tau, and the eps-denoiser eps(x_t [M, N], t [M], c [M, D]) with
    c = cond_proj(rnn output), computed once per path and horizon step."""

    LAGS = (1, 24)

    def __init__(self, N: int, C: int, D: int, schedule: NoiseSchedule, *, skip: bool) -> None:
        super().__init__()
        self.rnn = nn.GRU(N * len(self.LAGS) + 4, C, batch_first=True)
        self.cond_proj = nn.Linear(C, D)
        self.trunk = Trunk(N, D, N, schedule, skip=skip)

    def prepare_cond(self, *, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"c": self.cond_proj(h)}  # [P, D]

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, c: torch.Tensor) -> torch.Tensor:
        return self.trunk(x, t, c, x)


def rnn_inputs(x: torch.Tensor, tf: torch.Tensor, lag_max: int) -> torch.Tensor:
    """Inputs [B, len - lag_max, 2N + 4] for positions tau = lag_max .. len - 1 of x [B, len, N]
    and tf [B, len, 4]: x_{tau-1}, x_{tau-24}, tf_tau."""
    n = x.shape[1]
    lagged = [x[:, lag_max - lag : n - lag] for lag in TimeGradNet.LAGS]
    return torch.cat([*lagged, tf[:, lag_max:]], 2)


def train_timegrad(
    net: TimeGradNet, sch: NoiseSchedule, d: Data, args: argparse.Namespace
) -> list[float]:
    """Teacher forcing on train chunks of 24 + 24 + 72 rows: the first 24 feed the lags, the
    next 24 warm the GRU up, the last 72 positions are scored (one diffusion time each)."""
    abar = sch.alphas_cumprod.float()
    T, lag, warm, scored = len(abar), 24, 24, 72
    n = lag + warm + scored
    starts = torch.arange(0, int(0.7 * len(d.x)) - n + 1)

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        s = starts[torch.randint(0, len(starts), (args.tg_batch,), generator=g)]
        idx = s[:, None] + torch.arange(n)  # [b, n]
        x, tf = d.x[idx], d.tf[idx]  # [b, n, N], [b, n, 4]
        out, _ = net.rnn(rnn_inputs(x, tf, lag))  # [b, n - lag, C]
        h = out[:, warm:].reshape(-1, out.shape[-1])  # [b * scored, C]
        x0 = x[:, lag + warm :].reshape(-1, x.shape[-1])  # [b * scored, N]
        t = torch.randint(0, T, (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t].sqrt()[:, None]
        x_t = a * x0 + (1 - a**2).sqrt() * eps
        return (net(x_t, t, c=net.prepare_cond(h=h)["c"]) - eps).square().mean()

    return train_loop("timegrad train", loss_fn, net, args.tg_train_steps, args)


@torch.no_grad()
def sample_timegrad(
    net: TimeGradNet,
    sch: NoiseSchedule,
    d: Data,
    starts: torch.Tensor,
    cfg: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    clock: list[float] | None = None,
) -> torch.Tensor:
    """Autoregressive sampling of the test windows -> [S, B, H, N]: the GRU reads the lookback
    once per window, then P = S * B paths (sample-major: p = s * B + b) each get their own
    condition and draw; one ``sample_many`` call per horizon step, keyed (seed, h). The
    seconds spent inside ``sample_many`` are appended to ``clock``."""
    L, H, S, lag = args.lookback, args.horizon, args.samples, 24
    B, N = len(starts), d.x.shape[1]
    idx = starts[:, None] + torch.arange(L + H)  # [B, L + H]
    x, tf = d.x[idx], d.tf[idx]  # [B, L + H, N], [B, L + H, 4]
    _, state = net.rnn(rnn_inputs(x[:, :L], tf[:, :L], lag))  # state [1, B, C]
    state = state.repeat(1, S, 1)  # [1, P, C]
    past = x[:, :L].repeat(S, 1, 1)  # [P, L, N]; the target is never read
    tf_p = tf.repeat(S, 1, 1)  # [P, L + H, 4]
    out = torch.empty(S * B, H, N)
    grid = sch.timesteps(cfg["steps"], cfg.get("spacing", "trailing"))
    inside = 0.0
    for h in range(H):
        lagged = [past[:, L + h - lag] for lag in net.LAGS]  # each [P, N]
        inp = torch.cat([*lagged, tf_p[:, L + h]], 1)[:, None]  # [P, 1, 2N + 4]
        o, state = net.rnn(inp, state)  # o [P, 1, C]
        t0 = time.perf_counter()
        y = sample_many(
            cfg["sampler"],
            net,
            (N,),
            1,
            schedule=sch,
            timesteps=grid,
            cond={"h": o[:, 0]},
            seed=(seed, h),
            progress=False,
            **cfg.get("kwargs", {}),
        )[0]  # [P, N]
        inside += time.perf_counter() - t0
        out[:, h] = y
        past = torch.cat([past, y[:, None]], 1)  # [P, L + h + 1, N]
    if clock is not None:
        clock.append(inside)
    return out.view(S, B, H, N)


# ------------------------------------------------------------------------------- measuring
def crps_of(samples: torch.Tensor, y: torch.Tensor) -> float:
    """CRPS averaged over windows, horizon and variates: samples [S, B, H, N], y [B, H, N]."""
    return float(crps(samples, y).mean())


def gaussian_baseline(
    mu: torch.Tensor, resid_std: torch.Tensor, y: torch.Tensor, S: int, seed: int
) -> float:
    """CRPS of y ~ N(mu, resid_std^2) (per horizon step and variate std from the train
    residuals of the point forecast), S samples."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(S, *mu.shape, generator=g)  # [S, B, H, N]
    return crps_of(mu + resid_std * z, y)


def run_configs(
    name: str,
    configs: list[dict[str, Any]],
    sample_fn: Callable[[dict[str, Any], int], torch.Tensor],
    y: torch.Tensor,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Each config sampled ``--repeats`` times in interleaved (rotated) order, repeat r with
    seed + r; per config: CRPS per repeat and its mean, wall and CPU seconds per repeat and
    their medians. CPU seconds (``time.process_time``, this process only) hardly move when
    other work shares the cores; wall seconds do."""
    log(f"{name}: warm-up (memory probe) ...")
    sample_fn(configs[-1], args.seed)  # the plan cache: no config pays the probe when timed
    crps_r: dict[str, list[float]] = {c["label"]: [] for c in configs}
    secs: dict[str, list[float]] = {c["label"]: [] for c in configs}
    cpu: dict[str, list[float]] = {c["label"]: [] for c in configs}
    for r in range(args.repeats):
        k = r % len(configs)
        for cfg in configs[k:] + configs[:k]:
            t0, c0 = time.perf_counter(), time.process_time()
            s = sample_fn(cfg, args.seed + r)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            c = crps_of(s, y)
            crps_r[cfg["label"]].append(c)
            secs[cfg["label"]].append(dt)
            cpu[cfg["label"]].append(dc)
            log(
                f"{name}: repeat {r + 1}/{args.repeats} {cfg['label']:>18}: {dt:7.2f} s "
                f"(CPU {dc:7.2f} s), CRPS {c:.5f}"
            )
    ref = configs[0]["label"]
    ref_crps, ref_sec = statistics.fmean(crps_r[ref]), statistics.median(secs[ref])
    ref_cpu = statistics.median(cpu[ref])
    rows = []
    for cfg in configs:
        lab = cfg["label"]
        c, sec, sec_cpu = (
            statistics.fmean(crps_r[lab]),
            statistics.median(secs[lab]),
            statistics.median(cpu[lab]),
        )
        rows.append(
            {
                "label": lab,
                "sampler": cfg["sampler"],
                "steps": cfg["steps"],
                "spacing": cfg.get("spacing", "trailing"),
                "kwargs": cfg.get("kwargs", {}),
                "crps": c,
                "crps_per_repeat": crps_r[lab],
                "ratio_to_reference": c / ref_crps,
                "seconds_median": sec,
                "seconds_per_repeat": secs[lab],
                "speedup": ref_sec / sec,
                "cpu_seconds_median": sec_cpu,
                "cpu_seconds_per_repeat": cpu[lab],
                "cpu_speedup": ref_cpu / sec_cpu,
            }
        )
    return rows


def noise_floor(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The reference's own Monte-Carlo spread: max |CRPS_r / mean - 1| over repeats, and the
    standard error of its mean over repeats, relative to the mean."""
    c = rows[0]["crps_per_repeat"]
    m = statistics.fmean(c)
    sd = statistics.stdev(c) if len(c) > 1 else float("nan")
    return {
        "max_rel_deviation_of_a_repeat": max(abs(v / m - 1) for v in c),
        "rel_std_of_one_repeat": sd / m,
        "rel_std_error_of_mean": sd / m / math.sqrt(len(c)),
    }


# -------------------------------------------------------------------------------- the parts
def card_part(d: Data, W: torch.Tensor, resid_std: torch.Tensor, args: argparse.Namespace) -> dict:
    L, H, N = args.lookback, args.horizon, d.x.shape[1]
    torch.manual_seed(args.seed)
    sch = NoiseSchedule.from_betas(torch.linspace(1e-4, 0.02, 1000))  # TMDM's betas (float32)
    _, y_tr = windows(d, d.train_starts, L, H)
    mu_tr = point_forecast(d, W, d.train_starts, L, H)
    hist_tr = history_code(d, d.train_starts, L, args.card_history)
    net = CardDenoiser(H, N, hist_tr.shape[1], args.card_width, sch, skip=args.skip)
    n_par = sum(p.numel() for p in net.parameters())
    log(f"card: denoiser {n_par} parameters, {len(y_tr)} train windows")
    t0 = time.perf_counter()
    curve = train_card(net, sch, y_tr, mu_tr, hist_tr, args)
    train_s = time.perf_counter() - t0
    net.eval().requires_grad_(False)

    st = d.test_starts(args.windows)
    _, y = windows(d, st, L, H)  # [B, H, N]
    mu, hist = point_forecast(d, W, st, L, H), history_code(d, st, L, args.card_history)
    configs = [
        {
            "label": "ddpm-1000 (ref)",
            "sampler": "ddpm",
            "steps": 1000,
            "kwargs": {"variance": "small"},
        },
        *(
            {"label": f"{s}-{k}", "sampler": s, "steps": k}
            for s in ("dpmpp_2m", "dpmpp_3m")
            for k in args.card_steps
        ),
        *(
            {"label": f"{s}-{k} logsnr", "sampler": s, "steps": k, "spacing": "logsnr"}
            for s in ("dpmpp_2m", "dpmpp_3m")
            for k in args.logsnr_steps
        ),
        {"label": "ddim-20", "sampler": "ddim", "steps": 20},
        {"label": "ddim-50", "sampler": "ddim", "steps": 50},
    ]

    def sample_fn(cfg: dict[str, Any], seed: int) -> torch.Tensor:
        return sample_many(
            cfg["sampler"],
            net,
            (H, N),
            args.samples,
            schedule=sch,
            timesteps=sch.timesteps(cfg["steps"], cfg.get("spacing", "trailing")),
            cond={"mu": mu, "hist": hist},
            prior_mean=mu,
            seed=seed,
            progress=False,
            **cfg.get("kwargs", {}),
        )

    rows = run_configs("card", configs, sample_fn, y, args)
    return {
        "model": {
            "denoiser_parameters": n_par,
            "schedule": "from_betas(torch.linspace(1e-4, 0.02, 1000)) (TMDM)",
            "prediction": "eps",
            "width": args.card_width,
            "skip": args.skip,
            "history_hours": args.card_history,
            "train_steps": args.card_train_steps,
            "batch": args.batch,
            "train_seconds": train_s,
            "loss_curve_tenths": curve,
        },
        "point_forecast_mse": float((mu - y).square().mean()),
        "gaussian_baseline_crps": gaussian_baseline(mu, resid_std, y, args.samples, args.seed),
        "rows": rows,
        "reference_noise_floor": noise_floor(rows),
    }


def timegrad_part(
    d: Data, W: torch.Tensor, resid_std: torch.Tensor, args: argparse.Namespace
) -> dict:
    L, H, N = args.lookback, args.horizon, d.x.shape[1]
    torch.manual_seed(args.seed)
    sch = NoiseSchedule.from_betas(torch.from_numpy(np.linspace(1e-4, 0.1, 100)))  # TimeGrad's
    net = TimeGradNet(N, args.tg_state, args.tg_width, sch, skip=args.skip)
    n_par = sum(p.numel() for p in net.parameters())
    log(f"timegrad: GRU + denoiser {n_par} parameters")
    t0 = time.perf_counter()
    curve = train_timegrad(net, sch, d, args)
    train_s = time.perf_counter() - t0
    net.eval().requires_grad_(False)

    st = d.test_starts(args.tg_windows)
    _, y = windows(d, st, L, H)
    mu = point_forecast(d, W, st, L, H)
    configs = [
        {
            "label": "ddpm-100 (ref)",
            "sampler": "ddpm",
            "steps": 100,
            "kwargs": {"variance": "small"},
        },
        *(
            {"label": f"{s}-{k}", "sampler": s, "steps": k}
            for s in ("dpmpp_2m", "dpmpp_3m")
            for k in args.tg_steps
        ),
        *(
            {"label": f"{s}-{k} logsnr", "sampler": s, "steps": k, "spacing": "logsnr"}
            for s in ("dpmpp_2m", "dpmpp_3m")
            for k in args.logsnr_steps
        ),
        # the probability-flow ODE on the full grid: the limit every deterministic solver
        # tends to, so its gap to the reference is the model's, not the solver's
        {"label": "ddim-100", "sampler": "ddim", "steps": 100},
    ]

    inside: dict[str, list[float]] = {c["label"]: [] for c in configs}

    def sample_fn(cfg: dict[str, Any], seed: int) -> torch.Tensor:
        return sample_timegrad(net, sch, d, st, cfg, args, seed, inside[cfg["label"]])

    rows = run_configs("timegrad", configs, sample_fn, y, args)
    # the diffusion alone (the GRU steps and the glue excluded); the last `repeats` entries
    # of each list are the timed runs (the warm-up run comes first)
    med = {lab: statistics.median(v[-args.repeats :]) for lab, v in inside.items()}
    for r in rows:
        r["sample_many_seconds_median"] = med[r["label"]]
        r["sample_many_speedup"] = med[configs[0]["label"]] / med[r["label"]]
    return {
        "model": {
            "parameters_gru_and_denoiser": n_par,
            "schedule": "from_betas(np.linspace(1e-4, 0.1, 100)) (TimeGrad)",
            "prediction": "eps",
            "gru_state": args.tg_state,
            "width": args.tg_width,
            "skip": args.skip,
            "lags": list(TimeGradNet.LAGS),
            "train_steps": args.tg_train_steps,
            "batch_chunks": args.tg_batch,
            "train_seconds": train_s,
            "loss_curve_tenths": curve,
        },
        "gaussian_baseline_crps": gaussian_baseline(mu, resid_std, y, args.samples, args.seed),
        "rows": rows,
        "reference_noise_floor": noise_floor(rows),
    }


# ------------------------------------------------------------------------------------- main
def machine(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "note": args.machine_note,
    }


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide the results from other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def table(name: str, part: dict[str, Any]) -> str:
    lines = [f"{name}: Gaussian baseline CRPS {part['gaussian_baseline_crps']:.4f}"]
    lines.append(
        f"{'sampler':>18} {'CRPS':>8} {'ratio':>7} {'seconds':>8} {'speed-up':>8} "
        f"{'CPU s':>8} {'CPU speed-up':>12}"
    )
    for r in part["rows"]:
        extra = ""
        if "sample_many_speedup" in r:
            extra = f"  (sample_many alone {r['sample_many_speedup']:.1f}x)"
        lines.append(
            f"{r['label']:>18} {r['crps']:8.4f} {r['ratio_to_reference']:7.4f} "
            f"{r['seconds_median']:8.2f} {r['speedup']:7.1f}x "
            f"{r['cpu_seconds_median']:8.2f} {r['cpu_speedup']:11.1f}x{extra}"
        )
    return "\n".join(lines)


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def steps_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers >= 2 (a multistep solver's steps)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 10,20, got {text!r}") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"expected integers >= 2 like 10,20, got {text!r}")
    return values


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=positive, default=6000, help="synthetic series length (hours)")
    p.add_argument("--variates", type=positive, default=4, help="N")
    p.add_argument("--lookback", type=positive, default=96, help="L")
    p.add_argument("--horizon", type=positive, default=24, help="H")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    p.add_argument(
        "--windows", type=positive, default=200, help="CARD test windows (evenly spaced)"
    )
    p.add_argument("--tg-windows", type=positive, default=100, help="TimeGrad test windows")
    p.add_argument("--samples", type=positive, default=100, help="S per window")
    p.add_argument(
        "--repeats", type=positive, default=3, help="interleaved timed draws per sampler"
    )
    p.add_argument("--threads", type=positive, default=1, help="torch threads")
    p.add_argument("--ridge", type=float, default=1e-3, help="ridge penalty (per window)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0: off)")
    p.add_argument("--batch", type=positive, default=256, help="CARD training batch")
    p.add_argument("--card-train-steps", type=positive, default=3000)
    p.add_argument("--card-width", type=positive, default=96)
    p.add_argument(
        "--card-history", type=positive, default=24, help="lookback hours the denoiser sees"
    )
    p.add_argument(
        "--card-steps", type=steps_list, default=(10, 15, 20), help="DPM-Solver++ steps, CARD"
    )
    p.add_argument(
        "--tg-steps", type=steps_list, default=(10, 20), help="DPM-Solver++ steps, TimeGrad"
    )
    p.add_argument(
        "--logsnr-steps", type=steps_list, default=(10,), help="steps on the logsnr grid (both)"
    )
    p.add_argument("--tg-train-steps", type=positive, default=1500)
    p.add_argument(
        "--tg-batch", type=positive, default=32, help="TimeGrad training chunks per step"
    )
    p.add_argument("--tg-state", type=positive, default=32, help="GRU state width C")
    p.add_argument("--tg-width", type=positive, default=64, help="TimeGrad denoiser width D")
    p.add_argument(
        "--skip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="denoisers with the Gaussian eps skip (--no-skip: plain MLPs, as TMDM's)",
    )
    p.add_argument("--parts", default="card,timegrad", help="comma-separated: card, timegrad")
    p.add_argument("--machine-note", default="", help="e.g. 'busy: other work running'")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.card_history > args.lookback:
        p.error(
            f"--card-history: expected at most --lookback ({args.lookback}), got {args.card_history}"
        )
    if args.lookback <= max(TimeGradNet.LAGS):
        p.error(
            f"--lookback: expected more than {max(TimeGradNet.LAGS)} (the GRU's lags), got {args.lookback}"
        )
    need = math.ceil(max(5 * args.horizon, (args.lookback + args.horizon + 120) / 0.7))
    if args.rows < need:  # test rows hold a horizon; train rows a window and a GRU chunk
        p.error(f"--rows: expected at least {need} for these window lengths, got {args.rows}")
    if min(args.seed, args.data_seed) < 0:
        p.error(
            f"--seed, --data-seed: expected non-negative integers, got {args.seed}, {args.data_seed}"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if not parts or set(parts) - {"card", "timegrad"}:
        raise SystemExit(
            f"--parts: expected a comma-separated subset of card,timegrad, got {args.parts!r}"
        )
    result: dict[str, Any] = {
        "command": shlex.join(["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(args),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    d = make_data(args)
    L, H = args.lookback, args.horizon
    W = fit_ridge(d, L, H, args.ridge)
    _, y_tr = windows(d, d.train_starts, L, H)
    resid_std = (point_forecast(d, W, d.train_starts, L, H) - y_tr).std(0)  # [H, N]
    result["data"] = {
        "series": f"synthetic_values({args.rows}, {args.variates}, {args.data_seed}), standardised",
        "train_windows": len(d.train_starts),
        "test_windows_scored": {
            "card": len(d.test_starts(args.windows)),
            "timegrad": len(d.test_starts(args.tg_windows)),
        },
        "test_windows_available": len(d.test_all),
        "point_forecaster": f"ridge on the flattened lookback + time features, penalty {args.ridge}",
    }
    log(f"data: {len(d.train_starts)} train windows, {len(d.test_all)} test windows")
    if "card" in parts:
        result["card"] = card_part(d, W, resid_std, args)
        print(table("CARD/TMDM-style", result["card"]), flush=True)
    if "timegrad" in parts:
        result["timegrad"] = timegrad_part(d, W, resid_std, args)
        print(table("TimeGrad-style", result["timegrad"]), flush=True)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["total_seconds"] = time.perf_counter() - T0
    write_json(args.out, result)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
