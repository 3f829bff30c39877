"""The tiny forecaster and trainer configurations the tests share (milliseconds a step on a CPU)."""

from __future__ import annotations

from diffsample.forecast import ForecastConfig, TrainConfig

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

# two epochs of each stage, three batches each, at rates that move a tiny model fast
QUICK = TrainConfig(
    batch_size=16,
    point_epochs=2,
    point_lr=3e-3,
    diffusion_epochs=3,
    diffusion_lr=1e-2,
    max_batches_per_epoch=3,
    seed=0,
)
