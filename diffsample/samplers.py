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

import math
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

import torch

from ._utils import check_choice, check_number
from .noise import NoiseSampler
from .prediction import Clip, ClipEps, Denoiser, Prediction
from .schedules import NoiseSchedule

# check_grid and grid_coefficients lived here and still import from here
from .walk import Callback, Prev, Walk, check_grid, grid_coefficients  # noqa: F401

__all__ = [
    "SAMPLERS",
    "Known",
    "Sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
]

Variance = Literal["small", "large"]


class Known(NamedTuple):
    """Known values of the data (imputation, inpainting), re-imposed at every step.

    Before the denoiser call at step i (timestep t_i) the known positions of x are replaced by
    the forward-noised known values ``alpha_t values + sigma_t z`` with fresh noise z (RePaint,
    Lugmayr et al. 2022; CSDI's unconditional imputation); the final sample holds the values
    themselves there. z comes from ``noise_sampler(-2 - i)`` when a noise sampler is given
    (``sample_many``'s keyed noise), else from ``generator``.

    Attributes:
        values: ``[M, *E]`` (or broadcastable) data values; only the masked positions are read.
        mask: ``[M, *E]`` (or broadcastable) bool, True where the value is known.
    """

    values: torch.Tensor
    mask: torch.Tensor


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


