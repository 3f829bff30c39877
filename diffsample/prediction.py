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
from typing import Any, Literal, Protocol, Union

import torch

__all__ = ["Denoiser", "Prediction", "check_prediction", "to_x0_eps", "training_target"]

Prediction = Literal["eps", "x0", "v"]
_PREDICTIONS = ("eps", "x0", "v")
Scalar = Union[float, torch.Tensor]  # a Python float or a tensor broadcastable to [M, *E]


class Denoiser(Protocol):
    """``denoiser(x_t [M, *E], t [M] long, **cond) -> [M, *E]``: eps, x0 or v, as declared."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor: ...


def check_prediction(prediction: str) -> str:
    """Return ``prediction`` if it is one of "eps", "x0", "v"; raise ValueError otherwise."""
    if prediction not in _PREDICTIONS:
        raise ValueError(
            f"prediction: unknown prediction type {prediction!r}; expected one of {list(_PREDICTIONS)}"
        )
    return prediction


def to_x0_eps(
    out: torch.Tensor, x_t: torch.Tensor, alpha: Scalar, sigma: Scalar, prediction: Prediction
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a denoiser output to the pair (x0 estimate, eps estimate)."""
    if prediction == "eps":
        return (x_t - sigma * out) / alpha, out
    if prediction == "x0":
        return out, (x_t - alpha * out) / sigma
    if prediction == "v":
        return alpha * x_t - sigma * out, sigma * x_t + alpha * out
    raise ValueError(
        f"prediction: unknown prediction type {prediction!r}; expected one of {list(_PREDICTIONS)}"
    )


def training_target(
    x0: torch.Tensor, noise: torch.Tensor, alpha: Scalar, sigma: Scalar, prediction: Prediction
) -> torch.Tensor:
    """What a denoiser declared as ``prediction`` should output for x_t = alpha * x0 + sigma * noise."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * noise - sigma * x0
    raise ValueError(
        f"prediction: unknown prediction type {prediction!r}; expected one of {list(_PREDICTIONS)}"
    )


def check_output(out: Any, x: torch.Tensor) -> torch.Tensor:
    """The denoiser's answer for input ``x [M, *E]``, which must be a tensor of the same shape."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"denoiser: expected an output of shape {tuple(x.shape)} (the input x_t [M, *event_shape]), got {got}; "
            "check event_shape against what the denoiser returns"
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
    """One denoiser call, checked and converted to (x0, eps); optionally clamps x0 to [-clip_x0, clip_x0]
    and re-derives eps from the clamped x0 so the two stay consistent."""
    out = check_output(denoiser(x, t, **(cond or {})), x).to(
        x.dtype
    )  # a denoiser under autocast may answer in bf16/fp16
    x0, eps = to_x0_eps(out, x, alpha, sigma, prediction)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - alpha * x0) / sigma
    return x0, eps
