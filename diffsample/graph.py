"""CUDA-graph replay of one chunk's whole step loop (``sample_many(..., graph=True)``).

Dimensions: C rows per chunk (fixed: the last chunk is padded to C), E event shape, K steps.

Why a manual ``torch.cuda.CUDAGraph`` of the whole loop rather than
``torch.compile(mode="reduce-overhead")``: the capture holds everything a chunk launches, the
K denoiser calls *and* the sampler's update arithmetic and the keyed noise (generated inside the
captured region from a static key buffer), so a chunk is one replay; it works for any denoiser
callable whose kernels are capturable, with no tracing, no compile time (tens of seconds for the
token denoiser, a large part of the seconds the whole test set takes) and no inductor/triton on
the machine; and it leaves the eager kernels unchanged, so replay gives the eager numbers.

What the graph fixes at capture: the rows C, the sampler and its knobs, the grid (each step's
``t`` and the float64-derived coefficients are kernel arguments), the cond keys, shapes and
dtypes. What changes per replay, copied into static buffers first: the row keys ``[C]`` (so
x_T and every step's noise) and the gathered cond rows ``[C, ...]``. The output is copied out
of graph memory before the next replay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["ChunkGraph", "HostSyncError"]


class HostSyncError(RuntimeError):
    """The warm-up found a host-device synchronisation (``.item()``, ``.cpu()``, a pageable
    copy, ``nonzero``...) in the step loop: it cannot be captured."""


# run(keys [C], cond_rows {name: [C, ...]}) -> samples [C, *E]: the eager work of one chunk
ChunkFn = Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]


class ChunkGraph:
    """One chunk of sampling captured as a CUDA graph and replayed for every chunk.

    Construction warms the work up once on a side stream (lazy initialisation such as cuBLAS
    handles and allocator blocks must not happen during capture) and keeps that warm-up's
    result: it *is* the first chunk, computed by the same kernels. :meth:`capture` then records
    one more run on the same stream (``torch.cuda.graph(..., stream=)``: warm-up and capture
    share a stream, as ``make_graphed_callables`` does).

    Args:
        run: the eager work of one chunk, ``run(keys [C], cond_rows) -> [C, *E]``.
        keys: the first chunk's row keys ``[C]`` (int64, on the CUDA device).
        cond_rows: the first chunk's cond tensors, each ``[C, ...]`` (a stride-0 view, the
            B = 1 case, is kept as is: it is the same memory for every chunk).

    Attributes:
        first: the warm-up's result for ``keys`` and ``cond_rows`` ``[C, *E]`` (own memory).

    Raises:
        HostSyncError: the warm-up synchronised with the host (checked with
            ``torch.cuda.set_sync_debug_mode("error")``), so the loop cannot be captured.
        Exception: whatever else ``run`` raises in the warm-up (a real error of the denoiser,
            or OOM), unchanged.
    """

    def __init__(self, run: ChunkFn, keys: torch.Tensor, cond_rows: Mapping[str, Any]) -> None:
        self.run = run
        self.keys = keys.clone()  # [C] static input
        self.cond = {k: _static(v) for k, v in cond_rows.items()}  # static inputs [C, ...]
        self.stream = torch.cuda.Stream(device=keys.device)
        self.stream.wait_stream(torch.cuda.current_stream(keys.device))
        # warm-up with synchronising CUDA calls made errors: a sync would invalidate the
        # capture, and a failed capture can leave the allocator and the stream half torn
        # down; found here, it is a clean exception before any capture begins
        mode = torch.cuda.get_sync_debug_mode()
        try:
            torch.cuda.set_sync_debug_mode("error")
            with torch.cuda.stream(self.stream):
                # one warm-up run is K denoiser calls of the same shapes, enough for the lazy
                # initialisation (cuBLAS workspaces, kernel selection) the docs warm up for
                self.first = run(self.keys, self.cond).clone()  # warm-up = the first chunk
        except RuntimeError as exc:
            if "synchroniz" not in str(exc):
                raise
            raise HostSyncError(str(exc).splitlines()[0]) from exc
        finally:
            torch.cuda.set_sync_debug_mode(mode)
            torch.cuda.current_stream(keys.device).wait_stream(self.stream)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None  # the graph's output buffer, set by capture()

    def capture(self) -> None:
        """Record the chunk's work into a CUDA graph (torch's capture errors propagate: a
        host-device sync, a CPU tensor op, an uncapturable kernel in the denoiser)."""
        graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream(self.keys.device)
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.out = self.run(self.keys, self.cond)  # [C, *E] in the graph's memory pool
        except BaseException:
            # a failed capture_end skips the context's stream restore: put the stream back
            torch.cuda.set_stream(current)
            raise
        self.graph = graph

    def __call__(self, keys: torch.Tensor, cond_rows: Mapping[str, Any]) -> torch.Tensor:
        """Samples ``[C, *E]`` for another chunk: its keys ``[C]`` and cond rows ``[C, ...]``
        copied into the static buffers, one replay, the output cloned out of graph memory."""
        self.keys.copy_(keys)
        for k, buf in self.cond.items():
            new = cond_rows[k]
            if new.data_ptr() != buf.data_ptr() or new.stride() != buf.stride():
                buf.copy_(new)
        if self.graph is None or self.out is None:
            raise RuntimeError("ChunkGraph: call capture() before replaying")
        self.graph.replay()
        return self.out.clone()


def _static(v: torch.Tensor) -> torch.Tensor:
    """A static input buffer for cond rows ``v [C, ...]``: a stride-0 view (B = 1: the same
    memory every chunk) is kept, anything else gets its own copy."""
    if v.ndim and v.stride(0) == 0:
        return v
    return v.clone()
