"""The Forecast object: still the 0.4.0 named tuple, summaries equal to torch's on the sample
axis, units through the data's scaler, dates of the windows, a fan chart whose data strings stay
plain text, the .npz file and its loader, and GluonTS: SampleForecast objects whose evaluator
scores agree with diffsample.metrics where both define the same quantity.

Dimensions: S samples, B windows, L lookback, H horizon, N variates."""

from __future__ import annotations

import dataclasses
import pickle
import sys

import numpy as np
import pytest
import torch
from tiny import TINY

from diffsample.forecast import (
    Forecast,
    ITransformerDiffusion,
    StandardScaler,
    load_samples,
    save_samples,
    synthetic_dataset,
    window_dates,
)
from diffsample.forecast.forecast import infer_freq
from diffsample.forecast.report import SampleStore
from diffsample.metrics import ForecastMetrics, quantile_crps, sample_quantiles

QUANTILES = [round(0.05 * i, 2) for i in range(1, 20)]


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_steps=1200, n_variates=3, lookback=24, horizon=12)


def make(S=21, B=4, H=12, N=3, seed=0, dtype=torch.float32, **meta) -> Forecast:
    g = torch.Generator().manual_seed(seed)
    samples = (torch.randn(S, B, H, N, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)
    return Forecast(samples, samples.mean(0) + 0.1, **meta)


def dated(data, index=(0, 5, 9, 40), S=21) -> Forecast:
    start, freq = window_dates(data.test, list(index))
    return make(
        S=S,
        B=len(index),
        scaler=data.scaler,
        start=start,
        freq=freq,
        variates=data.columns,
        window_ids=list(index),
    )


# ---------------------------------------------------------------- still the named tuple
def test_forecast_unpacks_indexes_and_pickles_like_the_tuple_with_its_attributes(data):
    fc = dated(data)
    samples, point = fc
    assert samples is fc.samples is fc[0] and point is fc.point is fc[1]
    assert isinstance(fc, tuple) and Forecast._fields == ("samples", "point") and len(fc) == 2
    back = pickle.loads(pickle.dumps(fc))
    assert type(back) is Forecast and torch.equal(back.samples, fc.samples)
    assert back.freq == "h" and back.variates == data.columns and back.units == "scaled"
    assert np.array_equal(back.start, fc.start) and torch.equal(back.window_ids, fc.window_ids)
    assert np.array_equal(back.scaler.mean, data.scaler.mean)
    moved = fc._replace(point=fc.point * 0)  # the named tuple's own method keeps the attributes
    assert type(moved) is Forecast and moved.freq == "h" and bool((moved.point == 0).all())
    made = Forecast._make([samples, point])
    assert type(made) is Forecast and made.units == "scaled" and made.freq is None
    bare = Forecast(samples, point)  # 0.4.0's two-argument form
    assert bare.scaler is None and bare.start is None and bare.units == "scaled"
    assert "units 'scaled'" in repr(fc) and "tensor(" not in repr(fc)


# ---------------------------------------------------------------- summaries
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("S", [20, 21])
def test_summaries_equal_torch_on_the_sample_axis(S, dtype):
    fc = make(S=S, dtype=dtype)
    x = fc.samples
    torch.testing.assert_close(fc.mean, x.mean(dim=0))
    for q in (0.0, 0.05, 0.3, 0.5, 0.95, 1.0):
        torch.testing.assert_close(fc.quantile(q), torch.quantile(x, q, dim=0))
    qs = [0.1, 0.25, 0.9]
    got = fc.quantile(qs)
    assert got.shape == (3, 4, 12, 3) and got.dtype == dtype
    torch.testing.assert_close(got, torch.quantile(x, torch.tensor(qs, dtype=dtype), dim=0))
    torch.testing.assert_close(fc.median, torch.quantile(x, 0.5, dim=0))
    lo, hi = fc.interval(0.8)
    torch.testing.assert_close(lo, torch.quantile(x, 0.1, dim=0))
    torch.testing.assert_close(hi, torch.quantile(x, 0.9, dim=0))
    if S % 2 == 0:  # the interpolated median, not torch.median's lower middle sample
        assert not torch.allclose(fc.median, x.median(dim=0).values)


# ---------------------------------------------------------------- units
def test_data_units_go_through_the_scaler_and_back(data):
    fc = dated(data)
    d = fc.in_data_units()
    assert d.units == "data" and d.in_data_units() is d
    torch.testing.assert_close(d.samples, data.scaler.inverse_transform(fc.samples))
    torch.testing.assert_close(d.point, data.scaler.inverse_transform(fc.point))
    torch.testing.assert_close(d.quantile(0.9), data.scaler.inverse_transform(fc.quantile(0.9)))
    back = d.in_scaled_units()
    assert back.units == "scaled" and back.freq == "h"
    torch.testing.assert_close(back.samples, fc.samples)
    with pytest.raises(ValueError, match=r"^Forecast.in_data_units: the forecast has no scaler"):
        make().in_data_units()


def test_model_forecast_carries_scaler_names_ids_and_dates(data):
    torch.manual_seed(0)
    model = ITransformerDiffusion(dataclasses.replace(TINY, n_time_features=data.n_marks)).eval()
    model.data_spec = data.spec()  # what train() sets
    b = data.test.windows(torch.tensor([3, 17, 30]))
    start, freq = window_dates(data.test, b.index)
    kw = dict(time_features=b.x_mark, num_steps=2, window_ids=b.index, progress=False)
    fc = model.forecast(b.x, 5, start=start, freq=freq, **kw)
    assert fc.variates == data.columns and fc.freq == "h" and fc.units == "scaled"
    assert torch.equal(fc.window_ids, b.index)
    assert np.array_equal(fc.start, data.test.dates[b.index.numpy() + 24])
    rows = b.index.numpy()[:, None] + 24 + np.arange(12)  # [B, H]: the target rows
    assert np.array_equal(fc.dates(), data.test.dates[rows])
    torch.testing.assert_close(
        fc.in_data_units().samples, data.scaler.inverse_transform(fc.samples)
    )
    plain = model.forecast(b.x, 5, **kw)  # the dates change nothing else
    assert torch.equal(plain.samples, fc.samples) and plain.start is None
    with pytest.raises(ValueError, match=r"^start: expected one timestamp per window"):
        model.forecast(b.x, 5, start=start[:2], **kw)
    model.data_spec = {**data.spec(), "scaler_mean": [0.0, 0.0], "scaler_std": [1.0, 2.0]}
    with pytest.raises(ValueError, match=r"^model.data_spec: expected scaler statistics of 3"):
        model.forecast(b.x, 5, **kw)
    model.data_spec = {**data.spec(), "scaler_std": [1.0, 0.0, 1.0]}
    with pytest.raises(ValueError, match=r"^model.data_spec: scaler_mean / scaler_std are not"):
        model.forecast(b.x, 5, **kw)
    model.data_spec = None  # never trained: no scaler, no names
    bare = model.forecast(b.x, 5, **kw)
    assert bare.scaler is None and bare.variates is None and torch.equal(bare.samples, fc.samples)


def test_window_dates_and_the_inferred_step(data):
    start, freq = window_dates(data.test, 0)
    assert freq == "h" and start.dtype == np.dtype("datetime64[s]")
    assert start[0] == data.test.dates[data.test.lookback]
    t0 = np.datetime64("2021-03-01T00:00:00")
    for step, alias in [(900, "15min"), (3600, "h"), (7200, "2h"), (86400, "D"), (7, "7s")]:
        assert infer_freq(t0 + np.arange(5) * np.timedelta64(step, "s")) == alias
    months = np.array(["2021-01-01", "2021-02-01", "2021-03-01"], dtype="datetime64[s]")
    assert infer_freq(months) is None  # uneven steps: no fixed alias
    pytest.importorskip("pandas")
    fc = make(B=1, start=months[:1], freq="M")  # an anchored step, through pandas
    assert fc.dates()[0, 1] == np.datetime64("2021-02-01T00:00:00")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_forecast_on_the_gpu_summarises_there_and_saves_from_there(data, tmp_path):
    fc = dated(data)
    g = fc.replace(
        samples=fc.samples.cuda(), point=fc.point.cuda(), window_ids=fc.window_ids.cuda()
    )
    q = g.quantile([0.1, 0.5, 0.9])
    assert q.is_cuda and g.mean.is_cuda
    torch.testing.assert_close(q.cpu(), fc.quantile([0.1, 0.5, 0.9]))
    d = g.in_data_units()
    assert d.samples.is_cuda
    torch.testing.assert_close(d.samples.cpu(), fc.in_data_units().samples)
    back = load_samples(g.save(tmp_path / "g.npz")).forecast
    assert torch.equal(back.samples, fc.samples) and torch.equal(back.window_ids, fc.window_ids)


# ---------------------------------------------------------------- bad input
S4 = torch.zeros(2, 3, 4, 2)
P3 = torch.zeros(3, 4, 2)
BAD = [
    (lambda: Forecast(S4[0], P3), ValueError, "samples, point: expected [S, B, H, N]"),
    (lambda: Forecast(S4.long(), P3), TypeError, "samples: expected a floating-point tensor"),
    (lambda: Forecast(S4, P3, scaler=StandardScaler([0.0], [1.0])), ValueError, "scaler:"),
    (lambda: Forecast(S4, P3, scaler="z"), TypeError, "scaler: expected a StandardScaler"),
    (lambda: Forecast(S4, P3, start=[1, 2, 3]), TypeError, "start: expected timestamps"),
    (lambda: Forecast(S4, P3, start=["2020-01-01"]), ValueError, "start: expected one"),
    (lambda: Forecast(S4, P3, start=["x", "y", "z"]), ValueError, "start: expected timestamps"),
    (lambda: Forecast(S4, P3, freq=3600), TypeError, "freq: expected None or a pandas"),
    (lambda: Forecast(S4, P3, freq=""), TypeError, "freq: expected None or a pandas"),
    (lambda: Forecast(S4, P3, variates=["a"]), ValueError, "variates: expected 2 names"),
    (lambda: Forecast(S4, P3, variates="ab"), TypeError, "variates: expected a sequence"),
    (lambda: Forecast(S4, P3, window_ids=[0.5, 1, 2]), TypeError, "window_ids: expected"),
    (lambda: Forecast(S4, P3, window_ids=[0, 1]), ValueError, "window_ids: expected [3]"),
    (lambda: Forecast(S4, P3, units="raw"), ValueError, "units: expected one of 'scaled'"),
    (lambda: Forecast(S4, P3).interval(1.0), ValueError, "level: expected a finite number"),
    (lambda: Forecast(S4, P3).quantile(1.5), ValueError, "q:"),
    (lambda: Forecast(S4, P3).replace(colour=1), TypeError, "Forecast.replace: expected"),
    (lambda: Forecast(S4, P3).dates(), ValueError, "Forecast.dates: the forecast has no dates"),
    (lambda: Forecast(S4, P3).to_gluonts(), ValueError, "Forecast.to_gluonts: the forecast has"),
    (lambda: window_dates("test", 0), TypeError, "split: expected a ForecastSplit"),
    (lambda: infer_freq(np.array(["2020-01-01"], "M8[s]")), ValueError, "dates: expected"),
    (lambda: load_samples(123), TypeError, "path: expected a str or os.PathLike"),
]


@pytest.mark.parametrize("call, kind, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_refused_in_one_line_naming_the_argument(call, kind, message):
    with pytest.raises(kind) as info:
        call()
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text, text


def test_an_unknown_freq_is_refused_by_pandas_rules():
    pytest.importorskip("pandas")
    for bad in ("hourly", "0h", "MS"):  # "MS" is a date offset but no period frequency
        with pytest.raises(ValueError, match=r"^freq: expected None or a pandas frequency"):
            Forecast(S4, P3, freq=bad)


def test_bad_plot_arguments_name_themselves(data):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fc, ax = dated(data), Figure().subplots()
    for kw, message in [
        (dict(window=4), "window: expected an integer in -4..3"),
        (dict(variate=3), "variate: expected an integer in -3..2"),
        (dict(levels=[0.5, 1.0]), "levels[1]: expected a finite number in (0, 1)"),
        (dict(levels=[]), "levels: expected at least one level"),
        (dict(truth=torch.zeros(4, 11, 3)), "truth: expected a tensor [4, 12, 3]"),
    ]:
        with pytest.raises((TypeError, ValueError)) as info:
            fc.plot(ax, **kw)
        assert str(info.value).startswith(message), (kw, str(info.value))


# ---------------------------------------------------------------- plot
def test_plot_draws_bands_median_truth_and_history_against_dates(data):
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fc = dated(data).replace(variates=("cost $x_{", "b", "c"))  # not valid mathtext
    b = data.test.windows(torch.tensor([0, 5, 9, 40]))
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fc.plot(fig.subplots(), window=1, variate=0, truth=b.y, history=b.x)
    fig.canvas.draw()  # would raise on "$x_{" parsed as mathtext
    assert ax.get_title() == r"window 5, cost \$x_{ (scaled units)"
    assert [c.get_label() for c in ax.collections] == ["90%", "50%"]  # widest band first
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["history", "median", "truth"]
    median, truth = ax.lines[1], ax.lines[2]
    x = np.asarray(median.get_xdata())
    assert np.array_equal(x, fc.dates()[1])  # dates on the x axis
    np.testing.assert_allclose(median.get_ydata(), fc.median[1, :, 0].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(truth.get_ydata(), b.y[1, :, 0].numpy())
    hist_x = np.asarray(ax.lines[0].get_xdata())
    assert hist_x[-1] == data.test.dates[5 + 23] and len(hist_x) == 24


def test_plot_without_dates_uses_steps_and_pyplot_when_no_axes_given():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = make().plot(levels=[0.9])
    try:
        assert list(ax.lines[0].get_xdata()) == list(range(1, 13))
        assert ax.get_title() == "window 0, variate 2 (scaled units)"
    finally:
        plt.close(ax.figure)


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ModuleNotFoundError, match=r"needs matplotlib \(pip install 'diffsample\["):
        make().plot()


def test_gluonts_and_pandas_missing_name_the_extra(data, monkeypatch):
    fc = dated(data)
    monkeypatch.setitem(sys.modules, "gluonts", None)
    monkeypatch.setitem(sys.modules, "gluonts.model.forecast", None)
    with pytest.raises(ModuleNotFoundError, match=r"^Forecast.to_gluonts: needs gluonts \(pip"):
        fc.to_gluonts()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ModuleNotFoundError, match=r"^Forecast.gluonts_targets: needs pandas"):
        fc.gluonts_targets(fc.point)


# ---------------------------------------------------------------- files
@pytest.mark.parametrize("units", ["scaled", "data"])
def test_npz_round_trip_keeps_values_dates_units_and_names(data, tmp_path, units):
    fc = dated(data)
    fc = fc.in_data_units() if units == "data" else fc
    y = torch.randn(4, 12, 3, generator=torch.Generator().manual_seed(3))
    path = save_samples(tmp_path / "f.npz", fc, targets=y, meta={"split": "test", "k": [1, 2]})
    with np.load(path, allow_pickle=False) as z:  # plain numpy reads it, no pickle
        assert str(z["units"]) == units and str(z["freq"]) == "h"
        assert list(z["start"]) == list(np.datetime_as_string(fc.start, unit="s"))
        assert list(z["variates"]) == list(data.columns)
        np.testing.assert_array_equal(z["scaler_std"], data.scaler.std)
    back, targets, meta = load_samples(path)
    assert torch.equal(back.samples, fc.samples) and torch.equal(back.point, fc.point)
    assert torch.equal(targets, y) and meta == {"split": "test", "k": [1, 2]}
    assert back.units == units and back.freq == "h" and back.variates == data.columns
    assert np.array_equal(back.start, fc.start) and torch.equal(back.window_ids, fc.window_ids)
    np.testing.assert_array_equal(back.scaler.mean, data.scaler.mean)
    torch.testing.assert_close(back.in_data_units().samples, fc.in_data_units().samples)


def test_npz_without_dates_and_foreign_files(tmp_path):
    back = load_samples(make().save(tmp_path / "bare.npz")).forecast
    assert back.start is None and back.scaler is None and back.window_ids is None
    np.savez(tmp_path / "other.npz", samples=np.zeros(3))
    with pytest.raises(ValueError, match=r"^path: .* is not a diffsample samples file"):
        load_samples(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"^path: .* is not an .npz samples file"):
        load_samples(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match=r"^path: no such samples file"):
        load_samples(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"^meta: expected JSON-able values"):
        save_samples(tmp_path / "x.npz", make(), meta={"bad": float("nan")})


def test_sample_store_writes_the_npz_with_the_split_dates(data, tmp_path):
    fc = dated(data, index=range(6), S=5)
    store = SampleStore(6, 5, 12, 3, split=data.test)  # the dates from the split
    carried = SampleStore(6, 5, 12, 3)  # the dates the forecasts carry
    for lo in (0, 4):  # two batches, as evaluate_split hands them
        idx = torch.arange(lo, min(lo + 4, 6))
        batch = data.test.windows(idx)
        store(batch, Forecast(fc.samples[:, idx], fc.point[idx]))  # as forecast() without dates
        start, freq = window_dates(data.test, idx)
        carried(batch, Forecast(fc.samples[:, idx], fc.point[idx], start=start, freq=freq))
    path = store.save(tmp_path / "s.npz", data=data.spec(), split="test", units="scaled")
    back, targets, meta = load_samples(path)
    assert np.array_equal(back.start, data.test.dates[np.arange(6) + 24]) and back.freq == "h"
    other = load_samples(carried.save(tmp_path / "c.npz")).forecast
    assert np.array_equal(other.start, back.start) and other.freq == "h" and other.scaler is None
    assert torch.equal(back.window_ids, torch.arange(6)) and back.variates == data.columns
    assert torch.equal(back.samples, fc.samples) and torch.equal(
        targets, data.test.windows(range(6)).y
    )
    np.testing.assert_allclose(back.scaler.std, data.scaler.std)
    assert meta["split"] == "test" and meta["data"] == data.spec()
    old = torch.load(store.save(tmp_path / "s.pt", split="test"), weights_only=True)
    assert set(old) == {"samples", "window_ids", "targets", "point", "split"}  # 0.4.0's file


# ---------------------------------------------------------------- GluonTS
# GluonTS hands np.sum to DataFrame.agg for the sum over variates (pandas' FutureWarning)
pytestmark = pytest.mark.filterwarnings("ignore:The provided callable:FutureWarning")


def _gluonts_scores(fc: Forecast, y: torch.Tensor, history: torch.Tensor):
    from gluonts.evaluation import Evaluator, MultivariateEvaluator

    agg, _ = Evaluator(quantiles=QUANTILES, num_workers=None)(
        fc.gluonts_targets(y, history=history), fc.to_gluonts()
    )
    multi, _ = MultivariateEvaluator(
        quantiles=QUANTILES, target_agg_funcs={"sum": np.sum}, num_workers=None
    )(
        fc.gluonts_targets(y, history=history, multivariate=True),
        fc.to_gluonts(multivariate=True),
    )
    return agg, multi


@pytest.mark.parametrize("units", ["scaled", "data"])
def test_gluonts_evaluator_agrees_with_our_metrics(data, units):
    """S = 21: every level q of 0.05..0.95 sits on a sample ((S - 1) q is whole), where
    GluonTS's nearest-rank quantiles equal our interpolated ones."""
    pytest.importorskip("gluonts")  # the test extra installs it (the gluonts extra)
    index = [0, 5, 9, 40]
    b = data.test.windows(torch.tensor(index))
    fc, y, hist = dated(data, index), b.y, b.x
    if units == "data":
        fc, y, hist = (
            fc.in_data_units(),
            data.scaler.inverse_transform(y),
            data.scaler.inverse_transform(hist),
        )
    fcs = fc.to_gluonts()
    assert len(fcs) == 4 * 3 and fcs[1].item_id == f"0/{data.columns[1]}"
    assert str(fcs[3].start_date) == str(np.datetime64(fc.start[1], "h")).replace("T", " ") + ":00"
    np.testing.assert_array_equal(fcs[3].samples, fc.samples[:, 1, :, 0].numpy())
    agg, multi = _gluonts_scores(fc, y, hist)
    m = ForecastMetrics(quantiles=QUANTILES, levels=(0.5, 0.9))
    m.update(fc.samples, y)
    ours = m.compute()
    abs_y = float(y.double().abs().sum())
    assert agg["MSE"] == pytest.approx(ours["mse_mean"], rel=1e-5)
    assert agg["mean_wQuantileLoss"] == pytest.approx(ours["quantile_crps"], rel=1e-5)
    assert agg["mean_wQuantileLoss"] == pytest.approx(
        float(quantile_crps(fc.samples, y, quantiles=QUANTILES)), rel=1e-5
    )
    assert agg["ND"] == pytest.approx(ours["mae_median"] * ours["count"] / abs_y, rel=1e-5)
    assert agg["abs_target_sum"] == pytest.approx(abs_y, rel=1e-6)
    # GluonTS's Coverage[q] is one-sided, P(y <= q-quantile); the central 90% is the difference
    assert agg["Coverage[0.95]"] - agg["Coverage[0.05]"] == pytest.approx(ours["coverage_90"])
    # the sum over variates: CRPS-sum as TimeGrad reports it
    assert multi["m_sum_mean_wQuantileLoss"] == pytest.approx(ours["quantile_crps_sum"], rel=1e-5)
    assert multi["MSE"] == pytest.approx(ours["mse_mean"], rel=1e-5)


def test_gluonts_quantiles_are_nearest_rank_so_other_sample_counts_differ(data):
    """S = 16: (S - 1) q is not whole, GluonTS takes the nearest sample and we interpolate;
    its loss equals ours on nearest-rank quantiles, not on interpolated ones."""
    pytest.importorskip("gluonts")
    index = [0, 5, 9, 40]
    b = data.test.windows(torch.tensor(index))
    fc = dated(data, index, S=16)
    agg, _ = _gluonts_scores(fc, b.y, b.x)
    ours = float(quantile_crps(fc.samples, b.y, quantiles=QUANTILES))
    assert abs(agg["mean_wQuantileLoss"] - ours) > 1e-4 * ours
    x = fc.samples.double().sort(dim=0).values
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    nearest = x[np.round((16 - 1) * q.numpy()).astype(int)]  # [Q, B, H, N], GluonTS's rule
    y = b.y.double()
    loss = 2 * ((nearest - y) * ((y <= nearest).double() - q[:, None, None, None])).abs()
    assert agg["mean_wQuantileLoss"] == pytest.approx(
        float(loss.sum((1, 2, 3)).mean() / y.abs().sum()), rel=1e-5
    )
    interp = sample_quantiles(fc.samples.double(), QUANTILES)
    assert not torch.allclose(interp, nearest)


# ---------------------------------------------------------------- where the names live
def test_forecast_and_report_names_are_the_new_modules_objects():
    """Issue 17 split forecast.py and report.py by concept; every name still imports from the
    old module, and it is the new module's object (not a copy that could drift)."""
    from diffsample.forecast import dates, forecast, plotting, report, results, samples_file

    for name in ("infer_freq", "window_dates", "check_start", "check_freq"):
        assert getattr(forecast, name) is getattr(dates, name), name
    assert forecast.plain_text is plotting.plain_text is report._plain
    assert forecast.SAMPLES_FORMAT is samples_file.SAMPLES_FORMAT
    for name in ("WindowKeeper", "spread_windows", "have_matplotlib"):
        assert getattr(report, name) is getattr(plotting, name), name
    for name in ("results_dict", "per_step_columns", "machine_info", "library_versions"):
        assert getattr(report, name) is getattr(results, name), name
    assert forecast.Forecast.__module__ == forecast.__name__  # pickles by the same path
    assert report.SampleStore.__module__ == report.__name__
    assert set(forecast.__all__) == {
        "SAMPLES_FORMAT", "Forecast", "LoadedSamples", "Units", "infer_freq", "load_samples",
        "npz_arrays", "save_samples", "window_dates",
    }  # fmt: skip
    assert set(report.__all__) == {
        "OutputError", "OutputFiles", "SampleStore", "WindowKeeper", "check_output_file",
        "fan_chart", "have_matplotlib", "json_safe", "library_versions", "machine_info",
        "per_step_columns", "prepare_output_dir", "results_dict", "spread_windows", "write_json",
        "write_per_step_csv",
    }  # fmt: skip
