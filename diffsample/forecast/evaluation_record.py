"""What scoring a split returns: the :class:`Evaluation` record and its per-horizon-step table,
and the :class:`Forecaster` protocol that :func:`~diffsample.forecast.evaluate_split` scores.

Dimensions: S samples, B windows per forecast call, H horizon, N variates.

``StepMetrics``, the per-step accumulator 0.4.0 exported, stays here as a deprecated view of
the one streaming accumulator (``ForecastMetrics(breakdown_dim=1)``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from .._utils import check_number, check_tensor, expected
from ..metrics import ForecastMetrics
from .forecast import Forecast
from .sampling_config import SamplingConfig

__all__ = ["STEP_COLUMNS", "Evaluation", "Forecaster", "StepMetrics", "step_table"]


@runtime_checkable
class Forecaster(Protocol):
    """What :func:`evaluate_split` scores: anything with this ``forecast`` (the diffusion
    forecaster, the baselines of :mod:`~diffsample.forecast.baselines`, a user's own model).

    ``forecast`` returns a :class:`~diffsample.forecast.forecast.Forecast` with samples
    ``[S, B, H, N]`` and a point ``[B, H, N]`` in the split's (scaled) units; the draws of a
    window should be keyed by its id and ``seed``, so that its samples do not depend on the
    batch. ``name`` names it in results; ``device`` is where it wants the windows.
    """

    name: str

    @property
    def device(self) -> torch.device: ...

    def forecast(
        self,
        history: torch.Tensor,
        n_samples: int,
        *,
        time_features: torch.Tensor | None = ...,
        window_ids: torch.Tensor | None = ...,
        seed: int = ...,
        progress: bool | None = ...,
    ) -> Forecast: ...


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The scores of a split and how they were obtained.

    Attributes:
        metrics: metric name -> value: every key of :meth:`diffsample.ForecastMetrics.compute`
            (``crps``, ``quantile_crps``, ``mse_mean``, ``coverage_90``, ...) for the samples,
            plus ``point_mse`` and ``point_mae`` of the backbone's point forecast.
        sampler: the sampler's name (a function's ``__name__``); for a forecaster other than
            the diffusion one, its ``name``.
        steps: K sampling steps (0 for a forecaster other than the diffusion one).
        samples: S samples per window.
        windows: windows scored.
        seconds: wall time of the forecast calls (backbone and sampling), device synchronised.
        scoring_seconds: wall time of the metrics.
        per_step: column name -> H values, the scores of each horizon step averaged over
            windows and variates (:func:`step_table` of the accumulator's per-step
            breakdown); empty if not computed.
        peak_memory_bytes: on CUDA, the most device memory allocated during the evaluation
            (sampling and scoring); None on other devices.
        spacing: the grid of the sampling steps; None for a forecaster other than the
            diffusion one.
        sampling: every sampling setting of the diffusion forecaster (``results.json``
            records it under ``"sampling"``); None for another forecaster, or a record built
            by hand. Not part of :meth:`as_dict`.
    """

    metrics: Mapping[str, float]
    sampler: str
    steps: int
    samples: int
    windows: int
    seconds: float
    scoring_seconds: float = 0.0
    per_step: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    peak_memory_bytes: int | None = None
    spacing: str | None = None
    sampling: SamplingConfig | None = None

    @property
    def seconds_per_window(self) -> float:
        """Wall time of the forecast calls per window scored."""
        return self.seconds / max(self.windows, 1)

    def __post_init__(self) -> None:
        # private copies: the caller's dicts changing later must not change a frozen record
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})
        per_step = {k: tuple(float(x) for x in v) for k, v in self.per_step.items()}
        object.__setattr__(self, "per_step", per_step)

    def as_dict(self) -> dict[str, float | int | str]:
        """One flat JSON-ready dict: the metrics, then ``windows``, ``samples``, ``steps``,
        ``sampler``, ``sampling_seconds`` and ``scoring_seconds`` (rounded to milliseconds).
        NaN metrics stay NaN here; :func:`diffsample.forecast.report.write_json` writes them
        as null."""
        return {
            **self.metrics,
            "windows": self.windows,
            "samples": self.samples,
            "steps": self.steps,
            "sampler": self.sampler,
            **({} if self.spacing is None else {"spacing": self.spacing}),
            "sampling_seconds": round(self.seconds, 3),
            "scoring_seconds": round(self.scoring_seconds, 3),
            "seconds_per_window": round(self.seconds_per_window, 6),
            **(
                {}
                if self.peak_memory_bytes is None
                else {"peak_memory_bytes": self.peak_memory_bytes}
            ),
        }


