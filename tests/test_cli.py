"""The diffsample command and its evaluation loop, on a tiny model and the synthetic data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffsample._utils import atomic_write
from diffsample.forecast import ForecastConfig, ITransformerDiffusion, load_dataset
from diffsample.forecast.cli import evaluate_split, main

TINY = ForecastConfig(
    lookback=24,
    horizon=12,
    n_variates=7,
    n_time_features=4,
    d_model=16,
    n_heads=2,
    d_ff=16,
    denoiser_width=16,
    denoiser_layers=1,
    denoiser_heads=2,
    num_train_steps=50,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = ITransformerDiffusion(TINY)
    for p in model.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = model.save(tmp_path_factory.mktemp("run") / "model.pt")
    return model, path


def test_evaluate_split_does_not_depend_on_the_batch_size(tiny):
    model, _ = tiny
    data = load_dataset(None, lookback=24, horizon=12)
    kw = dict(n_samples=6, num_steps=3, max_windows=10, progress=False)
    a = evaluate_split(model, data.test, batch_size=3, **kw)
    b = evaluate_split(model, data.test, batch_size=10, **kw)
    assert a["windows"] == 10 and a["samples"] == 6
    for k in ("crps", "quantile_crps", "coverage_90", "point_mse", "mse_mean"):
        assert math.isfinite(a[k]) and a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def test_evaluate_command_writes_results(tiny, tmp_path, capsys):
    _, path = tiny
    out = tmp_path / "scores.json"
    rc = main(
        [
            "evaluate",
            str(path),
            "--samples",
            "4",
            "--steps",
            "3",
            "--windows",
            "8",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["scores"]["windows"] == 8
    assert 0 <= report["scores"]["coverage_50"] <= 1 and report["scores"]["crps"] > 0
    assert "CRPS" in capsys.readouterr().out


def test_command_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bad)]) == 2
    assert "not a readable diffsample checkpoint" in capsys.readouterr().err
    good = tmp_path / "good.pt"
    ITransformerDiffusion(TINY).save(good)
    assert main(["evaluate", str(good), "--windows", "0"]) == 2
    assert "max_windows: expected a positive integer, got 0" in capsys.readouterr().err


def test_train_command_on_a_tiny_budget(tmp_path):
    rc = main(
        [
            "train",
            "--out",
            str(tmp_path / "run"),
            "--lookback",
            "24",
            "--horizon",
            "12",
            "--d-model",
            "16",
            "--epochs",
            "1",
            "--diffusion-epochs",
            "1",
            "--batches-per-epoch",
            "2",
            "--samples",
            "3",
            "--steps",
            "2",
            "--windows",
            "4",
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["stage"] for r in report["history"]] == [1, 2]
    assert ITransformerDiffusion.load(tmp_path / "run" / "model.pt").config.d_model == 16


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "results.json"
    atomic_write(target, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind
