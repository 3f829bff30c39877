"""Tests for diffsample.forecast.data: TSLib splits, scaler, time features, windows, bad files,
argument checks (TypeError for the wrong kind, ValueError for a bad value), the synthetic dataset
and the download helper. ETTh1 is read in place (never copied into the repository); synthetic
CSVs are written to tmp_path."""

from __future__ import annotations

import csv
import http.client
import json
import os
import shutil
import stat
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsample.forecast.data import (
    ForecastDataset,
    ForecastSplit,
    StandardScaler,
    check_data_spec,
    download_ett,
    load_csv,
    load_dataset,
    registry,
    synthetic_dataset,
    time_features,
)
from diffsample.forecast.data import download as download_module
from diffsample.forecast.data import spec as spec_module
from diffsample.forecast.data import synthetic as synthetic_module

ETT_HEADER = ["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
L, H = 96, 96


@pytest.fixture(scope="module")
def etth1(etth1_path: Path) -> ForecastDataset:
    return load_csv(etth1_path, lookback=L, horizon=H)


@pytest.fixture(scope="module")
def etth1_raw(etth1_path: Path) -> np.ndarray:
    """Independent read of the raw values of the 14400 protocol rows: [14400, 7] float64."""
    return np.loadtxt(etth1_path, delimiter=",", skiprows=1, usecols=range(1, 8), max_rows=14400)


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def ett_rows(n: int, *, start=datetime(2016, 7, 1), step=timedelta(hours=1)):
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(n, 7)).round(3)
    return [
        [(start + i * step).strftime("%Y-%m-%d %H:%M:%S"), *map(str, vals[i])] for i in range(n)
    ]


# ----------------------------------------------------------------------------------------------
# ETTh1: the TSLib protocol
# ----------------------------------------------------------------------------------------------


def test_etth1_split_sizes(etth1: ForecastDataset):
    b1, b2, b3 = 12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24  # 8640, 11520, 14400
    assert etth1.protocol == "etth" and etth1.freq == "h"
    assert etth1.columns == tuple(ETT_HEADER[1:])
    expected = {"train": (0, b1), "val": (b1 - L, b2), "test": (b2 - L, b3)}
    for split in etth1.splits():
        lo, hi = expected[split.name]
        assert split.start == lo
        assert tuple(split.values.shape) == (hi - lo, 7)
        assert tuple(split.marks.shape) == (hi - lo, 4)
        assert split.values.dtype == torch.float32 and split.marks.dtype == torch.float32
        assert len(split) == (hi - lo) - L - H + 1
    assert len(etth1.train) == 8640 - 96 - 96 + 1
    assert len(etth1.val) == 11520 - 8640 + 96 - 96 - 96 + 1
    assert len(etth1.test) == 2785
    assert etth1.val.dates[0] == np.datetime64("2016-07-01T00:00:00") + np.timedelta64(b1 - L, "h")


def test_etth1_scaler_fitted_on_train_only(etth1: ForecastDataset, etth1_raw: np.ndarray):
    train = etth1_raw[:8640]
    np.testing.assert_allclose(etth1.scaler.mean, train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        etth1.scaler.std, train.std(0), rtol=1e-12
    )  # population std (ddof=0)
    train_val = etth1_raw[:11520]
    assert np.abs(etth1.scaler.mean - train_val.mean(0)).max() > 1e-3
    assert np.abs(etth1.scaler.std - train_val.std(0)).max() > 1e-3
    # scaled rows are exactly (raw - train mean) / train std on the protocol's rows
    for split in etth1.splits():
        lo = split.start
        ref = (etth1_raw[lo : lo + split.values.shape[0]] - train.mean(0)) / train.std(0)
        np.testing.assert_allclose(split.values.numpy(), ref, rtol=1e-5, atol=1e-5)
    tr = etth1.train.values.double()
    torch.testing.assert_close(tr.mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        tr.std(0, unbiased=False), torch.ones(7, dtype=torch.float64), atol=1e-5, rtol=0
    )
    va = etth1.val.values.double()
    assert va.mean(0).abs().max() > 0.1  # no leak: validation is not standardised by itself
    assert (va.std(0, unbiased=False) - 1).abs().max() > 0.1


def test_etth1_time_features(etth1: ForecastDataset):
    m = etth1.train.marks
    assert etth1.time_features == ("hour_of_day", "day_of_week", "day_of_month", "day_of_year")
    assert m.min() >= -0.5 and m.max() <= 0.5
    # first row 2016-07-01 00:00:00, a Friday (weekday 4), day of year 183 (2016 is a leap year)
    expected = torch.tensor([-0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5])
    torch.testing.assert_close(m[0], expected)
    # row 13 is 13:00 on the same day
    torch.testing.assert_close(m[13, 0], torch.tensor(13 / 23 - 0.5))


# ----------------------------------------------------------------------------------------------
# Time features
# ----------------------------------------------------------------------------------------------


