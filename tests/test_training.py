"""The two-stage trainer: config checks, training that lowers both losses, a stop at the first
non-finite loss, per-epoch checkpoints, and a resumed run that ends bitwise where an
uninterrupted one does (the same computation on the same machine).

Dimensions: B windows, L lookback, H horizon, N variates, F time features."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
from tiny import QUICK, TINY

from diffsample import _utils
from diffsample.forecast import (
    ITransformerDiffusion,
    NonFiniteLossError,
    TrainConfig,
    synthetic_dataset,
    train,
)
from diffsample.forecast import checkpoint as checkpoint_module
from diffsample.forecast import training as training_module
from diffsample.forecast.checkpoint import read_checkpoint, write_checkpoint

# 3 batches an epoch, 2 + 3 epochs: every path (stage change, lr decay, early-stopping state)
# in well under a second a run

BATCHES = QUICK.max_batches_per_epoch


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_steps=600, n_variates=3, lookback=24, horizon=12, seed=0)


def fresh_model(seed=0, **changes) -> ITransformerDiffusion:
    torch.manual_seed(seed)
    return ITransformerDiffusion(dataclasses.replace(TINY, **changes))


# ---------------------------------------------------------------- where the names live
def test_the_moved_names_are_the_same_objects_where_they_were():
    """Issue 17 split model.py and training.py by concept; every name still imports from the
    old module, and it is the new module's object (not a copy that could drift)."""
    from diffsample.forecast import calibration, model, model_config, train_config

    for name in ("TrainConfig", "TrainResult", "NonFiniteLossError", "AmpMode", "resolve_amp"):
        assert getattr(training_module, name) is getattr(train_config, name), name
    assert training_module.fit_spread_scale is calibration.fit_spread_scale
    for name in ("ForecastConfig", "DenoiserName", "ScheduleName", "HistoryStats", "CONFIG_LIMITS"):
        assert getattr(model, name) is getattr(model_config, name), name
    assert model.ITransformerDiffusion.__module__ == "diffsample.forecast.model"
    # the checkpoint's legacy defaults cover fields of both configs, and only real ones
    fields = {f.name for c in (TrainConfig, model.ForecastConfig) for f in dataclasses.fields(c)}
    assert set(checkpoint_module.BEFORE_FIELD) <= fields


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        # issue 8: each of these was accepted or failed only inside torch
        (
            {"grad_clip": -1.0},
            ValueError,
            r"^grad_clip: expected a finite number > 0, got float -1\.0$",
        ),
        (
            {"point_lr": math.inf},
            ValueError,
            r"^point_lr: expected a finite number > 0, got float inf$",
        ),
        ({"seed": 1.5}, TypeError, r"^seed: expected a non-negative integer, got float 1\.5$"),
        (
            {"weight_decay": -1},
            ValueError,
            r"^weight_decay: expected a finite number >= 0, got int -1$",
        ),
        ({"diffusion_lr": "1e-3"}, TypeError, r"^diffusion_lr: expected a finite number"),
        (
            {"point_lr_decay": 1.5},
            ValueError,
            r"^point_lr_decay: expected a finite number in \(0, 1\]",
        ),
        ({"batch_size": 0}, ValueError, r"^batch_size: expected a positive integer, got int 0$"),
        ({"diffusion_draws": 0}, ValueError, r"^diffusion_draws: expected a positive integer"),
        ({"point_epochs": -1}, ValueError, r"^point_epochs: expected a non-negative integer"),
        ({"max_batches_per_epoch": 2.0}, TypeError, r"^max_batches_per_epoch: expected a positive"),
        (
            {"diffusion_lr_decay": 0.0},
            ValueError,
            r"^diffusion_lr_decay: expected a finite number in \(0, 1\], got float 0\.0$",
        ),
        ({"amp": "fp8"}, ValueError, r"^amp: expected one of 'auto', 'bf16', 'fp16', 'off', got"),
        ({"amp": None}, TypeError, r"^amp: expected one of"),
        (
            {"calibration": "test"},
            ValueError,
            r"^calibration: expected one of 'train_spread', 'val_spread', 'none', got str 'test'$",
        ),
        (
            {"calibration_samples": 1},
            ValueError,
            r"^calibration_samples: expected an integer >= 2, got int 1$",
        ),
        ({"calibration_steps": 0}, ValueError, r"^calibration_steps: expected a positive integer"),
        ({"calibration_windows": 1.0}, TypeError, r"^calibration_windows: expected a positive"),
        (
            {"max_val_batches": 0},
            ValueError,
            r"^max_val_batches: expected a positive integer, got int 0$",
        ),
        (
            {"max_val_batches": 2.0},
            TypeError,
            r"^max_val_batches: expected a positive integer, got float 2\.0$",
        ),
    ],
)
def test_train_config_checks_every_field(change, error, pattern):
    with pytest.raises(error, match=pattern):
        TrainConfig(**change)


