"""Streaming forecast metrics: score a test set batch by batch, keeping only float64 sums.

Dimensions: S samples, B conditions, H horizon, N variates, E the scored shape, P = prod(E)
scored elements, C lanes per chunk, Q quantile levels, V interval levels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal, overload

import torch

from diffsample._utils import check_choice, check_int, check_tensor, expected

from ._checks import NanPolicy, check_finite, check_levels
from ._engine import Chunk, map_chunks
from ._kernels import (
    Additive,
    PinballSums,
    crps_ecdf,
    masked,
    mean_sorted,
    pinball_sums,
    quantiles_sorted,
    zeros64,
)
from ._layout import Layout, aggregate_mask, mask_flat, sum_variates
from .scores import DEFAULT_QUANTILES

__all__ = ["ForecastMetrics"]


# --------------------------------------------------------------------------------------------
# The state: named float64 sums (all additive)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ScoreSums(Additive):
    """Sums over the scored elements of one layout (the elements, or their sums over variates).

    Attributes:
        count: ``[]`` elements scored, mask-weighted.
        crps: ``[]`` sum of m_e CRPS_e (ecdf).
        quantile: the quantile CRPS's pinball sums ``[Q]`` and normaliser sum m|y| ``[]``.
    """

    count: torch.Tensor
    crps: torch.Tensor
    quantile: PinballSums

    @classmethod
    def zeros(cls, n_quantiles: int, device: torch.device | str = "cpu") -> _ScoreSums:
        return cls(
            count=zeros64(device=device),
            crps=zeros64(device=device),
            quantile=PinballSums.zeros(n_quantiles, device),
        )


@dataclass(frozen=True)
class _PointSums(Additive):
    """Sums of the point and interval metrics of the elements (mask-weighted).

    Attributes:
        se_mean, ae_mean: ``[]`` squared / absolute errors of the sample mean.
        se_median, ae_median: ``[]`` the same for the interpolated median.
        covered: ``[V]`` observations inside the central interval of each level.
        width: ``[V]`` the widths of those intervals.
    """

    se_mean: torch.Tensor
    ae_mean: torch.Tensor
    se_median: torch.Tensor
    ae_median: torch.Tensor
    covered: torch.Tensor
    width: torch.Tensor

    @classmethod
    def zeros(cls, n_levels: int, device: torch.device | str = "cpu") -> _PointSums:
        return cls(
            se_mean=zeros64(device=device),
            ae_mean=zeros64(device=device),
            se_median=zeros64(device=device),
            ae_median=zeros64(device=device),
            covered=zeros64(n_levels, device=device),
            width=zeros64(n_levels, device=device),
        )


@dataclass(frozen=True)
class _State(Additive):
    """Everything ``ForecastMetrics`` accumulates (float64, on the CPU)."""

    elements: _ScoreSums
    points: _PointSums
    aggregate: _ScoreSums  # of the sums over variates; stays zero without variate_dim

    @classmethod
    def zeros(cls, n_quantiles: int, n_levels: int) -> _State:
        return cls(
            _ScoreSums.zeros(n_quantiles), _PointSums.zeros(n_levels), _ScoreSums.zeros(n_quantiles)
        )

    def flat(self) -> dict[str, torch.Tensor]:
        """The state as one flat dict of named tensors (the ``state_dict`` format)."""

        def sums(s: _ScoreSums, sfx: str) -> dict[str, torch.Tensor]:
            return {
                f"count{sfx}": s.count,
                f"crps{sfx}": s.crps,
                f"abs_obs{sfx}": s.quantile.abs_obs,
                f"pinball{sfx}": s.quantile.pinball,
            }

        points = {f.name: getattr(self.points, f.name) for f in fields(self.points)}
        return {**sums(self.elements, ""), **points, **sums(self.aggregate, "_sum")}

    @classmethod
    def from_flat(cls, d: dict[str, torch.Tensor]) -> _State:
        """Inverse of ``flat``."""

        def sums(sfx: str) -> _ScoreSums:
            return _ScoreSums(
                count=d[f"count{sfx}"],
                crps=d[f"crps{sfx}"],
                quantile=PinballSums(pinball=d[f"pinball{sfx}"], abs_obs=d[f"abs_obs{sfx}"]),
            )

        points = _PointSums(**{f.name: d[f.name] for f in fields(_PointSums)})
        return cls(sums(""), points, sums("_sum"))


def _ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a / b) if float(b) != 0 else math.nan


def _quantile_crps(s: PinballSums) -> float:
    return float(s.normalised()) if float(s.abs_obs) != 0 else math.nan


# --------------------------------------------------------------------------------------------
# The accumulator
# --------------------------------------------------------------------------------------------


class ForecastMetrics:
    """Streaming forecast metrics: score a test set batch by batch, keeping only sums.

    ``update(samples, obs)`` adds float64 sums and counts (CRPS, pinball losses per quantile
    level and the |y| normalisers, squared/absolute errors of the sample mean and median,
    coverage counts and widths per interval level, and the same CRPS and pinball sums for the
    sum over variates); ``compute()`` turns them into a dict; the state is additive, so states
    from several batches or processes combine by ``merge`` / ``+`` or by summing
    ``state_dict()`` tensors (e.g. ``torch.distributed.all_reduce``) and loading the result.

    Metrics (``compute()`` keys): ``crps`` (mean exact CRPS, ecdf), ``crps_sum`` (mean exact
    CRPS of the sum over variates), ``quantile_crps`` and ``quantile_crps_sum`` (the CSDI
    normalised versions, as ``quantile_crps``), ``mse_mean`` / ``mae_mean`` (errors of the
    sample mean), ``mse_median`` / ``mae_median`` (of the linear-interpolation median; CSDI
    reports ``torch.median``, the lower middle value for even S), ``coverage_<p>`` and
    ``width_<p>`` per interval level (p in percent, e.g. ``coverage_90``), ``count``
    (elements scored, mask-weighted). A metric with nothing scored is NaN.

    Args:
        levels: central interval levels, each in (0, 1).
        quantiles: levels of the quantile CRPS, each in [0, 1].
        sample_dim: axis of ``samples`` holding the samples.
        variate_dim: axis of the scored shape summed for the ``*_sum`` metrics; None to skip them.
        nan_policy: ``"propagate"`` (NaN input makes the affected sums NaN), ``"omit"`` (NaN
            samples are dropped, elements with a NaN observation or no valid sample are left
            out of every sum and count), ``"raise"``.

    Example:
        >>> m = ForecastMetrics()
        >>> for samples, obs in batches:                  # [S, B, H, N], [B, H, N]
        ...     m.update(samples, obs)
        >>> m.compute()["crps"]
    """

    def __init__(
        self,
        *,
        levels: Sequence[float] = (0.5, 0.9),
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        sample_dim: int = 0,
        variate_dim: int | None = -1,
        nan_policy: NanPolicy = "propagate",
    ) -> None:
        check_choice("nan_policy", nan_policy, NanPolicy)
        self._levels = check_levels("levels", levels, open_interval=True)
        self._quantiles = check_levels("quantiles", quantiles, open_interval=False)
        self._sample_dim = check_int("sample_dim", sample_dim, minimum=None)
        self._variate_dim = (
            None if variate_dim is None else check_int("variate_dim", variate_dim, minimum=None)
        )
        self._nan_policy = nan_policy
        names = [f"{100 * v:g}" for v in self._levels]
        if len(set(names)) != len(names):
            raise ValueError(expected("levels", "distinct levels", levels))
        self._level_names = names
        self.reset()

    # -- configuration ----------------------------------------------------------------------
    @property
    def config(self) -> dict[str, object]:
        """The settings (read-only): two accumulators merge only if their configs are equal."""
        return {
            "levels": self._levels,
            "quantiles": self._quantiles,
            "sample_dim": self._sample_dim,
            "variate_dim": self._variate_dim,
            "nan_policy": self._nan_policy,
        }

    def _zeros(self) -> _State:
        return _State.zeros(len(self._quantiles), len(self._levels))

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._state = self._zeros()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The additive state as named float64 CPU tensors (copies); sum them across processes.

        Keys: ``count``, ``crps``, ``abs_obs``, ``pinball`` [Q], ``se_mean``, ``ae_mean``,
        ``se_median``, ``ae_median``, ``covered`` [V], ``width`` [V], and ``count_sum``,
        ``crps_sum``, ``abs_obs_sum``, ``pinball_sum`` [Q] for the sums over variates.
        """
        return {k: v.clone() for k, v in self._state.flat().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state by ``state`` (e.g. the all-reduced ``state_dict()`` of each rank)."""
        want = self._zeros().flat()
        if not isinstance(state, dict):
            raise TypeError(expected("state", "a dict of tensors (a state_dict())", state))
        if set(state) != set(want):
            raise ValueError(f"state: expected keys {sorted(want)}, got {sorted(state)}")
        for k, v in want.items():
            if not isinstance(state[k], torch.Tensor):
                raise TypeError(expected(f"state[{k!r}]", "a tensor", state[k]))
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(
                    expected(f"state[{k!r}]", f"shape {tuple(v.shape)} for this config", state[k])
                )
        loaded = {k: state[k].detach().to("cpu", torch.float64).clone() for k in want}
        self._state = _State.from_flat(loaded)

    def merge(self, other: ForecastMetrics) -> ForecastMetrics:
        """A new accumulator holding the sums of both (same config required)."""
        if not isinstance(other, ForecastMetrics):
            raise TypeError(expected("other", "a ForecastMetrics to merge", other))
        if other.config != self.config:
            raise ValueError(
                "other: expected a ForecastMetrics with the same config (cannot merge different "
                f"configs), got {other.config} vs {self.config}"
            )
        out = self._like()
        out._state = self._state + other._state
        return out

    def __add__(self, other: ForecastMetrics) -> ForecastMetrics:
        return self.merge(other)

    def __radd__(self, other: object) -> ForecastMetrics:
        if isinstance(other, int) and other == 0:  # sum([m1, m2, ...])
            return self.merge(self._like())
        return NotImplemented

    def _like(self) -> ForecastMetrics:
        """A fresh accumulator with this config."""
        return ForecastMetrics(
            levels=self._levels,
            quantiles=self._quantiles,
            sample_dim=self._sample_dim,
            variate_dim=self._variate_dim,
            nan_policy=self._nan_policy,
        )

    # -- accumulation -----------------------------------------------------------------------
    def update(
        self, samples: torch.Tensor, obs: torch.Tensor, *, mask: torch.Tensor | None = None
    ) -> None:
        """Add one batch.

        Args:
            samples: ``[S, *E]`` with the sample axis at ``sample_dim`` (e.g. ``[S, B, H, N]``),
                in any memory layout.
            obs: observations broadcastable to ``E``.
            mask: optional non-negative element weights broadcastable to ``E`` (CSDI's
                ``eval_points``); the ``*_sum`` metrics weight an aggregate by the mask's
                mean over variates, as CSDI does.
        """
        if self._nan_policy == "raise":
            check_tensor("samples", samples, floating=True)
            check_tensor("obs", obs)
            check_finite("samples", samples)
            check_finite("obs", obs)
        layout = Layout(samples, obs, self._sample_dim)
        if mask is not None:
            check_tensor("mask", mask)
        with torch.no_grad():
            elements, points = self._score(layout, mask_flat(mask, layout), with_points=True)
            aggregate = _ScoreSums.zeros(len(self._quantiles))
            if self._variate_dim is not None:
                x, y, vd = sum_variates(
                    samples, obs, self._variate_dim, self._sample_dim, "variate_dim"
                )
                agg = Layout(x, y, 0)
                m_agg = None if mask is None else aggregate_mask(mask, layout.shape, vd)
                aggregate, _ = self._score(agg, mask_flat(m_agg, agg), with_points=False)
        # nothing is half-written: the batch is added only once fully scored
        self._state = self._state + _State(elements, points, aggregate)

    @overload
    def _score(
        self, layout: Layout, m_all: torch.Tensor, *, with_points: Literal[True]
    ) -> tuple[_ScoreSums, _PointSums]: ...
    @overload
    def _score(
        self, layout: Layout, m_all: torch.Tensor, *, with_points: Literal[False]
    ) -> tuple[_ScoreSums, None]: ...
    def _score(
        self, layout: Layout, m_all: torch.Tensor, *, with_points: bool
    ) -> tuple[_ScoreSums, _PointSums | None]:
        """The sums of one scored layout (element weights ``m_all`` [P]), on the CPU.

        Each chunk is sorted once; its CRPS, quantiles, median, interval ends and mean all come
        from that sort, and its sums are taken in the worker (added here in lane order).
        """
        omit = self._nan_policy == "omit"
        device = layout.device

        def levels(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64, device=device)

        nq, nv = len(self._quantiles), len(self._levels)
        q = levels(self._quantiles)  # [Q]
        # one interpolation pass for every level a chunk needs: the quantile CRPS's, then the
        # median and the interval ends (split into named views below)
        ends = [0.5] + [(1 - v) / 2 for v in self._levels] + [(1 + v) / 2 for v in self._levels]
        wanted = levels([*self._quantiles, *ends]) if with_points else q  # [Q (+ 1 + 2V)]

        def kernel(c: Chunk) -> tuple[_ScoreSums, _PointSums | None]:
            xs, y = c.xs, c.obs  # [C, S], [C]
            score = crps_ecdf(xs, y, None, omit=omit, scratch=c.scratch)  # [C]
            m = m_all[c.offset : c.offset + y.shape[0]]  # [C]
            if omit:  # no observation or no valid sample: the element is not scored at all
                m = torch.where(torch.isnan(score), torch.zeros_like(m), m)
            qv = quantiles_sorted(xs, wanted, omit=omit)  # [C, Q (+ 1 + 2V)]
            sums = _ScoreSums(
                count=m.sum(),
                crps=masked(score, m).sum(),
                quantile=pinball_sums(qv[:, :nq], y, m, q),
            )
            if not with_points:
                return sums, None
            _, med, lo, hi = qv.split([nq, 1, nv, nv], dim=1)  # [C, 1], [C, V], [C, V]
            med = med[:, 0]  # [C]
            mean = mean_sorted(xs, omit=omit)  # [C]
            inside = ((lo <= y[:, None]) & (y[:, None] <= hi)).to(torch.float64)  # [C, V]
            undefined = torch.isnan(lo) | torch.isnan(hi) | torch.isnan(y)[:, None]
            covered = torch.where(undefined, torch.full_like(inside, math.nan), inside)
            # errors and widths in float64: float32 values near 3e38 differ, and square, past
            # what float32 holds
            y64 = y.double()
            e_mean, e_med = mean.double() - y64, med.double() - y64  # [C]
            points = _PointSums(
                se_mean=masked(e_mean**2, m).sum(),
                ae_mean=masked(e_mean.abs(), m).sum(),
                se_median=masked(e_med**2, m).sum(),
                ae_median=masked(e_med.abs(), m).sum(),
                covered=masked(covered, m[:, None]).sum(0),
                width=masked(hi.double() - lo.double(), m[:, None]).sum(0),
            )
            return sums, points

        zero: tuple[_ScoreSums, _PointSums | None] = (
            _ScoreSums.zeros(len(self._quantiles), device),
            _PointSums.zeros(len(self._levels), device) if with_points else None,
        )

        def add(
            a: tuple[_ScoreSums, _PointSums | None], b: tuple[_ScoreSums, _PointSums | None]
        ) -> tuple[_ScoreSums, _PointSums | None]:
            return a[0] + b[0], (None if a[1] is None or b[1] is None else a[1] + b[1])

        sums, points = functools.reduce(add, map_chunks(layout, kernel, sort=True), zero)

        def cpu(t: torch.Tensor) -> torch.Tensor:
            return t.cpu()

        return sums.map(cpu), (None if points is None else points.map(cpu))

    def compute(self) -> dict[str, float]:
        """The metrics accumulated so far (see the class docstring for the keys)."""
        e, p, a = self._state.elements, self._state.points, self._state.aggregate
        out: dict[str, float] = {
            "crps": _ratio(e.crps, e.count),
            "quantile_crps": _quantile_crps(e.quantile),
            "mse_mean": _ratio(p.se_mean, e.count),
            "mae_mean": _ratio(p.ae_mean, e.count),
            "mse_median": _ratio(p.se_median, e.count),
            "mae_median": _ratio(p.ae_median, e.count),
        }
        for i, name in enumerate(self._level_names):
            out[f"coverage_{name}"] = _ratio(p.covered[i], e.count)
            out[f"width_{name}"] = _ratio(p.width[i], e.count)
        if self._variate_dim is not None:
            out["crps_sum"] = _ratio(a.crps, a.count)
            out["quantile_crps_sum"] = _quantile_crps(a.quantile)
        out["count"] = float(e.count)
        return out

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"ForecastMetrics({cfg}; count={float(self._state.elements.count):g})"
