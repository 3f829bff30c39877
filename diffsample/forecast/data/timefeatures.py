"""Time-Series-Library ``timeenc=1`` time features of timestamps.

Dimensions: T timestamps (rows), F time features (4 for freq ``"h"``, 5 for ``"t"``).

Each feature is a calendar field scaled into [-0.5, 0.5]: hour/23, weekday/6 (Monday = 0),
(day - 1)/30, (day_of_year - 1)/365, each minus 0.5, in that order for freq ``"h"``; freq ``"t"``
puts minute/59 - 0.5 first.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..._utils import check_choice, expected

__all__ = ["TIME_FEATURE_NAMES", "Freq", "time_features"]

Freq = Literal["h", "t"]

TIME_FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    "h": ("hour_of_day", "day_of_week", "day_of_month", "day_of_year"),
    "t": ("minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year"),
}


def time_features(dates: np.ndarray, *, freq: Freq = "h") -> np.ndarray:
    """Time-Series-Library ``timeenc=1`` features, each in [-0.5, 0.5].

    Args:
        dates: ``[T]`` numpy datetime64 (any unit; wall-clock time, no time zone).
        freq: ``"h"`` -> (hour/23, weekday/6, (day-1)/30, (doy-1)/365) each minus 0.5;
            ``"t"`` -> minute/59 - 0.5 first, then the four above.

    Returns:
        ``[T, F]`` float32 with F = 4 (``"h"``) or 5 (``"t"``).

    Raises:
        TypeError: ``dates`` is not datetime64, or ``freq`` is not a string.
        ValueError: ``dates`` is not 1-D, or ``freq`` is not ``"h"`` or ``"t"``.
    """
    check_choice("freq", freq, Freq)
    d = np.asarray(dates)
    want = "a 1-D numpy datetime64 array [T]"
    if not np.issubdtype(d.dtype, np.datetime64):
        raise TypeError(expected("dates", want, d))
    if d.ndim != 1:
        raise ValueError(expected("dates", want, d))
    # datetime64 arithmetic instead of a loop over Python datetimes: calendar fields for all T
    # rows at once, and the same answers (the tests compare with datetime's own calendar).
    sec = d.astype("datetime64[s]")
    day = sec.astype("datetime64[D]")
    minute = (sec.astype("datetime64[m]") - sec.astype("datetime64[h]")).astype(np.int64)  # [T]
    hour = (sec.astype("datetime64[h]") - day).astype(np.int64)  # [T]
    weekday = (day.astype(np.int64) + 3) % 7  # [T]; 1970-01-01 was a Thursday, Monday = 0
    mday = (day - day.astype("datetime64[M]")).astype(np.int64) + 1  # [T]
    yday = (day - day.astype("datetime64[Y]")).astype(np.int64) + 1  # [T]
    cols = [hour / 23.0 - 0.5, weekday / 6.0 - 0.5, (mday - 1) / 30.0 - 0.5]
    cols.append((yday - 1) / 365.0 - 0.5)
    if freq == "t":
        cols.insert(0, minute / 59.0 - 0.5)
    return np.stack(cols, axis=1).astype(np.float32)  # [T, F]
