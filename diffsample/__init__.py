"""diffsample: fast, reproducible sampling from diffusion models, and exact forecast scoring.

Core API (the forecasting layer lives in ``diffsample.forecast`` and is imported on demand)::

    from diffsample import NoiseSchedule, sample_many, sample_ddim, crps
"""

from .batching import plan_chunk, sample_many
from .metrics import (
    ForecastMetrics,
    crps,
    crps_normal,
    crps_sum,
    energy_score,
    quantile_crps,
    variogram_score,
)
from .noise import keyed_normal
from .prediction import (
    Denoiser,
    DynamicThreshold,
    Prediction,
    PreparesCond,
    to_x0_eps,
    training_target,
)
from .samplers import (
    SAMPLERS,
    Known,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
)
from .schedules import NoiseSchedule

__version__ = "0.6.0"

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "DynamicThreshold",
    "ForecastMetrics",
    "Known",
    "NoiseSchedule",
    "Prediction",
    "PreparesCond",
    "crps",
    "crps_normal",
    "crps_sum",
    "energy_score",
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
    "variogram_score",
]
