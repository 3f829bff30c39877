"""diffsample.forecast: the reference probabilistic forecaster built on the core.

iTransformer point forecast + conditional residual diffusion, the ETT data pipeline, a
two-stage mixed-precision trainer and the ``diffsample`` command. The core (``diffsample``)
never imports this package.
"""

from .data import (
    ForecastDataset,
    ForecastSplit,
    StandardScaler,
    WindowBatch,
    download_ett,
    load_dataset,
    synthetic_dataset,
)
from .denoisers import TokenDenoiser, UNet1DDenoiser
from .itransformer import ITransformer
from .model import ForecastConfig, ITransformerDiffusion
from .training import TrainConfig, TrainResult, train

__all__ = [
    "ForecastConfig",
    "ForecastDataset",
    "ForecastSplit",
    "ITransformer",
    "ITransformerDiffusion",
    "StandardScaler",
    "TokenDenoiser",
    "TrainConfig",
    "TrainResult",
    "UNet1DDenoiser",
    "WindowBatch",
    "download_ett",
    "load_dataset",
    "synthetic_dataset",
    "train",
]
