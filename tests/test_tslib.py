"""A Time-Series-Library (TSLib) script run by the diffsample command: the stock iTransformer
long-term-forecasting script's text with ``python -u run.py`` replaced by ``diffsample``, TSLib's
result files and ledger, and one line for each flag diffsample cannot honour."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsample.forecast import cli, tslib
from diffsample.forecast.cli import main

# thuml/Time-Series-Library, scripts/long_term_forecast/ETT_script/iTransformer_ETTh2.sh at
# commit 4e938a1 (April 2026), its first run (pred_len 96) verbatim. Upstream has no
# iTransformer_ETTh1.sh in long_term_forecast/ETT_script; the ETTh1 script is this one with the
# file named (as the library's ETTh1 scripts of other models read).
STOCK_ETTH2 = """\
export CUDA_VISIBLE_DEVICES=0

model_name=iTransformer

python -u run.py \\
  --task_name long_term_forecast \\
  --is_training 1 \\
  --root_path ./dataset/ETT-small/ \\
  --data_path ETTh2.csv \\
  --model_id ETTh2_96_96 \\
  --model $model_name \\
  --data ETTh2 \\
  --features M \\
  --seq_len 96 \\
  --label_len 48 \\
  --pred_len 96 \\
  --e_layers 2 \\
  --d_layers 1 \\
  --factor 3 \\
  --enc_in 7 \\
  --dec_in 7 \\
  --c_out 7 \\
  --des 'Exp' \\
  --d_model 128 \\
  --d_ff 128 \\
  --itr 1
