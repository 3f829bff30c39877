"""Stateless samplers for any denoiser callable.

Dimensions: M rows, E event shape, K sampling steps, T train steps.

Every sampler has the same shape (the :class:`Sampler` protocol)::

    sample_X(denoiser, x, schedule, timesteps, *, cond=None, prediction="eps", ...) -> x0 estimate [M, *E]

``x`` is the initial noise x_T ``[M, *E]``; ``timesteps`` a strictly descending grid from
``schedule.timesteps(K)``. Each sampler walks the explicit pairs (t_i, t_{i+1}) of that grid
and then one explicit final step from its last entry to the clean data (t = -1); the previous
step is never derived by arithmetic such as ``t - T // K`` (wrong on non-uniform grids).

Per-step coefficients come from one call of the schedule on the grid (alpha, sigma and log-SNR
from ``NoiseSchedule.alpha_sigma`` / ``log_snr``, in float64, copied to the host once) and are
combined in float64 before the loop; the loop itself makes no host-device synchronisation
(no ``.item()``, no branching on tensor values).

The update rules are written with the log-SNR difference d = lambda_t - lambda_s <= 0 of a step
from t down to s: SNR_t / SNR_s = exp(d) and q = 1 - SNR_t / SNR_s = -expm1(d). In log space
both keep full float64 precision, on fine grids (q near 0) and coarse ones (exp(d) near 0) alike.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import torch
from tqdm.auto import tqdm

from ._utils import (
    check_choice,
    check_finite,
    check_number,
    check_tensor,
    expected,
    progress_disabled,
)
from .noise import NoiseSampler
from .prediction import Denoiser, Prediction, check_prediction, predict_x0_eps
from .schedules import NoiseSchedule

__all__ = [
    "SAMPLERS",
    "Sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
]

Callback = Callable[[dict[str, Any]], None]  # receives {"i", "t", "t_next", "x", "x0"} per step
Variance = Literal["small", "large"]


class Sampler(Protocol):
    """``sampler(denoiser, x [M, *E], schedule, timesteps [K], *, cond, prediction, generator,
    noise_sampler, callback, progress) -> [M, *E]``: what :func:`diffsample.sample_many` calls.

    A sampler may take more keyword-only arguments, each with a default (``eta``, ``variance``,
    ``clip_x0`` for the built-in ones); ``sample_many`` passes its ``**sampler_kwargs`` on to
    them. (They are not written here as ``**kwargs``: a protocol with ``**kwargs`` would only
    admit samplers that accept *any* keyword, and the built-in ones reject unknown keywords,
    so that a misspelt ``etta=`` fails instead of being ignored.)
    """

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        schedule: NoiseSchedule,
        timesteps: torch.Tensor,
        *,
        cond: Mapping[str, Any] | None = ...,
        prediction: Prediction = ...,
        generator: torch.Generator | None = ...,
        noise_sampler: NoiseSampler | None = ...,
        callback: Callback | None = ...,
        progress: bool | None = ...,
    ) -> torch.Tensor: ...


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
        check_tensor("x", x, floating=True)
        if x.ndim < 1:
            raise ValueError(expected("x", "a tensor [M, *event_shape]", x))
        if not _sync_forbidden(x):  # one sync, before the loop
            check_finite("x", x)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(expected("schedule", "a NoiseSchedule", schedule))
        if clip_x0 is not None:
            clip_x0 = check_number("clip_x0", clip_x0, minimum=0, open_min=True)
        if cond is not None and not isinstance(cond, Mapping):
            raise TypeError(
                expected("cond", "a mapping of keyword arguments for the denoiser", cond)
            )
        self.t = check_grid(timesteps, schedule.num_train_steps)  # [K] host ints
        self.t_next = [*self.t[1:], -1]
        # [K + 1] each; the last entry is t = -1, the clean data (alpha 1, sigma 0, lambda +inf)
        self.alpha, self.sigma, self.lam = grid_coefficients(schedule, self.t)
        self.denoiser, self.x, self.cond = denoiser, x, cond
        self.prediction, self.clip_x0 = check_prediction(prediction), clip_x0
        self.generator, self.noise_sampler, self.callback = generator, noise_sampler, callback
        self.bar = tqdm(
            total=len(self.t), desc=name, leave=False, disable=progress_disabled(progress)
        )

    def __len__(self) -> int:
        return len(self.t)

    def snr_ratio(self, i: int) -> tuple[float, float]:
        """(exp(d), -expm1(d)) = (SNR_t / SNR_s, q) of step i, d = lambda_t - lambda_s, for a
        step that does not end at the clean data (where lambda_s = +inf)."""
        d = self.lam[i] - self.lam[i + 1]
        return math.exp(d), -math.expm1(d)

    def model(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) estimates at step i; ``t`` goes to the denoiser as a [M] long tensor, a
        stride-0 view of one value (the step-embedding hook of the denoiser contract)."""
        t = torch.full((1,), self.t[i], dtype=torch.long, device=x.device)  # [1], no sync
        t = t.expand(x.shape[0])  # [M], stride 0: one step for every row
        return predict_x0_eps(
            self.denoiser,
            x,
            t,
            self.alpha[i],
            self.sigma[i],
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
    variance: Variance = "small",
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

    How they are computed, with alpha, sigma, and r = SNR_t / SNR_s, q = 1 - r = b_ts / sigma_t^2
    from the log-SNR: c0 = alpha_s q, ct = (sigma_s / sigma_t) sqrt(r), var = sigma_s^2 q (small)
    or sigma_t^2 q (large).

    Args:
        denoiser: ``denoiser(x_t [M, *E], t [M] long, **cond) -> [M, *E]``; ``t`` is a stride-0
            view of one step (see :class:`~diffsample.prediction.Denoiser`).
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
    check_choice("variance", variance, Variance)
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
    coef: list[tuple[float, float, float]] = []  # (c0, ct, std) per step but the last
    for i in range(len(w) - 1):
        (r, q), s_t, s_s = w.snr_ratio(i), w.sigma[i], w.sigma[i + 1]
        std = (s_s if variance == "small" else s_t) * math.sqrt(q)
        coef.append((w.alpha[i + 1] * q, s_s / s_t * math.sqrt(r), std))
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

    How they are computed (r, q as in :func:`sample_ddpm`): sigma = eta sigma_s sqrt(q) and
    sqrt(1 - a_s - sigma^2) = sigma_s sqrt((1 - eta^2) + eta^2 r), a sum of two non-negative
    terms for eta <= 1 (no cancellation), clamped at 0 for eta > 1.

    Returns:
        The sample ``[M, *E]``.
    """
    eta = check_number("eta", eta, minimum=0)
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
    coef: list[tuple[float, float, float]] = []  # (c_x0, c_eps, sigma) per step but the last
    for i in range(len(w) - 1):
        (r, q), s_s = w.snr_ratio(i), w.sigma[i + 1]
        keep = max((1.0 - eta**2) + eta**2 * r, 0.0)  # share of sigma_s^2 carried by eps
        coef.append((w.alpha[i + 1], s_s * math.sqrt(keep), eta * s_s * math.sqrt(q)))
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

    With half log-SNR l = log(alpha / sigma) = lambda / 2, h = l_s - l_t and r = h_prev / h:
    x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) D, where D = x0 on the first step and
    D = (1 + 1 / (2r)) x0 - (1 / (2r)) x0_prev after it. The final step to clean data is first
    order (sigma_s = 0), which returns x0. Deterministic; ``generator`` and ``noise_sampler``
    are accepted for a uniform signature and unused.

    Returns:
        The sample ``[M, *E]``.
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
    half = [0.5 * lam for lam in w.lam]  # [K + 1] half log-SNR; the last is +inf (unused)
    coef: list[tuple[float, float, float, float]] = []  # (sigma ratio, phi, w_cur, w_prev)
    for i in range(len(w) - 1):
        h = half[i + 1] - half[i]
        ratio, phi = w.sigma[i + 1] / w.sigma[i], -w.alpha[i + 1] * math.expm1(-h)
        if i == 0:
            coef.append((ratio, phi, 1.0, 0.0))
        else:
            half_inv_r = 0.5 * h / (half[i] - half[i - 1])
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


def sample_dpmpp_3m(
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
    """DPM-Solver++(3M) (Lu et al., 2022), the multistep third-order data-prediction solver.

    With half log-SNR l = log(alpha / sigma), h = l_s - l_t, the two previous step sizes
    h0 = l_t - l_prev, h1 = l_prev - l_prev2, r0 = h0 / h, r1 = h1 / h and the x0 estimates
    m0 (now), m1, m2 (the two steps before):
    D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
    D2 = (D1_0 - D1_1) / (r0 + r1), and
    x_s = (sigma_s / sigma_t) x_t + alpha_s (phi1 m0 + phi2 D1 - phi3 D2) with
    phi1 = -expm1(-h), phi2 = expm1(-h) / h + 1, phi3 = (expm1(-h) + h) / h^2 - 1/2
    (the form of diffusers' ``DPMSolverMultistepScheduler`` with ``solver_order=3``,
    ``lower_order_final=False``: below 15 steps its default drops the step before the last to
    second order, which this sampler does not). The first
    step is first order, the second is :func:`sample_dpmpp_2m`'s, and the final step to clean
    data returns x0 (first order, sigma_s = 0). Deterministic; ``generator`` and
    ``noise_sampler`` are accepted for a uniform signature and unused.

    Returns:
        The sample ``[M, *E]``.
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
        name="dpmpp_3m",
    )
    half = [0.5 * lam for lam in w.lam]  # [K + 1] half log-SNR; the last is +inf (unused)
    coef: list[tuple[float, float, float, float]] = []  # (sigma ratio, w_m0, w_m1, w_m2)
    for i in range(len(w) - 1):
        h = half[i + 1] - half[i]
        ratio, a_s = w.sigma[i + 1] / w.sigma[i], w.alpha[i + 1]
        phi1 = -math.expm1(-h)
        if i == 0:
            coef.append((ratio, a_s * phi1, 0.0, 0.0))
        elif i == 1:
            half_inv_r = 0.5 * h / (half[i] - half[i - 1])
            coef.append((ratio, a_s * phi1 * (1 + half_inv_r), -a_s * phi1 * half_inv_r, 0.0))
        else:
            r0, r1 = (half[i] - half[i - 1]) / h, (half[i - 1] - half[i - 2]) / h
            phi2 = math.expm1(-h) / h + 1
            phi3 = (math.expm1(-h) + h) / h**2 - 0.5
            # D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1 as weights on (m0, m1, m2)
            d10, d11 = (1 / r0, -1 / r0, 0.0), (0.0, 1 / r1, -1 / r1)
            k = r0 / (r0 + r1)
            d1 = [a + k * (a - b) for a, b in zip(d10, d11, strict=True)]
            d2 = [(a - b) / (r0 + r1) for a, b in zip(d10, d11, strict=True)]
            m = [
                phi1 * (j == 0) + phi2 * u - phi3 * v
                for j, (u, v) in enumerate(zip(d1, d2, strict=True))
            ]
            coef.append((ratio, a_s * m[0], a_s * m[1], a_s * m[2]))
    x = w.x
    m1: torch.Tensor | None = None  # x0 estimate of the previous step
    m2: torch.Tensor | None = None  # ... and of the one before
    for i in range(len(w)):
        x0, _ = w.model(x, i)
        if i == len(w) - 1:
            x = x0
        else:
            ratio, c0, c1, c2 = coef[i]
            x = ratio * x + c0 * x0
            if m1 is not None:  # c1 = 0 on the first step
                x = x + c1 * m1
            if m2 is not None:  # c2 = 0 on the first two
                x = x + c2 * m2
        m1, m2 = x0, m1
        w.done(i, x, x0)
    return x


SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
}


def _sync_forbidden(x: torch.Tensor) -> bool:
    """True where a host-device sync must not happen (host-side queries only): while a CUDA
    graph captures on the current stream, or with ``torch.cuda.set_sync_debug_mode("error")``
    (the graph warm-up, or a user hunting syncs). sample_many feeds such loops keyed noise,
    finite by construction, so the input check is skipped there."""
    if not x.is_cuda:
        return False
    return torch.cuda.is_current_stream_capturing() or torch.cuda.get_sync_debug_mode() == 2


def grid_coefficients(
    schedule: NoiseSchedule, t: list[int]
) -> tuple[list[float], list[float], list[float]]:
    """(alpha, sigma, log-SNR) of grid ``t`` plus the terminal t = -1, as host floats ``[K + 1]``.

    One evaluation of ``NoiseSchedule.alpha_sigma`` / ``log_snr`` in float64 and one copy to
    the host: the samplers take every per-step coefficient from here.
    """
    tt = torch.tensor([*t, -1], dtype=torch.long)  # [K + 1]
    alpha, sigma = schedule.alpha_sigma(tt)
    a, s, lam = torch.stack([alpha, sigma, schedule.log_snr(tt)]).cpu().tolist()  # [3, K + 1]
    return a, s, lam


def check_grid(timesteps: object, T: int) -> list[int]:
    """The grid ``timesteps`` as host ints ``[K]``, if it is a strictly descending 1-D integer
    tensor with values in 0..T-1 (one copy to the host, before any loop)."""
    timesteps = check_tensor("timesteps", timesteps)
    if timesteps.is_floating_point():
        raise TypeError(
            expected("timesteps", "an integer tensor from schedule.timesteps(num_steps)", timesteps)
        )
    if timesteps.ndim != 1 or timesteps.numel() < 1:
        raise ValueError(
            expected("timesteps", "a 1-D tensor from schedule.timesteps(num_steps)", timesteps)
        )
    t = timesteps.detach().cpu().tolist()
    if min(t) < 0 or max(t) > T - 1:
        raise ValueError(
            f"timesteps: expected values in 0..{T - 1} (the schedule's T - 1), got {min(t)}..{max(t)}"
        )
    if any(b >= a for a, b in itertools.pairwise(t)):
        shown = f"{t[:8]}{'...' if len(t) > 8 else ''}"
        raise ValueError(f"timesteps: expected a strictly descending grid, got {shown}")
    return t
