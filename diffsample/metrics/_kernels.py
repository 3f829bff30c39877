"""Per-chunk kernels on lanes ``[C, S]`` (torch ops, so CUDA and autograd work), the estimator
registry, and the additive float64 sums the reductions share.

Dimensions: C lanes per chunk, S samples per lane, Q quantile levels.

Estimators (x_(1) <= ... <= x_(S) the sorted samples of one lane, g_k = x_(k+1) - x_(k)):

    ecdf    CRPS of the empirical distribution, exactly:
              mean_i |x_i - y| - (1/S^2) sum_i (2i - S - 1) x_(i)
            evaluated in its summation-by-parts form, sum_i (2i - S - 1) x_(i)
            = sum_k k (S - k) g_k, which uses only differences of samples (translation
            invariant in floating point too). Weighted: sum_i w_i |x_i - y| - sum_k
            W_k (1 - W_k) g_k with W_k the cumulative normalised weight. O(S log S).
    fair    the unbiased ("fair") CRPS: pairwise term over S(S - 1) pairs instead of S^2,
              mean_i |x_i - y| - sum_k k (S - k) g_k / (S (S - 1)).
    energy  E|X - y| - 0.5 E|X - X'| evaluated pairwise in O(S^2), chunked so memory stays
            bounded: the slow reference for ``ecdf`` (same value up to round-off).

Overflow: a lane's sums add S terms as large as 2 max|x| (|x_i - y|, the gaps), which passes
the float32 maximum (3.4e38) for values near 1e36 and S = 100. The CRPS is homogeneous,
CRPS(aX, ay) = a CRPS(X, y) for a > 0, so lanes holding values that large are scaled by a power
of two (exact) before the kernel and the result is scaled back: values within the dtype's range
give a finite, correct CRPS wherever the CRPS itself is representable. Other lanes, i.e. every
lane of ordinary data, pay one comparison per lane.

A new estimator is one kernel (the ``CrpsKernel`` protocol) and one line in ``ESTIMATORS``
(plus its name in the ``Estimator`` Literal, which a test keeps equal to the registry).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import torch

from ._engine import Scratch

Estimator = Literal["ecdf", "fair", "energy"]

A = TypeVar("A", bound="Additive")


# --------------------------------------------------------------------------------------------
# CRPS kernels
# --------------------------------------------------------------------------------------------


class CrpsKernel(Protocol):
    """CRPS of lanes ``xs [C, S]`` (sorted ascending, NaN last, if the estimator asks for it)
    against ``y [C]``, with optional weight lanes ``w [C, S]`` in the order of ``xs`` -> [C]."""

    def __call__(
        self,
        xs: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor | None,
        *,
        omit: bool,
        scratch: Scratch | None,
    ) -> torch.Tensor: ...


def abs_max(x: torch.Tensor, dims: int | tuple[int, ...]) -> torch.Tensor:
    """max |x| over ``dims``, NaN counted as 0 (an infinity stays infinite)."""
    return torch.nan_to_num(x.abs(), nan=0.0, posinf=math.inf).amax(dims)


def pow2_exponents(amax: torch.Tensor, limit: float) -> torch.Tensor | None:
    """Per-row exponents k >= 0 (float) with amax 2^-k <= limit, 0 for rows within it or not
    finite; None if no row passes ``limit`` (the common case: one comparison per row and one
    host sync)."""
    need = amax > limit
    if not bool(need.any()):
        return None
    need &= torch.isfinite(amax)
    return torch.where(need, torch.ceil(torch.log2(amax / limit)), torch.zeros_like(amax))


def _overflow_exponents(
    xs: torch.Tensor, y: torch.Tensor | None, *, ends: bool
) -> torch.Tensor | None:
    """Exponents scaling lanes ``xs [C, S]`` and ``y [C]`` into the range where 4 S max|v|
    stays below the dtype's maximum, or None where every lane is already there.

    ``ends``: the lanes are sorted ascending and any NaN in them makes the score NaN anyway,
    so max|x| is max(x_(S), -x_(1)); otherwise NaN samples are skipped (``nan_policy="omit"``).
    """
    amax = torch.maximum(xs[:, -1], -xs[:, 0]) if ends else abs_max(xs, -1)  # [C]
    if y is not None:
        amax = torch.fmax(amax, y.abs())
    return pow2_exponents(amax, torch.finfo(xs.dtype).max / (4 * xs.shape[-1]))


def _homogeneous(
    kernel: Callable[..., torch.Tensor],
    xs: torch.Tensor,
    y: torch.Tensor | None,
    w: torch.Tensor | None,
    *,
    ends: bool,
    **kw: Any,
) -> torch.Tensor:
    """``kernel(xs, y, w, **kw)`` [C] of a score homogeneous of degree 1 in (xs, y), run on
    power-of-two scaled lanes where its sums could overflow (exact: CRPS(aX, ay) =
    a CRPS(X, y)), and scaled back."""
    k = _overflow_exponents(xs, y, ends=ends)
    if k is None:
        return kernel(xs, y, w, **kw)
    scale = torch.exp2(-k)  # [C], exact powers of two
    ys = None if y is None else y * scale
    return kernel(xs * scale[:, None], ys, w, **kw) / scale


def _valid_counts(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted lanes with NaN last -> (valid mask [C, S], valid count [C])."""
    valid = ~torch.isnan(xs)
    return valid, valid.sum(-1)


