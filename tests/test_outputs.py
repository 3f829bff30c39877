"""Output paths checked before any work, and the run lock (diffsample.forecast.outputs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffsample.forecast import ForecastConfig, ITransformerDiffusion, outputs
from diffsample.forecast.checkpoint import model_payload, write_checkpoint
from diffsample.forecast.outputs import (
    LOCK_NAME,
    RunLock,
    check_fresh_start,
    check_out_arg,
    check_writable_files,
    refuse_inputs,
)
from diffsample.forecast.report import OutputError

SMALL = ForecastConfig(lookback=8, horizon=4, n_variates=2, d_model=8, n_heads=2, d_ff=8)


# ------------------------------------------------------------------------------------ --out
@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_out_is_refused(text):
    # `--out "$RUN"` with RUN unset meant the current folder, and overwrote a model.pt there
    with pytest.raises(ValueError, match=r"^--out: expected a folder or file name .*got str"):
        check_out_arg(text)
    assert check_out_arg("runs/a") == Path("runs/a")
    with pytest.raises(TypeError, match=r"^--out: expected a path, got NoneType"):
        check_out_arg(None)


def test_an_output_that_is_an_input_is_refused(tmp_path, monkeypatch):
    ckpt = tmp_path / "run" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    data = tmp_path / "data.csv"
    data.write_text("date,a\n")
    inputs = {"the checkpoint": ckpt, "the data": str(data), "the synthetic data": "synthetic()"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.json").symlink_to(ckpt)
    os.link(data, tmp_path / "hard.csv")
    for out in (ckpt, "run/model.pt", "run/../run/model.pt", "link.json", "hard.csv", data):
        with pytest.raises(
            ValueError, match=r"^--out: the output file .* is the (checkpoint|data)"
        ):
            refuse_inputs([tmp_path / "new.json", out], inputs)
    refuse_inputs([tmp_path / "new.json", tmp_path / "run" / "eval_test.json"], inputs)  # fine
    refuse_inputs([ckpt], {"the checkpoint": None})


# ------------------------------------------------------------------------------------ names
def test_every_output_name_must_be_writable_as_a_file(tmp_path):
    (tmp_path / "model.pt").mkdir()  # passed the folder check, failed at the first checkpoint
    with pytest.raises(
        OutputError,
        match=r"^--out: cannot write the file .*/model\.pt: a directory of that name is in the way$",
    ):
        check_writable_files([tmp_path / "results.json", tmp_path / "model.pt"])
    with pytest.raises(OutputError, match=r"^--out: cannot write the file .*: File name too long$"):
        check_writable_files([tmp_path / ("r" * 250 + ".json")])  # the temp name is longer
    (tmp_path / "old.json").write_text("kept")
    (tmp_path / "link.json").symlink_to(tmp_path / "model.pt")  # replaced, never followed
    check_writable_files([tmp_path / "old.json", tmp_path / "new.json", tmp_path / "link.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "model.pt", "old.json"]
    assert (tmp_path / "old.json").read_text() == "kept"


# ------------------------------------------------------------------------------------ fresh start
def _checkpoint(path, finished: bool):
    model = ITransformerDiffusion(SMALL)
    extra = {} if finished else {"stage": 1, "epoch": 1, "run": {}, "resume": {}}
    weights = model_payload(model.config, model.state_dict(), model.data_spec)
    write_checkpoint(path, {**weights, "finished": finished, **extra})
    return path


def test_an_unfinished_run_is_not_started_over_without_asking(tmp_path):
    unfinished = _checkpoint(tmp_path / "u.pt", finished=False)
    with pytest.raises(ValueError, match=r"^--out: .*u\.pt holds an unfinished training run; "):
        check_fresh_start(unfinished, resume=False, overwrite=False)
    check_fresh_start(unfinished, resume=True, overwrite=False)
    check_fresh_start(unfinished, resume=False, overwrite=True)
    with pytest.raises(
        ValueError, match=r"^--overwrite: expected --resume or --overwrite, got both"
    ):
        check_fresh_start(unfinished, resume=True, overwrite=True)
    check_fresh_start(_checkpoint(tmp_path / "f.pt", finished=True), resume=False, overwrite=False)
    check_fresh_start(tmp_path / "none.pt", resume=False, overwrite=False)
    other = tmp_path / "other.pt"
    for content in (b"a user's own file", b""):
        other.write_bytes(content)
        with pytest.raises(ValueError, match=r"is not a diffsample checkpoint; pass --overwrite"):
            check_fresh_start(other, resume=False, overwrite=False)
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"is not a diffsample checkpoint"):
        check_fresh_start(other, resume=False, overwrite=False)


# ------------------------------------------------------------------------------------ lock
def test_one_run_at_a_time_holds_a_folder(tmp_path):
    with RunLock(tmp_path) as first:
        assert first.held and (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        second = RunLock(tmp_path)
        with pytest.raises(
            OutputError,
            match=rf"^--out: {tmp_path} is in use by another diffsample run \(process "
            rf"{os.getpid()}\); wait for it to end, or choose another --out$",
        ):
            second.acquire()
        assert not second.held
    assert not first.held and not (tmp_path / LOCK_NAME).exists()  # released and removed
    with RunLock(tmp_path) as again:
        assert again.held


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from diffsample.forecast.outputs import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(outputs.fcntl is None, reason="POSIX locks")
def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(OutputError, match=rf"\(process {holder.pid}\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file is left; the kernel dropped the lock
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_without_fcntl_no_lock_is_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "fcntl", None)
    with RunLock(tmp_path) as a, RunLock(tmp_path) as b:
        assert not a.held and not b.held
    assert list(tmp_path.iterdir()) == []