def test_time_features_by_hand():
    dates = np.array(
        [
            "2016-07-01T00:00:00",
            "2016-12-31T12:00:00",
            "2017-12-31T23:45:00",
            "2018-02-28T07:30:00",
        ],
        dtype="datetime64[s]",
    )
    got = time_features(dates, freq="t")
    expected = np.array(
        [
            # minute, hour, weekday (Mon = 0), day of month, day of year
            [-0.5, -0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5],  # Fri, doy 183
            [-0.5, 12 / 23 - 0.5, 5 / 6 - 0.5, 0.5, 0.5],  # Sat, day 31, doy 366 (leap)
            [45 / 59 - 0.5, 0.5, 0.5, 0.5, 364 / 365 - 0.5],  # Sun, day 31, doy 365
            [
                30 / 59 - 0.5,
                7 / 23 - 0.5,
                2 / 6 - 0.5,
                27 / 30 - 0.5,
                58 / 365 - 0.5,
            ],  # Wed, doy 59
        ],
        dtype=np.float32,
    )
    assert got.dtype == np.float32 and got.shape == (4, 5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(time_features(dates, freq="h"), got[:, 1:])


def test_time_features_match_datetime_reference():
    rng = np.random.default_rng(1)
    secs = rng.integers(0, 60 * 365 * 86400, size=500)  # 1970 .. 2030
    dates = np.datetime64("1970-01-01T00:00:00", "s") + secs.astype("timedelta64[s]")
    got = time_features(dates, freq="t")
    assert got.min() >= -0.5 and got.max() <= 0.5
    for row, d in zip(got, dates.tolist(), strict=True):  # slow twin from datetime's own calendar
        ref = [
            d.minute / 59 - 0.5,
            d.hour / 23 - 0.5,
            d.weekday() / 6 - 0.5,
            (d.day - 1) / 30 - 0.5,
            (d.timetuple().tm_yday - 1) / 365 - 0.5,
        ]
        np.testing.assert_allclose(row, np.array(ref, dtype=np.float32), rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------


def test_windows_match_slow_reference(etth1: ForecastDataset):
    split = etth1.test
    gen = torch.Generator().manual_seed(0)
    idx = torch.cat(
        [torch.tensor([0, len(split) - 1]), torch.randint(0, len(split), (30,), generator=gen)]
    )
    b = split.windows(idx)
    assert tuple(b.x.shape) == (32, L, 7) and tuple(b.y.shape) == (32, H, 7)
    assert tuple(b.x_mark.shape) == (32, L, 4) and tuple(b.y_mark.shape) == (32, H, 4)
    assert torch.equal(b.index, idx)
    for k, i in enumerate(idx.tolist()):
        assert torch.equal(b.x[k], split.values[i : i + L])
        assert torch.equal(b.y[k], split.values[i + L : i + L + H])
        assert torch.equal(b.x_mark[k], split.marks[i : i + L])
        assert torch.equal(b.y_mark[k], split.marks[i + L : i + L + H])
    one = split.windows(7)
    assert tuple(one.x.shape) == (1, L, 7) and torch.equal(one.x[0], split.values[7 : 7 + L])
    assert torch.equal(split.windows(np.array([3, 5])).y, split.windows([3, 5]).y)


def test_windows_bad_indices(etth1: ForecastDataset):
    with pytest.raises(IndexError, match=r"test split: window index 2785 .* 0 <= index < 2785"):
        etth1.test.windows([0, 2785])
    with pytest.raises(IndexError, match="window index -1"):
        etth1.test.windows(-1)
    with pytest.raises(TypeError, match="integer"):
        etth1.test.windows(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="integer"):
        etth1.test.windows(True)


@pytest.fixture()
def counting_csv(tmp_path: Path) -> Path:
    """1000 hourly rows; the column 'row' holds the row number, date sits in the middle."""
    rng = np.random.default_rng(3)
    start = datetime(2021, 3, 1)
    rows = [
        [
            f"{rng.normal():.4f}",
            (start + timedelta(hours=i)).isoformat(sep=" "),
            str(i),
            f"{rng.gamma(2.0):.4f}",
        ]
        for i in range(1000)
    ]
    return write_csv(tmp_path / "counting.csv", ["a", "date", "row", "b"], rows)


def test_custom_split_sizes_and_contiguity(counting_csv: Path):
    Lc, Hc = 24, 12
    ds = load_csv(counting_csv, lookback=Lc, horizon=Hc)
    assert ds.protocol == "custom" and ds.columns == ("a", "row", "b")
    n = 1000
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    num_val = n - num_train - num_test
    borders = [(0, num_train), (num_train - Lc, num_train + num_val), (n - num_test - Lc, n)]
    assert borders == [(0, 700), (676, 800), (776, 1000)]
    for split, (lo, hi) in zip(ds.splits(), borders, strict=True):
        assert split.start == lo and split.values.shape[0] == hi - lo
        assert len(split) == hi - lo - Lc - Hc + 1
        idx = torch.arange(len(split))
        b = split.windows(idx)
        rows = ds.scaler.inverse_transform(b.x.double())[..., 1]  # [B, L] original row numbers
        rows_y = ds.scaler.inverse_transform(b.y.double())[..., 1]  # [B, H]
        first = (lo + idx).double()[:, None]
        torch.testing.assert_close(rows, first + torch.arange(Lc).double(), atol=1e-3, rtol=0)
        torch.testing.assert_close(
            rows_y, first + Lc + torch.arange(Hc).double(), atol=1e-3, rtol=0
        )
        # y starts one hour after x ends
        gap = split.dates[idx.numpy() + Lc] - split.dates[idx.numpy() + Lc - 1]
        assert (gap == np.timedelta64(1, "h")).all()


def test_batches_cover_every_window_once(counting_csv: Path):
    ds = load_csv(counting_csv, lookback=24, horizon=12)
    split = ds.val  # 124 rows -> 89 windows
    sizes = [b.x.shape[0] for b in split.batches(32)]
    assert sizes == [32, 32, 25]
    ordered = torch.cat([b.index for b in split.batches(32)])
    assert torch.equal(ordered, torch.arange(len(split)))
    shuffled = [
        b.index for b in split.batches(32, shuffle=True, generator=torch.Generator().manual_seed(5))
    ]
    again = [
        b.index for b in split.batches(32, shuffle=True, generator=torch.Generator().manual_seed(5))
    ]
    assert all(torch.equal(u, v) for u, v in zip(shuffled, again, strict=True))
    flat = torch.cat(shuffled)
    assert not torch.equal(flat, torch.arange(len(split)))
    assert torch.equal(flat.sort().values, torch.arange(len(split)))
    for b in split.batches(40, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(b.x, split.windows(b.index).x)
    with pytest.raises(ValueError, match="batch_size"):
        next(split.batches(0))


def test_scaler_round_trip(counting_csv: Path):
    ds = load_csv(counting_csv, lookback=24, horizon=12)
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 3, 3)) * 10
    np.testing.assert_allclose(
        ds.scaler.inverse_transform(ds.scaler.transform(v)), v, rtol=1e-12, atol=1e-12
    )
    t = torch.from_numpy(v)
    torch.testing.assert_close(ds.scaler.inverse_transform(ds.scaler.transform(t)), t)
    samples = torch.randn(4, 2, 12, 3)  # [S, B, H, N] float32 stays float32
    back = ds.scaler.inverse_transform(samples)
    assert back.dtype == torch.float32 and back.shape == samples.shape
    with pytest.raises(ValueError, match=r"N = 3 .* got shape \(2, 4\)"):
        ds.scaler.transform(np.zeros((2, 4)))


def test_scaler_guards_zero_std():
    s = StandardScaler.fit(np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]]))
    np.testing.assert_array_equal(s.mean, [1.0, 4.0])
    np.testing.assert_allclose(s.std, [1.0, np.sqrt(8 / 3)])
    assert np.isfinite(s.transform(np.array([[1.0, 4.0]]))).all()


