"""The checks of a :class:`~diffsample.forecast.forecast.Forecast`'s arguments: the samples and
point forecast, the scaler, the variate names and the window ids (``start`` and ``freq``:
:mod:`~diffsample.forecast.dates`). Each bad value raises a one-line TypeError / ValueError
naming the argument.

Dimensions: S samples, B windows, H horizon, N variates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._utils import expected
from .data import StandardScaler

__all__ = ["check_pair", "check_scaler", "check_variates", "check_window_ids"]


def check_pair(samples: object, point: object) -> None:
    """``samples [S, B, H, N]`` and ``point [B, H, N]``: floating-point tensors that fit."""
    for name, t, want in (("samples", samples, "[S, B, H, N]"), ("point", point, "[B, H, N]")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(expected(name, f"a floating-point tensor {want}", t))
    assert isinstance(samples, torch.Tensor) and isinstance(point, torch.Tensor)  # for mypy
    if samples.ndim != 4 or point.ndim != 3 or samples.shape[1:] != point.shape:
        raise ValueError(
            f"samples, point: expected [S, B, H, N] and [B, H, N], got {tuple(samples.shape)} "
            f"and {tuple(point.shape)}"
        )


def check_variates(value: object, n: int) -> tuple[str, ...] | None:
    """``variates`` as a tuple of N names, or None."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(expected("variates", f"a sequence of {n} names", value))
    names = tuple(value)
    if len(names) != n or not all(isinstance(v, str) for v in names):
        raise ValueError(expected("variates", f"{n} names (str), one per variate", value))
    return names


def check_window_ids(value: object, n: int) -> torch.Tensor | None:
    """``window_ids`` as a ``[B]`` integer tensor, or None."""
    if value is None:
        return None
    try:
        ids = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise TypeError(expected("window_ids", f"[{n}] integer window ids", value)) from err
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(expected("window_ids", f"[{n}] integer window ids", ids))
    if tuple(ids.shape) != (n,):
        raise ValueError(expected("window_ids", f"[{n}] integer window ids, one per window", ids))
    return ids


def check_scaler(scaler: object, n: int) -> StandardScaler | None:
    """``scaler`` if None or a StandardScaler of N variates."""
    if scaler is not None and not isinstance(scaler, StandardScaler):
        raise TypeError(expected("scaler", "a StandardScaler or None", scaler))
    if scaler is not None and scaler.n_variates != n:
        raise ValueError(
            f"scaler: expected statistics of N = {n} variates, got {scaler.n_variates}"
        )
    return scaler
