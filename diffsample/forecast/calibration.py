"""The spread calibration of a trained forecaster: one scale per horizon step and variate.

A trained denoiser, sampled with a few-step ODE solver, returns residuals narrower than those it
was trained on (on ETTh1 about 0.78 of their rms on the training windows themselves, so it is
the denoiser and sampler, not the backbone's fit, that contracts them). :func:`fit_spread_scale`
measures the factor ``model.res_scale [H, N]`` that makes the samples' second moment equal to
the true residuals' on a split; ``train`` fits it after stage 2 as ``TrainConfig.calibration``
says: on the training windows ("train_spread": the same level that ``res_std`` and the Gaussian
baseline use) or on the validation windows ("val_spread": also absorbs a shift of level between
the training and validation periods, which helps only where the test period shares it).

Dimensions: S samples, B windows per batch, W windows scored, H horizon, N variates.
"""

from __future__ import annotations

from typing import Any

import torch

from .._utils import check_int, expected
from ..distributed import Ranks
from .data import ForecastDataset, ForecastSplit
from .evaluation import check_sampling_memory, forecast_windows, sampling_bytes
from .model import ITransformerDiffusion
from .model_config import ForecastConfig
from .sampling_config import SamplingConfig, check_num_steps, resolve_sampling
from .train_config import TrainConfig

__all__ = [
    "CALIBRATION_SAMPLING",
    "calibrate",
    "calibration_sampling",
    "check_calibration",
    "fit_spread_scale",
]

# fit_spread_scale's sampling without a config: the defaults, 16 samples per window
CALIBRATION_SAMPLING = SamplingConfig(n_samples=16)


@torch.no_grad()
def fit_spread_scale(
    model: ITransformerDiffusion,
    split: ForecastSplit,
    *,
    n_samples: int | None = None,
    num_steps: int | None = None,
    sampler: str | None = None,
    max_windows: int | None = None,
    batch_size: int = 256,
    seed: int | None = None,
    group: Any = None,
    sampling: SamplingConfig | None = None,
) -> torch.Tensor:
    """The spread calibration ``[H, N]`` of a trained model, matched on the windows of a split.

    With r = (y - y_det - res_mean) / res_std the normalised residual, true on the windows and
    sampled from the denoiser (before any ``res_scale``)::

        scale[h, n] = sqrt( mean_w r_true[w, h, n]^2 / mean_w mean_s r_sample[s, w, h, n]^2 )

    i.e. the factor that makes the samples' second moment about the point forecast equal to the
    true residuals' on ``split``, per horizon step and variate. A ratio, not a fitted sigma: the
    denoiser's own dependence of the spread on the window (through z) is kept, only its
    contraction is undone. Pass it to :meth:`ITransformerDiffusion.set_residual_scale`.

    Args:
        model: a trained forecaster (both stages).
        split: the windows to match (the training or the validation split; never the test split).
        n_samples: S samples per window (>= 2); None: ``sampling``'s, else 16.
        num_steps: K sampling steps; None: ``sampling``'s (default 10).
        sampler: a name in :data:`diffsample.SAMPLERS`; None: ``sampling``'s (default
            "dpmpp_2m").
        max_windows: score this many evenly spaced windows of ``split``; None: all.
        batch_size: windows per forecast call.
        seed: keys the sampling noise (with each window's index); None: ``sampling``'s
            (default 0).
        group: as for :func:`~diffsample.forecast.evaluate_split`: under torchrun (or given a
            process group) each rank samples its share of the windows and the sums are added
            up; False: this process alone.
        sampling: every sampling setting at once (a :class:`SamplingConfig`); the loose
            keywords may repeat its values, not contradict them. Without it: the defaults
            with 16 samples.

    Returns:
        ``[H, N]`` float32, positive, on the model's device (the same on every rank).
    """
    s = resolve_sampling(
        sampling,
        default=CALIBRATION_SAMPLING,
        n_samples=n_samples,
        num_steps=num_steps,
        sampler=sampler,
        seed=seed,
    )
    split, idx, ranks = _check_fit(model, split, s, max_windows=max_windows, group=group)
    batch_size = check_int("batch_size", batch_size)
    c = model.config
    true_ms = torch.zeros(c.horizon, c.n_variates, dtype=torch.float64, device=idx.device)
    sample_ms = torch.zeros_like(true_ms)
    batches = forecast_windows(model, split, idx, s.n_samples, batch_size=batch_size, sampling=s)
    for b, fc, _ in batches:
        scale = model.res_std * model.res_scale  # [H, N]: undo the scale in use, if any
        r_true = (b.y - fc.point - model.res_mean) / model.res_std  # [B, H, N]
        r = (fc.samples - fc.point - model.res_mean) / scale  # [S, B, H, N]
        true_ms += r_true.double().pow(2).sum(0)
        sample_ms += r.double().pow(2).mean(0).sum(0)
    ranks.sum_([true_ms, sample_ms])
    return (true_ms / sample_ms.clamp_min(1e-12)).sqrt().float()