# the per-step table's columns, in the order of 0.4.0's StepMetrics (then coverage_<p>)
STEP_COLUMNS = ("point_mse", "point_mae", "mse_mean", "mae_mean", "crps")


def step_table(metrics: ForecastMetrics) -> dict[str, tuple[float, ...]]:
    """The per-horizon-step table of an accumulator with ``breakdown_dim`` on the horizon:
    ``step`` (1..H), ``point_mse``, ``point_mae`` (if a point was scored), ``mse_mean``,
    ``mae_mean``, ``crps``, ``coverage_<p>`` per level; empty before the first update."""
    by_step = metrics.breakdown()
    if not by_step:
        return {}
    horizon = len(by_step["crps"])
    out: dict[str, tuple[float, ...]] = {"step": tuple(float(h + 1) for h in range(horizon))}
    wanted = [*STEP_COLUMNS, *(k for k in by_step if k.startswith("coverage_"))]
    out.update({k: by_step[k] for k in wanted if k in by_step})
    return out


class StepMetrics:
    """Scores per horizon step, streaming. Deprecated: use ``ForecastMetrics(breakdown_dim=1)``
    (its ``breakdown()``), which :func:`evaluate_split` uses; this wrapper over it stays because
    0.4.0 exported it, with the same columns and results.

    Columns of :meth:`compute`: ``step`` (1..H), ``point_mse``, ``point_mae`` (the backbone's
    point forecast), ``mse_mean``, ``mae_mean`` (the mean of the samples), ``crps`` (exact,
    ecdf), ``coverage_<p>`` per interval level (p in percent), each averaged over windows and
    variates.

    Args:
        levels: central interval levels, each in (0, 1).
    """

    def __init__(self, *, levels: Sequence[float] = (0.5, 0.9)) -> None:
        warnings.warn(
            "StepMetrics is deprecated: use diffsample.metrics.ForecastMetrics(breakdown_dim=1) "
            "and its breakdown()",
            DeprecationWarning,
            stacklevel=2,
        )
        levels = tuple(
            check_number(f"levels[{i}]", v, minimum=0.0, maximum=1.0, open_min=True, open_max=True)
            for i, v in enumerate(levels)
        )
        # the median is the only quantile level needed: no quantile CRPS is reported
        self._metrics = ForecastMetrics(
            levels=levels, quantiles=(0.5,), variate_dim=None, breakdown_dim=1
        )

    def update(
        self, samples: torch.Tensor, obs: torch.Tensor, point: torch.Tensor | None = None
    ) -> None:
        """Add one batch.

        Args:
            samples: ``[S, B, H, N]``.
            obs: ``[B, H, N]``.
            point: ``[B, H, N]`` point forecast, or None (its columns are then not reported).
        """
        check_tensor("samples", samples, floating=True)
        check_tensor("obs", obs, floating=True)
        if samples.ndim != 4 or obs.shape != samples.shape[1:]:
            raise ValueError(
                f"samples, obs: expected [S, B, H, N] and [B, H, N], got "
                f"{tuple(samples.shape)} and {tuple(obs.shape)}"
            )
        self._metrics.update(samples, obs, point=point)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The additive state (copies, :meth:`ForecastMetrics.state_dict`); sum them across
        processes and load the result."""
        return self._metrics.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the state by ``state`` (a :meth:`state_dict`, e.g. summed over ranks)."""
        if not isinstance(state, Mapping):
            raise TypeError(expected("state", "a StepMetrics.state_dict()", state))
        self._metrics.load_state_dict(dict(state))

    def overall(self, column: str) -> float:
        """A column's mean over every step, window and variate (NaN before the first update)."""
        return self._metrics.compute().get(column, math.nan)

    def compute(self) -> dict[str, tuple[float, ...]]:
        """Column name -> H values (means per step); empty before the first update."""
        return step_table(self._metrics)
