"""ITransformerDiffusion: iTransformer point forecast + conditional residual diffusion.

Dimensions: S samples, B windows, L lookback, H horizon, N variates, F time features,
D backbone width, T train steps, K sampling steps.

    history [B, L, N] --backbone (once per window)--> y_det [B, H, N], z [B, N, D]
    residual r = (y - y_det - res_mean) / res_std            per variate, stats fixed after training
    denoiser(r_t [M, H, N], t [M], z [M, N, D]) -> eps | x0 | v
    forecast: y = y_det + res_std * r + res_mean,   r ~ sample_many(...)   -> [S, B, H, N]

The backbone never runs per sample: ``forecast`` hands z to ``sample_many``, which folds the
S samples into the batch. A researcher with another denoiser copies ``forecast`` and swaps
``self.denoiser``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import NoiseSchedule, sample_many
from .._utils import atomic_write, check_int
from ..prediction import training_target
from .denoisers import TokenDenoiser, UNet1DDenoiser
from .itransformer import ITransformer

__all__ = ["ForecastConfig", "ITransformerDiffusion"]

_FORMAT = "diffsample.ITransformerDiffusion/1"


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """Sizes of the forecaster. Defaults: the reference configuration for ETT (L = H = 96, N = 7)."""

    lookback: int = 96
    horizon: int = 96
    n_variates: int = 7
    n_time_features: int = 4
    # iTransformer backbone
    d_model: int = 128
    n_heads: int = 8
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    # residual diffusion
    denoiser: Literal["token", "unet"] = "token"
    denoiser_width: int = 128  # D of the token transformer; emb_dim of the U-Net
    denoiser_layers: int = 2
    denoiser_heads: int = 4
    unet_channels: tuple[int, ...] = (32, 64)
    # v-prediction keeps x0 = alpha x_t - sigma v bounded at the noisiest steps, where
    # eps-prediction divides by alpha ~ 1e-4 (cosine, t = T - 1) and amplifies every error
    prediction: Literal["eps", "x0", "v"] = "v"
    schedule: Literal["linear", "scaled_linear", "cosine", "sigmoid"] = "cosine"
    num_train_steps: int = 1000

    def __post_init__(self) -> None:
        for name in (
            "lookback",
            "horizon",
            "n_variates",
            "d_model",
            "n_heads",
            "n_layers",
            "d_ff",
            "denoiser_width",
            "denoiser_layers",
            "denoiser_heads",
            "num_train_steps",
        ):
            check_int(name, getattr(self, name))
        check_int("n_time_features", self.n_time_features, minimum=0)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a value in [0, 1), got {self.dropout!r}")
        choices = {
            "denoiser": ("token", "unet"),
            "prediction": ("eps", "x0", "v"),
            "schedule": ("linear", "scaled_linear", "cosine", "sigmoid"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}: expected one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        object.__setattr__(self, "unet_channels", tuple(int(c) for c in self.unet_channels))
        if not self.unet_channels or min(self.unet_channels) < 1:
            raise ValueError(
                f"unet_channels: expected positive channel counts, got {self.unet_channels!r}"
            )


class ITransformerDiffusion(nn.Module):
    """Point forecast from an iTransformer, uncertainty from a diffusion model of its residuals."""

    def __init__(self, config: ForecastConfig = ForecastConfig()) -> None:
        super().__init__()
        if not isinstance(config, ForecastConfig):
            raise TypeError(f"config: expected a ForecastConfig, got {type(config).__name__}")
        c = self.config = config
        self.backbone = ITransformer(
            c.lookback,
            c.horizon,
            n_time_features=c.n_time_features,
            d_model=c.d_model,
            n_heads=c.n_heads,
            n_layers=c.n_layers,
            d_ff=c.d_ff,
            dropout=c.dropout,
        )
        if c.denoiser == "token":
            self.denoiser: nn.Module = TokenDenoiser(
                c.horizon,
                c.d_model,
                d_model=c.denoiser_width,
                n_heads=c.denoiser_heads,
                n_layers=c.denoiser_layers,
            )
        else:
            self.denoiser = UNet1DDenoiser(
                c.horizon,
                c.d_model,
                channels=c.unet_channels,
                emb_dim=c.denoiser_width,
                n_heads=c.denoiser_heads,
            )
        self.schedule = NoiseSchedule.by_name(
            c.schedule, c.num_train_steps
        )  # float64, kept off the module's dtype
        self.register_buffer("res_mean", torch.zeros(c.n_variates))  # [N]
        self.register_buffer("res_std", torch.ones(c.n_variates))  # [N]

    # ------------------------------------------------------------------ pieces
    def forward(
        self, history: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone: history ``[B, L, N]`` -> (y_det ``[B, H, N]``, z ``[B, N, D]``)."""
        self._check_inputs(history, time_features)
        return self.backbone(history, time_features if self.config.n_time_features else None)

    def point_loss(
        self, history: torch.Tensor, target: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE of the point forecast (stage 1)."""
        y_det, _ = self(history, time_features)
        return F.mse_loss(y_det.float(), target.float())

    def diffusion_loss(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        time_features: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoising loss on normalised residuals (stage 2); the backbone is not trained here.

        Each window draws a uniform step t and noise; the loss is the MSE between the
        denoiser's output and its target for ``config.prediction``.
        """
        with torch.no_grad():
            y_det, z = self(history, time_features)
            r0 = self.normalise_residual(target, y_det)  # [B, H, N]
            B = r0.shape[0]
            t = torch.randint(
                0, self.config.num_train_steps, (B,), device=r0.device, generator=generator
            )
            noise = torch.randn(r0.shape, device=r0.device, dtype=r0.dtype, generator=generator)
            ab = self.schedule.alphas_cumprod.to(r0.device)[t].to(r0.dtype)[
                :, None, None
            ]  # [B, 1, 1]
            a, s = ab.sqrt(), (1 - ab).sqrt()
            r_t = a * r0 + s * noise
            goal = training_target(r0, noise, a, s, self.config.prediction)
        return F.mse_loss(self.denoiser(r_t, t, z=z).float(), goal.float())

    def normalise_residual(self, target: torch.Tensor, y_det: torch.Tensor) -> torch.Tensor:
        return (target - y_det - self.res_mean) / self.res_std

    @torch.no_grad()
    def set_residual_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the per-variate residual statistics ``[N]`` (computed on training data)."""
        N = self.config.n_variates
        if mean.shape != (N,) or std.shape != (N,):
            raise ValueError(
                f"mean, std: expected shape [{N}] each, got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not bool((std > 0).all()) or not bool(torch.isfinite(mean).all()):
            raise ValueError(f"std: expected positive finite values, got {std.tolist()}")
        self.res_mean.copy_(mean)
        self.res_std.copy_(std)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def forecast(
        self,
        history: torch.Tensor,
        n_samples: int,
        *,
        time_features: torch.Tensor | None = None,
        sampler: Literal["ddim", "ddpm", "dpmpp_2m"] = "ddim",
        num_steps: int = 50,
        max_batch: int | None = None,
        memory_budget: int | float | None = None,
        seed: int = 0,
        window_ids: torch.Tensor | Sequence[int] | None = None,
        progress: bool | None = None,
        return_point: bool = False,
        **sampler_kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Probabilistic forecast: ``n_samples`` samples per window, in the data's (scaled) units.

        Args:
            history: ``[B, L, N]``.
            n_samples: S.
            time_features: ``[B, L, F]`` for the history, if the model uses them.
            sampler: "ddim" (default, deterministic given the noise), "ddpm" or "dpmpp_2m".
            num_steps: K sampling steps on a trailing grid.
            max_batch, memory_budget, progress: see :func:`diffsample.sample_many`.
            seed, window_ids: key the noise: the same window id and seed give the same samples in
                any test batch and at any chunking. Default ids 0..B-1; pass global indices.
            return_point: also return the point forecast y_det ``[B, H, N]``.
            **sampler_kwargs: passed to the sampler, e.g. ``eta`` for DDIM or ``clip_x0``.

        Returns:
            Samples ``[S, B, H, N]`` (and y_det if ``return_point``). Map them to the original units
            with the dataset's scaler (``inverse_transform``).
        """
        was_training = self.training
        self.eval()
        try:
            y_det, z = self(history, time_features)
            c = self.config
            r = sample_many(
                sampler,
                self.denoiser,
                (c.horizon, c.n_variates),
                n_samples,
                cond={"z": z},
                cond_ids=window_ids,
                max_batch=max_batch,
                memory_budget=memory_budget,
                seed=seed,
                dtype=y_det.dtype,
                progress=progress,
                schedule=self.schedule,
                timesteps=self.schedule.timesteps(num_steps),
                prediction=c.prediction,
                **sampler_kwargs,
            )  # [S, B, H, N]
            samples = y_det + r * self.res_std + self.res_mean
        finally:
            self.train(was_training)
        return (samples, y_det) if return_point else samples

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write config + weights atomically (a temp file renamed into place)."""
        payload = {
            "format": _FORMAT,
            "config": dataclasses.asdict(self.config),
            "state_dict": self.state_dict(),
        }
        return atomic_write(path, lambda f: torch.save(payload, f))

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: Any = "cpu") -> ITransformerDiffusion:
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"{path}: not a readable diffsample checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(payload, Mapping) or payload.get("format") != _FORMAT:
            got = payload.get("format") if isinstance(payload, Mapping) else type(payload).__name__
            raise ValueError(f"{path}: expected a checkpoint of format {_FORMAT!r}, got {got!r}")
        fields = {f.name for f in dataclasses.fields(ForecastConfig)}
        unknown = set(payload["config"]) - fields
        if unknown:
            raise ValueError(
                f"{path}: config has unknown fields {sorted(unknown)} (written by a newer version?)"
            )
        model = cls(ForecastConfig(**payload["config"]))
        state, own = payload["state_dict"], model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or wrong:
            raise ValueError(
                f"{path}: weights do not match the config: missing {missing}, unexpected {unexpected}, "
                f"shape mismatches {wrong}"
            )
        model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, history: torch.Tensor, time_features: torch.Tensor | None) -> None:
        c = self.config
        if (
            not isinstance(history, torch.Tensor)
            or history.ndim != 3
            or history.shape[1:] != (c.lookback, c.n_variates)
        ):
            got = (
                tuple(history.shape)
                if isinstance(history, torch.Tensor)
                else type(history).__name__
            )
            raise ValueError(
                f"history: expected shape [B, {c.lookback}, {c.n_variates}] (B, lookback, variates), got {got}"
            )
        if c.n_time_features and time_features is None:
            raise ValueError(
                f"time_features: this model uses {c.n_time_features} time features; pass [B, {c.lookback}, "
                f"{c.n_time_features}] (or build it with n_time_features=0)"
            )
        if c.n_time_features and time_features.shape != (
            history.shape[0],
            c.lookback,
            c.n_time_features,
        ):
            raise ValueError(
                f"time_features: expected shape [{history.shape[0]}, {c.lookback}, {c.n_time_features}], "
                f"got {tuple(time_features.shape)}"
            )