def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    prediction: Prediction = "eps",
    variance: Variance = "small",
    clip_x0: Clip | None = None,
    clip_eps: ClipEps | None = None,
    prior_mean: torch.Tensor | None = None,
    known: Known | None = None,
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
        clip_x0: a bound c (x0 estimates clamped to [-c, c]) or a
            :class:`~diffsample.prediction.DynamicThreshold`; off by default. The update uses
            x0 and x_t only, never eps, so ``clip_eps`` makes no difference here.
        clip_eps: "raw" or "rederive": which eps a sampler that uses eps takes after the clip
            (see :data:`~diffsample.prediction.ClipEps`); accepted here for a uniform signature.
        prior_mean: mu ``[M, *E]`` (or broadcastable) of a CARD-style model, whose forward
            process is x_t = alpha_t x0 + (1 - alpha_t) mu + sigma_t eps and prior x_T ~ N(mu, I):
            then ``x`` is x_T (noise plus mu), the denoiser sees data-space x_t, and the walk
            runs on x - mu (for which the usual posterior holds). None: mu = 0.
        known: :class:`Known` values and mask, re-imposed at every step (imputation).
        generator: for the per-step noise when ``noise_sampler`` is None.
        noise_sampler: ``noise_sampler(i) -> [M, *E]`` standard normal noise for step i (and,
            with ``known``, ``noise_sampler(-2 - i)`` for the known values' forward noise).
        callback: called after each step with {"i", "t", "t_next", "x", "x0"}.
        progress: None: a bar when stderr is a terminal; True: also a line every 30 s off a
            terminal; False: never.

    Returns:
        The sample ``[M, *E]``.
    """
    check_choice("variance", variance, Variance)
    w = Walk(
        denoiser,
        x,
        schedule,
        timesteps,
        cond=cond,
        prediction=prediction,
        clip_x0=clip_x0,
        clip_eps=clip_eps,
        prior_mean=prior_mean,
        known=known,
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

    def update(
        i: int, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, prev: Prev
    ) -> torch.Tensor:
        c0, ct, std = coef[i]
        return c0 * x0 + ct * x + std * w.noise(x, i)

    return w.run(update)  # the final step returns x0: the posterior mean at a_s = 1


def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    prediction: Prediction = "eps",
    eta: float = 0.0,
    clip_x0: Clip | None = None,
    clip_eps: ClipEps | None = None,
    prior_mean: torch.Tensor | None = None,
    known: Known | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """DDIM (Song et al., 2021); ``eta=0`` is deterministic, ``eta=1`` matches DDPM's beta-tilde.

    x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z, with
    sigma = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s). The final step returns x0.
    Arguments as in :func:`sample_ddpm`, plus ``eta >= 0``. The update uses eps: with
    ``clip_x0`` set, ``clip_eps`` must say which one, "raw" (the network's, as the DDIM authors'
    code and diffusers' ``DDIMScheduler`` default) or "rederive" (recomputed from the clipped
    x0, as guided-diffusion and diffusers' ``use_clipped_model_output=True``).

    How they are computed (r, q as in :func:`sample_ddpm`): sigma = eta sigma_s sqrt(q) and
    sqrt(1 - a_s - sigma^2) = sigma_s sqrt((1 - eta^2) + eta^2 r), a sum of two non-negative
    terms for eta <= 1 (no cancellation), clamped at 0 for eta > 1.

    Returns:
        The sample ``[M, *E]``.
    """
    eta = check_number("eta", eta, minimum=0)
    w = Walk(
        denoiser,
        x,
        schedule,
        timesteps,
        cond=cond,
        prediction=prediction,
        clip_x0=clip_x0,
        clip_eps=clip_eps,
        prior_mean=prior_mean,
        known=known,
        generator=generator,
        noise_sampler=noise_sampler,
        callback=callback,
        progress=progress,
        name="ddim",
        uses_eps=True,
    )
    coef: list[tuple[float, float, float]] = []  # (c_x0, c_eps, sigma) per step but the last
    for i in range(len(w) - 1):
        (r, q), s_s = w.snr_ratio(i), w.sigma[i + 1]
        keep = max((1.0 - eta**2) + eta**2 * r, 0.0)  # share of sigma_s^2 carried by eps
        coef.append((w.alpha[i + 1], s_s * math.sqrt(keep), eta * s_s * math.sqrt(q)))
    stochastic = eta > 0

    def update(
        i: int, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, prev: Prev
    ) -> torch.Tensor:
        c_x0, c_eps, sigma = coef[i]
        x = c_x0 * x0 + c_eps * eps
        return x + sigma * w.noise(x, i) if stochastic else x

    return w.run(update)


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    prediction: Prediction = "eps",
    clip_x0: Clip | None = None,
    clip_eps: ClipEps | None = None,
    prior_mean: torch.Tensor | None = None,
    known: Known | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022), the multistep second-order data-prediction solver.

    With half log-SNR l = log(alpha / sigma) = lambda / 2, h = l_s - l_t and r = h_prev / h:
    x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) D, where D = x0 on the first step and
    D = (1 + 1 / (2r)) x0 - (1 / (2r)) x0_prev after it. The final step to clean data is first
    order (sigma_s = 0), which returns x0. Deterministic: ``generator`` and ``noise_sampler``
    feed only the forward noise of ``known`` values. The update uses x0 and x_t only, never
    eps, so ``clip_eps`` makes no difference. Other arguments as in :func:`sample_ddpm`.

    Returns:
        The sample ``[M, *E]``.
    """
    w = Walk(
        denoiser,
        x,
        schedule,
        timesteps,
        cond=cond,
        prediction=prediction,
        clip_x0=clip_x0,
        clip_eps=clip_eps,
        prior_mean=prior_mean,
        known=known,
        generator=generator,
        noise_sampler=noise_sampler,
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

    def update(
        i: int, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, prev: Prev
    ) -> torch.Tensor:
        ratio, phi, w_cur, w_prev = coef[i]
        d = w_cur * x0 + w_prev * prev[0] if prev else x0  # prev[0]: the previous step's x0
        return ratio * x + phi * d

    return w.run(update, history=1)


def sample_dpmpp_3m(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    prediction: Prediction = "eps",
    clip_x0: Clip | None = None,
    clip_eps: ClipEps | None = None,
    prior_mean: torch.Tensor | None = None,
    known: Known | None = None,
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
    data returns x0 (first order, sigma_s = 0). Deterministic: ``generator`` and
    ``noise_sampler`` feed only the forward noise of ``known`` values. The update uses x0 and
    x_t only, never eps, so ``clip_eps`` makes no difference. Other arguments as in
    :func:`sample_ddpm`.

    Returns:
        The sample ``[M, *E]``.
    """
    w = Walk(
        denoiser,
        x,
        schedule,
        timesteps,
        cond=cond,
        prediction=prediction,
        clip_x0=clip_x0,
        clip_eps=clip_eps,
        prior_mean=prior_mean,
        known=known,
        generator=generator,
        noise_sampler=noise_sampler,
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
            m = _third_order_weights(h, r0, r1)
            coef.append((ratio, a_s * m[0], a_s * m[1], a_s * m[2]))

    def update(
        i: int, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, prev: Prev
    ) -> torch.Tensor:
        ratio, c0, *c_prev = coef[i]
        x = ratio * x + c0 * x0
        # prev = (m1, m2), the x0 estimates of the two steps before: none on the first step
        # (where c1 = 0), m1 only on the second (where c2 = 0)
        for c, m in zip(c_prev, prev, strict=False):
            x = x + c * m
        return x

    return w.run(update, history=2)


def _third_order_weights(h: float, r0: float, r1: float) -> list[float]:
    """The weights of (m0, m1, m2) in phi1 m0 + phi2 D1 - phi3 D2, the third-order step of
    :func:`sample_dpmpp_3m` (h, r0, r1 as there), before the factor alpha_s."""
    phi1 = -math.expm1(-h)
    phi2 = math.expm1(-h) / h + 1
    phi3 = (math.expm1(-h) + h) / h**2 - 0.5
    # D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1 as weights on (m0, m1, m2)
    d10, d11 = (1 / r0, -1 / r0, 0.0), (0.0, 1 / r1, -1 / r1)
    k = r0 / (r0 + r1)
    d1 = [a + k * (a - b) for a, b in zip(d10, d11, strict=True)]
    d2 = [(a - b) / (r0 + r1) for a, b in zip(d10, d11, strict=True)]
    return [
        phi1 * (j == 0) + phi2 * u - phi3 * v for j, (u, v) in enumerate(zip(d1, d2, strict=True))
    ]


SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
}
