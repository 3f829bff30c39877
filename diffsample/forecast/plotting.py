"""Fan charts: :meth:`Forecast.plot <diffsample.forecast.forecast.Forecast.plot>`'s axes and
the figure of the result's ``<name>_fan_chart.png``, and the windows a chart keeps.

Dimensions: S samples, B (W) windows, H horizon, N variates, L lookback, Q quantile levels.

matplotlib (the ``plot`` extra) is imported by the functions that draw, never at import time;
the figure of :func:`fan_chart_figure` is built without pyplot (no global backend or figure
state is touched). Data strings (a CSV's column and file names) are drawn as plain text
(:func:`plain_text`). Writing the PNG is the report's
(:func:`diffsample.forecast.report.fan_chart`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._utils import check_int, check_number, check_tensor, expected
from ..metrics import sample_quantiles
from .data import WindowBatch
from .dates import fixed_step
from .samples_file import window_array

if TYPE_CHECKING:  # matplotlib is the plot extra; a Forecast is read through its attributes
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .forecast import Forecast

__all__ = [
    "WindowKeeper",
    "fan_chart_figure",
    "have_matplotlib",
    "plain_text",
    "plot_forecast",
    "spread_windows",
]


def plain_text(text: str) -> str:
    """``text`` for a matplotlib Text with usetex off: every ``$`` escaped, so none opens
    mathtext (an escaped dollar is drawn as a dollar; the same in every matplotlib version)."""
    return text.replace("$", r"\$")


def have_matplotlib() -> bool:
    """Whether :func:`~diffsample.forecast.report.fan_chart` can draw (matplotlib, the ``plot``
    extra, imports)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def plot_forecast(
    fc: Forecast,
    ax: Axes | None = None,
    *,
    window: int = 0,
    variate: int = -1,
    levels: Sequence[float] = (0.5, 0.9),
    truth: torch.Tensor | None = None,
    history: torch.Tensor | None = None,
    color: str = "C0",
) -> Axes:
    """:meth:`Forecast.plot <diffsample.forecast.forecast.Forecast.plot>` (see there)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ModuleNotFoundError(
            "Forecast.plot: needs matplotlib (pip install 'diffsample[plot]')",
            name="matplotlib",
        ) from exc
    B, H, N = fc.point.shape
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
    q = sample_quantiles(fc.samples[:, b, :, v].detach().float().cpu(), qs).numpy()  # [Q, H]
    h = None if history is None else window_array("history", history, B, N)[b, :, v]  # [L]
    y = None if truth is None else window_array("truth", truth, B, N, H)[b, :, v]  # [H]
    x, x_hist = _x_axis(fc, b, 0 if h is None else h.shape[0])
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
    name = fc.variates[v] if fc.variates is not None else f"variate {v}"
    wid = b if fc.window_ids is None else int(fc.window_ids[b])
    ax.set_title(plain_text(f"window {wid}, {name} ({fc.units} units)"), usetex=False)
    ax.legend(fontsize=7, ncol=len(lvs) + 3, loc="upper left")
    return ax


def _x_axis(fc: Forecast, b: int, n_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Window ``b``'s x values: ``[H]`` for the forecast and ``[n_history]`` before it;
    dates for a fixed step, else steps 1..H and -n_history+1..0."""
    H = fc.point.shape[1]
    step = None if fc.freq is None else fixed_step(fc.freq)
    if fc.start is not None and step is not None:
        x = fc.dates()[b]  # [H]
        return x, x[0] - np.arange(n_history, 0, -1) * step
    return np.arange(1, H + 1), np.arange(-n_history + 1, 1)


def _as_list(name: str, value: object) -> list[object]:
    """``levels`` as a non-empty list (its items are checked by the caller)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(expected(name, "a sequence of numbers", value))
    if not value:
        raise ValueError(expected(name, "at least one level", value))
    return list(value)


def fan_chart_figure(
    samples: torch.Tensor,
    truth: torch.Tensor,
    *,
    history: torch.Tensor | None = None,
    window_ids: Sequence[int] | None = None,
    variate: int = -1,
    variate_name: str | None = None,
    levels: tuple[float, float] = (0.5, 0.9),
    title: str | None = None,
) -> Figure:
    """The figure :func:`diffsample.forecast.report.fan_chart` writes (see there for the
    arguments): one row of axes per window, ``samples [S, W, H, N]`` against ``truth [W, H, N]``."""
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
    name = plain_text(variate_name or f"variate {v}")
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
        fig.suptitle(plain_text(title), fontsize=10, usetex=False)
    return fig


class WindowKeeper:
    """The samples, targets and histories of a few windows (for
    :func:`~diffsample.forecast.report.fan_chart`), as an
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
