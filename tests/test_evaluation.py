"""evaluate_split, its per-step scores and progress bar, and the report files, on a tiny model."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import sys

import pytest
import torch
from tiny import TINY as TINY_BASE

from diffsample import memory, sample_ddim
from diffsample._utils import atomic_write
from diffsample.forecast import (
    Evaluation,
    ITransformerDiffusion,
    SamplingConfig,
    evaluate_split,
    evaluation,
    load_dataset,
    report,
)
from diffsample.forecast.baselines import residual_baselines
from diffsample.forecast.evaluation import StepMetrics
from diffsample.metrics import ForecastMetrics, _engine, coverage, crps

TINY = dataclasses.replace(
    TINY_BASE, n_variates=7, n_layers=2, d_ff=16, dropout=0.1, unet_channels=(32, 64)
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ITransformerDiffusion(TINY)
    for p in m.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


@pytest.fixture(scope="module")
def data():
    return load_dataset(None, lookback=24, horizon=12)


def _assert_close(name: str, got: float, want: float, count: float) -> None:
    """Scores of float32 samples drawn in differently sized denoiser calls agree to round-off;
    a coverage count may also differ by an observation that sits on an interval's end."""
    slack = 1.5 / count if name.startswith("coverage_") else 1e-6
    assert got == pytest.approx(want, rel=1e-5, abs=slack), name


def test_evaluate_split_does_not_depend_on_the_batch_size(model, data):
    kw = dict(n_samples=6, num_steps=3, max_windows=10, progress=False)
    a = evaluate_split(model, data.test, batch_size=3, **kw)
    b = evaluate_split(model, data.test, batch_size=10, **kw)
    assert (a.windows, a.samples, a.steps, a.sampler) == (10, 6, 3, "dpmpp_2m")
    assert a.metrics.keys() == b.metrics.keys()
    for k in ("crps", "quantile_crps", "coverage_90", "point_mse", "mse_mean"):
        assert math.isfinite(a.metrics[k]), k
        _assert_close(k, a.metrics[k], b.metrics[k], a.metrics["count"])
    for k, col in a.per_step.items():
        assert col == pytest.approx(b.per_step[k], rel=1e-5, abs=1.5 / 70), k


def test_given_windows_are_scored_with_the_noise_of_a_full_run(model, data):
    """``windows=`` scores exactly those split indices (the command's --windows spreads them
    over the period), each with the samples it gets in a run over all windows."""
    picked = report.spread_windows(len(data.test), 5)
    seen: list[int] = []
    ev = evaluate_split(model, data.test, n_samples=4, num_steps=3, batch_size=2, windows=picked,
                        on_batch=lambda b, fc: seen.extend(b.index.tolist()))  # fmt: skip
    assert ev.windows == 5 and seen == picked and picked[-1] == len(data.test) - 1
    b = data.test.windows(torch.tensor(picked))
    fc = model.forecast(b.x, 4, time_features=b.x_mark, num_steps=3, window_ids=b.index)
    ref = ForecastMetrics()
    ref.update(fc.samples, b.y)
    assert ev.metrics["crps"] == pytest.approx(ref.compute()["crps"], rel=1e-5)
    for bad, err, msg in [
        ([3, 1], ValueError, r"windows: expected ascending, distinct indices in 0\.\."),
        ([0, len(data.test)], ValueError, "windows: expected ascending"),
        ([0.5], TypeError, "windows: expected a non-empty 1-D sequence of integer"),
        ("1,2", TypeError, "windows: expected a sequence or tensor of split indices"),
    ]:
        with pytest.raises(err, match=msg):
            evaluate_split(model, data.test, n_samples=2, num_steps=2, windows=bad)
    with pytest.raises(ValueError, match="windows, max_windows: expected one of them, got both"):
        evaluate_split(model, data.test, n_samples=2, num_steps=2, windows=[0], max_windows=3)


