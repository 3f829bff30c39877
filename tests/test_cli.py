"""The diffsample command, in-process (``main([...])``), on a tiny model and the synthetic data."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import io
import json
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsample import SAMPLERS, memory, sample_ddim
from diffsample._utils import atomic_write
from diffsample.forecast import (
    ForecastConfig,
    ITransformerDiffusion,
    SamplingConfig,
    TrainConfig,
    cli,
    load_samples,
    outputs,
    report,
    scoring,
)
from diffsample.forecast import run as pipeline
from diffsample.forecast.cli import main
from diffsample.forecast.flags import MODEL_FLAGS, SAMPLING_FLAGS, TRAIN_FLAGS

# a tiny model on the synthetic data: about a second of training
TINY = [
    "--seq_len", "24", "--pred_len", "12", "--d_model", "16", "--n_heads", "2", "--d_ff", "16",
    "--denoiser_width", "16", "--denoiser_layers", "1", "--denoiser_heads", "2",
    "--diffusion_steps", "50", "--train_epochs", "1", "--diffusion_epochs", "1",
    "--batches_per_epoch", "2", "--calibration_windows", "16",
]  # fmt: skip
SAMPLING = ["--samples", "4", "--steps", "2", "--windows", "6", "--no-progress"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny `train` run, shared: its folder and what it printed."""
    out = tmp_path_factory.mktemp("run") / "r"
    rc, stdout, stderr = _run(["train", "--out", str(out), *TINY, *SAMPLING, "--save-samples"])
    assert (rc, stderr) == (0, ""), stderr
    return out, stdout


