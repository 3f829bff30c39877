"""The state of :class:`~diffsample.metrics.ForecastMetrics`: named float64 sums (over the
elements, per index of a breakdown axis, per lane inside a chunk) and the chunk scorer that
fills them from one sort of each chunk.

Dimensions: S samples, E the scored shape, P = prod(E) scored elements, C lanes per chunk,
Q quantile levels, V interval levels, K the size of the breakdown axis (``breakdown_dim``, e.g.
K = H for a per-horizon-step table).

One update, one sort: each chunk of lanes is sorted once and its CRPS, quantiles, median,
interval ends and mean all come from that sort; the per-lane values are then summed twice, over
the chunk (the headline sums) and per index of the breakdown axis (``index_add``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

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
from ._layout import Layout

# state_dict keys of a point forecast's sums: a state saved before update(point=) had none
POINT_KEYS = ("count_point", "se_point", "ae_point")


# --------------------------------------------------------------------------------------------
# The state: named float64 sums (all additive)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSums(Additive):
    """The CRPS and quantile sums of the sums over variates (the ``*_sum`` metrics).

    Attributes:
        count: ``[]`` aggregates scored, mask-weighted.
        crps: ``[]`` sum of m_e CRPS_e (ecdf).
        quantile: the quantile CRPS's pinball sums ``[Q]`` and normaliser sum m|y| ``[]``.
    """

    count: torch.Tensor
    crps: torch.Tensor
    quantile: PinballSums

    @classmethod
    def zeros(cls, n_quantiles: int, device: torch.device | str = "cpu") -> ScoreSums:
        z = zeros64(device=device)
        return cls(z, z.clone(), PinballSums.zeros(n_quantiles, device))


@dataclass(frozen=True)
class PointSums(Additive):
    """Sums of the point and interval metrics of the samples (mask-weighted).

    Attributes:
        se_mean, ae_mean: squared / absolute errors of the sample mean.
        se_median, ae_median: the same for the interpolated median.
        covered: ``[.., V]`` observations inside the central interval of each level.
        width: ``[.., V]`` the widths of those intervals.
    """

    se_mean: torch.Tensor
    ae_mean: torch.Tensor
    se_median: torch.Tensor
    ae_median: torch.Tensor
    covered: torch.Tensor
    width: torch.Tensor


@dataclass(frozen=True)
class ForecastSums(Additive):
    """Sums of the errors of the point forecast given to ``update(point=)``.

    Attributes:
        count: elements scored that had a point, mask-weighted.
        se, ae: its squared / absolute errors.
    """

    count: torch.Tensor
    se: torch.Tensor
    ae: torch.Tensor


@dataclass(frozen=True)
class Elementwise(Additive):
    """The elementwise sums, one shape for every use: ``[]`` summed over the elements, ``[K]``
    per index of the breakdown axis, ``[C]`` per lane inside a chunk (``[.., V]`` for the
    interval sums).

    Attributes:
        count: elements scored, mask-weighted.
        crps: m_e CRPS_e (ecdf).
        points: the sample mean's and median's errors, coverage and widths.
        forecast: the point forecast's errors.
    """

    count: torch.Tensor
    crps: torch.Tensor
    points: PointSums
    forecast: ForecastSums

    @classmethod
    def zeros(cls, n_levels: int, *lead: int, device: torch.device | str = "cpu") -> Elementwise:
        def z(*shape: int) -> torch.Tensor:
            return zeros64(*lead, *shape, device=device)

        points = PointSums(z(), z(), z(), z(), z(n_levels), z(n_levels))
        return cls(z(), z(), points, ForecastSums(z(), z(), z()))

    @property
    def size(self) -> int:
        """K, the length of the leading axis (0 for a breakdown not yet updated)."""
        return self.count.shape[0]

    def flat(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The sums as named tensors (``state_dict`` names, with ``prefix``)."""
        points = {f.name: getattr(self.points, f.name) for f in fields(PointSums)}
        f = self.forecast
        named = {"count": self.count, "crps": self.crps, **points}
        named.update(count_point=f.count, se_point=f.se, ae_point=f.ae)
        return {prefix + k: v for k, v in named.items()}

    @classmethod
    def from_flat(cls, d: dict[str, torch.Tensor], prefix: str = "") -> Elementwise:
        """Inverse of ``flat``."""
        points = PointSums(**{f.name: d[prefix + f.name] for f in fields(PointSums)})
        forecast = ForecastSums(*(d[prefix + k] for k in POINT_KEYS))
        return cls(d[prefix + "count"], d[prefix + "crps"], points, forecast)


