"""Argument checks specific to the metrics; the generic ones (integers, numbers, choices, tensors)
are ``diffsample._utils``', and every message follows their grammar, ``"name: expected ...,
got ..."``: TypeError for the wrong kind of value, ValueError for a bad value.

Dimensions: E the scored shape, Q levels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch

from diffsample._utils import check_finite as _check_finite
from diffsample._utils import check_int, check_number, describe, expected

NanPolicy = Literal["propagate", "omit", "raise"]


def normalise_dim(name: str, dim: object, ndim: int, what: str) -> int:
    """``dim`` as a non-negative axis of a tensor with ``ndim`` axes (``what`` names it)."""
    d = check_int(name, dim, minimum=None)
    if not -ndim <= d < ndim:
        raise ValueError(expected(name, f"an axis of {what}, in {-ndim}..{ndim - 1}", dim))
    return d % ndim


def check_level(name: str, value: object, *, open_interval: bool) -> float:
    """A probability level: in (0, 1) for interval levels, in [0, 1] for quantile levels."""
    return check_number(
        name, value, minimum=0.0, maximum=1.0, open_min=open_interval, open_max=open_interval
    )


def check_levels(name: str, values: object, *, open_interval: bool) -> tuple[float, ...]:
    """A non-empty sequence (or 1-D tensor) of levels, each checked by ``check_level``."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(expected(name, "a sequence or a 1-D tensor of levels", values))
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(expected(name, "a sequence of levels", values))
    levels = tuple(
        check_level(f"{name}[{i}]", v, open_interval=open_interval) for i, v in enumerate(values)
    )
    if not levels:
        raise ValueError(
            f"{name}: expected at least one level, got an empty {type(values).__name__}"
        )
    return levels


def as_levels(q: object, name: str) -> tuple[tuple[float, ...], bool]:
    """Quantile levels given as a number, a 0-d or 1-D tensor or a sequence -> (levels, scalar)."""
    if isinstance(q, (torch.Tensor, np.ndarray)) and q.ndim == 0:
        q = q.item()
    if not isinstance(q, (torch.Tensor, Iterable)):  # a number, or the wrong kind of value
        return (check_level(name, q, open_interval=False),), True
    return check_levels(name, q, open_interval=False), False


def check_finite(name: str, t: torch.Tensor) -> None:
    """nan_policy='raise': the shared finiteness check, with the policy named in the message."""
    _check_finite(name, t, hint=" (nan_policy='raise'; 'omit' ignores NaN samples)")


def broadcast_mask(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``mask`` expanded to the scored shape ``shape``; its values must be finite and >= 0 (a
    NaN weight would otherwise fail every ``> 0`` test and drop its element as if it were 0)."""
    try:
        out = mask.expand(shape)
    except RuntimeError:
        raise ValueError(
            expected("mask", f"a shape that broadcasts to the scored shape {shape}", mask)
        ) from None
    if mask.is_floating_point():
        _check_finite("mask", mask, hint=" (element weights)")
    negative = int((mask < 0).sum())
    if negative:
        raise ValueError(
            f"mask: expected non-negative values, got {negative} negative value(s) in "
            f"{describe(mask)}"
        )
    return out
