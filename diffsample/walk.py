"""The grid walk every sampler shares: the checked inputs of one sampler call, the per-step
coefficients, the denoiser call, the known values, the callback and the progress bar, and the
loop (:meth:`Walk.run`) that calls a sampler's own update between them.

Dimensions: M rows, E event shape, K sampling steps, T train steps.

The grid ``t`` ``[K]`` is walked in explicit pairs (t_i, t_{i+1}) and then one final step from
its last entry to the clean data (t = -1), which returns the x0 estimate itself; the previous
step is never derived by arithmetic. Coefficients are host floats from one float64 evaluation
of the schedule; the loop makes no host-device synchronisation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch

from ._utils import check_finite, check_tensor, expected, progress_bar
from .noise import NoiseSampler
from .prediction import Clip, ClipEps, Denoiser, check_clip, check_prediction, predict_x0_eps
from .schedules import NoiseSchedule

__all__ = ["Callback", "Prev", "Update", "Walk", "check_grid", "grid_coefficients"]

Callback = Callable[[dict[str, Any]], None]  # receives {"i", "t", "t_next", "x", "x0"} per step
# update(i, x [M, *E], x0 [M, *E], eps [M, *E], prev) -> x at t_{i+1} [M, *E]: one sampler's
# step from t_i to t_{i+1} (never the final one); prev holds earlier steps' x0, newest first
Prev = tuple[torch.Tensor, ...]
Update = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, Prev], torch.Tensor]
# known values (values [M, *E], bool mask [M, *E]), as samplers.Known
KnownPair = tuple[torch.Tensor, torch.Tensor]


class Walk:
    """One sampler call's checked inputs, its grid and per-step coefficients (host floats),
    and the loop every sampler runs (:meth:`run`), which calls the sampler's own update.

    With a prior mean mu the walk runs on the offset x - mu (CARD: q(x_t | x_0) = N(alpha_t x_0
    + (1 - alpha_t) mu, sigma_t^2 I) is the usual forward process of x - mu), so every sampler
    works unchanged; ``finish`` adds mu back and ``done`` shows the callback data-space values.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        schedule: NoiseSchedule,
        timesteps: torch.Tensor,
        *,
        cond: Mapping[str, Any] | None,
        prediction: str,
        clip_x0: Clip | None,
        clip_eps: ClipEps | None,
        prior_mean: torch.Tensor | None,
        known: KnownPair | None,
        generator: torch.Generator | None,
        noise_sampler: NoiseSampler | None,
        callback: Callback | None,
        progress: bool | None,
        name: str,
        uses_eps: bool = False,
    ) -> None:
        check_tensor("x", x, floating=True)
        if x.ndim < 1:
            raise ValueError(expected("x", "a tensor [M, *event_shape]", x))
        sync_ok = not _sync_forbidden(x)
        if sync_ok:  # one sync, before the loop
            check_finite("x", x)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(expected("schedule", "a NoiseSchedule", schedule))
        self.clip_x0, self.clip_eps = check_clip(clip_x0, clip_eps, uses_eps=uses_eps)
        if cond is not None and not isinstance(cond, Mapping):
            raise TypeError(
                expected("cond", "a mapping of keyword arguments for the denoiser", cond)
            )
        self.t = check_grid(timesteps, schedule.num_train_steps)  # [K] host ints
        self.t_next = [*self.t[1:], -1]
        # [K + 1] each; the last entry is t = -1, the clean data (alpha 1, sigma 0, lambda +inf)
        self.alpha, self.sigma, self.lam = grid_coefficients(schedule, self.t)
        self.mu = _rows_like("prior_mean", prior_mean, x, check=sync_ok)  # [M, *E] or None
        self.known = _check_known(known, x, self.mu, check=sync_ok)  # (values - mu, mask)
        self.denoiser, self.cond = denoiser, cond
        self.x = x if self.mu is None else x - self.mu  # [M, *E], the walk's state
        self.prediction = check_prediction(prediction)
        self.generator, self.noise_sampler, self.callback = generator, noise_sampler, callback
        self.bar = progress_bar(total=len(self.t), desc=name, unit="step", progress=progress)

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
            clip_eps=self.clip_eps,
            prior_mean=self.mu,
        )

    def noise(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.noise_sampler is not None:
            return self.noise_sampler(i).to(device=x.device, dtype=x.dtype)
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def impose(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """x at step i with the known values, forward-noised to t_i, in place of its own."""
        if self.known is None:
            return x
        values, mask = self.known
        noisy = self.alpha[i] * values + self.sigma[i] * self.noise(x, -2 - i)  # [M, *E]
        return torch.where(mask, noisy.to(x.dtype), x)

    def run(self, update: Update, *, history: int = 0) -> torch.Tensor:
        """The loop every sampler shares: at each step i the known values imposed, one
        denoiser call, ``update`` to t_{i+1} (the final step returns the x0 estimate itself),
        the callback and the progress bar; then the sample in data space ``[M, *E]``.

        Args:
            update: the sampler's step (see ``Update``); ``prev`` holds the x0 estimates of up
                to ``history`` earlier steps, newest first (fewer on the first steps).
            history: how many earlier x0 estimates a multistep solver reads.
        """
        x, prev = self.x, cast(Prev, ())
        last = len(self.t) - 1
        for i in range(len(self.t)):
            x = self.impose(x, i)
            x0, eps = self.model(x, i)
            x = x0 if i == last else update(i, x, x0, eps, prev)  # [M, *E] at t_{i+1}
            prev = (x0, *prev)[:history]
            self.done(i, x, x0)
        return self.finish(x)

    def done(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if self.callback is not None:
            if self.mu is not None:  # the callback sees data, not the walk's offset
                x, x0 = x + self.mu, x0 + self.mu
            self.callback({"i": i, "t": self.t[i], "t_next": self.t_next[i], "x": x, "x0": x0})
        self.bar.update(1)
        if i == len(self.t) - 1:
            self.bar.close()

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The sample in data space: the known values where known, mu added back."""
        if self.known is not None:
            values, mask = self.known
            x = torch.where(mask, values.to(x.dtype), x)
        return x if self.mu is None else x + self.mu


def _rows_like(
    name: str, v: torch.Tensor | None, x: torch.Tensor, *, check: bool
) -> torch.Tensor | None:
    """``v`` checked to broadcast to x's shape ``[M, *E]`` (finite if ``check``), on x's device."""
    if v is None:
        return None
    if name != "known.mask":  # the mask is bool, checked by the caller
        check_tensor(name, v, floating=True)
    # by hand: torch.broadcast_shapes imports torch.fx on its first call (~1 s)
    fits = v.ndim <= x.ndim and all(
        a in (1, b) for a, b in zip(v.shape[::-1], x.shape[::-1], strict=False)
    )
    if not fits:
        raise ValueError(expected(name, f"a tensor broadcastable to x's {tuple(x.shape)}", v))
    v = v.to(x.device)
    if check and v.is_floating_point():
        check_finite(name, v)
    return v


def _check_known(
    known: object, x: torch.Tensor, mu: torch.Tensor | None, *, check: bool
) -> KnownPair | None:
    """``known`` as (values - mu, bool mask), both broadcastable to x ``[M, *E]``."""
    if known is None:
        return None
    if not (isinstance(known, tuple) and len(known) == 2):
        raise TypeError(expected("known", "Known(values, mask), a pair of tensors", known))
    values, mask = known
    if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool):
        raise TypeError(expected("known.mask", "a bool tensor (True where known)", mask))
    values = cast(torch.Tensor, _rows_like("known.values", values, x, check=False))
    mask = cast(torch.Tensor, _rows_like("known.mask", mask, x, check=False))
    if check:  # only the known positions need be finite (the rest is never read)
        check_finite("known.values", torch.where(mask, values, 0.0))
    values = torch.where(mask, values, 0.0)  # [M, *E]: NaN placeholders never reach x
    return (values if mu is None else values - mu, mask)


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
