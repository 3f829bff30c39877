"""What the ``diffsample`` command writes beside a checkpoint, as library functions.

Dimensions: S samples, W windows, L lookback, H horizon, N variates.

    <name>.json             results_dict(...) then write_json: configs, data spec, machine,
                            library versions, wall times, scores; NaN / inf written as null and
                            named in a "notes" entry (JSON has no NaN)
    <name>_per_step.csv     write_per_step_csv(Evaluation.per_step): one row per horizon step
    <name>_fan_chart.png    fan_chart(samples [S, W, H, N], truth [W, H, N], ...), matplotlib
    <name>_samples.npz      SampleStore.save: the forecast file of diffsample.forecast.forecast
                            (numpy, no pickle): samples [S, W, H, N] float32, window ids,
                            targets and point forecasts [W, H, N], start dates, freq, units,
                            scaler statistics and variate names (load_samples reads it; a
                            path with another suffix gets the same keys with torch.save)

The content of the JSON is :mod:`~diffsample.forecast.results`'s, the chart's figure and the
windows it keeps :mod:`~diffsample.forecast.plotting`'s; their names still import from here.

Every file is written atomically (a temp file renamed into place): a failure raises
:class:`OutputError` (an OSError) naming the file and the cause, and leaves the old file or
none, never a half-written one. Nothing here prints; the command does.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch

from .._utils import atomic_write, check_int, expected
from .data import ForecastSplit, StandardScaler, WindowBatch
from .forecast import Forecast, infer_freq, npz_arrays
from .plotting import WindowKeeper, fan_chart_figure, have_matplotlib, spread_windows
from .plotting import plain_text as _plain  # noqa: F401 (tests/test_evaluation.py reads it)
from .results import library_versions, machine_info, per_step_columns, results_dict

__all__ = [
    "OutputError",
    "OutputFiles",
    "SampleStore",
    "WindowKeeper",
    "check_output_file",
    "fan_chart",
    "have_matplotlib",
    "json_safe",
    "library_versions",
    "machine_info",
    "per_step_columns",
    "prepare_output_dir",
    "results_dict",
    "spread_windows",
    "write_json",
    "write_per_step_csv",
]

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------------------ locations
class OutputError(OSError):
    """A file or folder the results go to cannot be written: the message names it and why."""

    def __init__(self, message: str, path: PathLike, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # OSError's own field; a 1-argument init leaves it None
        self.path = Path(path)


def _cause(exc: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] No space left on device: '/x/.tmp'``."""
    return exc.strerror or str(exc) or type(exc).__name__


class OutputFiles(NamedTuple):
    """The files of one result, named after the results file ``<name>.json``."""

    results: Path
    per_step: Path
    fan_chart: Path
    samples: Path

    @classmethod
    def beside(cls, results: PathLike) -> OutputFiles:
        """``<name>.json``, ``<name>_per_step.csv``, ``<name>_fan_chart.png``, ``<name>_samples.npz``."""
        r = Path(results)
        stem = r.name.removesuffix(".json")
        return cls(
            r,
            r.with_name(f"{stem}_per_step.csv"),
            r.with_name(f"{stem}_fan_chart.png"),
            r.with_name(f"{stem}_samples.npz"),
        )


def prepare_output_dir(path: PathLike, *, name: str = "out") -> Path:
    """Make sure results can be written into the folder ``path`` before any work is done: it is
    created if missing, and a probe file is written and removed.

    Raises:
        OutputError: ``path`` is an existing file, or the folder cannot be created or written
            (read-only, no permission, ...); the message names the argument and the path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{name}: expected a directory, got the existing file {p}", p)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{name}: cannot create the directory {p}: {_cause(exc)}", p, exc.errno
        ) from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".diffsample-probe.", dir=p)
    except OSError as exc:
        raise OutputError(
            f"{name}: cannot write into the directory {p}: {_cause(exc)}", p, exc.errno
        ) from exc
    os.close(fd)
    os.unlink(probe)
    return p


def check_output_file(path: PathLike, *, name: str = "out") -> Path:
    """A results file can be written at ``path``: not an existing directory, its folder
    writable (created if missing, :func:`prepare_output_dir`)."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{name}: expected a file name, got the existing directory {p}", p)
    prepare_output_dir(p.parent, name=name)
    return p


def _write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """``atomic_write`` with the failure as an OutputError naming ``path`` (not its temp file)."""
    try:
        return atomic_write(path, write)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_cause(exc)}", path, exc.errno) from exc


def _write_text(path: PathLike, text: str) -> Path:
    def write(f: IO[bytes]) -> None:
        f.write(text.encode())

    return _write(path, write)


