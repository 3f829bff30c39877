"""The tiny forecaster configuration the tests share (milliseconds a step on a CPU)."""

from __future__ import annotations

from diffsample.forecast import ForecastConfig

TINY = ForecastConfig(
    lookback=24,
    horizon=12,
    n_variates=3,
    n_time_features=4,
    d_model=16,
    n_heads=2,
    n_layers=2,
    d_ff=24,
    dropout=0.0,
    denoiser_width=16,
    denoiser_layers=1,
    denoiser_heads=2,
    unet_channels=(8, 16),
    num_train_steps=50,
)