def test_evaluate_split_is_the_metrics_of_one_forecast_call(model, data):
    """The streaming loop against scoring one forecast of the same windows all at once."""
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
    # per horizon step: the elementwise public scores averaged over windows and variates
    steps = {
        "point_mse": ((fc.point - b.y).double() ** 2).mean((0, 2)),
        "point_mae": (fc.point - b.y).double().abs().mean((0, 2)),
        "mse_mean": ((fc.samples.mean(0) - b.y).double() ** 2).mean((0, 2)),
        "mae_mean": (fc.samples.mean(0) - b.y).double().abs().mean((0, 2)),
        "crps": crps(fc.samples, b.y).double().mean((0, 2)),
        "coverage_50": coverage(fc.samples, b.y, level=0.5).double().mean((0, 2)),
        "coverage_90": coverage(fc.samples, b.y, level=0.9).double().mean((0, 2)),
    }
    assert list(ev.per_step) == ["step", *steps]
    assert ev.per_step["step"] == tuple(float(h) for h in range(1, 13))
    for k, v in steps.items():
        assert ev.per_step[k] == pytest.approx(v.tolist(), rel=1e-5, abs=1.5 / 63), k
    # equal counts per step: the steps' mean is the headline score
    assert sum(ev.per_step["crps"]) / 12 == pytest.approx(ev.metrics["crps"], rel=1e-5)


def test_each_batch_is_sorted_once_and_the_steps_add_up_to_the_headline(model, data, monkeypatch):
    """Issue 17: a second accumulator (StepMetrics) scored every batch again for the per-step
    table, sorting its samples three more times (crps, then coverage at each level)."""
    sorted_lanes = []
    real = _engine.sort_lanes

    def counting(xs, **kw):
        sorted_lanes.append(xs.shape[0])
        return real(xs, **kw)

    monkeypatch.setattr(_engine, "sort_lanes", counting)
    ev = evaluate_split(model, data.test, n_samples=4, num_steps=2, batch_size=4, max_windows=6)
    # every element once, and every sum over the variates once: [W, H, N] + [W, H]
    assert sum(sorted_lanes) == 6 * 12 * 7 + 6 * 12
    # one accumulator: the steps' sums are the headline's, to float64 round-off (the sample
    # mean of the per-step table was another float32 mean than the headline's)
    for k in ("mse_mean", "mae_mean", "crps", "coverage_90", "point_mse"):
        assert sum(ev.per_step[k]) / 12 == pytest.approx(ev.metrics[k], rel=1e-12), k


def test_step_metrics_is_a_deprecated_view_of_the_one_accumulator():
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(9, 5, 6, 3, generator=g), torch.randn(5, 6, 3, generator=g)
    point = torch.randn(5, 6, 3, generator=g)
    with pytest.warns(DeprecationWarning, match=r"ForecastMetrics\(breakdown_dim=1\)"):
        m = StepMetrics(levels=(0.5, 0.8))
    assert m.compute() == {} and math.isnan(m.overall("crps"))
    m.update(x[:, :2], y[:2])
    assert "point_mse" not in m.compute() and math.isnan(m.overall("point_mse"))
    m.update(x[:, 2:], y[2:], point[2:])
    ref = ForecastMetrics(levels=(0.5, 0.8), breakdown_dim=1)
    ref.update(x, y)
    by_step = ref.breakdown()
    got = m.compute()
    assert list(got) == ["step", "point_mse", "point_mae", "mse_mean", "mae_mean", "crps",
                         "coverage_50", "coverage_80"]  # fmt: skip
    assert got["step"] == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    for k in ("mse_mean", "mae_mean", "crps", "coverage_50", "coverage_80"):
        assert got[k] == pytest.approx(by_step[k], rel=1e-12), k
        assert m.overall(k) == pytest.approx(ref.compute()[k], rel=1e-12), k
    # the point columns average the windows that had a point
    err = point[2:].double() - y[2:].double()
    assert got["point_mse"] == pytest.approx((err**2).mean((0, 2)).tolist(), rel=1e-12)
    assert m.overall("point_mae") == pytest.approx(float(err.abs().mean()), rel=1e-12)
    with pytest.warns(DeprecationWarning):
        back = StepMetrics(levels=(0.5, 0.8))
    back.load_state_dict(m.state_dict())
    assert back.compute() == got
    with pytest.raises(ValueError, match=r"^samples, obs: expected \[S, B, H, N\]"):
        m.update(torch.zeros(3, 2, 4, 5), torch.zeros(2, 4, 6))
    with pytest.raises(TypeError, match=r"^state: expected a StepMetrics.state_dict\(\)"):
        m.load_state_dict([])  # type: ignore[arg-type]
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match=r"^levels\[0\]: expected a finite number in \(0, 1\)"),
    ):
        StepMetrics(levels=(1.0,))


