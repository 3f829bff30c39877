"""The Time-Series-Library split borders, and cutting a scaled dataset out of raw rows.

Dimensions: n data rows of the source, N variates, F time features, L lookback, H horizon.

Protocol (Time-Series-Library ``Dataset_ETT_hour`` / ``Dataset_ETT_minute`` / ``Dataset_Custom``):

    ETTh (hourly)      train [0, 8640)        val [8640 - L, 11520)     test [11520 - L, 14400)
    ETTm (15-minute)   train [0, 34560)       val [34560 - L, 46080)    test [46080 - L, 57600)
    custom (70/10/20)  train [0, n_tr)        val [n_tr - L, n_tr + n_va)  test [n - n_te - L, n)
                       n_tr = int(0.7 n), n_te = int(0.2 n), n_va = n - n_tr - n_te

Rows past the last ETT border are ignored, as in the reference. The scaler is fitted on the
train rows only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import torch

from ..._utils import check_choice, check_path
from .batches import ForecastDataset, ForecastSplit, check_window_lengths
from .reader import PathLike, read_table
from .scaler import StandardScaler
from .timefeatures import TIME_FEATURE_NAMES, Freq, time_features

__all__ = [
    "ETT_HOUR_BORDERS",
    "ETT_MINUTE_BORDERS",
    "Borders",
    "Protocol",
    "build_dataset",
    "custom_borders",
    "custom_min_rows",
    "detect_protocol",
    "load_csv",
    "split_borders",
    "values_digest",
]

Protocol = Literal["auto", "etth", "ettm", "custom"]
Borders: TypeAlias = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (lo, hi) x 3

# 12 / 4 / 4 months of 30 days: the reference's borders (ETTh1 holds 17420 rows; the rest unused)
ETT_HOUR_BORDERS = (12 * 30 * 24, 12 * 30 * 24 + 4 * 30 * 24, 12 * 30 * 24 + 8 * 30 * 24)
ETT_MINUTE_BORDERS = tuple(4 * b for b in ETT_HOUR_BORDERS)
_SPLIT_NAMES = ("train", "val", "test")


def detect_protocol(path: Path) -> Literal["etth", "ettm", "custom"]:
    """``"etth"`` / ``"ettm"`` for a file name starting with ETTh / ETTm, else ``"custom"``."""
    stem = path.name.lower()
    if stem.startswith("etth"):
        return "etth"
    if stem.startswith("ettm"):
        return "ettm"
    return "custom"


def custom_borders(n: int, lookback: int) -> Borders:
    """The 70/10/20 borders of ``Dataset_Custom`` for n rows (they may be empty or negative)."""
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    num_val = n - num_train - num_test
    val = (num_train - lookback, num_train + num_val)
    return ((0, num_train), val, (n - num_test - lookback, n))


def _borders_ok(borders: Borders, lookback: int, horizon: int) -> bool:
    return all(lo >= 0 and hi - lo >= lookback + horizon for lo, hi in borders)


# For n = 10 q + r rows (r in 0..9), exactly: int(0.7 n) = 7 q + _TRAIN[r],
# int(0.2 n) = 2 q + _TEST[r], and the validation rows n - int(0.7 n) - int(0.2 n) = q + _VAL[r]
_TRAIN = (0, 0, 1, 2, 2, 3, 4, 4, 5, 6)
_TEST = (0, 0, 0, 0, 0, 1, 1, 1, 1, 1)
_VAL = (0, 1, 1, 1, 2, 1, 1, 2, 2, 2)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def custom_min_rows(n: int, lookback: int, horizon: int) -> int:
    """The fewest rows above ``n`` whose 70/10/20 split (:func:`custom_borders`) gives every
    split a window, computed, not searched (one step a row took seconds per million rows of
    lookback).

    A split needs int(0.7 m) >= L + H train rows and int(0.2 m) >= H test and m - int(0.7 m) -
    int(0.2 m) >= H validation rows (the validation and test splits reach L rows back). For
    m = 10 q + r each count is linear in q, so each residue r has a smallest q. Python's
    ``int(m * 0.7)`` falls one short of 7 m / 10 for some multiples of 10 (90 * 0.7 =
    62.99...), which can move that q by a step or two: the few q between what exact and what
    one-short counts allow are tried with :func:`custom_borders` itself.
    """
    need = lookback + horizon
    best = None
    for r in range(10):
        q_min = max(0, _ceil_div(n + 1 - r, 10))
        # counts at most 1 (train, test) short, so validation at most 2 long: q can be no less
        lo = max(
            q_min,
            _ceil_div(need - _TRAIN[r] - 1, 7),
            _ceil_div(horizon - _TEST[r] - 1, 2),
            horizon - _VAL[r] - 2,
        )
        # counts at most 1 short, validation never short: q this large always does
        hi = max(
            q_min,
            _ceil_div(need - _TRAIN[r] + 1, 7),
            _ceil_div(horizon - _TEST[r] + 1, 2),
            horizon - _VAL[r],
        )
        for q in range(lo, hi + 1):
            m = 10 * q + r
            if _borders_ok(custom_borders(m, lookback), lookback, horizon):
                best = m if best is None else min(best, m)
                break
    assert best is not None  # q = hi always does
    return best


def split_borders(n: int, protocol: str, lookback: int, horizon: int, path: str) -> Borders:
    """``((lo, hi), ...)`` of train, val and test for n rows, each holding at least one window.

    Args:
        n: data rows of the source.
        protocol: ``"etth"``, ``"ettm"`` or ``"custom"``.
        lookback: L.
        horizon: H.
        path: what the messages call the source.

    Raises:
        ValueError: too few rows for the protocol, or a split without a window (the message
            says how many rows, or which window lengths, would do).
    """
    if protocol in ("etth", "ettm"):
        b1, b2, b3 = ETT_HOUR_BORDERS if protocol == "etth" else ETT_MINUTE_BORDERS
        label = "ETTh (hourly)" if protocol == "etth" else "ETTm (15-minute)"
        if n < b3:
            raise ValueError(
                f"{path}: too few rows: {n} data rows; the {label} protocol uses rows "
                f"[0, {b3}), so it expects at least {b3} data rows (a truncated file?)"
            )
        ett: Borders = ((0, b1), (b1 - lookback, b2), (b2 - lookback, b3))
        for name, (lo, hi) in zip(_SPLIT_NAMES, ett, strict=True):
            if lo < 0 or hi - lo < lookback + horizon:
                raise ValueError(
                    f"{path}: lookback={lookback}, horizon={horizon} leave the {name} split of the "
                    f"{label} protocol (rows [{lo}, {hi})) without a window; expected "
                    f"lookback + horizon <= {b1} and horizon <= {b2 - b1}"
                )
        return ett
    borders = custom_borders(n, lookback)
    if not _borders_ok(borders, lookback, horizon):
        need = custom_min_rows(n, lookback, horizon)
        name, (lo, hi) = next(
            (nm, b)
            for nm, b in zip(_SPLIT_NAMES, borders, strict=True)
            if b[0] < 0 or b[1] - b[0] < lookback + horizon
        )
        raise ValueError(
            f"{path}: too few rows: {n} data rows give the 70/10/20 {name} split rows "
            f"[{lo}, {hi}), fewer than lookback + horizon = {lookback} + {horizon}; expected at "
            f"least {need} data rows for these window lengths (or shorter lookback/horizon)"
        )
    return borders


def values_digest(dates: np.ndarray, raw: np.ndarray) -> str:
    """sha256 (hex) of the rows' values as float64 ``[n, N]`` then their timestamps as int64
    seconds ``[n]``, both little-endian and row-major: parsing a CSV's text gives the same
    float64 on every machine, so the same rows give the same digest anywhere."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(raw, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(dates.astype("datetime64[s]").astype("<i8")).tobytes())
    return h.hexdigest()


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _refuse_beyond_float32(
    bad: np.ndarray,
    raw: np.ndarray,
    columns: tuple[str, ...],
    lines: np.ndarray | None,
    source: str,
    scaler: StandardScaler | None = None,
) -> None:
    """ValueError naming the source, the line (or row) and the column of the first True in
    ``bad`` ``[n, N]``: a value of ``raw`` ``[n, N]`` beyond float32, the precision the
    forecaster computes in, as read (``scaler`` None) or after scaling by ``scaler``."""
    if not bad.any():
        return
    i, j = (int(k) for k in np.argwhere(bad)[0])
    where = f"line {int(lines[i])}" if lines is not None else f"row {i}"
    after = (
        ""
        if scaler is None
        else f" after scaling by the train rows' mean {scaler.mean[j]:.6g} and std "
        f"{scaler.std[j]:.6g}"
    )
    raise ValueError(
        f"{source}: {where}, column {columns[j]!r}: {float(raw[i, j])!r} is beyond float32's "
        f"range (|x| <= {_FLOAT32_MAX:.4g}){after}; expected values the forecaster can hold in "
        "float32 (a misplaced exponent? fix the cell or rescale the column)"
    )


