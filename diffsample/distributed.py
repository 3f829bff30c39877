"""Past one process: torch.distributed when the run asks for it, and not a call otherwise.

A run is distributed when the caller passes a process group, or when it was started by
torchrun (``WORLD_SIZE`` > 1 in the environment) and the caller does not pass ``group=False``;
then, if no default group exists yet, one is started from torchrun's environment (gloo on the
CPU, nccl on CUDA). In any other process diffsample calls no ``torch.distributed`` function.
A distributed call is collective: every rank makes it, with the same arguments (checked).

    ranks = Ranks.resolve(group, device)     # Ranks(group=None, rank=0, world=1) when alone
    ranks.shard(n)                           # this rank's indices of 0..n-1: rank, rank + world, ...
    ranks.sum_(tensors)                      # in place, one all_reduce of a flat float64 buffer
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from ._utils import expected

__all__ = ["Ranks", "local_device", "torchrun_rank_world"]


def torchrun_rank_world() -> tuple[int, int]:
    """``(rank, world)`` from torchrun's environment (``RANK``, ``WORLD_SIZE``), without a
    torch.distributed call; ``(0, 1)`` outside torchrun."""
    env = {k: os.environ.get(k, d) for k, d in (("RANK", "0"), ("WORLD_SIZE", "1"))}
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    except ValueError:
        raise ValueError(
            expected("$RANK, $WORLD_SIZE", "integers (set by torchrun)", tuple(env.values()))
        ) from None
    return (rank, world) if world > 1 else (0, 1)


def _under_torchrun() -> bool:
    return torchrun_rank_world()[1] > 1


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, ``cuda`` without an index means this process's own GPU (``LOCAL_RANK``),
    not GPU 0 for every process; any other device is returned as it is."""
    if device.type == "cuda" and device.index is None and _under_torchrun():
        # modulo: one visible GPU per process (CUDA_VISIBLE_DEVICES) is GPU 0 for each
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    return device


@dataclasses.dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank among ``world`` processes of ``group``.

    ``group`` is None for a single process; every method is then a no-op that touches no
    ``torch.distributed`` function.
    """

    group: Any = None  # a torch.distributed ProcessGroup, or None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0: the one that logs, prints and writes files."""
        return self.rank == 0

    @classmethod
    def resolve(cls, group: Any = None, device: torch.device | None = None) -> Ranks:
        """The ranks of ``group``, else of torchrun's default group (started here if needed,
        with gloo, or nccl for a CUDA ``device``), else a single process; ``group=False``: a
        single process even under torchrun. A CUDA ``device`` becomes the current device, where
        nccl's collectives run."""
        if group is False or (group is None and not _under_torchrun()):
            return cls()
        if not dist.is_available():
            raise ValueError(
                "group: torch.distributed is not available in this build of torch, so a run "
                "cannot span several processes"
            )
        if group is None:
            if not dist.is_initialized():
                backend = "gloo"
                if device is not None and device.type == "cuda":
                    torch.cuda.set_device(local_device(device))
                    backend = "nccl"
                dist.init_process_group(backend=backend)
                atexit.register(_destroy)  # started here, so ended here (not in between)
            group = dist.group.WORLD
        elif not dist.is_initialized():
            raise ValueError(
                "group: expected a process group of an initialised torch.distributed "
                f"(torch.distributed.init_process_group first), got {group!r}"
            )
        if device is not None and device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return cls(group, dist.get_rank(group), dist.get_world_size(group))

    def shard(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """This rank's share of the indices ``0 .. n-1``: ``rank, rank + world, ...`` ``[~n/world]``
        (every index on exactly one rank, the counts differing by at most one)."""
        return torch.arange(self.rank, n, self.world, device=device)

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place, by one ``all_reduce`` (float64 on the
        group's device: the CPU for gloo, this process's GPU for nccl)."""
        if self.group is None or not tensors:
            return
        device = self._device()
        flat = torch.cat([t.detach().reshape(-1).to(device, torch.float64) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        lo = 0
        for t in tensors:
            t.copy_(flat[lo : lo + t.numel()].view(t.shape))
            lo += t.numel()

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks (e.g. a wall time: the slowest rank's)."""
        if self.group is None:
            return value
        v = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(v, op=dist.ReduceOp.MAX, group=self.group)
        return float(v)

    def gather(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (small picklable objects only: RNG states, not samples), in
        rank order; ``[obj]`` for a single process."""
        if self.group is None:
            return [obj]
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def check_same(self, what: str, value: object) -> None:
        """ValueError on every rank unless every rank passed an equal ``value`` (a call that
        some ranks make with other arguments would otherwise hang in its first collective)."""
        if self.group is None:
            return
        values = self.gather(value)
        if any(v != values[0] for v in values):
            differ = [r for r, v in enumerate(values) if v != values[0]]
            raise ValueError(
                f"{what}: every process must call it with the same arguments; ranks {differ} "
                "differ from rank 0 (to work on one rank alone, pass group=False there)"
            )

    def on_main(self, write: Callable[[], object], what: str) -> None:
        """Run ``write`` on rank 0 while the others wait; an error there is raised on every
        rank (rank 0 its own, the others an OSError naming it), so none is left waiting."""
        if self.group is None:
            write()
            return
        error: BaseException | None = None
        if self.main:
            try:
                write()
            except Exception as exc:  # raised below, after the others have heard of it
                error = exc
        failed = self.gather(None if error is None else f"{type(error).__name__}: {error}")[0]
        if error is not None:
            raise error
        if failed is not None:
            raise OSError(f"rank 0 failed {what}: {failed}")

    def _device(self) -> torch.device:
        """Where the group's collectives take tensors: this process's GPU for nccl, else the CPU."""
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _destroy() -> None:
    if dist.is_initialized():
        gc.collect()  # a group still referenced is torn down at finalisation: gloo can abort there
        dist.destroy_process_group()
