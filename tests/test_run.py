"""The run pipeline called directly, without the command or argparse: train_and_score,
score_checkpoint, score and the checked Scoring, on a tiny model and small synthetic data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tiny import QUICK, TINY

from diffsample.forecast import (
    ITransformerDiffusion,
    evaluate_split,
    load_dataset,
    load_samples,
    report,
    scoring,
)
from diffsample.forecast import run as pipeline
from diffsample.forecast.outputs import RunLock
from diffsample.forecast.run import (
    RunResult,
    Scoring,
    checkpoint_data,
    score,
    score_checkpoint,
    train_and_score,
)

SOURCE = "synthetic(n_steps=1500, n_variates=3, seed=0)"
SMALL = Scoring(n_samples=4, num_steps=2, windows=5, seed=3)
ONE_EPOCH = dataclasses.replace(QUICK, point_epochs=1, diffusion_epochs=1, max_batches_per_epoch=2)


def _data():
    return load_dataset(SOURCE, lookback=TINY.lookback, horizon=TINY.horizon)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny train_and_score run: its folder, result, the lines said, the epochs seen and the
    windows scored (their split indices and samples' shapes)."""
    out = tmp_path_factory.mktemp("run") / "r"
    lines: list[str] = []
    epochs: list[dict[str, float]] = []
    seen: list[tuple[list[int], tuple[int, ...]]] = []
    torch.manual_seed(123)  # train_and_score seeds the weights itself: this must not matter
    result = train_and_score(
        _data(),
        TINY,
        ONE_EPOCH,
        out,
        scoring=SMALL,
        on_epoch=epochs.append,
        on_batch=lambda b, fc: seen.append((b.index.tolist(), tuple(fc.samples.shape))),
        say=lines.append,
    )
    return out, result, lines, (epochs, seen)