def test_scaler_bad_arguments():
    with pytest.raises(TypeError, match=r"^StandardScaler\.mean: expected numbers \[N\], got list"):
        StandardScaler(mean=["a"], std=[1.0])  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"^StandardScaler\.std: expected finite values > 0, got 0\.0 for variate 1$",
    ):
        StandardScaler(mean=np.zeros(2), std=np.array([1.0, 0.0]))
    with pytest.raises(
        ValueError, match=r"^StandardScaler\.mean: expected finite values, got nan for variate 0$"
    ):
        StandardScaler(mean=np.array([np.nan]), std=np.ones(1))
    with pytest.raises(ValueError, match=r"StandardScaler: expected mean and std of shape \[N\]"):
        StandardScaler(mean=np.zeros(2), std=np.ones(3))
    with pytest.raises(
        ValueError,
        match=r"^StandardScaler\.fit\(values\): expected values \[T, N\] with T >= 1, got shape \(0, 3\)$",
    ):
        StandardScaler.fit(np.zeros((0, 3)))
    s = StandardScaler(mean=np.zeros(2), std=np.ones(2))
    with pytest.raises(
        TypeError,
        match=r"^StandardScaler\.transform: expected a tensor or array \[\.\.\., N\], got list$",
    ):
        s.transform([[1.0, 2.0]])  # type: ignore[type-var]
    with pytest.raises(
        ValueError,
        match=r"^StandardScaler\.inverse_transform: expected .* N = 2 .* got shape \(\)$",
    ):
        s.inverse_transform(torch.tensor(1.0))


def test_ettm_borders_and_minute_features(tmp_path: Path):
    n = 57600 + 10
    start = datetime(2016, 7, 1)
    stamps = [(start + timedelta(minutes=15 * i)).isoformat(sep=" ") for i in range(n)]
    rows = [[d, "1.5", "2", "3", "4", "5", "6", str(i % 97)] for i, d in enumerate(stamps)]
    path = write_csv(tmp_path / "ETTm1.csv", ETT_HEADER, rows)
    ds = load_csv(path, lookback=L, horizon=H)
    assert ds.protocol == "ettm" and ds.freq == "t" and ds.n_marks == 5
    b1, b2, b3 = 34560, 46080, 57600
    assert [(s.start, s.start + s.values.shape[0]) for s in ds.splits()] == [
        (0, b1),
        (b1 - L, b2),
        (b2 - L, b3),
    ]
    assert ds.train.marks[1, 0].item() == pytest.approx(15 / 59 - 0.5)
    hourly = load_csv(path, lookback=L, horizon=H, freq="h")  # the reference scripts' default
    assert hourly.n_marks == 4 and torch.equal(hourly.train.marks, ds.train.marks[:, 1:])


# ----------------------------------------------------------------------------------------------
# Bad files and bad arguments
# ----------------------------------------------------------------------------------------------


def test_ett_missing_and_extra_columns(tmp_path: Path):
    rows = ett_rows(5)
    p = write_csv(
        tmp_path / "ETTh1.csv",
        [c for c in ETT_HEADER if c != "LULL"],
        [r[:6] + r[7:] for r in rows],
    )
    with pytest.raises(
        ValueError, match=r"ETTh1\.csv: line 1 \(header\): missing column\(s\) 'LULL'"
    ):
        load_csv(p)
    p = write_csv(tmp_path / "ETTh2.csv", [*ETT_HEADER, "extra"], [[*r, "0"] for r in rows])
    with pytest.raises(
        ValueError, match=r"ETTh2\.csv: line 1 \(header\): unexpected column\(s\) 'extra'"
    ):
        load_csv(p)
    p = write_csv(
        tmp_path / "ETTh1_swapped.csv", ETT_HEADER[:1] + ETT_HEADER[2:] + ETT_HEADER[1:2], rows
    )
    with pytest.raises(ValueError, match=r"ETTh1_swapped\.csv: .*out of order"):
        load_csv(p)


