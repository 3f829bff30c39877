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
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch

from .._utils import atomic_write, check_choice, check_int, check_number, check_path, expected
from ..metrics import sample_quantiles
from .data import ForecastSplit, IndexLike, StandardScaler

if TYPE_CHECKING:  # matplotlib, the plot extra: imported by plot() only
    from matplotlib.axes import Axes

# check_start, check_freq and plain_text are public for the model and the report, unlisted:
# argument checks and a text helper, not for users
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
SAMPLES_FORMAT = "diffsample.samples/1"

PathLike = str | os.PathLike[str]
# fixed-length steps numpy can add to a datetime64 (pandas aliases; "W" and "M" are anchored)
_FIXED = re.compile(r"^([1-9]\d*)?(D|h|min|s)$")
_SECONDS = {"D": 86_400, "h": 3_600, "min": 60, "s": 1}


# ------------------------------------------------------------------------------- dates
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


def _step(freq: str) -> np.timedelta64 | None:
    """A fixed alias as a numpy step; None for anchored ones (months, weeks)."""
    m = _FIXED.match(freq)
    if m is None:
        return None
    return np.timedelta64(int(m.group(1) or 1) * _SECONDS[m.group(2)], "s")


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
        _check_pair(samples, point)
        self = super().__new__(cls, samples, point)
        B, N = point.shape[0], point.shape[2]
        if scaler is not None and not isinstance(scaler, StandardScaler):
            raise TypeError(expected("scaler", "a StandardScaler or None", scaler))
        if scaler is not None and scaler.n_variates != N:
            raise ValueError(
                f"scaler: expected statistics of N = {N} variates, got {scaler.n_variates}"
            )
        self._scaler = scaler
        self._start = check_start(start, B)
        self._freq = check_freq(freq)
        self._variates = _check_variates(variates, N)
        self._window_ids = _check_ids(window_ids, B)
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
        start, freq = self._need_dates("Forecast.dates")
        H = self.point.shape[1]
        step = _step(freq)
        if step is not None:
            return start[:, None] + np.arange(H) * step  # [B, H]
        pd = _pandas("Forecast.dates")  # anchored steps (months, weeks) need calendars
        rows = [pd.period_range(pd.Period(s, freq=freq), periods=H).to_timestamp() for s in start]
        return np.stack([r.to_numpy().astype("datetime64[s]") for r in rows])  # [B, H]

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
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise ModuleNotFoundError(
                "Forecast.plot: needs matplotlib (pip install 'diffsample[plot]')",
                name="matplotlib",
            ) from exc
        B, H, N = self.point.shape
        b = check_int("window", window, minimum=-B, maximum=B - 1) % B
        v = check_int("variate", variate, minimum=-N, maximum=N - 1) % N
        lvs = sorted(
            (
                check_number(f"levels[{i}]", x, minimum=0, maximum=1, open_min=True, open_max=True)
                for i, x in enumerate(_as_list("levels", levels))
            ),
            reverse=True,
        )
        qs = [0.5] + [q for lv in lvs for q in ((1 - lv) / 2, (1 + lv) / 2)]
        q = sample_quantiles(self.samples[:, b, :, v].detach().float().cpu(), qs).numpy()  # [Q, H]
        h = None if history is None else _one_window("history", history, B, N)[b, :, v]  # [L]
        y = None if truth is None else _one_window("truth", truth, B, N, H)[b, :, v]  # [H]
        x, x_hist = self._x_axis(b, 0 if h is None else h.shape[0])
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(8, 3))
        if h is not None:
            ax.plot(x_hist, h, color="0.45", lw=1, label="history")
        for i, lv in enumerate(lvs):  # widest first, so narrower bands draw on top
            lo, hi = q[1 + 2 * i], q[2 + 2 * i]
            alpha = 0.15 + 0.25 * i / len(lvs)
            ax.fill_between(x, lo, hi, color=color, alpha=alpha, lw=0, label=f"{lv:.0%}")
        ax.plot(x, q[0], color=color, lw=1.2, label="median")
        if y is not None:
            ax.plot(x, y, color="k", lw=1.2, label="truth")
        name = self._variates[v] if self._variates is not None else f"variate {v}"
        wid = b if self._window_ids is None else int(self._window_ids[b])
        ax.set_title(plain_text(f"window {wid}, {name} ({self._units} units)"), usetex=False)
        ax.legend(fontsize=7, ncol=len(lvs) + 3, loc="upper left")
        return ax

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
        pd = _pandas("Forecast.to_gluonts", extra="gluonts")
        try:
            SampleForecast = importlib.import_module("gluonts.model.forecast").SampleForecast
        except ImportError as exc:
            raise ModuleNotFoundError(
                "Forecast.to_gluonts: needs gluonts (pip install 'diffsample[gluonts]')",
                name="gluonts",
            ) from exc
        start, freq = self._need_dates("Forecast.to_gluonts")
        x = self.samples.detach().float().cpu().numpy()  # [S, B, H, N]
        out = []
        for b, (wid, names) in enumerate(self._items(multivariate)):
            p = pd.Period(start[b], freq=freq)
            if multivariate:
                out.append(SampleForecast(np.ascontiguousarray(x[:, b]), p, item_id=wid))
                continue
            for v, name in enumerate(names):
                s = np.ascontiguousarray(x[:, b, :, v])  # [S, H]
                out.append(SampleForecast(s, p, item_id=f"{wid}/{name}"))
        return out

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
        pd = _pandas("Forecast.gluonts_targets", extra="gluonts")
        start, freq = self._need_dates("Forecast.gluonts_targets")
        B, H, N = self.point.shape
        y = _one_window("truth", truth, B, N, H)  # [B, H, N]
        if history is not None:
            y = np.concatenate([_one_window("history", history, B, N), y], axis=1)  # [B, L+H, N]
        past = y.shape[1] - H
        out: list[Any] = []
        for b, (wid, names) in enumerate(self._items(multivariate)):
            index = pd.period_range(pd.Period(start[b], freq=freq) - past, periods=y.shape[1])
            if multivariate:
                # integer columns: GluonTS's MultivariateEvaluator selects them as frame[dim]
                out.append(pd.DataFrame(y[b], index=index, columns=range(N)))
                continue
            out.extend(
                pd.Series(y[b, :, v], index=index, name=f"{wid}/{n}") for v, n in enumerate(names)
            )
        return out

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
    def _need_dates(self, where: str) -> tuple[np.ndarray, str]:
        if self._start is None or self._freq is None:
            raise ValueError(
                f"{where}: the forecast has no dates; pass start= and freq= to forecast() "
                "(window_dates(split, index) gives both) or set them with replace()"
            )
        return self._start, self._freq

    def _need_scaler(self, where: str) -> StandardScaler:
        if self._scaler is None:
            raise ValueError(
                f"{where}: the forecast has no scaler (a model that never trained on a dataset); "
                "set one with replace(scaler=data.scaler)"
            )
        return self._scaler

    def _items(self, multivariate: bool) -> list[tuple[str, tuple[str, ...]]]:
        """Each window's id and the variate names, as GluonTS item ids use them."""
        if not isinstance(multivariate, bool):
            raise TypeError(expected("multivariate", "True or False", multivariate))
        B, _, N = self.point.shape
        names = self._variates or tuple(str(v) for v in range(N))
        ids = range(B) if self._window_ids is None else self._window_ids.tolist()
        return [(str(w), names) for w in ids]

    def _x_axis(self, b: int, n_history: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``b``'s x values: ``[H]`` for the forecast and ``[n_history]`` before it;
        dates for a fixed step, else steps 1..H and -n_history+1..0."""
        H = self.point.shape[1]
        step = None if self._freq is None else _step(self._freq)
        if self._start is not None and step is not None:
            x = self.dates()[b]  # [H]
            return x, x[0] - np.arange(n_history, 0, -1) * step
        return np.arange(1, H + 1), np.arange(-n_history + 1, 1)


def _check_pair(samples: object, point: object) -> None:
    for name, t, want in (("samples", samples, "[S, B, H, N]"), ("point", point, "[B, H, N]")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(expected(name, f"a floating-point tensor {want}", t))
    assert isinstance(samples, torch.Tensor) and isinstance(point, torch.Tensor)  # for mypy
    if samples.ndim != 4 or point.ndim != 3 or samples.shape[1:] != point.shape:
        raise ValueError(
            f"samples, point: expected [S, B, H, N] and [B, H, N], got {tuple(samples.shape)} "
            f"and {tuple(point.shape)}"
        )


def _check_variates(value: object, n: int) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(expected("variates", f"a sequence of {n} names", value))
    names = tuple(value)
    if len(names) != n or not all(isinstance(v, str) for v in names):
        raise ValueError(expected("variates", f"{n} names (str), one per variate", value))
    return names


def _check_ids(value: object, n: int) -> torch.Tensor | None:
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


def _as_list(name: str, value: object) -> list[object]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(expected(name, "a sequence of numbers", value))
    if not value:
        raise ValueError(expected(name, "at least one level", value))
    return list(value)


def _one_window(name: str, value: object, B: int, N: int, H: int | None = None) -> np.ndarray:
    """``value`` ``[B, T, N]`` (T = H if given) as a float32 (or float64) numpy array."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(expected(name, "a floating-point tensor [B, T, N]", value))
    T = value.shape[1] if value.ndim == 3 else -1
    if value.ndim != 3 or value.shape[0] != B or value.shape[2] != N or (H is not None and T != H):
        want = f"[{B}, {'T' if H is None else H}, {N}] (B, {'T' if H is None else 'H'}, N)"
        raise ValueError(expected(name, f"a tensor {want} like the forecast", value))
    return _host(value)


def _pandas(where: str, *, extra: str = "gluonts") -> Any:
    try:
        return importlib.import_module("pandas")
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"{where}: needs pandas (pip install 'diffsample[{extra}]')", name="pandas"
        ) from exc


