"""The one place where eps / x0 / v parameterisations are converted.

With x_t = alpha * x0 + sigma * eps (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)):

    eps-prediction:  x0 = (x_t - sigma * eps) / alpha
    x0-prediction:   eps = (x_t - alpha * x0) / sigma
    v-prediction:    v = alpha * eps - sigma * x0   =>   x0 = alpha * x_t - sigma * v,
                                                        eps = sigma * x_t + alpha * v

Dimensions: M rows, E event shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, cast

import torch

from ._utils import check_choice, expected

__all__ = ["Denoiser", "Prediction", "check_prediction", "to_x0_eps", "training_target"]

Prediction = Literal["eps", "x0", "v"]
Scalar = float | torch.Tensor  # a Python float or a tensor broadcastable to [M, *E]


class Denoiser(Protocol):
    """``denoiser(x_t [M, *E], t [M] long, **cond) -> [M, *E]``: eps, x0 or v, as declared."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor: ...


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
        alpha, sigma: the coefficients of x_t (floats or tensors broadcastable to ``[M, *E]``).
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
        alpha, sigma: the coefficients of x_t (from ``NoiseSchedule.alpha_sigma``).
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
    """The denoiser's answer for input ``x [M, *E]``, which must be a tensor of the same shape
    (TypeError for a non-tensor, ValueError for another shape)."""
    want = f"an output of shape {tuple(x.shape)} (the input x_t [M, *event_shape])"
    if not isinstance(out, torch.Tensor):
        raise TypeError(expected("denoiser", want + " as a tensor", out))
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
    clip_x0: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoiser call, checked and converted to (x0, eps), each ``[M, *E]``.

    ``x [M, *E]`` and ``t [M]`` go to the denoiser with ``cond``; ``alpha``, ``sigma`` are the
    coefficients of x at t. With ``clip_x0``, x0 is clamped to [-clip_x0, clip_x0] and eps
    re-derived from the clamped x0 so the two stay consistent.
    """
    # a denoiser under autocast may answer in bf16/fp16: back to the sample dtype
    out = check_output(denoiser(x, t, **(cond or {})), x).to(x.dtype)
    x0, eps = to_x0_eps(out, x, alpha, sigma, prediction)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - alpha * x0) / sigma
    return x0, eps