def _one_line(err: str) -> str:
    assert err.startswith("diffsample: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err  # one line, no traceback
    return err


def _no_training(monkeypatch) -> None:
    def trained(*args, **kwargs):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(pipeline, "train", trained)
    monkeypatch.setattr(scoring, "evaluate_split", trained)


# ------------------------------------------------------------------------------------ flags
def _subparser(command: str) -> argparse.ArgumentParser:
    p = cli._parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _choices(command: str) -> dict[str, tuple]:
    return {a.dest: tuple(a.choices) for a in _subparser(command)._actions if a.choices}


def test_time_series_library_flag_names_and_the_old_spellings():
    p = cli._parser()
    tsl = p.parse_args(
        "train --out x --root_path ./dataset/ETT-small/ --data_path ETTh1.csv --data ETTh1 "
        "--seq_len 48 --pred_len 24 --enc_in 7 --d_model 64 --n_heads 4 --e_layers 3 --d_ff 256 "
        "--dropout 0.2 --batch_size 16 --learning_rate 0.0005 --train_epochs 5 --patience 2 "
        "--use_amp --seed 3 --denoiser unet --denoiser_width 32 --denoiser_layers 3 "
        "--denoiser_heads 2 --unet_channels 16 32 --prediction eps --schedule linear "
        "--diffusion_steps 200 --diffusion_learning_rate 0.01 --diffusion_epochs 7".split()
    )
    data = cli.load_dataset(None, lookback=48, horizon=24)
    config = ForecastConfig(
        n_variates=7, n_time_features=4, **{f: cli._field_value(tsl, f) for f in MODEL_FLAGS}
    )
    assert config == ForecastConfig(
        lookback=48, horizon=24, n_variates=7, n_time_features=data.n_marks, d_model=64,
        n_heads=4, n_layers=3, d_ff=256, dropout=0.2, denoiser="unet", denoiser_width=32,
        denoiser_layers=3, denoiser_heads=2, unet_channels=(16, 32), prediction="eps",
        schedule="linear", num_train_steps=200,
    )  # fmt: skip
    tc = TrainConfig(**{f: getattr(tsl, f) for f in TRAIN_FLAGS})
    assert tc == TrainConfig(
        batch_size=16, point_epochs=5, point_lr=5e-4, patience=2, amp="auto", seed=3,
        diffusion_lr=0.01, diffusion_epochs=7,
    )  # fmt: skip
    assert cli._source(tsl) == (str(Path("./dataset/ETT-small/") / "ETTh1.csv"), "etth")
    assert tsl.enc_in == 7
    # the spellings documented before keep working, with - or _ alike
    old = p.parse_args(
        "train --out x --lookback 24 --horizon 12 --d-model 16 --epochs 2 --diffusion-epochs 3 "
        "--batch-size 8 --batches-per-epoch 5 --no-progress --grad_clip none".split()
    )
    assert (old.lookback, old.horizon, old.d_model, old.point_epochs) == (24, 12, 16, 2)
    assert (old.diffusion_epochs, old.batch_size, old.max_batches_per_epoch) == (3, 8, 5)
    assert old.progress is False and old.grad_clip is None
    e = p.parse_args(["evaluate", "m.pt", "--batch-size", "7", "--allow_unfinished"])
    assert (e.batch_size, e.allow_unfinished) == (7, True)


def test_every_config_field_has_a_flag_whose_default_is_the_library_default():
    args = cli._parser().parse_args(["train", "--out", "x"])
    fields = {f.name for f in dataclasses.fields(ForecastConfig)}
    assert set(MODEL_FLAGS) == fields - {"n_variates", "n_time_features"}  # from the data
    assert set(TRAIN_FLAGS) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig(**{f: getattr(args, f) for f in TRAIN_FLAGS}) == TrainConfig()
    built = ForecastConfig(**{f: cli._field_value(args, f) for f in MODEL_FLAGS})
    assert built == ForecastConfig()
    # the sampling flags are SamplingConfig's fields (its seed is train's --seed, which keys
    # the sampling noise too), with its defaults; the pipeline's Scoring holds the same config
    assert set(SAMPLING_FLAGS) == {f.name for f in dataclasses.fields(SamplingConfig)} - {"seed"}
    assert cli._scoring(args, batch_size=256).sampling == SamplingConfig()
    assert pipeline.Scoring() == cli._scoring(args, batch_size=256)
    e = cli._parser().parse_args(["evaluate", "m.pt"])
    assert (e.batch_size, e.seed, e.windows) == (256, SamplingConfig().seed, None)
    assert cli._scoring(e, batch_size=e.batch_size) == pipeline.Scoring()
    # the demo is train with a preset: valid configs, one thread, the synthetic data
    demo = cli._parser().parse_args(["demo"])
    TrainConfig(**{f: getattr(demo, f) for f in TRAIN_FLAGS})
    ForecastConfig(**{f: cli._field_value(demo, f) for f in MODEL_FLAGS})
    assert (demo.threads, demo.data, demo.out, demo.lookback) == (1, None, "runs/demo", 96)


def test_threads_are_set_for_the_command_only(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_train", lambda a: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # 3 threads fit any machine of this test
    before = torch.get_num_threads()
    assert main(["train", "--out", str(tmp_path), "--threads", "3"]) == 0
    assert seen == [3] and torch.get_num_threads() == before


def test_threads_beyond_the_machine_are_refused_before_torch_sees_them(tmp_path, monkeypatch):
    # a million threads killed the interpreter inside the OpenMP runtime, past any handler
    real = torch.set_num_threads

    def checked(n):
        assert n <= 4, f"torch.set_num_threads({n}) called"
        real(n)

    monkeypatch.setattr(cli, "_train", lambda a: None)
    monkeypatch.setattr(torch, "set_num_threads", checked)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    for n in ("5", "1000000"):
        rc, _, stderr = _run(["train", "--out", str(tmp_path), "--threads", n])
        assert rc == 2 and _one_line(stderr) == (
            f"diffsample: error: --threads: expected at most the 4 CPUs of this machine, "
            f"got int {n}\n"
        )


@pytest.mark.parametrize("command", ["demo", "train", "evaluate"])
def test_every_flag_has_help_that_shows_its_default(command):
    q = _subparser(command)
    formatter = q._get_formatter()
    for a in q._actions:
        if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
            continue  # a hidden flag: a TSLib flag with no effect here
        assert a.help, a.option_strings
        if a.option_strings and a.nargs != 0 and not a.required:  # a flag with a default
            text = formatter._get_help_string(a)
            assert text.count("default: ") == 1, (command, a.option_strings, text)
    text = " ".join(q.format_help().split())
    if command == "demo":  # the preset's defaults, not train's
        assert (
            "--windows WINDOWS score N windows spread evenly over the split's period; none: all (default: 256)"
            in text
        )
        assert "(default: runs/demo)" in text


def test_choices_come_from_the_library(monkeypatch):
    from diffsample.forecast.model import DenoiserName, ScheduleName
    from diffsample.forecast.sampling_config import AutocastMode
    from diffsample.forecast.training import AmpMode
    from diffsample.prediction import Prediction
    from diffsample.schedules import Spacing

    train = _choices("train")
    assert train["sampler"] == tuple(SAMPLERS)
    assert train["denoiser"] == typing.get_args(DenoiserName)
    assert train["prediction"] == typing.get_args(Prediction)
    assert train["schedule"] == typing.get_args(ScheduleName)
    assert train["amp"] == typing.get_args(AmpMode)
    assert train["spacing"] == typing.get_args(Spacing)
    assert train["autocast"] == typing.get_args(AutocastMode)
    monkeypatch.setitem(SAMPLERS, "ddim_again", sample_ddim)
    assert "ddim_again" in _choices("evaluate")["sampler"]


def test_the_sampling_flags_build_the_sampling_config():
    a = cli._parser().parse_args(
        "train --out x --samples 8 --steps 4 --sampler ddim --spacing trailing --seed 3 --eta 0.5 "
        "--clip_x0 2 --clip-eps rederive --autocast bf16 --graph --max_batch 64 "
        "--memory_budget 1048576 --windows 5".split()
    )
    s = cli._scoring(a, batch_size=16)
    assert s.sampling == SamplingConfig(
        n_samples=8, num_steps=4, sampler="ddim", spacing="trailing", seed=3, eta=0.5,
        clip_x0=2.0, clip_eps="rederive", autocast="bf16", graph=True, max_batch=64,
        memory_budget=2**20,
    )  # fmt: skip
    assert type(s.sampling.memory_budget) is int  # bytes; a fraction reads as a float
    assert (s.windows, s.batch_size) == (5, 16)
    a = cli._parser().parse_args(
        ["evaluate", "m.pt", "--memory_budget", "0.5", "--clip_eps", "none", "--no-graph"]
    )
    s = cli._scoring(a, batch_size=a.batch_size).sampling
    assert (s.memory_budget, s.clip_eps, s.graph) == (0.5, None, False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--autocast", "fp32"], "argument --autocast: invalid choice: 'fp32'"),
        (
            ["--clip_eps", "x"],
            "argument --clip_eps: invalid choice: 'x' (choose from raw, rederive",
        ),
        (["--memory_budget", "lots"], "argument --memory_budget: invalid number value: 'lots'"),
        (["--eta", "0.5"], "eta: expected None with sampler 'dpmpp_2m' (which has no eta"),
        (["--sampler", "ddim", "--clip_x0", "1"], "clip_eps: expected 'raw' or 'rederive' with"),
        (["--memory_budget", "2.0"], "memory_budget: expected a finite number in (0, 1]"),
        (["--max_batch", "0"], "max_batch: expected a positive integer, got int 0"),
    ],
)
def test_bad_sampling_flags_are_one_line_before_training(tmp_path, monkeypatch, extra, message):
    _no_training(monkeypatch)
    rc, _, stderr = _run(_bad_train(tmp_path, *extra))
    assert rc == 2 and message in _one_line(stderr), stderr
    assert not (tmp_path / "r").exists()


def _evaluate_samples(run, out: Path, *extra: str) -> tuple[str, dict, np.ndarray]:
    """A small `evaluate` of the shared run's model on the CPU: what it printed, its results
    and its samples."""
    out.mkdir()
    argv = ["evaluate", str(run[0] / "model.pt"), "--device", "cpu", "--samples", "4",
            "--steps", "2", "--windows", "6", "--no-progress", "--no-baselines",
            "--save-samples", "--out", str(out), *extra]  # fmt: skip
    rc, stdout, stderr = _run(argv)
    assert (rc, stderr) == (0, ""), stderr
    results = json.loads((out / "eval_test.json").read_text())
    return stdout, results, np.load(out / "eval_test_samples.npz")["samples"]


def test_graph_and_autocast_from_the_command_on_a_cpu(run, tmp_path):
    """--graph needs CUDA: elsewhere one note, eager sampling (sample_many's documented
    fallback, said up front instead of a warning), the same samples; --autocast runs the
    denoiser under CPU autocast: other samples, recorded."""
    _, plain, eager = _evaluate_samples(run, tmp_path / "a")
    stdout, graphed, samples = _evaluate_samples(run, tmp_path / "b", "--graph")
    note = "note: --graph: CUDA graphs need a CUDA device; sampling eagerly on cpu"
    assert stdout.splitlines().count(note) == 1
    assert np.array_equal(samples, eager) and graphed["sampling"] == plain["sampling"]
    assert graphed["sampling"]["graph"] is False  # what ran
    stdout, bf16, samples = _evaluate_samples(run, tmp_path / "c", "--autocast", "bf16")
    assert "dpmpp_2m 2 steps (logsnr grid), 256 windows per call, autocast bf16" in stdout
    assert bf16["sampling"] == {**plain["sampling"], "autocast": "bf16"}
    assert np.isfinite(samples).all() and not np.array_equal(samples, eager)


# ------------------------------------------------------------------------------------ train
def test_train_prints_a_line_per_stage_and_writes_its_outputs(run):
    out, stdout = run
    for line in (
        "stage 1 epoch 1/1: train_point_mse",
        "stage 2 epoch 1/1: train_diffusion_loss",
        "sampling the test set: 6 windows x 4 samples, dpmpp_2m 2 steps",
        "scored in",
        "test set of synthetic(n_steps=6000, n_variates=7, seed=0)",
        "CRPS",
    ):
        assert line in stdout, line
    assert sorted(p.name for p in out.iterdir()) == [
        "model.pt",
        "results.json",
        "results_fan_chart.png",
        "results_per_step.csv",
        "results_samples.npz",
    ]
    r = json.loads((out / "results.json").read_text())
    assert r["command"] == "train" and r["split"] == "test" and "notes" not in r
    assert r["data"]["source"] == "synthetic(n_steps=6000, n_variates=7, seed=0)"
    assert r["data"] == ITransformerDiffusion.load(out / "model.pt").data_spec
    assert r["config"]["d_model"] == 16 and r["train"]["point_epochs"] == 1
    # the head's SamplingConfig, beside the trainer's settings
    assert r["sampling"] == SamplingConfig(n_samples=4, num_steps=2).as_dict()
    assert list(r)[list(r).index("train") + 1] == "sampling"
    assert [h["stage"] for h in r["history"]] == [1, 2]
    assert r["scores"]["windows"] == 6 and 0 < r["scores"]["crps"]
    assert r["seconds"]["training"] > 0 and r["seconds"]["sampling"] > 0
    assert r["seconds"]["scoring"] >= 0
    assert {"platform", "cpu", "torch_threads", "cuda_device"} <= r["machine"].keys()
    assert set(r["versions"]) == {"diffsample", "torch", "numpy", "python"}
    assert r["files"]["per_step"] == str(out / "results_per_step.csv")
    rows = (out / "results_per_step.csv").read_text().splitlines()
    own = "step,point_mse,point_mae,mse_mean,mae_mean,crps,coverage_50,coverage_90"
    names = ["gaussian_train_sigma", "gaussian_val_sigma", "bootstrap"]
    cols = ("mse_mean", "crps", "coverage_50", "coverage_90")
    assert rows[0] == ",".join([own, *(f"{n}_{c}" for n in names for c in cols)])
    # the baselines, by default: scored on the same windows with the same samples, printed
    # beside the head and written into the same files
    assert list(r["baselines"]) == names and "beside the same backbone's baselines" in stdout
    for name in names:
        b = r["baselines"][name]
        assert (b["windows"], b["samples"], b["sampler"], b["steps"]) == (6, 4, name, 0)
        assert b["point_mse"] == pytest.approx(r["scores"]["point_mse"], rel=1e-6)
        assert b["crps"] > 0 and b["crps"] != r["scores"]["crps"]
        assert f"    {name} " in stdout
    assert len(rows) == 1 + 12 and rows[1].startswith("1,") and rows[-1].startswith("12,")
    crps_steps = [float(line.split(",")[5]) for line in rows[1:]]
    assert sum(crps_steps) / 12 == pytest.approx(r["scores"]["crps"], rel=1e-5)
    assert (out / "results_fan_chart.png").read_bytes()[:4] == b"\x89PNG"
    fc, targets, meta = load_samples(out / "results_samples.npz")
    assert fc.samples.shape == (4, 6, 12, 7) and fc.samples.dtype == torch.float32
    # --windows 6: six windows spread evenly over the test period (1189 windows), not the first
    assert torch.as_tensor(fc.window_ids).tolist() == report.spread_windows(1189, 6)
    assert fc.window_ids[-1] == 1188
    assert targets.shape == fc.point.shape == (6, 12, 7)
    assert meta["data"] == r["data"] and meta["split"] == "test"
    assert fc.freq == "h" and fc.units == "scaled" and fc.scaler is not None
    assert list(fc.variates) == r["data"]["columns"]


def _bad_train(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(tmp_path / "r"), *TINY, *SAMPLING, *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--samples", "0"], "n_samples: expected a positive integer, got int 0"),
        (["--steps", "-1"], "num_steps: expected a positive integer, got int -1"),
        (["--windows", "0"], "windows: expected a positive integer, got int 0"),
        (["--batch_size", "0"], "batch_size: expected a positive integer, got int 0"),
        (["--learning_rate", "-1"], "point_lr: expected a finite number > 0, got float -1.0"),
        (["--n_heads", "3"], "n_heads"),
        (["--enc_in", "8"], "--enc_in: expected the data's 7 variates (var0, var1"),
        (["--device", "foo"], "--device: expected auto, cpu, cuda, cuda:1, ..., got str 'foo'"),
        (["--data", "nowhere.csv"], "source: 'nowhere.csv' is not a file"),
        (["--data", "foo", "--data_path", "x.csv"], "--data: expected with --data_path, a Time"),
        (["--root_path", "d"], "--root_path: expected --data_path with it"),
        (["--threads", "0"], "--threads: expected a positive integer, got int 0"),
    ],
)
def test_train_checks_every_argument_before_training(tmp_path, monkeypatch, extra, message):
    _no_training(monkeypatch)
    rc, _, stderr = _run(_bad_train(tmp_path, *extra))
    assert rc == 2 and message in _one_line(stderr)
    assert not (tmp_path / "r").exists()  # nothing created for a run that cannot start


