"""The public scores: exact CRPS estimators, CRPS of sums, sample quantiles, interval coverage
and width, and the quantile-normalised CRPS of the forecasting papers.

Dimensions: S samples, E the scored shape (the shape of ``samples`` without its sample axis,
broadcast with ``obs``), P = prod(E) scored elements, C lanes per chunk, Q quantile levels.

Every function is elementwise unless its name says otherwise: the caller reduces. Samples carry
the sample axis first by default (``[S, *E]``, ``sample_dim=0``); any other axis is accepted.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterator, Sequence

import torch

from diffsample._utils import check_choice, check_tensor, describe

from ._checks import (
    NanPolicy,
    as_levels,
    check_finite,
    check_level,
    check_levels,
    normalise_dim,
)
from ._engine import Chunk, map_chunks
from ._kernels import (
    ESTIMATORS,
    Estimator,
    PinballSums,
    pinball_sums,
    quantiles_sorted,
)
from ._layout import Layout, aggregate_mask, mask_flat, sum_variates

__all__ = [
    "DEFAULT_QUANTILES",
    "coverage",
    "crps",
    "crps_sum",
    "interval_width",
    "quantile_crps",
    "sample_quantiles",
]

#: CSDI's ``np.arange(0.05, 1.0, 0.05)`` without its float drift: 0.05, 0.10, ..., 0.95.
DEFAULT_QUANTILES: tuple[float, ...] = tuple(i / 20 for i in range(1, 20))


def crps(
    samples: torch.Tensor,
    obs: torch.Tensor,
    *,
    sample_dim: int = 0,
    estimator: Estimator = "ecdf",
    weights: torch.Tensor | None = None,
    nan_policy: NanPolicy = "propagate",
) -> torch.Tensor:
    """Continuous ranked probability score of a sample forecast, per observed element.

    CRPS(F, y) = int (F(z) - 1[y <= z])^2 dz = E|X - y| - 0.5 E|X - X'|, lower is better,
    in the units of ``y``. Elementwise: reduce the result yourself (``.mean()`` is what most
    papers call CRPS when they do not normalise by |y|; see ``quantile_crps`` for that).

    Args:
        samples: forecast samples ``[S, *E]`` (sample axis at ``sample_dim``), floating point,
            in any memory layout.
        obs: observations ``[*E]`` or any shape that broadcasts to ``E`` (not more dimensions).
        sample_dim: axis of ``samples`` holding the S samples; negative values count from the end.
        estimator: ``"ecdf"`` the exact CRPS of the empirical distribution of the samples
            (properscoring's ``crps_ensemble``), O(S log S); ``"fair"`` the unbiased estimator
            of the CRPS of the distribution the samples come from (pairwise term over S(S - 1)
            pairs; needs S >= 2 and no weights); ``"energy"`` the pairwise O(S^2) form of
            ``"ecdf"``, chunked, kept as a reference.
        weights: optional non-negative sample weights broadcastable to ``samples``; each
            element's weights are normalised over its samples (a weighted empirical
            distribution, as in properscoring). Not defined for ``"fair"``.
        nan_policy: ``"propagate"``: NaN wherever an input of that element is NaN;
            ``"omit"``: NaN samples are dropped from their element (properscoring's handling),
            an element with no valid sample or a NaN observation scores NaN, and ``"fair"``
            scores NaN where fewer than 2 samples are valid; ``"raise"``: ValueError on any
            non-finite sample, observation or weight.

    Returns:
        CRPS ``[*E]``, float32 for half/bfloat16/float32 inputs, float64 if any input is.
        Differentiable with respect to ``samples``, ``obs`` and ``weights``.

    Raises:
        TypeError: a non-tensor or non-floating ``samples``, a non-string ``estimator`` or
            ``nan_policy``, a non-integer ``sample_dim``.
        ValueError: bad shapes, empty sample axis, ``sample_dim`` out of range, negative or
            all-zero weights, ``"fair"`` with weights or with S = 1, an unknown estimator or
            policy, non-finite values under ``nan_policy="raise"``.

    Example:
        >>> samples = torch.randn(100, 32, 96, 7)          # [S, B, H, N]
        >>> crps(samples, torch.zeros(32, 96, 7)).shape
        torch.Size([32, 96, 7])
    """
    spec = ESTIMATORS[check_choice("estimator", estimator, ESTIMATORS)]
    check_choice("nan_policy", nan_policy, NanPolicy)
    layout = Layout(samples, obs, sample_dim, weights=weights)
    if weights is not None and not spec.weighted:
        raise ValueError(
            f"weights: expected None for estimator={estimator!r}, which is not defined for "
            f"weighted samples (use estimator='ecdf'), got {describe(weights)}"
        )
    if layout.n_samples < spec.min_samples:
        raise ValueError(
            f"samples: expected at least {spec.min_samples} samples along "
            f"sample_dim={sample_dim} for estimator={estimator!r}, got {describe(samples)}"
        )
    if nan_policy == "raise":
        check_finite("samples", samples)
        check_finite("obs", obs)
        if weights is not None:
            check_finite("weights", weights)
    omit = nan_policy == "omit"

    def kernel(c: Chunk) -> torch.Tensor:
        return spec.kernel(c.xs, c.obs, c.w, omit=omit, scratch=c.scratch)  # [C]

    parts = map_chunks(layout, kernel, sort=spec.sorted, pairwise=spec.pairwise)
    return _assemble(layout, parts)


def _assemble(layout: Layout, parts: Iterator[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-chunk results [C] (in lane order) into the scored shape E."""
    pieces = list(parts)
    if not pieces:
        return torch.empty(layout.shape, dtype=layout.dtype, device=layout.device)
    flat = pieces[0] if len(pieces) == 1 else torch.cat(pieces)  # [P]
    return flat.reshape(layout.shape)


def crps_sum(
    samples: torch.Tensor,
    obs: torch.Tensor,
    *,
    variate_dim: int = -1,
    sample_dim: int = 0,
    estimator: Estimator = "ecdf",
    nan_policy: NanPolicy = "propagate",
) -> torch.Tensor:
    """CRPS of the sum over variates: ``crps(samples.sum(variate axis), obs.sum(variate axis))``.

    This is the exact (elementwise) CRPS of the aggregate series; the "CRPS-sum" numbers in
    CSDI, TimeGrad and ProbTS tables are the quantile-normalised version, which is
    ``quantile_crps(samples, obs, sum_dim=variate_dim)``.

    Args:
        samples: forecast samples ``[S, *E]`` (sample axis at ``sample_dim``).
        obs: observations broadcastable to ``E``.
        variate_dim: axis of ``E`` (the shape without the sample axis) to sum over; default
            the last. With obs ``[B, H, N]`` and samples ``[S, B, H, N]``, -1 is N.
        sample_dim: axis of ``samples`` holding the samples.
        estimator: as in ``crps``.
        nan_policy: as in ``crps``; under ``"omit"`` a sample whose sum is NaN (a NaN in any
            variate) is dropped, and an aggregate observation with any NaN variate scores NaN.

    Returns:
        CRPS of the aggregate, shape ``E`` without the variate axis.
    """
    check_choice("nan_policy", nan_policy, NanPolicy)
    if nan_policy == "raise":
        check_finite("samples", samples)
        check_finite("obs", obs)
    x, y, _ = sum_variates(samples, obs, variate_dim, sample_dim, "variate_dim")
    return crps(x, y, sample_dim=0, estimator=estimator, nan_policy=nan_policy)


def sample_quantiles(
    samples: torch.Tensor,
    q: float | Sequence[float] | torch.Tensor,
    *,
    sample_dim: int = 0,
    nan_policy: NanPolicy = "propagate",
) -> torch.Tensor:
    """Quantiles of the samples by linear interpolation (numpy's default, ``torch.quantile``'s).

    For a lane of S sorted samples the q-quantile sits at position h = q (S - 1):
    x_(floor h) + (h - floor h) (x_(floor h + 1) - x_(floor h)). Unlike ``torch.quantile``
    there is no 2**24-element input limit, and the samples are sorted once for all levels.

    Args:
        samples: ``[S, *E]`` with the sample axis at ``sample_dim``.
        q: a level or a sequence (or 1-D tensor) of Q levels in [0, 1].
        sample_dim: axis of ``samples`` holding the samples.
        nan_policy: ``"propagate"`` NaN where a lane holds a NaN (like ``np.quantile``);
            ``"omit"`` quantiles of the non-NaN samples (like ``np.nanquantile``), NaN if
            none; ``"raise"`` ValueError on non-finite samples.

    Returns:
        ``[*E]`` for a scalar ``q``, else ``[Q, *E]``, in the computation dtype.
    """
    check_choice("nan_policy", nan_policy, NanPolicy)
    levels, scalar = as_levels(q, "q")
    layout = Layout(samples, None, sample_dim)
    if nan_policy == "raise":
        check_finite("samples", samples)
    omit = nan_policy == "omit"
    qt = torch.tensor(levels, dtype=torch.float64, device=layout.device)  # [Q]

    def kernel(c: Chunk) -> torch.Tensor:
        return quantiles_sorted(c.xs, qt, omit=omit)  # [C, Q]

    pieces = list(map_chunks(layout, kernel, sort=True))
    if pieces:
        flat = torch.cat(pieces) if len(pieces) > 1 else pieces[0]  # [P, Q]
    else:
        flat = torch.empty((0, len(levels)), dtype=layout.dtype, device=layout.device)
    out = flat.T.reshape((len(levels), *layout.shape))  # [Q, *E]
    return out[0] if scalar else out


def _per_window(
    samples: torch.Tensor,
    obs: torch.Tensor,
    window_dim: int,
    sample_dim: int,
    mask: torch.Tensor | None,
    sum_dim: int | None,
    levels: tuple[float, ...],
    nan_policy: NanPolicy,
) -> torch.Tensor:
    """``quantile_crps`` of each window along ``window_dim`` (an axis of ``obs``), averaged."""
    check_tensor("samples", samples)
    check_tensor("obs", obs)
    if obs.ndim != samples.ndim - 1:
        raise ValueError(
            "window_dim: expected obs with every axis of samples but the sample axis, got "
            f"samples {tuple(samples.shape)} and obs {tuple(obs.shape)}"
        )
    w = normalise_dim("window_dim", window_dim, obs.ndim, f"obs {tuple(obs.shape)}")
    xs = samples.movedim(normalise_dim("sample_dim", sample_dim, samples.ndim, "samples"), 0)
    if mask is not None:
        mask = check_tensor("mask", mask).expand(obs.shape)
    if sum_dim is not None:
        d = normalise_dim("sum_dim", sum_dim, obs.ndim, f"obs {tuple(obs.shape)}")
        if d == w:
            raise ValueError(f"sum_dim, window_dim: expected two different axes, got {d} both")
        sum_dim = d - (d > w)
    scores = [
        quantile_crps(
            xs.select(w + 1, i),
            obs.select(w, i),
            quantiles=levels,
            mask=None if mask is None else mask.select(w, i),
            sum_dim=sum_dim,
            nan_policy=nan_policy,
        )
        for i in range(obs.shape[w])
    ]
    return torch.stack(scores).mean()


def _interval(
    samples: torch.Tensor, level: float, sample_dim: int, nan_policy: NanPolicy
) -> torch.Tensor:
    """The central ``level`` interval's ends ``[2, *E]``."""
    lv = check_level("level", level, open_interval=True)
    return sample_quantiles(
        samples, [(1 - lv) / 2, (1 + lv) / 2], sample_dim=sample_dim, nan_policy=nan_policy
    )


def coverage(
    samples: torch.Tensor,
    obs: torch.Tensor,
    *,
    level: float = 0.9,
    sample_dim: int = 0,
    nan_policy: NanPolicy = "propagate",
) -> torch.Tensor:
    """Whether each observation lies in the central ``level`` interval of its samples.

    The interval is [q_(1-level)/2, q_(1+level)/2] from ``sample_quantiles`` (closed). Its
    mean over a test set is the empirical coverage, to be compared with ``level``.

    Args:
        samples: ``[S, *E]`` with the sample axis at ``sample_dim``.
        obs: observations broadcastable to ``E``.
        level: nominal coverage in (0, 1), e.g. 0.5 or 0.9.
        sample_dim: axis of ``samples`` holding the samples.
        nan_policy: as in ``sample_quantiles``; a NaN observation gives NaN.

    Returns:
        ``[*E]`` of 1.0 (covered) / 0.0, NaN where undefined.
    """
    check_choice("nan_policy", nan_policy, NanPolicy)
    layout = Layout(samples, obs, sample_dim)
    if nan_policy == "raise":
        check_finite("obs", obs)
    lo, hi = _interval(samples, level, sample_dim, nan_policy)
    y = obs.to(layout.dtype).expand(layout.shape)
    out = ((lo <= y) & (y <= hi)).to(layout.dtype)
    return torch.where(
        torch.isnan(lo) | torch.isnan(hi) | torch.isnan(y), torch.full_like(out, math.nan), out
    )


def interval_width(
    samples: torch.Tensor,
    *,
    level: float = 0.9,
    sample_dim: int = 0,
    nan_policy: NanPolicy = "propagate",
) -> torch.Tensor:
    """Width of the central ``level`` interval of the samples, q_(1+level)/2 - q_(1-level)/2.

    Args:
        samples: ``[S, *E]`` with the sample axis at ``sample_dim``.
        level: nominal coverage in (0, 1).
        sample_dim: axis of ``samples`` holding the samples.
        nan_policy: as in ``sample_quantiles``.

    Returns:
        ``[*E]`` interval widths (>= 0).
    """
    check_choice("nan_policy", nan_policy, NanPolicy)
    lo, hi = _interval(samples, level, sample_dim, nan_policy)
    return hi - lo


def quantile_crps(
    samples: torch.Tensor,
    obs: torch.Tensor,
    *,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    sample_dim: int = 0,
    mask: torch.Tensor | None = None,
    sum_dim: int | None = None,
    window_dim: int | None = None,
    nan_policy: NanPolicy = "propagate",
) -> torch.Tensor:
    """Quantile-normalised CRPS of a whole test set (the CSDI convention), a scalar.

    Follows CSDI's ``calc_quantile_CRPS`` exactly::

        q_pred_q = sample quantile of the samples at level q (linear interpolation)
        loss_q   = 2 sum_e m_e |(q_pred_q,e - y_e) (1[y_e <= q_pred_q,e] - q)|
        result   = mean_q loss_q / sum_e |y_e m_e|

    i.e. twice the pinball loss averaged over levels (a discretised CRPS = 2 int_0^1 pinball_q
    dq), normalised by sum |y|. Published tables use it: CSDI (Tashiro et al., 2021; levels
    0.05..0.95, this default) for CRPS and CRPS-sum; ProbTS (Zhang et al., 2024; its long-term
    tables: the same 19 levels and numpy's linear quantiles, but each test window normalised
    by its own sum |y| and the windows averaged, on the data's raw units) with
    ``window_dim`` the windows' axis; TimeGrad (Rasul et al., 2021, through
    GluonTS's ``MultivariateEvaluator(quantiles=0.05..0.95)``: ``mean_wQuantileLoss`` and
    ``m_sum_mean_wQuantileLoss``) with nearest-rank sample quantiles, so its numbers differ
    slightly at 100 samples. The exact CRPS of the samples (properscoring, scoringrules) is
    ``crps``.

    Args:
        samples: ``[S, *E]`` with the sample axis at ``sample_dim``.
        obs: observations broadcastable to ``E``.
        quantiles: the levels q, each in [0, 1].
        sample_dim: axis of ``samples`` holding the samples.
        mask: optional non-negative weights broadcastable to ``E`` (CSDI's ``eval_points``):
            elements with mask 0 are left out of both sums.
        sum_dim: score the sum over this axis of ``E`` (variates) instead: samples and obs are
            summed over it and the mask is averaged over it, as in CSDI's
            ``calc_quantile_CRPS_sum``. ``sum_dim=-1`` gives the "CRPS-sum" of CSDI, TimeGrad
            and ProbTS tables for ``[.., N]`` data.
        window_dim: an axis of ``obs`` (and of E) holding test windows: each window is scored
            and normalised by its own sum |y m|, and the result is the mean over windows
            (ProbTS's ``Evaluator``). None: one normaliser for the whole set.
        nan_policy: ``"propagate"`` NaN if any input is NaN; ``"omit"`` NaN samples are left
            out of the quantiles and elements with a NaN observation get mask 0; ``"raise"``
            ValueError on non-finite input.

    Returns:
        A 0-d float64 tensor (NaN or inf if sum |y m| is 0).
    """
    check_choice("nan_policy", nan_policy, NanPolicy)
    levels = check_levels("quantiles", quantiles, open_interval=False)
    if window_dim is not None:
        return _per_window(samples, obs, window_dim, sample_dim, mask, sum_dim, levels, nan_policy)
    if nan_policy == "raise":
        check_finite("samples", samples)
        check_finite("obs", obs)
    if mask is not None:
        check_tensor("mask", mask)
    if sum_dim is not None:
        x, y, vd = sum_variates(samples, obs, sum_dim, sample_dim, "sum_dim")
        if mask is not None:
            mask = aggregate_mask(mask, tuple(samples.movedim(sample_dim, 0).shape[1:]), vd)
        samples, obs, sample_dim = x, y, 0
    layout = Layout(samples, obs, sample_dim)
    m_all = mask_flat(mask, layout)  # [P]
    omit = nan_policy == "omit"
    qt = torch.tensor(levels, dtype=torch.float64, device=layout.device)  # [Q]

    def kernel(c: Chunk) -> PinballSums:
        y = c.obs
        m = m_all[c.offset : c.offset + y.shape[0]]
        if omit:  # a NaN observation leaves its element out of both sums
            m = torch.where(torch.isnan(y), torch.zeros_like(m), m)
        return pinball_sums(quantiles_sorted(c.xs, qt, omit=omit), y, m, qt)

    zero = PinballSums.zeros(len(levels), layout.device)
    total = functools.reduce(operator.add, map_chunks(layout, kernel, sort=True), zero)
    return total.normalised()
