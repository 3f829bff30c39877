"""The spread calibration (diffsample.forecast.calibration): fit_spread_scale against a slow
twin of its sums, train's calibration (calibrate) after stage 2, and the settings a calibration
needs checked before any epoch (check_calibration, through train and check_train_settings).

Dimensions: W windows, S samples, H horizon, N variates."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import QUICK, TINY

from diffsample import memory
from diffsample.forecast import ITransformerDiffusion, TrainConfig, synthetic_dataset, train
from diffsample.forecast import training as training_module


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_steps=600, n_variates=3, lookback=24, horizon=12, seed=0)


def fresh_model(seed=0, **changes) -> ITransformerDiffusion:
    torch.manual_seed(seed)
    return ITransformerDiffusion(dataclasses.replace(TINY, **changes))


# ---------------------------------------------------------------- spread calibration
def _second_moments(model, split, n_samples, seed):
    """The slow twin of fit_spread_scale: every window in one forecast call, sums written out.
    Returns mean_w r_true^2 and mean_w mean_s r_sample^2, each [H, N], r in res_std units."""
    b = split.windows(torch.arange(len(split)))
    fc = model.forecast(
        b.x,
        n_samples,
        time_features=b.x_mark,
        sampler="dpmpp_2m",
        num_steps=4,
        seed=seed,
        window_ids=b.index,
        progress=False,
    )
    r_true = (b.y - fc.point - model.res_mean) / model.res_std  # [W, H, N]
    r = (fc.samples - fc.point - model.res_mean) / model.res_std  # [S, W, H, N]
    return r_true.double().pow(2).mean(0), r.double().pow(2).mean((0, 1))


def test_spread_scale_matches_the_held_out_second_moment(data):
    model = fresh_model()
    train(model, data, dataclasses.replace(QUICK, calibration="none"), device="cpu", progress=False)
    assert torch.equal(model.res_scale, torch.ones(12, 3))  # "none" leaves it alone
    scale = training_module.fit_spread_scale(
        model, data.val, n_samples=6, num_steps=4, batch_size=7, seed=3
    )
    true_ms, sample_ms = _second_moments(model, data.val, 6, seed=3)
    torch.testing.assert_close(scale.double(), (true_ms / sample_ms).sqrt(), rtol=1e-4, atol=0)
    # calibrated, the samples' second moment is the held-out residuals' at every (step, variate)
    model.set_residual_scale(scale)
    true_ms, sample_ms = _second_moments(model, data.val, 6, seed=3)
    torch.testing.assert_close(sample_ms, true_ms, rtol=1e-4, atol=0)
    # and the fit undoes the scale in use: fitting again gives the same scale, not ones
    again = training_module.fit_spread_scale(
        model, data.val, n_samples=6, num_steps=4, batch_size=64, seed=3
    )
    torch.testing.assert_close(again, scale, rtol=1e-4, atol=0)


def test_training_calibrates_the_spread_when_asked(data):
    assert TrainConfig().calibration == "none"  # see docs/results.md: it costs CRPS on ETTh1
    model = fresh_model()
    config = dataclasses.replace(
        QUICK, calibration="train_spread", calibration_samples=4, calibration_steps=3
    )
    train(model, data, config, device="cpu", progress=False)
    scale = model.res_scale
    assert scale.shape == (12, 3) and bool((scale > 0).all())
    assert not torch.equal(scale, torch.ones(12, 3))
    # the same fit as a call after training (the scale in use is undone by the fit)
    torch.testing.assert_close(
        training_module.fit_spread_scale(
            model, data.train, n_samples=4, num_steps=3, max_windows=2048, seed=QUICK.seed
        ),
        scale,
        rtol=1e-4,
        atol=0,
    )


def test_fit_spread_scale_checks_its_arguments(data):
    model = fresh_model()
    with pytest.raises(TypeError, match=r"^model: expected an ITransformerDiffusion"):
        training_module.fit_spread_scale("model", data.val)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^split: expected a ForecastSplit"):
        training_module.fit_spread_scale(model, data)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^n_samples: expected an integer >= 2, got int 1$"):
        training_module.fit_spread_scale(model, data.val, n_samples=1)


def test_a_calibration_the_model_cannot_run_is_refused_before_any_epoch(
    tmp_path, data, monkeypatch
):
    # calibration_steps > T trained both stages, then failed in the calibration and left a
    # checkpoint that resume (with a corrected value: another config) refused: unfinishable
    def never(record):
        raise AssertionError("an epoch ran")

    ckpt = tmp_path / "m.pt"
    bad = dataclasses.replace(QUICK, calibration="train_spread", calibration_steps=51)
    with pytest.raises(
        ValueError,
        match=r"^calibration_steps: expected at most T = 50 sampling steps \(the model's "
        r"num_train_steps\), got 51$",
    ):
        train(fresh_model(), data, bad, device="cpu", checkpoint=ckpt, on_epoch=never)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    big = dataclasses.replace(QUICK, calibration="val_spread", calibration_samples=1000)
    n = len(data.val)
    with pytest.raises(
        ValueError,
        match=rf"^calibration_samples: 1000 samples x {n} windows x \[12, 3\] \(H, N\) need "
        r"about .* MiB to sample and score, but cpu has 1\.0 MiB available; lower "
        r"calibration_samples$",
    ):
        train(fresh_model(), data, big, device="cpu", checkpoint=ckpt, on_epoch=never)
    assert not ckpt.exists()
    # without a calibration neither setting is used, so neither is checked
    off = dataclasses.replace(big, calibration="none", calibration_steps=51)
    training_module.check_train_settings(off, TINY, data)
