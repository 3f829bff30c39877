"""Closed-form scores of parametric forecasts: the CRPS of a Gaussian.

Dimensions: E the broadcast shape of the operands (the result's shape).
"""

from __future__ import annotations

import math
import numbers

import torch

from diffsample._utils import check_tensor, describe, expected

from ._layout import compute_dtype

__all__ = ["crps_normal"]

_INV_SQRT_PI = 1 / math.sqrt(math.pi)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)  # 2 phi(0)


def _operand(name: str, value: object) -> torch.Tensor | float:
    """A real tensor or a real number (not a bool); TypeError for anything else."""
    if isinstance(value, torch.Tensor):
        return check_tensor(name, value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(expected(name, "a torch.Tensor or a real number", value))


def crps_normal(
    mu: torch.Tensor | float, sigma: torch.Tensor | float, obs: torch.Tensor | float
) -> torch.Tensor:
    """The CRPS of the normal distribution N(mu, sigma^2) at ``obs``, in closed form.

    Gneiting & Raftery (2007), with z = (obs - mu) / sigma, Phi and phi the standard normal
    CDF and density::

        CRPS(N(mu, sigma^2), y) = sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))

    evaluated as ``(y - mu) erf(z / sqrt(2)) + sigma (2 phi(z) - 1 / sqrt(pi))``: sigma never
    multiplies z, so a sigma small against |y - mu| (z overflowing to infinity) still gives
    |y - mu| - sigma / sqrt(pi), and 2 Phi(z) - 1 = erf(z / sqrt 2) loses nothing near z = 0.
    ``sigma = 0`` is the point mass at mu: the result is |y - mu| (the limit), with gradient
    sign(mu - y) with respect to mu and 0 with respect to sigma there.

    Elementwise and broadcasting, like ``crps``: reduce the result yourself. The same number as
    ``properscoring.crps_gaussian(obs, mu, sig)`` and scoringrules' ``crps_normal(obs, mu,
    sigma)`` (which take the observation first); here the forecast comes first, as in ``crps``.

    Args:
        mu: the mean, a real tensor or number.
        sigma: the standard deviation, >= 0, a real tensor or number.
        obs: the observations, a real tensor or number.

    Returns:
        CRPS of the broadcast shape of the three operands, in the units of ``obs``: float64 if
        any tensor operand is float64, else float32 (numbers follow the tensors; three numbers
        give float32). NaN where an operand is NaN. Differentiable.

    Raises:
        TypeError: an operand that is neither a real tensor nor a real number (complex, bool,
            strings, lists).
        ValueError: a negative ``sigma``, shapes that do not broadcast, or tensors on different
            devices.

    Example:
        >>> crps_normal(torch.zeros(3), 1.0, torch.tensor([0.0, 1.0, 3.0]))
        tensor([0.2337, 0.6024, 2.4366])
    """
    args = {"mu": _operand("mu", mu), "sigma": _operand("sigma", sigma)}
    args["obs"] = _operand("obs", obs)
    tensors = {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}
    dtype = compute_dtype(*tensors.values())
    devices = {v.device for v in tensors.values()}
    if len(devices) > 1:
        seen = ", ".join(f"{k} on {v.device}" for k, v in tensors.items())
        raise ValueError(f"mu, sigma, obs: expected tensors on one device, got {seen}")
    device = devices.pop() if devices else torch.device("cpu")
    m, s, y = (torch.as_tensor(v, dtype=dtype, device=device) for v in args.values())
    try:
        torch.broadcast_shapes(m.shape, s.shape, y.shape)
    except RuntimeError:
        raise ValueError(
            "mu, sigma, obs: expected shapes that broadcast together, got "
            f"{tuple(m.shape)}, {tuple(s.shape)} and {tuple(y.shape)}"
        ) from None
    negative = int((s < 0).sum())
    if negative:
        raise ValueError(
            f"sigma: expected values >= 0, got {negative} negative value(s) in {describe(sigma)}"
        )
    d = y - m  # [*E]
    spread = s > 0
    safe = torch.where(spread, s, torch.ones_like(s))  # no 0/0 in either branch's gradient
    z = d / safe
    body = d * torch.erf(z / math.sqrt(2)) + safe * (
        _SQRT_2_OVER_PI * torch.exp(-0.5 * z * z) - _INV_SQRT_PI
    )
    # sigma = 0 (or NaN, which the comparison also sends here): |y - mu|, NaN stays NaN
    point = torch.where(torch.isnan(s), s, d.abs())
    return torch.where(spread, body, point)