def test_train_checks_the_output_folder_before_training(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    rc, _, stderr = _run(["train", "--out", str(a_file), *TINY])
    assert rc == 2
    assert _one_line(stderr) == (
        f"diffsample: error: --out: expected a directory, got the existing file {a_file}\n"
    )

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(report.tempfile, "mkstemp", read_only)
        rc, _, stderr = _run(["train", "--out", str(tmp_path / "ro"), *TINY])
    assert (
        rc == 2
        and f"cannot write into the directory {tmp_path / 'ro'}: Permission denied"
        in _one_line(stderr)
    )
    if os.geteuid() != 0:  # a real read-only folder (root writes anyway)
        ro = tmp_path / "locked"
        ro.mkdir(mode=0o500)
        rc, _, stderr = _run(["train", "--out", str(ro / "r"), *TINY])
        assert rc == 2 and str(ro / "r") in _one_line(stderr)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
def test_cuda_on_a_cpu_only_torch_is_one_line(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    rc, _, stderr = _run(_bad_train(tmp_path, "--device", "cuda"))
    assert rc == 2 and "--device: expected a device this machine has, got 'cuda'" in _one_line(
        stderr
    )


# ------------------------------------------------------------------------------------ evaluate
def test_evaluate_scores_on_the_checkpoints_own_data_by_default(run, tmp_path):
    out, _ = run
    rc, stdout, stderr = _run(
        ["evaluate", str(out / "model.pt"), *SAMPLING, "--out", str(tmp_path)]
    )
    assert (rc, stderr) == (0, "")
    assert "data: synthetic(n_steps=6000, n_variates=7, seed=0)" in stdout
    r = json.loads((tmp_path / "eval_test.json").read_text())
    assert r["command"] == "evaluate" and r["checkpoint"] == str(out / "model.pt")
    assert r["data"] == json.loads((out / "results.json").read_text())["data"]
    assert r["scores"]["windows"] == 6 and r["train"] is None
    assert (tmp_path / "eval_test_per_step.csv").is_file()
    assert (tmp_path / "eval_test_fan_chart.png").is_file()
    # the same windows, seed and sampler as the train command scored: the same scores
    trained = json.loads((out / "results.json").read_text())
    assert r["scores"]["crps"] == pytest.approx(trained["scores"]["crps"], rel=1e-6)
    for name, b in r["baselines"].items():
        assert b["crps"] == pytest.approx(trained["baselines"][name]["crps"], rel=1e-6)


def test_no_baselines_scores_the_model_alone(run, tmp_path):
    out, _ = run
    argv = ["evaluate", str(out / "model.pt"), *SAMPLING, "--out", str(tmp_path), "--no-baselines"]
    rc, stdout, stderr = _run(argv)
    assert (rc, stderr) == (0, "") and "beside the same backbone" not in stdout
    assert json.loads((tmp_path / "eval_test.json").read_text())["baselines"] is None
    header = (tmp_path / "eval_test_per_step.csv").read_text().splitlines()[0]
    assert header == "step,point_mse,point_mae,mse_mean,mae_mean,crps,coverage_50,coverage_90"


def test_evaluate_refuses_other_data(run, tmp_path):
    out, _ = run
    g = np.random.default_rng(0)
    rows = ["date," + ",".join(f"var{i}" for i in range(7))]
    for t in range(600):
        day, hour = divmod(t, 24)
        values = ",".join(f"{v:.3f}" for v in g.normal(size=7))
        rows.append(f"2020-01-{1 + day % 28:02d} {hour:02d}:00:00,{values}")
    other = tmp_path / "other.csv"
    other.write_text("\n".join(rows) + "\n")
    rc, _, stderr = _run(["evaluate", str(out / "model.pt"), "--data", str(other), *SAMPLING])
    assert rc == 2
    assert "data: expected the data the model was trained on" in _one_line(stderr)
    assert not (out / "eval_test.json").exists()


def test_an_interrupted_run_is_refused_then_resumed(tmp_path, monkeypatch):
    flags = ["--out", str(tmp_path / "r"), *TINY, "--diffusion_epochs", "2", *SAMPLING]
    printer = pipeline._epoch_printer

    def killed_in_stage_2(tc, say, then):
        show = printer(tc, say, then)

        def on_epoch(r):
            show(r)
            if r["stage"] == 2:
                raise KeyboardInterrupt

        return on_epoch

    with monkeypatch.context() as m:
        m.setattr(pipeline, "_epoch_printer", killed_in_stage_2)
        rc, _, stderr = _run(["train", *flags])
    assert rc == 130 and "interrupted" in stderr and "--resume" in stderr
    model = tmp_path / "r" / "model.pt"
    rc, _, stderr = _run(["evaluate", str(model), *SAMPLING])
    assert rc == 2 and "unfinished" in _one_line(stderr) and "--allow-unfinished" in stderr
    rc, stdout, stderr = _run(["evaluate", str(model), *SAMPLING, "--allow-unfinished"])
    assert (rc, stderr) == (0, "") and "CRPS" in stdout
    rc, stdout, stderr = _run(["train", *flags, "--resume"])
    assert (rc, stderr) == (0, ""), stderr
    assert "stage 2 epoch 2/2" in stdout and "stage 1 epoch" not in stdout
    r = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [(h["stage"], h["epoch"]) for h in r["history"]] == [(1, 1), (2, 1), (2, 2)]
    assert ITransformerDiffusion.load(model).data_spec == r["data"]


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    model = ITransformerDiffusion(ForecastConfig(lookback=24, horizon=12, d_model=16, n_heads=2))
    return model.save(tmp_path_factory.mktemp("untrained") / "model.pt")


def test_evaluate_errors_are_one_line_and_exit_2(untrained, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = {
        "missing.pt": None,
        "garbage.pt": b"not a checkpoint",
        "foreign.pt": {"weight": torch.zeros(2)},
        "no_config.pt": {"format": "diffsample.ITransformerDiffusion/1", "state_dict": {}},
        "evil.pt": {"format": "diffsample.ITransformerDiffusion/2", "x": Evil()},
    }
    for name, content in bad.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        elif content is not None:
            torch.save(content, tmp_path / name)
    messages = {
        "missing.pt": "no such checkpoint file",
        "garbage.pt": "is not a readable diffsample checkpoint",
        "foreign.pt": "is not a diffsample checkpoint",
        "no_config.pt": "holds no config",
        "evil.pt": "not loaded",
    }
    for name, message in messages.items():
        rc, _, stderr = _run(["evaluate", str(tmp_path / name), "--allow-unfinished"])
        assert rc == 2 and message in _one_line(stderr), (name, stderr)
    assert not marker.exists()  # the malicious file's code never ran
    _no_training(monkeypatch)
    for flags, message in [
        (["--batch-size", "0"], "batch_size: expected a positive integer, got int 0"),
        (["--batch_size", "-3"], "batch_size: expected a positive integer, got int -3"),
        (["--device", "foo"], "--device: expected auto, cpu, cuda"),
        (["--samples", "0"], "n_samples: expected a positive integer, got int 0"),
        ([], "does not record the data it was trained on"),
        (["--out", str(untrained / "x.json")], "expected a directory, got the existing file"),
    ]:
        rc, _, stderr = _run(["evaluate", str(untrained), *flags])
        assert rc == 2 and message in _one_line(stderr), (flags, stderr)


def test_a_full_disk_loses_no_scores(run, tmp_path, monkeypatch):
    out, _ = run

    def disk_full(path, write):
        def failing(f):
            f.write(b"{")
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomic_write(path, failing)

    monkeypatch.setattr(report, "atomic_write", disk_full)
    rc, stdout, stderr = _run(
        ["evaluate", str(out / "model.pt"), *SAMPLING, "--out", str(tmp_path)]
    )
    assert rc == 2
    assert _one_line(stderr) == (
        f"diffsample: error: cannot write {tmp_path / 'eval_test.json'}: No space left on device\n"
    )
    assert "CRPS" in stdout and "coverage" in stdout  # printed before the write
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temp file


def test_nan_scores_are_null_in_the_json_with_a_note(run, tmp_path, monkeypatch):
    out, _ = run
    real = scoring.evaluate_split

    def with_a_nan(*args, **kwargs):
        ev = real(*args, **kwargs)
        return dataclasses.replace(ev, metrics={**ev.metrics, "quantile_crps": math.nan})

    monkeypatch.setattr(scoring, "evaluate_split", with_a_nan)
    rc, stdout, _ = _run(["evaluate", str(out / "model.pt"), *SAMPLING, "--out", str(tmp_path)])
    assert rc == 0 and "quantile CRPS nan" in stdout
    text = (tmp_path / "eval_test.json").read_text()

    def refuse(name):
        raise AssertionError(f"bare {name}")

    r = json.loads(text, parse_constant=refuse)
    assert r["scores"]["quantile_crps"] is None
    assert any("scores.quantile_crps" in note for note in r["notes"])


def test_without_matplotlib_a_notice_and_no_picture(run, tmp_path, monkeypatch):
    out, _ = run
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    rc, stdout, stderr = _run(
        ["evaluate", str(out / "model.pt"), *SAMPLING, "--out", str(tmp_path)]
    )
    assert (rc, stderr) == (0, "")
    assert scoring.MISSING_MATPLOTLIB in stdout.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "eval_test.json",
        "eval_test_per_step.csv",
    ]
    assert json.loads((tmp_path / "eval_test.json").read_text())["files"]["fan_chart"] is None


def test_unexpected_errors_are_one_line_too(untrained, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(pipeline, "checkpoint_data", bug)
    rc, _, stderr = _run(["evaluate", str(untrained)])
    assert rc == 1 and "unexpected KeyError: 'oops'" in _one_line(stderr)


def test_type_errors_are_one_line_and_exit_2(run, monkeypatch):
    out, _ = run

    def wrong_kind(*args, **kwargs):
        raise TypeError("n_samples: expected a positive integer,\ngot float 1.5")

    monkeypatch.setattr(scoring, "evaluate_split", wrong_kind)
    rc, _, stderr = _run(["evaluate", str(out / "model.pt")])
    assert rc == 2
    assert _one_line(stderr) == (
        "diffsample: error: n_samples: expected a positive integer, got float 1.5\n"
    )


# ------------------------------------------------------------------------------------ issue 20
def _csv(path: Path, columns: list[str], rows: int = 600) -> Path:
    """A small custom CSV: hourly dates and normal values."""
    g = np.random.default_rng(0)
    lines = ["date," + ",".join(columns)]
    for t in range(rows):
        day, hour = divmod(t, 24)
        values = ",".join(f"{v:.3f}" for v in g.normal(size=len(columns)))
        lines.append(f"2020-{1 + day // 28:02d}-{1 + day % 28:02d} {hour:02d}:00:00,{values}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_never_writes_over_its_checkpoint_or_its_data(run, tmp_path, monkeypatch):
    # `evaluate run/model.pt --out run/model.pt` exited 0 after replacing the trained model
    out, _ = run
    data = _csv(tmp_path / "d.csv", ["a", "b", "c"])  # a CSV the second model trains on
    flags = [*TINY, "--diffusion_steps", "10", *SAMPLING]
    rc, _, stderr = _run(["train", "--data", str(data), "--out", str(tmp_path / "r"), *flags])
    assert (rc, stderr) == (0, "")
    _no_training(monkeypatch)
    ckpt = out / "model.pt"
    before = ckpt.read_bytes()
    monkeypatch.chdir(out)
    for where in (str(ckpt), "model.pt", f"../{out.name}/model.pt"):
        rc, _, stderr = _run(["evaluate", str(ckpt), *SAMPLING, "--out", where])
        assert rc == 2 and "is the checkpoint this run reads" in _one_line(stderr), stderr
    assert ckpt.read_bytes() == before
    # the data too (a custom CSV is named by the user: a checkpoint never names a file to
    # read): refused before any sampling
    before = data.read_bytes()
    model2 = str(tmp_path / "r" / "model.pt")
    rc, _, stderr = _run(["evaluate", model2, "--data", str(data), *SAMPLING, "--out", str(data)])
    assert rc == 2 and "is the data this run reads" in _one_line(stderr)
    assert data.read_bytes() == before


def test_evaluate_never_opens_a_file_its_checkpoint_names(tmp_path, monkeypatch):
    """A checkpoint's data spec names data, not a file to read: a custom CSV's spec (its path
    recorded) needs --data, and the file it names is not opened, even when it exists."""
    data = _csv(tmp_path / "d.csv", ["a", "b", "c"])
    flags = [*TINY, "--diffusion_steps", "10", *SAMPLING]
    rc, _, stderr = _run(["train", "--data", str(data), "--out", str(tmp_path / "r"), *flags])
    assert (rc, stderr) == (0, "")
    opened: list[str] = []
    real_open = open

    def spy(file, *args, **kw):
        opened.append(str(file))
        return real_open(file, *args, **kw)

    monkeypatch.setattr("builtins.open", spy)
    rc, _, stderr = _run(["evaluate", str(tmp_path / "r" / "model.pt"), *SAMPLING])
    assert rc != 0 and "never names a file to open" in _one_line(stderr)
    assert str(data) not in opened
    rc, _, stderr = _run(["evaluate", str(tmp_path / "r" / "model.pt"), "--data", str(data),
                          *SAMPLING, "--out", str(tmp_path / "e.json")])  # fmt: skip
    assert (rc, stderr) == (0, "")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_an_empty_out_is_refused(untrained, tmp_path, monkeypatch, command):
    # an unset shell variable: the current folder, where a model.pt was overwritten
    _no_training(monkeypatch)
    monkeypatch.chdir(tmp_path)
    argv = ["train", *TINY] if command == "train" else ["evaluate", str(untrained)]
    rc, _, stderr = _run([*argv, "--out", ""])
    assert rc == 2 and "--out: expected a folder or file name" in _one_line(stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_is_not_started_over_without_resume_or_overwrite(tmp_path, monkeypatch):
    flags = ["--out", str(tmp_path / "r"), *TINY, *SAMPLING]
    printer = pipeline._epoch_printer

    def killed_after_stage_1(tc, say, then):
        show = printer(tc, say, then)

        def on_epoch(r):
            show(r)
            raise KeyboardInterrupt

        return on_epoch

    with monkeypatch.context() as m:
        m.setattr(pipeline, "_epoch_printer", killed_after_stage_1)
        assert _run(["train", *flags])[0] == 130
    ckpt = tmp_path / "r" / "model.pt"
    unfinished = ckpt.read_bytes()
    with monkeypatch.context() as m:
        _no_training(m)
        rc, _, stderr = _run(["train", *flags])
        assert rc == 2 and "holds an unfinished training run; continue it with --resume" in (
            _one_line(stderr)
        )
        rc, _, stderr = _run(["train", *flags, "--resume", "--overwrite"])
        assert rc == 2 and "--overwrite: expected --resume or --overwrite, got both" in stderr
    assert ckpt.read_bytes() == unfinished
    rc, stdout, stderr = _run(["train", *flags, "--overwrite"])  # afresh, on purpose
    assert (rc, stderr) == (0, "") and "stage 1 epoch 1/1" in stdout
    assert ITransformerDiffusion.load(ckpt).data_spec is not None  # finished now
    rc, _, stderr = _run(["train", *flags])  # a finished run is replaced as before
    assert (rc, stderr) == (0, "")


def test_a_folder_in_the_way_of_an_output_fails_before_training(tmp_path, monkeypatch):
    # a folder named model.pt passed the output check and failed at the first checkpoint write
    _no_training(monkeypatch)
    for name, extra in [("model.pt", []), ("results_samples.npz", ["--save-samples"])]:
        out = tmp_path / name.split(".")[0]
        (out / name).mkdir(parents=True)
        rc, _, stderr = _run(["train", "--out", str(out), *TINY, *SAMPLING, *extra])
        assert rc == 2 and _one_line(stderr) == (
            f"diffsample: error: --out: cannot write the file {out / name}: a directory of "
            "that name is in the way\n"
        )
        assert sorted(p.name for p in out.iterdir()) == [name]  # no lock file left either


def test_a_second_run_into_a_locked_folder_names_the_first(run, tmp_path, monkeypatch):
    out, _ = run
    _no_training(monkeypatch)
    want = (
        f"diffsample: error: --out: {tmp_path} is in use by another diffsample run (process "
        f"{os.getpid()}); wait for it to end, or choose another --out\n"
    )
    with outputs.RunLock(tmp_path):
        rc, _, stderr = _run(["train", "--out", str(tmp_path), *TINY, *SAMPLING])
        assert rc == 2 and _one_line(stderr) == want
        rc, _, stderr = _run(["evaluate", str(out / "model.pt"), *SAMPLING, "--out", str(tmp_path)])
        assert rc == 2 and _one_line(stderr) == want
    assert list(tmp_path.iterdir()) == []


def test_the_lock_is_held_for_the_whole_run_and_released_after(run, tmp_path, monkeypatch):
    out, _ = run
    seen = []
    real = scoring.evaluate_split

    def probe(*args, **kwargs):
        with pytest.raises(report.OutputError, match="in use by another diffsample run"):
            outputs.RunLock(tmp_path).acquire()
        seen.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "evaluate_split", probe)
    rc, _, stderr = _run(["evaluate", str(out / "model.pt"), *SAMPLING, "--out", str(tmp_path)])
    assert (rc, stderr, seen) == (0, "", [True])
    assert outputs.LOCK_NAME not in [p.name for p in tmp_path.iterdir()]
    monkeypatch.setattr(scoring, "evaluate_split", lambda *a, **k: 1 / 0)  # a crash releases it too
    assert _run(["evaluate", str(out / "model.pt"), *SAMPLING, "--out", str(tmp_path)])[0] == 1
    with outputs.RunLock(tmp_path) as lock:
        assert lock.held


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "51"], "--steps: expected at most T = 50 sampling steps (--diffusion_steps)"),
        (
            ["--diffusion_steps", "5", "--steps", "10"],
            "--steps: expected at most T = 5 sampling steps (--diffusion_steps), got 10",
        ),
        (
            ["--calibration", "train_spread", "--calibration_steps", "5000"],
            "calibration_steps: expected at most T = 50 sampling steps (the model's "
            "num_train_steps), got 5000",
        ),
    ],
)
def test_sampling_steps_beyond_t_are_refused_before_training(tmp_path, monkeypatch, extra, message):
    # each was refused only after both stages had trained (the calibration: never finishable)
    _no_training(monkeypatch)
    rc, _, stderr = _run(_bad_train(tmp_path, *extra))
    assert rc == 2 and message in _one_line(stderr)
    assert not (tmp_path / "r").exists()


