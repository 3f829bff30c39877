"""Scoring a split: probabilistic forecasts batch by batch into streaming metrics, with timings.

Dimensions: S samples, B windows per forecast call, H horizon, N variates.

    for each batch of B windows:  Forecast(samples [S, B, H, N], point [B, H, N]) = model.forecast(...)
                                   ForecastMetrics.update(samples, y)    float64 sums, nothing kept
    Evaluation(metrics, sampler, steps, samples, windows, seconds)

Windows keep their index in the split as the key of their noise, so the scores do not depend
on the batch size (up to the float round-off of the denoiser's kernels).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import torch

from .._utils import check_int, expected
from ..metrics import ForecastMetrics
from ..samplers import Sampler
from .data import ForecastSplit
from .model import ITransformerDiffusion

__all__ = ["Evaluation", "evaluate_split"]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The scores of a split and how they were obtained.

    Attributes:
        metrics: metric name -> value: every key of :meth:`diffsample.ForecastMetrics.compute`
            (``crps``, ``quantile_crps``, ``mse_mean``, ``coverage_90``, ...) for the samples,
            plus ``point_mse`` and ``point_mae`` of the backbone's point forecast.
        sampler: the sampler's name (a function's ``__name__``).
        steps: K sampling steps.
        samples: S samples per window.
        windows: windows scored.
        seconds: wall time of the forecast calls (backbone and sampling), device synchronised.
    """

    metrics: Mapping[str, float]
    sampler: str
    steps: int
    samples: int
    windows: int
    seconds: float

    def __post_init__(self) -> None:
        # a private copy: the caller's dict changing later must not change a frozen record
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})

    def as_dict(self) -> dict[str, float | int | str]:
        """One flat JSON-ready dict: the metrics, then ``windows``, ``samples``, ``steps``,
        ``sampler`` and ``sampling_seconds`` (rounded to milliseconds)."""
        return {
            **self.metrics,
            "windows": self.windows,
            "samples": self.samples,
            "steps": self.steps,
            "sampler": self.sampler,
            "sampling_seconds": round(self.seconds, 3),
        }


def evaluate_split(
    model: ITransformerDiffusion,
    split: ForecastSplit,
    *,
    n_samples: int = 100,
    num_steps: int = 50,
    sampler: str | Sampler = "ddim",
    batch_size: int = 256,
    max_windows: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Evaluation:
    """Score the first ``max_windows`` windows of a split (all by default), streaming: the
    samples of one batch are scored and dropped before the next is drawn.

    Runs on the model's device (the split is moved there).

    Args:
        model: a trained forecaster.
        split: windows with history x ``[W, L, N]`` and targets y ``[W, H, N]``.
        n_samples: S samples per window.
        num_steps: K sampling steps.
        sampler: a name in :data:`diffsample.SAMPLERS` or a sampler function.
        batch_size: windows per :meth:`~ITransformerDiffusion.forecast` call.
        max_windows: score only the first this many windows.
        seed: keys the noise together with each window's index in the split.
        progress: passed to ``forecast``.

    Returns:
        An :class:`Evaluation`; ``.as_dict()`` gives the JSON the ``diffsample`` command writes.
    """
    if not isinstance(model, ITransformerDiffusion):
        raise TypeError(expected("model", "an ITransformerDiffusion", model))
    if not isinstance(split, ForecastSplit):
        raise TypeError(expected("split", "a ForecastSplit (e.g. load_dataset(...).test)", split))
    n_samples = check_int("n_samples", n_samples)
    num_steps = check_int("num_steps", num_steps)
    batch_size = check_int("batch_size", batch_size)
    if len(split) == 0:
        raise ValueError("split: expected at least one window, got an empty split")
    n = len(split)
    if max_windows is not None:
        n = min(check_int("max_windows", max_windows), n)
    device = next(model.parameters()).device
    split = split.to(device)
    metrics = ForecastMetrics()
    sq = ab = torch.zeros((), dtype=torch.float64, device=device)
    count, seconds = 0, 0.0
    for lo in range(0, n, batch_size):
        b = split.windows(torch.arange(lo, min(lo + batch_size, n)))
        t0 = time.perf_counter()
        fc = model.forecast(
            b.x,
            n_samples,
            time_features=b.x_mark,
            sampler=sampler,
            num_steps=num_steps,
            seed=seed,
            window_ids=b.index,
            progress=progress,
        )
        if device.type == "cuda":  # kernels run asynchronously: time them, not their launch
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        metrics.update(fc.samples, b.y)
        err = (fc.point - b.y).double()  # [B, H, N]
        sq, ab, count = sq + (err**2).sum(), ab + err.abs().sum(), count + err.numel()
    scores = dict(metrics.compute())
    scores.update(point_mse=float(sq) / count, point_mae=float(ab) / count)
    return Evaluation(
        metrics=scores,
        sampler=sampler if isinstance(sampler, str) else getattr(sampler, "__name__", "custom"),
        steps=num_steps,
        samples=n_samples,
        windows=n,
        seconds=seconds,
    )
