"""The one place where eps / x0 / v parameterisations are converted.

With x_t = alpha * x0 + sigma * eps (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)):

    eps-prediction:  x0 = (x_t - sigma * eps) / alpha
    x0-prediction:   eps = (x_t - alpha * x0) / sigma
    v-prediction:    v = alpha * eps - sigma * x0   =>   x0 = alpha * x_t - sigma * v,
                                                        eps = sigma * x_t + alpha * v

Dimensions: M rows, E event shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, Protocol, cast

import torch

from ._utils import check_choice, check_number, expected

__all__ = [
    "ClipEps",
    "Denoiser",
    "DynamicThreshold",
    "Prediction",
    "PreparesCond",
    "autocast_denoiser",
    "check_prediction",
    "to_x0_eps",
    "training_target",
]

Prediction = Literal["eps", "x0", "v"]
# After an x0 clip, which eps the update's direction term uses: "raw" keeps the network's eps
# (diffusers' DDIMScheduler default, use_clipped_model_output=False; the DDIM authors' code),
# "rederive" takes eps = (x_t - alpha * x0_clipped) / sigma (guided-diffusion; diffusers'
# use_clipped_model_output=True). Only samplers whose update uses eps (DDIM) tell them apart.
ClipEps = Literal["raw", "rederive"]
Scalar = float | torch.Tensor  # a Python float or a tensor broadcastable to [M, *E]


class Denoiser(Protocol):
    """``denoiser(x_t [M, *E], t [M] long, **cond) -> [M, *E]``: eps, x0 or v, as declared.

    ``t`` is read-only. The samplers pass one step for all rows as a stride-0 view
    (``torch.full((1,), t).expand(M)``), so a denoiser may test ``t.stride(0) == 0`` (host
    metadata, no device sync) and compute what depends on the step alone once, from ``t[:1]``,
    then broadcast it over the M rows. A ``t`` with ``stride(0) != 0`` (training, or another
    caller) may hold a different step per row.
    """

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor: ...


class PreparesCond(Protocol):
    """The optional per-condition hook: a denoiser with ``prepare_cond(**cond) -> dict``.

    :func:`diffsample.sample_many` calls it once on the B raw conditions (each tensor
    ``[B, ...]``) before chunking, under the same ``no_grad``/autocast as the denoiser, and
    then gathers the *prepared* tensors per chunk (each must keep the leading dimension B)
    and passes them to the denoiser instead of the raw ``cond``. Work that depends on the
    condition alone (projecting z, attention keys and values of z) then runs once per
    condition instead of once per row per step. The denoiser must accept the prepared
    keywords; a caller without the hook (training) keeps passing the raw ones.
    """

    def prepare_cond(self, **cond: Any) -> dict[str, Any]: ...


class _Autocast:
    """A denoiser that runs under ``torch.autocast(device_type, dtype)`` and answers in the
    dtype of its input x_t; ``prepare_cond`` (when the wrapped denoiser has it) runs under the
    same autocast. Only the network sees the low precision: the sampler's update arithmetic,
    x and the schedule coefficients stay outside it, in the sample dtype."""

    def __init__(self, denoiser: Denoiser, device_type: str, dtype: torch.dtype) -> None:
        self.denoiser, self.device_type, self.dtype = denoiser, device_type, dtype
        if callable(getattr(denoiser, "prepare_cond", None)):
            self.prepare_cond = self._prepare_cond

    def _context(self) -> torch.autocast:
        # cache_enabled=False: each call is its own autocast region (nothing to reuse), and a
        # cached weight cast must not outlive a CUDA graph capture
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        with self._context():
            out = self.denoiser(x_t, t, **cond)
        return out.to(x_t.dtype) if isinstance(out, torch.Tensor) else out

    def _prepare_cond(self, **cond: Any) -> dict[str, Any]:
        with self._context():
            return cast(PreparesCond, self.denoiser).prepare_cond(**cond)


def autocast_denoiser(denoiser: Denoiser, device_type: str, dtype: torch.dtype | None) -> Denoiser:
    """``denoiser`` run under ``torch.autocast(device_type, dtype)``, its output cast back to
    x_t's dtype before any conversion (``dtype=None``: the denoiser unchanged).

    The one place mixed-precision sampling is applied: :func:`diffsample.sample_many`'s
    ``autocast=`` wraps the denoiser with it, so only the network runs in bf16/fp16 while x,
    the update arithmetic and the coefficients stay in the sample dtype (bf16 would round
    alpha_bar near 1 to exactly 1).
    """
    if dtype is None:
        return denoiser
    return _Autocast(denoiser, device_type, dtype)


@dataclasses.dataclass(frozen=True)
class DynamicThreshold:
    """Imagen's dynamic thresholding (Saharia et al., 2022) of each row's x0 estimate.

    Per row: s = the ``ratio`` quantile of |x0| over the row's elements, clamped to
    [1, ``max_value``]; then x0 -> clamp(x0, -s, s) / s. The same rule as diffusers'
    ``_threshold_sample`` (``thresholding=True``, ``dynamic_thresholding_ratio``,
    ``sample_max_value``). Pass it as ``clip_x0=DynamicThreshold(...)``; rows are samples, so
    the result does not depend on the chunking.

    Attributes:
        ratio: the quantile in (0, 1].
        max_value: the largest threshold s, >= 1.
    """

    ratio: float = 0.995
    max_value: float = 1.0

    def __post_init__(self) -> None:
        check_number("ratio", self.ratio, minimum=0, maximum=1, open_min=True)
        check_number("max_value", self.max_value, minimum=1)

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 ``[M, *E]`` thresholded row by row (the quantile in float32 at least)."""
        flat = x0.reshape(x0.shape[0], -1)  # [M, P]
        work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        s = torch.quantile(work.abs(), self.ratio, dim=1, keepdim=True)  # [M, 1]
        s = s.clamp(1.0, self.max_value).to(flat.dtype)
        return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape)


