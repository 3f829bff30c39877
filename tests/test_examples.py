"""The scripts in examples/ run (other repositories copy them), each on a small setting, as a
subprocess the way a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    return _run_both(script, *args, cwd=cwd, env=env)[0]


def _run_both(
    script: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[str, str]:
    """stdout and stderr of the script (stderr a pipe: not a terminal)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_bring_your_own_denoiser(tmp_path):
    out = _run(
        "bring_your_own_denoiser.py", "--train-steps", "50", "--samples", "16", "--steps", "5",
        cwd=tmp_path,
    )  # fmt: skip
    assert "train step 50/50: loss" in out
    assert "samples (16, 64, 24) (S, B, H) from" in out
    crps_line = next(line for line in out.splitlines() if line.startswith("CRPS "))
    model, oracle = (float(w.strip("()")) for w in crps_line.split()[1:4:2])
    assert 0 < oracle < model  # a 50-step model is worse than the truth, and finite
    assert "coverage 50%" in out


def test_etth1_forecaster(tmp_path, etth1_path):
    """issue 19: the example printed raw dicts, and nothing for minutes an epoch off a terminal.
    Now one readable line an epoch on stdout, and progress lines on stderr (every 0 s here)."""
    pytest.importorskip("matplotlib")
    out, err = _run_both(
        "etth1_forecaster.py", "--data", str(etth1_path), "--out", str(tmp_path / "run"),
        "--epochs", "1", "--diffusion-epochs", "1", "--batches-per-epoch", "2", "--val-batches",
        "2", "--windows", "8", "--samples", "8", "--steps", "5", "--d-model", "16",
        "--denoiser-width", "16",
        cwd=tmp_path, env={"DIFFSAMPLE_PROGRESS_INTERVAL": "0"},
    )  # fmt: skip
    assert "ETTh1.csv: 7 variates HUFL, HULL, MUFL, MULL, LUFL, LULL, OT" in out
    assert "windows train/val/test 8449/2785/2785" in out
    assert "{" not in out and "'stage'" not in out  # no raw dicts
    lines = out.splitlines()
    stage1 = next(line for line in lines if line.startswith("stage 1 epoch 1/1: "))
    stage2 = next(line for line in lines if line.startswith("stage 2 epoch 1/1: "))
    assert re.fullmatch(
        r"stage 1 epoch 1/1: MSE train \d+\.\d{4}, validation \d+\.\d{4}, lr 1\.00e-04, \d+\.\d s",
        stage1,
    ), stage1
    assert re.fullmatch(
        r"stage 2 epoch 1/1: denoising loss train \d+\.\d{4}, validation \d+\.\d{4}, "
        r"lr 1\.00e-03, \d+\.\d s",
        stage2,
    ), stage2
    assert re.search(r"^trained in \d+\.\d s: best validation MSE \d+\.\d{4}, ", out, re.M)
    # off a terminal: progress lines for the training and (capped) validation passes
    assert re.search(r"^stage 1 epoch 1/1: 1/2 batches \(50%\) in \d+ s", err, re.M), err
    assert re.search(r"^stage 2 epoch 1/1 validation: 2/2 batches in ", err, re.M), err
    assert "forecast: samples (8, 3, 96, 7), point (3, 96, 7)" in out
    # scored by the command's pipeline (run.score): the head beside its baselines, the files
    run = tmp_path / "run"
    assert "test set of " in out and ": 8 windows x 8 samples, dpmpp_2m 5 steps" in out
    assert "beside the same backbone's baselines" in out and "CRPS by horizon step" in out
    assert f"results: {run / 'results.json'}" in lines
    assert sorted(p.name for p in run.iterdir()) == [
        "model.pt",
        "results.json",
        "results_fan_chart.png",
        "results_per_step.csv",
    ]
    r = json.loads((run / "results.json").read_text())
    assert r["command"] == "examples/etth1_forecaster.py" and r["scores"]["windows"] == 8
    assert list(r["baselines"]) == ["gaussian_train_sigma", "gaussian_val_sigma", "bootstrap"]
    assert (run / "results_fan_chart.png").read_bytes()[:4] == b"\x89PNG"
