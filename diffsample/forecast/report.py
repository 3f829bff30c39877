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

Every file is written atomically (a temp file renamed into place): a failure raises
:class:`OutputError` (an OSError) naming the file and the cause, and leaves the old file or
none, never a half-written one. Nothing here prints; the command does.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch

from .._utils import atomic_write, check_int, check_tensor, expected
from ..metrics import sample_quantiles
from .data import ForecastSplit, StandardScaler, WindowBatch
from .evaluation import Evaluation
from .forecast import Forecast, infer_freq, npz_arrays
from .forecast import plain_text as _plain
from .model import ForecastConfig
from .training import TrainConfig

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


# ------------------------------------------------------------------------------------ results
def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Where a result was computed: platform, CPU name, cores, torch threads, CUDA device name."""
    device = torch.device(device)
    return {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def _cpu_name() -> str:
    try:  # Linux: platform.processor() only says "x86_64"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def library_versions() -> dict[str, str]:
    """Versions of diffsample, torch, numpy and Python."""
    from .. import __version__

    return {
        "diffsample": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def results_dict(
    *,
    command: str,
    data: Mapping[str, Any],
    split: str,
    evaluation: Evaluation,
    config: ForecastConfig,
    device: str | torch.device,
    checkpoint: PathLike | None = None,
    train_config: TrainConfig | None = None,
    history: Sequence[Mapping[str, float]] = (),
    training_seconds: float | None = None,
    files: Mapping[str, PathLike | None] | None = None,
    processes: int = 1,
    baselines: Mapping[str, Evaluation] | None = None,
) -> dict[str, Any]:
    """The results file's content: what was scored, how, where, with what, and the scores.

    Args:
        command: ``"train"``, ``"evaluate"``, ``"demo"`` or a script's name.
        data: the data's spec (``ForecastDataset.spec()``: source, lookback, horizon, ...).
        split: the split scored (``"test"``, ``"val"``, ``"train"``).
        evaluation: what :func:`~diffsample.forecast.evaluate_split` returned.
        config: the model's configuration.
        device: where it ran.
        checkpoint: the model file.
        train_config: the trainer's settings, if trained in this run.
        history: the training epochs' records.
        training_seconds: wall time of training, if trained in this run.
        files: the other outputs (per-step table, fan chart, samples), name -> path or None.
        processes: how many processes (torchrun ranks) sampled the split.
        baselines: name -> the scores of a baseline on the same windows
            (:func:`~diffsample.forecast.evaluation.evaluate_baselines`), written under
            ``"baselines"``; None: not scored.

    Returns:
        A JSON-ready dict (NaN scores included; :func:`write_json` writes them as null).
    """
    _checked("evaluation", evaluation)
    return {
        "command": command,
        "data": dict(data),
        "split": split,
        "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
        "config": dataclasses.asdict(config),
        "train": None if train_config is None else dataclasses.asdict(train_config),
        "history": [dict(r) for r in history],
        "scores": evaluation.as_dict(),
        "baselines": None
        if baselines is None
        else {k: _checked(f"baselines[{k!r}]", v).as_dict() for k, v in baselines.items()},
        "seconds": {
            "training": None if training_seconds is None else round(training_seconds, 3),
            "sampling": round(evaluation.seconds, 3),
            "scoring": round(evaluation.scoring_seconds, 3),
        },
        "machine": machine_info(device),
        "processes": check_int("processes", processes),
        "versions": library_versions(),
        "files": {k: None if v is None else os.fspath(v) for k, v in (files or {}).items()},
    }


def _checked(name: str, evaluation: object) -> Evaluation:
    if not isinstance(evaluation, Evaluation):
        raise TypeError(expected(name, "an Evaluation (evaluate_split)", evaluation))
    return evaluation


def per_step_columns(
    evaluation: Evaluation, baselines: Mapping[str, Evaluation] | None = None
) -> dict[str, tuple[float, ...]]:
    """The per-step table of a result: ``evaluation.per_step``, then for each baseline its
    ``crps``, ``mse_mean`` and ``coverage_*`` columns as ``<name>_<column>`` (its point
    columns are the model's own)."""
    out = dict(_checked("evaluation", evaluation).per_step)
    for name, ev in (baselines or {}).items():
        for col, values in _checked(f"baselines[{name!r}]", ev).per_step.items():
            if col == "crps" or col == "mse_mean" or col.startswith("coverage_"):
                out[f"{name}_{col}"] = values
    return out


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


class WindowKeeper:
    """The samples, targets and histories of a few windows (for :func:`fan_chart`), as an
    ``on_batch`` hook of :func:`~diffsample.forecast.evaluate_split`.

    Args:
        window_ids: the split indices of the windows to keep (e.g. :func:`spread_windows`).
    """

    def __init__(self, window_ids: Sequence[int]) -> None:
        self.window_ids = [
            check_int(f"window_ids[{i}]", w, minimum=0) for i, w in enumerate(window_ids)
        ]
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: WindowBatch, forecast: Forecast) -> None:
        for j, w in enumerate(batch.index.tolist()):
            if w in self.window_ids:
                s = forecast.samples[:, j].float().cpu()  # [S, H, N]
                self._kept[w] = (s, batch.y[j].cpu(), batch.x[j].cpu())

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """``(samples [S, W, H, N], truth [W, H, N], history [W, L, N], ids)`` of the windows seen."""
        ids = [w for w in self.window_ids if w in self._kept]
        if not ids:
            raise ValueError("WindowKeeper: none of the windows to keep was evaluated")
        kept = [self._kept[w] for w in ids]
        samples = torch.stack([k[0] for k in kept], dim=1)  # [S, W, H, N]
        truth = torch.stack([k[1] for k in kept])  # [W, H, N]
        history = torch.stack([k[2] for k in kept])  # [W, L, N]
        return samples, truth, history, ids


