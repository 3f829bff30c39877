"""The scripts in examples/ run (other repositories copy them), each on a small setting, as a
subprocess the way a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


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
    pytest.importorskip("matplotlib")
    out = _run(
        "etth1_forecaster.py", "--data", str(etth1_path), "--out", str(tmp_path / "run"),
        "--epochs", "1", "--diffusion-epochs", "1", "--batches-per-epoch", "2", "--windows", "8",
        "--samples", "8", "--steps", "5", "--d-model", "16", "--denoiser-width", "16",
        cwd=tmp_path,
    )  # fmt: skip
    assert "ETTh1.csv: 7 variates HUFL, HULL, MUFL, MULL, LUFL, LULL, OT" in out
    assert "windows train/val/test 8449/2785/2785" in out
    assert "forecast: samples (8, 3, 96, 7), point (3, 96, 7)" in out
    assert "test: 8 windows x 8 samples" in out and "CRPS by horizon step" in out
    assert (tmp_path / "run" / "model.pt").is_file()
    assert (tmp_path / "run" / "fan_chart.png").read_bytes()[:4] == b"\x89PNG"