@dataclass(frozen=True)
class State(Additive):
    """The headline sums ``ForecastMetrics`` accumulates (float64, on the CPU)."""

    elements: Elementwise
    quantile: PinballSums
    aggregate: ScoreSums  # of the sums over variates; stays zero without variate_dim

    @classmethod
    def zeros(cls, n_quantiles: int, n_levels: int) -> State:
        return cls(
            Elementwise.zeros(n_levels),
            PinballSums.zeros(n_quantiles),
            ScoreSums.zeros(n_quantiles),
        )

    def flat(self) -> dict[str, torch.Tensor]:
        """The state as one flat dict of named tensors (the ``state_dict`` format)."""
        a, q = self.aggregate, self.quantile
        return {
            **self.elements.flat(),
            "abs_obs": q.abs_obs,
            "pinball": q.pinball,
            "count_sum": a.count,
            "crps_sum": a.crps,
            "abs_obs_sum": a.quantile.abs_obs,
            "pinball_sum": a.quantile.pinball,
        }

    @classmethod
    def from_flat(cls, d: dict[str, torch.Tensor]) -> State:
        """Inverse of ``flat``."""
        aggregate = ScoreSums(
            d["count_sum"], d["crps_sum"], PinballSums(d["pinball_sum"], d["abs_obs_sum"])
        )
        quantile = PinballSums(d["pinball"], d["abs_obs"])
        return cls(Elementwise.from_flat(d), quantile, aggregate)


def check_size(have: int, got: int, name: str) -> None:
    """A breakdown axis of size ``got`` may join sums of size ``have`` (0: not yet updated)."""
    if have and got and have != got:
        raise ValueError(
            f"{name}: expected a breakdown axis of size {have} (as accumulated so far), got {got}"
        )


def join(a: Elementwise, b: Elementwise, name: str) -> Elementwise:
    """Breakdown sums added, a not-yet-updated one (K = 0) taking the other's size."""
    check_size(a.size, b.size, name)
    return a + b if a.size and b.size else (a if a.size else b)


def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, NaN where nothing was scored (b = 0)."""
    return torch.where(b != 0, a / b, torch.full_like(a, math.nan))


def quantile_ratio(s: PinballSums) -> float:
    return float(s.normalised()) if float(s.abs_obs) != 0 else math.nan


def means(e: Elementwise, level_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The elementwise metrics of sums ``e`` (``[]`` or ``[K]``): crps, the sample mean's and
    median's errors, coverage and width per level, then ``point_mse`` / ``point_mae`` if a
    point forecast was scored."""
    p, f = e.points, e.forecast
    out = {
        "crps": ratio(e.crps, e.count),
        "mse_mean": ratio(p.se_mean, e.count),
        "mae_mean": ratio(p.ae_mean, e.count),
        "mse_median": ratio(p.se_median, e.count),
        "mae_median": ratio(p.ae_median, e.count),
    }
    for i, name in enumerate(level_names):
        out[f"coverage_{name}"] = ratio(p.covered[..., i], e.count)
        out[f"width_{name}"] = ratio(p.width[..., i], e.count)
    if float(f.count.sum()) != 0:
        out.update(point_mse=ratio(f.se, f.count), point_mae=ratio(f.ae, f.count))
    return out


# --------------------------------------------------------------------------------------------
# One update: the chunk scorer and the fold of its chunks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkSums(Additive):
    """What a chunk (and, summed, an update) adds: headline and breakdown sums."""

    elements: Elementwise  # []
    quantile: PinballSums
    by_index: Elementwise  # [K]; K = 0 without a breakdown