def spread_windows(n_windows: int, k: int = 3) -> list[int]:
    """``k`` window indices spread evenly over ``0 .. n_windows - 1`` (fewer if there are fewer)."""
    n, k = check_int("n_windows", n_windows), check_int("k", k)
    if k == 1 or n == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


# ------------------------------------------------------------------------------------ fan chart
def have_matplotlib() -> bool:
    """Whether :func:`fan_chart` can draw (matplotlib, the ``plot`` extra, imports)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


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

    Needs matplotlib (``pip install 'diffsample[plot]'``), imported here, not at import time,
    and used without pyplot (no global backend or figure state is touched).

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
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ModuleNotFoundError(
            "fan_chart: needs matplotlib (pip install 'diffsample[plot]')", name="matplotlib"
        ) from exc
    check_tensor("samples", samples, floating=True)
    check_tensor("truth", truth, floating=True)
    if samples.ndim != 4 or truth.shape != samples.shape[1:]:
        raise ValueError(
            f"samples, truth: expected [S, W, H, N] and [W, H, N], got {tuple(samples.shape)} "
            f"and {tuple(truth.shape)}"
        )
    W, H, N = truth.shape
    v = check_int("variate", variate, minimum=-N, maximum=N - 1) % N
    ids = list(range(W)) if window_ids is None else [int(w) for w in window_ids]
    inner, outer = levels
    qs = [(1 - outer) / 2, (1 - inner) / 2, 0.5, (1 + inner) / 2, (1 + outer) / 2]
    q = sample_quantiles(samples[..., v].float().cpu(), qs).numpy()  # [5, W, H]
    steps = np.arange(1, H + 1)
    fig = Figure(figsize=(8, 2.4 * W), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(W, 1, squeeze=False)[:, 0]
    name = _plain(variate_name or f"variate {v}")
    for i, ax in enumerate(axes):
        if history is not None:
            tail = history[i, -min(history.shape[1], 2 * H) :, v].float().cpu().numpy()
            ax.plot(np.arange(-len(tail) + 1, 1), tail, color="0.45", lw=1, label="history")
        ax.fill_between(steps, q[0, i], q[4, i], color="C0", alpha=0.2, lw=0, label=f"{outer:.0%}")
        ax.fill_between(steps, q[1, i], q[3, i], color="C0", alpha=0.4, lw=0, label=f"{inner:.0%}")
        ax.plot(steps, q[2, i], color="C0", lw=1.2, label="median")
        ax.plot(steps, truth[i, :, v].float().cpu().numpy(), color="k", lw=1.2, label="truth")
        ax.set_title(f"window {ids[i]}, {name}", fontsize=9, usetex=False)
        ax.set_xlabel("step (0 = last observed)", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7, ncol=5, loc="upper left")
    if title:
        fig.suptitle(_plain(title), fontsize=10, usetex=False)
    return _write(path, lambda f: fig.savefig(f, format="png", dpi=100))