def build_dataset(
    dates: np.ndarray,
    raw: np.ndarray,
    *,
    columns: tuple[str, ...],
    borders: Borders,
    lookback: int,
    horizon: int,
    freq: Freq,
    protocol: str,
    source: str,
    lines: np.ndarray | None = None,
    digest: bool = True,
) -> ForecastDataset:
    """Fit the scaler on the train rows, scale everything, cut the splits.

    Every value the splits use is checked to be finite in float32 as read and after scaling,
    and refused with the source, line (or row) and column named.

    Args:
        dates: ``[n]`` datetime64 timestamps.
        raw: ``[n, N]`` float64 values in original units.
        columns: the N variate names.
        borders: from ``split_borders``.
        lookback: L.
        horizon: H.
        freq: the time-feature set.
        protocol: recorded in the dataset.
        source: recorded in the dataset.
        lines: ``[n]`` each row's line in the file, for messages; None: rows are named by
            index.
        digest: record :func:`values_digest` of the rows the splits use in the dataset (a
            file's data); False leaves it None (the synthetic generator's, a pure function
            of the arguments its source records).

    Returns:
        ForecastDataset with float32 splits (copies, so no split keeps the others alive).
    """
    end = borders[-1][1]
    used = raw[:end]  # [n, N]: the rows the splits use
    with np.errstate(invalid="ignore"):  # NaN compares False: refused too
        _refuse_beyond_float32(~(np.abs(used) <= _FLOAT32_MAX), used, columns, lines, source)
    # values within float32 keep the float64 sums of squares far from overflow
    scaler = StandardScaler.fit(used[borders[0][0] : borders[0][1]])
    with np.errstate(over="ignore"):  # a cast to inf is found and named next
        scaled = scaler.transform(used).astype(np.float32)  # [n, N]
    _refuse_beyond_float32(~np.isfinite(scaled), used, columns, lines, source, scaler)
    marks = time_features(dates[:end], freq=freq)  # [n, F]
    splits = []
    for name, (lo, hi) in zip(_SPLIT_NAMES, borders, strict=True):
        d = dates[lo:hi].copy()  # [T]
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
        digest=values_digest(dates[:end], used) if digest else None,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        scaler=scaler,
        columns=tuple(columns),
        time_features=TIME_FEATURE_NAMES[freq],
        lookback=lookback,
        horizon=horizon,
        freq=freq,
        protocol=protocol,
        source=source,
    )


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
        ForecastDataset with splits values ``[T, N]`` and marks ``[T, F]`` (float32);
        ``len(split)`` windows each.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a bad header, timestamp or cell (naming file, line and column), too few
            rows for the protocol and window lengths, ``lookback`` / ``horizon`` < 1, or an
            unknown ``protocol`` / ``freq``.
        TypeError: ``lookback`` / ``horizon`` are not integers, ``protocol`` / ``freq`` not
            strings, or ``path`` not a path.
    """
    lookback, horizon = check_window_lengths(lookback, horizon)
    p = check_path("path", path)
    check_choice("protocol", protocol, Protocol)
    if freq is not None:
        check_choice("freq", freq, Freq)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    proto = detect_protocol(p) if protocol == "auto" else protocol
    table = read_table(p, ett=proto in ("etth", "ettm"))
    return build_dataset(
        table.dates,
        table.values,
        columns=table.columns,
        borders=split_borders(len(table.dates), proto, lookback, horizon, str(p)),
        lookback=lookback,
        horizon=horizon,
        freq=freq or ("t" if proto == "ettm" else "h"),
        protocol=proto,
        source=os.path.abspath(p),  # where it came from (a reload never opens it unasked)
        lines=table.lines,
    )
