"""Two processes under torchrun (gloo, CPU): evaluation equals one process's to round-off;
training keeps the ranks in step, writes from rank 0 alone and resumes like one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from distributed_worker import EVAL, MODEL, SPREAD, data

from diffsample.distributed import Ranks, torchrun_rank_world
from diffsample.forecast import ITransformerDiffusion, evaluate_split
from diffsample.forecast.cli import main
from diffsample.forecast.training import fit_spread_scale

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo",
)


def torchrun(out: Path, *args: object, nproc: int = 2) -> list[dict]:
    """Run the worker in ``nproc`` processes; returns each rank's record."""
    out.mkdir(parents=True, exist_ok=True)
    _launch(nproc, str(WORKER), *map(str, (out, *args)))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def _launch(nproc: int, *args: str) -> str:
    """``torchrun --standalone --nproc_per_node=nproc args...``; returns its stdout.

    A worker killed by SIGABRT is run once more, with a warning: gloo can abort a process in
    the interpreter's finalisation when its peer has already closed the connection (seen about
    once in 30 launches on the 2-core CI machine, never with a Python error); an exception in a
    worker exits with status 1 and fails at once."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    for attempt in range(2):
        run = subprocess.run(
            [*cmd, f"--nproc_per_node={nproc}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        aborted = "Signal 6 (SIGABRT)" in run.stderr
        if run.returncode == 0 or not aborted or attempt == 1:
            break
        warnings.warn(
            f"a torchrun worker aborted; running it again: {_errors(run.stderr)}", stacklevel=2
        )
    assert run.returncode == 0, _errors(run.stderr) + run.stdout[-2000:] + run.stderr[-4000:]
    return run.stdout


def _errors(stderr: str) -> str:
    """The workers' own error lines (torchrun's summary buries them)."""
    lines = [x for x in stderr.splitlines() if x.startswith("[rank") or "terminate" in x]
    return "\n".join(lines[-20:]) + "\n"


def test_a_single_process_touches_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.distributed, "init_process_group", _fail)
    monkeypatch.setattr(torch.distributed, "is_initialized", _fail)
    ranks = Ranks.resolve(None, torch.device("cpu"))
    assert (ranks.group, ranks.rank, ranks.world) == (None, 0, 1)
    assert ranks.shard(5).tolist() == [0, 1, 2, 3, 4]
    t = torch.ones(3)
    ranks.sum_([t])
    assert ranks.max(2.5) == 2.5 and ranks.gather("x") == ["x"] and t.tolist() == [1, 1, 1]


def _fail(*args, **kwargs):
    raise AssertionError("a process-group function was called in a single process")


def test_shards_cover_every_index_once():
    shards = [Ranks(None, r, 3).shard(10).tolist() for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_a_group_that_is_not_initialised_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^group: expected a process group of an initialised"):
        Ranks.resolve(object(), torch.device("cpu"))


def test_two_process_evaluation_equals_one_process(tmp_path):
    torch.manual_seed(0)
    model = ITransformerDiffusion(MODEL)
    for p in model.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.data_spec = data().spec()
    checkpoint = model.save(tmp_path / "model.pt")
    ranks = torchrun(tmp_path / "eval", "evaluate", checkpoint)
    one = evaluate_split(model, data().test, **EVAL)

    # every window scored on exactly one rank, strided by the global window index
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(EVAL["max_windows"]))
    assert ranks[0]["seen"] == list(range(0, EVAL["max_windows"], 2))
    assert ranks[0]["alone"] == pytest.approx(one.metrics, nan_ok=True)  # group=False: one process
    scale = fit_spread_scale(model, data().val, **SPREAD)  # [H, N], sampled sharded there
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["spread_scale"]), scale, rtol=1e-5, atol=1e-6)
    for r in ranks:  # a call with other arguments on one rank fails on both
        assert r["mismatch"].startswith("evaluate_split: every process must call it with the same")
        assert "ranks [1] differ from rank 0" in r["mismatch"]
    assert ranks[0]["write_error"].startswith("FileNotFoundError")
    assert ranks[1]["write_error"].startswith("OSError: rank 0 failed writing a file: FileNotFound")
    count = EVAL["max_windows"] * MODEL.horizon * MODEL.n_variates
    for r in ranks:  # every rank returns the scores of all windows
        assert r["world"] == 2 and r["windows"] == one.windows
        assert r["metrics"].keys() == one.metrics.keys()
        for k, want in one.metrics.items():
            # the same keyed noise, sampled in other batches: equal to float32 round-off (and
            # a coverage count may differ by an observation on an interval's end)
            slack = 1.5 / count if k.startswith("coverage_") else 1e-6
            assert r["metrics"][k] == pytest.approx(want, rel=1e-5, abs=slack), k
        for k, want in one.per_step.items():
            slack = 1.5 / count if k.startswith("coverage_") else 1e-6
            assert r["per_step"][k] == pytest.approx(list(want), rel=1e-5, abs=slack), k


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return out, torchrun(out / "full", "train", out / "full.pt")


def test_two_process_training_learns_in_step_and_rank_0_alone_writes(trained):
    out, ranks = trained
    r0, r1 = ranks
    assert r0["world"] == 2 and not r0["interrupted"] and not r0["resumed"]
    # both ranks hold the same model and the same record (losses summed over the ranks)
    assert r0["history"] == r1["history"]
    assert r0["digest"] == r1["digest"]
    point = [h["val_point_mse"] for h in r0["history"] if h["stage"] == 1]
    diffusion = [h["val_diffusion_loss"] for h in r0["history"] if h["stage"] == 2]
    assert len(point) == 2 and len(diffusion) == 3
    assert point[-1] < point[0] and min(diffusion) < diffusion[0]
    assert r0["writes"] == ["epoch 1", "epoch 2", "epoch 1", "epoch 2", "epoch 3", "finished"]
    assert r1["writes"] == []
    model = ITransformerDiffusion.load(out / "full.pt")  # finished, with the data recorded
    assert model.data_spec == data().spec()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The checkpoint of a 2-process run stopped in stage 2's second epoch, and its records."""
    out = tmp_path_factory.mktemp("stopped")
    return out / "run.pt", torchrun(out / "a", "train", out / "run.pt", 3)


