"""ForecastConfig: the forecaster's sizes, each checked and bounded, and the networks they build.

The bounds (:data:`CONFIG_LIMITS`) are what lets a checkpoint's config be read safely: a config
from a file cannot ask for an absurd model, and :func:`state_shapes` gives the shape of every
weight of a config from modules built on the meta device (no memory), so the file's weights
are compared with it before a model of that size is built (diffsample.forecast.checkpoint).

Dimensions: L lookback, H horizon, N variates, F time features, D backbone width,
Dz = D + the history statistics (the denoiser's condition width), T train steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .._utils import check_choice, check_int, check_number, expected
from ..prediction import Prediction
from .denoisers import TokenDenoiser, UNet1DDenoiser, unet_attention_levels
from .itransformer import ITransformer
from .itransformer import check_heads as _check_heads

__all__ = [
    "CONFIG_LIMITS",
    "STATS_WIDTH",
    "DenoiserName",
    "ForecastConfig",
    "HistoryStats",
    "ScheduleName",
    "networks",
    "state_shapes",
]

DenoiserName = Literal["token", "unet"]
ScheduleName = Literal["linear", "scaled_linear", "cosine", "sigmoid"]
HistoryStats = Literal["scale", "scale_level", "none"]
# what the denoiser's condition adds to z, per variate: Dz = d_model + this
STATS_WIDTH: dict[str, int] = {"none": 0, "scale": 1, "scale_level": 2}

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


def _check_limit(name: str, value: object, limit: int) -> object:
    """``value`` (an int already checked) if it is at most ``limit``; ValueError otherwise."""
    if isinstance(value, int) and value > limit:
        raise ValueError(
            expected(name, f"an integer <= {limit} (the limit of ForecastConfig)", value)
        )
    return value


def networks(c: ForecastConfig) -> tuple[ITransformer, nn.Module]:
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
    cond_dim = c.d_model + STATS_WIDTH[c.history_stats]  # Dz: z, then the history stats
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


def state_shapes(c: ForecastConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every entry of the state dict of ``ITransformerDiffusion(c)``, from modules
    built on the meta device: no memory, so a config read from a file is compared with the
    file's weights before a model of its size is built."""
    with torch.device("meta"):
        backbone, denoiser = networks(c)
    shapes = {
        f"{prefix}.{k}": tuple(v.shape)
        for prefix, net in (("backbone", backbone), ("denoiser", denoiser))
        for k, v in net.state_dict().items()
    }
    N, H = c.n_variates, c.horizon
    return {**shapes, "res_mean": (N,), "res_std": (N,), "res_scale": (H, N)}
