"""Forecasting data: ETT / custom CSV loaders with the Time-Series-Library splits, a built-in
synthetic dataset, and an opt-in download helper.

Dimensions: T time steps (rows) of a split, N variates, F time features, B windows in a batch,
L lookback (history length), H horizon (forecast length).

Protocol (Time-Series-Library, ``Dataset_ETT_hour`` / ``Dataset_ETT_minute`` / ``Dataset_Custom``):

    ETTh (hourly)      train [0, 8640)        val [8640 - L, 11520)     test [11520 - L, 14400)
    ETTm (15-minute)   train [0, 34560)       val [34560 - L, 46080)    test [46080 - L, 57600)
    custom (70/10/20)  train [0, n_tr)        val [n_tr - L, n_tr + n_va)  test [n - n_te - L, n)
                       n_tr = int(0.7 n), n_te = int(0.2 n), n_va = n - n_tr - n_te

Rows past the last ETT border are ignored, as in the reference. The scaler is fitted on the
train rows only; every window is kept: a split of T rows has ``T - L - H + 1`` windows, window
``i`` has history rows ``[i, i + L)`` and target rows ``[i + L, i + L + H)``.

Time features (``timeenc=1``): hour/23 - 0.5, weekday/6 - 0.5 (Monday = 0), (day - 1)/30 - 0.5,
(day_of_year - 1)/365 - 0.5, in that order (freq ``"h"``); freq ``"t"`` puts minute/59 - 0.5 first.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar, Union

import numpy as np
import torch

from .._utils import describe

__all__ = [
    "ForecastDataset",
    "ForecastSplit",
    "StandardScaler",
    "WindowBatch",
    "download_ett",
    "load_csv",
    "load_dataset",
    "synthetic_dataset",
    "time_features",
]

Protocol = Literal["auto", "etth", "ettm", "custom"]
Freq = Literal["h", "t"]
PathLike = Union[str, "os.PathLike[str]"]
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)
IndexLike = Union[int, Sequence[int], np.ndarray, torch.Tensor]

ETT_COLUMNS: tuple[str, ...] = ("date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
ETT_NAMES: tuple[str, ...] = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")
ETT_BASE_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/"
_ETT_HOUR_BORDERS = (12 * 30 * 24, 12 * 30 * 24 + 4 * 30 * 24, 12 * 30 * 24 + 8 * 30 * 24)
_ETT_MINUTE_BORDERS = tuple(4 * b for b in _ETT_HOUR_BORDERS)
_TIME_FEATURES = {
    "h": ("hour_of_day", "day_of_week", "day_of_month", "day_of_year"),
    "t": ("minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year"),
}
_SLASH_FORMATS = ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d")


# ----------------------------------------------------------------------------------------------
# Returned data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WindowBatch:
    """A batch of forecasting windows (Time-Series-Library layout).

    Attributes:
        x: ``[B, L, N]`` float32 history (scaled).
        y: ``[B, H, N]`` float32 target, the H rows right after the history (scaled).
        x_mark: ``[B, L, F]`` float32 time features of the history rows.
        y_mark: ``[B, H, F]`` float32 time features of the target rows.
        index: ``[B]`` int64 window indices within the split (stable ids, e.g. for keyed noise).
    """

    x: torch.Tensor
    y: torch.Tensor
    x_mark: torch.Tensor
    y_mark: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True, eq=False)
class ForecastSplit:
    """One split (train, val or test) as contiguous scaled rows plus their time features.

    The val and test splits start L rows before their border, as in the reference, so their
    first window's history reaches back into the previous split.

    Attributes:
        name: ``"train"``, ``"val"`` or ``"test"``.
        values: ``[T, N]`` float32 scaled values.
        marks: ``[T, F]`` float32 time features.
        dates: ``[T]`` numpy ``datetime64[s]`` timestamps (read-only).
        start: index of the split's first row among the source's data rows (0 = first row
            after the header); the split covers source rows ``[start, start + T)``.
        lookback: L.
        horizon: H.
    """

    name: str
    values: torch.Tensor
    marks: torch.Tensor
    dates: np.ndarray
    start: int
    lookback: int
    horizon: int

    def __post_init__(self) -> None:
        v, m = self.values, self.marks
        if not isinstance(v, torch.Tensor) or v.ndim != 2 or not v.is_floating_point():
            raise TypeError(
                f"ForecastSplit.values: expected a float tensor [T, N], got {describe(v)}"
            )
        if not isinstance(m, torch.Tensor) or m.ndim != 2 or m.shape[0] != v.shape[0]:
            raise ValueError(
                f"ForecastSplit.marks: expected a tensor [T, F] with T = {v.shape[0]} rows like "
                f"values, got {describe(m)}"
            )
        _check_window_lengths(self.lookback, self.horizon)
        if v.shape[0] < self.lookback + self.horizon:
            raise ValueError(
                f"ForecastSplit {self.name!r}: {v.shape[0]} rows hold no window of lookback + "
                f"horizon = {self.lookback} + {self.horizon} rows"
            )

    def __len__(self) -> int:
        """Number of windows, ``T - L - H + 1``."""
        return self.values.shape[0] - self.lookback - self.horizon + 1

    @property
    def n_variates(self) -> int:
        return self.values.shape[1]

    def to(self, device: str | torch.device) -> ForecastSplit:
        """The same split with ``values`` and ``marks`` on ``device`` (once, before training)."""
        return dataclasses.replace(self, values=self.values.to(device), marks=self.marks.to(device))

    def windows(self, index: IndexLike) -> WindowBatch:
        """Windows for integer window indices, by one gather (no loop over windows).

        Args:
            index: an int or ``[B]`` integers in ``[0, len(self))``; an int gives B = 1.

        Returns:
            WindowBatch with x ``[B, L, N]``, y ``[B, H, N]``, x_mark ``[B, L, F]``,
            y_mark ``[B, H, F]`` and index ``[B]``.

        Raises:
            TypeError: the indices are not integers.
            IndexError: an index lies outside ``[0, len(self))``.
        """
        return self._gather(self._check_index(index))

    def _gather(self, idx: torch.Tensor) -> WindowBatch:
        """``windows`` for checked int64 indices ``[B]`` on the data's device (no host sync)."""
        L, H, dev = self.lookback, self.horizon, self.values.device
        hist = idx[:, None] + torch.arange(L, device=dev)  # [B, L]
        targ = idx[:, None] + (L + torch.arange(H, device=dev))  # [B, H]
        return WindowBatch(
            x=self.values[hist],  # [B, L, N]
            y=self.values[targ],  # [B, H, N]
            x_mark=self.marks[hist],  # [B, L, F]
            y_mark=self.marks[targ],  # [B, H, F]
            index=idx,
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[WindowBatch]:
        """Iterate over all windows in batches; the last, partial batch is kept.

        Args:
            batch_size: windows per batch (positive int).
            shuffle: visit the windows in a random order (``torch.randperm``) instead of 0, 1, ...
            generator: CPU generator for the shuffle; pass one for a reproducible order.

        Yields:
            WindowBatch with B = batch_size (B <= batch_size for the last batch).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size: expected a positive int, got {describe(batch_size)}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)  # [len]
        order = order.to(self.values.device)
        for lo in range(0, n, batch_size):
            yield self._gather(order[lo : lo + batch_size])  # indices valid by construction

    def _check_index(self, index: IndexLike) -> torch.Tensor:
        bad_type = f"index: expected an int or integer window indices, got {describe(index)}"
        if isinstance(index, bool):
            raise TypeError(bad_type)
        if isinstance(index, torch.Tensor):
            idx = index
        else:
            try:
                idx = torch.as_tensor(np.asarray(index))
            except (TypeError, ValueError) as err:
                raise TypeError(bad_type) from err
        if idx.numel() == 0:
            idx = idx.long()
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"index: expected integer window indices, got {describe(idx)}")
        if idx.ndim > 1:
            raise ValueError(f"index: expected an int or a 1-D sequence [B], got {describe(idx)}")
        idx = idx.reshape(-1).to(device=self.values.device, dtype=torch.long)  # [B]
        if idx.numel() and bool(((idx < 0) | (idx >= len(self))).any()):
            bad = idx[(idx < 0) | (idx >= len(self))][0].item()
            raise IndexError(
                f"{self.name} split: window index {bad} is out of range; expected 0 <= index < "
                f"{len(self)} (= {self.values.shape[0]} rows - lookback {self.lookback} - horizon "
                f"{self.horizon} + 1)"
            )
        return idx


@dataclass(frozen=True, eq=False)
class StandardScaler:
    """Per-variate standardisation ``(v - mean) / std`` fitted on train rows (population std).

    A variate whose train rows are constant gets ``std = 1`` (as scikit-learn does), so it is
    centred but not divided by zero.

    Attributes:
        mean: ``[N]`` float64 (read-only).
        std: ``[N]`` float64 (read-only), the scale actually divided by.
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean = np.array(self.mean, dtype=np.float64)
        std = np.array(self.std, dtype=np.float64)
        if mean.ndim != 1 or std.shape != mean.shape:
            raise ValueError(
                f"StandardScaler: expected mean and std of shape [N], got {mean.shape} and "
                f"{std.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("StandardScaler: mean must be finite and std finite and > 0")
        mean.setflags(write=False)
        std.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def fit(cls, values: np.ndarray) -> StandardScaler:
        """Fit on ``[T, N]`` rows: mean and population std (ddof = 0) per variate, in float64."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2 or v.shape[0] < 1:
            raise ValueError(
                f"StandardScaler.fit: expected values [T, N] with T >= 1, got shape {v.shape}"
            )
        std = v.std(axis=0)
        return cls(mean=v.mean(axis=0), std=np.where(std > 0, std, 1.0))

    @property
    def n_variates(self) -> int:
        return self.mean.shape[0]

    def transform(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Original units -> scaled. ``values [..., N]`` tensor (any device) or array."""
        mean, std = self._params_like(values, "transform")
        return (values - mean) / std

    def inverse_transform(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Scaled -> original units, e.g. forecast samples ``[S, B, H, N]`` back to file units."""
        mean, std = self._params_like(values, "inverse_transform")
        return values * std + mean

    def _params_like(self, values: object, what: str) -> tuple[object, object]:
        if isinstance(values, torch.Tensor):
            shape, like = tuple(values.shape), values
        elif isinstance(values, np.ndarray):
            shape, like = values.shape, None
        else:
            raise TypeError(
                f"StandardScaler.{what}: expected a tensor or array [..., N], got "
                f"{describe(values)}"
            )
        if len(shape) == 0 or shape[-1] != self.n_variates:
            raise ValueError(
                f"StandardScaler.{what}: expected values [..., N] with N = {self.n_variates} "
                f"variates in the last dimension, got shape {tuple(shape)}"
            )
        if like is None:
            return self.mean, self.std
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        return (
            torch.from_numpy(self.mean.copy()).to(dtype=dtype, device=like.device),  # [N]
            torch.from_numpy(self.std.copy()).to(dtype=dtype, device=like.device),  # [N]
        )


@dataclass(frozen=True, eq=False)
class ForecastDataset:
    """Train / val / test splits of one source, with the scaler that maps back to its units.

    Attributes:
        train: rows ``[0, border_1)``.
        val: rows ``[border_1 - L, border_2)``.
        test: rows ``[border_2 - L, border_3)``.
        scaler: fitted on the train rows; ``scaler.inverse_transform`` maps forecasts ``[..., N]``
            back to original units.
        columns: the N variate names, in file order.
        time_features: the F time-feature names, in ``marks`` order.
        lookback: L.
        horizon: H.
        freq: ``"h"`` or ``"t"``, the time-feature set.
        protocol: ``"etth"``, ``"ettm"`` or ``"custom"`` (the synthetic data use ``"custom"``).
        source: the CSV's path, or a description of the synthetic generator and its seed.
    """

    train: ForecastSplit
    val: ForecastSplit
    test: ForecastSplit
    scaler: StandardScaler
    columns: tuple[str, ...]
    time_features: tuple[str, ...]
    lookback: int
    horizon: int
    freq: str
    protocol: str
    source: str

    @property
    def n_variates(self) -> int:
        """N."""
        return len(self.columns)

    @property
    def n_marks(self) -> int:
        """F."""
        return len(self.time_features)

    def splits(self) -> tuple[ForecastSplit, ForecastSplit, ForecastSplit]:
        """``(train, val, test)``."""
        return self.train, self.val, self.test


# ----------------------------------------------------------------------------------------------
# Time features
# ----------------------------------------------------------------------------------------------


def time_features(dates: np.ndarray, *, freq: Freq = "h") -> np.ndarray:
    """Time-Series-Library ``timeenc=1`` features, each in [-0.5, 0.5].

    Args:
        dates: ``[T]`` numpy datetime64 (any unit; wall-clock time, no time zone).
        freq: ``"h"`` -> (hour/23, weekday/6, (day-1)/30, (doy-1)/365) each minus 0.5;
            ``"t"`` -> minute/59 - 0.5 first, then the four above.

    Returns:
        ``[T, F]`` float32 with F = 4 (``"h"``) or 5 (``"t"``).
    """
    if freq not in _TIME_FEATURES:
        raise ValueError(f"freq: expected 'h' (hourly) or 't' (minutely), got {freq!r}")
    d = np.asarray(dates)
    if not np.issubdtype(d.dtype, np.datetime64) or d.ndim != 1:
        raise TypeError(
            f"dates: expected a 1-D numpy datetime64 array [T], got {d.dtype} of shape {d.shape}"
        )
    sec = d.astype("datetime64[s]")
    day = sec.astype("datetime64[D]")
    minute = (sec.astype("datetime64[m]") - sec.astype("datetime64[h]")).astype(np.int64)
    hour = (sec.astype("datetime64[h]") - day).astype(np.int64)
    weekday = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    mday = (day - day.astype("datetime64[M]")).astype(np.int64) + 1
    yday = (day - day.astype("datetime64[Y]")).astype(np.int64) + 1
    cols = [hour / 23.0 - 0.5, weekday / 6.0 - 0.5, (mday - 1) / 30.0 - 0.5]
    cols.append((yday - 1) / 365.0 - 0.5)
    if freq == "t":
        cols.insert(0, minute / 59.0 - 0.5)
    return np.stack(cols, axis=1).astype(np.float32)  # [T, F]


# ----------------------------------------------------------------------------------------------
# CSV reading
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    columns: tuple[str, ...]  # the N variate names, in file order
    dates: np.ndarray  # [n] datetime64[s]
    values: np.ndarray  # [n, N] float64


def _parse_date(text: str) -> datetime | None:
    s = text.strip()
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        dt = None
        for fmt in _SLASH_FORMATS:
            try:
                dt = datetime.strptime(s, fmt)
                break
            except ValueError:
                continue
    if dt is not None and dt.tzinfo is not None:
        dt = dt.replace(tzinfo=None)  # wall-clock fields, as the time features read them
    return dt


def _read_table(path: PathLike, *, ett: bool) -> _Table:
    """Read a CSV with a ``date`` column; every other column is a variate (file order).

    ``ett=True`` demands exactly the ETT header. Blank lines are skipped. Raises ValueError
    naming the file, the line and the column of the first bad cell.
    """
    p = str(path)
    rows: list[list[str]] = []
    lines: list[int] = []
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header: list[str] | None = None
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header = [c.strip() for c in row]
                header_line = reader.line_num
                continue
            rows.append(row)
            lines.append(reader.line_num)
    if header is None:
        raise ValueError(f"{p}: the file is empty; expected a header line with a 'date' column")
    if ett:
        if tuple(header) != ETT_COLUMNS:
            missing = [c for c in ETT_COLUMNS if c not in header]
            extra = [c for c in header if c not in ETT_COLUMNS]
            what = []
            if missing:
                what.append(f"missing column(s) {', '.join(map(repr, missing))}")
            if extra:
                what.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
            if not what:
                what.append("the columns are out of order or repeated")
            raise ValueError(
                f"{p}: line {header_line} (header): {'; '.join(what)}; an ETT file has exactly the "
                f"columns {','.join(ETT_COLUMNS)} in this order (got {','.join(header)}). "
                f"For another layout pass protocol='custom'."
            )
    else:
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            raise ValueError(
                f"{p}: line {header_line} (header): repeated column name(s) "
                f"{', '.join(map(repr, dupes))}; expected one column per name"
            )
        if "date" not in header:
            raise ValueError(
                f"{p}: line {header_line} (header): no 'date' column; expected a column named "
                f"'date' plus one column per variate (got {','.join(header)})"
            )
        if len(header) < 2:
            raise ValueError(
                f"{p}: line {header_line} (header): only a 'date' column; expected at least one "
                f"variate column"
            )
    if not rows:
        raise ValueError(f"{p}: no data rows after the header on line {header_line}")

    n_cols = len(header)
    for row, line in zip(rows, lines):
        if len(row) != n_cols:
            raise ValueError(
                f"{p}: line {line}: {len(row)} cell(s), expected {n_cols} (one per header "
                f"column: {','.join(header)})"
            )
    di = header.index("date")
    vcols = [j for j in range(n_cols) if j != di]
    names = tuple(header[j] for j in vcols)

    parsed: list[datetime] = []
    for row, line in zip(rows, lines):
        dt = _parse_date(row[di])
        if dt is None:
            raise ValueError(
                f"{p}: line {line}, column 'date': cannot parse {row[di]!r} as a timestamp; "
                f"expected ISO 8601 such as '2016-07-01 00:00:00' (or 'YYYY/MM/DD HH:MM:SS')"
            )
        parsed.append(dt)
    dates = np.array(parsed, dtype="datetime64[s]")  # [n]
    later = dates[1:] > dates[:-1]
    if not later.all():
        k = int(np.argmin(later)) + 1
        raise ValueError(
            f"{p}: line {lines[k]}, column 'date': {rows[k][di]!r} is not later than the previous "
            f"row's {rows[k - 1][di]!r}; expected strictly increasing timestamps (sort the file "
            f"by date)"
        )

    cells = [[row[j] for j in vcols] for row in rows]
    try:
        values = np.array(cells, dtype=np.float64)  # [n, N]
    except ValueError:
        values = None
    if values is None or not np.isfinite(values).all():
        parsed_values = []
        for row, line in zip(cells, lines):
            out = []
            for name, cell in zip(names, row):
                try:
                    v = float(cell)
                except ValueError:
                    v = math.nan
                if not math.isfinite(v):
                    what = "an empty cell" if not cell.strip() else repr(cell)
                    raise ValueError(
                        f"{p}: line {line}, column {name!r}: {what}; expected a finite number "
                        f"(missing values are not filled in; clean or impute the file first)"
                    )
                out.append(v)
            parsed_values.append(out)
        values = np.array(parsed_values, dtype=np.float64)  # [n, N]
    return _Table(columns=names, dates=dates, values=values)


# ----------------------------------------------------------------------------------------------
# Splitting
# ----------------------------------------------------------------------------------------------


def _check_window_lengths(lookback: object, horizon: object) -> None:
    for name, v in (("lookback", lookback), ("horizon", horizon)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected a positive int, got {describe(v)}")
        if v < 1:
            raise ValueError(f"{name}: expected a positive int (time steps), got {v}")


def _custom_borders(n: int, lookback: int) -> tuple[tuple[int, int], ...]:
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    num_val = n - num_train - num_test
    val = (num_train - lookback, num_train + num_val)
    return ((0, num_train), val, (n - num_test - lookback, n))


def _borders_ok(borders: Sequence[tuple[int, int]], lookback: int, horizon: int) -> bool:
    return all(lo >= 0 and hi - lo >= lookback + horizon for lo, hi in borders)


def _split_borders(
    n: int, protocol: str, lookback: int, horizon: int, path: str
) -> tuple[tuple[int, int], ...]:
    names = ("train", "val", "test")
    if protocol in ("etth", "ettm"):
        b1, b2, b3 = _ETT_HOUR_BORDERS if protocol == "etth" else _ETT_MINUTE_BORDERS
        label = "ETTh (hourly)" if protocol == "etth" else "ETTm (15-minute)"
        if n < b3:
            raise ValueError(
                f"{path}: too few rows: {n} data rows; the {label} protocol uses rows "
                f"[0, {b3}), so it expects at least {b3} data rows (a truncated file?)"
            )
        borders = ((0, b1), (b1 - lookback, b2), (b2 - lookback, b3))
        for name, (lo, hi) in zip(names, borders):
            if lo < 0 or hi - lo < lookback + horizon:
                raise ValueError(
                    f"{path}: lookback={lookback}, horizon={horizon} leave the {name} split of the "
                    f"{label} protocol (rows [{lo}, {hi})) without a window; expected "
                    f"lookback + horizon <= {b1} and horizon <= {b2 - b1}"
                )
        return borders
    borders = _custom_borders(n, lookback)
    if not _borders_ok(borders, lookback, horizon):
        need = n + 1
        while not _borders_ok(_custom_borders(need, lookback), lookback, horizon):
            need += 1
        name, (lo, hi) = next(
            (nm, b) for nm, b in zip(names, borders) if b[0] < 0 or b[1] - b[0] < lookback + horizon
        )
        raise ValueError(
            f"{path}: too few rows: {n} data rows give the 70/10/20 {name} split rows "
            f"[{lo}, {hi}), fewer than lookback + horizon = {lookback} + {horizon}; expected at "
            f"least {need} data rows for these window lengths (or shorter lookback/horizon)"
        )
    return borders


def _build(
    dates: np.ndarray,
    raw: np.ndarray,
    *,
    columns: tuple[str, ...],
    borders: tuple[tuple[int, int], ...],
    lookback: int,
    horizon: int,
    freq: str,
    protocol: str,
    source: str,
) -> ForecastDataset:
    """Fit the scaler on the train rows, scale everything, cut the splits."""
    scaler = StandardScaler.fit(raw[borders[0][0] : borders[0][1]])
    scaled = scaler.transform(raw[: borders[-1][1]]).astype(np.float32)  # [n, N]
    marks = time_features(dates[: borders[-1][1]], freq=freq)  # [n, F]
    splits = []
    for name, (lo, hi) in zip(("train", "val", "test"), borders):
        d = dates[lo:hi].copy()
        d.setflags(write=False)
        splits.append(
            ForecastSplit(
                name=name,
                values=torch.from_numpy(scaled[lo:hi].copy()),  # [T, N]
                marks=torch.from_numpy(marks[lo:hi].copy()),  # [T, F]
                dates=d,
                start=lo,
                lookback=lookback,
                horizon=horizon,
            )
        )
    return ForecastDataset(
        train=splits[0],
        val=splits[1],
        test=splits[2],
        scaler=scaler,
        columns=tuple(columns),
        time_features=_TIME_FEATURES[freq],
        lookback=lookback,
        horizon=horizon,
        freq=freq,
        protocol=protocol,
        source=source,
    )


def _detect_protocol(path: Path) -> str:
    stem = path.name.lower()
    if stem.startswith("etth"):
        return "etth"
    if stem.startswith("ettm"):
        return "ettm"
    return "custom"


# ----------------------------------------------------------------------------------------------
# Public loaders
# ----------------------------------------------------------------------------------------------


def load_csv(
    path: PathLike,
    *,
    lookback: int = 96,
    horizon: int = 96,
    protocol: Protocol = "auto",
    freq: Freq | None = None,
) -> ForecastDataset:
    """Load an ETT or custom CSV with the Time-Series-Library splits and a train-fitted scaler.

    Args:
        path: the CSV file. It needs a ``date`` column; every other column is a variate, in
            file order (unlike the reference's ``Dataset_Custom``, no target column is moved last).
        lookback: L, history length in rows.
        horizon: H, forecast length in rows.
        protocol: ``"auto"`` picks ``"etth"`` / ``"ettm"`` for file names starting with
            ETTh / ETTm (case-insensitive) and ``"custom"`` otherwise. ETT protocols demand the
            exact ETT header and at least 14400 (hourly) or 57600 (15-minute) rows, and ignore
            the rows after; ``"custom"`` splits all rows 70/10/20.
        freq: time-feature set; default ``"t"`` for ``"ettm"`` and ``"h"`` otherwise.

    Returns:
        ForecastDataset with float32 splits; ``len(split)`` windows each.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a bad header, timestamp or cell (naming file, line and column), too few
            rows for the protocol and window lengths, or bad ``protocol`` / ``freq``.
        TypeError: ``lookback`` / ``horizon`` are not ints.
    """
    _check_window_lengths(lookback, horizon)
    p = Path(path)
    if protocol not in ("auto", "etth", "ettm", "custom"):
        raise ValueError(f"protocol: expected 'auto', 'etth', 'ettm' or 'custom', got {protocol!r}")
    if freq is not None and freq not in _TIME_FEATURES:
        raise ValueError(f"freq: expected None, 'h' (hourly) or 't' (minutely), got {freq!r}")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    proto = _detect_protocol(p) if protocol == "auto" else protocol
    table = _read_table(p, ett=proto in ("etth", "ettm"))
    borders = _split_borders(len(table.dates), proto, int(lookback), int(horizon), str(p))
    return _build(
        table.dates,
        table.values,
        columns=table.columns,
        borders=borders,
        lookback=int(lookback),
        horizon=int(horizon),
        freq=freq or ("t" if proto == "ettm" else "h"),
        protocol=proto,
        source=str(p),
    )


def synthetic_dataset(
    *,
    n_steps: int = 6000,
    n_variates: int = 7,
    lookback: int = 96,
    horizon: int = 96,
    seed: int = 0,
) -> ForecastDataset:
    """A built-in hourly multivariate series that needs no file (70/10/20 split, like a custom CSV).

    Per variate n (hour-of-day h, weekday w, step t, all from the timestamps, which start at
    2020-01-01 00:00:00)::

        z_n(t) = daily_n(h) + weekly_n(w, t) + trend_n(t) + sum_k loading_nk f_k(t)
                 + sigma_n(h, t) e_n(t) + gamma_n z_{n-1}(t - lag_n)          (n >= 1)
        value_n(t) = level_n + scale_n z_n(t)

    - ``f_k``: K = 2 shared latent AR(1) factors (coefficients 0.98 and 0.85, unit variance):
      cross-variate coupling.
    - ``gamma_n z_{n-1}(t - lag_n)``: lagged influence of the previous variate (1 to 6 hours).
    - ``sigma_n``: heteroscedastic, about 3x larger mid-afternoon than at night (9x the variance)
      and growing with the first factor's level.
    - ``e_n``: skewed shocks, a standardised mix of Gaussian (20% of the variance) and centred
      exponential (80%) draws, skewness about 1.4.
    - daily: two harmonics; weekly: a weekend dip plus a weekly harmonic; trend: a slow drift
      plus a slow oscillation over the whole series.

    Args:
        n_steps: number of hourly rows (the default 6000 is about 8 months).
        n_variates: N.
        lookback: L.
        horizon: H.
        seed: seeds a ``numpy.random.Generator``; the data are a pure function of the arguments.

    Returns:
        ForecastDataset (protocol ``"custom"``, freq ``"h"``), columns ``var0 ... var{N-1}``.
    """
    _check_window_lengths(lookback, horizon)
    for name, v in (("n_steps", n_steps), ("n_variates", n_variates), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {describe(v)}")
    if n_variates < 1:
        raise ValueError(f"n_variates: expected a positive int, got {n_variates}")
    source = f"synthetic(n_steps={n_steps}, n_variates={n_variates}, seed={seed})"
    borders = _split_borders(int(n_steps), "custom", int(lookback), int(horizon), source)
    dates, raw = _synthetic_values(int(n_steps), int(n_variates), int(seed))
    return _build(
        dates,
        raw,
        columns=tuple(f"var{n}" for n in range(n_variates)),
        borders=borders,
        lookback=int(lookback),
        horizon=int(horizon),
        freq="h",
        protocol="custom",
        source=source,
    )


def _synthetic_values(T: int, N: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps ``[T]`` and raw values ``[T, N]`` float64 of the synthetic series."""
    rng = np.random.default_rng(seed)
    dates = np.datetime64("2020-01-01T00:00:00", "s") + np.arange(T) * np.timedelta64(1, "h")  # [T]
    day = dates.astype("datetime64[D]")
    hour = (dates.astype("datetime64[h]") - day).astype(np.int64).astype(np.float64)  # [T]
    weekday = (day.astype(np.int64) + 3) % 7  # [T]
    t = np.arange(T, dtype=np.float64)  # [T]

    # shared latent AR(1) factors with unit stationary variance
    phi = np.array([0.98, 0.85])  # [K]
    innov = rng.standard_normal((T, 2)) * np.sqrt(1.0 - phi**2)  # [T, K]
    f = np.empty((T, 2))
    f[0] = rng.standard_normal(2)
    for i in range(1, T):
        f[i] = phi * f[i - 1] + innov[i]

    def col(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, N)[None, :]  # [1, N]

    ang = 2.0 * np.pi * hour[:, None] / 24.0  # [T, 1]
    phase = 0.4 * rng.standard_normal(N)[None, :] - 0.5 * np.pi  # [1, N]
    daily = col(0.8, 1.5) * np.sin(ang + phase) + col(0.1, 0.4) * np.sin(2.0 * ang + 2.0 * phase)
    weekly = -col(0.3, 0.7) * (weekday[:, None] >= 5) + col(0.1, 0.3) * np.sin(
        2.0 * np.pi * t[:, None] / 168.0 + col(0.0, 2.0 * np.pi)
    )
    u = t[:, None] / max(T - 1, 1)  # [T, 1]
    trend = rng.normal(0.0, 0.8, N)[None, :] * u + col(0.2, 0.5) * np.sin(
        2.0 * np.pi * u * 1.5 + col(0.0, 2.0 * np.pi)
    )
    loadings = rng.normal(0.0, 0.6, (N, 2)) + np.array([0.6, 0.0])  # [N, K]
    latent = f @ loadings.T  # [T, N]

    daytime = 0.5 * (1.0 - np.cos(2.0 * np.pi * (hour[:, None] - 3.0) / 24.0))  # [T, 1] peak 15:00
    sigma = col(0.3, 0.5) * (0.5 + daytime) * np.exp(0.2 * f[:, :1])  # [T, N]
    k = 1.0
    shocks = np.sqrt(0.2) * rng.standard_normal((T, N)) + np.sqrt(0.8) * (
        rng.gamma(k, 1.0, (T, N)) - k
    ) / np.sqrt(k)  # [T, N]

    base = daily + weekly + trend + latent + sigma * shocks  # [T, N]
    gamma = rng.uniform(0.3, 0.6, N)
    lags = rng.integers(1, 7, N)
    z = base.copy()
    for n in range(1, N):  # loop over variates; each step is vectorised over time
        prev = np.concatenate([np.full(lags[n], z[0, n - 1]), z[: T - lags[n], n - 1]])  # [T]
        z[:, n] += gamma[n] * prev
    level, scale = col(5.0, 50.0), col(0.5, 5.0)
    return dates, level + scale * z  # [T, N]


# ----------------------------------------------------------------------------------------------
# Locating and downloading ETT files
# ----------------------------------------------------------------------------------------------


def _cache_dir(cache_dir: PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DIFFSAMPLE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "diffsample"


def _ett_name(name: str) -> str:
    stem = name[:-4] if isinstance(name, str) and name.endswith(".csv") else name
    if stem not in ETT_NAMES:
        raise ValueError(f"name: expected one of {', '.join(ETT_NAMES)}, got {describe(name)}")
    return stem


def download_ett(
    name: str = "ETTh1",
    *,
    cache_dir: PathLike | None = None,
    base_url: str = ETT_BASE_URL,
    timeout: float = 60.0,
) -> Path:
    """Fetch a public ETT CSV into the cache once; later calls return the cached file.

    The file is written to a temporary file beside the target, checked (exact ETT header,
    parsable dates and numbers, enough rows for the protocol), then moved into place with
    ``os.replace``: an interrupted or bad download leaves nothing behind.

    Args:
        name: ``"ETTh1"``, ``"ETTh2"``, ``"ETTm1"`` or ``"ETTm2"`` (``.csv`` optional).
        cache_dir: where to keep it; default ``$DIFFSAMPLE_CACHE``, else ``~/.cache/diffsample``.
            The file lands in ``<cache_dir>/ETT-small/<name>.csv``.
        base_url: folder URL the file name is appended to (``file://`` URLs work too).
        timeout: seconds for the connection.

    Returns:
        Path of the cached CSV.

    Raises:
        ConnectionError: the URL could not be fetched (the message names it).
        ValueError: an unknown name, or the fetched file is not a valid ETT CSV.
    """
    stem = _ett_name(name)
    folder = _cache_dir(cache_dir) / "ETT-small"
    target = folder / f"{stem}.csv"
    if target.is_file():
        return target
    url = base_url if base_url.endswith("/") else base_url + "/"
    url += f"{stem}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError) as err:
                raise ConnectionError(
                    f"could not download {url}: {getattr(err, 'reason', err)}. Check the network "
                    f"(or base_url), or download the file yourself and pass its path"
                ) from err
            with resp:
                while True:
                    try:
                        chunk = resp.read(1 << 20)
                    except OSError as err:
                        raise ConnectionError(f"download of {url} broke off: {err}") from err
                    if not chunk:
                        break
                    out.write(chunk)
        try:
            table = _read_table(tmp, ett=True)
            _split_borders(len(table.dates), _detect_protocol(target), 1, 1, str(tmp))
        except ValueError as err:
            raise ValueError(
                f"downloaded {url} is not a valid ETT CSV (nothing was cached): "
                + str(err).replace(str(tmp), "the file")
            ) from None
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _find_ett(stem: str) -> Path | None:
    dirs = []
    if os.environ.get("DIFFSAMPLE_ETT_DIR"):
        dirs.append(Path(os.environ["DIFFSAMPLE_ETT_DIR"]))
    dirs.append(_cache_dir(None) / "ETT-small")
    for d in dirs:
        if (d / f"{stem}.csv").is_file():
            return d / f"{stem}.csv"
    return None


def load_dataset(
    source: PathLike | None = None,
    *,
    lookback: int = 96,
    horizon: int = 96,
    protocol: Protocol = "auto",
    freq: Freq | None = None,
    download: bool = False,
) -> ForecastDataset:
    """One entry point: the synthetic default, a CSV path, or an ETT name.

    Args:
        source: ``None`` or ``"synthetic"`` -> ``synthetic_dataset(lookback=..., horizon=...)``;
            a path to an existing CSV -> ``load_csv``; an ETT name (``"ETTh1"``, ``"ETTm2"``, ...)
            -> that file from ``$DIFFSAMPLE_ETT_DIR`` or the download cache.
        lookback: L.
        horizon: H.
        protocol: passed to ``load_csv``.
        freq: passed to ``load_csv``.
        download: for an ETT name not found locally, fetch it with ``download_ett`` (off by
            default: nothing touches the network unless asked).

    Returns:
        ForecastDataset.

    Raises:
        FileNotFoundError: neither a file nor a locally available ETT name (the message says
            where it looked and how to fetch it).
    """
    if source is None or (isinstance(source, str) and source == "synthetic"):
        return synthetic_dataset(lookback=lookback, horizon=horizon)
    p = Path(source)
    if p.is_file():
        return load_csv(p, lookback=lookback, horizon=horizon, protocol=protocol, freq=freq)
    stem = p.name.removesuffix(".csv")
    if isinstance(source, str) and stem in ETT_NAMES and str(p.parent) == ".":
        found = _find_ett(stem) or (download_ett(stem) if download else None)
        if found is None:
            env = os.environ.get("DIFFSAMPLE_ETT_DIR")
            where = [f"$DIFFSAMPLE_ETT_DIR={env}"] if env else []
            where.append(str(_cache_dir(None) / "ETT-small"))
            raise FileNotFoundError(
                f"{stem}.csv not found (looked in {', '.join(where)}); pass download=True, call "
                f"download_ett({stem!r}), set DIFFSAMPLE_ETT_DIR, or pass the file's path"
            )
        return load_csv(found, lookback=lookback, horizon=horizon, protocol=protocol, freq=freq)
    raise FileNotFoundError(
        f"source: {str(source)!r} is not a file; expected None (synthetic data), a CSV path, "
        f"or one of {', '.join(ETT_NAMES)}"
    )
