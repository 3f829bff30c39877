"""The lane layout: samples seen as P lanes of S samples, cut into chunks of consecutive lanes.

Dimensions: S samples, E the scored shape (the shape of ``samples`` without its sample axis,
broadcast with ``obs``), P = prod(E) scored elements, one "lane" per element (the S samples of
that element, in row-major order of E), E' the coalesced scored shape (E without its size-1
axes, adjacent axes merged where the strides allow: the same lanes in the same order), C lanes
per chunk.

Why chunks are flat ranges of lanes: the cost and the result of a chunk then depend only on
which lanes it holds, never on the input's memory layout. Each chunk [start, stop) is gathered
by one strided copy per rectangular block of E' it covers (at most 2 per axis of E') into a
contiguous ``[C, S]`` buffer, so a forecaster's output with its last two axes swapped in memory
is read as fast as a contiguous tensor, and memory stays at one chunk per worker. Cutting the
input along its own strides instead (one piece per leading index until a piece flattens) made
that layout cost 20-55x more: 24 576 chunks of 7 lanes for [100, 256, 96, 7].
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from diffsample._utils import check_tensor, describe, expected

from ._checks import broadcast_mask, normalise_dim

# A block: integer indices into the leading axes of E', then one slice of the next axis.
Block = tuple[int | slice, ...]


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any operand is float64, else float32 (half precision accumulates in float32)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def _coalesced(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views ``[*E', S]`` of ``[*E, S]`` tensors: size-1 axes of E dropped, adjacent axes merged
    where every tensor's strides allow it (what ``view`` accepts), so no data moves."""
    shape = tensors[0].shape[:-1]
    merged: list[int] = []
    inner: list[int] = []  # the innermost stride of the last merged axis, per tensor
    for i, n in enumerate(shape):
        if n == 1:
            continue
        strides = [t.stride(i) for t in tensors]
        if merged and all(st == s * n for st, s in zip(inner, strides, strict=True)):
            # inner[k] == stride(i) * n, i.e. axis i continues the last merged axis
            merged[-1] *= n
        else:
            merged.append(n)
        inner = strides
    s = tensors[0].shape[-1]
    return [t.view(*(merged or [1]), s) for t in tensors]


def range_blocks(shape: tuple[int, ...], start: int, stop: int) -> Iterator[Block]:
    """Cover the row-major positions [start, stop) of an array of ``shape`` by rectangular
    blocks, in order: a partial first row, whole rows, a partial last row (recursively)."""
    if start >= stop:
        return
    if len(shape) == 1:
        yield (slice(start, stop),)
        return
    inner = math.prod(shape[1:])
    i0, r0 = divmod(start, inner)
    i1, r1 = divmod(stop, inner)
    if i0 == i1:
        for b in range_blocks(shape[1:], r0, r1):
            yield (i0, *b)
        return
    if r0:
        for b in range_blocks(shape[1:], r0, inner):
            yield (i0, *b)
        i0 += 1
    if i1 > i0:
        yield (slice(i0, i1),)
    if r1:
        for b in range_blocks(shape[1:], 0, r1):
            yield (i1, *b)


def check_operands(
    samples: torch.Tensor, obs: torch.Tensor | None, sample_dim: int
) -> tuple[int, tuple[int, ...]]:
    """The checks every score shares: ``samples`` a floating tensor with a non-empty sample axis
    ``sample_dim``, ``obs`` (if given) a tensor on the same device whose shape broadcasts to the
    scored shape E (``samples`` without its sample axis). Returns (the sample axis as a
    non-negative index, E).
    """
    check_tensor("samples", samples, floating=True)
    if samples.dim() == 0:
        raise ValueError(
            expected(
                "samples",
                "a tensor with a sample axis (a deterministic forecast is samples.unsqueeze(0))",
                samples,
            )
        )
    sd = normalise_dim(
        "sample_dim", sample_dim, samples.dim(), f"samples of shape {tuple(samples.shape)}"
    )
    if samples.shape[sd] == 0:
        raise ValueError(
            expected("samples", f"at least one sample along sample_dim={sample_dim}", samples)
        )
    rest = tuple(samples.shape[:sd] + samples.shape[sd + 1 :])
    without = f"samples of shape {tuple(samples.shape)} without its sample axis (dim {sd}), {rest}"
    if obs is not None:
        check_tensor("obs", obs)
        if obs.device != samples.device:
            raise ValueError(
                f"obs: expected a tensor on {samples.device} (where samples are), got one "
                f"on {obs.device}"
            )
        if obs.dim() > len(rest):
            raise ValueError(
                expected(
                    "obs",
                    f"at most {len(rest)} dimension(s), those of {without} (obs must not "
                    "carry a sample axis: is sample_dim right?)",
                    obs,
                )
            )
        try:
            shape: tuple[int, ...] | None = tuple(torch.broadcast_shapes(rest, obs.shape))
        except RuntimeError:
            shape = None
        if shape != rest:
            raise ValueError(
                expected("obs", f"a shape that broadcasts to {without} (is sample_dim right?)", obs)
            )
    return sd, rest


