"""ITransformerDiffusion: iTransformer point forecast + conditional residual diffusion.

Dimensions: S samples, B windows, L lookback, H horizon, N variates, F time features,
D backbone width, T train steps, K sampling steps, M rows (samples x windows).

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
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import NoiseSchedule, sample_many
from .._utils import atomic_write, check_choice, check_int, check_number, check_tensor, expected
from ..prediction import Prediction, training_target
from ..samplers import Sampler
from .denoisers import TokenDenoiser, UNet1DDenoiser, unet_attention_levels
from .itransformer import ITransformer, _check_heads

__all__ = ["DenoiserName", "Forecast", "ForecastConfig", "ITransformerDiffusion", "ScheduleName"]

_FORMAT = "diffsample.ITransformerDiffusion/1"

DenoiserName = Literal["token", "unet"]
ScheduleName = Literal["linear", "scaled_linear", "cosine", "sigmoid"]


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """Sizes of the forecaster. Defaults: the reference configuration for ETT (L = H = 96, N = 7).

    Every field is checked at construction: a value of the wrong kind (``1.5`` or ``True`` for
    an integer, a number for a name) raises TypeError, a bad value ValueError, each naming the
    field. Integers and floats are stored as plain Python ``int`` / ``float`` (a numpy scalar
    would not survive ``torch.load(weights_only=True)`` of a checkpoint).
    """

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
    denoiser: DenoiserName = "token"
    denoiser_width: int = 128  # D of the token transformer; emb_dim of the U-Net
    denoiser_layers: int = 2
    denoiser_heads: int = 4
    unet_channels: tuple[int, ...] = (32, 64)
    # v-prediction keeps x0 = alpha x_t - sigma v bounded at the noisiest steps, where
    # eps-prediction divides by alpha ~ 1e-4 (cosine, t = T - 1) and amplifies every error
    prediction: Prediction = "v"
    schedule: ScheduleName = "cosine"
    num_train_steps: int = 1000

    def __post_init__(self) -> None:
        checked: dict[str, object] = {
            name: check_int(name, getattr(self, name))
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
            )
        }
        checked["n_time_features"] = check_int("n_time_features", self.n_time_features, minimum=0)
        checked["dropout"] = check_number(
            "dropout", self.dropout, minimum=0.0, maximum=1.0, open_max=True
        )
        checked["denoiser"] = check_choice("denoiser", self.denoiser, DenoiserName)
        checked["prediction"] = check_choice("prediction", self.prediction, Prediction)
        checked["schedule"] = check_choice("schedule", self.schedule, ScheduleName)
        channels = self.unet_channels
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
            raise TypeError(expected("unet_channels", "a sequence of positive integers", channels))
        if not channels:
            raise ValueError(
                f"unet_channels: expected at least one channel count, got {channels!r}"
            )
        checked["unet_channels"] = tuple(
            check_int(f"unet_channels[{i}]", c) for i, c in enumerate(channels)
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        # the module sizes that must agree, checked here rather than when the model is built
        _check_heads("n_heads", self.n_heads, "d_model", self.d_model)
        if self.denoiser == "token":
            _check_heads(
                "denoiser_heads", self.denoiser_heads, "denoiser_width", self.denoiser_width
            )
        else:
            for i in unet_attention_levels(len(self.unet_channels)):
                _check_heads(
                    "denoiser_heads",
                    self.denoiser_heads,
                    f"unet_channels[{i}]",
                    self.unet_channels[i],
                )


class Forecast(NamedTuple):
    """What :meth:`ITransformerDiffusion.forecast` returns, in the data's (scaled) units.

    Attributes:
        samples: ``[S, B, H, N]``, contiguous (row-major).
        point: ``[B, H, N]``, the backbone's point forecast y_det.
    """

    samples: torch.Tensor
    point: torch.Tensor


class ITransformerDiffusion(nn.Module):
    """Point forecast from an iTransformer, uncertainty from a diffusion model of its residuals.

    Args:
        config: the sizes (:class:`ForecastConfig`); the default is the ETT reference model.
    """

    res_mean: torch.Tensor  # [N] buffer
    res_std: torch.Tensor  # [N] buffer

    def __init__(self, config: ForecastConfig = ForecastConfig()) -> None:
        super().__init__()
        if not isinstance(config, ForecastConfig):
            raise TypeError(expected("config", "a ForecastConfig", config))
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
        # float64 and on the CPU, not a buffer: samplers read their per-step coefficients on
        # the host (no device sync in the step loop) and cast them only at use
        self.schedule = NoiseSchedule.by_name(c.schedule, c.num_train_steps)
        self._device_schedules: dict[torch.device, tuple[NoiseSchedule, NoiseSchedule]] = {}
        self.register_buffer("res_mean", torch.zeros(c.n_variates))  # [N]
        self.register_buffer("res_std", torch.ones(c.n_variates))  # [N]

    # ------------------------------------------------------------------ pieces
    def forward(
        self, history: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone: history ``[B, L, N]`` (+ ``[B, L, F]``) -> (y_det ``[B, H, N]``, z ``[B, N, D]``)."""
        self._check_inputs(history, time_features)
        return self.backbone(history, time_features if self.config.n_time_features else None)

    def point_loss(
        self, history: torch.Tensor, target: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE of the point forecast (stage 1).

        Args:
            history: ``[B, L, N]``.
            target: ``[B, H, N]``.
            time_features: ``[B, L, F]`` or None.

        Returns:
            A float32 scalar.
        """
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

        Each window draws a uniform step t and noise; the forward process is the schedule's own
        (:meth:`NoiseSchedule.add_noise`, :meth:`NoiseSchedule.alpha_sigma`) and the loss is the
        MSE between the denoiser's output and its target for ``config.prediction``.

        Args:
            history: ``[B, L, N]``.
            target: ``[B, H, N]``.
            time_features: ``[B, L, F]`` or None.
            generator: draws t ``[B]`` and the noise ``[B, H, N]``; on the data's device.

        Returns:
            A float32 scalar.
        """
        with torch.no_grad():
            y_det, z = self(history, time_features)
            r0 = self.normalise_residual(target, y_det)  # [B, H, N]
            schedule = self._schedule_on(r0.device)
            t = torch.randint(
                0, schedule.num_train_steps, r0.shape[:1], device=r0.device, generator=generator
            )  # [B]
            noise = torch.randn(r0.shape, device=r0.device, dtype=r0.dtype, generator=generator)
            r_t = schedule.add_noise(r0, noise, t)  # [B, H, N]
            alpha, sigma = (a[:, None, None] for a in schedule.alpha_sigma(t))  # [B, 1, 1] f64
            goal = training_target(r0, noise, alpha, sigma, self.config.prediction)
        return F.mse_loss(self.denoiser(r_t, t, z=z).float(), goal.float())

    def normalise_residual(self, target: torch.Tensor, y_det: torch.Tensor) -> torch.Tensor:
        """r = (target - y_det - res_mean) / res_std, per variate: ``[B, H, N]`` -> ``[B, H, N]``."""
        return (target - y_det - self.res_mean) / self.res_std

    @torch.no_grad()
    def set_residual_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the per-variate residual statistics ``[N]`` (computed on training data)."""
        N = self.config.n_variates
        check_tensor("mean", mean, floating=True)
        check_tensor("std", std, floating=True)
        if mean.shape != (N,) or std.shape != (N,):
            raise ValueError(
                f"mean, std: expected shape [{N}] each, got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError(f"std: expected positive finite values, got {std.tolist()}")
        if not bool(torch.isfinite(mean).all()):
            raise ValueError(f"mean: expected finite values, got {mean.tolist()}")
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
        sampler: str | Sampler = "ddim",
        num_steps: int = 50,
        max_batch: int | None = None,
        memory_budget: int | float | None = None,
        seed: int = 0,
        window_ids: torch.Tensor | Sequence[int] | None = None,
        progress: bool | None = None,
        **sampler_kwargs: Any,
    ) -> Forecast:
        """Probabilistic forecast: ``n_samples`` samples per window, in the data's (scaled) units.

        Args:
            history: ``[B, L, N]``.
            n_samples: S.
            time_features: ``[B, L, F]`` for the history, if the model uses them.
            sampler: a name in :data:`diffsample.SAMPLERS` ("ddim", the default, is
                deterministic given the noise; "ddpm"; "dpmpp_2m") or a sampler function.
            num_steps: K sampling steps on a trailing grid.
            max_batch, memory_budget, progress: see :func:`diffsample.sample_many`.
            seed, window_ids: key the noise: the same window id and seed give the same samples in
                any test batch and at any chunking. Default ids 0..B-1; pass global indices.
            **sampler_kwargs: passed to the sampler, e.g. ``eta`` for DDIM or ``clip_x0``.

        Returns:
            ``Forecast(samples [S, B, H, N], point [B, H, N])``, both contiguous. Map them to
            the original units with the dataset's scaler (``inverse_transform``).
        """
        was_training = self.training
        self.eval()
        try:
            y_det, z = self(history, time_features)  # [B, H, N], [B, N, D]
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
            # a broadcast takes its operands' memory layout; a permuted one (from the backbone
            # or a denoiser's output) made the metrics on these samples ~20x slower
            point = y_det.contiguous()
            samples = (point + r * self.res_std + self.res_mean).contiguous()  # [S, B, H, N]
        finally:
            self.train(was_training)
        return Forecast(samples, point)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write config + weights atomically (a temp file renamed into place); returns the path."""
        payload = {
            "format": _FORMAT,
            "config": dataclasses.asdict(self.config),
            "state_dict": self.state_dict(),
        }
        return atomic_write(path, lambda f: torch.save(payload, f))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, map_location: Any = "cpu"
    ) -> ITransformerDiffusion:
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a checkpoint of this format, or weights that do not fit its config.
        """
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
    def _schedule_on(self, device: torch.device) -> NoiseSchedule:
        """``self.schedule`` on ``device``, copied once per device: the training loss indexes
        it with t drawn there, and moving t to the host instead would sync at every step."""
        if device == self.schedule.device:
            return self.schedule
        source, moved = self._device_schedules.get(device, (None, None))
        if source is not self.schedule or moved is None:  # first use, or the schedule was replaced
            moved = self.schedule.to(device)
            self._device_schedules[device] = (self.schedule, moved)
        return moved

    def _check_inputs(self, history: torch.Tensor, time_features: torch.Tensor | None) -> None:
        c = self.config
        check_tensor("history", history, floating=True)
        if history.ndim != 3 or history.shape[1:] != (c.lookback, c.n_variates):
            raise ValueError(
                f"history: expected shape [B, {c.lookback}, {c.n_variates}] (B, lookback, variates), "
                f"got {tuple(history.shape)}"
            )
        if not c.n_time_features:
            return  # a model built without time features ignores any it is given
        if time_features is None:
            raise ValueError(
                f"time_features: this model uses {c.n_time_features} time features; pass [B, {c.lookback}, "
                f"{c.n_time_features}] (or build it with n_time_features=0)"
            )
        check_tensor("time_features", time_features, floating=True)
        want = (history.shape[0], c.lookback, c.n_time_features)
        if time_features.shape != want:
            raise ValueError(
                f"time_features: expected shape [{', '.join(map(str, want))}], "
                f"got {tuple(time_features.shape)}"
            )
