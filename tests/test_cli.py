"""The diffsample command and the evaluation it calls, on a tiny model and the synthetic data."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing

import pytest
import torch

from diffsample import SAMPLERS, sample_ddim
from diffsample._utils import atomic_write
from diffsample.forecast import (
    Evaluation,
    ForecastConfig,
    ITransformerDiffusion,
    TrainConfig,
    cli,
    evaluate_split,
    load_dataset,
)
from diffsample.forecast.cli import main
from diffsample.metrics import ForecastMetrics

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


@pytest.fixture(scope="module")
def data():
    return load_dataset(None, lookback=24, horizon=12)


def _assert_close(name: str, got: float, want: float, count: float) -> None:
    """Scores of float32 samples drawn in differently sized denoiser calls agree to round-off;
    a coverage count may also differ by an observation that sits on an interval's end."""
    slack = 1.5 / count if name.startswith("coverage_") else 1e-6
    assert got == pytest.approx(want, rel=1e-5, abs=slack), name


def test_evaluate_split_does_not_depend_on_the_batch_size(tiny, data):
    model, _ = tiny
    kw = dict(n_samples=6, num_steps=3, max_windows=10, progress=False)
    a = evaluate_split(model, data.test, batch_size=3, **kw)
    b = evaluate_split(model, data.test, batch_size=10, **kw)
    assert (a.windows, a.samples, a.steps, a.sampler) == (10, 6, 3, "ddim")
    assert a.metrics.keys() == b.metrics.keys()
    for k in ("crps", "quantile_crps", "coverage_90", "point_mse", "mse_mean"):
        assert math.isfinite(a.metrics[k]), k
        _assert_close(k, a.metrics[k], b.metrics[k], a.metrics["count"])


def test_evaluate_split_is_the_metrics_of_one_forecast_call(tiny, data):
    """The streaming loop against scoring one forecast of the same windows all at once."""
    model, _ = tiny
    ev = evaluate_split(model, data.test, n_samples=5, num_steps=3, batch_size=4, max_windows=9)
    b = data.test.windows(torch.arange(9))
    fc = model.forecast(
        b.x, 5, time_features=b.x_mark, num_steps=3, window_ids=b.index, progress=False
    )
    ref = ForecastMetrics()
    ref.update(fc.samples, b.y)
    want = dict(ref.compute())
    want["point_mse"] = float(((fc.point - b.y).double() ** 2).mean())
    want["point_mae"] = float((fc.point - b.y).double().abs().mean())
    assert ev.metrics.keys() == want.keys()
    for k, v in want.items():
        _assert_close(k, ev.metrics[k], v, want["count"])


def test_evaluation_is_a_frozen_record_with_a_json_form(tiny, data):
    model, _ = tiny
    ev = evaluate_split(model, data.val, n_samples=3, num_steps=2, max_windows=4, progress=False)
    assert isinstance(ev, Evaluation) and (ev.windows, ev.samples, ev.steps) == (4, 3, 2)
    assert all(type(v) is float for v in ev.metrics.values()) and ev.seconds > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.windows = 5  # type: ignore[misc]
    d = ev.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert {k: d[k] for k in ("windows", "samples", "steps", "sampler")} == {
        "windows": 4,
        "samples": 3,
        "steps": 2,
        "sampler": "ddim",
    }
    assert d["sampling_seconds"] == round(ev.seconds, 3) and d["crps"] == ev.metrics["crps"]
    source = {"crps": 1.0}
    record = Evaluation(source, "ddim", 2, 3, 4, 0.5)
    source["crps"] = 2.0
    assert record.metrics == {"crps": 1.0}  # a copy, not a view of the caller's dict
    named = evaluate_split(
        model,
        data.val,
        n_samples=2,
        num_steps=2,
        sampler=sample_ddim,
        max_windows=2,
        progress=False,
    )
    assert named.sampler == "sample_ddim"


def test_evaluate_split_checks_its_arguments(tiny, data):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive integer, got int 0$"):
        evaluate_split(model, data.test, batch_size=0)
    with pytest.raises(TypeError, match=r"^max_windows: expected a positive integer, got float"):
        evaluate_split(model, data.test, max_windows=2.0)
    with pytest.raises(TypeError, match=r"^split: expected a ForecastSplit"):
        evaluate_split(model, data)
    with pytest.raises(TypeError, match=r"^model: expected an ITransformerDiffusion"):
        evaluate_split(model.denoiser, data.test)


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


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err  # one line, no traceback
    return err


def test_command_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint file" in _one_line(capsys)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bad)]) == 2
    assert "not a readable diffsample checkpoint" in _one_line(capsys)
    good = tmp_path / "good.pt"
    ITransformerDiffusion(TINY).save(good)
    assert main(["evaluate", str(good), "--windows", "0"]) == 2
    assert _one_line(capsys).startswith(
        "diffsample evaluate: error: max_windows: expected a positive integer, got int 0"
    )
    assert main(["evaluate", str(good), "--device", "gpu:x"]) == 2
    assert "--device: expected auto, cpu, cuda" in _one_line(capsys)
    assert main(["train", "--out", str(tmp_path / "r"), "--batch-size", "0", "--epochs", "0"]) == 2
    assert "batch_size: expected a positive integer, got int 0" in _one_line(capsys)


def test_type_errors_are_one_line_and_exit_2_too(tiny, monkeypatch, capsys):
    _, path = tiny

    def wrong_kind(*args, **kwargs):
        raise TypeError("n_samples: expected a positive integer,\ngot float 1.5")

    monkeypatch.setattr(cli, "evaluate_split", wrong_kind)
    assert main(["evaluate", str(path)]) == 2
    assert _one_line(capsys) == (
        "diffsample evaluate: error: n_samples: expected a positive integer, got float 1.5\n"
    )


def _choices(parser: argparse.ArgumentParser, command: str) -> dict[str, tuple]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: tuple(a.choices) for a in sub.choices[command]._actions if a.choices}


def test_choices_and_defaults_come_from_the_library(monkeypatch):
    from diffsample.forecast.model import DenoiserName, ScheduleName
    from diffsample.forecast.training import AmpMode
    from diffsample.prediction import Prediction

    train = _choices(cli._parser(), "train")
    assert train["sampler"] == tuple(SAMPLERS)
    assert train["denoiser"] == typing.get_args(DenoiserName)
    assert train["prediction"] == typing.get_args(Prediction)
    assert train["schedule"] == typing.get_args(ScheduleName)
    assert train["amp"] == typing.get_args(AmpMode)
    # the Literal annotations of the configs are those same aliases
    hints = typing.get_type_hints(ForecastConfig)
    assert (hints["denoiser"], hints["prediction"], hints["schedule"]) == (
        DenoiserName,
        Prediction,
        ScheduleName,
    )
    assert typing.get_type_hints(TrainConfig)["amp"] == AmpMode
    # a sampler registered with the core is offered without touching the command
    monkeypatch.setitem(SAMPLERS, "ddim_again", sample_ddim)
    assert "ddim_again" in _choices(cli._parser(), "evaluate")["sampler"]
    args = cli._parser().parse_args(["train", "--out", "x"])
    assert (args.d_model, args.denoiser, args.amp, args.batch_size) == (
        ForecastConfig.d_model,
        ForecastConfig.denoiser,
        TrainConfig.amp,
        TrainConfig.batch_size,
    )


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
