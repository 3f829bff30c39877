"""Data provenance: what a model was trained on, as JSON, and the check that data match it.

Dimensions: N variates, F time features, L lookback, H horizon.

``data_spec(data)`` (also ``ForecastDataset.spec()``) records where the data came from and
everything that decides what a window means: the split protocol and borders, the window
lengths, the variate and time-feature names, the scaler's statistics and a digest of the
values. ``train`` stores it in the model, the checkpoint keeps it, and ``check_data_spec``
refuses data that differ from it: a model trained on ETTh1 is never scored on other data, or on
rows edited since, without a word.

A spec names data; it never names a file to read on its own authority (a checkpoint is a file
anyone can write). ``reload_data(spec)`` gets the data back from the same named dataset (an ETT
name, found the usual way, or the synthetic generator's call) or from a path the caller
passes; ``spec["source"]`` (a CSV's absolute path, or the synthetic generator's
``"synthetic(n_steps=..., n_variates=..., seed=...)"`` call) says where the data came from and
is never opened.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

from ..._utils import check_bool, check_choice, check_path, expected
from .batches import ForecastDataset, check_window_lengths
from .download import locate_ett
from .reader import PathLike
from .registry import ETT_NAMES, synthetic_call
from .scaler import StandardScaler
from .splits import Protocol, load_csv
from .synthetic import synthetic_dataset
from .timefeatures import Freq

__all__ = ["SPEC_FIELDS", "check_data_spec", "data_spec", "reload_data"]

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

    The dataset builds it (``ForecastDataset.spec``, beside the fields it reads); this checks
    the argument first.

    Args:
        data: a ForecastDataset.

    Returns:
        ``{"source", "ett", "protocol", "freq", "lookback", "horizon", "borders", "columns",
        "time_features", "scaler_mean", "scaler_std", "digest"}``; ``borders`` is
        ``[[lo, hi]] * 3`` of train, val and test among the source's rows, ``ett`` the ETT name
        (``"ETTh1"``, ...) of an ETT file or None, the scaler statistics are ``[N]`` lists of
        floats, ``digest`` the dataset's :attr:`~ForecastDataset.digest` (the sha256 of the
        rows' values, or None for the synthetic data).

    Raises:
        TypeError: ``data`` is not a ForecastDataset.
    """
    if not isinstance(data, ForecastDataset):
        raise TypeError(expected("data", "a ForecastDataset (load_dataset)", data))
    return data.spec()