def test_train_config_accepts_its_off_switches():
    c = TrainConfig(grad_clip=None, max_batches_per_epoch=None, point_epochs=0, seed=np.int64(3))
    assert c.grad_clip is None and c.max_batches_per_epoch is None and type(c.seed) is int


def test_stage_two_learning_rate_decays_when_asked(data):
    config = dataclasses.replace(QUICK, diffusion_lr_decay=0.5, patience=10)
    result = train(fresh_model(), data, config, device="cpu", progress=False)
    lrs = [r["lr"] for r in result.history if r["stage"] == 2]
    want = [QUICK.diffusion_lr * 0.5**i for i in range(QUICK.diffusion_epochs)]
    assert lrs == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- training lowers the losses
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_few_training_steps_lower_both_losses(prediction):
    """Losses before and after training on the same validation windows and the same diffusion
    draws (t, noise): a paired comparison, so the decrease must exceed 3 standard errors of the
    per-chunk differences, not just come out lower by chance."""
    torch.manual_seed(0)
    data = synthetic_dataset(n_steps=1500, n_variates=3, lookback=24, horizon=12, seed=0)
    m = ITransformerDiffusion(
        dataclasses.replace(TINY, n_time_features=data.n_marks, prediction=prediction)
    )
    chunks = [data.val.windows(torch.arange(i, len(data.val), 8)) for i in range(8)]

    def losses(model):
        with torch.no_grad():
            point = torch.tensor([float(model.point_loss(b.x, b.y, b.x_mark)) for b in chunks])
            diff = torch.tensor(
                [
                    float(
                        model.diffusion_loss(
                            b.x, b.y, b.x_mark, generator=torch.Generator().manual_seed(i)
                        )
                    )
                    for i, b in enumerate(chunks)
                ]
            )
        return point, diff

    point0, _ = losses(m)
    cfg = TrainConfig(
        batch_size=32,
        point_epochs=2,
        point_lr=3e-3,
        diffusion_epochs=2,
        diffusion_lr=1e-2,
        max_batches_per_epoch=25,
        seed=0,
    )
    res = train(m, data, cfg, progress=False)
    point1, diff1 = losses(m)
    fresh = ITransformerDiffusion(
        m.config
    )  # the same backbone and residual stats, an untrained denoiser
    fresh.backbone.load_state_dict(m.backbone.state_dict())
    fresh.set_residual_stats(m.res_mean, m.res_std)
    _, diff0 = losses(fresh)
    for before, after in ((point0, point1), (diff0, diff1)):
        gain = before - after  # [8] paired per-chunk decreases
        assert float(gain.mean()) > 3 * float(gain.std()) / math.sqrt(len(gain)), (before, after)
    assert [r["stage"] for r in res.history] == [1, 1, 2, 2]
    assert res.best_val_point <= min(r["val_point_mse"] for r in res.history if r["stage"] == 1)