def test_evaluate_checks_steps_against_the_checkpoints_t(untrained, monkeypatch):
    _no_training(monkeypatch)
    monkeypatch.setattr(
        pipeline, "checkpoint_data", lambda *a, **k: pytest.fail("data loaded first")
    )
    rc, _, stderr = _run(["evaluate", str(untrained), "--steps", "1001"])
    assert rc == 2 and (
        f"--steps: expected at most T = 1000 sampling steps (the model in {untrained}), got 1001"
        in _one_line(stderr)
    )


def test_samples_that_cannot_fit_in_memory_are_refused_before_any_work(run, tmp_path, monkeypatch):
    out, _ = run
    _no_training(monkeypatch)
    rc, _, stderr = _run(_bad_train(tmp_path, "--samples", "1000000000"))
    assert rc == 2 and not (tmp_path / "r").exists()
    assert "--samples: 1000000000 samples x [12, 7] (H, N) for 6 windows per call need about" in (
        _one_line(stderr)
    )
    assert (
        "TiB to sample and score, but cpu has" in stderr and "available; lower --samples" in stderr
    )
    rc, _, stderr = _run(["evaluate", str(out / "model.pt"), "--samples", "1000000000"])
    assert rc == 2 and "--samples: 1000000000 samples" in _one_line(stderr)
    # --save-samples keeps every window's samples: counted against the host's memory
    argv = ["evaluate", str(out / "model.pt"), "--samples", "1000", "--windows", "6"]
    monkeypatch.setattr(memory, "available_bytes", lambda device: 5 * 2**20)
    rc, _, stderr = _run(argv)  # 3 copies x 1000 x 6 x 12 x 7 x 4 bytes: 5.8 MiB
    assert rc == 2 and "6 windows per call need about 5.8 MiB" in _one_line(stderr)
    assert "but cpu has 5.0 MiB available" in stderr
    # --save-samples keeps every window's samples: on the CPU, added to the sampling's
    monkeypatch.setattr(memory, "available_bytes", lambda device: 7 * 2**20)
    monkeypatch.setattr(scoring, "evaluate_split", lambda *a, **k: 1 / 0)  # fits: reached
    assert _run([*argv, "--out", str(tmp_path)])[0] == 1
    rc, _, stderr = _run([*argv, "--save-samples", "--out", str(tmp_path)])
    assert rc == 2 and "and 6 windows kept (--save-samples) need about 7.7 MiB" in stderr