def test_one_progress_bar_for_the_whole_split(model, data, monkeypatch):
    bars, calls = [], []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n, self.postfix, self.closed = kw, 0, "", False
            bars.append(self)

        def update(self, k):
            self.n += k

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s

        def close(self):
            self.closed = True

    monkeypatch.setattr(evaluation, "progress_bar", lambda **kw: Bar(**kw))
    real = model.forecast

    def spy(*args, **kwargs):
        calls.append(kwargs["progress"])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forecast", spy)
    evaluate_split(model, data.test, n_samples=3, num_steps=2, batch_size=4, max_windows=10)
    assert len(bars) == 1 and calls == [False, False, False]  # 3 batches, no bar of their own
    bar = bars[0]
    assert (bar.kw["total"], bar.kw["unit"], bar.n, bar.closed) == (10, "window", 10, True)
    assert bar.postfix.endswith(" samples/s")


def test_on_batch_sees_every_batch_and_the_keepers_keep_it(model, data):
    kept = report.WindowKeeper([0, 4, 9])
    store = report.SampleStore(10, 3, 12, 7)
    seen = []

    def hook(b, fc):
        seen.append(b.index.tolist())
        kept(b, fc)
        store(b, fc)

    evaluate_split(
        model, data.test, n_samples=3, num_steps=2, batch_size=4, max_windows=10, on_batch=hook
    )
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    samples, truth, history, ids = kept.stacked()
    assert (tuple(samples.shape), tuple(truth.shape), tuple(history.shape), ids) == (
        (3, 3, 12, 7),
        (3, 12, 7),
        (3, 24, 7),
        [0, 4, 9],
    )
    assert torch.equal(store.samples[:, [0, 4, 9]], samples)
    assert torch.equal(store.targets, data.test.windows(torch.arange(10)).y)
    assert torch.equal(store.window_ids, torch.arange(10))
    with pytest.raises(TypeError, match=r"^on_batch: expected a callable or None"):
        evaluate_split(model, data.test, on_batch=3)


def test_evaluation_is_a_frozen_record_with_a_json_form(model, data):
    ev = evaluate_split(model, data.val, n_samples=3, num_steps=2, max_windows=4, progress=False)
    assert isinstance(ev, Evaluation) and (ev.windows, ev.samples, ev.steps) == (4, 3, 2)
    assert all(type(v) is float for v in ev.metrics.values()) and ev.seconds > 0
    assert ev.scoring_seconds > 0
    assert ev.seconds_per_window == ev.seconds / 4
    assert ev.peak_memory_bytes is None  # measured on CUDA only
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.windows = 5  # type: ignore[misc]
    d = ev.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["seconds_per_window"] == round(ev.seconds / 4, 6) and "peak_memory_bytes" not in d
    assert {k: d[k] for k in ("windows", "samples", "steps", "sampler")} == {
        "windows": 4,
        "samples": 3,
        "steps": 2,
        "sampler": "dpmpp_2m",
    }
    assert d["sampling_seconds"] == round(ev.seconds, 3) and d["crps"] == ev.metrics["crps"]
    assert d["scoring_seconds"] == round(ev.scoring_seconds, 3)
    source = {"crps": 1.0}
    record = Evaluation(source, "ddim", 2, 3, 4, 0.5)
    source["crps"] = 2.0
    assert record.metrics == {"crps": 1.0} and record.per_step == {}  # copies, not views
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


def test_evaluate_split_checks_its_arguments(model, data):
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive integer, got int 0$"):
        evaluate_split(model, data.test, batch_size=0)
    with pytest.raises(TypeError, match=r"^max_windows: expected a positive integer, got float"):
        evaluate_split(model, data.test, max_windows=2.0)
    with pytest.raises(ValueError, match=r"^sampler: expected one of 'ddpm', 'ddim'"):
        evaluate_split(model, data.test, sampler="euler")
    with pytest.raises(TypeError, match=r"^split: expected a ForecastSplit"):
        evaluate_split(model, data)
    with pytest.raises(TypeError, match=r"^model: expected an ITransformerDiffusion"):
        evaluate_split(model.denoiser, data.test)