Clip = float | DynamicThreshold  # a static bound c (clamp to [-c, c]) or a dynamic threshold


def check_clip(clip_x0: object, clip_eps: object, *, uses_eps: bool) -> tuple[Clip | None, ClipEps]:
    """(clip_x0, clip_eps) checked: clip_x0 None, a number > 0 or a :class:`DynamicThreshold`;
    clip_eps None, "raw" or "rederive". A sampler whose update uses eps (``uses_eps``, DDIM)
    needs clip_eps with a clip: the two conventions give different samples there, so the caller
    must say which. Elsewhere (x0-only updates: DDPM, DPM-Solver++) both give the same samples."""
    if clip_eps is not None:
        clip_eps = check_choice("clip_eps", clip_eps, ClipEps)
    if clip_x0 is None:
        return None, cast(ClipEps, clip_eps or "raw")
    if not isinstance(clip_x0, DynamicThreshold):
        clip_x0 = check_number("clip_x0", clip_x0, minimum=0, open_min=True)
    if clip_eps is None and uses_eps:
        raise ValueError(
            "clip_eps: expected 'raw' or 'rederive' with clip_x0 set, got None: after the clip, "
            "'raw' keeps the network's eps in the update (diffusers' DDIMScheduler default, the "
            "DDIM authors' code), 'rederive' recomputes eps from the clipped x0 (guided-diffusion)"
        )
    return clip_x0, cast(ClipEps, clip_eps or "raw")


def clip_x0_estimate(x0: torch.Tensor, clip: Clip) -> torch.Tensor:
    """``x0 [M, *E]`` clamped to [-clip, clip] (a number) or dynamically thresholded."""
    if isinstance(clip, DynamicThreshold):
        return clip(x0)
    return x0.clamp(-clip, clip)


def check_prediction(prediction: object) -> Prediction:
    """``prediction`` if it is one of "eps", "x0", "v"; TypeError for a non-string, ValueError
    for another string."""
    return cast(Prediction, check_choice("prediction", prediction, Prediction))


