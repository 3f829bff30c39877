"""Streaming forecast metrics: score a test set batch by batch, keeping only float64 sums.

Dimensions: S samples, B conditions, H horizon, N variates, E the scored shape, P = prod(E)
scored elements, Q quantile levels, V interval levels, K the size of the breakdown axis. The
sums and the chunk scorer that fills them live in ``_sums.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffsample._utils import check_choice, check_int, check_tensor, expected

from ._checks import NanPolicy, check_finite, check_levels, normalise_dim
from ._layout import Layout, aggregate_mask, mask_flat, sum_variates
from ._sums import (
    POINT_KEYS,
    Elementwise,
    Scorer,
    ScoreSums,
    State,
    check_size,
    fold_aggregate,
    fold_elements,
    join,
    means,
    quantile_ratio,
    ratio,
)
from .scores import DEFAULT_QUANTILES

__all__ = ["ForecastMetrics"]

_POINT_COLUMNS: tuple[str, ...] = ("point_mse", "point_mae")  # last, once a point was scored


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
    Each batch's samples are sorted once (per chunk of lanes), and every score comes from that.

    Metrics (``compute()`` keys): ``crps`` (mean exact CRPS, ecdf), ``crps_sum`` (mean exact
    CRPS of the sum over variates), ``quantile_crps`` and ``quantile_crps_sum`` (the CSDI
    normalised versions, as ``quantile_crps``), ``mse_mean`` / ``mae_mean`` (errors of the
    sample mean), ``mse_median`` / ``mae_median`` (of the linear-interpolation median; CSDI
    reports ``torch.median``, the lower middle value for even S), ``coverage_<p>`` and
    ``width_<p>`` per interval level (p in percent, e.g. ``coverage_90``), ``count``
    (elements scored, mask-weighted), then ``point_mse`` / ``point_mae`` (errors of the point
    forecast given as ``update(point=)``, present once one was scored). A metric with nothing
    scored is NaN.

    Per-index breakdown: with ``breakdown_dim`` set, the elementwise sums (everything above but
    the quantile CRPS and the ``*_sum`` metrics) are also kept per index of that axis of the
    scored shape, float64 ``[K]``, from the same sorted samples; ``breakdown()`` gives their
    means, e.g. the per-horizon-step table of a forecaster (``breakdown_dim=1`` for
    ``[S, B, H, N]`` samples: axis 1 of ``[B, H, N]``). Each index's values average over the
    other axes, so with equal counts per index the mean over the indices is the headline score.

    Args:
        levels: central interval levels, each in (0, 1).
        quantiles: levels of the quantile CRPS, each in [0, 1].
        sample_dim: axis of ``samples`` holding the samples.
        variate_dim: axis of the scored shape summed for the ``*_sum`` metrics; None to skip them.
        nan_policy: ``"propagate"`` (NaN input makes the affected sums NaN), ``"omit"`` (NaN
            samples are dropped, elements with a NaN observation or no valid sample are left
            out of every sum and count), ``"raise"``.
        breakdown_dim: axis of the scored shape (the samples' shape without the sample axis)
            to keep per-index sums along, e.g. the horizon; None (default) for none. Its size
            K is taken from the first update and must stay the same.

    Example:
        >>> m = ForecastMetrics(breakdown_dim=1)          # per horizon step
        >>> for samples, obs, point in batches:           # [S, B, H, N], [B, H, N], [B, H, N]
        ...     m.update(samples, obs, point=point)
        >>> m.compute()["crps"], m.breakdown()["crps"]    # a float, H floats
    """

    def __init__(
        self,
        *,
        levels: Sequence[float] = (0.5, 0.9),
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        sample_dim: int = 0,
        variate_dim: int | None = -1,
        nan_policy: NanPolicy = "propagate",
        breakdown_dim: int | None = None,
    ) -> None:
        check_choice("nan_policy", nan_policy, NanPolicy)
        self._levels = check_levels("levels", levels, open_interval=True)
        self._quantiles = check_levels("quantiles", quantiles, open_interval=False)
        self._sample_dim = check_int("sample_dim", sample_dim, minimum=None)
        self._variate_dim = _optional_dim("variate_dim", variate_dim)
        self._breakdown_dim = _optional_dim("breakdown_dim", breakdown_dim)
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
            "breakdown_dim": self._breakdown_dim,
        }

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._state = State.zeros(len(self._quantiles), len(self._levels))
        # [K] per index of breakdown_dim; K = 0 until the first update
        self._by_index = Elementwise.zeros(len(self._levels), 0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The additive state as named float64 CPU tensors (copies); sum them across processes.

        Keys: ``count``, ``crps``, ``se_mean``, ``ae_mean``, ``se_median``, ``ae_median``,
        ``covered`` [V], ``width`` [V], ``count_point``, ``se_point``, ``ae_point``,
        ``abs_obs``, ``pinball`` [Q], and ``count_sum``, ``crps_sum``, ``abs_obs_sum``,
        ``pinball_sum`` [Q] for the sums over variates; with ``breakdown_dim``, also the first
        eleven prefixed ``breakdown_``, with a leading axis [K] (K = 0 before any update).
        """
        return {k: v.clone() for k, v in self._flat().items()}

    def _flat(self) -> dict[str, torch.Tensor]:
        flat = self._state.flat()
        if self._breakdown_dim is not None:
            flat.update(self._by_index.flat("breakdown_"))
        return flat

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state by ``state`` (e.g. the all-reduced ``state_dict()`` of each rank).

        A state without the point forecast's sums (saved before ``update(point=)`` existed)
        loads with those sums zero.
        """
        if not isinstance(state, dict):
            raise TypeError(expected("state", "a dict of tensors (a state_dict())", state))
        want = self._flat()
        if set(want) - set(state) == set(POINT_KEYS):  # a 0.4.0 state
            state = {**state, **{k: torch.zeros((), dtype=torch.float64) for k in POINT_KEYS}}
        if set(state) != set(want):
            raise ValueError(f"state: expected keys {sorted(want)}, got {sorted(state)}")
        size = state["breakdown_count"].shape[:1] if "breakdown_count" in state else ()
        for k, v in want.items():
            if not isinstance(state[k], torch.Tensor):
                raise TypeError(expected(f"state[{k!r}]", "a tensor", state[k]))
            shape = (*size, *v.shape[1:]) if k.startswith("breakdown_") else tuple(v.shape)
            if tuple(state[k].shape) != shape:
                raise ValueError(
                    expected(f"state[{k!r}]", f"shape {shape} for this config", state[k])
                )
        loaded = {k: state[k].detach().to("cpu", torch.float64).clone() for k in want}
        self._state = State.from_flat(loaded)
        if self._breakdown_dim is not None:
            self._by_index = Elementwise.from_flat(loaded, "breakdown_")

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
        out._by_index = join(self._by_index, other._by_index, "other")
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
            breakdown_dim=self._breakdown_dim,
        )

    # -- accumulation -----------------------------------------------------------------------
    def update(
        self,
        samples: torch.Tensor,
        obs: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        point: torch.Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            samples: ``[S, *E]`` with the sample axis at ``sample_dim`` (e.g. ``[S, B, H, N]``),
                in any memory layout.
            obs: observations broadcastable to ``E``.
            mask: optional non-negative element weights broadcastable to ``E`` (CSDI's
                ``eval_points``); the ``*_sum`` metrics weight an aggregate by the mask's
                mean over variates, as CSDI does.
            point: optional point forecast broadcastable to ``E`` (e.g. a backbone's
                ``[B, H, N]``), scored as ``point_mse`` / ``point_mae`` on the elements scored.
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
            scorer = self._scorer(layout, mask_flat(mask, layout), point)
            sums = fold_elements(layout, scorer, len(self._quantiles))
            aggregate = ScoreSums.zeros(len(self._quantiles))
            if self._variate_dim is not None:
                aggregate = self._aggregate(samples, obs, mask, layout.shape)
            by_index = join(self._by_index, sums.by_index, "samples")
        # nothing is half-written: the batch is added only once fully scored
        self._state = self._state + State(sums.elements, sums.quantile, aggregate)
        self._by_index = by_index

    def _scorer(self, layout: Layout, m_all: torch.Tensor, point: torch.Tensor | None) -> Scorer:
        """The kernels of one update: levels on the data's device, point and breakdown checked."""
        device = layout.device

        def levels(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64, device=device)

        ends = [0.5] + [(1 - v) / 2 for v in self._levels] + [(1 + v) / 2 for v in self._levels]
        inner, size = 1, 0
        if self._breakdown_dim is not None:
            shape = layout.shape
            what = f"the scored shape {shape} (samples without their sample axis)"
            d = normalise_dim("breakdown_dim", self._breakdown_dim, len(shape), what)
            inner, size = math.prod(shape[d + 1 :]), shape[d]
            check_size(self._by_index.size, size, "samples")  # before any work
        return Scorer(
            q=levels(self._quantiles),
            wanted=levels([*self._quantiles, *ends]),
            n_levels=len(self._levels),
            omit=self._nan_policy == "omit",
            m_all=m_all,
            point=None if point is None else self._point_flat(point, layout),
            inner=inner,
            size=size,
        )

    def _point_flat(self, point: torch.Tensor, layout: Layout) -> torch.Tensor:
        """``point`` checked and flattened to ``[P]`` float64."""
        check_tensor("point", point)
        if point.device != layout.device:
            raise ValueError(
                f"point: expected a tensor on {layout.device} (where samples are), got one on "
                f"{point.device}"
            )
        try:
            out = point.expand(layout.shape)
        except RuntimeError:
            raise ValueError(
                expected(
                    "point", f"a shape that broadcasts to the scored shape {layout.shape}", point
                )
            ) from None
        if self._nan_policy == "raise":
            check_finite("point", point)
        return out.to(torch.float64).reshape(-1)  # [P]

    def _aggregate(
        self,
        samples: torch.Tensor,
        obs: torch.Tensor,
        mask: torch.Tensor | None,
        shape: tuple[int, ...],
    ) -> ScoreSums:
        """The sums of the sums over variates (scored shape ``shape`` before summing)."""
        assert self._variate_dim is not None  # the caller checks
        x, y, vd = sum_variates(samples, obs, self._variate_dim, self._sample_dim, "variate_dim")
        agg = Layout(x, y, 0)
        m = None if mask is None else aggregate_mask(mask, shape, vd)
        scorer = Scorer(
            q=torch.tensor(self._quantiles, dtype=torch.float64, device=agg.device),
            wanted=torch.empty(0),
            n_levels=0,
            omit=self._nan_policy == "omit",
            m_all=mask_flat(m, agg),
        )
        return fold_aggregate(agg, scorer)

    # -- results ----------------------------------------------------------------------------
    def compute(self) -> dict[str, float]:
        """The metrics accumulated so far (see the class docstring for the keys)."""
        got = {k: float(v) for k, v in means(self._state.elements, self._level_names).items()}
        point = {k: got.pop(k) for k in _POINT_COLUMNS if k in got}
        out = {"crps": got.pop("crps"), "quantile_crps": quantile_ratio(self._state.quantile)}
        out.update(got)
        if self._variate_dim is not None:
            a = self._state.aggregate
            out["crps_sum"] = float(ratio(a.crps, a.count))
            out["quantile_crps_sum"] = quantile_ratio(a.quantile)
        out["count"] = float(self._state.elements.count)
        return {**out, **point}

    def breakdown(self) -> dict[str, tuple[float, ...]]:
        """The per-index means along ``breakdown_dim``: metric -> K values (empty before the
        first update).

        Keys: ``crps``, ``mse_mean``, ``mae_mean``, ``mse_median``, ``mae_median``,
        ``coverage_<p>`` and ``width_<p>`` per level, ``count`` (elements scored per index,
        mask-weighted), then ``point_mse`` / ``point_mae`` once a point forecast was scored.

        Raises:
            ValueError: the accumulator has no ``breakdown_dim``.
        """
        if self._breakdown_dim is None:
            raise ValueError(
                "breakdown_dim: expected an axis to break the metrics down along "
                "(ForecastMetrics(breakdown_dim=...)), got None"
            )
        e = self._by_index
        if not e.size:
            return {}
        got = means(e, self._level_names)
        point = {k: got.pop(k) for k in _POINT_COLUMNS if k in got}
        out: dict[str, torch.Tensor] = {**got, "count": e.count, **point}
        return {k: tuple(v.tolist()) for k, v in out.items()}

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"ForecastMetrics({cfg}; count={float(self._state.elements.count):g})"


def _optional_dim(name: str, dim: int | None) -> int | None:
    """An axis argument that may be None."""
    return None if dim is None else check_int(name, dim, minimum=None)
