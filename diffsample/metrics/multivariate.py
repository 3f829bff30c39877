"""Multivariate proper scores of sample forecasts: the energy score and the variogram score.

Dimensions: S samples, E the scored shape (the shape of ``samples`` without its sample axis;
``obs`` broadcasts to it), V the event shape (the axes of E named by ``event_dims``), D =
prod(V) the length of one forecast vector, R the rest of E (the result's shape), n = prod(R)
vectors, C vectors per chunk, K rows of the D x D pair matrix per block.

    energy_score     ES   = E||X - y|| - 1/2 E||X - X'||                         O(n S^2 D)
    variogram_score  VS_p = sum_ij w_ij (E|X_i - X_j|^p - |y_i - y_j|^p)^2       O(n S D^2)

Both are elementwise over R, like ``crps``: the caller reduces, batch after batch. Samples
carry the sample axis first by default (``[S, *E]``). Memory: chunks of C vectors are gathered
(one strided copy per block of R, so any memory layout) into a contiguous buffer, and every
temporary holds at most ``MV_CHUNK_ELEMENTS`` elements (or one vector's S x D or S x S values
where those are larger), whatever n. The checks, the vectors and their chunks are
:mod:`diffsample.metrics._vectors`'s; this module holds the two scores' arithmetic.

The energy score's pairwise distances come from a Gram matrix of the centred samples in float64
(one batched matmul per chunk): centring removes the cancellation of |a|^2 + |b|^2 - 2 a.b
for samples far from the origin, and float64 leaves the distances at ~1e-13 of the spread
(measured against direct differences at 672-dimensional events), float32 inputs can then not
overflow a squared distance. Inputs that need a gradient take ``torch.cdist``'s direct
differences instead (exact zero-distance gradients), about 2.5x slower on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from diffsample._utils import check_finite as check_all_finite
from diffsample._utils import check_number, check_tensor, describe, expected

from ._checks import NanPolicy
from ._engine import Scratch
from ._kernels import abs_max, pow2_exponents
from ._vectors import MultivariateEstimator as MultivariateEstimator
from ._vectors import (
    Vectors,
    assemble,
    buffer,
    checked_vectors,
    kept_samples,
    scratch_for,
    undefined_where,
)

__all__ = ["MultivariateEstimator", "energy_score", "variogram_score"]

# Elements of a temporary per chunk. CPU: 2^20 (8 MiB of float64), as crps's chunks. Smaller
# chunks ran from cache and took 0.6-0.8x the time on one thread, but every torch op is a
# parallel region: on a 2-core Xeon shared with other jobs, 2 threads took 37 s at 2^17 and
# 3.7 s at 2^20 for the energy score of the ETTh1 windows (1.1 s and 1.3 s on one thread).
# CUDA: large chunks keep the kernel count low.
MV_CHUNK_ELEMENTS = 1 << 20
MV_CUDA_CHUNK_ELEMENTS = 1 << 24


def _budget(v: Vectors) -> int:
    """Elements of a temporary per chunk on the vectors' device."""
    return MV_CUDA_CHUNK_ELEMENTS if v.x.device.type == "cuda" else MV_CHUNK_ELEMENTS


# --------------------------------------------------------------------------------------------
# Energy score
# --------------------------------------------------------------------------------------------


