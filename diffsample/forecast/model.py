"""ITransformerDiffusion: iTransformer point forecast + conditional residual diffusion.

Dimensions: S samples, B windows, L lookback, H horizon, N variates, F time features,
D backbone width, T train steps, K sampling steps, M rows (samples x windows).

    history [B, L, N] --backbone (once per window)--> y_det [B, H, N], z [B, N, D]
    residual r = (y - y_det - res_mean) / res_std            per variate, stats fixed after training
    denoiser(r_t [M, H, N], t [M], z [M, N, D]) -> eps | x0 | v
    forecast: y = y_det + res_std * res_scale * r + res_mean,   r ~ sample_many(...)   -> [S, B, H, N]

``res_scale [H, N]`` (ones unless calibrated) is an optional spread calibration fitted after
stage 2 (``TrainConfig.calibration``, :func:`~diffsample.forecast.training.fit_spread_scale`):
the trained denoiser, sampled with a few-step solver, returns residuals narrower than the ones
it was trained on (on ETTh1 ~0.78 of their rms on its own training windows, more at the far
horizon steps; see docs/results.md), and the scale undoes that per horizon step and variate.

The backbone never runs per sample: ``forecast`` hands z to ``sample_many``, which folds the
S samples into the batch. A researcher with another denoiser copies ``forecast`` and swaps
``self.denoiser``.

Checkpoints (``save`` / ``load``, and the trainer's per-epoch files) are one ``torch.save``
dict read back with ``weights_only=True``: ``format``, ``config``, ``state_dict``,
``data_spec``, ``finished`` (False for a run still training, with its ``stage`` and ``epoch``)
and a ``checksum``, the sha256 of everything else, so a damaged or edited file is refused
instead of loading weights nobody trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import NoiseSchedule, sample_many
from .._utils import (
    atomic_write,
    check_bool,
    check_choice,
    check_device,
    check_finite,
    check_int,
    check_number,
    check_tensor,
    describe,
    expected,
)
from ..prediction import Prediction, training_target
from ..samplers import Sampler
from .data import StandardScaler
from .denoisers import TokenDenoiser, UNet1DDenoiser, unet_attention_levels
from .forecast import Forecast
from .forecast import check_freq as _check_freq
from .forecast import check_start as _check_start
from .itransformer import ITransformer
from .itransformer import check_heads as _check_heads

__all__ = [
    "DenoiserName",
    "Forecast",
    "ForecastConfig",
    "HistoryStats",
    "ITransformerDiffusion",
    "ScheduleName",
]

_FORMAT = "diffsample.ITransformerDiffusion/2"
# diffsample 0.1: no checksum, no data spec, and no record of whether training had finished
_FORMAT_V1 = "diffsample.ITransformerDiffusion/1"

DenoiserName = Literal["token", "unet"]
ScheduleName = Literal["linear", "scaled_linear", "cosine", "sigmoid"]
HistoryStats = Literal["scale", "scale_level", "none"]
# what the denoiser's condition adds to z, per variate: Dz = d_model + this
_STATS_WIDTH: dict[str, int] = {"none": 0, "scale": 1, "scale_level": 2}

# Upper bounds of ForecastConfig's sizes: far above real use (ETT: L, H of 96 to 720, N = 7,
# d_model 128 to 512, T = 1000) and low enough that a config read from a file cannot ask for an
# absurd model before its weights are compared ("unet_levels" bounds len(unet_channels), and
# "unet_channels" each level's width)
CONFIG_LIMITS: dict[str, int] = {
    "lookback": 100_000,
    "horizon": 100_000,
    "n_variates": 100_000,
    "n_time_features": 256,
    "d_model": 8192,
    "n_heads": 1024,
    "n_layers": 256,
    "d_ff": 65_536,
    "denoiser_width": 8192,
    "denoiser_layers": 256,
    "denoiser_heads": 1024,
    "unet_levels": 16,
    "unet_channels": 8192,
    "num_train_steps": 100_000,
}


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """Sizes of the forecaster. Defaults: the reference configuration for ETT (L = H = 96, N = 7).

    Every field is checked at construction: a value of the wrong kind (``1.5`` or ``True`` for
    an integer, a number for a name) raises TypeError, a bad value ValueError, each naming the
    field. Integers and floats are stored as plain Python ``int`` / ``float`` (a numpy scalar
    would not survive ``torch.load(weights_only=True)`` of a checkpoint).

    Every size has an upper bound (:data:`CONFIG_LIMITS`), far above real use, so that a config
    read from a file cannot make :meth:`ITransformerDiffusion.load` build an absurd model:
    lookback, horizon and n_variates <= 100000, n_time_features <= 256, d_model and
    denoiser_width <= 8192, n_heads and denoiser_heads <= 1024, n_layers and denoiser_layers
    <= 256, d_ff <= 65536, at most 16 unet_channels of <= 8192 each, num_train_steps <= 100000.
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
    # the denoiser also sees each variate's history log std ("scale"), which the backbone's
    # instance normalisation takes out of z: without it it cannot tell a calm window from a
    # volatile one. "scale_level" adds the history mean (0.3.0-0.5.0's True): on ETTh2, whose
    # test period drifts above its training level, the level moved the sample mean 0.12 above
    # the point forecast (sample-mean MSE 7.5% worse than the point's); the scale alone does
    # not (docs/results.md). True and False read as "scale_level" and "none".
    history_stats: HistoryStats = "scale"

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
        for name in checked:
            _check_limit(name, checked[name], CONFIG_LIMITS[name])
        checked["dropout"] = check_number(
            "dropout", self.dropout, minimum=0.0, maximum=1.0, open_max=True
        )
        checked["denoiser"] = check_choice("denoiser", self.denoiser, DenoiserName)
        checked["prediction"] = check_choice("prediction", self.prediction, Prediction)
        checked["schedule"] = check_choice("schedule", self.schedule, ScheduleName)
        stats = self.history_stats
        if isinstance(stats, bool):  # 0.3.0-0.5.0 configs and checkpoints
            stats = "scale_level" if stats else "none"
        checked["history_stats"] = check_choice("history_stats", stats, HistoryStats)
        channels = self.unet_channels
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
            raise TypeError(expected("unet_channels", "a sequence of positive integers", channels))
        if not channels:
            raise ValueError(
                f"unet_channels: expected at least one channel count, got {channels!r}"
            )
        if len(channels) > CONFIG_LIMITS["unet_levels"]:
            raise ValueError(
                f"unet_channels: expected at most {CONFIG_LIMITS['unet_levels']} levels (the "
                f"limit of ForecastConfig), got {len(channels)}"
            )
        checked["unet_channels"] = tuple(
            _check_limit(
                f"unet_channels[{i}]",
                check_int(f"unet_channels[{i}]", c),
                CONFIG_LIMITS["unet_channels"],
            )
            for i, c in enumerate(channels)
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


def _spec_scaler(spec: Mapping[str, Any] | None, n: int) -> StandardScaler | None:
    """The scaler of the data a model trained on, from its data spec (None without one)."""
    if not spec or spec.get("scaler_mean") is None or spec.get("scaler_std") is None:
        return None
    try:
        scaler = StandardScaler(mean=spec["scaler_mean"], std=spec["scaler_std"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"model.data_spec: scaler_mean / scaler_std are not a scaler: {err}"
        ) from err
    if scaler.n_variates != n:
        raise ValueError(
            f"model.data_spec: expected scaler statistics of {n} variates, got {scaler.n_variates}"
        )
    return scaler


def _spec_columns(spec: Mapping[str, Any] | None, n: int) -> tuple[str, ...] | None:
    """The variate names of the data spec, if it holds N of them."""
    cols = None if not spec else spec.get("columns")
    if isinstance(cols, (list, tuple)) and len(cols) == n and all(isinstance(c, str) for c in cols):
        return tuple(cols)
    return None


def _check_limit(name: str, value: object, limit: int) -> object:
    """``value`` (an int already checked) if it is at most ``limit``; ValueError otherwise."""
    if isinstance(value, int) and value > limit:
        raise ValueError(
            expected(name, f"an integer <= {limit} (the limit of ForecastConfig)", value)
        )
    return value


class ITransformerDiffusion(nn.Module):
    """Point forecast from an iTransformer, uncertainty from a diffusion model of its residuals.

    Args:
        config: the sizes (:class:`ForecastConfig`); the default is the ETT reference model.
    """

    res_mean: torch.Tensor  # [N] buffer
    res_std: torch.Tensor  # [N] buffer
    res_scale: torch.Tensor  # [H, N] buffer: spread calibration of the samples, ones by default
    data_spec: dict[str, Any] | None  # what it was trained on (ForecastDataset.spec()), or None

    def __init__(self, config: ForecastConfig = ForecastConfig()) -> None:
        super().__init__()
        if not isinstance(config, ForecastConfig):
            raise TypeError(expected("config", "a ForecastConfig", config))
        c = self.config = config
        self.backbone, self.denoiser = _networks(c)
        # float64 and on the CPU, not a buffer: samplers read their per-step coefficients on
        # the host (no device sync in the step loop) and cast them only at use
        self.schedule = NoiseSchedule.by_name(c.schedule, c.num_train_steps)
        self._device_schedules: dict[torch.device, tuple[NoiseSchedule, NoiseSchedule]] = {}
        self.register_buffer("res_mean", torch.zeros(c.n_variates))  # [N]
        self.register_buffer("res_std", torch.ones(c.n_variates))  # [N]
        self.register_buffer("res_scale", torch.ones(c.horizon, c.n_variates))  # [H, N]
        self.data_spec = None  # set by train(); saved and loaded with the weights

    # ------------------------------------------------------------------ pieces
    def forward(
        self, history: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone: history ``[B, L, N]`` (+ ``[B, L, F]``) -> (y_det ``[B, H, N]``, z ``[B, N, D]``)."""
        self._check_inputs(history, time_features)
        return self.backbone(history, time_features if self.config.n_time_features else None)

    def condition(self, history: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The denoiser's condition ``[B, N, Dz]``: the variate tokens z ``[B, N, D]`` and, as
        ``config.history_stats`` says, each variate's log std over the history ``[B, L, N]``
        ("scale", Dz = D + 1) and its mean ("scale_level", Dz = D + 2): the scale and level
        that the backbone's instance normalisation hides. "none": z alone."""
        stats = self.config.history_stats
        if stats == "none":
            return z
        var = history.var(dim=1, unbiased=False) + self.backbone.norm_eps  # [B, N]
        cols = [0.5 * var.log()] + ([history.mean(dim=1)] if stats == "scale_level" else [])
        return torch.cat([z, torch.stack(cols, dim=-1).to(z.dtype)], dim=-1)  # [B, N, Dz]

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
        draws: int = 1,
    ) -> torch.Tensor:
        """Denoising loss on normalised residuals (stage 2); the backbone is not trained here.

        Each window draws a uniform step t and noise, ``draws`` times (rows ``[draws * B]``:
        the backbone runs once, the denoiser on every draw; more draws, a less noisy gradient
        for the same backbone cost); the forward process is the schedule's own
        (:meth:`NoiseSchedule.add_noise`, :meth:`NoiseSchedule.alpha_sigma`) and the loss is the
        MSE between the denoiser's output and its target for ``config.prediction``.

        Args:
            history: ``[B, L, N]``.
            target: ``[B, H, N]``.
            time_features: ``[B, L, F]`` or None.
            generator: draws t ``[draws * B]`` and the noise ``[draws * B, H, N]``; on the
                data's device.
            draws: (t, noise) draws per window, at least 1.

        Returns:
            A float32 scalar.
        """
        draws = check_int("draws", draws)
        with torch.no_grad():
            y_det, z = self(history, time_features)
            z = self.condition(history, z).repeat(draws, 1, 1)  # [draws * B, N, Dz]
            r0 = self.normalise_residual(target, y_det).repeat(draws, 1, 1)  # [draws * B, H, N]
            schedule = self._schedule_on(r0.device)
            t = torch.randint(
                0, schedule.num_train_steps, r0.shape[:1], device=r0.device, generator=generator
            )  # [draws * B]
            noise = torch.randn(r0.shape, device=r0.device, dtype=r0.dtype, generator=generator)
            r_t = schedule.add_noise(r0, noise, t)  # [draws * B, H, N]
            alpha, sigma = (a[:, None, None] for a in schedule.alpha_sigma(t))  # [draws*B, 1, 1]
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

    @torch.no_grad()
    def set_residual_scale(self, scale: torch.Tensor) -> None:
        """Fix the spread calibration ``[H, N]``: sampled residuals are multiplied by it (per
        horizon step and variate) before they are mapped back to the data's units. Ones undo it."""
        c = self.config
        check_tensor("scale", scale, floating=True)
        if scale.shape != (c.horizon, c.n_variates):
            raise ValueError(
                expected("scale", f"a tensor [{c.horizon}, {c.n_variates}] (H, N)", scale)
            )
        if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
            raise ValueError(expected("scale", "positive finite values", scale))
        self.res_scale.copy_(scale)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def forecast(
        self,
        history: torch.Tensor,
        n_samples: int,
        *,
        time_features: torch.Tensor | None = None,
        sampler: str | Sampler = "dpmpp_2m",
        num_steps: int = 10,
        max_batch: int | None = None,
        memory_budget: int | float | None = None,
        seed: int = 0,
        window_ids: torch.Tensor | Sequence[int] | None = None,
        progress: bool | None = None,
        start: object = None,
        freq: str | None = None,
        **sampler_kwargs: Any,
    ) -> Forecast:
        """Probabilistic forecast: ``n_samples`` samples per window, in the data's (scaled) units.

        Args:
            history: ``[B, L, N]``.
            n_samples: S.
            time_features: ``[B, L, F]`` for the history, if the model uses them.
            sampler: a name in :data:`diffsample.SAMPLERS` ("dpmpp_2m", the default,
                "dpmpp_3m" and "ddim" are deterministic given the noise; "ddpm") or a sampler function.
            num_steps: K sampling steps on a trailing grid. The default, DPM-Solver++(2M) with
                10 steps, scored ETTh1 as well as DDIM-50 at a fifth of the cost
                (docs/results.md).
            max_batch: see :func:`diffsample.sample_many`.
            memory_budget: see :func:`diffsample.sample_many`.
            seed: keys the noise with ``window_ids``: the same window id and seed give the same
                samples in any test batch and at any chunking.
            window_ids: ``[B]`` integer ids keying each window's noise. Default 0..B-1; pass
                global indices.
            progress: see :func:`diffsample.sample_many`.
            start: ``[B]`` timestamps of each window's first forecast step (numpy
                ``datetime64`` or ISO strings), for the Forecast's dates; None leaves them
                unknown. :func:`~diffsample.forecast.forecast.window_dates` gives them for
                windows of a split.
            freq: the step between forecast steps, a pandas alias (``"h"``, ``"15min"``).
            **sampler_kwargs: passed to :func:`diffsample.sample_many`: its own ``graph=True``
                (CUDA graphs) and ``autocast=torch.bfloat16`` (the denoiser in bf16), or the
                sampler's, e.g. ``eta`` for DDIM or ``clip_x0``. A ``device`` must be the
                model's own (move the model with ``.to`` instead).

        Returns:
            :class:`~diffsample.forecast.forecast.Forecast` ``(samples [S, B, H, N], point
            [B, H, N])``, both contiguous, in scaled units; it carries the scaler and variate
            names of the data the model trained on (``fc.in_data_units()`` maps to the data's
            units), ``window_ids`` when given, and ``start`` / ``freq``.
        """
        was_training = self.training
        self.eval()
        try:
            y_det, z = self(history, time_features)  # [B, H, N], [B, N, D]; checks the shapes
            _check_window_ids(window_ids, history.shape[0])
            # what the Forecast carries, checked before sampling
            scaler = _spec_scaler(self.data_spec, self.config.n_variates)
            variates = _spec_columns(self.data_spec, self.config.n_variates)
            start, freq = _check_start(start, history.shape[0]), _check_freq(freq)
            if "device" in sampler_kwargs:
                self._check_own_device(sampler_kwargs["device"])
            # once per call, before sampling (not in forward: a sync per training batch);
            # NaN here would only surface as NaN samples
            check_finite("history", history)
            if time_features is not None and self.config.n_time_features:
                check_finite("time_features", time_features)
            c = self.config
            r = sample_many(
                sampler,
                self.denoiser,
                (c.horizon, c.n_variates),
                n_samples,
                cond={"z": self.condition(history, z)},  # [B, N, Dz]
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
            scale = self.res_std * self.res_scale  # [H, N]
            samples = (point + r * scale + self.res_mean).contiguous()  # [S, B, H, N]
        finally:
            self.train(was_training)
        return Forecast(
            samples,
            point,
            scaler=scaler,
            variates=variates,
            window_ids=window_ids,
            start=start,
            freq=freq,
        )

    def wrap(
        self,
        samples: torch.Tensor,
        point: torch.Tensor,
        *,
        window_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> Forecast:
        """Samples ``[S, B, H, N]`` and a point ``[B, H, N]`` made by other means (a baseline on
        this backbone) as a :class:`Forecast` carrying this model's scaler and variate names,
        as :meth:`forecast`'s own do."""
        N = self.config.n_variates
        scaler, variates = _spec_scaler(self.data_spec, N), _spec_columns(self.data_spec, N)
        return Forecast(samples, point, scaler=scaler, variates=variates, window_ids=window_ids)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a finished checkpoint atomically (a temp file renamed into place).

        It holds the config, the weights, ``data_spec`` and a checksum; see the module
        docstring. Returns the path.
        """
        return _write_checkpoint(path, {**self._checkpoint_payload(), "finished": True})

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        map_location: Any = "cpu",
        allow_unfinished: bool = False,
    ) -> ITransformerDiffusion:
        """Read a checkpoint written by :meth:`save` or by ``train`` (``weights_only=True``).

        Args:
            path: the file.
            map_location: the device to load the weights to (``"cpu"``, ``"cuda"``,
                ``"cuda:1"``, ``"mps"`` or a ``torch.device``); one this machine has.
            allow_unfinished: also load the checkpoint of a run that has not finished (killed,
                or stopped by an error): the best weights so far of the stage it was in; in
                stage 1 the denoiser is still untrained. Also loads a checkpoint of diffsample
                0.1 (format ``/1``), which has no checksum and no record of either.

        Returns:
            The model in eval mode, with ``data_spec`` as saved (None if it never trained).

        Nothing in the file steers more than it should: every tensor is checked against its
        declared shape and storage before the checksum reads it (a few bytes declaring a huge
        expanded tensor are refused, not materialised), the config against
        :data:`CONFIG_LIMITS`, and the weights' shapes against the config's before a model of
        that size is built; non-finite weights or statistics are refused.

        Raises:
            FileNotFoundError: no such file.
            TypeError: ``map_location`` is not a str or ``torch.device``.
            ValueError: ``map_location`` names no device this machine has; or (one line,
                naming the path) not a readable torch file, not a diffsample checkpoint
                (another format, Python objects or tensor layouts a checkpoint never holds), a
                checksum that does not match the contents, no or a bad config (sizes beyond
                the limits included), weights that do not fit the config, NaN or infinite
                weights, or an unfinished run without ``allow_unfinished``.
        """
        device = check_device("map_location", map_location)
        allow_unfinished = check_bool("allow_unfinished", allow_unfinished)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        payload = _read_checkpoint(path, map_location=device)
        if payload.get("finished") is not True and not allow_unfinished:
            if payload["format"] == _FORMAT_V1:
                raise ValueError(
                    f"checkpoint: {path} was written by diffsample 0.1 (format {_FORMAT_V1!r}: no "
                    "checksum, no record of whether training finished or on which data); "
                    "retrain, or pass allow_unfinished=True to load it anyway"
                )
            raise ValueError(
                f"checkpoint: {path} is from an unfinished training run (saved after stage "
                f"{payload.get('stage')} epoch {payload.get('epoch')}); resume it with "
                "train(..., checkpoint=path, resume=True), or pass allow_unfinished=True to load "
                "its best weights so far"
            )
        config = _config_from(payload["config"], path)
        state = payload["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"checkpoint: {path} holds no state_dict of weights")
        shapes = _state_shapes(config)
        if "res_scale" not in state:  # written before the spread calibration: uncalibrated
            state = {**state, "res_scale": torch.ones(shapes["res_scale"], device=device)}
        _check_state(path, state, shapes)
        model = cls(config)  # only now: the file holds weights of this size
        model.load_state_dict(state)
        spec = payload.get("data_spec")
        model.data_spec = dict(spec) if isinstance(spec, Mapping) else None
        return model.eval()

    def _checkpoint_payload(self, state_dict: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """format, config, weights (``state_dict`` or the model's own) and data spec."""
        return {
            "format": _FORMAT,
            "config": dataclasses.asdict(self.config),
            "state_dict": self.state_dict() if state_dict is None else state_dict,
            "data_spec": self.data_spec,
        }

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

    def _check_own_device(self, value: object) -> None:
        """``value`` a device (see ``diffsample._utils.check_device``) that is the parameters' own."""
        device = check_device("device", value)
        own = next(self.backbone.parameters()).device
        if device.type != own.type or device.index not in (None, own.index):
            raise ValueError(
                f"device: expected the model's device {own} (move the model with "
                f".to({str(device)!r}) to sample there), got {str(value)!r}"
            )

    def _check_inputs(self, history: torch.Tensor, time_features: torch.Tensor | None) -> None:
        """history ``[B, L, N]`` (B >= 1) and time features ``[B, L, F]`` of the parameters'
        dtype and device. No implicit cast: a float64 history would only be rounded to float32
        here, and an integer one is almost always a mistake upstream."""
        c = self.config
        param = next(self.backbone.parameters())
        _check_input(
            "history", history, (None, c.lookback, c.n_variates), param, "B windows >= 1, L, N"
        )
        if not c.n_time_features:
            return  # a model built without time features ignores any it is given
        if time_features is None:
            raise ValueError(
                f"time_features: this model uses {c.n_time_features} time features; pass [B, "
                f"{c.lookback}, {c.n_time_features}] (or build it with n_time_features=0)"
            )
        want = (history.shape[0], c.lookback, c.n_time_features)
        _check_input("time_features", time_features, want, param, "B, L, F")


def _networks(c: ForecastConfig) -> tuple[ITransformer, nn.Module]:
    """The backbone and the denoiser of config ``c`` (on the default device)."""
    backbone = ITransformer(
        c.lookback,
        c.horizon,
        n_time_features=c.n_time_features,
        d_model=c.d_model,
        n_heads=c.n_heads,
        n_layers=c.n_layers,
        d_ff=c.d_ff,
        dropout=c.dropout,
    )
    cond_dim = c.d_model + _STATS_WIDTH[c.history_stats]  # Dz: z, then the history stats
    denoiser: nn.Module
    if c.denoiser == "token":
        denoiser = TokenDenoiser(
            c.horizon,
            cond_dim,
            d_model=c.denoiser_width,
            n_heads=c.denoiser_heads,
            n_layers=c.denoiser_layers,
        )
    else:
        denoiser = UNet1DDenoiser(
            c.horizon,
            cond_dim,
            channels=c.unet_channels,
            emb_dim=c.denoiser_width,
            n_heads=c.denoiser_heads,
        )
    return backbone, denoiser


def _state_shapes(c: ForecastConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every entry of the state dict of ``ITransformerDiffusion(c)``, from modules
    built on the meta device: no memory, so a config read from a file is compared with the
    file's weights before a model of its size is built."""
    with torch.device("meta"):
        backbone, denoiser = _networks(c)
    shapes = {
        f"{prefix}.{k}": tuple(v.shape)
        for prefix, net in (("backbone", backbone), ("denoiser", denoiser))
        for k, v in net.state_dict().items()
    }
    N, H = c.n_variates, c.horizon
    return {**shapes, "res_mean": (N,), "res_std": (N,), "res_scale": (H, N)}


def _check_window_ids(window_ids: object, B: int) -> None:
    """``window_ids`` None or ``[B]`` integer ids (a tensor or a sequence)."""
    if window_ids is None:
        return
    want = f"[{B}] integer ids, one per history window"
    if isinstance(window_ids, (str, bytes)) or not isinstance(window_ids, (torch.Tensor, Sequence)):
        raise TypeError(expected("window_ids", f"a tensor or sequence of {want}", window_ids))
    try:
        ids = torch.as_tensor(window_ids)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(expected("window_ids", want, window_ids)) from None
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(expected("window_ids", want, ids))
    if tuple(ids.shape) != (B,):
        raise ValueError(expected("window_ids", f"{want} (history holds B = {B})", ids))


def _check_input(
    name: str, x: object, shape: tuple[int | None, ...], param: torch.Tensor, legend: str
) -> None:
    """``x`` a tensor of ``shape`` (None: any size >= 1) with ``param``'s dtype and device."""
    x = check_tensor(name, x)
    dims = ", ".join("B" if n is None else str(n) for n in shape)
    if x.ndim != len(shape) or any(
        x.shape[i] != n if n is not None else x.shape[i] < 1 for i, n in enumerate(shape)
    ):
        raise ValueError(expected(name, f"a tensor [{dims}] ({legend})", x))
    if x.dtype != param.dtype:
        raise TypeError(
            expected(
                name,
                f"a {param.dtype} tensor like the model's parameters (cast with .to({param.dtype}))",
                x,
            )
        )
    if x.device != param.device:
        raise ValueError(
            f"{name}: expected a tensor on {param.device} (the model's device), got one on "
            f"{x.device}"
        )


# ---------------------------------------------------------------------- checkpoint files
def _digest(payload: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint's contents but its ``checksum``: every tensor's dtype, shape and
    bytes and every plain value, walked in a fixed order (mapping keys sorted), so the same
    contents give the same digest whatever device they were loaded to."""
    h = hashlib.sha256()

    def feed(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # raw bytes, any dtype
        elif isinstance(obj, Mapping):
            h.update(f"M{len(obj)}:".encode())
            for k in sorted(obj, key=repr):
                feed(k)
                feed(obj[k])
        elif isinstance(obj, (list, tuple)):  # a tuple may come back as either
            h.update(f"L{len(obj)}:".encode())
            for x in obj:
                feed(x)
        elif obj is None or isinstance(obj, (bool, int, float, str)):
            text = repr(obj)
            h.update(f"{type(obj).__name__}{len(text)}:{text}".encode())
        else:
            raise TypeError(expected("checkpoint value", "tensors and plain data", obj))

    feed({k: v for k, v in payload.items() if k != "checksum"})
    return h.hexdigest()


def _check_state(
    path: Path, state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """The weights ``state`` have exactly the keys and shapes ``shapes`` of the config, and are
    floating-point tensors; one-line ValueError naming the path and the first few misfits."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted((set(state) - set(shapes)), key=repr)
    wrong = [
        f"{k}: file {tuple(getattr(state[k], 'shape', ()))} vs model {v}"
        for k, v in shapes.items()
        if k in state and tuple(getattr(state[k], "shape", (None,))) != v
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint: {path}: weights do not match the config: missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}, shape mismatches {_few(wrong)}"
        )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ValueError(
                f"checkpoint: {path}: state_dict[{k!r}]: expected a floating-point tensor of "
                f"weights, got {describe(v)}"
            )


def _few(items: list[str], n: int = 8) -> str:
    """The first ``n`` items of a list as its repr, and how many more there are."""
    if len(items) <= n:
        return repr(items)
    return f"{items[:n]!r} and {len(items) - n} more"


def _write_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """``payload`` plus its checksum, written atomically with ``torch.save``."""
    full = {**payload, "checksum": _digest(payload)}
    return atomic_write(path, lambda f: torch.save(full, f))


def _read_checkpoint(path: Path, *, map_location: Any) -> dict[str, Any]:
    """A checkpoint's payload, its format, checksum and config checked; one-line ValueErrors."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before it fails
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, i.e. running the file's code: never here
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise ValueError(
                f"checkpoint: {path} is not a diffsample checkpoint (it refers to the Python "
                f"object {found[1]}, which a checkpoint never holds; not loaded)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
        raise ValueError(
            f"checkpoint: {path} is not a readable diffsample checkpoint (not a file torch.save "
            f"writes: {detail[1] if detail else 'an unknown pickle stream'})"
        ) from None
    except Exception as exc:
        first = str(exc).strip().split("\n")[0].split(". ")[0][:200]
        why = "an empty file" if path.stat().st_size == 0 else f"{type(exc).__name__}: {first}"
        raise ValueError(
            f"checkpoint: {path} is not a readable diffsample checkpoint ({why})"
        ) from None
    if not isinstance(payload, Mapping):
        raise ValueError(
            f"checkpoint: {path} is not a diffsample checkpoint (it holds a "
            f"{type(payload).__name__}, not a dict)"
        )
    fmt = payload.get("format")
    if fmt not in (_FORMAT, _FORMAT_V1):
        raise ValueError(
            f"checkpoint: {path} is not a diffsample checkpoint (format {_short(fmt)}; expected "
            f"{_FORMAT!r})"
        )
    tensors = _tensors(payload, path)
    _check_layouts(path, tensors)  # before anything reads a tensor's bytes
    if fmt == _FORMAT:
        stored = payload.get("checksum")
        if not isinstance(stored, str):
            raise ValueError(f"checkpoint: {path} has no checksum (written by hand?); not loaded")
        try:
            actual = _digest(payload)
        except (TypeError, RecursionError):  # a value no checkpoint holds, or keys nested deep
            actual = None
        if actual != stored:
            raise ValueError(
                f"checkpoint: {path} is damaged: its contents do not match the checksum it "
                "was written with (a truncated copy, a disk error or an edited file)"
            )
    for where, t in tensors:
        if t.is_floating_point() or t.is_complex():
            n_bad = int((~torch.isfinite(t)).sum())
            if n_bad:
                raise ValueError(
                    f"checkpoint: {path}: {where} holds {n_bad} NaN/inf value(s) in "
                    f"{describe(t)}; a trained model's weights and statistics are finite; not "
                    "loaded"
                )
    if not isinstance(payload.get("config"), Mapping):
        raise ValueError(f"checkpoint: {path} holds no config (the model's sizes); not loaded")
    return dict(payload)


# deeper than any checkpoint nests its values (payload > resume > optimizer > state > 0 > x)
_MAX_DEPTH = 32
# how many times over a checkpoint's tensors may read its storages: twice leaves room for a
# storage two entries share; a few bytes viewed by thousands of tensors would make the checksum
# read gigabytes
_MAX_READS = 2


def _tensors(payload: Mapping[str, Any], path: Path) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a checkpoint's payload with where it sits (``state_dict['res_std']``),
    breadth first, without recursion; ValueError for values nested deeper than
    :data:`_MAX_DEPTH`."""
    found: list[tuple[str, torch.Tensor]] = []
    # (value, its parent's entry, its key, depth): a path is spelled out only for a tensor
    queue: deque[tuple[object, Any, object, int]] = deque([(payload, None, None, 0)])
    while queue:
        entry = queue.popleft()
        obj, _, _, depth = entry
        if isinstance(obj, torch.Tensor):
            found.append((_where(entry), obj))
            continue
        if isinstance(obj, Mapping):
            children: Any = obj.items()
        elif isinstance(obj, (list, tuple)):
            children = enumerate(obj)
        else:
            continue
        if depth >= _MAX_DEPTH:
            raise ValueError(
                f"checkpoint: {path} is not a diffsample checkpoint (values nested deeper than "
                f"{_MAX_DEPTH} levels at {_where(entry)}); not loaded"
            )
        queue.extend((v, entry, k, depth + 1) for k, v in children)
    return found


def _where(entry: tuple[object, Any, object, int]) -> str:
    """``a['b'][0]`` for an entry of ``_tensors``' walk."""
    keys = []
    while entry[1] is not None:
        keys.append(entry[2])
        entry = entry[1]
    if not keys:
        return "the payload"
    *rest, top = keys
    text = str(top) + "".join(f"[{k!r}]" for k in reversed(rest))
    return text if len(text) <= 200 else text[:200] + "..."


def _check_layouts(path: Path, tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Each tensor dense, contiguous and within its storage, and all of them together reading
    their storages at most :data:`_MAX_READS` times over: checked on the metadata alone, so
    a small file declaring a huge expanded tensor is refused before the checksum copies it."""
    storages: dict[tuple[str, int], int] = {}
    reads = 0
    for where, t in tensors:
        if t.layout != torch.strided or t.is_quantized or t.is_nested or t.is_meta:
            why = f"a {t.layout} tensor"
        elif not t.is_contiguous():
            why = f"an expanded or non-contiguous tensor (strides {t.stride()})"
        else:
            storage = t.untyped_storage()
            end = (t.storage_offset() + t.numel()) * t.element_size()
            if t.numel() and end > storage.nbytes():
                why = (
                    f"a tensor of {t.numel()} elements from offset {t.storage_offset()} in a "
                    f"storage of {storage.nbytes()} bytes"
                )
            else:
                storages[(str(storage.device), storage.data_ptr())] = storage.nbytes()
                reads += t.numel() * t.element_size()
                continue
        raise ValueError(
            f"checkpoint: {path}: {where} is {why} of shape {tuple(t.shape)}, which torch.save "
            "of a model never writes; not loaded"
        )
    if reads > _MAX_READS * sum(storages.values()):
        raise ValueError(
            f"checkpoint: {path}: its tensors view {reads} bytes of {sum(storages.values())} "
            f"bytes of storage (more than {_MAX_READS} times over), which torch.save of a model "
            "never writes; not loaded"
        )


def _short(value: object) -> str:
    """``repr(value)``, cut to 200 characters: a file's strings go into messages."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


# What a checkpoint saved before a config field existed used, where that differs from today's
# default (0.2.0's denoisers were conditioned on z alone; 0.2.0 trained stage 2 at a constant
# learning rate; before diffusion_draws, one draw per window). Read by load() and by train()'s
# resume checks.
BEFORE_FIELD: dict[str, object] = {
    "history_stats": "none",
    "diffusion_lr_decay": 1.0,
    "diffusion_draws": 1,
}


def _config_from(config: Mapping[str, Any], path: Path) -> ForecastConfig:
    """A checkpoint's config as a ForecastConfig; ValueError naming the path and the field."""
    fields = {f.name for f in dataclasses.fields(ForecastConfig)}
    config = {**{k: v for k, v in BEFORE_FIELD.items() if k in fields}, **config}
    unknown = set(config) - fields
    if unknown:
        raise ValueError(
            f"checkpoint: {path}: config has unknown fields {sorted(unknown)} (written by a "
            "newer version?)"
        )
    try:
        return ForecastConfig(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint: {path}: bad config: {exc}") from None
