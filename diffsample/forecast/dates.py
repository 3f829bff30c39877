"""Dates of a forecast: the step of a series, each window's first forecast timestamp, checks.

Dimensions: B windows, H horizon, T timestamps.

Timestamps are numpy ``datetime64[s]``; a step is a pandas alias (``"h"``, ``"15min"``, ``"D"``,
``"M"``). Fixed steps (days, hours, minutes, seconds) are numpy arithmetic; anchored ones
(weeks, months) need pandas' calendars, imported only where one is used.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import numpy as np

from .._utils import expected
from .data import ForecastSplit, IndexLike

__all__ = [
    "check_freq",
    "check_start",
    "fixed_step",
    "forecast_dates",
    "infer_freq",
    "need_dates",
    "need_pandas",
    "window_dates",
]

# fixed-length steps numpy can add to a datetime64 (pandas aliases; "W" and "M" are anchored)
_FIXED = re.compile(r"^([1-9]\d*)?(D|h|min|s)$")
_SECONDS = {"D": 86_400, "h": 3_600, "min": 60, "s": 1}


def infer_freq(dates: object) -> str | None:
    """The step of evenly spaced timestamps as a pandas alias (``"h"``, ``"15min"``, ``"D"``).

    Args:
        dates: ``[T]`` increasing timestamps (numpy ``datetime64``, e.g. ``ForecastSplit.dates``),
            T >= 2.

    Returns:
        The alias, or None when the steps differ (months, gaps) or are not whole seconds.
    """
    d = _datetimes("dates", dates)
    if d.ndim != 1 or d.shape[0] < 2:
        raise ValueError(expected("dates", "timestamps [T] with T >= 2", d))
    steps = np.unique(np.diff(d).astype("timedelta64[s]").astype(np.int64))  # seconds
    if steps.shape[0] != 1 or steps[0] <= 0:
        return None
    sec = int(steps[0])
    for unit in ("D", "h", "min", "s"):
        if sec % _SECONDS[unit] == 0:
            k = sec // _SECONDS[unit]
            return unit if k == 1 else f"{k}{unit}"
    return None  # unreachable: every whole number of seconds matches "s"


def window_dates(split: ForecastSplit, index: IndexLike) -> tuple[np.ndarray, str | None]:
    """The first forecast timestamp of windows of a split, and the split's step.

    Window ``i`` forecasts rows ``[i + L, i + L + H)`` of the split, so its start is
    ``split.dates[i + L]``. Pass both to :meth:`ITransformerDiffusion.forecast`::

        start, freq = window_dates(data.test, batch.index)
        fc = model.forecast(batch.x, 100, time_features=batch.x_mark, window_ids=batch.index,
                            start=start, freq=freq)

    Args:
        split: a ForecastSplit (``data.test``, ...).
        index: an int or ``[B]`` window indices, as for ``split.windows``.

    Returns:
        ``(start [B] datetime64[s], freq)``, freq from :func:`infer_freq` (None if uneven).
    """
    if not isinstance(split, ForecastSplit):
        raise TypeError(expected("split", "a ForecastSplit (data.test, ...)", split))
    idx = split.windows(index).index.cpu().numpy()  # [B]; checks the indices
    return split.dates[idx + split.lookback].astype("datetime64[s]"), infer_freq(split.dates)


def _datetimes(name: str, value: object) -> np.ndarray:
    """``value`` as a ``datetime64[s]`` array; numbers are refused (seconds? nanoseconds?)."""
    arr = np.asarray(value)
    if arr.dtype.kind in "biufc":
        raise TypeError(expected(name, "timestamps (numpy datetime64 or ISO strings)", arr))
    try:
        out = arr.astype("datetime64[s]")
    except (TypeError, ValueError) as err:
        raise ValueError(
            expected(name, "timestamps (numpy datetime64 or ISO strings)", arr)
        ) from err
    if np.isnat(out).any():
        raise ValueError(expected(name, "timestamps without NaT", arr))
    return out


def check_start(value: object, n_windows: int) -> np.ndarray | None:
    """``start`` as a read-only ``[B]`` datetime64[s] array, or None."""
    if value is None:
        return None
    s = _datetimes("start", value).copy()
    if s.shape != (n_windows,):
        raise ValueError(
            expected("start", f"one timestamp per window, [B] with B = {n_windows}", s)
        )
    s.setflags(write=False)
    return s


def check_freq(value: object) -> str | None:
    """``freq`` if None or a pandas period frequency (``"h"``, ``"15min"``, ``"D"``, ``"M"``)."""
    want = "None or a pandas frequency alias such as 'h', '15min', 'D'"
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(expected("freq", want, value))
    if _FIXED.match(value):
        return value
    try:  # another alias ("W", "M", "B"): pandas decides, when it is installed
        pd = importlib.import_module("pandas")
    except ImportError:
        return value
    try:  # a period frequency, as GluonTS's start dates are pandas Periods
        pd.Period("2000-01-01", freq=value)
    except (TypeError, ValueError) as err:
        raise ValueError(expected("freq", want, value)) from err
    return value


def fixed_step(freq: str) -> np.timedelta64 | None:
    """A fixed alias as a numpy step; None for anchored ones (months, weeks)."""
    m = _FIXED.match(freq)
    if m is None:
        return None
    return np.timedelta64(int(m.group(1) or 1) * _SECONDS[m.group(2)], "s")


def need_dates(where: str, start: np.ndarray | None, freq: str | None) -> tuple[np.ndarray, str]:
    """A forecast's ``(start, freq)``, or ValueError naming ``where`` if either is missing."""
    if start is None or freq is None:
        raise ValueError(
            f"{where}: the forecast has no dates; pass start= and freq= to forecast() "
            "(window_dates(split, index) gives both) or set them with replace()"
        )
    return start, freq


def forecast_dates(start: np.ndarray, freq: str, horizon: int, *, where: str) -> np.ndarray:
    """``[B, H]`` datetime64[s]: the timestamps of every forecast step of windows starting at
    ``start [B]``, ``freq`` apart (anchored steps through pandas, named ``where`` if absent)."""
    step = fixed_step(freq)
    if step is not None:
        return start[:, None] + np.arange(horizon) * step  # [B, H]
    pd = need_pandas(where)  # anchored steps (months, weeks) need calendars
    rows = [pd.period_range(pd.Period(s, freq=freq), periods=horizon).to_timestamp() for s in start]
    return np.stack([r.to_numpy().astype("datetime64[s]") for r in rows])  # [B, H]


def need_pandas(where: str, *, extra: str = "gluonts") -> Any:
    """pandas, or ModuleNotFoundError naming ``where`` and the extra that installs it."""
    try:
        return importlib.import_module("pandas")
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"{where}: needs pandas (pip install 'diffsample[{extra}]')", name="pandas"
        ) from exc