def plain_text(text: str) -> str:
    """``text`` for a matplotlib Text with usetex off: every ``$`` escaped, so none opens
    mathtext (an escaped dollar is drawn as a dollar; the same in every matplotlib version)."""
    return text.replace("$", r"\$")


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
    arrays = npz_arrays(forecast, targets=targets, meta=meta)

    def write(f: IO[bytes]) -> None:
        np.savez(f, **arrays)  # type: ignore[arg-type]

    return atomic_write(p, write)


def npz_arrays(
    forecast: Forecast,
    *,
    targets: torch.Tensor | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays :func:`save_samples` writes (checked), for a caller with its own writer."""
    if not isinstance(forecast, Forecast):
        raise TypeError(expected("forecast", "a Forecast", forecast))
    B, H, N = forecast.point.shape
    arrays: dict[str, np.ndarray] = {
        "format": np.array(SAMPLES_FORMAT),
        "samples": _host(forecast.samples),
        "point": _host(forecast.point),
        "units": np.array(forecast.units),
    }
    if targets is not None:
        y = _one_window("targets", targets, B, N, H)  # [B, H, N]
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


def _host(t: torch.Tensor) -> np.ndarray:
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.detach().to("cpu", dtype).numpy()


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
    scaler = None
    if "scaler_mean" in a:
        scaler = StandardScaler(mean=a["scaler_mean"], std=a["scaler_std"])
    fc = Forecast(
        torch.from_numpy(a["samples"]),
        torch.from_numpy(a["point"]),
        scaler=scaler,
        start=a.get("start"),
        freq=str(a["freq"]) if "freq" in a else None,
        variates=[str(v) for v in a["variates"]] if "variates" in a else None,
        window_ids=torch.from_numpy(a["window_ids"]) if "window_ids" in a else None,
        units=str(a["units"]),  # type: ignore[arg-type]
    )
    targets = torch.from_numpy(a["targets"]) if "targets" in a else None
    meta = json.loads(str(a["meta"])) if "meta" in a else {}
    return LoadedSamples(fc, targets, meta)