def _pair_coefficients(
    s: int, fair: bool, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """k (S - k) / S^2 for k = 1..S-1 (ecdf), or / (S (S - 1)) (fair): [S-1].

    Recomputed per chunk (S - 1 values) rather than cached, so that no tensor outlives a call
    or crosses the caller's grad and inference modes.
    """
    k = torch.arange(1, s, device=device, dtype=torch.float64)
    return (k * (s - k) / (s * (s - 1) if fair else s * s)).to(dtype)


def _crps_sorted(
    xs: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    *,
    omit: bool,
    fair: bool,
    scratch: Scratch | None,
) -> torch.Tensor:
    """The ecdf and fair CRPS of sorted lanes: xs [C, S], y [C], w sorted weights -> [C].

    ``scratch`` lets the unweighted propagate path reuse a buffer for its [C, S] temporaries.
    """
    s = xs.shape[-1]
    if w is None and not omit:
        # Fast path: one GEMV for the pairwise term sum_k k (S - k) g_k / S^2.
        coef = _pair_coefficients(s, fair, xs.dtype, xs.device)  # [S-1]
        if scratch is None:
            tmp = (xs - y[:, None]).abs()  # [C, S]
        else:
            tmp = torch.sub(
                xs, y[:, None], out=scratch.get("tmp", tuple(xs.shape), xs.dtype)
            ).abs_()
        mae = tmp.mean(-1)  # [C]
        if s == 1:
            return mae
        gaps = (
            torch.sub(xs[:, 1:], xs[:, :-1], out=tmp[:, 1:])
            if scratch is not None
            else xs[:, 1:] - xs[:, :-1]
        )  # [C, S-1]
        return mae - torch.mv(gaps, coef)
    n: torch.Tensor | None = None
    if omit:
        valid, n = _valid_counts(xs)
        wv = valid.to(xs.dtype) if w is None else torch.where(valid, w, torch.zeros_like(w))
        d = torch.where(valid, xs - y[:, None], torch.zeros_like(xs)).abs()  # [C, S]
        gaps = torch.where(
            valid[:, 1:], xs[:, 1:] - xs[:, :-1], torch.zeros_like(xs[:, 1:])
        )  # [C, S-1]
    else:
        wv = torch.ones_like(xs) if w is None else w  # only reached with weights
        d = (xs - y[:, None]).abs()
        gaps = xs[:, 1:] - xs[:, :-1]
    wv = wv / wv.sum(-1, keepdim=True)  # 0/0 -> NaN for lanes with nothing valid
    cum = torch.cumsum(wv, -1)[:, :-1]  # [C, S-1]
    spread = (cum * (1 - cum) * gaps).sum(-1)
    if fair:  # only without weights: W_k = k / n, so the pairwise term scales by n / (n - 1)
        nf = n.to(xs.dtype) if n is not None else torch.full_like(spread, s)
        spread = torch.where(nf >= 2, spread * nf / (nf - 1), torch.full_like(spread, math.nan))
    return (wv * d).sum(-1) - spread


def crps_ecdf(
    xs: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    *,
    omit: bool,
    scratch: Scratch | None,
) -> torch.Tensor:
    """Exact CRPS of the (weighted) empirical distribution of sorted lanes -> [C]."""
    return _homogeneous(
        _crps_sorted, xs, y, w, ends=not omit, omit=omit, fair=False, scratch=scratch
    )


def crps_fair(
    xs: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    *,
    omit: bool,
    scratch: Scratch | None,
) -> torch.Tensor:
    """Unbiased (fair) CRPS of sorted, unweighted lanes -> [C]."""
    return _homogeneous(
        _crps_sorted, xs, y, w, ends=not omit, omit=omit, fair=True, scratch=scratch
    )


def crps_energy(
    xs: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    *,
    omit: bool,
    scratch: Scratch | None,
) -> torch.Tensor:
    """E|X - y| - 0.5 E|X - X'| pairwise: xs [C, S] (any order), y [C] -> [C]."""
    return _homogeneous(_crps_pairwise, xs, y, w, ends=False, omit=omit)


def _crps_pairwise(
    xs: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, *, omit: bool
) -> torch.Tensor:
    """The energy form of ``crps_energy``, unscaled."""
    x = xs
    if omit:
        valid = ~torch.isnan(x)
        wv = valid.to(x.dtype) if w is None else torch.where(valid, w, torch.zeros_like(w))
        x = torch.where(valid, x, torch.zeros_like(x))
    else:
        wv = torch.ones_like(x) if w is None else w
    wv = wv / wv.sum(-1, keepdim=True)
    mae = (wv * (x - y[:, None]).abs()).sum(-1)
    pair = (x[:, :, None] - x[:, None, :]).abs()  # [C, S, S]
    pair = torch.einsum("ci,cij,cj->c", wv, pair, wv)
    out = mae - 0.5 * pair
    if omit:  # lanes without a valid sample (0/0 weights) or with a NaN observation
        out = torch.where(wv.sum(-1).isnan() | y.isnan(), torch.full_like(out, math.nan), out)
    return out


@dataclass(frozen=True)
class EstimatorSpec:
    """How ``crps`` runs one estimator.

    Attributes:
        kernel: the per-chunk CRPS.
        sorted: the kernel wants each lane sorted ascending (NaN last).
        pairwise: the kernel holds [C, S, S] temporaries (chunks sized in pairs).
        weighted: defined for weighted samples.
        min_samples: the fewest samples it is defined for.
    """

    kernel: CrpsKernel
    sorted: bool = True
    pairwise: bool = False
    weighted: bool = True
    min_samples: int = 1


ESTIMATORS: dict[str, EstimatorSpec] = {
    "ecdf": EstimatorSpec(crps_ecdf),
    # its pairwise term counts unweighted distinct pairs: no weights, at least 2 samples
    "fair": EstimatorSpec(crps_fair, weighted=False, min_samples=2),
    "energy": EstimatorSpec(crps_energy, sorted=False, pairwise=True),
}


# --------------------------------------------------------------------------------------------
# Quantiles and means of sorted lanes
# --------------------------------------------------------------------------------------------


def quantiles_sorted(xs: torch.Tensor, q: torch.Tensor, *, omit: bool) -> torch.Tensor:
    """Linear-interpolation quantiles (numpy's default method) of sorted lanes: [C, S] -> [C, Q].

    ``q`` is a float64 tensor [Q]. Propagate: a lane holding a NaN gives NaN (NaN sorts last, so
    the last sorted value tells). Omit: quantiles of the valid samples, NaN if there are none.
    """
    s = xs.shape[-1]
    if not omit:
        pos = q * (s - 1)  # [Q]
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=s - 1)
        t = (pos - lo).to(xs.dtype).expand(xs.shape[0], -1)  # [C, Q]
        out = torch.lerp(xs[:, lo], xs[:, hi], t)
        return torch.where(torch.isnan(xs[:, -1:]), torch.full_like(out, math.nan), out)
    _, n = _valid_counts(xs)
    last = (n - 1).clamp(min=0)[:, None]  # [C, 1]
    pos = q[None, :] * last.to(torch.float64)  # [C, Q]
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, last)
    t = (pos - lo).to(xs.dtype)
    out = torch.lerp(xs.gather(1, lo), xs.gather(1, hi), t)
    return torch.where((n == 0)[:, None], torch.full_like(out, math.nan), out)