def _check_fit(
    model: object, split: object, s: SamplingConfig, *, max_windows: object, group: Any
) -> tuple[ForecastSplit, torch.Tensor, Ranks]:
    """The checks of :func:`fit_spread_scale`; the split on the model's device, this rank's
    share of the evenly spaced windows ``[W / world]``, and the ranks sharing them."""
    if not isinstance(model, ITransformerDiffusion):
        raise TypeError(expected("model", "an ITransformerDiffusion", model))
    if not isinstance(split, ForecastSplit):
        raise TypeError(expected("split", "a ForecastSplit (e.g. data.val)", split))
    check_int("n_samples", s.n_samples, minimum=2)
    if max_windows is not None:
        max_windows = check_int("max_windows", max_windows)
    check_num_steps(s.num_steps, model.config.num_train_steps)
    if len(split) == 0:
        raise ValueError("split: expected at least one window, got an empty split")
    device = next(model.parameters()).device
    ranks = Ranks.resolve(group, device)
    split = split.to(device)
    n = len(split) if max_windows is None else min(max_windows, len(split))
    idx = torch.linspace(0, len(split) - 1, n, device=device).round().long()  # [W]
    return split, idx[ranks.shard(n, device)], ranks  # this rank's share (all for one process)


def calibration_sampling(config: TrainConfig) -> SamplingConfig:
    """The sampling of the calibration ``train`` runs: ``config``'s calibration samples and
    steps, its seed, the rest the defaults (DPM-Solver++(2M) on the log-SNR grid)."""
    return SamplingConfig(
        n_samples=config.calibration_samples, num_steps=config.calibration_steps, seed=config.seed
    )


def _batch_size(config: TrainConfig) -> int:
    """Windows per forecast call of the calibration: the training batch, at least 256."""
    return max(config.batch_size, 256)


def _held(config: TrainConfig, train: ForecastSplit, val: ForecastSplit) -> ForecastSplit:
    """The split the calibration matches: the validation windows for "val_spread", else the
    training windows."""
    return val if config.calibration == "val_spread" else train


def calibrate(
    model: ITransformerDiffusion,
    config: TrainConfig,
    train: ForecastSplit,
    val: ForecastSplit,
    *,
    group: Any,
) -> None:
    """Fit and set ``model.res_scale`` as ``config.calibration`` says (after stage 2; not
    called for "none"); ``group`` as for :func:`fit_spread_scale`."""
    scale = fit_spread_scale(
        model,
        _held(config, train, val),
        sampling=calibration_sampling(config),
        max_windows=config.calibration_windows,
        batch_size=_batch_size(config),
        group=group,
    )
    model.set_residual_scale(scale)


def check_calibration(
    config: TrainConfig,
    model_config: ForecastConfig,
    data: ForecastDataset,
    *,
    device: str | torch.device,
    world: int,
) -> None:
    """The calibration's sampling steps against the model's T, and its samples against the
    memory ``device`` has available, before any training (see ``check_train_settings``);
    ValueError naming the field."""
    if config.calibration == "none":
        return
    c = model_config
    check_num_steps(config.calibration_steps, c.num_train_steps, name="calibration_steps")
    held = _held(config, data.train, data.val)
    n = (
        len(held)
        if config.calibration_windows is None
        else min(config.calibration_windows, len(held))
    )
    per_call = min(_batch_size(config), -(-n // world))  # as calibrate calls fit_spread_scale
    S = config.calibration_samples
    check_sampling_memory(
        sampling_bytes(S, per_call, c.horizon, c.n_variates),
        device,
        name="calibration_samples",
        what=f"{S} samples x {per_call} windows x [{c.horizon}, {c.n_variates}] (H, N)",
        hint="lower calibration_samples",
    )