# ---------------------------------------------------------------- non-finite losses
def _recording(model: ITransformerDiffusion, name: str, module: str, seen: list, poison=None):
    """Wrap ``model.<name>`` (the loss the trainer calls) to record the losses of the training
    batches (``model.<module>`` in train mode) and replace the ``poison``-th one (from 1)."""
    loss_fn = getattr(model, name)

    def wrapped(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        if getattr(model, module).training:
            seen.append(float(loss.detach()))
            if poison is not None and len(seen) == poison[0]:
                loss = loss * poison[1]
        return loss

    setattr(model, name, wrapped)


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, data, monkeypatch):
    """issue 8: learning rate 1e6 gave NaN epochs, a backbone silently reset to its initial
    weights, and a saved model. Now: an error naming stage, epoch and batch, before that
    batch's step, and no file."""
    m = fresh_model()
    losses, steps = [], []
    _recording(m, "point_loss", "backbone", losses)
    step = training_module._step
    monkeypatch.setattr(training_module, "_step", lambda *a: (steps.append(1), step(*a)))
    path = tmp_path / "run" / "model.pt"
    cfg = dataclasses.replace(QUICK, point_lr=1e6, diffusion_lr=1e6, max_batches_per_epoch=10)
    with pytest.raises(NonFiniteLossError) as info:
        train(m, data, cfg, checkpoint=path, progress=False)
    err = info.value
    first_bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
    assert first_bad >= 1 and all(math.isfinite(v) for v in losses[:first_bad])
    assert isinstance(err, RuntimeError)
    assert (err.stage, err.epoch, err.batch, err.split) == (1, 1, first_bad + 1, "train")
    assert str(err).startswith(
        f"stage 1 epoch 1 batch {first_bad + 1}: the training loss is {losses[first_bad]}; "
        "training diverged and stopped, nothing was saved"
    )
    assert len(losses) == first_bad + 1 and len(steps) == first_bad  # no step on the bad batch
    assert not path.exists()


@pytest.mark.parametrize("eager", [True, False], ids=["checked-each-batch", "checked-per-epoch"])
def test_a_non_finite_loss_later_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch, eager):
    """The poisoned batch is stage 2 epoch 2 batch 2. The per-epoch check (what a CUDA run
    does, to spare a host sync per batch) must name the same batch as the per-batch one."""
    monkeypatch.setattr(training_module, "eager_checks", lambda run: eager)
    m = fresh_model()
    seen: list[float] = []
    _recording(m, "diffusion_loss", "denoiser", seen, poison=(BATCHES + 2, math.nan))
    path = tmp_path / "model.pt"
    saved = []
    with pytest.raises(NonFiniteLossError) as info:
        train(
            m,
            data,
            QUICK,
            checkpoint=path,
            progress=False,
            on_epoch=lambda r: saved.append(path.read_bytes()),
        )
    err = info.value
    assert (err.stage, err.epoch, err.batch, err.split) == (2, 2, 2, "train")
    assert math.isnan(err.loss)
    assert len(seen) == (BATCHES + 2 if eager else 2 * BATCHES)  # the per-epoch check runs on
    assert len(saved) == 3 and path.read_bytes() == saved[-1]  # stage 2 epoch 1, untouched
    best = ITransformerDiffusion.load(path, allow_unfinished=True).state_dict()
    for k, v in m.state_dict().items():  # the model is left with its best weights, finite
        assert torch.equal(v, best[k]), k
    with pytest.raises(
        ValueError, match=r"unfinished training run \(saved after stage 2 epoch 1\)"
    ):
        ITransformerDiffusion.load(path)


def test_a_non_finite_validation_loss_stops_the_run(data):
    m = fresh_model()
    point_loss, calls = m.point_loss, []

    def poisoned(*args):
        loss = point_loss(*args)
        if not m.backbone.training:  # validation
            calls.append(1)
            return loss * math.inf if len(calls) == 2 else loss
        return loss

    m.point_loss = poisoned
    with pytest.raises(
        NonFiniteLossError, match=r"^stage 1 epoch 1 batch 2: the validation loss is inf;"
    ) as info:
        train(m, data, QUICK, progress=False)
    assert (info.value.stage, info.value.split, info.value.batch) == (1, "val", 2)