class Layout:
    """Validated operands of a score, seen as lanes.

    ``x`` and ``w`` are views ``[*E', S]`` of the samples and the (broadcast) weights, no copy;
    ``y`` the observations flattened to ``[P]`` in the computation dtype ``dtype``; ``shape``
    is E, the shape of the elementwise results.
    """

    def __init__(
        self,
        samples: torch.Tensor,
        obs: torch.Tensor | None,
        sample_dim: int,
        *,
        weights: torch.Tensor | None = None,
    ) -> None:
        sd, rest = check_operands(samples, obs, sample_dim)
        self.n_samples = samples.shape[sd]
        self.shape: tuple[int, ...] = rest
        self.dtype = compute_dtype(samples, obs, weights)
        self.device = samples.device
        self.y: torch.Tensor | None = None
        if obs is not None:
            self.y = obs.to(self.dtype).expand(self.shape).reshape(-1)  # [P]
        lanes = [samples.movedim(sd, -1)]  # [*E, S]
        if weights is not None:
            lanes.append(self._check_weights(weights, samples, sd).movedim(sd, -1))
        if self.numel:  # E' only matters where there are lanes to cut
            lanes = _coalesced(lanes)  # [*E', S]
        self.x = lanes[0]
        self.w = lanes[1] if weights is not None else None

    def _check_weights(self, weights: torch.Tensor, samples: torch.Tensor, sd: int) -> torch.Tensor:
        """``weights`` expanded to the samples' shape, checked: >= 0, positive total per element."""
        check_tensor("weights", weights)
        if weights.device != samples.device:
            raise ValueError(
                f"weights: expected a tensor on {samples.device} (where samples are), got one "
                f"on {weights.device}"
            )
        try:
            w = weights.expand(samples.shape)
        except RuntimeError:
            raise ValueError(
                expected(
                    "weights",
                    f"a shape that broadcasts to samples of shape {tuple(samples.shape)}",
                    weights,
                )
            ) from None
        negative = int((weights < 0).sum())
        if negative:
            raise ValueError(
                f"weights: expected non-negative values, got {negative} negative value(s) in "
                f"{describe(weights)}"
            )
        # total weight per element, computed on the un-broadcast weights (no [S, *E] temporary)
        aligned = weights.reshape((1,) * (samples.dim() - weights.dim()) + tuple(weights.shape))
        total = aligned.sum(sd) * (self.n_samples if aligned.shape[sd] == 1 else 1)
        zero = int((total == 0).sum())
        if zero:
            raise ValueError(
                f"weights: expected a positive total weight along the sample axis (dim {sd}) "
                f"for every element, got {zero} element(s) with total 0 in {describe(weights)}"
            )
        return w

    @property
    def numel(self) -> int:
        """P, the number of scored elements (lanes)."""
        return math.prod(self.shape)

    def ranges(self, max_lanes: int) -> Iterator[tuple[int, int]]:
        """Chunks as flat lane ranges [start, stop) of at most ``max_lanes`` lanes, in order."""
        p = self.numel
        for start in range(0, p, max_lanes):
            yield start, min(p, start + max_lanes)

    def gather(
        self, t: torch.Tensor, start: int, stop: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Lanes [start, stop) of ``t`` (``x`` or ``w``) as ``[C, S]``.

        With ``out`` (a contiguous ``[C, S]`` buffer, any dtype) they are copied into it, cast
        in the same pass; without, they come back as a view where the strides allow, else as a
        new tensor (differentiable either way).
        """
        s = t.shape[-1]
        blocks = [
            t[b] for b in range_blocks(tuple(t.shape[:-1]), start, stop)
        ]  # [k, *rest, S] each
        if out is None:
            rows = [b.reshape(-1, s) for b in blocks]  # [k * prod(rest), S] each
            return rows[0] if len(rows) == 1 else torch.cat(rows)
        row = 0
        for b in blocks:
            n = b.numel() // s
            out[row : row + n].view(b.shape).copy_(b)
            row += n
        return out


def mask_flat(mask: torch.Tensor | None, layout: Layout) -> torch.Tensor:
    """Element weights flattened to [P] float64 (ones without a mask)."""
    if mask is None:
        return torch.ones(layout.numel, dtype=torch.float64, device=layout.device)
    if mask.device != layout.device:
        raise ValueError(
            f"mask: expected a tensor on {layout.device} (where samples are), got one on "
            f"{mask.device}"
        )
    return broadcast_mask(mask, layout.shape).to(torch.float64).reshape(-1)


def aggregate_mask(mask: torch.Tensor, shape: tuple[int, ...], variate_dim: int) -> torch.Tensor:
    """The element weights of the sums over variates: ``mask`` broadcast to the scored shape
    ``shape`` (E) and averaged over the variate axis, as CSDI's ``calc_quantile_CRPS_sum``."""
    return broadcast_mask(mask, shape).to(torch.float64).mean(variate_dim)


def sum_variates(
    samples: torch.Tensor, obs: torch.Tensor, variate_dim: int, sample_dim: int, name: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Samples and obs summed over the variate axis ``variate_dim`` of E (argument ``name``).

    Returns samples ``[S, *E']``, obs ``[*E']`` (E' here: E without the variate axis) and the
    variate axis as an index into E.
    """
    check_tensor("samples", samples, floating=True)
    if samples.dim() < 2:
        raise ValueError(expected("samples", "a sample axis and a variate axis", samples))
    sd = normalise_dim(
        "sample_dim", sample_dim, samples.dim(), f"samples of shape {tuple(samples.shape)}"
    )
    x = samples.movedim(sd, 0)  # [S, *E]
    vd = normalise_dim(
        name, variate_dim, x.dim() - 1, f"samples without the sample axis {tuple(x.shape[1:])}"
    )
    Layout(samples, obs, sample_dim)  # validates obs against samples before reducing
    y = obs.expand(x.shape[1:]).sum(vd)  # [*E']
    return x.sum(1 + vd), y, vd  # [S, *E'], [*E']