def to_x0_eps(
    out: torch.Tensor, x_t: torch.Tensor, alpha: Scalar, sigma: Scalar, prediction: Prediction
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a denoiser output to the pair (x0 estimate, eps estimate).

    Args:
        out: the denoiser's output ``[M, *E]``, of the kind ``prediction`` declares.
        x_t: its input ``[M, *E]``.
        alpha: the coefficient of x0 in x_t (a float or a tensor broadcastable to ``[M, *E]``).
        sigma: the coefficient of the noise in x_t (likewise).
        prediction: "eps", "x0" or "v".

    Returns:
        (x0, eps), each ``[M, *E]``.
    """
    prediction = check_prediction(prediction)
    if prediction == "eps":
        return (x_t - sigma * out) / alpha, out
    if prediction == "x0":
        return out, (x_t - alpha * out) / sigma
    return alpha * x_t - sigma * out, sigma * x_t + alpha * out  # "v"


def training_target(
    x0: torch.Tensor, noise: torch.Tensor, alpha: Scalar, sigma: Scalar, prediction: Prediction
) -> torch.Tensor:
    """What a denoiser declared as ``prediction`` should output for x_t = alpha * x0 + sigma * noise.

    Args:
        x0: clean data ``[M, *E]``.
        noise: the noise ``[M, *E]`` that made x_t.
        alpha: the coefficient of x0 in x_t (from ``NoiseSchedule.alpha_sigma``).
        sigma: the coefficient of the noise in x_t (likewise).
        prediction: "eps", "x0" or "v".

    Returns:
        The target ``[M, *E]``.
    """
    prediction = check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return alpha * noise - sigma * x0  # "v"


def check_output(out: Any, x: torch.Tensor) -> torch.Tensor:
    """The denoiser's answer for input ``x [M, *E]``: a tensor of the same shape, or an object
    whose ``sample`` attribute is one (diffusers' ``UNet1DOutput``, ``UNet2DOutput``, ...),
    taken from there. TypeError for anything else, ValueError for another shape."""
    want = f"an output of shape {tuple(x.shape)} (the input x_t [M, *event_shape])"
    if not isinstance(out, torch.Tensor):
        sample = getattr(out, "sample", None)
        if not isinstance(sample, torch.Tensor):
            raise TypeError(
                expected("denoiser", want + " as a tensor or an object with a tensor .sample", out)
            )
        out = sample
    if out.shape != x.shape:
        raise ValueError(
            expected("denoiser", want, out)
            + "; check event_shape against what the denoiser returns"
        )
    return out


def predict_x0_eps(
    denoiser: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    alpha: float,
    sigma: float,
    *,
    prediction: Prediction,
    cond: Mapping[str, Any] | None,
    clip_x0: Clip | None,
    clip_eps: ClipEps = "raw",
    prior_mean: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoiser call, checked and converted to (x0, eps), each ``[M, *E]``.

    ``x [M, *E]`` and ``t [M]`` go to the denoiser with ``cond``; ``alpha``, ``sigma`` are the
    coefficients of x at t. With a prior mean mu ``[M, *E]`` (CARD-style models, x_T ~ N(mu,
    I)), x is the offset from mu: the denoiser sees ``x + mu``, an x0-predicting denoiser's
    answer is taken as data and offset by mu, and the returned x0 is the offset too (so the
    samplers run unchanged on x - mu). With ``clip_x0`` the x0 estimate is clipped in data
    space; ``clip_eps`` then says which eps is returned: "raw", the network's (converted),
    or "rederive", the one consistent with the clipped x0.
    """
    x_in = x if prior_mean is None else x + prior_mean
    # a denoiser under autocast may answer in bf16/fp16: back to the sample dtype
    out = check_output(denoiser(x_in, t, **(cond or {})), x).to(x.dtype)
    if prior_mean is not None and prediction == "x0":
        out = out - prior_mean
    x0, eps = to_x0_eps(out, x, alpha, sigma, prediction)
    if clip_x0 is not None:
        if prior_mean is None:
            x0 = clip_x0_estimate(x0, clip_x0)
        else:
            x0 = clip_x0_estimate(x0 + prior_mean, clip_x0) - prior_mean
        if clip_eps == "rederive":
            eps = (x - alpha * x0) / sigma
    return x0, eps