@pytest.mark.parametrize(
    "line, column, cell, message",
    [
        (5, "date", "2016-07-01 25:00:00", r"column 'date': cannot parse '2016-07-01 25:00:00'"),
        (4, "HULL", "nan", r"column 'HULL': 'nan'; expected a finite number"),
        (3, "OT", "", r"column 'OT': an empty cell; expected a finite number"),
        (7, "MUFL", "12,5", r"9 cell\(s\), expected 8"),
        (6, "LUFL", "abc", r"column 'LUFL': 'abc'; expected a finite number"),
        (8, "HUFL", "inf", r"column 'HUFL': 'inf'"),
    ],
)
def test_bad_cells_name_file_line_and_column(tmp_path: Path, line, column, cell, message):
    rows = ett_rows(10)
    rows[line - 2][ETT_HEADER.index(column)] = cell  # line 1 is the header
    if cell == "12,5":
        row = rows[line - 2]
        rows[line - 2] = [
            *row[: ETT_HEADER.index(column)],
            "12",
            "5",
            *row[ETT_HEADER.index(column) + 1 :],
        ]
    p = write_csv(tmp_path / "ETTh1.csv", ETT_HEADER, rows)
    with pytest.raises(ValueError, match=rf"ETTh1\.csv: line {line}\b.*{message}"):
        load_csv(p)


def test_dates_must_increase(tmp_path: Path):
    rows = ett_rows(10)
    rows[5][0], rows[6][0] = rows[6][0], rows[5][0]
    p = write_csv(tmp_path / "data.csv", ETT_HEADER, rows)
    with pytest.raises(
        ValueError, match=r"data\.csv: line 8, column 'date': .* strictly increasing"
    ):
        load_csv(p)


def test_too_few_rows(tmp_path: Path):
    p = write_csv(tmp_path / "ETTh1.csv", ETT_HEADER, ett_rows(300))
    with pytest.raises(
        ValueError, match=r"ETTh1\.csv: too few rows: 300 data rows; .* at least 14400"
    ):
        load_csv(p)
    p = write_csv(tmp_path / "small.csv", ETT_HEADER, ett_rows(300))
    with pytest.raises(
        ValueError, match=r"small\.csv: too few rows: 300 .* val split .* at least \d+ data rows"
    ):
        load_csv(p, lookback=96, horizon=96)
    ds = load_csv(p, lookback=8, horizon=4)  # shorter windows fit
    assert len(ds.test) == 60 + 8 - 8 - 4 + 1


