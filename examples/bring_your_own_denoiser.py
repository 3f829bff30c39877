"""Bring your own denoiser: train a small nn.Module on your own data, sample it with
diffsample.sample_many under a memory budget, and score the samples with diffsample.crps and
ForecastMetrics.

Dimensions: S samples, B conditions, H the event length, C condition features, M rows
(samples x conditions) of one denoiser call, T train steps, K sampling steps.

The data here are synthetic and conditional: each condition z = (amplitude, frequency) [C = 2]
fixes a sine wave of H points plus skewed noise whose scale grows with the amplitude, so the
true distribution is known and an oracle (fresh draws from it) scores what a perfect model
would. Replace ``make_data`` with your own ``(z [B, C], y [B, H])`` and keep the rest.

    python examples/bring_your_own_denoiser.py                 # about 10 seconds on a laptop CPU
    python examples/bring_your_own_denoiser.py --train-steps 50 --samples 16 --steps 5  # CI
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

import diffsample
from diffsample import ForecastMetrics, NoiseSchedule, crps, training_target

H, C = 24, 2  # event length, condition features


def draw(z: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws ``[n, B, H]`` of the process each condition ``z [B, C]`` defines."""
    steps = torch.arange(H) / H  # [H]
    wave = z[:, :1] * torch.sin(2 * math.pi * z[:, 1:] * steps)  # [B, H]
    shock = torch.empty(n, *wave.shape).exponential_(generator=generator) - 1.0  # skewed, mean 0
    return wave + 0.3 * z[:, :1] * shock  # [n, B, H]


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n conditions ``z [n, C]`` and one observation ``y [n, H]`` of each."""
    lo, span = torch.tensor([0.5, 0.5]), torch.tensor([2.0, 3.0])  # amplitude, frequency
    z = lo + span * torch.rand(n, C, generator=generator)  # [n, C]
    return z, draw(z, 1, generator)[0]


class MyDenoiser(nn.Module):
    """Any callable ``denoiser(x_t [M, H], t [M], **cond) -> [M, H]`` works; this is an MLP that
    sees the noisy series, a sinusoidal embedding of the step and the condition ``z [M, C]``."""

    def __init__(self, width: int = 128, num_train_steps: int = 1000) -> None:
        super().__init__()
        self.num_train_steps = num_train_steps
        self.net = nn.Sequential(
            nn.Linear(H + 16 + C, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, H),
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, z: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.arange(8, device=t.device) * (-math.log(1000.0) / 8))  # [8]
        angle = t.float()[:, None] / self.num_train_steps * 1000 * freqs  # [M, 8]
        emb = torch.cat([angle.sin(), angle.cos()], dim=1)  # [M, 16]
        return self.net(torch.cat([x_t, emb, z.to(x_t.dtype)], dim=1))  # [M, H]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--train-steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--conditions", type=int, default=64, help="B, test conditions")
    p.add_argument("--samples", type=int, default=100, help="S, samples per condition")
    p.add_argument("--steps", type=int, default=50, help="K, DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    g = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)  # the weight initialisation
    schedule = NoiseSchedule.cosine(1000)
    model = MyDenoiser(num_train_steps=schedule.num_train_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    # training: x_t = alpha x0 + sigma eps at a random step, the loss on the v target
    for step in range(a.train_steps):
        z, x0 = make_data(256, g)  # [256, C], [256, H]
        t = torch.randint(0, schedule.num_train_steps, (256,), generator=g)  # [256]
        noise = torch.randn(x0.shape, generator=g)  # [256, H]
        x_t = schedule.add_noise(x0, noise, t)
        alpha, sigma = (c[:, None] for c in schedule.alpha_sigma(t))  # [256, 1] float64
        target = training_target(x0, noise, alpha, sigma, "v").float()
        loss = F.mse_loss(model(x_t, t, z=z), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(a.train_steps // 5, 1) == 0:
            print(f"train step {step + 1}/{a.train_steps}: loss {loss.item():.4f}", flush=True)
    model.eval()

    # sampling: S samples for each of B conditions, folded into as few denoiser calls as the
    # memory budget allows (here 16 MiB per call, for the example's sake)
    z, y = make_data(a.conditions, g)  # [B, C], [B, H]
    rows: list[int] = []  # M of each denoiser call
    model.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        samples = diffsample.sample_many(
            "ddim",
            model,
            (H,),
            a.samples,
            cond={"z": z},
            schedule=schedule,
            timesteps=schedule.timesteps(a.steps),
            prediction="v",
            memory_budget=16 * 2**20,
            seed=a.seed,
            progress=False,
        )  # [S, B, H]
    print(
        f"samples {tuple(samples.shape)} (S, B, H) from {len(rows)} denoiser calls of at most "
        f"{max(rows)} rows (M = S x B = {a.samples * a.conditions})"
    )

    # scoring: the exact CRPS elementwise, and the streaming metrics of a whole test set
    oracle = draw(z, a.samples, g)  # [S, B, H]: fresh draws from the true distribution
    metrics = ForecastMetrics(variate_dim=None)  # one series per condition: no variates to sum
    metrics.update(samples, y)
    m = metrics.compute()
    print(f"CRPS {crps(samples, y).mean():.4f} (oracle {crps(oracle, y).mean():.4f})")
    print(
        f"coverage 50% {m['coverage_50']:.3f}, 90% {m['coverage_90']:.3f}; "
        f"quantile CRPS {m['quantile_crps']:.4f}; MSE of the mean {m['mse_mean']:.4f}"
    )


if __name__ == "__main__":
    main()