"""
# appended to the command: a tiny model, one epoch of two batches each stage, 8 test windows
SMALL = (
    "--train_epochs 1 --diffusion_epochs 1 --batches_per_epoch 2 --d_model 16 --d_ff 16 "
    "--n_heads 2 --denoiser_width 16 --denoiser_layers 1 --denoiser_heads 2 "
    "--diffusion_steps 50 --samples 2 --steps 2 --windows 8 --no-progress --threads 1"
)
# run.py's setting string for that command (written out by hand from run.py's format)
SETTING = (
    "long_term_forecast_ETTh1_96_96_iTransformer_ETTh1_ftM_sl96_ll48_pl96_dm16_nh2_el2_dl1_df16"
    "_expand2_dc4_fc3_ebtimeF_dtTrue_Exp_0"
)
IGNORED = (
    "--task_name, --is_training, --model_id, --model, --features, --label_len, --d_layers, "
    "--factor, --dec_in, --c_out, --des, --itr"
)


def _script(text: str, command: str) -> str:
    """The script with ``python -u run.py`` replaced by ``command`` and SMALL appended to each
    run (after its last flag, so that SMALL's values win, as argparse keeps the last)."""
    text = text.replace("python -u run.py", command)
    return re.sub(r"(?m)^(  --itr 1)$", rf"\1 {SMALL}", text)


def _workdir(tmp_path: Path, ett_dir: Path) -> Path:
    """A working folder laid out as TSLib's: ./dataset/ETT-small/ (a link, never a copy)."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "ETT-small").symlink_to(ett_dir, target_is_directory=True)
    return tmp_path


def _diffsample() -> str:
    """The installed command beside this interpreter (else the module)."""
    script = Path(sys.executable).with_name("diffsample")
    return str(script) if script.is_file() else f"{sys.executable} -m diffsample.forecast.cli"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ETTh1", "ETTh2"])  # ETTh2: the stock file's text verbatim
def test_the_stock_itransformer_script_runs(tmp_path, etth1_path, name):
    if not (etth1_path.parent / f"{name}.csv").is_file():
        pytest.skip(f"{name}.csv not found beside {etth1_path}")
    text = _script(STOCK_ETTH2.replace("ETTh2", name), _diffsample())
    assert text.count(SMALL) == 1 and "run.py" not in text
    cwd = _workdir(tmp_path, etth1_path.parent)
    done = subprocess.run(
        ["bash", "-c", text], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stdout[-2000:] + done.stderr
    notices = [line for line in done.stdout.splitlines() if "Time-Series-Library" in line]
    assert notices == [
        f"note: Time-Series-Library flags accepted and ignored (no effect here): {IGNORED}"
    ]
    # diffsample's files in TSLib's checkpoint folder, TSLib's in ./results/<setting>/
    setting = SETTING.replace("ETTh1", name)
    run = cwd / "checkpoints" / setting
    assert (run / "model.pt").is_file() and (run / "results.json").is_file()
    results = cwd / "results" / setting
    pred, true = np.load(results / "pred.npy"), np.load(results / "true.npy")
    assert pred.shape == true.shape == (8, 96, 7) and pred.dtype == np.float32
    metrics = np.load(results / "metrics.npy")
    np.testing.assert_allclose(metrics, _tslib_metric(pred, true), rtol=1e-6)
    # pred.npy is the point forecast the command scored (its mse, printed to 4 digits)
    assert (
        f"point forecast (iTransformer)  mse {metrics[1]:.4f}  mae {metrics[0]:.4f}" in done.stdout
    )
    ledger = (cwd / "result_long_term_forecast.txt").read_text()
    assert ledger == f"{setting}  \nmse:{metrics[1]}, mae:{metrics[0]}, dtw:Not calculated\n\n"


def _tslib_metric(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """TSLib's utils/metrics.py, as written there."""
    mae = np.mean(np.abs(true - pred))
    mse = np.mean((true - pred) ** 2)
    rmse = np.sqrt(mse)
    mape = np.mean(np.abs((true - pred) / true))
    mspe = np.mean(np.square((true - pred) / true))
    return np.array([mae, mse, rmse, mape, mspe])


def test_tslib_metrics_are_tslibs():
    g = np.random.default_rng(0)
    pred, true = g.normal(size=(2, 5, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(
        tslib.tslib_metrics(pred, true), _tslib_metric(pred, true), rtol=1e-6
    )
    true[0, 0, 0] = 0.0  # TSLib divides by the target: inf, as there
    with np.errstate(divide="ignore"):
        assert np.array_equal(tslib.tslib_metrics(pred, true), _tslib_metric(pred, true))
    with pytest.raises(ValueError, match=r"^pred: expected the shape of true \[5, 3, 4\]"):
        tslib.tslib_metrics(pred[:, :2], true)


# ------------------------------------------------------------------------------------ in-process
STOCK_ARGS = (
    "--task_name long_term_forecast --is_training 1 --root_path {root} --data_path ETTh1.csv "
    "--model_id ETTh1_96_96 --model iTransformer --data ETTh1 --features M --seq_len 96 "
    "--label_len 48 --pred_len 96 --e_layers 2 --d_layers 1 --factor 3 --enc_in 7 --dec_in 7 "
    "--c_out 7 --des Exp --d_model 128 --d_ff 128 --itr 1"
).split()


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _no_work(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the run started before the arguments were checked")

    monkeypatch.setattr(cli, "load_dataset", refuse)
    monkeypatch.setattr(cli, "train", refuse)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--features", "S"], "--features: expected M (multivariate to multivariate"),
        (["--features", "MS"], "--features: expected M "),
        (["--model", "DLinear"], "--model: expected iTransformer (the backbone"),
        (["--task_name", "imputation"], "--task_name: expected long_term_forecast"),
        (["--is_training", "0"], "--is_training: expected 1 (train then test"),
        (["--itr", "3"], "--itr: expected 1 (one run per command"),
        (["--loss", "MAE"], "--loss: expected MSE"),
        (["--lradj", "cosine"], "--lradj: expected type1"),
        (["--use_norm", "0"], "--use_norm: expected 1"),
        (["--jitter"], "--jitter: expected False (no data augmentation)"),
        (["--augmentation_ratio", "2"], "--augmentation_ratio: expected 0"),
        (["--use_multi_gpu"], "--use_multi_gpu: expected False (DataParallel; run diffsample under torchrun"),
        (["--use_dtw"], "--use_dtw: expected False"),
        (["--model_id", "a/b"], "--model_id: expected a run name without '/'"),
        (["--label_len", "x"], "argument --label_len: invalid int value: 'x'"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_refused_in_one_line(tmp_path, monkeypatch, extra, message):
    _no_work(monkeypatch)
    monkeypatch.chdir(tmp_path)
    rc, _, stderr = _run([*[a.format(root=tmp_path) for a in STOCK_ARGS], *extra])
    assert rc == 2 and stderr.startswith("diffsample: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr, stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("flag", ["--task_name", "--is_training", "--model_id", "--model"])
def test_a_flag_run_py_requires_is_required(tmp_path, monkeypatch, flag):
    _no_work(monkeypatch)
    argv = [a.format(root=tmp_path) for a in STOCK_ARGS]
    i = argv.index(flag)
    del argv[i : i + 2]
    if flag == "--task_name":  # then it is not a TSLib command line: its flags are refused
        argv = ["train", "--out", "x", *argv]
        message = "--is_training: a Time-Series-Library flag, expected with --task_name"
    else:
        message = f"{flag}: expected with --task_name (Time-Series-Library's run.py requires it)"
    rc, _, stderr = _run(argv)
    assert rc == 2 and message in stderr and stderr.count("\n") == 1, stderr


def test_both_spellings_of_the_command_line_parse_alike():
    """``diffsample <run.py's flags>`` is ``diffsample train <run.py's flags>``; TSLib's defaults
    fill what the script leaves out (d_model 512, d_ff 2048 where diffsample's are 128)."""
    argv = ["--task_name", "long_term_forecast", "--model_id", "m", "--model", "iTransformer"]
    assert tslib.is_tslib(argv) and tslib.is_tslib(["--task-name=long_term_forecast"])
    assert not tslib.is_tslib(["train", "--out", "x", "--data", "ETTh1"])
    a = cli._parser(tslib=True).parse_args(["train", *argv])
    assert (a.d_model, a.d_ff, a.out) == (512, 2048, None)
    assert (a.root_path, a.data_path) == ("./data/ETT/", "ETTh1.csv")  # run.py's defaults
    assert tslib.given_flags(a) == ["--task_name", "--model_id", "--model"]
    plain = cli._parser().parse_args(["train", "--out", "x"])
    assert (plain.d_model, plain.d_ff) == (128, 128)


def _namespace(argv: tuple[str, ...] = ()) -> argparse.Namespace:
    """A parsed TSLib command line, as TSLibRun.from_args reads it."""
    return cli._parser(tslib=True).parse_args(
        [
            *("train", "--task_name", "long_term_forecast", "--is_training", "1"),
            *("--model_id", "m", "--model", "iTransformer", "--data", "ETTh1", *argv),
        ]
    )


def test_the_setting_and_folders_are_tslibs():
    t = tslib.TSLibRun.from_args(_namespace(["--checkpoints", "ck", "--des", "d"]))
    # run.py's format with TSLib's defaults (d_model 512, factor 1, ...)
    assert t.setting == (
        "long_term_forecast_m_iTransformer_ETTh1_ftM_sl96_ll48_pl96_dm512_nh8_el2_dl1_df2048"
        "_expand2_dc4_fc1_ebtimeF_dtTrue_d_0"
    )
    assert t.out == Path("ck") / t.setting and t.results == Path("results") / t.setting
    assert t.ignored == ("task_name", "is_training", "model_id", "model", "des")
    assert "--checkpoints" not in t.notice()  # honoured, so not in the notice
    off = tslib.TSLibRun.from_args(_namespace(["--distil"]))
    assert "_dtFalse_" in off.setting  # TSLib's --distil switches distilling off


def test_tslib_device_flags(monkeypatch):
    assert tslib.TSLibRun.from_args(_namespace()).device is None  # diffsample's --device
    assert tslib.TSLibRun.from_args(_namespace(["--no_use_gpu"])).device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tslib.TSLibRun.from_args(_namespace(["--gpu", "1"])).device == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tslib.TSLibRun.from_args(_namespace(["--gpu", "1"])).device == "cpu"


def _keeper() -> tslib.PointKeeper:
    """A PointKeeper fed two batches out of window order."""
    g = torch.Generator().manual_seed(0)
    keeper = tslib.PointKeeper()
    for ids in ([2, 0], [1]):
        b = len(ids)
        batch = types.SimpleNamespace(
            y=torch.rand(b, 4, 2, generator=g) + 1, index=torch.tensor(ids)
        )
        fc = types.SimpleNamespace(point=torch.rand(b, 4, 2, generator=g), samples=None)
        keeper(batch, fc)
    return keeper


def test_files_are_written_in_window_order_and_the_ledger_is_appended(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = tslib.TSLibRun.from_args(_namespace(["--inverse"]))
    keeper = _keeper()
    pred, true = keeper.stacked()
    scaler = types.SimpleNamespace(inverse_transform=lambda x: 10 * x + 1)
    data = types.SimpleNamespace(scaler=scaler)
    for _ in range(2):
        lines = t.write(keeper, data)
    assert len(lines) == 4
    saved = np.load(t.results / "pred.npy")
    np.testing.assert_array_equal(saved, (10 * pred + 1).numpy())  # --inverse: data units
    np.testing.assert_array_equal(np.load(t.results / "true.npy"), (10 * true + 1).numpy())
    assert saved.shape == (3, 4, 2)
    ledger = Path(tslib.LEDGER).read_text()
    assert ledger.count(f"{t.setting}  \nmse:") == 2  # appended, as TSLib's test does
    ids = torch.cat(keeper._ids)
    assert ids.tolist() == [2, 0, 1]  # out of order in, in order out:
    assert torch.equal(pred[0], keeper._point[0][1])  # window 0 came second in the first batch


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--out", "x", "--model_id", "m"], "--model_id: a Time-Series-Library flag, expected with --task_name"),
        (["--model_id", "m"], "--model_id: expected a command first (demo, train, evaluate), or --task_name"),
        (["--data_path=ETTh1.csv"], "--data_path: expected a command first"),
    ],
)  # fmt: skip
def test_a_tslib_flag_without_task_name_is_refused(monkeypatch, argv, message):
    _no_work(monkeypatch)
    rc, stdout, stderr = _run(argv)
    assert (rc, stdout) == (2, "") and message in stderr and stderr.count("\n") == 1, stderr


def test_a_missing_csv_names_the_flags(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    monkeypatch.chdir(tmp_path)
    rc, _, stderr = _run([a.format(root=tmp_path / "nowhere") for a in STOCK_ARGS])
    assert rc == 2 and stderr.count("\n") == 1, stderr
    assert f"--data_path: expected a CSV file in --root_path '{tmp_path / 'nowhere'}'" in stderr