# ------------------------------------------------------------------------------------ train
def test_train_and_score_returns_what_it_scored_and_wrote(trained):
    pytest.importorskip("matplotlib")
    out, result, _, (epochs, seen) = trained
    assert isinstance(result, RunResult)
    assert list(result.files) == ["results", "per_step", "fan_chart"]  # in the order written
    assert result.files["results"] == out / "results.json"
    assert sorted(p.name for p in out.iterdir()) == [
        "model.pt",
        "results.json",
        "results_fan_chart.png",
        "results_per_step.csv",
    ]
    r = json.loads((out / "results.json").read_text())
    assert r["command"] == "train" and r["checkpoint"] == str(out / "model.pt")
    assert r["scores"] == pytest.approx(result.evaluation.as_dict())
    assert r["scores"]["windows"] == 5 and r["scores"]["samples"] == 4
    assert (
        list(r["baselines"])
        == list(result.baselines or {})
        == [
            "gaussian_train_sigma",
            "gaussian_val_sigma",
            "bootstrap",
        ]
    )
    # the caller's on_batch sees the head's windows (not the baselines'), spread over the split
    assert seen == [(report.spread_windows(289, 5), (4, 5, TINY.horizon, 3))]
    # the on_epoch hook sees every epoch
    assert [(e["stage"], e["epoch"]) for e in epochs] == [(1, 1), (2, 1)]
    assert [(h["stage"], h["epoch"]) for h in result.training.history] == [(1, 1), (2, 1)]
    assert r["history"] == [dict(h) for h in result.training.history]
    # the returned model is the trained one, as saved
    saved = ITransformerDiffusion.load(out / "model.pt")
    for (k, a), b in zip(
        result.model.state_dict().items(), saved.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_train_and_score_says_a_line_per_stage_in_order(trained):
    _, _, lines, _ = trained
    starts = [
        f"data: {SOURCE} | windows train/val/test 1015/139/289",
        "training: stage 1 (point forecast) up to 1 epochs, stage 2 (denoiser) up to 1 epochs",
        "stage 1 epoch 1/1: train_point_mse",
        "stage 2 epoch 1/1: train_diffusion_loss",
        "trained in ",
        "sampling the test set: 5 windows x 4 samples, dpmpp_2m 2 steps (logsnr grid), 256 windows "
        "per call",
        "sampled in ",
        f"test set of {SOURCE}: 5 windows x 4 samples",
        "results: ",
        "per-step scores: ",
    ]
    found = [next(i for i, line in enumerate(lines) if line.startswith(s)) for s in starts]
    assert found == sorted(found), lines
    assert "  beside the same backbone's baselines (same windows and samples):" in lines


def test_the_weights_come_from_the_train_configs_seed(trained, tmp_path):
    """Two runs with the same TrainConfig.seed train the same model whatever the global RNG
    held before; a run without say is silent."""
    _, first, _, _ = trained
    torch.manual_seed(999)
    again = train_and_score(_data(), TINY, ONE_EPOCH, tmp_path / "r", scoring=SMALL)
    assert again.evaluation.metrics["crps"] == first.evaluation.metrics["crps"]
    reseeded = dataclasses.replace(ONE_EPOCH, seed=1)
    other = train_and_score(_data(), TINY, reseeded, tmp_path / "s", scoring=SMALL)
    assert other.evaluation.metrics["crps"] != first.evaluation.metrics["crps"]


def test_train_and_score_checks_before_training(tmp_path, monkeypatch):
    def trained(*args, **kwargs):
        raise AssertionError("training started before the settings were checked")

    monkeypatch.setattr(pipeline, "train", trained)
    data = _data()
    out = tmp_path / "r"
    too_many = Scoring(num_steps=TINY.num_train_steps + 1)
    with pytest.raises(ValueError, match=r"^--steps: expected at most T = 50 sampling steps"):
        train_and_score(data, TINY, ONE_EPOCH, out, scoring=too_many)
    other = dataclasses.replace(TINY, n_variates=5)  # not the data's 3 variates: was found by
    with pytest.raises(ValueError, match=r"^config: expected a model sized to the data"):
        train_and_score(data, other, ONE_EPOCH, out, scoring=SMALL)  # train, after mkdir out
    with pytest.raises(ValueError, match="expected a folder or file name"):
        train_and_score(data, TINY, ONE_EPOCH, "", scoring=SMALL)
    assert not out.exists()  # nothing created for a run that cannot start
    out.mkdir()
    with RunLock(out), pytest.raises(OSError, match="in use by another diffsample run"):
        train_and_score(data, TINY, ONE_EPOCH, out, scoring=SMALL)
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------ checkpoint
def test_score_checkpoint_scores_like_the_run_that_trained_it(trained, tmp_path):
    out, result, _, _ = trained
    lines: list[str] = []
    again = score_checkpoint(
        out / "model.pt", scoring=SMALL, results=tmp_path / "e.json", say=lines.append
    )
    assert again.data.source == SOURCE  # the checkpoint's own data, from its spec
    # keyed noise: the same windows, samples and seed give the same scores
    assert again.evaluation.metrics == pytest.approx(result.evaluation.metrics, rel=1e-6)
    for name, b in (again.baselines or {}).items():
        assert b.metrics["crps"] == pytest.approx(result.baselines[name].metrics["crps"], rel=1e-6)
    assert lines[0].startswith(f"checkpoint: {out / 'model.pt'} (")
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["command"] == "evaluate" and r["train"] is None and r["split"] == "test"
    assert again.files["per_step"] == tmp_path / "e_per_step.csv"
    # by default the results go beside the checkpoint, named after the split
    val = score_checkpoint(out / "model.pt", split="val", scoring=SMALL)
    assert val.files["results"] == out / "eval_val.json" and val.evaluation.windows == 5
    with pytest.raises(ValueError, match="split: expected one of 'test', 'val', 'train'"):
        score_checkpoint(out / "model.pt", split="dev", scoring=SMALL)


def test_score_checkpoint_never_writes_over_what_it_reads(trained, tmp_path):
    out, _, _, _ = trained
    before = (out / "model.pt").read_bytes()
    with pytest.raises(ValueError, match="is the checkpoint this run reads"):
        score_checkpoint(out / "model.pt", scoring=SMALL, results=out / "model.pt")
    assert (out / "model.pt").read_bytes() == before


def test_checkpoint_data_needs_a_spec_or_a_source(tmp_path):
    model = ITransformerDiffusion(dataclasses.replace(TINY))  # never trained: no data spec
    with pytest.raises(ValueError, match=r"^--data: m\.pt does not record the data"):
        checkpoint_data(model, checkpoint="m.pt")
    said: list[str] = []
    data = checkpoint_data(model, source=SOURCE, say=said.append)
    assert data.source == SOURCE and len(data.test) == 289
    assert said == [
        "note: the checkpoint does not record its training data; the data given could not be "
        "checked"
    ]


def test_checkpoint_data_refuses_other_data(trained):
    out, _, _, _ = trained
    model = ITransformerDiffusion.load(out / "model.pt")
    other = "synthetic(n_steps=1500, n_variates=3, seed=1)"
    with pytest.raises(ValueError, match="expected the data the model was trained on"):
        checkpoint_data(model, source=other)


# ------------------------------------------------------------------------------------ score
def test_score_writes_the_samples_and_leaves_out_what_is_turned_off(trained, tmp_path):
    _, result, _, _ = trained
    kept = dataclasses.replace(SMALL, save_samples=True, baselines=False)
    lines: list[str] = []
    r = score(
        result.model,
        result.data,
        results=tmp_path / "x.json",
        scoring=kept,
        plot=False,
        say=lines.append,
    )
    assert r.baselines is None and list(r.files) == ["results", "per_step", "samples"]
    assert "beside the same backbone's baselines" not in " ".join(lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x.json",
        "x_per_step.csv",
        "x_samples.npz",
    ]
    assert json.loads((tmp_path / "x.json").read_text())["command"] == "score"
    fc, _, meta = load_samples(r.files["samples"])
    assert meta["split"] == "test" and meta["data"] == result.data.spec()
    assert fc.samples.shape == (4, 5, TINY.horizon, 3)
    # windows=5: spread evenly over the test period, the last window included
    assert np.asarray(fc.window_ids).tolist() == report.spread_windows(289, 5)
    # the same draws as the scoring run without save_samples: the point of keying the noise
    assert r.evaluation.metrics["crps"] == result.evaluation.metrics["crps"]
    with pytest.raises(ValueError, match="split: expected one of"):
        score(result.model, result.data, "dev", results=tmp_path / "y.json")


def test_score_records_its_sampling_config_and_samples_eagerly_off_cuda(trained, tmp_path):
    """results.json records the head's SamplingConfig; graph=True on a CPU is one note and the
    eager samples (sample_many's documented fallback), and the record says what ran."""
    _, result, _, _ = trained
    asked = dataclasses.replace(SMALL.sampling, sampler="ddim", eta=0.0, graph=True)
    lines: list[str] = []
    r = score(
        result.model,
        result.data,
        results=tmp_path / "g.json",
        scoring=Scoring(sampling=asked, windows=5, baselines=False),
        plot=False,
        say=lines.append,
    )
    ran = dataclasses.replace(asked, graph=False)
    assert lines[0] == "note: --graph: CUDA graphs need a CUDA device; sampling eagerly on cpu"
    assert lines[1] == (
        "sampling the test set: 5 windows x 4 samples, ddim 2 steps (logsnr grid), 256 windows "
        "per call, eta 0.0"
    )
    record = json.loads((tmp_path / "g.json").read_text())
    assert record["sampling"] == ran.as_dict() and r.evaluation.sampling == ran
    # eta 0 is DDIM's default: the same samples as the loose keywords of evaluate_split
    plain = evaluate_split(result.model, result.data.test, n_samples=4, num_steps=2,
                           sampler="ddim", seed=3, windows=report.spread_windows(289, 5))  # fmt: skip
    assert r.evaluation.metrics == plain.metrics


def test_only_rank_0_writes(trained, tmp_path, monkeypatch):
    _, result, _, _ = trained
    monkeypatch.setattr(scoring, "torchrun_rank_world", lambda: (1, 2))
    lines: list[str] = []
    r = score(
        result.model, result.data, results=tmp_path / "x.json", scoring=SMALL, say=lines.append
    )
    assert r.files == {} and list(tmp_path.iterdir()) == []
    assert lines[0].endswith("256 windows per call, across 2 processes")
    assert r.evaluation.windows == 5  # the scores are still returned


# ------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_samples": 0}, ValueError, "n_samples: expected a positive integer, got int 0"),
        ({"num_steps": 1.5}, TypeError, "num_steps: expected"),
        ({"sampler": "euler"}, ValueError, "sampler: expected one of"),
        ({"windows": 0}, ValueError, "windows: expected a positive integer, got int 0"),
        ({"batch_size": -1}, ValueError, "batch_size: expected a positive integer"),
        ({"baselines": "yes"}, TypeError, "baselines: expected True or False"),
        ({"save_samples": 1}, TypeError, "save_samples: expected True or False"),
    ],
)
def test_scoring_is_checked_when_built(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}"):
        Scoring(**kwargs)


def test_scoring_keeps_no_samples_under_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    Scoring()  # fine without --save-samples
    with pytest.raises(ValueError, match=r"^--save-samples: not available under torchrun"):
        Scoring(save_samples=True)


def test_scoring_is_frozen_and_normalises_integers():
    s = Scoring(n_samples=np.int64(8), windows=np.int32(3))
    assert (type(s.n_samples), type(s.windows)) == (int, int)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_samples = 2  # type: ignore[misc]