@dataclass(frozen=True)
class Scorer:
    """The per-chunk kernels of one update, with what they need.

    Attributes:
        q: ``[Q]`` float64 quantile levels.
        wanted: ``[Q + 1 + 2V]`` float64: ``q``, the median and the interval ends (lower
            ends, then upper ends), read in one interpolation pass.
        n_levels: V interval levels.
        omit: ``nan_policy == "omit"``.
        m_all: ``[P]`` float64 element weights.
        point: ``[P]`` float64 point forecast, or None.
        inner, size: the breakdown axis: the index of lane p is (p // inner) % size; size 0
            for no breakdown.
    """

    q: torch.Tensor
    wanted: torch.Tensor
    n_levels: int
    omit: bool
    m_all: torch.Tensor
    point: torch.Tensor | None = None
    inner: int = 1
    size: int = 0

    def _crps(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        """CRPS ``[C]`` and the weights ``[C]`` of a chunk's lanes (0 where omit drops one)."""
        score = crps_ecdf(c.xs, c.obs, None, omit=self.omit, scratch=c.scratch)  # [C]
        m = self.m_all[c.offset : c.offset + score.shape[0]]  # [C]
        if self.omit:  # no observation or no valid sample: the element is not scored at all
            m = torch.where(torch.isnan(score), torch.zeros_like(m), m)
        return score, m

    def aggregate(self, c: Chunk) -> ScoreSums:
        """The sums of a chunk of the sums over variates: CRPS and pinball losses."""
        score, m = self._crps(c)
        qv = quantiles_sorted(c.xs, self.q, omit=self.omit)  # [C, Q]
        return ScoreSums(m.sum(), masked(score, m).sum(), pinball_sums(qv, c.obs, m, self.q))

    def elements(self, c: Chunk) -> ChunkSums:
        """The sums of a chunk of elements, over the chunk and per breakdown index."""
        score, m = self._crps(c)
        nq, nv = self.q.shape[0], self.n_levels
        qv = quantiles_sorted(c.xs, self.wanted, omit=self.omit)  # [C, Q + 1 + 2V]
        _, med, lo, hi = qv.split([nq, 1, nv, nv], dim=1)  # [C, 1], [C, V], [C, V]
        lanes = Elementwise(
            m, masked(score, m), self._points(c, m, med[:, 0], lo, hi), self._forecast(c, m)
        )  # [C] per lane
        by_index = Elementwise.zeros(nv, 0, device=m.device)
        if self.size:
            ids = torch.arange(c.offset, c.offset + m.shape[0], device=m.device)
            ids = ids.div(self.inner, rounding_mode="floor") % self.size  # [C]

            def per_index(v: torch.Tensor) -> torch.Tensor:
                return v.new_zeros((self.size, *v.shape[1:])).index_add_(0, ids, v)

            by_index = lanes.map(per_index)  # [K]
        quantile = pinball_sums(qv[:, :nq], c.obs, m, self.q)
        return ChunkSums(lanes.map(lambda v: v.sum(0)), quantile, by_index)

    def _points(
        self, c: Chunk, m: torch.Tensor, med: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> PointSums:
        """Per lane: the errors of the mean and median ``med [C]``, coverage and width of the
        intervals ``[lo, hi]`` ``[C, V]``, weighted by ``m [C]``."""
        y = c.obs
        mean = mean_sorted(c.xs, omit=self.omit)  # [C]
        inside = ((lo <= y[:, None]) & (y[:, None] <= hi)).to(torch.float64)  # [C, V]
        undefined = torch.isnan(lo) | torch.isnan(hi) | torch.isnan(y)[:, None]
        covered = torch.where(undefined, torch.full_like(inside, math.nan), inside)
        # errors and widths in float64: float32 values near 3e38 differ, and square, past
        # what float32 holds
        y64 = y.double()
        e_mean, e_med = mean.double() - y64, med.double() - y64  # [C]
        return PointSums(
            se_mean=masked(e_mean**2, m),
            ae_mean=masked(e_mean.abs(), m),
            se_median=masked(e_med**2, m),
            ae_median=masked(e_med.abs(), m),
            covered=masked(covered, m[:, None]),
            width=masked(hi.double() - lo.double(), m[:, None]),
        )

    def _forecast(self, c: Chunk, m: torch.Tensor) -> ForecastSums:
        """Per lane: the point forecast's errors (zeros without one)."""
        if self.point is None:
            zero = torch.zeros_like(m)
            return ForecastSums(zero, zero, zero)
        e = self.point[c.offset : c.offset + m.shape[0]] - c.obs.double()  # [C]
        return ForecastSums(m, masked(e**2, m), masked(e.abs(), m))


def fold_elements(layout: Layout, scorer: Scorer, n_quantiles: int) -> ChunkSums:
    """The sums of one scored layout of elements, its chunks added in lane order, on the CPU."""
    nv, device = scorer.n_levels, layout.device
    zero = ChunkSums(
        Elementwise.zeros(nv, device=device),
        PinballSums.zeros(n_quantiles, device),
        Elementwise.zeros(nv, scorer.size, device=device),
    )
    chunks = map_chunks(layout, scorer.elements, sort=True)
    return functools.reduce(ChunkSums.__add__, chunks, zero).map(torch.Tensor.cpu)


def fold_aggregate(layout: Layout, scorer: Scorer) -> ScoreSums:
    """The sums of a layout of sums over variates (CRPS and pinball losses), on the CPU."""
    zero = ScoreSums.zeros(scorer.q.shape[0], layout.device)
    chunks = map_chunks(layout, scorer.aggregate, sort=True)
    return functools.reduce(ScoreSums.__add__, chunks, zero).map(torch.Tensor.cpu)