# ---------------------------------------------------------------- checkpoints and resume
def test_every_epoch_writes_an_unfinished_checkpoint(tmp_path, data):
    """issue 8: checkpoints were written only at the end of each stage, and the one after
    stage 1 held an untrained denoiser that loaded as a model without a word."""
    path = tmp_path / "model.pt"
    m = fresh_model()
    seen = []

    def check(record):
        payload = torch.load(path, weights_only=True)
        assert payload["finished"] is False
        assert (payload["stage"], payload["epoch"]) == (record["stage"], record["epoch"])
        assert payload["run"]["history"][-1] == record
        with pytest.raises(ValueError) as info:
            ITransformerDiffusion.load(path)
        assert str(info.value) == (
            f"checkpoint: {path} is from an unfinished training run (saved after stage "
            f"{record['stage']} epoch {record['epoch']}); resume it with train(..., "
            "checkpoint=path, resume=True), or pass allow_unfinished=True to load its best "
            "weights so far"
        )
        partial = ITransformerDiffusion.load(path, allow_unfinished=True)
        assert partial.data_spec == data.spec()
        seen.append((record["stage"], record["epoch"]))

    rng = torch.get_rng_state()
    result = train(m, data, QUICK, checkpoint=path, progress=False, on_epoch=check)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's RNG was forked, not consumed
    assert seen == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    payload = torch.load(path, weights_only=True)
    assert payload["finished"] is True and "resume" not in payload
    back = ITransformerDiffusion.load(path)
    assert back.data_spec == m.data_spec == data.spec()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())
    assert payload["run"]["history"] == list(result.history)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run with dropout on (so the global RNG's state matters too)."""
    path = tmp_path_factory.mktemp("reference") / "model.pt"
    m = fresh_model(dropout=0.1)
    result = train(m, data, QUICK, checkpoint=path, progress=False)
    return m, result, path


@pytest.mark.parametrize(
    ("call", "last_saved"),
    [(BATCHES + 2, (1, 1)), (2 * BATCHES + BATCHES + 1, (2, 1))],
    ids=["stage1-epoch2-batch2", "stage2-epoch2-batch1"],
)
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path, data, monkeypatch, reference, call, last_saved
):
    """Interrupted at a chosen batch (as a SIGKILL would: nothing written on the way out),
    then resumed into a model of other initial weights: every parameter and buffer equals
    the uninterrupted run's, bit for bit, and so do the history and the final file."""
    ref_model, ref_result, ref_path = reference
    path = tmp_path / "model.pt"
    step, calls = training_module._step, []

    def interrupting(*args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        step(*args)

    monkeypatch.setattr(training_module, "_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(dropout=0.1), data, QUICK, checkpoint=path, progress=False)
    monkeypatch.undo()
    payload = torch.load(path, weights_only=True)
    assert (payload["finished"], payload["stage"], payload["epoch"]) == (False, *last_saved)

    resumed = fresh_model(seed=1, dropout=0.1)
    reported = []
    result = train(
        resumed, data, QUICK, checkpoint=path, resume=True, progress=False, on_epoch=reported.append
    )
    ref_state = ref_model.state_dict()
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert result.history == ref_result.history
    done = len(payload["run"]["history"])
    assert reported == list(ref_result.history[done:])  # the epochs this call ran
    assert (result.best_val_point, result.best_val_diffusion) == (
        ref_result.best_val_point,
        ref_result.best_val_diffusion,
    )
    final = ITransformerDiffusion.load(path)
    ref_final = ITransformerDiffusion.load(ref_path)
    assert all(torch.equal(v, ref_final.state_dict()[k]) for k, v in final.state_dict().items())


def test_resuming_a_finished_run_returns_its_result(tmp_path, data, reference):
    ref_model, ref_result, ref_path = reference
    path = tmp_path / "model.pt"
    shutil.copy(ref_path, path)
    m, reported = fresh_model(seed=2, dropout=0.1), []
    result = train(m, data, QUICK, checkpoint=path, resume=True, on_epoch=reported.append)
    assert reported == [] and result.history == ref_result.history
    assert all(torch.equal(v, ref_model.state_dict()[k]) for k, v in m.state_dict().items())
    assert path.read_bytes() == ref_path.read_bytes()


def test_resume_refuses_what_it_cannot_continue(tmp_path, data, reference):
    _, _, ref_path = reference
    model = fresh_model(dropout=0.1)
    with pytest.raises(ValueError, match=r"^resume: expected a checkpoint path to resume from"):
        train(model, data, QUICK, resume=True)
    missing = tmp_path / "missing.pt"
    with pytest.raises(ValueError, match=rf"^resume: .*but {missing} does not exist"):
        train(model, data, QUICK, checkpoint=missing, resume=True)
    plain = model.save(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"plain\.pt holds no training state to resume"):
        train(model, data, QUICK, checkpoint=plain, resume=True)
    with pytest.raises(
        ValueError,
        match=r"^resume: .*model\.pt was trained with another train config: batch_size=16 "
        r"there, batch_size=8 here",
    ):
        train(
            model, data, dataclasses.replace(QUICK, batch_size=8), checkpoint=ref_path, resume=True
        )
    with pytest.raises(ValueError, match=r"another model config: d_ff=24 there, d_ff=32 here"):
        train(fresh_model(dropout=0.1, d_ff=32), data, QUICK, checkpoint=ref_path, resume=True)
    other = synthetic_dataset(n_steps=600, n_variates=3, lookback=24, horizon=12, seed=1)
    with pytest.raises(ValueError, match=r"^resume: .*: data: .* differ in scaler_mean: "):
        train(model, other, QUICK, checkpoint=ref_path, resume=True)
    with pytest.raises(TypeError, match=r"^resume: expected True or False, got str 'yes'$"):
        train(model, data, QUICK, checkpoint=ref_path, resume="yes")


def test_resume_refuses_another_kind_of_device(tmp_path, data, monkeypatch):
    """The RNG states and the mixed precision of a run only continue on the device kind it
    was trained on: a CUDA run resumed on a CPU gets one line, not a generator-state error."""
    path = tmp_path / "model.pt"
    step, calls = training_module._step, []

    def interrupting(*args):
        calls.append(1)
        if len(calls) == BATCHES + 1:
            raise KeyboardInterrupt
        step(*args)

    monkeypatch.setattr(training_module, "_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(), data, QUICK, checkpoint=path, progress=False)
    monkeypatch.undo()
    payload = read_checkpoint(path, map_location="cpu")
    del payload["checksum"]
    payload["run"] = {**payload["run"], "device_type": "cuda", "amp_dtype": "bfloat16"}
    write_checkpoint(path, payload)
    with pytest.raises(
        ValueError,
        match=r"^resume: .*model\.pt was trained on cuda with amp dtype bfloat16; this run is on cpu with None",
    ):
        train(fresh_model(), data, QUICK, checkpoint=path, resume=True, progress=False)


def test_a_field_the_saved_run_predates_counts_as_what_that_run_used(tmp_path):
    constant = dataclasses.replace(QUICK, diffusion_lr_decay=1.0)
    saved = {f.name: getattr(constant, f.name) for f in dataclasses.fields(constant)}
    del saved["diffusion_lr_decay"]  # a checkpoint of 0.2.0, before the field existed
    del saved["patience"]  # as if this field were new too: it counts as its default
    checkpoint_module._same(tmp_path / "m.pt", "train config", saved, constant)
    # 0.2.0 trained at a constant rate, so today's default decay does not match it
    assert TrainConfig().diffusion_lr_decay == 0.9
    with pytest.raises(
        ValueError, match=r"diffusion_lr_decay=1\.0 there, diffusion_lr_decay=0\.9 here"
    ):
        checkpoint_module._same(
            tmp_path / "m.pt",
            "train config",
            saved,
            dataclasses.replace(QUICK, diffusion_lr_decay=0.9),
        )
    # before diffusion_draws, stage 2 drew once per window: such a run resumes with 1, not 4
    del saved["diffusion_draws"]
    checkpoint_module._same(
        tmp_path / "m.pt", "train config", saved, dataclasses.replace(constant, diffusion_draws=1)
    )
    with pytest.raises(ValueError, match=r"diffusion_draws=1 there, diffusion_draws=4 here"):
        checkpoint_module._same(
            tmp_path / "m.pt",
            "train config",
            saved,
            dataclasses.replace(constant, diffusion_draws=4),
        )


# ---------------------------------------------------------------- validation cap and progress
def _spy_batches(monkeypatch, n_val):
    """The window orders of the validation passes (the calls of ``batches`` on the split of
    ``n_val`` windows)."""
    orders = []
    real = training_module.batches

    def spy(split, order, batch_size):
        if len(split) == n_val:
            orders.append(order.clone())
        return real(split, order, batch_size)

    monkeypatch.setattr(training_module, "batches", spy)
    return orders


def test_validation_scores_every_window_by_default(data, monkeypatch):
    orders = _spy_batches(monkeypatch, len(data.val))
    train(fresh_model(), data, QUICK, device="cpu", progress=False)
    assert len(orders) == 5  # one pass an epoch: 2 + 3 epochs
    assert all(torch.equal(o, torch.arange(len(data.val))) for o in orders)


def test_max_val_batches_caps_each_validation_pass(data, monkeypatch, tmp_path):
    """issue 19: a 4-batch smoke run spent minutes validating on every window. With the cap
    each pass scores 2 batches of windows spread evenly over the split, the same every epoch,
    and the run record says how many."""
    n_val, bs = len(data.val), QUICK.batch_size
    assert n_val > 2 * bs  # the cap bites
    orders = _spy_batches(monkeypatch, n_val)
    config = dataclasses.replace(QUICK, max_val_batches=2)
    path = tmp_path / "model.pt"
    result = train(fresh_model(), data, config, device="cpu", checkpoint=path, progress=False)
    assert len(orders) == 5
    first = orders[0]
    assert all(torch.equal(o, first) for o in orders)
    assert first.numel() == 2 * bs and len(set(first.tolist())) == 2 * bs  # distinct windows
    assert first[0] == 0 and first[-1] == n_val - 1 and bool((first.diff() > 0).all())
    gaps = first.diff().double()
    assert float(gaps.max() - gaps.min()) <= 1.0  # evenly spaced, to rounding
    assert all(math.isfinite(r["val_point_mse"]) for r in result.history if r["stage"] == 1)
    record = torch.load(path, weights_only=True)["run"]
    assert record["train_config"]["max_val_batches"] == 2
    assert record["val_windows"] == 2 * bs


def test_a_cap_past_the_split_scores_every_window(data, monkeypatch):
    orders = _spy_batches(monkeypatch, len(data.val))
    config = dataclasses.replace(QUICK, max_val_batches=10_000, point_epochs=1, diffusion_epochs=0)
    train(fresh_model(), data, config, device="cpu", progress=False)
    assert len(orders) == 1 and torch.equal(orders[0], torch.arange(len(data.val)))


class _Clock:
    """A fake monotonic clock, advanced by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_appear_at_the_interval_with_rate_and_time_left():
    import io

    clock, out = _Clock(), io.StringIO()
    bar = _utils.ProgressLines(
        total=10, desc="stage 1 epoch 1/2", unit="batch", interval=30.0, clock=clock, file=out
    )
    for _ in range(10):
        clock.now += 10.0  # a batch every 10 s
        bar.update(1)
    bar.close()
    bar.close()  # once only
    assert out.getvalue().splitlines() == [
        "stage 1 epoch 1/2: 3/10 batches (30%) in 30 s, 10 s/batch, about 1 min 10 s left",
        "stage 1 epoch 1/2: 6/10 batches (60%) in 1 min 00 s, 10 s/batch, about 40 s left",
        "stage 1 epoch 1/2: 9/10 batches (90%) in 1 min 30 s, 10 s/batch, about 10 s left",
        "stage 1 epoch 1/2: 10/10 batches in 1 min 40 s, 10 s/batch",
    ]


def test_progress_lines_iterate_show_a_fast_rate_and_stay_quiet_when_short(monkeypatch):
    import io

    monkeypatch.delenv("DIFFSAMPLE_PROGRESS_INTERVAL", raising=False)  # the default, 30 s

    clock, out = _Clock(), io.StringIO()

    def items():
        for i in range(500):
            clock.now += 0.25  # 4 windows a second
            yield i

    bar = _utils.ProgressLines(items(), total=500, desc="val", unit="window", clock=clock, file=out)
    bar.set_postfix_str("400 samples/s")
    assert sum(1 for _ in bar) == 500
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # at 30, 60, 90, 120 s of 125, and the closing line
    assert lines[0] == (
        "val: 120/500 windows (24%) in 30 s, 4 windows/s, about 1 min 35 s left (400 samples/s)"
    )
    assert lines[-1] == "val: 500/500 windows in 2 min 05 s, 4 windows/s"

    quiet = io.StringIO()
    short = _utils.ProgressLines(range(3), desc="x", clock=_Clock(), file=quiet)
    assert list(short) == [0, 1, 2] and quiet.getvalue() == ""  # under the interval: no line


def test_progress_bar_shows_lines_off_a_terminal_only_when_asked(monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("DIFFSAMPLE_PROGRESS_INTERVAL", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file or a pipe
    assert isinstance(_utils.progress_bar(range(3), progress=True), _utils.ProgressLines)
    for quiet in (None, False):
        bar = _utils.progress_bar(range(3), progress=quiet)
        assert not isinstance(bar, _utils.ProgressLines) and bar.disable
        assert list(bar) == [0, 1, 2]
    monkeypatch.setattr("sys.stderr", Tty())  # a terminal: tqdm's bar, unless False
    for shown in (None, True):
        bar = _utils.progress_bar(range(3), progress=shown)
        assert not isinstance(bar, _utils.ProgressLines) and not bar.disable
        bar.close()
    assert _utils.progress_bar(range(3), progress=False).disable
    with pytest.raises(TypeError, match=r"^progress: expected True or False, got int 1$"):
        _utils.progress_bar(range(3), progress=1)


def test_the_progress_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("DIFFSAMPLE_PROGRESS_INTERVAL", raising=False)
    assert _utils.progress_interval() == _utils.PROGRESS_INTERVAL == 30.0
    monkeypatch.setenv("DIFFSAMPLE_PROGRESS_INTERVAL", "300")
    assert _utils.ProgressLines(range(2)).interval == 300.0
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("DIFFSAMPLE_PROGRESS_INTERVAL", bad)
        with pytest.raises(
            ValueError,
            match=rf"^DIFFSAMPLE_PROGRESS_INTERVAL: expected a number of seconds >= 0, got '{bad}'$",
        ):
            _utils.ProgressLines(range(2))


def test_training_progress_off_a_terminal(data, monkeypatch, capsys):
    """issue 19: off a terminal progress=True showed nothing for minutes an epoch. With the
    interval at 0 every batch of every pass writes its line; progress=None writes none."""
    monkeypatch.delenv("DIFFSAMPLE_PROGRESS_INTERVAL", raising=False)
    monkeypatch.setattr(_utils, "PROGRESS_INTERVAL", 0.0)
    config = dataclasses.replace(QUICK, point_epochs=1, diffusion_epochs=1, max_val_batches=2)
    train(fresh_model(), data, config, device="cpu", progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("stage 1 epoch 1/1: 1/3 batches (33%) in ")
    assert any(line.startswith("stage 1 epoch 1/1: 3/3 batches in ") for line in err)
    assert any(line.startswith("stage 1 epoch 1/1 validation: 2/2 batches in ") for line in err)
    assert any(line.startswith("stage 2 epoch 1/1 validation: 1/2 batches (50%)") for line in err)
    train(fresh_model(), data, config, device="cpu", progress=None)
    assert capsys.readouterr().err == ""
