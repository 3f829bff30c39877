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
    "detect_protocol",
    "load_csv",
    "split_borders",
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
        # the borders move with n in steps of int(0.7 n), int(0.2 n): search, not a formula
        need = n + 1
        while not _borders_ok(custom_borders(need, lookback), lookback, horizon):
            need += 1
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
) -> ForecastDataset:
    """Fit the scaler on the train rows, scale everything, cut the splits.

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

    Returns:
        ForecastDataset with float32 splits (copies, so no split keeps the others alive).
    """
    scaler = StandardScaler.fit(raw[borders[0][0] : borders[0][1]])
    scaled = scaler.transform(raw[: borders[-1][1]]).astype(np.float32)  # [n, N]
    marks = time_features(dates[: borders[-1][1]], freq=freq)  # [n, F]
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
        source=os.path.abspath(p),  # reloadable from any working directory
    )
