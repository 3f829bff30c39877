"""The checks of ITransformerDiffusion's arguments: the history and time features against the
model's sizes, dtype and device (no implicit cast), the window ids keying each window's noise,
and a device that must be the model's own. Each bad value raises a one-line TypeError /
ValueError naming the argument.

Dimensions: B windows, L lookback, N variates, F time features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._utils import check_device, check_tensor, expected
from .model_config import ForecastConfig

__all__ = ["check_history_ids", "check_inputs", "check_model_input", "check_own_device"]


def check_inputs(
    config: ForecastConfig,
    param: torch.Tensor,
    history: torch.Tensor,
    time_features: torch.Tensor | None,
) -> None:
    """history ``[B, L, N]`` (B >= 1) and time features ``[B, L, F]`` of ``param``'s (one of
    the model's parameters) dtype and device. No implicit cast: a float64 history would only
    be rounded to float32 here, and an integer one is almost always a mistake upstream."""
    c = config
    check_model_input(
        "history", history, (None, c.lookback, c.n_variates), param, "B windows >= 1, L, N"
    )
    if not c.n_time_features:
        return  # a model built without time features ignores any it is given
    if time_features is None:
        raise ValueError(
            f"time_features: this model uses {c.n_time_features} time features; pass [B, "
            f"{c.lookback}, {c.n_time_features}] (or build it with n_time_features=0)"
        )
    want = (history.shape[0], c.lookback, c.n_time_features)
    check_model_input("time_features", time_features, want, param, "B, L, F")


def check_model_input(
    name: str, x: object, shape: tuple[int | None, ...], param: torch.Tensor, legend: str
) -> None:
    """``x`` a tensor of ``shape`` (None: any size >= 1) with ``param``'s dtype and device;
    ``legend`` names the dimensions in the message."""
    x = check_tensor(name, x)
    dims = ", ".join("B" if n is None else str(n) for n in shape)
    if x.ndim != len(shape) or any(
        x.shape[i] != n if n is not None else x.shape[i] < 1 for i, n in enumerate(shape)
    ):
        raise ValueError(expected(name, f"a tensor [{dims}] ({legend})", x))
    if x.dtype != param.dtype:
        raise TypeError(
            expected(
                name,
                f"a {param.dtype} tensor like the model's parameters (cast with .to({param.dtype}))",
                x,
            )
        )
    if x.device != param.device:
        raise ValueError(
            f"{name}: expected a tensor on {param.device} (the model's device), got one on "
            f"{x.device}"
        )


def check_history_ids(window_ids: object, B: int) -> None:
    """``window_ids`` None or ``[B]`` integer ids (a tensor or a sequence), one per window of
    the history; checked before sampling, in the model's words (the Forecast checks its own
    with :func:`~diffsample.forecast.forecast_checks.check_window_ids`)."""
    if window_ids is None:
        return
    want = f"[{B}] integer ids, one per history window"
    if isinstance(window_ids, (str, bytes)) or not isinstance(window_ids, (torch.Tensor, Sequence)):
        raise TypeError(expected("window_ids", f"a tensor or sequence of {want}", window_ids))
    try:
        ids = torch.as_tensor(window_ids)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(expected("window_ids", want, window_ids)) from None
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(expected("window_ids", want, ids))
    if tuple(ids.shape) != (B,):
        raise ValueError(expected("window_ids", f"{want} (history holds B = {B})", ids))


def check_own_device(value: object, param: torch.Tensor) -> None:
    """``value`` a device (see ``diffsample._utils.check_device``) that is ``param``'s (one of
    the model's parameters) own: cuda matches cuda:i of the same GPU."""
    device = check_device("device", value)
    own = param.device
    if device.type != own.type or device.index not in (None, own.index):
        raise ValueError(
            f"device: expected the model's device {own} (move the model with "
            f".to({str(device)!r}) to sample there), got {str(value)!r}"
        )