def energy_score(
    samples: torch.Tensor,
    obs: torch.Tensor,
    *,
    event_dims: int | Sequence[int] = -1,
    sample_dim: int = 0,
    estimator: MultivariateEstimator = "ecdf",
    nan_policy: NanPolicy = "propagate",
) -> torch.Tensor:
    """Energy score of a multivariate sample forecast, one per forecast vector.

    ES(F, y) = E||X - y|| - 1/2 E||X - X'|| with ||.|| the Euclidean norm over the event axes
    (Gneiting & Raftery 2007), lower is better, in the units of ``y``; for one-element events
    it is the CRPS. With samples x_1 ... x_S of each vector::

        ecdf: (1/S) sum_i ||x_i - y|| - 1/(2 S^2) sum_i sum_j ||x_i - x_j||
        fair: (1/S) sum_i ||x_i - y|| - 1/(2 S (S - 1)) sum_{i != j} ||x_i - x_j||

    ``"ecdf"`` is the exact energy score of the empirical distribution of the samples
    (scoringrules' ``es_ensemble(..., estimator="nrg")``, its default); ``"fair"`` the unbiased
    estimate of the score of the distribution the samples were drawn from (scoringrules'
    ``"fair"``), as ``crps(..., estimator="fair")``. O(S^2 D) per vector, chunked: the ETTh1
    test set at 100 samples (2785 vectors of 96 x 7) took 14 MiB of extra memory.

    Args:
        samples: forecast samples ``[S, *E]`` (sample axis at ``sample_dim``), floating point,
            in any memory layout.
        obs: observations ``[*E]`` or any shape that broadcasts to ``E``.
        event_dims: the axes of ``E`` (the shape of ``samples`` without its sample axis) that
            form one vector, an int or a sequence; negative values count from the end. With
            samples ``[S, B, H, N]``: ``-1`` scores each step's N variates (result ``[B, H]``),
            ``(-2, -1)`` each window's H x N values as one vector (result ``[B]``).
        sample_dim: axis of ``samples`` holding the S samples.
        estimator: ``"ecdf"`` or ``"fair"`` (needs S >= 2).
        nan_policy: ``"propagate"``: NaN wherever a vector or its samples hold a NaN;
            ``"omit"``: a sample with a NaN anywhere in its vector is dropped from that vector
            (NaN where no sample, or for ``"fair"`` one, is left, or the observation holds a
            NaN); ``"raise"``: ValueError on any non-finite sample or observation.

    Returns:
        ES of shape ``E`` without the event axes, float32 for half/bfloat16/float32 inputs
        (computed in float64), float64 if any input is. Differentiable with respect to
        ``samples`` and ``obs`` (where no two samples coincide).

    Raises:
        TypeError: a non-tensor or non-floating ``samples``, a non-tensor ``obs``, a
            non-integer axis, a non-string ``estimator`` or ``nan_policy``.
        ValueError: shapes that do not broadcast, an empty sample axis, axes out of range or
            repeated, events without elements, ``"fair"`` with S = 1, an unknown estimator
            or policy, non-finite values under ``nan_policy="raise"``.

    Example:
        >>> samples = torch.randn(100, 32, 96, 7)          # [S, B, H, N]
        >>> energy_score(samples, torch.zeros(32, 96, 7), event_dims=(-2, -1)).shape
        torch.Size([32])
    """
    v = checked_vectors(samples, obs, sample_dim, event_dims, estimator, nan_policy)
    s, d = v.n_samples, v.d
    per_chunk = max(1, _budget(v) // (s * d + s * s))
    fair, omit = estimator == "fair", nan_policy == "omit"
    # float64 from float32 values cannot overflow a squared distance; float64 inputs beyond
    # ~1e150 could, and are scaled by a power of two (the score is homogeneous of degree 1)
    f64 = torch.finfo(torch.float64).max
    limit = math.sqrt(f64 / (64 * d)) if v.dtype == torch.float64 else None
    scratch = scratch_for(v)
    parts = []
    for xs, ys in v.chunks(per_chunk, torch.float64, scratch):  # [C, S, D], [C, D]
        k = None if limit is None else pow2_exponents(_vector_abs_max(xs, ys), limit)
        if k is None:
            parts.append(_energy(xs, ys, fair=fair, omit=omit, grad=v.needs_grad, scratch=scratch))
            continue
        scale = torch.exp2(-k)  # [C]
        xs, ys = xs * scale[:, None, None], ys * scale[:, None]
        out = _energy(xs, ys, fair=fair, omit=omit, grad=v.needs_grad, scratch=scratch)
        parts.append(out / scale)
    return assemble(v, parts)


def _vector_abs_max(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """max |value| of each vector's samples ``[C, S, D]`` and observation ``[C, D]``, NaN as 0."""
    return torch.fmax(abs_max(xs, (1, 2)), abs_max(ys, 1))


def _energy(
    xs: torch.Tensor,
    ys: torch.Tensor,
    *,
    fair: bool,
    omit: bool,
    grad: bool,
    scratch: Scratch | None,
) -> torch.Tensor:
    """ES of one chunk: samples ``[C, S, D]``, observations ``[C, D]`` (float64) -> ``[C]``.

    ``scratch`` (CPU, no gradient): buffers for the [C, S, D] and [C, S, S] temporaries.
    """
    c, s, d = xs.shape
    w: torch.Tensor | None = None
    n = torch.full((c,), float(s), dtype=xs.dtype, device=xs.device)  # [C]
    if omit:
        xs, w, n = kept_samples(xs)
    if grad:
        err = torch.linalg.vector_norm(xs - ys[:, None, :], dim=-1)  # [C, S]
        dist = torch.cdist(xs, xs, compute_mode="donot_use_mm_for_euclid_dist")  # [C, S, S]
    else:
        diff = buffer(scratch, "diff", (c, s, d), xs.dtype, xs.device)
        err = torch.linalg.vector_norm(torch.sub(xs, ys[:, None, :], out=diff), dim=-1)
        dist = _distances(xs, w, diff, buffer(scratch, "gram", (c, s, s), xs.dtype, xs.device))
    if w is None:
        first, pairs = err.sum(-1), dist.sum((-2, -1))
    else:
        first = (err * w).sum(-1)
        pairs = torch.einsum("ci,cij,cj->c", w, dist, w)
    out = first / n - 0.5 * pairs / (n * (n - 1) if fair else n * n)
    return undefined_where(out, n, ys, fair=fair) if omit else out


def _distances(
    xs: torch.Tensor, w: torch.Tensor | None, centred: torch.Tensor, gram: torch.Tensor
) -> torch.Tensor:
    """Pairwise Euclidean distances of samples ``[C, S, D]`` -> ``[C, S, S]`` (written into
    ``gram``; ``centred`` [C, S, D] is a buffer), without a gradient.

    The Gram matrix of the samples centred on their (kept, ``w``) mean: |a - b|^2 = |a|^2 +
    |b|^2 - 2 a.b, one batched matmul.
    """
    if w is None:
        centre = xs.mean(1, keepdim=True)  # [C, 1, D]
    else:
        centre = (xs * w[..., None]).sum(1, keepdim=True) / w.sum(-1)[:, None, None].clamp_min(1)
    xc = torch.sub(xs, centre, out=centred)  # [C, S, D]
    torch.bmm(xc, xc.transpose(1, 2), out=gram)  # [C, S, S]
    sq = gram.diagonal(dim1=1, dim2=2).clone()  # [C, S]
    # in place (a fresh [C, S, S] sum was 3x slower at D = 7), and in this order so that the
    # diagonal and duplicated samples give exactly 0: -2a + a + a
    d2 = gram.mul_(-2).add_(sq[:, :, None]).add_(sq[:, None, :])  # [C, S, S]
    return d2.clamp_min_(0).sqrt_()


# --------------------------------------------------------------------------------------------
# Variogram score
# --------------------------------------------------------------------------------------------


def variogram_score(
    samples: torch.Tensor,
    obs: torch.Tensor,
    *,
    p: float = 0.5,
    pair_weights: torch.Tensor | None = None,
    event_dims: int | Sequence[int] = -1,
    sample_dim: int = 0,
    estimator: MultivariateEstimator = "ecdf",
    nan_policy: NanPolicy = "propagate",
) -> torch.Tensor:
    """Variogram score of order ``p`` of a multivariate sample forecast, one per vector.

    Scheuerer & Hamill (2015): for a vector of D components, with weights w_ij >= 0::

        VS_p(F, y) = sum_i sum_j w_ij (E|X_i - X_j|^p - |y_i - y_j|^p)^2

    lower is better. It compares the forecast's variogram (how far apart each pair of
    components is expected to be) with the observed one, so it sees the dependence between
    components that the CRPS and, weakly, the energy score miss, and it ignores a shift common
    to all components. With samples x_1 ... x_S, a_ij = mean_m |x_mi - x_mj|^p and
    v_ij = (1/S) sum_m (|x_mi - x_mj|^p - a_ij)^2::

        ecdf: sum_ij w_ij (a_ij - |y_i - y_j|^p)^2               the score of the samples' law
        fair: sum_ij w_ij ((a_ij - |y_i - y_j|^p)^2 - v_ij / (S - 1))   unbiased for F's

    the same numbers as scoringrules' ``vs_ensemble(..., estimator="nrg")`` (its default) and
    ``"fair"``, whose pairwise form the fair line rewrites in O(S) per pair. O(S D^2) per
    vector, chunked; each unordered pair {i, j} is computed once.

    Args:
        samples: forecast samples ``[S, *E]`` (sample axis at ``sample_dim``), floating point.
        obs: observations broadcastable to ``E``.
        p: the order, a finite number > 0; 0.5 is the usual choice (Scheuerer & Hamill's
            recommendation and scoringrules' default), 1 and 2 the others seen.
        pair_weights: optional ``[D, D]`` weights w_ij >= 0 of the pairs, D the number of
            elements in a vector, components in row-major order of the event axes (as
            ``reshape`` flattens them); all ones if None (scoringrules' default). Only
            w_ij + w_ji matters (|X_i - X_j| is symmetric) and the diagonal never does.
        event_dims: the axes of ``E`` that form one vector, as in ``energy_score``.
        sample_dim: axis of ``samples`` holding the S samples.
        estimator: ``"ecdf"`` or ``"fair"`` (needs S >= 2).
        nan_policy: as in ``energy_score``.

    Returns:
        VS_p of shape ``E`` without the event axes: computed in float32 for
        half/bfloat16/float32 samples and observations (``pair_weights`` are cast to it),
        summed over pairs in float64, returned in float32; float64 if ``samples`` or ``obs``
        is. Differentiable with respect to ``samples`` and ``obs`` where no two components
        coincide (for p <= 1).

    Raises:
        TypeError: as ``energy_score``; a non-number ``p``; a non-tensor or non-real
            ``pair_weights``.
        ValueError: as ``energy_score``; p <= 0 or not finite; ``pair_weights`` not
            ``[D, D]``, negative or not finite, or on another device.

    Example:
        >>> samples = torch.randn(100, 32, 24, 7)          # [S, B, H, N]
        >>> variogram_score(samples, torch.zeros(32, 24, 7)).shape   # over N at each step
        torch.Size([32, 24])
    """
    order = check_number("p", p, minimum=0.0, open_min=True)
    v = checked_vectors(samples, obs, sample_dim, event_dims, estimator, nan_policy)
    s, d = v.n_samples, v.d
    upper = _upper_weights(pair_weights, d, v)  # [D, D]: w_ij + w_ji above the diagonal
    if d * s * d <= _budget(v):
        per_chunk, rows = max(1, _budget(v) // (s * d * d)), d
    else:
        per_chunk, rows = 1, max(1, _budget(v) // (s * d))
    fair, omit = estimator == "fair", nan_policy == "omit"
    # |x_i - x_j|^p, averaged over S, then squared: 2 max|x| raised to 2p, times S, must stay
    # finite in the computation dtype; vectors beyond are scaled by a power of two
    # (VS_p(aX, ay) = a^(2p) VS_p(X, y)).
    limit = 0.5 * (torch.finfo(v.dtype).max / (4 * s)) ** (1 / (2 * order))
    scratch = scratch_for(v)
    parts = []
    for xs, ys in v.chunks(per_chunk, v.dtype, scratch):  # [C, S, D], [C, D]
        k = pow2_exponents(_vector_abs_max(xs, ys), limit)
        if k is not None:
            scale = torch.exp2(-k)  # [C]
            xs, ys = xs * scale[:, None, None], ys * scale[:, None]
        out = _variogram(
            xs, ys, upper, order, rows, fair=fair, omit=omit, grad=v.needs_grad, scratch=scratch
        )
        parts.append(out if k is None else out * torch.exp2(2 * order * k.double()))
    return assemble(v, parts)


def _upper_weights(pair_weights: object, d: int, v: Vectors) -> torch.Tensor:
    """The pair weights folded onto the strict upper triangle, w_ij + w_ji for i < j: [D, D]."""
    device = v.x.device
    if pair_weights is None:
        w = torch.ones(d, d, dtype=v.dtype, device=device)
    else:
        w = check_tensor("pair_weights", pair_weights)
        if tuple(w.shape) != (d, d):
            raise ValueError(
                expected(
                    "pair_weights", f"a [D, D] tensor with D = {d}, the elements of a vector", w
                )
            )
        if w.device != device:
            raise ValueError(
                f"pair_weights: expected a tensor on {device} (where samples are), got one on "
                f"{w.device}"
            )
        if w.is_floating_point():
            check_all_finite("pair_weights", w)
        negative = int((w < 0).sum())
        if negative:
            raise ValueError(
                f"pair_weights: expected non-negative values, got {negative} negative value(s) "
                f"in {describe(w)}"
            )
        w = w.to(v.dtype)
    return torch.triu(w + w.T, diagonal=1)


def _variogram(
    xs: torch.Tensor,
    ys: torch.Tensor,
    upper: torch.Tensor,
    p: float,
    rows: int,
    *,
    fair: bool,
    omit: bool,
    grad: bool,
    scratch: Scratch | None,
) -> torch.Tensor:
    """VS_p of one chunk: samples ``[C, S, D]``, observations ``[C, D]``, folded weights
    ``upper [D, D]``, K = ``rows`` rows of the pair matrix at a time -> float64 ``[C]``.
    ``scratch`` (CPU, no gradient): a buffer for the [C, S, K, D] differences."""
    c, s, d = xs.shape
    w: torch.Tensor | None = None
    n = torch.full((c,), float(s), dtype=xs.dtype, device=xs.device)  # [C]
    if omit:
        xs, w, n = kept_samples(xs)
    total = torch.zeros(c, dtype=torch.float64, device=xs.device)
    power: Callable[[torch.Tensor], torch.Tensor] = (
        (lambda t: t.abs().pow(p)) if grad else (lambda t: t.abs_().pow_(p))
    )
    for a in range(0, d, rows):
        b = min(d, a + rows)
        # pairs i in [a, b), j in [a, D): every i < j once, plus a triangle the weights zero
        if grad:
            dx = xs[:, :, a:b, None] - xs[:, :, None, a:]  # [C, S, K, D - a]
        else:
            shape = (c, s, b - a, d - a)
            dx = buffer(scratch, "dx", shape, xs.dtype, xs.device)
            torch.sub(xs[:, :, a:b, None], xs[:, :, None, a:], out=dx)
        dy = ys[:, a:b, None] - ys[:, None, a:]  # [C, K, D - a]
        if grad:  # 0^p has no derivative for p <= 1: keep the zero-weight pairs off 0
            below = upper[a:b, a:] == 0
            dx, dy = dx.masked_fill(below, 1.0), dy.masked_fill(below, 1.0)
        fx, fy = power(dx), power(dy)
        if w is None:
            mean = fx.mean(1)  # [C, K, D - a]
        else:
            fx = fx * w[:, :, None, None]
            mean = fx.sum(1) / n[:, None, None]
        term = (mean - fy).double().square()
        if fair:  # (a - y)^2 - v / (S - 1), v the samples' variance of |X_i - X_j|^p
            # fx is not needed after this: overwrite it (its buffer) without a gradient
            dev = (fx - mean[:, None]).square() if grad else fx.sub_(mean[:, None]).square_()
            if w is not None:
                dev = dev * w[:, :, None, None]
            var = dev.sum(1).double() / n[:, None, None]
            term = term - var / (n[:, None, None] - 1)
        total = total + (term * upper[a:b, a:]).sum((1, 2))
    return undefined_where(total, n, ys, fair=fair) if omit else total
