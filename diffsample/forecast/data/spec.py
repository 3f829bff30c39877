"""Data provenance: what a model was trained on, as JSON, and the check that data match it.

Dimensions: N variates, F time features, L lookback, H horizon.

``data_spec(data)`` (also ``ForecastDataset.spec()``) records where the data came from and
everything that decides what a window means: the split protocol and borders, the window
lengths, the variate and time-feature names and the scaler's statistics. ``train`` stores it in
the model, the checkpoint keeps it, and ``check_data_spec`` refuses data that differ from it:
a model trained on ETTh1 is never scored on other data without a word.

``spec["source"]`` round-trips: ``load_dataset(spec["source"], lookback=spec["lookback"],
horizon=spec["horizon"])`` reloads the same data (a CSV's absolute path, or the synthetic
generator's ``"synthetic(n_steps=..., n_variates=..., seed=...)"`` call).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..._utils import expected
from .batches import ForecastDataset
from .download import ETT_NAMES

__all__ = ["SPEC_FIELDS", "check_data_spec", "data_spec"]

# the fields check_data_spec compares, in this order; "source" and "ett" only say where the data
# came from (the same ETTh1 file may lie elsewhere on another machine), so they are not compared
SPEC_FIELDS: tuple[str, ...] = (
    "protocol",
    "freq",
    "lookback",
    "horizon",
    "borders",
    "columns",
    "time_features",
    "scaler_mean",
    "scaler_std",
)
# scaler statistics are sums of floats: another numpy build may round them differently
_RTOL = 1e-6


def data_spec(data: ForecastDataset) -> dict[str, Any]:
    """The JSON-able record of a dataset (see the module docstring); plain lists, str, int, float.

    Args:
        data: a ForecastDataset.

    Returns:
        ``{"source", "ett", "protocol", "freq", "lookback", "horizon", "borders", "columns",
        "time_features", "scaler_mean", "scaler_std"}``; ``borders`` is ``[[lo, hi]] * 3`` of
        train, val and test among the source's rows, ``ett`` the ETT name (``"ETTh1"``, ...) of
        an ETT file or None, the scaler statistics are ``[N]`` lists of floats.
    """
    if not isinstance(data, ForecastDataset):
        raise TypeError(expected("data", "a ForecastDataset (load_dataset)", data))
    stem = Path(data.source).stem
    return {
        "source": data.source,
        "ett": stem if data.protocol in ("etth", "ettm") and stem in ETT_NAMES else None,
        "protocol": data.protocol,
        "freq": data.freq,
        "lookback": data.lookback,
        "horizon": data.horizon,
        "borders": [list(b) for b in data.borders],
        "columns": list(data.columns),
        "time_features": list(data.time_features),
        "scaler_mean": [float(v) for v in data.scaler.mean],
        "scaler_std": [float(v) for v in data.scaler.std],
    }


def check_data_spec(saved: Mapping[str, Any], data: ForecastDataset) -> None:
    """Raise ValueError if ``data`` differ from the data a model was trained on.

    Compares the fields of :data:`SPEC_FIELDS` in order and names the first that differs with
    both values; the scaler statistics agree within a relative tolerance of 1e-6 (the mean
    relative to ``|mean| + std``, so a mean near zero is not compared to zero).

    Args:
        saved: ``model.data_spec`` (a ``data_spec`` dict, e.g. from a checkpoint).
        data: the data about to be used with the model.

    Raises:
        TypeError: ``saved`` is not a mapping, or ``data`` not a ForecastDataset.
        ValueError: ``saved`` lacks a field, or a field differs.
    """
    if not isinstance(saved, Mapping):
        raise TypeError(expected("saved", "a data spec dict (model.data_spec)", saved))
    now = data_spec(data)
    where = f"(trained on {saved.get('source')!r}, given {now['source']!r})"
    for field in SPEC_FIELDS:
        if field not in saved:
            raise ValueError(f"data spec: the saved spec has no field {field!r}; not a data spec")
        a, b = saved[field], now[field]
        if field in ("scaler_mean", "scaler_std"):
            same = _stats_close(field, a, b, saved.get("scaler_std"))
        else:
            same = _plain(a) == _plain(b)
        if not same:
            raise ValueError(
                f"data: expected the data the model was trained on, got data that differ in "
                f"{field}: trained with {_plain(a)!r}, given {_plain(b)!r} {where}"
            )


def _plain(v: object) -> object:
    """Tuples as lists, recursively: a spec read back from a checkpoint may hold either."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _stats_close(field: str, a: object, b: list[float], std: object) -> bool:
    """``a`` and ``b`` ``[N]`` agree within the tolerance (False for any other shape)."""
    if not isinstance(a, (list, tuple)) or len(a) != len(b):
        return False
    if field == "scaler_std" or not isinstance(std, (list, tuple)) or len(std) != len(b):
        scale = [abs(x) for x in b]
    else:
        scale = [abs(x) + abs(s) for x, s in zip(b, std, strict=True)]
    try:
        return all(
            math.isfinite(float(x)) and abs(float(x) - y) <= _RTOL * s
            for x, y, s in zip(a, b, scale, strict=True)
        )
    except (TypeError, ValueError):
        return False