def test_custom_header_problems(tmp_path: Path):
    p = write_csv(tmp_path / "nodate.csv", ["time", "a"], [["2020-01-01", "1"]])
    with pytest.raises(ValueError, match=r"nodate\.csv: line 1 \(header\): no 'date' column"):
        load_csv(p)
    p = write_csv(tmp_path / "dupes.csv", ["date", "a", "a"], [["2020-01-01", "1", "2"]])
    with pytest.raises(
        ValueError, match=r"dupes\.csv: line 1 \(header\): repeated column name\(s\) 'a'"
    ):
        load_csv(p)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        load_csv(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        load_csv(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    "bad, exc",
    [
        (0, ValueError),
        (-3, ValueError),
        (np.int64(0), ValueError),
        (1.5, TypeError),
        (2.0, TypeError),  # a whole float is still the wrong kind: TypeError, not ValueError
        (True, TypeError),
        ("96", TypeError),
        (None, TypeError),
    ],
)
def test_bad_lookback_and_horizon(counting_csv: Path, bad, exc):
    want = r": expected a positive integer, got "
    with pytest.raises(exc, match="^lookback" + want):
        load_csv(counting_csv, lookback=bad)
    with pytest.raises(exc, match="^horizon" + want):
        load_csv(counting_csv, horizon=bad)
    with pytest.raises(exc, match="^lookback" + want):
        synthetic_dataset(lookback=bad)
    with pytest.raises(exc, match="^horizon" + want):
        load_dataset(horizon=bad)


def test_lookback_messages_follow_the_one_grammar(counting_csv: Path):
    with pytest.raises(TypeError, match=r"^lookback: expected a positive integer, got float 1\.5$"):
        load_csv(counting_csv, lookback=1.5)
    with pytest.raises(ValueError, match=r"^horizon: expected a positive integer, got int 0$"):
        synthetic_dataset(horizon=0)
    # numpy integers are integers: the same dataset as with Python ints, lengths stored as int
    ds = load_csv(counting_csv, lookback=np.int64(24), horizon=np.int32(12))
    ref = load_csv(counting_csv, lookback=24, horizon=12)
    assert type(ds.lookback) is int and type(ds.test.horizon) is int
    assert torch.equal(ds.test.windows([0, 5]).y, ref.test.windows([0, 5]).y)


def test_bad_protocol_and_freq(counting_csv: Path):
    with pytest.raises(ValueError, match="protocol"):
        load_csv(counting_csv, protocol="ett")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="freq"):
        load_csv(counting_csv, freq="d")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"^protocol: expected one of 'auto', 'etth', 'ettm', 'custom', got str 'ett'$",
    ):
        load_dataset(protocol="ett")  # type: ignore[arg-type]  # checked for synthetic data too
    with pytest.raises(TypeError, match=r"^protocol: expected one of .*, got NoneType None$"):
        load_csv(counting_csv, protocol=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^freq: expected one of 'h', 't', got int 1$"):
        load_csv(counting_csv, freq=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^freq: expected one of 'h', 't', got str 'd'$"):
        load_dataset(freq="d")  # type: ignore[arg-type]


def test_bad_paths_and_flags(counting_csv: Path):
    with pytest.raises(TypeError, match=r"^path: expected a str or os\.PathLike path, got int 3$"):
        load_csv(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^source: expected a str or os\.PathLike path, got"):
        load_dataset(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^download: expected True or False, got str 'yes'$"):
        load_dataset(counting_csv, download="yes")  # type: ignore[arg-type]


def test_time_features_bad_arguments():
    dates = np.array(["2020-01-01T00:00:00", "2020-01-01T01:00:00"], dtype="datetime64[s]")
    with pytest.raises(ValueError, match=r"^freq: expected one of 'h', 't', got str 'd'$"):
        time_features(dates, freq="d")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^freq: expected one of 'h', 't', got NoneType None$"):
        time_features(dates, freq=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^dates: expected a 1-D numpy datetime64 array \[T\]"):
        time_features(np.array(["2020-01-01"]))
    with pytest.raises(
        ValueError,
        match=r"^dates: expected .*, got a datetime64\[s\] numpy array of shape \(1, 2\)$",
    ):
        time_features(dates[None, :])


def test_batches_and_windows_bad_arguments(counting_csv: Path):
    split = load_csv(counting_csv, lookback=24, horizon=12).val
    with pytest.raises(
        TypeError, match=r"^batch_size: expected a positive integer, got float 2\.0$"
    ):
        next(split.batches(2.0))  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^batch_size: expected a positive integer, got bool True$"
    ):
        next(split.batches(True))
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive integer, got int 0$"):
        next(split.batches(0))
    with pytest.raises(TypeError, match=r"^shuffle: expected True or False, got int 1$"):
        next(split.batches(8, shuffle=1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^index: expected an int or integer window indices"):
        split.windows(["a"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"^index: expected .*, got a torch\.float32 tensor"):
        split.windows(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^index: expected an int or a 1-D sequence \[B\]"):
        split.windows(np.array([[0, 1]]))
    assert split.windows([]).x.shape == (0, 24, 3)  # an empty request is not an error


def test_forecast_split_checks_its_fields():
    ok = {
        "name": "test",
        "values": torch.zeros(10, 2),
        "marks": torch.zeros(10, 4),
        "dates": np.arange(10).astype("datetime64[h]"),
        "start": 0,
        "lookback": 4,
        "horizon": 2,
    }
    assert len(ForecastSplit(**ok)) == 10 - 4 - 2 + 1
    for change, exc, message in [
        (
            {"values": torch.zeros(10, 2, dtype=torch.long)},
            TypeError,
            r"^ForecastSplit\.values: expected a floating-point tensor",
        ),
        (
            {"values": np.zeros((10, 2))},
            TypeError,
            r"^ForecastSplit\.values: expected a torch\.Tensor",
        ),
        (
            {"values": torch.zeros(10, 2, 1)},
            ValueError,
            r"^ForecastSplit\.values: expected a float tensor \[T, N\], got",
        ),
        (
            {"marks": [[0.0] * 4] * 10},
            TypeError,
            r"^ForecastSplit\.marks: expected a torch\.Tensor",
        ),
        (
            {"marks": torch.zeros(9, 4)},
            ValueError,
            r"^ForecastSplit\.marks: expected a tensor \[T, F\] with T = 10 rows",
        ),
        ({"lookback": 1.5}, TypeError, r"^lookback: expected a positive integer, got float 1\.5$"),
        ({"horizon": 0}, ValueError, r"^horizon: expected a positive integer, got int 0$"),
        (
            {"lookback": 8, "horizon": 3},
            ValueError,
            r"'test': 10 rows hold no window of lookback \+ horizon = 8 \+ 3",
        ),
    ]:
        with pytest.raises(exc, match=message):
            ForecastSplit(**{**ok, **change})


# ----------------------------------------------------------------------------------------------
# Synthetic dataset
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth() -> ForecastDataset:
    return synthetic_dataset(seed=0)


def _hour_and_hour_of_week(dates: np.ndarray):
    day = dates.astype("datetime64[D]")
    hour = (dates.astype("datetime64[h]") - day).astype(np.int64)
    return hour, hour + 24 * ((day.astype(np.int64) + 3) % 7)


def test_synthetic_shapes_and_determinism(synth: ForecastDataset):
    n = 6000
    assert synth.columns == tuple(f"var{i}" for i in range(7)) and synth.freq == "h"
    assert [s.values.shape[0] for s in synth.splits()] == [4200, 600 + L, 1200 + L]
    assert [len(s) for s in synth.splits()] == [4200 - L - H + 1, 600 - H + 1, 1200 - H + 1]
    assert synth.test.start + synth.test.values.shape[0] == n
    assert all(bool(torch.isfinite(s.values).all()) for s in synth.splits())
    same = synthetic_dataset(seed=0)
    other = synthetic_dataset(seed=1)
    for a, b, c in zip(synth.splits(), same.splits(), other.splits(), strict=True):
        assert torch.equal(a.values, b.values) and torch.equal(a.marks, b.marks)
        assert not torch.allclose(a.values, c.values)
    np.testing.assert_array_equal(synth.scaler.mean, same.scaler.mean)
    assert synth.train.dates[0] == np.datetime64("2020-01-01T00:00:00")
    small = synthetic_dataset(n_steps=1500, n_variates=3, lookback=48, horizon=24, seed=2)
    assert small.n_variates == 3 and small.train.values.shape == (1050, 3)


def test_synthetic_statistical_properties(synth: ForecastDataset):
    v = synth.scaler.inverse_transform(synth.train.values.double()).numpy()  # [T, N] original units
    T, N = v.shape
    hour, how = _hour_and_hour_of_week(synth.train.dates)

    # daily seasonality: clearly positive autocorrelation at lag 24
    c = v - v.mean(0)
    ac24 = (c[24:] * c[:-24]).sum(0) / (c * c).sum(0)
    assert (ac24 > 0.2).all(), ac24

    # heteroscedastic: the variance of one-step changes depends on the hour of day
    d = np.diff(v, axis=0)
    var_h = np.stack([d[hour[1:] == h].var(0) for h in range(24)])  # [24, N]
    assert (var_h.max(0) / var_h.min(0) > 1.8).all(), var_h.max(0) / var_h.min(0)

    # skewed noise: innovations of an AR fit on the deseasonalised series are right-skewed
    r = v.copy()
    for k in range(168):
        r[how == k] -= r[how == k].mean(0)
    skews = []
    for n in range(N):
        y = r[25:, n]
        X = np.column_stack([np.ones(T - 25), r[24:-1, n], r[23:-2, n], r[1:-24, n]])
        e = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
        skews.append(((e - e.mean()) ** 3).mean() / e.std() ** 3)
    assert np.mean(skews) > 0.3 and min(skews) > 0.1, skews

    # cross-variate coupling beyond the shared seasonal profile
    corr = np.corrcoef(r.T)
    off = np.abs(corr[~np.eye(N, dtype=bool)])
    assert off.max() > 0.5 and off.mean() > 0.2, corr


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (
            {"n_steps": 3000.0},
            TypeError,
            r"^n_steps: expected a positive integer, got float 3000\.0$",
        ),
        (
            {"n_variates": 3.0},
            TypeError,
            r"^n_variates: expected a positive integer, got float 3\.0$",
        ),
        (
            {"n_variates": True},
            TypeError,
            r"^n_variates: expected a positive integer, got bool True$",
        ),
        ({"seed": 1.0}, TypeError, r"^seed: expected a non-negative integer, got float 1\.0$"),
        ({"seed": "0"}, TypeError, r"^seed: expected a non-negative integer, got str '0'$"),
        ({"n_variates": 0}, ValueError, r"^n_variates: expected a positive integer, got int 0$"),
        ({"n_steps": -1}, ValueError, r"^n_steps: expected a positive integer, got int -1$"),
        ({"seed": -1}, ValueError, r"^seed: expected a non-negative integer, got int -1$"),
        ({"n_steps": 300}, ValueError, r"too few rows: 300 data rows .* at least \d+ data rows"),
    ],
)
def test_synthetic_bad_arguments(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        synthetic_dataset(**kwargs)


def test_synthetic_accepts_numpy_integers():
    kw = {"n_steps": 1500, "n_variates": 3, "lookback": 48, "horizon": 24, "seed": 2}
    ref = synthetic_dataset(**kw)
    got = synthetic_dataset(**{k: np.int64(v) for k, v in kw.items()})
    assert got.source == ref.source == "synthetic(n_steps=1500, n_variates=3, seed=2)"
    assert torch.equal(got.train.values, ref.train.values)  # the same computation, bit for bit


def test_load_dataset_dispatch(counting_csv: Path, synth: ForecastDataset):
    ds = load_dataset()
    assert torch.equal(ds.test.values, synth.test.values)
    assert load_dataset("synthetic", lookback=24, horizon=24).lookback == 24
    assert load_dataset(counting_csv, lookback=24, horizon=12).columns == ("a", "row", "b")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        load_dataset("nowhere.csv")


# ----------------------------------------------------------------------------------------------
# Download helper (file:// URLs, no network)
# ----------------------------------------------------------------------------------------------


def test_download_ett_caches_atomically(tmp_path: Path, etth1_path: Path, monkeypatch):
    remote = tmp_path / "remote"
    remote.mkdir()
    shutil.copyfile(etth1_path, remote / "ETTh1.csv")  # a tmp copy for this test only
    cache = tmp_path / "cache"
    got = download_ett("ETTh1", cache_dir=cache, base_url=remote.as_uri())
    assert got == cache / "ETT-small" / "ETTh1.csv"
    assert got.read_bytes() == etth1_path.read_bytes()
    assert sorted(p.name for p in got.parent.iterdir()) == ["ETTh1.csv"]  # no temp file left

    def no_network(*args, **kwargs):
        raise AssertionError("download_ett fetched although the file is cached")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    (remote / "ETTh1.csv").unlink()
    assert download_ett("ETTh1.csv", cache_dir=cache, base_url=remote.as_uri()) == got

    # the default cache directory comes from $DIFFSAMPLE_CACHE; load_dataset finds the file by name
    monkeypatch.setenv("DIFFSAMPLE_CACHE", str(cache))
    monkeypatch.delenv("DIFFSAMPLE_ETT_DIR", raising=False)
    assert download_ett() == got
    assert len(load_dataset("ETTh1").test) == 2785


def test_download_ett_rejects_bad_files_and_names_the_url(tmp_path: Path, monkeypatch):
    remote = tmp_path / "remote"
    remote.mkdir()
    write_csv(remote / "ETTh2.csv", ["date", "a", "b"], [["2016-07-01 00:00:00", "1", "2"]])
    cache = tmp_path / "cache"
    with pytest.raises(
        ValueError, match=r"downloaded file://.*/ETTh2\.csv is not a valid ETT CSV.*'HUFL'"
    ):
        download_ett("ETTh2", cache_dir=cache, base_url=remote.as_uri() + "/")
    assert list((cache / "ETT-small").iterdir()) == []  # nothing half-written

    write_csv(remote / "ETTm1.csv", ETT_HEADER, ett_rows(50))  # right header, truncated
    with pytest.raises(ValueError, match=r"ETTm1\.csv is not a valid ETT CSV.*too few rows.*57600"):
        download_ett("ETTm1", cache_dir=cache, base_url=remote.as_uri())
    assert list((cache / "ETT-small").iterdir()) == []

    with pytest.raises(ConnectionError, match=r"could not download file://.*/ETTm2\.csv"):
        download_ett("ETTm2", cache_dir=cache, base_url=remote.as_uri())
    assert list((cache / "ETT-small").iterdir()) == []
    with pytest.raises(
        ValueError,
        match=r"^name: expected one of 'ETTh1', 'ETTh2', 'ETTm1', 'ETTm2', got str 'ETTh3'$",
    ):
        download_ett("ETTh3.csv", cache_dir=cache)

    monkeypatch.setenv("DIFFSAMPLE_CACHE", str(cache))
    monkeypatch.delenv("DIFFSAMPLE_ETT_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"ETTm2\.csv not found .* download_ett\('ETTm2'\)"):
        load_dataset("ETTm2")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_download_ett_file_gets_plain_permissions(tmp_path: Path, etth1_path: Path):
    # read in place through a file:// URL: no copy, no network
    got = download_ett("ETTh1", cache_dir=tmp_path, base_url=etth1_path.parent.as_uri())
    assert got == tmp_path / "ETT-small" / "ETTh1.csv"
    assert got.read_bytes() == etth1_path.read_bytes()
    # what open(path, "w") gives, not mkstemp's 0600
    assert stat.S_IMODE(got.stat().st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in got.parent.iterdir()) == ["ETTh1.csv"]


class _BrokenResponse:
    """A urlopen response that delivers ``head`` and then fails with ``error``."""

    def __init__(self, head: bytes, error: BaseException):
        self.parts: list[bytes | BaseException] = [head, error]

    def read(self, size: int = -1) -> bytes:
        part = self.parts.pop(0) if self.parts else b""
        if isinstance(part, BaseException):
            raise part
        return part

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


@pytest.mark.parametrize(
    "error",
    [ConnectionResetError("connection reset by peer"), http.client.IncompleteRead(b"", 1000)],
    ids=["reset", "incomplete"],
)
def test_download_ett_broken_off_leaves_no_partial_file(tmp_path: Path, monkeypatch, error):
    head = ",".join(ETT_HEADER).encode() + b"\n2016-07-01 00:00:00,1,2,3,4,5,6,7\n"
    seen = []

    def urlopen(url, timeout):
        seen.append((url, timeout))
        return _BrokenResponse(head, error)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(
        ConnectionError, match=r"^download of https://example\.test/ETTh1\.csv broke off"
    ):
        download_ett("ETTh1", cache_dir=tmp_path, base_url="https://example.test", timeout=5)
    assert seen == [("https://example.test/ETTh1.csv", 5.0)]
    assert list((tmp_path / "ETT-small").iterdir()) == []  # neither the file nor a temp file


def test_download_ett_failed_write_leaves_no_partial_file(
    tmp_path: Path, etth1_path: Path, monkeypatch
):
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    # atomic_write fsyncs the temp file before the rename: a failure there, after the bytes went
    # to disk, must still leave no temp file and no target
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        download_ett("ETTh1", cache_dir=tmp_path, base_url=etth1_path.parent.as_uri())
    assert list((tmp_path / "ETT-small").iterdir()) == []


def test_download_ett_bad_arguments(tmp_path: Path):
    uri = tmp_path.as_uri()
    with pytest.raises(TypeError, match=r"^name: expected one of 'ETTh1', .*, got int 1$"):
        download_ett(1, cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^cache_dir: expected a str or os\.PathLike path, got int 5$"
    ):
        download_ett("ETTh1", cache_dir=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^base_url: expected a URL string, got NoneType None$"):
        download_ett("ETTh1", cache_dir=tmp_path, base_url=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^timeout: expected a finite number > 0, got str '60'$"):
        download_ett("ETTh1", cache_dir=tmp_path, base_url=uri, timeout="60")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^timeout: expected a finite number > 0, got int 0$"):
        download_ett("ETTh1", cache_dir=tmp_path, base_url=uri, timeout=0)
    assert not (tmp_path / "ETT-small").exists()  # nothing created before the checks passed


# ----------------------------------------------------------------------------------------------
# Data provenance: spec() and check_data_spec
# ----------------------------------------------------------------------------------------------


def _reload(spec: dict) -> ForecastDataset:
    return load_dataset(spec["source"], lookback=spec["lookback"], horizon=spec["horizon"])


def test_spec_records_the_data_and_round_trips_through_load_dataset(
    counting_csv: Path, monkeypatch, tmp_path: Path
):
    """issue 8: evaluate without --data scored the synthetic data for a model trained on
    ETTh1. The spec says what the data were, in JSON, and its source reloads them."""
    monkeypatch.chdir(counting_csv.parent)
    csv_data = load_csv(counting_csv.name, lookback=24, horizon=12)  # a relative path
    monkeypatch.chdir(tmp_path.parent)  # the spec's source still finds the file
    synthetic = synthetic_dataset(n_steps=1500, n_variates=3, lookback=24, horizon=12, seed=2)
    for ds in (csv_data, synthetic, load_dataset(None, lookback=24, horizon=12)):
        spec = ds.spec()
        assert json.loads(json.dumps(spec)) == spec  # plain JSON
        back = _reload(spec)
        check_data_spec(spec, back)
        assert back.spec() == spec
        assert torch.equal(back.test.values, ds.test.values)
    spec = csv_data.spec()
    assert spec["source"] == str(counting_csv) and spec["ett"] is None
    assert spec["borders"] == [[0, 700], [676, 800], [776, 1000]]  # 70/10/20 of 1000 rows, L=24
    assert spec["borders"] == [list(b) for b in csv_data.borders]
    assert spec["columns"] == ["a", "row", "b"] and spec["protocol"] == "custom"
    assert spec["scaler_mean"] == csv_data.scaler.mean.tolist()
    assert synthetic.spec()["source"] == "synthetic(n_steps=1500, n_variates=3, seed=2)"


def test_etth1_spec(etth1: ForecastDataset):
    spec = etth1.spec()
    assert spec["ett"] == "ETTh1" and spec["protocol"] == "etth" and spec["freq"] == "h"
    assert spec["borders"] == [[0, 8640], [8640 - L, 11520], [11520 - L, 14400]]
    assert spec["columns"] == ETT_HEADER[1:]
    check_data_spec(spec, _reload(spec))


def test_the_registry_names_the_data_the_other_modules_resolve(counting_csv: Path):
    """issue 17: the ETT names and the synthetic call live in one module that imports no other
    data module (spec.py reached them through download.py, which imports the splits, which
    import the batch types, whose spec() imported spec.py: a cycle). Their old homes still
    export the same objects, and data_spec is the dataset's own spec(), checked."""
    assert download_module.ETT_NAMES is registry.ETT_NAMES
    assert download_module.ett_name is registry.ett_name
    assert synthetic_module.synthetic_call is registry.synthetic_call
    source = registry.synthetic_source(1500, 3, 2)
    assert source == "synthetic(n_steps=1500, n_variates=3, seed=2)"
    assert registry.synthetic_call(source) == {"n_steps": 1500, "n_variates": 3, "seed": 2}
    assert registry.synthetic_call(source + " ") is None
    assert registry.synthetic_call("synthetic(n_steps=1, n_variates=2)") is None
    assert registry.ett_name_of("/data/ETTm2.csv", "ettm") == "ETTm2"
    assert registry.ett_name_of("/data/ETTh1.csv", "custom") is None  # read as a plain CSV
    assert registry.ett_name_of("/data/ETTh3.csv", "etth") is None
    assert registry.ett_name("ETTh2.csv") == "ETTh2"
    with pytest.raises(ValueError, match=r"^name: expected one of"):
        registry.ett_name("ETTh3")
    ds = load_csv(counting_csv, lookback=24, horizon=12)
    assert spec_module.data_spec(ds) == ds.spec()
    with pytest.raises(TypeError, match=r"^data: expected a ForecastDataset \(load_dataset\), got"):
        spec_module.data_spec(ds.test)


def test_check_data_spec_names_the_first_field_that_differs(counting_csv: Path):
    ds = synthetic_dataset(n_steps=1500, n_variates=3, lookback=24, horizon=12, seed=2)
    spec = ds.spec()
    cases = [
        (load_csv(counting_csv, lookback=24, horizon=12), "borders"),  # same protocol and N
        (
            synthetic_dataset(n_steps=1500, n_variates=3, lookback=48, horizon=12, seed=2),
            "lookback",
        ),
        (
            synthetic_dataset(n_steps=1500, n_variates=3, lookback=24, horizon=12, seed=3),
            "scaler_mean",
        ),
    ]
    for other, field in cases:
        with pytest.raises(ValueError) as info:
            check_data_spec(spec, other)
        message = str(info.value)
        assert message.startswith(
            "data: expected the data the model was trained on, got data that differ in "
            f"{field}: trained with {spec[field]!r}, given {other.spec()[field]!r} (trained on "
        ), message
        assert "\n" not in message
    # the scaler statistics within the tolerance (another numpy's summation order) still match
    close = dict(spec, scaler_mean=[v * (1 + 1e-9) for v in spec["scaler_mean"]])
    check_data_spec(close, ds)
    far = dict(spec, scaler_std=[v * (1 + 1e-4) for v in spec["scaler_std"]])
    with pytest.raises(ValueError, match=r"differ in scaler_std: "):
        check_data_spec(far, ds)
    with pytest.raises(ValueError, match=r"differ in columns: trained with \['x', 'y', 'z'\]"):
        check_data_spec(dict(spec, columns=("x", "y", "z")), ds)
    # the source says where the data came from, not what they are: a moved file still matches
    check_data_spec(dict(spec, source="/elsewhere/data.csv"), ds)
    with pytest.raises(ValueError, match=r"^data spec: the saved spec has no field 'freq'"):
        check_data_spec({k: v for k, v in spec.items() if k != "freq"}, ds)
    with pytest.raises(TypeError, match=r"^saved: expected a data spec dict"):
        check_data_spec(None, ds)
    with pytest.raises(TypeError, match=r"^data: expected a ForecastDataset"):
        check_data_spec(spec, ds.train)
