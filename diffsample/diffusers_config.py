"""Reading a Hugging Face diffusers scheduler config for ``NoiseSchedule.from_diffusers``.

Dimensions: T train steps.

diffusers is never imported: a scheduler is any object with a ``.config`` mapping, and a config
any mapping (a dict, a ``FrozenDict``, a parsed ``scheduler_config.json``). This module reads
the fields, fills in diffusers' defaults, refuses what a variance-preserving schedule cannot
express, and rebuilds the betas diffusers computes without a closed form here (trained betas,
the Laplace schedule) in float64; :mod:`diffsample.schedules` builds the schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from ._utils import check_bool, check_choice, expected

__all__ = [
    "DIFFUSERS_DEFAULTS",
    "DiffusersBetaSchedule",
    "beta_schedule",
    "config_field",
    "diffusers_config",
    "laplace_betas",
    "trained_betas",
]

# diffusers' beta_schedule values that NoiseSchedule.from_diffusers reads
DiffusersBetaSchedule = Literal[
    "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"
]
# diffusers' defaults (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler) for a field
# missing from a hand-written config
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
}
# flags that, set, leave the variance-preserving betas behind: why each is refused
_REFUSED = (
    (
        "rescale_betas_zero_snr",
        "zero terminal SNR makes alpha_bar = 0 at the last step, and a NoiseSchedule "
        "needs every alpha_bar in (0, 1)",
    ),
    (
        "use_flow_sigmas",
        "flow-matching sigmas replace the betas' variance-preserving process",
    ),
)


def diffusers_config(scheduler_or_config: object) -> Mapping[str, Any]:
    """The config mapping of a diffusers scheduler (its ``.config``) or the mapping itself,
    refused if it sets ``rescale_betas_zero_snr`` or ``use_flow_sigmas``."""
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(config, Mapping):
        raise TypeError(
            expected(
                "scheduler_or_config",
                "a diffusers scheduler (with a .config mapping) or its config (a dict or "
                "FrozenDict)",
                scheduler_or_config,
            )
        )
    for flag, why in _REFUSED:
        value = config.get(flag)
        if value is not None and check_bool(flag, value):
            raise ValueError(f"{flag}: expected False, got True: {why}")
    return config


def config_field(config: Mapping[str, Any], name: str) -> Any:
    """``config[name]``, or diffusers' default where the field is missing or None."""
    value = config.get(name)
    return DIFFUSERS_DEFAULTS[name] if value is None else value


def beta_schedule(config: Mapping[str, Any]) -> str:
    """The config's ``beta_schedule``, one this module knows (it has no trained betas)."""
    if "beta_schedule" not in config:
        raise ValueError(
            "beta_schedule: expected it (or trained_betas) in the config, got neither among "
            f"{sorted(config)[:12]}: not a DDPM-style (variance-preserving) scheduler config"
        )
    return check_choice("beta_schedule", config["beta_schedule"], DiffusersBetaSchedule)


def trained_betas(trained: object, T: int) -> torch.Tensor:
    """diffusers' ``trained_betas`` (a list, numpy array or tensor) as ``[T]`` float64."""
    want = f"a 1-D sequence of {T} floats in (0, 1) (num_train_timesteps = {T})"
    if isinstance(trained, (str, bytes)):
        raise TypeError(expected("trained_betas", want, trained))
    try:
        betas = torch.as_tensor(trained, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(expected("trained_betas", want, trained)) from None
    if betas.ndim != 1 or betas.numel() != T:
        raise ValueError(expected("trained_betas", want, betas))
    bad = ~((betas > 0) & (betas < 1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"trained_betas: expected {want}, got trained_betas[{i}] = {float(betas[i])!r}"
        )
    return betas


def laplace_betas(T: int) -> torch.Tensor:
    """diffusers' ``betas_for_alpha_bar(T, alpha_transform_type="laplace")`` in float64:
    f(t) = sqrt(sigmoid(lambda(t))), lambda(t) = -sign(1/2 - t) log(1 - 2|1/2 - t| + 1e-6) / 2,
    betas = min(1 - f(t_{i+1}) / f(t_i), 0.999) with t_i = i / T."""
    t = torch.arange(T + 1, dtype=torch.float64) / T  # [T + 1]
    half = 0.5 - t
    # copysign, not sign: math.copysign(1, 0.0) = 1 where torch.sign(0) = 0
    lmb = -0.5 * torch.copysign(torch.ones_like(t), half) * torch.log(1 - 2 * half.abs() + 1e-6)
    f = torch.sigmoid(lmb).sqrt()
    return torch.clamp(1 - f[1:] / f[:-1], max=0.999)
