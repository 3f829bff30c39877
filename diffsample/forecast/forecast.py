"""Forecast: what :meth:`ITransformerDiffusion.forecast` returns, as a forecast object.

Dimensions: S samples, B windows, H horizon, N variates, L lookback, Q quantile levels.

A ``Forecast`` is still the 0.4.0 named tuple ``(samples [S, B, H, N], point [B, H, N])``
(``samples, point = fc``, ``fc[0]``, ``fc.samples``), with what a forecast means around it:

    units       "scaled" (what the model and the metrics compute in) or "data" (the CSV's)
    scaler      the data's StandardScaler: in_data_units() maps samples and point back
    start, freq each window's first forecast timestamp [B] and the step ("h", "15min", "D")
    variates    the N variate names;  window_ids  the [B] split indices (GluonTS item ids)

and the summaries GluonTS users expect: ``mean``, ``median``, ``quantile(q)`` (linear
interpolation on the sample axis, ``torch.quantile``'s), ``interval(level)``, ``dates()``,
``plot()`` (matplotlib), ``to_gluonts()`` (``SampleForecast`` objects) and ``save(path)`` (an
``.npz`` that :func:`load_samples` reads back with its dates, units and scaler statistics).
matplotlib, pandas and gluonts are imported only by the methods that need them.

The object lives here; its argument checks in :mod:`~diffsample.forecast.forecast_checks`,
the dates in :mod:`~diffsample.forecast.dates`, the drawing in
:mod:`~diffsample.forecast.plotting`, the GluonTS conversion in
:mod:`~diffsample.forecast.gluonts_export` and the ``.npz`` arrays in
:mod:`~diffsample.forecast.samples_file` (every name this module had still imports from here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch

from .._utils import check_choice, check_number, check_path, expected
from ..metrics import sample_quantiles
from .data import StandardScaler
from .dates import check_freq as check_freq
from .dates import check_start as check_start
from .dates import forecast_dates, infer_freq, need_dates, window_dates
from .forecast_checks import check_pair, check_scaler, check_variates, check_window_ids
from .gluonts_export import sample_forecasts, target_series
from .plotting import plain_text as plain_text
from .plotting import plot_forecast
from .samples_file import (
    SAMPLES_FORMAT,
    forecast_arrays,
    forecast_fields,
    read_samples_file,
    write_samples_file,
)

if TYPE_CHECKING:  # matplotlib, the plot extra: imported by plot() only
    from matplotlib.axes import Axes

# check_start, check_freq (dates.py) and plain_text (plotting.py) still import from here,
# unlisted: argument checks and a text helper, not for users
__all__ = [
    "SAMPLES_FORMAT",
    "Forecast",
    "LoadedSamples",
    "Units",
    "infer_freq",
    "load_samples",
    "npz_arrays",
    "save_samples",
    "window_dates",
]

Units = Literal["scaled", "data"]

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------------- the object
class _Pair(NamedTuple):
    samples: torch.Tensor
    point: torch.Tensor


_META = ("scaler", "start", "freq", "variates", "window_ids", "units")


class Forecast(_Pair):
    """A probabilistic forecast: ``samples [S, B, H, N]`` and the point forecast ``[B, H, N]``.

    Still the named tuple of diffsample 0.4.0 (``samples, point = fc`` works), with the
    forecast's units, dates and names as read-only attributes and the usual summaries as
    methods. Every summary is in the forecast's own :attr:`units`.

    Build one as ``Forecast(samples, point, *, scaler=None, start=None, freq=None,
    variates=None, window_ids=None, units="scaled")``; the keywords are the attributes below.

    Attributes:
        samples: ``[S, B, H, N]`` floating-point.
        point: ``[B, H, N]``, the backbone's point forecast.
        scaler: the data's scaler (``ForecastDataset.scaler``); needed by
            :meth:`in_data_units`.
        start: ``[B]`` datetime64[s] timestamps of each window's first forecast step (given as
            numpy ``datetime64`` or ISO strings; see :func:`window_dates`).
        freq: the step between forecast steps, a pandas period alias (``"h"``, ``"15min"``,
            ``"D"``, ``"M"``).
        variates: the N variate names.
        window_ids: ``[B]`` integer ids of the windows (their split indices).
        units: ``"scaled"`` (the model's) or ``"data"`` (the data's own).

    A bad argument raises a one-line TypeError / ValueError naming it.
    """

    _scaler: StandardScaler | None
    _start: np.ndarray | None
    _freq: str | None
    _variates: tuple[str, ...] | None
    _window_ids: torch.Tensor | None
    _units: Units

    def __new__(
        cls,
        samples: torch.Tensor,
        point: torch.Tensor,
        *,
        scaler: StandardScaler | None = None,
        start: object = None,
        freq: str | None = None,
        variates: Sequence[str] | None = None,
        window_ids: torch.Tensor | Sequence[int] | None = None,
        units: Units = "scaled",
    ) -> Forecast:
        check_pair(samples, point)
        self = super().__new__(cls, samples, point)
        B, N = point.shape[0], point.shape[2]
        self._scaler = check_scaler(scaler, N)
        self._start = check_start(start, B)
        self._freq = check_freq(freq)
        self._variates = check_variates(variates, N)
        self._window_ids = check_window_ids(window_ids, B)
        self._units = "data" if check_choice("units", units, Units) == "data" else "scaled"
        return self

    # -- what it is ------------------------------------------------------------------------
    @property
    def scaler(self) -> StandardScaler | None:
        """The data's scaler (None if unknown)."""
        return self._scaler

    @property
    def start(self) -> np.ndarray | None:
        """``[B]`` datetime64[s]: each window's first forecast timestamp (None if unknown)."""
        return self._start

    @property
    def freq(self) -> str | None:
        """The step between forecast steps, a pandas alias (None if unknown)."""
        return self._freq

    @property
    def variates(self) -> tuple[str, ...] | None:
        """The N variate names (None if unknown)."""
        return self._variates

    @property
    def window_ids(self) -> torch.Tensor | None:
        """``[B]`` integer window ids (None if not given: 0..B-1 is used)."""
        return self._window_ids

    @property
    def units(self) -> Units:
        """``"scaled"`` or ``"data"``."""
        return self._units

    def replace(self, **changes: Any) -> Forecast:
        """A copy with some fields or attributes changed (``samples``, ``point``, ``scaler``,
        ``start``, ``freq``, ``variates``, ``window_ids``, ``units``)."""
        unknown = sorted(set(changes) - {"samples", "point", *_META})
        if unknown:
            raise TypeError(
                f"Forecast.replace: expected fields among {('samples', 'point', *_META)}, got "
                f"{unknown}"
            )
        kw = {k: getattr(self, k) for k in ("samples", "point", *_META)} | changes
        return Forecast(kw.pop("samples"), kw.pop("point"), **kw)

    @classmethod
    def _make(cls, iterable: Any) -> Forecast:  # type: ignore[override]
        """The named tuple's ``_make``: ``Forecast(*iterable)`` (no attributes)."""
        samples, point = iterable
        return cls(samples, point)

    def _replace(self, **changes: Any) -> Forecast:
        """The named tuple's ``_replace``, keeping the attributes (see :meth:`replace`)."""
        return self.replace(**changes)

    def __repr__(self) -> str:
        dates = "" if self._start is None else f", start {self._start[0]}.., freq {self._freq!r}"
        return (
            f"Forecast(samples [S, B, H, N] = {list(self.samples.shape)} {self.samples.dtype}, "
            f"point {list(self.point.shape)}, units {self._units!r}{dates})"
        )

    # -- summaries -------------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        """``[B, H, N]``: the mean of the samples."""
        return self.samples.mean(dim=0)

    @property
    def median(self) -> torch.Tensor:
        """``[B, H, N]``: ``quantile(0.5)``, i.e. ``torch.quantile(samples, 0.5, dim=0)`` (the
        mean of the two middle samples for even S; ``torch.median`` takes the lower one)."""
        return self.quantile(0.5)

    def quantile(self, q: float | Sequence[float]) -> torch.Tensor:
        """Sample quantiles by linear interpolation, as ``torch.quantile(samples, q, dim=0)``
        (without its 2**24-element limit).

        Args:
            q: a level or a sequence of Q levels, each in [0, 1].

        Returns:
            ``[B, H, N]`` for one level, ``[Q, B, H, N]`` for a sequence.
        """
        return sample_quantiles(self.samples, q)

    def interval(self, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """The central interval holding ``level`` of the samples' mass.

        Args:
            level: in (0, 1), e.g. 0.9 for the 5% and 95% quantiles.

        Returns:
            ``(lower, upper)``, each ``[B, H, N]``.
        """
        lv = check_number("level", level, minimum=0, maximum=1, open_min=True, open_max=True)
        lo, hi = self.quantile([(1 - lv) / 2, (1 + lv) / 2])
        return lo, hi

    def dates(self) -> np.ndarray:
        """``[B, H]`` datetime64[s]: the timestamps of every forecast step.

        Raises:
            ValueError: the forecast has no ``start`` or ``freq``.
        """
        start, freq = need_dates("Forecast.dates", self._start, self._freq)
        return forecast_dates(start, freq, self.point.shape[1], where="Forecast.dates")

    # -- units -----------------------------------------------------------------------------
    def in_data_units(self) -> Forecast:
        """The forecast in the data's own units (samples and point through
        ``scaler.inverse_transform``); itself if it is in them already.

        Raises:
            ValueError: the forecast carries no scaler.
        """
        if self._units == "data":
            return self
        sc = self._need_scaler("Forecast.in_data_units")
        inv = sc.inverse_transform
        return self.replace(samples=inv(self.samples), point=inv(self.point), units="data")

    def in_scaled_units(self) -> Forecast:
        """The forecast in the model's scaled units; itself if it is in them already."""
        if self._units == "scaled":
            return self
        sc = self._need_scaler("Forecast.in_scaled_units")
        tr = sc.transform
        return self.replace(samples=tr(self.samples), point=tr(self.point), units="scaled")

    # -- outside -----------------------------------------------------------------------------
    def plot(
        self,
        ax: Axes | None = None,
        *,
        window: int = 0,
        variate: int = -1,
        levels: Sequence[float] = (0.5, 0.9),
        truth: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        color: str = "C0",
    ) -> Axes:
        """A fan chart of one window and variate: central bands, the median, and optionally
        the truth and the end of the history, against dates when the forecast has them.

        Needs matplotlib (``pip install 'diffsample[plot]'``). Variate names are drawn as
        plain text (a ``$`` in a column name never starts mathtext).

        Args:
            ax: the matplotlib Axes to draw on; None draws on a new pyplot figure.
            window: which window (an index into B).
            variate: which variate (an index into N; -1 is the last, ETT's target ``OT``).
            levels: central interval levels in (0, 1), one band each.
            truth: ``[B, H, N]`` observations in the forecast's units, or None.
            history: ``[B, L, N]`` the windows' history in the forecast's units, or None.
            color: the bands' and median's colour.

        Returns:
            The Axes drawn on.
        """
        return plot_forecast(
            self,
            ax,
            window=window,
            variate=variate,
            levels=levels,
            truth=truth,
            history=history,
            color=color,
        )

    def to_gluonts(self, *, multivariate: bool = False) -> list[Any]:
        """GluonTS ``SampleForecast`` objects of the windows, in the forecast's units.

        Univariate (the default): one per window and variate, window-major, ``samples [S, H]``
        and ``item_id`` ``"<window id>/<variate name>"``. Multivariate: one per window,
        ``samples [S, H, N]`` (GluonTS's ``MultivariateEvaluator`` layout), ``item_id`` the
        window id. ``start_date`` is ``pandas.Period(start[b], freq)``. The order matches
        :meth:`gluonts_targets`. Needs gluonts (``pip install 'diffsample[gluonts]'``).

        Args:
            multivariate: one forecast per window instead of per window and variate.

        Returns:
            ``B * N`` (or ``B``) SampleForecast objects holding float32 numpy copies.
        """
        return sample_forecasts(self, multivariate=multivariate)

    def gluonts_targets(
        self,
        truth: torch.Tensor,
        *,
        history: torch.Tensor | None = None,
        multivariate: bool = False,
    ) -> list[Any]:
        """The observed series GluonTS's ``Evaluator`` compares :meth:`to_gluonts` with, in
        the same order: ``Evaluator()(fc.gluonts_targets(y), fc.to_gluonts())``.

        Args:
            truth: ``[B, H, N]`` observations, in the forecast's units.
            history: ``[B, L, N]`` the windows' history (GluonTS's MASE and MSIS scale by
                it), in the forecast's units; None to pass the forecast period only.
            multivariate: DataFrames ``[L + H, N]`` per window instead of Series per window and
                variate; their columns are 0..N-1 (as ``MultivariateEvaluator`` indexes them),
                in the order of :attr:`variates`.

        Returns:
            pandas Series (or DataFrames) indexed by ``PeriodIndex`` of ``freq``.
        """
        return target_series(self, truth, history=history, multivariate=multivariate)

    def save(
        self,
        path: PathLike,
        *,
        targets: torch.Tensor | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the forecast to an ``.npz`` (see :func:`save_samples`)."""
        return save_samples(path, self, targets=targets, meta=meta)

    # -- helpers ---------------------------------------------------------------------------
    def _need_scaler(self, where: str) -> StandardScaler:
        if self._scaler is None:
            raise ValueError(
                f"{where}: the forecast has no scaler (a model that never trained on a dataset); "
                "set one with replace(scaler=data.scaler)"
            )
        return self._scaler


# ------------------------------------------------------------------------------- files
class LoadedSamples(NamedTuple):
    """What :func:`load_samples` returns.

    Attributes:
        forecast: the Forecast with its units, scaler, dates, names and window ids.
        targets: ``[B, H, N]`` observations in the forecast's units, or None.
        meta: the JSON metadata saved with it (e.g. the data spec and the split).
    """

    forecast: Forecast
    targets: torch.Tensor | None
    meta: dict[str, Any]


def save_samples(
    path: PathLike,
    forecast: Forecast,
    *,
    targets: torch.Tensor | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a forecast as an ``.npz`` any numpy reads (``np.load(path)``, no pickle), atomically.

    Arrays: ``format`` (``"diffsample.samples/1"``), ``samples [S, B, H, N]`` and ``point
    [B, H, N]`` (float32 unless float64), ``units`` (``"scaled"`` or ``"data"``), and when
    known ``targets [B, H, N]``, ``window_ids [B]`` int64, ``start [B]`` ISO timestamps
    (``"2018-06-26T19:00:00"``), ``freq``, ``variates [N]``, ``scaler_mean [N]`` and
    ``scaler_std [N]`` (data units = scaled * std + mean), ``meta`` (a JSON string).

    Args:
        path: the file (``.npz`` by convention).
        forecast: the Forecast.
        targets: ``[B, H, N]`` observations in the forecast's units, or None.
        meta: JSON-able metadata (the data spec, the split, ...).

    Returns:
        The path written.
    """
    p = check_path("path", path)
    return write_samples_file(p, npz_arrays(forecast, targets=targets, meta=meta))


def npz_arrays(
    forecast: Forecast,
    *,
    targets: torch.Tensor | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays :func:`save_samples` writes (checked), for a caller with its own writer."""
    if not isinstance(forecast, Forecast):
        raise TypeError(expected("forecast", "a Forecast", forecast))
    return forecast_arrays(forecast, targets=targets, meta=meta)


def load_samples(path: PathLike) -> LoadedSamples:
    """Read a file :func:`save_samples` (or ``--save-samples``) wrote.

    Args:
        path: the ``.npz`` file.

    Returns:
        :class:`LoadedSamples` ``(forecast, targets, meta)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a diffsample samples file, or its arrays do not fit.
    """
    a = read_samples_file(path)
    samples, point, attributes = forecast_fields(a)
    fc = Forecast(samples, point, **attributes)
    targets = torch.from_numpy(a["targets"]) if "targets" in a else None
    meta = json.loads(str(a["meta"])) if "meta" in a else {}
    return LoadedSamples(fc, targets, meta)