def test_steps_beyond_t_and_samples_beyond_memory_are_refused_before_sampling(
    model, data, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(model, "forecast", never)
    with pytest.raises(
        ValueError,
        match=r"^num_steps: expected at most T = 50 sampling steps \(the model's "
        r"num_train_steps\), got 51$",
    ):
        evaluate_split(model, data.test, num_steps=51)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * 2**20)
    # 3 copies x 1000 samples x 16 windows x [12, 7] x 4 bytes = 15.4 MiB
    with pytest.raises(
        ValueError,
        match=r"^n_samples, batch_size: 1000 samples x 16 windows x \[12, 7\] \(H, N\) need "
        r"about 15\.4 MiB to sample and score, but cpu has 10\.0 MiB available; lower "
        r"n_samples or batch_size$",
    ):
        evaluate_split(model, data.test, n_samples=1000, batch_size=16)
    # the largest call counts: fewer windows than the batch size need less
    with pytest.raises(AssertionError, match="sampling started"):
        evaluate_split(model, data.test, n_samples=1000, batch_size=16, max_windows=6)


def test_a_sampling_config_is_the_loose_keywords_at_once(model, data):
    """evaluate_split(sampling=SamplingConfig(...)) scores as the loose keywords do; a loose
    keyword may repeat the config, not contradict it; the record keeps the config."""
    kw = dict(max_windows=5, batch_size=3, progress=False)
    loose = evaluate_split(
        model, data.test, n_samples=4, num_steps=2, sampler="ddim", spacing="trailing", seed=7,
        **kw,
    )  # fmt: skip
    config = SamplingConfig(n_samples=4, num_steps=2, sampler="ddim", spacing="trailing", seed=7)
    given = evaluate_split(model, data.test, sampling=config, **kw)
    assert given.metrics == loose.metrics and given.per_step == loose.per_step
    assert given.sampling == loose.sampling == config
    assert given.as_dict().keys() == loose.as_dict().keys()  # the JSON form is unchanged
    again = evaluate_split(model, data.test, sampling=config, n_samples=4, sampler="ddim", **kw)
    assert again.metrics == loose.metrics
    with pytest.raises(
        ValueError,
        match=r"^sampler, sampling: expected sampler left out or equal to sampling\.sampler, "
        r"got sampler='dpmpp_2m' and sampling\.sampler='ddim'$",
    ):
        evaluate_split(model, data.test, sampling=config, sampler="dpmpp_2m", **kw)
    # eta 0 is DDIM's own default: the same samples, now reachable from evaluate_split
    eta0 = evaluate_split(model, data.test, sampling=dataclasses.replace(config, eta=0.0), **kw)
    assert eta0.metrics == loose.metrics
    eta1 = evaluate_split(model, data.test, sampling=dataclasses.replace(config, eta=1.0), **kw)
    assert eta1.metrics["crps"] != loose.metrics["crps"]


def test_a_baseline_gets_the_samples_and_seed_of_the_config(model, data):
    (name, baseline), *_ = residual_baselines(model, data).items()
    calls = []
    real = baseline.forecast

    def spy(*args, **kwargs):
        calls.append((args[1], sorted(kwargs)))
        return real(*args, **kwargs)

    baseline.forecast = spy  # type: ignore[method-assign]
    config = SamplingConfig(n_samples=3, num_steps=2, seed=4, sampler="ddim")
    ev = evaluate_split(baseline, data.test, sampling=config, max_windows=4, progress=False)
    assert (ev.sampler, ev.steps, ev.samples, ev.spacing, ev.sampling) == (name, 0, 3, None, None)
    assert calls == [(3, ["progress", "seed", "time_features", "window_ids"])]
    with pytest.raises(TypeError, match=r"^seed: expected an int for a forecaster other than"):
        evaluate_split(baseline, data.test, seed=(4, 1), max_windows=4)
    assert len(calls) == 1  # refused before any forecast


def test_the_split_modules_names_still_import_from_evaluation():
    """evaluation.py was split by concept (issue 17): every name it held imports from it."""
    from diffsample.forecast import evaluation_checks, evaluation_record, sampling_config

    homes = {
        evaluation_checks: ("PEAK_COPIES", "check_evaluation_args", "check_sampling_memory",
                            "check_windows", "sampling_bytes"),
        evaluation_record: ("STEP_COLUMNS", "Evaluation", "Forecaster", "StepMetrics",
                            "step_table"),
        sampling_config: ("check_num_steps",),
    }  # fmt: skip
    for home, names in homes.items():
        for name in names:
            assert getattr(evaluation, name) is getattr(home, name), name
    assert set(evaluation.__all__) >= {n for names in homes.values() for n in names} - {
        "check_windows"
    }
    assert evaluation.check_evaluation_args(
        n_samples=4, num_steps=3, sampler="ddim", batch_size=2, max_windows=None
    ) == (4, 3, 2, None)


