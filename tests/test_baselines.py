"""The Gaussian-residual baseline: its closed-form CRPS against properscoring and against the
ecdf CRPS of its own samples, the residual std against a direct computation, and the ETTh1
results script end to end on the synthetic data with a tiny configuration.

Dimensions: S samples, B windows, H horizon, N variates."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY as TINY_BASE

from diffsample import crps
from diffsample.forecast import (
    ITransformerDiffusion,
    TrainConfig,
    evaluate_split,
    synthetic_dataset,
    train,
)
from diffsample.forecast.baselines import (
    BootstrapBaseline,
    GaussianBaseline,
    bootstrap_samples,
    gaussian_crps,
    gaussian_samples,
    residual_baselines,
    residual_std,
    residuals,
)
from diffsample.forecast.evaluation import Forecaster

TINY = dataclasses.replace(TINY_BASE, n_layers=1)


def test_gaussian_crps_matches_properscoring():
    properscoring = pytest.importorskip("properscoring")
    g = torch.Generator().manual_seed(0)
    point = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    sigma = torch.rand(3, generator=g, dtype=torch.float64) + 0.1  # [N]
    obs = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    want = properscoring.crps_gaussian(obs.numpy(), mu=point.numpy(), sig=sigma.numpy())
    np.testing.assert_allclose(gaussian_crps(point, sigma, obs).numpy(), want, rtol=1e-10)


def test_gaussian_crps_is_the_metrics_closed_form():
    # one implementation: the baseline scores with diffsample.metrics.crps_normal
    from diffsample.metrics import crps_normal

    g = torch.Generator().manual_seed(2)
    point = torch.randn(4, 5, 3, generator=g)
    sigma = torch.rand(3, generator=g) + 0.1
    obs = torch.randn(4, 5, 3, generator=g)
    assert torch.equal(gaussian_crps(point, sigma, obs), crps_normal(point, sigma, obs))


def test_gaussian_crps_closed_form_at_zero():
    # CRPS(N(0, s^2), 0) = s (2 / sqrt(2 pi) - 1 / sqrt(pi))
    s = torch.tensor([0.5, 2.0], dtype=torch.float64)
    got = gaussian_crps(torch.zeros(2, dtype=torch.float64), s, torch.zeros(2, dtype=torch.float64))
    want = s * (2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi))
    torch.testing.assert_close(got, want)


def test_samples_score_like_the_closed_form():
    g = torch.Generator().manual_seed(1)
    point = torch.randn(8, 6, 3, generator=g, dtype=torch.float64)  # [B, H, N]
    sigma = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    obs = point + sigma * torch.randn(8, 6, 3, generator=g, dtype=torch.float64)
    x = gaussian_samples(point, sigma, 4000, generator=g)  # [S, B, H, N]
    assert x.shape == (4000, 8, 6, 3) and x.is_contiguous()
    torch.testing.assert_close(x.mean(0), point, atol=0.12, rtol=0)
    torch.testing.assert_close(x.std(0).mean((0, 1)), sigma, atol=0.03, rtol=0.02)
    exact = gaussian_crps(point, sigma, obs).mean()
    fair = crps(x, obs, estimator="fair").mean()
    assert abs(float(fair - exact)) < 0.01 * float(exact)


@pytest.mark.parametrize(
    ("sigma", "error", "pattern"),
    [
        (torch.tensor([1.0, 0.0, 1.0]), ValueError, r"^sigma: expected positive finite values"),
        (torch.ones(4), ValueError, r"^sigma: expected a tensor broadcastable"),
        (torch.ones(3, dtype=torch.long), TypeError, r"^sigma: expected a floating-point tensor"),
        ([1.0, 1.0, 1.0], TypeError, r"^sigma: expected a torch.Tensor"),
    ],
)
def test_bad_sigma(sigma, error, pattern):
    with pytest.raises(error, match=pattern):
        gaussian_samples(torch.zeros(2, 5, 3), sigma, 10)


def test_bad_n_samples():
    with pytest.raises(TypeError, match=r"^n_samples: expected a positive integer, got float"):
        gaussian_samples(torch.zeros(2, 5, 3), torch.ones(3), 10.0)  # type: ignore[arg-type]


def test_residual_std_is_the_training_statistic():
    data = synthetic_dataset(n_steps=600, n_variates=3, lookback=24, horizon=12, seed=0)
    torch.manual_seed(0)
    model = ITransformerDiffusion(TINY)
    quick = TrainConfig(point_epochs=1, diffusion_epochs=1, max_batches_per_epoch=2, batch_size=16)
    train(model, data, quick, device="cpu", progress=False)
    torch.testing.assert_close(residual_std(model, data.train, batch_size=7), model.res_std)
    with torch.no_grad():
        b = data.val.windows(torch.arange(len(data.val)))
        y_det, _ = model(b.x, b.x_mark)
    want = (b.y - y_det).double().reshape(-1, 3).std(0, unbiased=False).float()
    torch.testing.assert_close(residual_std(model, data.val), want, rtol=1e-4, atol=1e-6)
    # the bootstrap's pool: every window's error, in window order, for any batch size
    pool = residuals(model, data.val, batch_size=5)
    torch.testing.assert_close(pool, b.y - y_det, rtol=0, atol=1e-6)
    assert model.training is False


def test_bootstrap_samples_are_the_point_plus_whole_residual_windows():
    g = torch.Generator().manual_seed(0)
    point = torch.randn(4, 6, 3, generator=g)  # [B, H, N]
    pool = torch.randn(5, 6, 3, generator=g)  # [R, H, N]
    x = bootstrap_samples(point, pool, 200, generator=torch.Generator().manual_seed(1))
    assert x.shape == (200, 4, 6, 3) and x.is_contiguous()
    # a slow reference: each sample of each window is its point plus one whole pool window
    used = set()
    for s in range(200):
        for b in range(4):
            hits = [r for r in range(5) if torch.allclose(x[s, b] - point[b], pool[r], atol=1e-6)]
            assert len(hits) == 1
            used.add(hits[0])
    assert used == set(range(5))  # uniform over the pool: every window is drawn
    again = bootstrap_samples(point, pool, 200, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, again)


def test_bootstrap_samples_reject_bad_input():
    with pytest.raises(
        ValueError, match=r"^point, residuals: expected \[B, H, N\] and \[R, H, N\]"
    ):
        bootstrap_samples(torch.zeros(2, 6, 3), torch.zeros(5, 6, 4), 10)
    with pytest.raises(ValueError, match=r"^residuals: expected at least one residual window"):
        bootstrap_samples(torch.zeros(2, 6, 3), torch.zeros(0, 6, 3), 10)
    with pytest.raises(TypeError, match=r"^n_samples: expected"):
        bootstrap_samples(torch.zeros(2, 6, 3), torch.zeros(5, 6, 3), 2.5)  # type: ignore[arg-type]


def _load_script():
    """benchmarks/etth1_results.py as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "etth1_results.py"
    spec = importlib.util.spec_from_file_location("etth1_results", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_script_runs_tiny(tmp_path):
    """The results script end to end on synthetic data: the head and the three baselines
    scored by the library's pipeline on the same windows, the ProbTS-convention scores, the
    shift diagnosis and the head's coverage per variate, both files; a second seed is
    summarised as mean ± sd."""
    bench = _load_script()
    out = tmp_path / "res"
    argv = ["--data", "synthetic(n_steps=600, n_variates=3, seed=0)", "--tiny", "--seeds", "0", "1"]
    argv += ["--samples", "8", "--steps", "4", "--windows", "16", "--out", str(out)]
    assert bench.main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    assert [s["seed"] for s in record["seeds"]] == [0, 1]
    names = ["diffusion head", "gaussian_train_sigma", "gaussian_val_sigma", "bootstrap"]
    for s in record["seeds"]:
        assert list(s["scores"]) == names
        assert all(math.isfinite(v["crps"]) and v["windows"] == 16 for v in s["scores"].values())
        assert set(s["probts"]) == {*names, "point (NMAE)", "windows"}
        assert len(s["diagnosis"]["shift_by_variate"]) == 3
        for level in ("coverage_50", "coverage_90"):  # per variate, averaging to the headline
            per_variate = s["diagnosis"][f"{level}_by_variate"]
            assert len(per_variate) == 3
            head = s["scores"]["diffusion head"][level]
            assert sum(per_variate) / 3 == pytest.approx(head, abs=1e-9)
    text = (out / "results.md").read_text()
    assert text.startswith("# synthetic") and "| bootstrap | " in text and " ± " in text
    assert "- coverage 50%: a variate's mean distance from 0.5: " in text


def test_results_script_probts_scores_every_horizon_th_window_in_raw_units():
    """The ProbTS convention: one test window every H steps, raw units, each window over its
    own sum |y|; the point forecast's score is its NMAE, written out here."""
    bench = _load_script()
    data = synthetic_dataset(n_steps=600, n_variates=3, lookback=24, horizon=12, seed=1)
    torch.manual_seed(0)
    model = ITransformerDiffusion(TINY).eval()
    model.data_spec = data.spec()
    got = bench.probts(model, data, 4, seed=0)
    b = data.test.windows(torch.arange(0, len(data.test) - 1, 12))
    assert got["windows"] == len(b.index) == -(-(len(data.test) - 1) // 12)  # ProbTS's count
    with torch.no_grad():
        y_det, _ = model(b.x, b.x_mark)
    y, point = (data.scaler.inverse_transform(t).double() for t in (b.y, y_det))
    nmae = ((point - y).abs().sum((1, 2)) / y.abs().sum((1, 2))).mean()
    assert got["point (NMAE)"] == pytest.approx(float(nmae), rel=1e-5)


@pytest.mark.parametrize("fn", [residual_std, residuals])
def test_residual_functions_reject_bad_input(fn):
    data = synthetic_dataset(n_steps=200, n_variates=3, lookback=24, horizon=12, seed=0)
    model = ITransformerDiffusion(TINY)
    with pytest.raises(TypeError, match=r"^model: expected an ITransformerDiffusion, got str"):
        fn("model", data.val)
    with pytest.raises(TypeError, match=r"^split: expected a ForecastSplit, got ForecastDataset"):
        fn(model, data)
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive integer, got int 0$"):
        fn(model, data.val, batch_size=0)
    model.train()
    fn(model, data.val)
    assert model.training  # the caller's mode is restored


@pytest.fixture(scope="module")
def trained():
    data = synthetic_dataset(n_steps=600, n_variates=3, lookback=24, horizon=12, seed=0)
    torch.manual_seed(0)
    model = ITransformerDiffusion(TINY)
    quick = TrainConfig(point_epochs=1, diffusion_epochs=1, max_batches_per_epoch=2, batch_size=16)
    train(model, data, quick, device="cpu", progress=False)
    return model, data


def test_residual_baselines_are_the_three_fitted_forecasters(trained):
    model, data = trained
    bl = residual_baselines(model, data)
    assert list(bl) == ["gaussian_train_sigma", "gaussian_val_sigma", "bootstrap"]
    assert all(isinstance(f, Forecaster) and f.name == k for k, f in bl.items())
    assert torch.equal(bl["gaussian_train_sigma"].sigma, model.res_std)
    torch.testing.assert_close(bl["gaussian_val_sigma"].sigma, residual_std(model, data.val))
    torch.testing.assert_close(bl["bootstrap"].residuals, residuals(model, data.train))


def test_baseline_draws_are_keyed_by_window_not_by_batch(trained):
    """A window's samples are the same alone or in any batch (keyed by its id and the seed),
    differ between seeds and between the two Gaussian-free streams."""
    model, data = trained
    b = data.test.windows(torch.arange(6))
    for f in residual_baselines(model, data).values():
        whole = f.forecast(b.x, 5, time_features=b.x_mark, window_ids=b.index, seed=3)
        part = f.forecast(b.x[2:4], 5, time_features=b.x_mark[2:4], window_ids=b.index[2:4], seed=3)
        assert torch.equal(part.samples, whole.samples[:, 2:4])
        other = f.forecast(b.x, 5, time_features=b.x_mark, window_ids=b.index, seed=4)
        assert not torch.equal(other.samples, whole.samples)
        with torch.no_grad():
            y_det, _ = model(b.x, b.x_mark)
        assert (
            torch.equal(whole.point, y_det)
            and whole.variates == model.wrap(whole.samples, whole.point).variates
        )


def test_gaussian_baseline_samples_are_n_point_sigma():
    """Many keyed draws: mean the point and std sigma per variate, to sampling error."""
    torch.manual_seed(0)
    model = ITransformerDiffusion(TINY)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    f = GaussianBaseline(model, sigma)
    x = torch.randn(2, 24, 3, generator=torch.Generator().manual_seed(1))
    fc = f.forecast(x, 4000, time_features=torch.zeros(2, 24, 4))
    r = (fc.samples - fc.point).double()  # [S, B, H, N]
    n = r[..., 0].numel()  # draws per variate
    torch.testing.assert_close(
        r.mean((0, 1, 2)), torch.zeros(3, dtype=torch.float64), atol=5 * 2 / n**0.5, rtol=0
    )
    torch.testing.assert_close(r.std((0, 1, 2)), sigma.double(), rtol=5 / (2 * n) ** 0.5, atol=0)


def test_bootstrap_baseline_adds_whole_pool_windows_drawn_uniformly():
    torch.manual_seed(0)
    model = ITransformerDiffusion(TINY)
    pool = torch.randn(7, 12, 3, generator=torch.Generator().manual_seed(2))  # [R, H, N]
    f = BootstrapBaseline(model, pool)
    x = torch.randn(3, 24, 3, generator=torch.Generator().manual_seed(1))
    fc = f.forecast(x, 700, time_features=torch.zeros(3, 24, 4))
    r = fc.samples - fc.point  # [S, B, H, N]
    match = (r[:, :, None] - pool[None, None]).abs().amax((-2, -1)) < 1e-6  # [S, B, R]
    assert bool((match.sum(-1) == 1).all())  # each sample is its point plus one pool window
    counts = match.sum((0, 1)).double()  # [R] over 2100 draws, 300 expected each
    assert float(((counts - 300) ** 2 / 300).sum()) < 22.5  # chi-square, 6 dof, p = 0.001


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda m: GaussianBaseline(m, torch.tensor([1.0, -1.0, 1.0])), ValueError, "sigma"),
        (lambda m: BootstrapBaseline(m, torch.zeros(4, 11, 3)), ValueError, "residuals"),
        (lambda m: BootstrapBaseline(m, torch.zeros(0, 12, 3)), ValueError, "residuals"),
        (lambda m: GaussianBaseline(object(), torch.ones(3)), TypeError, "model"),
        (
            lambda m: GaussianBaseline(m, torch.ones(3)).forecast(
                torch.zeros(2, 24, 3), 2, time_features=torch.zeros(2, 24, 4), window_ids=[1]
            ),
            ValueError,
            "window_ids",
        ),
        (
            lambda m: GaussianBaseline(m, torch.ones(3)).forecast(
                torch.zeros(2, 24, 3), 2, time_features=torch.zeros(2, 24, 4), window_ids=[0.5, 1]
            ),
            TypeError,
            "window_ids",
        ),
    ],
)
def test_baselines_reject_bad_input(make, error, pattern):
    torch.manual_seed(0)
    with pytest.raises(error, match=pattern):
        make(ITransformerDiffusion(TINY))


