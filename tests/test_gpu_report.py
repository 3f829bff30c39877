"""benchmarks/gpu_report.py runs every mode end to end: ``--tiny`` on whatever device is here
(on CPU the graph modes fall back to eager and the report records the warning)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _load_report():
    spec = importlib.util.spec_from_file_location(
        "gpu_report", REPO / "benchmarks" / "gpu_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_report_runs_every_mode_and_writes_json(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    report = _load_report().main(["--tiny", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for field in ("card", "full_test_set_seconds", "ratio_seed_loop_to_full_test_set",
                  "share_outside_denoiser", "weights", "data", "modes"):  # fmt: skip
        assert field in report, field
    assert report["weights"].startswith("synthetic")
    modes = report["modes"]
    assert {"seed_loop", "eager_fp32", "eager_rows", "graph_rows", "full_test_set"} <= set(modes)
    assert "extrapolated" in modes["seed_loop"]
    assert all(r["seconds"] > 0 and math.isfinite(r["seconds"]) for r in modes.values())
    assert 0.0 <= report["share_outside_denoiser"] <= 1.0
    assert math.isfinite(report["mean_crps"]) and report["mean_crps"] > 0
    # same keyed noise, same kernels: graph mode (or its eager fallback) gives eager's samples
    assert modes["graph_rows"]["max_abs_diff_vs_eager"] <= 1e-4
    if not torch.cuda.is_available():
        assert report["card"] is None
        assert any("needs a CUDA device" in w for w in modes["graph_rows"]["warnings"])
    assert "| full_test_set |" in capsys.readouterr().out