# ------------------------------------------------------------------------------------ report
def test_json_never_holds_a_bare_nan_and_says_why(tmp_path):
    obj = {"scores": {"crps": 0.5, "quantile_crps": math.nan}, "h": [1.0, math.inf], "p": tmp_path}
    clean, fields = report.json_safe(obj)
    assert clean == {
        "scores": {"crps": 0.5, "quantile_crps": None},
        "h": [1.0, None],
        "p": str(tmp_path),
    }
    assert fields == ["scores.quantile_crps", "h[1]"]
    path = report.write_json(tmp_path / "r.json", obj)

    def no_constants(name):
        raise AssertionError(f"bare {name} in the JSON")

    written = json.loads(path.read_text(), parse_constant=no_constants)
    assert written["scores"]["quantile_crps"] is None
    assert "scores.quantile_crps, h[1]" in written["notes"][0] and "NaN" in written["notes"][0]
    assert "notes" not in json.loads(
        report.write_json(tmp_path / "ok.json", {"a": 1.0}).read_text()
    )


def test_a_failed_write_names_the_file_and_the_cause_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    report.write_json(target, {"old": 1})

    def disk_full(path, write):
        def failing(f):
            f.write(b"{")
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomic_write(path, failing)

    monkeypatch.setattr(report, "atomic_write", disk_full)
    with pytest.raises(report.OutputError) as info:
        report.write_json(target, {"new": 1})
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_output_locations_are_checked_before_any_work(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(
        report.OutputError, match=r"^--out: expected a directory, got the existing file /"
    ):
        report.prepare_output_dir(a_file, name="--out")
    with pytest.raises(
        report.OutputError, match=r"cannot create the directory /.*/sub: Not a directory$"
    ):
        report.prepare_output_dir(a_file / "sub")
    with pytest.raises(
        report.OutputError, match="expected a file name, got the existing directory /"
    ):
        report.check_output_file(tmp_path)
    assert report.prepare_output_dir(tmp_path / "new" / "dir").is_dir()
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == []  # probe removed

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(report.tempfile, "mkstemp", read_only)
    with pytest.raises(
        report.OutputError, match=r"^out: cannot write into the directory /.*: Permission denied$"
    ):
        report.check_output_file(tmp_path / "r.json")


def test_per_step_csv_and_machine_record(tmp_path):
    path = report.write_per_step_csv(
        tmp_path / "s.csv", {"step": (1.0, 2.0), "crps": (0.25, math.nan)}
    )
    assert path.read_text() == "step,crps\n1,0.25\n2,nan\n"
    m = report.machine_info("cpu")
    assert {"platform", "cpu", "cpu_count", "torch_threads", "device", "cuda_device"} <= m.keys()
    assert m["cuda_device"] is None and m["torch_threads"] == torch.get_num_threads()
    assert set(report.library_versions()) == {"diffsample", "torch", "numpy", "python"}
    assert report.spread_windows(10) == [0, 4, 9] and report.spread_windows(1) == [0]


def test_fan_chart_with_and_without_matplotlib(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    samples, truth = torch.randn(20, 2, 6, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    history = torch.randn(2, 8, 3, generator=g)
    path = report.fan_chart(tmp_path / "f.png", samples, truth, history=history, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"^samples, truth: expected \[S, W, H, N\]"):
        report.fan_chart(tmp_path / "g.png", samples, truth[0])
    # data strings (a CSV's column and file names) are text, never mathtext: this failed
    path = report.fan_chart(
        tmp_path / "d.png", samples, truth, variate_name=r"price $\frac{$", title="f$x^$.csv"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report._plain(r"a $x$ \$") == r"a \$x\$ \\$"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert not report.have_matplotlib()
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'diffsample\[plot\]'"):
        report.fan_chart(tmp_path / "h.png", samples, truth)
    assert not (tmp_path / "h.png").exists()
