"""diffsample: fast, reproducible sampling from diffusion models, and exact forecast scoring.

Core API (the forecasting layer lives in ``diffsample.forecast`` and is imported on demand)::

    from diffsample import NoiseSchedule, sample_many, sample_ddim, crps
"""

from .batching import plan_chunk, sample_many
from .metrics import ForecastMetrics, crps, crps_sum, quantile_crps
from .noise import keyed_normal
from .prediction import Denoiser, Prediction, PreparesCond, to_x0_eps, training_target
from .samplers import SAMPLERS, sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_dpmpp_3m
from .schedules import NoiseSchedule

__version__ = "0.4.0"

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "ForecastMetrics",
    "NoiseSchedule",
    "Prediction",
    "PreparesCond",
    "crps",
    "crps_sum",
    "keyed_normal",
    "plan_chunk",
    "quantile_crps",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_many",
    "to_x0_eps",
    "training_target",
]