def test_two_process_training_resumes_like_an_uninterrupted_run(trained, interrupted, tmp_path):
    _, (full, _) = trained
    saved, stopped = interrupted
    assert all(r["interrupted"] for r in stopped)
    assert stopped[0]["writes"] == ["epoch 1", "epoch 2", "epoch 1"] and stopped[1]["writes"] == []
    with pytest.raises(ValueError, match="unfinished training run"):
        ITransformerDiffusion.load(saved)
    checkpoint = tmp_path / "run.pt"
    shutil.copy(saved, checkpoint)
    resumed = torchrun(tmp_path / "b", "train", checkpoint)
    for r in resumed:
        assert r["resumed"] and not r["interrupted"]
        assert r["history"] == full["history"]
        assert r["digest"] == full["digest"]  # the same machine, the same path: bitwise


def test_resume_refuses_another_number_of_processes(interrupted, tmp_path):
    checkpoint = tmp_path / "run.pt"
    shutil.copy(interrupted[0], checkpoint)
    cmd = [sys.executable, str(WORKER), str(tmp_path), "train", str(checkpoint)]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1"}  # one process (the worker reads RANK)
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert "trained by 2 process(es); this run has 1" in run.stderr


CLI_MODEL = [
    "--seq_len", "24", "--pred_len", "12", "--d_model", "16", "--n_heads", "2", "--d_ff", "16",
    "--denoiser_width", "16", "--denoiser_layers", "1", "--denoiser_heads", "2",
    "--diffusion_steps", "50", "--train_epochs", "2", "--diffusion_epochs", "2",
    "--batches_per_epoch", "3",
]  # fmt: skip
CLI_SAMPLING = ["--samples", "4", "--steps", "2", "--windows", "7", "--no-progress"]


def test_the_command_under_torchrun_speaks_once_and_scores_like_one_process(tmp_path, capsys):
    out = tmp_path / "run"
    stdout = _launch(2, "-m", "diffsample.forecast.cli", "train", "--out", str(out),
                     *CLI_MODEL, *CLI_SAMPLING)  # fmt: skip
    lines = stdout.splitlines()
    assert sum(line.startswith("trained in ") for line in lines) == 1  # rank 0 alone prints
    assert any(line.endswith("across 2 processes") for line in lines)
    assert sum(line.startswith("stage 2 epoch 2/2") for line in lines) == 1
    two = json.loads((out / "results.json").read_text())
    # the same checkpoint scored by one process
    argv = ["evaluate", str(out / "model.pt"), "--out", str(tmp_path / "one.json")]
    assert main([*argv, *CLI_SAMPLING]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert (two["processes"], one["processes"]) == (2, 1)
    assert two["scores"].keys() == one["scores"].keys()
    count = 7 * 12 * 7
    for k in ("crps", "quantile_crps", "crps_sum", "mse_mean", "point_mse", "coverage_90"):
        slack = 1.5 / count if k.startswith("coverage_") else 1e-6
        assert two["scores"][k] == pytest.approx(one["scores"][k], rel=1e-5, abs=slack), k


def test_save_samples_under_torchrun_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(torch.distributed, "init_process_group", _fail)
    argv = ["train", "--out", str(tmp_path), *CLI_MODEL, *CLI_SAMPLING, "--save-samples"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffsample: error: --save-samples: not available under torchrun")
    assert len(err.splitlines()) == 1


def test_torchrun_rank_world_reads_the_environment_only(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", _fail)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert torchrun_rank_world() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert torchrun_rank_world() == (1, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"^\$RANK, \$WORLD_SIZE: expected integers"):
        torchrun_rank_world()
