"""The samples file: a forecast as an ``.npz`` any numpy reads (no pickle), written atomically.

Dimensions: S samples, B windows, H horizon, N variates, T steps of a window's series.

The arrays (``format`` :data:`SAMPLES_FORMAT`, ``samples``, ``point``, ``units`` and, when
known, ``targets``, ``window_ids``, ``start``, ``freq``, ``variates``, the scaler statistics and
``meta``) are listed in :func:`~diffsample.forecast.forecast.save_samples`. This module knows the
arrays, not the :class:`~diffsample.forecast.forecast.Forecast` class (it reads a forecast's
public attributes): ``save_samples``, ``npz_arrays`` and ``load_samples`` turn a Forecast into
them and back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

from .._utils import atomic_write, check_path, expected
from .data import StandardScaler

if TYPE_CHECKING:  # the arrays are read from a Forecast's public attributes
    from .forecast import Forecast

__all__ = [
    "SAMPLES_FORMAT",
    "forecast_arrays",
    "forecast_fields",
    "host_array",
    "read_samples_file",
    "window_array",
    "write_samples_file",
]

SAMPLES_FORMAT = "diffsample.samples/1"

PathLike = str | os.PathLike[str]


def host_array(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float32 numpy array on the host (float64 kept)."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.detach().to("cpu", dtype).numpy()


def window_array(name: str, value: object, B: int, N: int, H: int | None = None) -> np.ndarray:
    """``value`` ``[B, T, N]`` (T = H if given) as a float32 (or float64) numpy array."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(expected(name, "a floating-point tensor [B, T, N]", value))
    T = value.shape[1] if value.ndim == 3 else -1
    if value.ndim != 3 or value.shape[0] != B or value.shape[2] != N or (H is not None and T != H):
        want = f"[{B}, {'T' if H is None else H}, {N}] (B, {'T' if H is None else 'H'}, N)"
        raise ValueError(expected(name, f"a tensor {want} like the forecast", value))
    return host_array(value)


def forecast_arrays(
    forecast: Forecast,
    *,
    targets: torch.Tensor | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The file's arrays of a forecast (its fields and attributes), ``targets`` and ``meta``
    checked."""
    B, H, N = forecast.point.shape
    arrays: dict[str, np.ndarray] = {
        "format": np.array(SAMPLES_FORMAT),
        "samples": host_array(forecast.samples),
        "point": host_array(forecast.point),
        "units": np.array(forecast.units),
    }
    if targets is not None:
        y = window_array("targets", targets, B, N, H)  # [B, H, N]
        arrays["targets"] = y.astype(arrays["point"].dtype)
    if forecast.window_ids is not None:
        arrays["window_ids"] = forecast.window_ids.cpu().numpy().astype(np.int64)
    if forecast.start is not None:
        arrays["start"] = np.datetime_as_string(forecast.start, unit="s")
    if forecast.freq is not None:
        arrays["freq"] = np.array(forecast.freq)
    if forecast.variates is not None:
        arrays["variates"] = np.array(forecast.variates, dtype=str)
    if forecast.scaler is not None:
        arrays["scaler_mean"] = np.asarray(forecast.scaler.mean, dtype=np.float64)
        arrays["scaler_std"] = np.asarray(forecast.scaler.std, dtype=np.float64)
    if meta is not None:
        if not isinstance(meta, Mapping):
            raise TypeError(expected("meta", "a mapping of JSON-able values", meta))
        try:
            arrays["meta"] = np.array(json.dumps(dict(meta), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise ValueError(expected("meta", "JSON-able values (no NaN)", meta)) from err
    return arrays


def write_samples_file(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """``np.savez`` of the arrays into ``path``, atomically."""

    def write(f: IO[bytes]) -> None:
        np.savez(f, **arrays)  # type: ignore[arg-type]

    return atomic_write(path, write)


def read_samples_file(path: PathLike) -> dict[str, np.ndarray]:
    """The arrays of a samples file, its format checked (see ``load_samples``)."""
    p = check_path("path", path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no such samples file {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"path: {p} is not an .npz samples file ({err})") from err
    if "format" not in a or str(a["format"]) != SAMPLES_FORMAT:
        raise ValueError(
            f"path: {p} is not a diffsample samples file (format {a.get('format')!r}, "
            f"expected {SAMPLES_FORMAT!r})"
        )
    return a


def forecast_fields(
    a: Mapping[str, np.ndarray],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(samples, point, attributes)`` of a file's arrays: what ``Forecast(samples, point,
    **attributes)`` takes."""
    scaler = None
    if "scaler_mean" in a:
        scaler = StandardScaler(mean=a["scaler_mean"], std=a["scaler_std"])
    samples, point = torch.from_numpy(a["samples"]), torch.from_numpy(a["point"])
    attributes = {
        "scaler": scaler,
        "start": a.get("start"),
        "freq": str(a["freq"]) if "freq" in a else None,
        "variates": [str(v) for v in a["variates"]] if "variates" in a else None,
        "window_ids": torch.from_numpy(a["window_ids"]) if "window_ids" in a else None,
        "units": str(a["units"]),
    }
    return samples, point, attributes