# ------------------------------------------------------------------------------------ JSON
def json_safe(obj: Any, _where: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, and where they were.

    Args:
        obj: dicts, lists, tuples, strings, numbers, None, paths (nested).

    Returns:
        ``(clean, fields)``: fields as dotted paths, e.g. ``["scores.quantile_crps"]``.
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [_where or "(top level)"]
    if isinstance(obj, Mapping):
        out, found = {}, []
        for k, v in obj.items():
            out[k], f = json_safe(v, f"{_where}.{k}" if _where else str(k))
            found += f
        return out, found
    if isinstance(obj, (list, tuple)):
        items = [json_safe(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], [w for _, f in items for w in f]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj), []
    return obj, []


_NAN_NOTE = (
    "JSON has no NaN or infinity, so null stands for a value that was not finite in: {fields}. "
    "A score is NaN when it is undefined for these data (the quantile CRPS when every target "
    "is 0, any metric when nothing was scored) or when the inputs held NaN."
)


def write_json(path: PathLike, obj: Mapping[str, Any]) -> Path:
    """Write ``obj`` as strict JSON (``allow_nan=False``), atomically.

    Non-finite floats become null and a ``"notes"`` entry names those fields and why (so a
    reader that rejects NaN, or mistakes null for 0, is not misled).

    Raises:
        OutputError: the file cannot be written (the message names it and the cause).
    """
    clean, fields = json_safe(obj)
    if fields:
        clean["notes"] = [*clean.get("notes", []), _NAN_NOTE.format(fields=", ".join(fields))]
    text = json.dumps(clean, indent=2, allow_nan=False) + "\n"
    return _write_text(path, text)


# ------------------------------------------------------------------------------------ CSV
def write_per_step_csv(path: PathLike, per_step: Mapping[str, Sequence[float]]) -> Path:
    """One row per horizon step, one column per score (``Evaluation.per_step``), atomically.

    Args:
        path: the ``.csv`` file.
        per_step: column -> H values; a ``"step"`` column is written as integers, NaN as ``nan``.
    """
    if not per_step:
        raise ValueError("per_step: expected the columns of Evaluation.per_step, got none")
    names = list(per_step)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for row in zip(*(per_step[k] for k in names), strict=True):
        w.writerow(
            int(v) if k == "step" else repr(float(v)) for k, v in zip(names, row, strict=True)
        )
    text = buf.getvalue()
    return _write_text(path, text)


# ------------------------------------------------------------------------------------ samples
class SampleStore:
    """Every sample of an evaluation, for users who score them their own way.

    An ``on_batch`` hook of :func:`~diffsample.forecast.evaluate_split` that copies each batch
    into tensors allocated once on the CPU (S x W x H x N x 4 bytes: 750 MB for the whole
    ETTh1 test set at 100 samples; no concatenation doubles it).

    Args:
        n_windows: W, the windows the evaluation scores.
        n_samples: S.
        horizon: H.
        n_variates: N.
        split: the split scored; gives each window's start date and the step for the
            ``.npz`` file (else the forecasts' own ``start`` / ``freq`` are kept, if any).
    """

    def __init__(
        self,
        n_windows: int,
        n_samples: int,
        horizon: int,
        n_variates: int,
        *,
        split: ForecastSplit | None = None,
    ) -> None:
        W, S = check_int("n_windows", n_windows), check_int("n_samples", n_samples)
        H, N = check_int("horizon", horizon), check_int("n_variates", n_variates)
        if split is not None and not isinstance(split, ForecastSplit):
            raise TypeError(expected("split", "a ForecastSplit or None", split))
        self.samples = torch.empty(S, W, H, N)  # [S, W, H, N] float32
        self.targets = torch.empty(W, H, N)  # [W, H, N]
        self.point = torch.empty(W, H, N)  # [W, H, N]
        self.window_ids = torch.full((W,), -1, dtype=torch.int64)  # [W]
        self.start = np.full(W, np.datetime64("NaT"), dtype="datetime64[s]")  # [W]
        self.freq = None if split is None else infer_freq(split.dates)
        self._split = split
        self._filled = 0

    def __call__(self, batch: WindowBatch, forecast: Forecast) -> None:
        lo, hi = self._filled, self._filled + batch.x.shape[0]
        if hi > self.window_ids.shape[0]:
            raise ValueError(
                f"SampleStore: room for {self.window_ids.shape[0]} windows, got a batch ending at {hi}"
            )
        self.samples[:, lo:hi] = forecast.samples.float().cpu()  # [S, B, H, N]
        self.targets[lo:hi] = batch.y.cpu()
        self.point[lo:hi] = forecast.point.float().cpu()
        self.window_ids[lo:hi] = batch.index.cpu()
        if self._split is not None:
            idx = batch.index.cpu().numpy() + self._split.lookback  # [B]: first target rows
            self.start[lo:hi] = self._split.dates[idx]
        elif forecast.start is not None:
            self.start[lo:hi] = forecast.start
            self.freq = forecast.freq
        self._filled = hi

    def save(self, path: PathLike, **meta: Any) -> Path:
        """Write the samples kept so far, atomically.

        A path ending in ``.npz``: the forecast file of
        :func:`~diffsample.forecast.forecast.save_samples` (read it with
        :func:`~diffsample.forecast.forecast.load_samples`), in scaled units, with the window
        ids, targets, start dates and step when known, and the scaler statistics and variate
        names of ``meta["data"]`` (a data spec) when given; ``meta`` is stored as JSON.

        Any other path: ``{"samples", "window_ids", "targets", "point", **meta}`` with
        ``torch.save``; read it back with ``torch.load(path, weights_only=True)``.

        Args:
            path: the file.
            **meta: plain values (strings, numbers, lists, dicts), e.g. ``data`` (the data
                spec), ``split`` and ``units``.
        """
        n = self._filled
        if Path(path).suffix == ".npz":
            arrays = npz_arrays(
                self.forecast(meta.get("data")), targets=self.targets[:n], meta=meta
            )
            return _write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
        payload = {
            "samples": self.samples[:, :n],
            "window_ids": self.window_ids[:n],
            "targets": self.targets[:n],
            "point": self.point[:n],
            **meta,
        }
        return _write(path, lambda f: torch.save(payload, f))

    def forecast(self, data_spec: Mapping[str, Any] | None = None) -> Forecast:
        """The samples kept so far as a :class:`~diffsample.forecast.forecast.Forecast` (scaled
        units; its scaler and variate names from ``data_spec``, a data spec, when given)."""
        n = self._filled
        start = self.start[:n]
        dated = n > 0 and not bool(np.isnat(start).any())
        spec = data_spec or {}
        scaler = None
        if spec.get("scaler_mean") is not None and spec.get("scaler_std") is not None:
            scaler = StandardScaler(mean=spec["scaler_mean"], std=spec["scaler_std"])
        cols = spec.get("columns")
        return Forecast(
            self.samples[:, :n],
            self.point[:n],
            scaler=scaler,
            start=start if dated else None,
            freq=self.freq if dated else None,
            variates=list(cols) if cols is not None else None,
            window_ids=self.window_ids[:n],
        )


# ------------------------------------------------------------------------------------ fan chart
def fan_chart(
    path: PathLike,
    samples: torch.Tensor,
    truth: torch.Tensor,
    *,
    history: torch.Tensor | None = None,
    window_ids: Sequence[int] | None = None,
    variate: int = -1,
    variate_name: str | None = None,
    levels: tuple[float, float] = (0.5, 0.9),
    title: str | None = None,
) -> Path:
    """A PNG of a few windows of one variate: the central 50% and 90% bands of the samples,
    their median, the truth, and the end of the history; written atomically.

    Needs matplotlib (``pip install 'diffsample[plot]'``), imported by the call, not at import
    time, and used without pyplot (no global backend or figure state is touched; the figure is
    :func:`~diffsample.forecast.plotting.fan_chart_figure`'s).

    Args:
        path: the ``.png`` file.
        samples: ``[S, W, H, N]``.
        truth: ``[W, H, N]``.
        history: ``[W, L, N]`` or None; the last min(L, 2H) steps are drawn.
        window_ids: W labels (e.g. the split indices); default 0..W-1.
        variate: the variate to draw (an index into N; -1, the last, is the target ``OT`` of
            the ETT files).
        variate_name: its name in the titles.
        levels: the two central interval levels, inner then outer.
        title: the figure's title.

    ``variate_name`` and ``title`` are drawn as plain text: they carry data (a CSV's column
    and file names), and matplotlib would otherwise parse ``$...$`` in them as mathtext (or the
    whole string as TeX under ``text.usetex``) and fail on a name that is not valid markup.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (the message says how to get it).
        ValueError: shapes that do not fit.
    """
    fig = fan_chart_figure(
        samples,
        truth,
        history=history,
        window_ids=window_ids,
        variate=variate,
        variate_name=variate_name,
        levels=levels,
        title=title,
    )
    return _write(path, lambda f: fig.savefig(f, format="png", dpi=100))
