"""GluonTS objects of a forecast: ``SampleForecast`` per window (and variate), and the observed
series in the same order, for GluonTS's ``Evaluator`` and ``MultivariateEvaluator``.

Dimensions: S samples, B windows, H horizon, N variates, L lookback.

gluonts and pandas (the ``gluonts`` extra) are imported by these functions only. A Forecast is
read through its public attributes; the methods :meth:`Forecast.to_gluonts
<diffsample.forecast.forecast.Forecast.to_gluonts>` and :meth:`Forecast.gluonts_targets
<diffsample.forecast.forecast.Forecast.gluonts_targets>` call these and document them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._utils import expected
from .dates import need_dates, need_pandas
from .samples_file import window_array

if TYPE_CHECKING:
    from .forecast import Forecast

__all__ = ["sample_forecasts", "target_series"]


def sample_forecasts(fc: Forecast, *, multivariate: bool = False) -> list[Any]:
    """:meth:`Forecast.to_gluonts <diffsample.forecast.forecast.Forecast.to_gluonts>`."""
    pd = need_pandas("Forecast.to_gluonts", extra="gluonts")
    try:
        SampleForecast = importlib.import_module("gluonts.model.forecast").SampleForecast
    except ImportError as exc:
        raise ModuleNotFoundError(
            "Forecast.to_gluonts: needs gluonts (pip install 'diffsample[gluonts]')",
            name="gluonts",
        ) from exc
    start, freq = need_dates("Forecast.to_gluonts", fc.start, fc.freq)
    x = fc.samples.detach().float().cpu().numpy()  # [S, B, H, N]
    out = []
    for b, (wid, names) in enumerate(_items(fc, multivariate)):
        p = pd.Period(start[b], freq=freq)
        if multivariate:
            out.append(SampleForecast(np.ascontiguousarray(x[:, b]), p, item_id=wid))
            continue
        for v, name in enumerate(names):
            s = np.ascontiguousarray(x[:, b, :, v])  # [S, H]
            out.append(SampleForecast(s, p, item_id=f"{wid}/{name}"))
    return out


def target_series(
    fc: Forecast,
    truth: torch.Tensor,
    *,
    history: torch.Tensor | None = None,
    multivariate: bool = False,
) -> list[Any]:
    """:meth:`Forecast.gluonts_targets <diffsample.forecast.forecast.Forecast.gluonts_targets>`."""
    pd = need_pandas("Forecast.gluonts_targets", extra="gluonts")
    start, freq = need_dates("Forecast.gluonts_targets", fc.start, fc.freq)
    B, H, N = fc.point.shape
    y = window_array("truth", truth, B, N, H)  # [B, H, N]
    if history is not None:
        y = np.concatenate([window_array("history", history, B, N), y], axis=1)  # [B, L+H, N]
    past = y.shape[1] - H
    out: list[Any] = []
    for b, (wid, names) in enumerate(_items(fc, multivariate)):
        index = pd.period_range(pd.Period(start[b], freq=freq) - past, periods=y.shape[1])
        if multivariate:
            # integer columns: GluonTS's MultivariateEvaluator selects them as frame[dim]
            out.append(pd.DataFrame(y[b], index=index, columns=range(N)))
            continue
        out.extend(
            pd.Series(y[b, :, v], index=index, name=f"{wid}/{n}") for v, n in enumerate(names)
        )
    return out


def _items(fc: Forecast, multivariate: bool) -> list[tuple[str, tuple[str, ...]]]:
    """Each window's id and the variate names, as GluonTS item ids use them."""
    if not isinstance(multivariate, bool):
        raise TypeError(expected("multivariate", "True or False", multivariate))
    B, _, N = fc.point.shape
    names = fc.variates or tuple(str(v) for v in range(N))
    ids = range(B) if fc.window_ids is None else fc.window_ids.tolist()
    return [(str(w), names) for w in ids]
