"""diffsample.forecast: the reference probabilistic forecaster built on the core.

iTransformer point forecast + conditional residual diffusion, the ETT data pipeline, a
two-stage mixed-precision trainer, streaming evaluation of a split and the ``diffsample``
command. The core (``diffsample``) never imports this package.

Dimensions: S samples, B windows, L lookback, H horizon, N variates, F time features,
D backbone width.
"""

from .data import (
    ForecastDataset,
    ForecastSplit,
    StandardScaler,
    WindowBatch,
    check_data_spec,
    download_ett,
    load_dataset,
    synthetic_dataset,
)
from .denoisers import TokenDenoiser, UNet1DDenoiser
from .evaluation import Evaluation, evaluate_split
from .forecast import LoadedSamples, load_samples, save_samples, window_dates
from .itransformer import ITransformer
from .model import Forecast, ForecastConfig, ITransformerDiffusion
from .sampling_config import SamplingConfig
from .training import NonFiniteLossError, TrainConfig, TrainResult, train

__all__ = [
    "Evaluation",
    "Forecast",
    "ForecastConfig",
    "ForecastDataset",
    "ForecastSplit",
    "ITransformer",
    "ITransformerDiffusion",
    "LoadedSamples",
    "NonFiniteLossError",
    "SamplingConfig",
    "StandardScaler",
    "TokenDenoiser",
    "TrainConfig",
    "TrainResult",
    "UNet1DDenoiser",
    "WindowBatch",
    "check_data_spec",
    "download_ett",
    "evaluate_split",
    "load_dataset",
    "load_samples",
    "save_samples",
    "synthetic_dataset",
    "train",
    "window_dates",
]