def check_data_spec(saved: Mapping[str, Any], data: ForecastDataset) -> None:
    """Raise ValueError if ``data`` differ from the data a model was trained on.

    Compares the fields of :data:`SPEC_FIELDS` in order and names the first that differs with
    both values; the scaler statistics agree within a relative tolerance of 1e-6 (the mean
    relative to ``|mean| + std``, so a mean near zero is not compared to zero). Then the
    values' digest: a spec that records one (diffsample 0.5 on, for data read from a file)
    refuses data whose rows changed, even where the statistics still agree. A spec without one
    (older versions, or the synthetic data, a pure function of its source) is checked on the
    fields alone, as before.

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
    where = f"(trained on {_short(saved.get('source'))}, given {_short(now['source'])})"
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
                f"{field}: trained with {_short(_plain(a))}, given {_short(_plain(b))} {where}"
            )
    trained = saved.get("digest")
    if trained is not None and trained != now["digest"]:
        raise ValueError(
            "data: expected the data the model was trained on, got data whose values differ "
            f"(digest {_short(trained)} when trained, {_short(now['digest'])} given: rows "
            f"edited since?) {where}"
        )


def reload_data(
    spec: Mapping[str, Any], *, path: PathLike | None = None, download: bool = False
) -> ForecastDataset:
    """The data a data spec describes (``model.data_spec``), checked against it.

    A spec names data; it never names a file to read on its own authority. The data come from:

    - ``path``, when given: the caller's CSV, read with the spec's protocol, freq, lookback and
      horizon;
    - else the spec's ETT name (one of ``ETTh1``, ``ETTh2``, ``ETTm1``, ``ETTm2``), found in
      ``$DIFFSAMPLE_ETT_DIR`` or the download cache, or fetched with ``download=True``;
    - else the synthetic generator, for a spec whose source is its call (its sizes within the
      generator's limits).

    The spec of any other CSV needs ``path``: its ``source`` (the absolute path it was read
    from) is never opened. The data are then checked with :func:`check_data_spec`, the digest
    of the values included; an older spec without a digest is checked on its other fields.

    Args:
        spec: a data spec (``data_spec``, e.g. ``model.data_spec`` of a loaded checkpoint).
        path: the CSV to read the data from (a str or path), or None.
        download: fetch an ETT file found in neither place (off: nothing touches the network
            unless asked).

    Returns:
        ForecastDataset equal in what the spec records to the data the model was trained on.

    Raises:
        TypeError: ``spec`` is not a mapping, ``path`` not a path, ``download`` not a bool.
        ValueError: a spec field that no spec holds (a bad protocol, freq, window length or
            ETT name), bad data (see ``load_csv``), or data that differ from the spec.
        FileNotFoundError: an ETT file found nowhere, ``path`` missing, or the spec of a CSV
            without ``path``.
    """
    if not isinstance(spec, Mapping):
        raise TypeError(expected("spec", "a data spec dict (model.data_spec)", spec))
    download = check_bool("download", download)
    lookback, horizon = check_window_lengths(spec.get("lookback"), spec.get("horizon"))
    protocol = cast(
        Protocol, check_choice("data spec: protocol", spec.get("protocol"), _SPEC_PROTOCOLS)
    )
    freq = cast(Freq, check_choice("data spec: freq", spec.get("freq"), Freq))
    kw: dict[str, Any] = {"lookback": lookback, "horizon": horizon, "protocol": protocol}
    ett, source = spec.get("ett"), spec.get("source")
    if path is not None:
        data = load_csv(check_path("path", path), freq=freq, **kw)
    elif ett is not None:
        if ett not in ETT_NAMES:
            raise ValueError(
                expected("data spec: ett", f"None or one of {', '.join(ETT_NAMES)}", ett)
            )
        found = locate_ett(ett, download=download)
        data = load_csv(found, freq=freq, **kw)
    else:
        call = synthetic_call(source) if isinstance(source, str) else None
        if call is None:
            raise FileNotFoundError(
                f"data spec: the data came from {_short(source)}, which is reloaded only from "
                "a path you pass (reload_data(spec, path=...); the command's --data): a data "
                "spec never names a file to open"
            )
        data = synthetic_dataset(**call, lookback=lookback, horizon=horizon)
    check_data_spec(spec, data)
    return data


def spec_scaler(spec: Mapping[str, Any] | None, n: int) -> StandardScaler | None:
    """The scaler of the data a model trained on, from its data spec (None without one);
    ValueError if the spec's statistics are not a scaler of ``n`` variates."""
    if not spec or spec.get("scaler_mean") is None or spec.get("scaler_std") is None:
        return None
    try:
        scaler = StandardScaler(mean=spec["scaler_mean"], std=spec["scaler_std"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"model.data_spec: scaler_mean / scaler_std are not a scaler: {err}"
        ) from err
    if scaler.n_variates != n:
        raise ValueError(
            f"model.data_spec: expected scaler statistics of {n} variates, got {scaler.n_variates}"
        )
    return scaler


def spec_columns(spec: Mapping[str, Any] | None, n: int) -> tuple[str, ...] | None:
    """The variate names of a data spec, if it holds ``n`` of them (None otherwise)."""
    cols = None if not spec else spec.get("columns")
    if isinstance(cols, (list, tuple)) and len(cols) == n and all(isinstance(c, str) for c in cols):
        return tuple(cols)
    return None


# the protocols a spec records ("auto" is resolved before a dataset exists)
_SPEC_PROTOCOLS = ("etth", "ettm", "custom")


def _short(value: object) -> str:
    """``repr(value)``, cut to 200 characters: a spec's strings come from a file."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


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