def mean_sorted(xs: torch.Tensor, *, omit: bool) -> torch.Tensor:
    """Sample mean of lanes [C, S] -> [C] (NaN-ignoring under omit); lanes whose sum could
    overflow are scaled by a power of two first, as in the CRPS kernels."""
    return _homogeneous(_mean, xs, None, None, ends=not omit, omit=omit)


def _mean(xs: torch.Tensor, y: None, w: None, *, omit: bool) -> torch.Tensor:
    if not omit:
        return xs.mean(-1)
    valid, n = _valid_counts(xs)
    return torch.where(valid, xs, torch.zeros_like(xs)).sum(-1) / n


# --------------------------------------------------------------------------------------------
# Additive sums (float64, mask-weighted)
# --------------------------------------------------------------------------------------------


def masked(values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Float64 values times weights, with weight-0 entries contributing exactly 0 (even if NaN)."""
    v = values.to(torch.float64)
    return torch.where(m > 0, v * m, torch.zeros_like(v))


def zeros64(*shape: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A float64 zero sum of ``shape``."""
    return torch.zeros(shape, dtype=torch.float64, device=device)


class Additive:
    """Mixin for frozen dataclasses whose fields are tensors or other ``Additive`` dataclasses:
    fieldwise ``+`` (sums of batches, chunks or processes) and ``map``."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by @dataclass on each subclass

    def __add__(self: A, other: A) -> A:
        return replace(
            self, **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def map(self: A, fn: Callable[[torch.Tensor], torch.Tensor]) -> A:
        """The same sums with ``fn`` applied to every tensor (``.cpu()``, ``.clone()``...)."""

        def one(v: Any) -> Any:
            return v.map(fn) if isinstance(v, Additive) else fn(v)

        return replace(self, **{f.name: one(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class PinballSums(Additive):
    """The quantile CRPS's sums (CSDI's ``calc_quantile_CRPS``).

    Attributes:
        pinball: ``[Q]`` 2 sum_e m_e |(q_pred - y_e)(1[y_e <= q_pred] - q)| per level q.
        abs_obs: ``[]`` sum_e m_e |y_e|, the normaliser.
    """

    pinball: torch.Tensor
    abs_obs: torch.Tensor

    @classmethod
    def zeros(cls, n_levels: int, device: torch.device | str = "cpu") -> PinballSums:
        return cls(pinball=zeros64(n_levels, device=device), abs_obs=zeros64(device=device))

    def normalised(self) -> torch.Tensor:
        """mean_q pinball_q / abs_obs: the quantile CRPS, a 0-d tensor (NaN or inf for 0)."""
        return (self.pinball / self.abs_obs).mean()


def pinball_sums(
    qv: torch.Tensor, y: torch.Tensor, m: torch.Tensor, q: torch.Tensor
) -> PinballSums:
    """The one pinball-loss accumulator, for ``quantile_crps`` and ``ForecastMetrics`` alike.

    Args:
        qv: predicted quantiles ``[C, Q]``.
        y: observations ``[C]``.
        m: element weights (mask) ``[C]``; weight-0 elements add exactly 0.
        q: the levels ``[Q]``, float64.

    Returns:
        The chunk's ``PinballSums`` (float64).
    """
    ind = (y[:, None] <= qv).to(torch.float64)
    # the difference in float64: two float32 values near 3e38 differ by more than float32 holds
    loss = ((qv.to(torch.float64) - y.to(torch.float64)[:, None]) * (ind - q)).abs()  # [C, Q]
    return PinballSums(
        pinball=2 * masked(loss, m[:, None]).sum(0), abs_obs=masked(y.abs(), m).sum()
    )
