"""The operands of a multivariate score seen as n vectors of length D, checked and cut into chunks.

Dimensions: S samples, E the scored shape (the shape of ``samples`` without its sample axis;
``obs`` broadcasts to it), V the event shape (the axes of E named by ``event_dims``), D =
prod(V) the length of one forecast vector, R the rest of E (the result's shape), n = prod(R)
vectors, C vectors per chunk.

What :mod:`diffsample.metrics.multivariate`'s two scores share: the argument checks (in the
order ``crps`` makes them), the view of the samples as ``[S, *R, *V]``, the chunks gathered
into contiguous (reused, on a CPU) buffers, the per-chunk results put back into the shape R,
and the ``nan_policy="omit"`` weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from diffsample._utils import check_choice, check_tensor, describe, expected

from ._checks import NanPolicy, check_finite, normalise_dim
from ._engine import Scratch
from ._layout import check_operands, compute_dtype, range_blocks

__all__ = [
    "MultivariateEstimator",
    "Vectors",
    "assemble",
    "buffer",
    "checked_vectors",
    "kept_samples",
    "scratch_for",
    "undefined_where",
    "vectors_of",
]

MultivariateEstimator = Literal["ecdf", "fair"]


@dataclass(frozen=True)
class Vectors:
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
            xs = buffer(scratch, "x", (stop - start, s, self.d), dtype, self.x.device)
            ys = buffer(scratch, "y", (stop - start, self.d), dtype, self.x.device)
            row = 0
            for x, y in pieces:
                c = y.numel() // self.d
                xs[row : row + c].view(x.shape).copy_(x)
                ys[row : row + c].view(y.shape).copy_(y)
                row += c
            yield xs, ys


def buffer(
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


def scratch_for(v: Vectors) -> Scratch | None:
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


def vectors_of(
    samples: torch.Tensor, obs: torch.Tensor, sample_dim: int, event_dims: object
) -> Vectors:
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
    return Vectors(
        x=x,
        y=y,
        shape=out_shape,
        rows=out_shape or (1,),
        d=d,
        dtype=compute_dtype(samples, obs),
        needs_grad=grad,
    )


def checked_vectors(
    samples: torch.Tensor,
    obs: torch.Tensor,
    sample_dim: int,
    event_dims: object,
    estimator: object,
    nan_policy: object,
) -> Vectors:
    """The checks both scores share, in the order ``crps`` makes them."""
    check_choice("estimator", estimator, MultivariateEstimator)
    check_choice("nan_policy", nan_policy, NanPolicy)
    v = vectors_of(samples, obs, sample_dim, event_dims)
    if estimator == "fair" and v.n_samples < 2:
        raise ValueError(
            f"samples: expected at least 2 samples along sample_dim={sample_dim} for "
            f"estimator='fair', got {describe(samples)}"
        )
    if nan_policy == "raise":
        check_finite("samples", samples)
        check_finite("obs", obs)
    return v


def assemble(v: Vectors, parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-chunk results [C] (in order) -> the result of shape R in the result dtype."""
    if not parts:
        return torch.empty(v.shape, dtype=v.dtype, device=v.x.device)
    flat = parts[0] if len(parts) == 1 else torch.cat(parts)  # [n]
    return flat.reshape(v.shape).to(v.dtype)


def kept_samples(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nan_policy='omit': samples with a NaN anywhere in their vector are dropped.

    Returns the samples with dropped vectors zeroed ``[C, S, D]``, the 0/1 weights of the kept
    samples ``[C, S]`` in the samples' dtype, and their count ``[C]``.
    """
    valid = ~torch.isnan(xs).any(-1)  # [C, S]
    kept = torch.where(valid[..., None], xs, torch.zeros_like(xs))
    v = valid.to(xs.dtype)
    return kept, v, v.sum(-1)


def undefined_where(
    out: torch.Tensor, n: torch.Tensor, y: torch.Tensor, *, fair: bool
) -> torch.Tensor:
    """nan_policy='omit': NaN where no sample (or, for 'fair', one) is left or obs has a NaN."""
    bad = (n < (2 if fair else 1)) | torch.isnan(y).any(-1)
    return torch.where(bad, torch.full_like(out, math.nan), out)