def test_evaluate_split_scores_a_baseline_like_its_exact_law(trained):
    """evaluate_split takes any forecaster: the Gaussian baseline's sampled CRPS agrees
    with its closed form on the same windows, to Monte Carlo error; its name and 0 steps are
    recorded; and scores do not depend on the batch size (keyed draws)."""
    model, data = trained
    f = residual_baselines(model, data)["gaussian_val_sigma"]
    ev = evaluate_split(f, data.test, n_samples=400, batch_size=7, progress=False)
    again = evaluate_split(f, data.test, n_samples=400, batch_size=64, progress=False)
    assert (ev.sampler, ev.steps, ev.windows) == ("gaussian_val_sigma", 0, len(data.test))
    assert ev.metrics["crps"] == pytest.approx(again.metrics["crps"], rel=1e-6)
    b = data.test.windows(torch.arange(len(data.test)))
    with torch.no_grad():
        y_det, _ = model(b.x, b.x_mark)
    exact = float(gaussian_crps(y_det, f.sigma, b.y).mean())
    # the ecdf CRPS of S samples exceeds the law's by E|X - X'| / (2 S) = sigma / (S sqrt(pi))
    bias = float(f.sigma.mean()) / (400 * math.sqrt(math.pi))
    assert ev.metrics["crps"] == pytest.approx(exact + bias, rel=0.01)
    assert ev.metrics["point_mse"] == pytest.approx(float(((y_det - b.y) ** 2).mean()), rel=1e-5)
    with pytest.raises(TypeError, match="model"):
        evaluate_split(object(), data.test)
