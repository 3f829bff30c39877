"""Stateless samplers for any denoiser callable.

Dimensions: M rows, E event shape, K sampling steps, T train steps.

Every sampler has the same shape::

    sample_X(denoiser, x, schedule, timesteps, *, cond=None, prediction="eps", ...) -> x0 estimate [M, *E]

``x`` is the initial noise x_T ``[M, *E]``; ``timesteps`` a strictly descending grid from
``schedule.timesteps(K)``. Each sampler walks the explicit pairs (t_i, t_{i+1}) of that grid
and then one explicit final step from its last entry to the clean data (t = -1); the previous
step is never derived by arithmetic such as ``t - T // K`` (wrong on non-uniform grids).

Per-step coefficients are computed once, in float64 on the host, before the loop; the loop
itself makes no host-device synchronisation (no ``.item()``, no branching on tensor values).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ._utils import describe, progress_disabled
from .noise import NoiseSampler
from .prediction import Denoiser, Prediction, check_prediction, predict_x0_eps
from .schedules import NoiseSchedule

__all__ = ["SAMPLERS", "Sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m"]

Callback = Callable[
    [dict[str, Any]], None
]  # receives {"i", "t", "t_next", "x", "x0"} after each step
Sampler = Callable[..., torch.Tensor]


class _Walk:
    """The checked grid of one sampler call and what every step needs (host-side floats)."""

    def __init__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        schedule: NoiseSchedule,
        timesteps: torch.Tensor,
        *,
        cond: Mapping[str, Any] | None,
        prediction: str,
        clip_x0: float | None,
        generator: torch.Generator | None,
        noise_sampler: NoiseSampler | None,
        callback: Callback | None,
        progress: bool | None,
        name: str,
    ) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise TypeError(
                f"x: expected a floating-point tensor [M, *event_shape], got {describe(x)}"
            )
        if not bool(torch.isfinite(x).all()):  # one sync, before the loop
            raise ValueError(
                f"x: the initial noise of shape {tuple(x.shape)} contains NaN or infinite values"
            )
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: expected a NoiseSchedule, got {type(schedule).__name__}")
        self.t = _check_grid(timesteps, schedule.num_train_steps)  # [K] host ints
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0: expected a positive float or None, got {clip_x0!r}")
        if cond is not None and not isinstance(cond, Mapping):
            raise TypeError(
                f"cond: expected a mapping of keyword arguments for the denoiser, got {type(cond).__name__}"
            )
        abar = schedule.alphas_cumprod.detach().cpu().tolist()
        self.abar = [abar[t] for t in self.t] + [
            1.0
        ]  # [K + 1]; the last entry is t = -1, clean data
        self.t_next = [*self.t[1:], -1]
        self.denoiser, self.x, self.cond = denoiser, x, cond
        self.prediction, self.clip_x0 = check_prediction(prediction), clip_x0
        self.generator, self.noise_sampler, self.callback = generator, noise_sampler, callback
        self.bar = tqdm(
            total=len(self.t), desc=name, leave=False, disable=progress_disabled(progress)
        )

    def __len__(self) -> int:
        return len(self.t)

    def model(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) estimates at step i; ``t`` goes to the denoiser as a [M] long tensor."""
        ab = self.abar[i]
        t = torch.full((x.shape[0],), self.t[i], dtype=torch.long, device=x.device)  # [M], no sync
        return predict_x0_eps(
            self.denoiser,
            x,
            t,
            math.sqrt(ab),
            math.sqrt(1.0 - ab),
            prediction=self.prediction,
            cond=self.cond,
            clip_x0=self.clip_x0,
        )

    def noise(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.noise_sampler is not None:
            return self.noise_sampler(i).to(device=x.device, dtype=x.dtype)
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def done(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback({"i": i, "t": self.t[i], "t_next": self.t_next[i], "x": x, "x0": x0})
        self.bar.update(1)
        if i == len(self.t) - 1:
            self.bar.close()


def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    prediction: Prediction = "eps",
    variance: Literal["small", "large"] = "small",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al., 2020) on any descending grid.

    From t to s < t, with a = alpha_bar: a_ts = a_t / a_s, b_ts = 1 - a_ts, and the posterior
    q(x_s | x_t, x0) = N(c0 * x0 + ct * x_t, var) where c0 = sqrt(a_s) * b_ts / (1 - a_t),
    ct = sqrt(a_ts) * (1 - a_s) / (1 - a_t); ``variance="small"`` uses var = b_ts (1 - a_s) / (1 - a_t)
    (beta-tilde), ``"large"`` var = b_ts (beta). On the full grid b_ts is beta_t. The final step
    returns the x0 estimate without noise.

    Args:
        denoiser: ``denoiser(x_t [M, *E], t [M] long, **cond) -> [M, *E]``.
        x: initial noise x_T ``[M, *E]``.
        schedule: the training schedule.
        timesteps: descending grid ``[K]`` from ``schedule.timesteps(K)``.
        cond: keyword arguments for the denoiser, each with M rows.
        prediction: what the denoiser returns: "eps", "x0" or "v".
        variance: "small" (beta-tilde) or "large" (beta).
        clip_x0: clamp x0 estimates to [-clip_x0, clip_x0]; off by default.
        generator: for the per-step noise when ``noise_sampler`` is None.
        noise_sampler: ``noise_sampler(i) -> [M, *E]`` standard normal noise for step i.
        callback: called after each step with {"i", "t", "t_next", "x", "x0"}.
        progress: None or True: a bar when stderr is a terminal; False: never.

    Returns:
        The sample ``[M, *E]``.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance: expected 'small' or 'large', got {variance!r}")
    w = _Walk(
        denoiser,
        x,
        schedule,
        timesteps,
        cond=cond,
        prediction=prediction,
        clip_x0=clip_x0,
        generator=generator,
        noise_sampler=noise_sampler,
        callback=callback,
        progress=progress,
        name="ddpm",
    )
    coef: list[tuple[float, float, float]] = []  # (c0, ct, std) per step
    for i in range(len(w)):
        a_t, a_s = w.abar[i], w.abar[i + 1]
        b_ts = 1.0 - a_t / a_s
        c0 = math.sqrt(a_s) * b_ts / (1.0 - a_t)
        ct = math.sqrt(a_t / a_s) * (1.0 - a_s) / (1.0 - a_t)
        var = b_ts * (1.0 - a_s) / (1.0 - a_t) if variance == "small" else b_ts
        coef.append((c0, ct, math.sqrt(var)))
    x = w.x
    for i in range(len(w)):
        x0, _ = w.model(x, i)
        if i == len(w) - 1:
            x = x0  # final step to clean data: the posterior mean at a_s = 1 is x0 itself
        else:
            c0, ct, std = coef[i]
            x = c0 * x0 + ct * x + std * w.noise(x, i)
        w.done(i, x, x0)
    return x


def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    prediction: Prediction = "eps",
    eta: float = 0.0,
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """DDIM (Song et al., 2021); ``eta=0`` is deterministic, ``eta=1`` matches DDPM's beta-tilde.

    x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z, with
    sigma = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s). The final step returns x0.
    Arguments as in :func:`sample_ddpm`, plus ``eta >= 0``.
    """
    if not (isinstance(eta, (int, float)) and eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta: expected a finite number >= 0, got {eta!r}")
    w = _Walk(
        denoiser,
        x,
        schedule,
        timesteps,
        cond=cond,
        prediction=prediction,
        clip_x0=clip_x0,
        generator=generator,
        noise_sampler=noise_sampler,
        callback=callback,
        progress=progress,
        name="ddim",
    )
    coef: list[tuple[float, float, float]] = []  # (c_x0, c_eps, sigma) per step
    for i in range(len(w)):
        a_t, a_s = w.abar[i], w.abar[i + 1]
        sigma = eta * math.sqrt((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s))
        coef.append((math.sqrt(a_s), math.sqrt(max(1.0 - a_s - sigma**2, 0.0)), sigma))
    x = w.x
    stochastic = eta > 0
    for i in range(len(w)):
        x0, eps = w.model(x, i)
        if i == len(w) - 1:
            x = x0
        else:
            c_x0, c_eps, sigma = coef[i]
            x = c_x0 * x0 + c_eps * eps
            if stochastic:
                x = x + sigma * w.noise(x, i)
        w.done(i, x, x0)
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    prediction: Prediction = "eps",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022), the multistep second-order data-prediction solver.

    With lambda = log(alpha / sigma), h = lambda_s - lambda_t and r = h_prev / h:
    x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) D, where D = x0 on the first step and
    D = (1 + 1 / (2r)) x0 - (1 / (2r)) x0_prev after it. The final step to clean data is first
    order (sigma_s = 0), which returns x0. Deterministic; ``generator`` and ``noise_sampler``
    are accepted for a uniform signature and unused.
    """
    del generator, noise_sampler
    w = _Walk(
        denoiser,
        x,
        schedule,
        timesteps,
        cond=cond,
        prediction=prediction,
        clip_x0=clip_x0,
        generator=None,
        noise_sampler=None,
        callback=callback,
        progress=progress,
        name="dpmpp_2m",
    )
    lam = [0.5 * math.log(a / (1.0 - a)) for a in w.abar[:-1]]  # [K] half log-SNR of the grid
    coef: list[tuple[float, float, float, float]] = []  # (sigma ratio, phi, w_cur, w_prev) per step
    for i in range(len(w) - 1):
        a_t, a_s = w.abar[i], w.abar[i + 1]
        h = lam[i + 1] - lam[i]
        ratio, phi = math.sqrt((1.0 - a_s) / (1.0 - a_t)), -math.sqrt(a_s) * math.expm1(-h)
        if i == 0:
            coef.append((ratio, phi, 1.0, 0.0))
        else:
            half_inv_r = 0.5 * h / (lam[i] - lam[i - 1])
            coef.append((ratio, phi, 1.0 + half_inv_r, -half_inv_r))
    x = w.x
    x0_prev: torch.Tensor | None = None
    for i in range(len(w)):
        x0, _ = w.model(x, i)
        if i == len(w) - 1:
            x = x0
        else:
            ratio, phi, w_cur, w_prev = coef[i]
            d = x0 if x0_prev is None else w_cur * x0 + w_prev * x0_prev
            x = ratio * x + phi * d
        x0_prev = x0
        w.done(i, x, x0)
    return x


SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}


def _check_grid(timesteps: torch.Tensor, T: int) -> list[int]:
    if not isinstance(timesteps, torch.Tensor) or timesteps.ndim != 1 or timesteps.numel() < 1:
        raise ValueError(
            f"timesteps: expected a 1-D tensor from schedule.timesteps(num_steps), got {describe(timesteps)}"
        )
    if timesteps.is_floating_point() or timesteps.dtype == torch.bool:
        raise ValueError(f"timesteps: expected integer timesteps, got dtype {timesteps.dtype}")
    t = timesteps.detach().cpu().tolist()  # one copy to the host, before the loop
    if min(t) < 0 or max(t) > T - 1:
        raise ValueError(
            f"timesteps: values must lie in 0..{T - 1} (the schedule's T - 1), got {min(t)}..{max(t)}"
        )
    if any(b >= a for a, b in zip(t, t[1:])):
        raise ValueError(
            f"timesteps: expected a strictly descending grid, got {t[:8]}{'...' if len(t) > 8 else ''}"
        )
    return t
