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
where those are larger), whatever n.

The energy score's pairwise distances come from a Gram matrix of the centred samples in float64
(one batched matmul per chunk): centring removes the cancellation of |a|^2 + |b|^2 - 2 a.b
for samples far from the origin, and float64 leaves the distances at ~1e-13 of the spread
(measured against direct differences at 672-dimensional events), float32 inputs can then not
overflow a squared distance. Inputs that need a gradient take ``torch.cdist``'s direct
differences instead (exact zero-distance gradients), about 2.5x slower on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from diffsample._utils import check_choice, check_number, check_tensor, describe, expected
from diffsample._utils import check_finite as check_all_finite

from ._checks import NanPolicy, check_finite, normalise_dim
from ._engine import Scratch
from ._kernels import abs_max, pow2_exponents
from ._layout import check_operands, compute_dtype, range_blocks

__all__ = ["MultivariateEstimator", "energy_score", "variogram_score"]

MultivariateEstimator = Literal["ecdf", "fair"]

# Elements of a temporary per chunk. CPU: 2^20 (8 MiB of float64), as crps's chunks. Smaller
# chunks ran from cache and took 0.6-0.8x the time on one thread, but every torch op is a
# parallel region: on a 2-core Xeon shared with other jobs, 2 threads took 37 s at 2^17 and
# 3.7 s at 2^20 for the energy score of the ETTh1 windows (1.1 s and 1.3 s on one thread).
# CUDA: large chunks keep the kernel count low.
MV_CHUNK_ELEMENTS = 1 << 20
MV_CUDA_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------
# Vectors: the operands seen as n vectors of length D
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Vectors:
    """Validated operands of a multivariate score.

    Attributes:
        x: samples as a view ``[S, *R', *V]`` (R' is R, or (1,) where R is empty).
        y: observations as a view ``[*R', *V]``.
        shape: R, the result's shape.
        rows: R', the shape the vectors are cut along.
        d: D, the length of a vector.
        dtype: the result's dtype (float64 if any input is, else float32).
        needs_grad: a gradient is wanted (autograd on and an input requires one).
    """

    x: torch.Tensor
    y: torch.Tensor
    shape: tuple[int, ...]
    rows: tuple[int, ...]
    d: int
    dtype: torch.dtype
    needs_grad: bool

    @property
    def n_samples(self) -> int:
        return self.x.shape[0]

    @property
    def n(self) -> int:
        """The number of vectors scored, prod(R)."""
        return math.prod(self.shape)

    def chunks(
        self, per_chunk: int, dtype: torch.dtype, scratch: Scratch | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Vectors in chunks of at most ``per_chunk``, in row-major order of R, as contiguous
        samples ``[C, S, D]`` and observations ``[C, D]`` in ``dtype``.

        Without a gradient each chunk is copied (and cast) in one pass into buffers that the
        next chunk reuses (``scratch`` on a CPU: fresh allocations per chunk left hundreds of
        MiB of freed heap resident); with one, pieces are concatenated (differentiable).
        """
        s, n_event = self.n_samples, self.x.dim() - 1 - len(self.rows)  # S, len(V)
        for start in range(0, self.n, per_chunk):
            stop = min(self.n, start + per_chunk)
            pieces = []
            for b in range_blocks(self.rows, start, stop):
                every_sample: tuple[int | slice, ...] = (slice(None), *b)
                xb = self.x[every_sample]  # [S, *k, *V]
                pieces.append((xb.movedim(0, xb.dim() - 1 - n_event), self.y[b]))  # [*k, S, *V]
            if self.needs_grad:
                xs = torch.cat([x.reshape(-1, s, self.d) for x, _ in pieces])  # [C, S, D]
                ys = torch.cat([y.reshape(-1, self.d) for _, y in pieces])  # [C, D]
                yield xs.to(dtype), ys.to(dtype)
                continue
            xs = _buffer(scratch, "x", (stop - start, s, self.d), dtype, self.x.device)
            ys = _buffer(scratch, "y", (stop - start, self.d), dtype, self.x.device)
            row = 0
            for x, y in pieces:
                c = y.numel() // self.d
                xs[row : row + c].view(x.shape).copy_(x)
                ys[row : row + c].view(y.shape).copy_(y)
                row += c
            yield xs, ys

    def budget(self) -> int:
        """Elements of a temporary per chunk on this device."""
        return MV_CUDA_CHUNK_ELEMENTS if self.x.device.type == "cuda" else MV_CHUNK_ELEMENTS


def _buffer(
    scratch: Scratch | None,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A contiguous tensor to write into: a reused per-call buffer on a CPU, else a new one."""
    if scratch is not None:
        return scratch.get(name, shape, dtype)
    return torch.empty(shape, dtype=dtype, device=device)


def _scratch(v: _Vectors) -> Scratch | None:
    """Reused buffers for the CPU route without a gradient (results never alias them)."""
    return Scratch() if v.x.device.type == "cpu" and not v.needs_grad else None


def _event_axes(event_dims: object, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``event_dims`` (an int or a sequence of distinct ints, axes of E) as sorted axes."""
    what = f"the scored shape {shape} (samples without the sample axis)"
    want = f"an axis or a non-empty sequence of axes of {what}"
    if isinstance(event_dims, str):
        raise TypeError(expected("event_dims", want, event_dims))
    dims = list(event_dims) if isinstance(event_dims, Sequence) else [event_dims]
    if not dims:
        raise ValueError(expected("event_dims", want, event_dims))
    axes = [normalise_dim("event_dims", d, len(shape), what) for d in dims]
    if len(set(axes)) != len(axes):
        raise ValueError(expected("event_dims", f"distinct axes of {what}", event_dims))
    return tuple(sorted(axes))


def _vectors(
    samples: torch.Tensor, obs: torch.Tensor, sample_dim: int, event_dims: object
) -> _Vectors:
    sd, shape = check_operands(samples, obs, sample_dim)
    check_tensor("obs", obs)  # required here (check_operands allows None)
    if not shape:
        raise ValueError(
            expected("samples", "an event axis beside the sample axis (shape [S, *E])", samples)
        )
    events = _event_axes(event_dims, shape)
    rest = [a for a in range(len(shape)) if a not in events]
    d = math.prod(shape[a] for a in events)
    if d == 0:
        raise ValueError(
            f"event_dims: expected event axes holding at least one element, got {event_dims!r} "
            f"of the scored shape {shape}"
        )
    x = samples.movedim(sd, 0).permute(0, *(1 + a for a in rest), *(1 + a for a in events))
    y = obs.expand(shape).permute(*rest, *events)  # [*R, *V]
    out_shape = tuple(shape[a] for a in rest)
    if not rest:  # a single vector: give R one axis of size 1 for the chunking
        x, y = x.unsqueeze(1), y.unsqueeze(0)
    grad = torch.is_grad_enabled() and (samples.requires_grad or obs.requires_grad)
    return _Vectors(
        x=x,
        y=y,
        shape=out_shape,
        rows=out_shape or (1,),
        d=d,
        dtype=compute_dtype(samples, obs),
        needs_grad=grad,
    )


def _checked(
    samples: torch.Tensor,
    obs: torch.Tensor,
    sample_dim: int,
    event_dims: object,
    estimator: object,
    nan_policy: object,
) -> _Vectors:
    """The checks both scores share, in the order ``crps`` makes them."""
    check_choice("estimator", estimator, MultivariateEstimator)
    check_choice("nan_policy", nan_policy, NanPolicy)
    v = _vectors(samples, obs, sample_dim, event_dims)
    if estimator == "fair" and v.n_samples < 2:
        raise ValueError(
            f"samples: expected at least 2 samples along sample_dim={sample_dim} for "
            f"estimator='fair', got {describe(samples)}"
        )
    if nan_policy == "raise":
        check_finite("samples", samples)
        check_finite("obs", obs)
    return v


def _assemble(v: _Vectors, parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-chunk results [C] (in order) -> the result of shape R in the result dtype."""
    if not parts:
        return torch.empty(v.shape, dtype=v.dtype, device=v.x.device)
    flat = parts[0] if len(parts) == 1 else torch.cat(parts)  # [n]
    return flat.reshape(v.shape).to(v.dtype)


def _valid(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nan_policy='omit': samples with a NaN anywhere in their vector are dropped.

    Returns the samples with dropped vectors zeroed ``[C, S, D]``, the 0/1 weights of the kept
    samples ``[C, S]`` in the samples' dtype, and their count ``[C]``.
    """
    valid = ~torch.isnan(xs).any(-1)  # [C, S]
    kept = torch.where(valid[..., None], xs, torch.zeros_like(xs))
    v = valid.to(xs.dtype)
    return kept, v, v.sum(-1)


def _undefined(out: torch.Tensor, n: torch.Tensor, y: torch.Tensor, *, fair: bool) -> torch.Tensor:
    """nan_policy='omit': NaN where no sample (or, for 'fair', one) is left or obs has a NaN."""
    bad = (n < (2 if fair else 1)) | torch.isnan(y).any(-1)
    return torch.where(bad, torch.full_like(out, math.nan), out)


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
    v = _checked(samples, obs, sample_dim, event_dims, estimator, nan_policy)
    s, d = v.n_samples, v.d
    per_chunk = max(1, v.budget() // (s * d + s * s))
    fair, omit = estimator == "fair", nan_policy == "omit"
    # float64 from float32 values cannot overflow a squared distance; float64 inputs beyond
    # ~1e150 could, and are scaled by a power of two (the score is homogeneous of degree 1)
    f64 = torch.finfo(torch.float64).max
    limit = math.sqrt(f64 / (64 * d)) if v.dtype == torch.float64 else None
    scratch = _scratch(v)
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
    return _assemble(v, parts)


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
        xs, w, n = _valid(xs)
    if grad:
        err = torch.linalg.vector_norm(xs - ys[:, None, :], dim=-1)  # [C, S]
        dist = torch.cdist(xs, xs, compute_mode="donot_use_mm_for_euclid_dist")  # [C, S, S]
    else:
        diff = _buffer(scratch, "diff", (c, s, d), xs.dtype, xs.device)
        err = torch.linalg.vector_norm(torch.sub(xs, ys[:, None, :], out=diff), dim=-1)
        dist = _distances(xs, w, diff, _buffer(scratch, "gram", (c, s, s), xs.dtype, xs.device))
    if w is None:
        first, pairs = err.sum(-1), dist.sum((-2, -1))
    else:
        first = (err * w).sum(-1)
        pairs = torch.einsum("ci,cij,cj->c", w, dist, w)
    out = first / n - 0.5 * pairs / (n * (n - 1) if fair else n * n)
    return _undefined(out, n, ys, fair=fair) if omit else out


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
    v = _checked(samples, obs, sample_dim, event_dims, estimator, nan_policy)
    s, d = v.n_samples, v.d
    upper = _upper_weights(pair_weights, d, v)  # [D, D]: w_ij + w_ji above the diagonal
    if d * s * d <= v.budget():
        per_chunk, rows = max(1, v.budget() // (s * d * d)), d
    else:
        per_chunk, rows = 1, max(1, v.budget() // (s * d))
    fair, omit = estimator == "fair", nan_policy == "omit"
    # |x_i - x_j|^p, averaged over S, then squared: 2 max|x| raised to 2p, times S, must stay
    # finite in the computation dtype; vectors beyond are scaled by a power of two
    # (VS_p(aX, ay) = a^(2p) VS_p(X, y)).
    limit = 0.5 * (torch.finfo(v.dtype).max / (4 * s)) ** (1 / (2 * order))
    scratch = _scratch(v)
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
    return _assemble(v, parts)


def _upper_weights(pair_weights: object, d: int, v: _Vectors) -> torch.Tensor:
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
        xs, w, n = _valid(xs)
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
            dx = _buffer(scratch, "dx", shape, xs.dtype, xs.device)
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
    return _undefined(total, n, ys, fair=fair) if omit else total