def test_on_a_gpu_the_kept_samples_count_against_the_host(monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    free = {"cuda": 2**30, "cpu": 2**30}
    monkeypatch.setattr(memory, "available_bytes", lambda d: free[torch.device(d).type])
    a = pipeline.Scoring(n_samples=1000, windows=None, save_samples=True, batch_size=256)
    config = ForecastConfig(lookback=24, horizon=12, n_variates=7)
    pipeline.check_scoring_memory(a, config, 100, cuda)  # 97 MiB on the GPU, 32 MiB on the host
    free["cpu"] = 16 * 2**20
    with pytest.raises(ValueError) as info:
        pipeline.check_scoring_memory(a, config, 100, cuda)
    assert str(info.value).startswith(
        "--samples: 1000 samples x 100 windows kept (--save-samples) need about 32.1 MiB to "
        "sample and score, but cpu has 16.0 MiB available"
    )
    free.update(cuda=64 * 2**20, cpu=2**30)
    with pytest.raises(ValueError, match=r"need about 96\.1 MiB .* but cuda:0 has 64\.0 MiB"):
        pipeline.check_scoring_memory(a, config, 100, cuda)
    pipeline.check_scoring_memory(a, config, 100, cpu)  # 128 MiB of the host's 1 GiB


def _chart_csv(tmp_path: Path) -> Path:
    return _csv(tmp_path / "f$x^$.csv", ["a", "b", r"price $\frac{$"])


def test_data_names_are_drawn_as_text_and_the_samples_come_first(tmp_path, monkeypatch):
    # a `$...$` column name was parsed as mathtext by the fan chart after the whole run, and
    # the chart was written before the samples, so --save-samples was lost
    pytest.importorskip("matplotlib")
    data = _chart_csv(tmp_path)
    out = tmp_path / "r"
    flags = ["--data", str(data), "--out", str(out), *TINY, "--diffusion_steps", "10"]
    rc, stdout, stderr = _run(["train", *flags, *SAMPLING, "--save-samples"])
    assert (rc, stderr) == (0, ""), stderr
    assert (out / "results_fan_chart.png").read_bytes()[:4] == b"\x89PNG"
    lines = stdout.splitlines()
    order = [next(i for i, x in enumerate(lines) if x.startswith(k)) for k in ("samples:", "fan")]
    assert order == sorted(order)

    def broken(*args, **kwargs):
        raise report.OutputError("cannot write the chart: broken", tmp_path)

    monkeypatch.setattr(scoring, "fan_chart", broken)
    rc, _, stderr = _run(
        [
            "evaluate",
            str(out / "model.pt"),
            "--data",
            str(data),
            *SAMPLING,
            "--save-samples",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "cannot write the chart" in _one_line(stderr)
    assert load_samples(tmp_path / "eval_test_samples.npz").forecast.samples.shape == (4, 6, 12, 3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--out", "x", "--epochs", "x"],
            "argument --train_epochs/--epochs: invalid int value: 'x' "
            "(diffsample train --help lists the flags)",
        ),
        (["train", "--out", "x", "--dropout", "y"], "argument --dropout: invalid float value: 'y'"),
        (["train", "--out", "x", "--grad_clip", "z"], "argument --grad_clip: invalid float value"),
        (["train", "--out", "x", "--sampler", "euler"], "argument --sampler: invalid choice"),
        (["train", "--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["train"], "the following arguments are required: --out"),
        (["evaluate", "m.pt", "--samples", "many"], "argument --samples: invalid int value"),
        (["evaluate", "m.pt", "--batch-size", "1.5"], "argument --batch_size: invalid int value"),
        (["evaluate", "m.pt", "--split", "dev"], "argument --split: invalid choice: 'dev'"),
        (["evaluate"], "the following arguments are required: checkpoint"),
        (["demo", "--windows", "some"], "argument --windows: invalid int value: 'some'"),
        ([], "the following arguments are required: {demo,train,evaluate}"),
    ],
)
def test_argument_errors_are_one_line_and_exit_2(argv, message):
    # a mistyped value printed argparse's 27-line usage block
    rc, stdout, stderr = _run(argv)
    assert (rc, stdout) == (2, "") and message in _one_line(stderr), stderr


def test_help_still_prints_the_usage_and_exits_0():
    rc, stdout, stderr = _run(["train", "--help"])
    assert (rc, stderr) == (0, "") and "--overwrite" in stdout and "--resume" in stdout


# what a docstring holds and a --help must not: sections, Sphinx roles, RST literals and directives
_DOCSTRING_MARKUP = re.compile(
    r"\b(Args|Arguments|Returns|Raises|Yields|Attributes|Examples?):|:(func|mod|class|meth|attr|"
    r"data|obj|ref):|``|\.\. [a-z-]+::|:param |^\s*(-{3,}|={3,})\s*$",
    re.MULTILINE,
)


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["evaluate"]])
def test_help_shows_no_docstring_internals(command):
    rc, stdout, stderr = _run([*command, "--help"])
    assert (rc, stderr) == (0, "") and stdout.startswith("usage: diffsample"), stderr
    assert not _DOCSTRING_MARKUP.search(stdout), _DOCSTRING_MARKUP.search(stdout)
    assert "`" not in stdout  # no RST or Markdown literal of any kind
    # a command or a positional argument is given, never defaulted
    if command in ([], ["evaluate"]):  # the commands; the checkpoint
        positionals = stdout.split("positional arguments:")[1].split("\n\n")[0]
        assert positionals.strip() and "default" not in positionals, positionals


def test_the_markup_scan_finds_markup():
    """The scan itself: each kind of docstring internal is caught."""
    for text in ("Args:", "Returns:", ":func:`x`", ":mod:`m`", "``x``", ".. note::", "Raises:"):
        assert _DOCSTRING_MARKUP.search(f"usage: diffsample\n  {text} y\n"), text
    assert not _DOCSTRING_MARKUP.search("usage: diffsample --seq_len L (default: 96)")


def test_version_prints_the_package_version():
    import diffsample

    rc, stdout, stderr = _run(["--version"])
    assert (rc, stdout, stderr) == (0, f"diffsample {diffsample.__version__}\n", "")
    assert re.fullmatch(r"diffsample \d+\.\d+\.\d+\n", stdout)


def test_the_installed_command_prints_its_version():
    script = Path(sys.executable).with_name("diffsample")
    if not script.is_file():
        pytest.skip(f"no diffsample command beside {sys.executable}")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    import diffsample

    assert (done.returncode, done.stdout) == (0, f"diffsample {diffsample.__version__}\n")
