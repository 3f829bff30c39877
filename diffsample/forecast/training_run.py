"""What one call of ``train`` works with: the run's state and record, its two stages, the batch
order, the watch on non-finite losses, early stopping, and the run's random streams (seeded as
:mod:`diffsample.forecast.training` says, rank r adding ``1000 * r``; saved with every epoch
and restored on resume). :mod:`diffsample.forecast.training` runs the loop.

Dimensions: B windows per batch, n training windows, W validation windows.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from .._utils import expected
from ..distributed import Ranks
from .data import ForecastDataset, ForecastSplit, WindowBatch
from .model import ITransformerDiffusion
from .train_config import TrainConfig, dtype_name, grad_scaler

__all__ = [
    "EarlyStopping",
    "Fitting",
    "LossWatch",
    "PassResult",
    "Run",
    "Stage",
    "batches",
    "capped",
    "check_compatible",
    "eager_checks",
    "epoch_order",
    "forked_devices",
    "rank_seed",
    "restore",
    "seed_global_rng",
    "stages",
    "val_windows",
]

_log = logging.getLogger("diffsample.forecast.training")  # the trainer's own log


# ---------------------------------------------------------------------- the run and its stages
@dataclasses.dataclass(frozen=True)
class Stage:
    """What differs between the two stages; ``training._fit`` runs either."""

    number: int
    prefix: str  # the trained module's name in the model's state_dict
    make_optimizer: Callable[[], torch.optim.Optimizer]
    loss_fn: Callable[[WindowBatch], torch.Tensor]
    val_fn: Callable[[], Callable[[WindowBatch], torch.Tensor]]  # called once per validation
    epochs: int
    lr_decay: float
    names: tuple[str, str]  # the history's keys for the train and validation loss


@dataclasses.dataclass
class Run:
    """Everything one call of ``train`` shares between its stages (mutable: the history grows)."""

    model: ITransformerDiffusion
    config: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    train_split: ForecastSplit
    val_split: ForecastSplit
    g: torch.Generator  # batch order (CPU)
    g_dev: torch.Generator  # diffusion t and noise (on the device)
    checkpoint: Path | None
    progress: bool | None
    on_epoch: Callable[[dict[str, float]], None] | None
    history: list[dict[str, float]]
    best_point: float
    seconds_before: float  # of the sessions before a resume
    t0: float
    ranks: Ranks = dataclasses.field(default_factory=Ranks)  # one process, unless distributed

    @classmethod
    def start(
        cls,
        model: ITransformerDiffusion,
        data: ForecastDataset,
        config: TrainConfig,
        *,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        ranks: Ranks,
        checkpoint: Path | None,
        progress: bool | None,
        on_epoch: Callable[[dict[str, float]], None] | None,
    ) -> Run:
        """A fresh run: the splits on ``device``, the batch-order and diffusion generators
        seeded, no history; only rank 0 shows progress and reports epochs."""
        return cls(
            model=model,
            config=config,
            device=device,
            amp_dtype=amp_dtype,
            train_split=data.train.to(device),
            val_split=data.val.to(device),
            g=torch.Generator().manual_seed(config.seed),
            g_dev=torch.Generator(device=device).manual_seed(rank_seed(config, 1, ranks)),
            checkpoint=checkpoint,
            progress=progress if ranks.main else False,
            on_epoch=on_epoch if ranks.main else None,
            history=[],
            best_point=math.inf,
            seconds_before=0.0,
            t0=time.perf_counter(),
            ranks=ranks,
        )

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def run_record(self, **extra: Any) -> dict[str, Any]:
        """The checkpoint's ``run`` entry: what TrainResult reports, and the train config."""
        return {
            "train_config": dataclasses.asdict(self.config),
            "history": [dict(r) for r in self.history],
            "best_val_point": self.best_point,
            "amp_dtype": dtype_name(self.amp_dtype),
            "device_type": self.device.type,
            "world_size": self.ranks.world,
            "val_windows": val_windows(len(self.val_split), self.config).numel(),
            "seconds": self.seconds(),
            **extra,
        }


def stages(run: Run) -> tuple[Stage, Stage]:
    """Stage 1, the point forecast (Adam on the backbone), and stage 2, the residual diffusion
    (AdamW on the denoiser, validated on the same t and noise every pass)."""
    model, config = run.model, run.config

    def point(b: WindowBatch) -> torch.Tensor:
        return model.point_loss(b.x, b.y, b.x_mark)

    stage1 = Stage(
        1,
        "backbone",
        lambda: torch.optim.Adam(
            model.backbone.parameters(), lr=config.point_lr, weight_decay=config.weight_decay
        ),
        point,
        lambda: point,
        config.point_epochs,
        config.point_lr_decay,
        ("train_point_mse", "val_point_mse"),
    )

    def diffusion_val() -> Callable[[WindowBatch], torch.Tensor]:  # the same t, noise each pass
        seed = rank_seed(config, 2, run.ranks)
        g_val = torch.Generator(device=run.device).manual_seed(seed)
        return lambda b: model.diffusion_loss(
            b.x, b.y, b.x_mark, generator=g_val, draws=config.diffusion_draws
        )

    stage2 = Stage(
        2,
        "denoiser",
        lambda: torch.optim.AdamW(
            model.denoiser.parameters(), lr=config.diffusion_lr, weight_decay=config.weight_decay
        ),
        lambda b: model.diffusion_loss(
            b.x, b.y, b.x_mark, generator=run.g_dev, draws=config.diffusion_draws
        ),
        diffusion_val,
        config.diffusion_epochs,
        config.diffusion_lr_decay,
        ("train_diffusion_loss", "val_diffusion_loss"),
    )
    return stage1, stage2


@dataclasses.dataclass
class EarlyStopping:
    """A stage's early-stopping state: the best validation loss and its weights, the epochs
    since it improved, and whether the stage has stopped."""

    best: float
    best_state: dict[str, torch.Tensor]
    stale: int = 0
    stopped: bool = False

    def update(self, val: float, module: nn.Module, patience: int) -> None:
        """After an epoch with validation loss ``val``: keep ``module``'s weights if they are
        the best so far, else count the epoch and stop after ``patience`` of them."""
        if val < self.best:
            self.best, self.best_state, self.stale = val, copy.deepcopy(module.state_dict()), 0
        else:
            self.stale += 1
            self.stopped = self.stale >= patience


@dataclasses.dataclass
class Fitting:
    """One stage in training: its module, its loss (wrapped for DistributedDataParallel when
    distributed), optimizer, GradScaler and early stopping, and the epochs already done."""

    stage: Stage
    module: nn.Module
    loss_fn: Callable[[WindowBatch], torch.Tensor]
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    stopping: EarlyStopping
    first: int = 0  # epochs of this stage already done

    @classmethod
    def start(cls, run: Run, stage: Stage, saved: Mapping[str, Any] | None) -> Fitting:
        """The stage from scratch, or from ``saved`` (a checkpoint written in this stage):
        the module's current weights, the optimizer's and GradScaler's state, early stopping."""
        module: nn.Module = getattr(run.model, stage.prefix)
        loss_fn = _distributed_loss(run, module, stage.loss_fn)
        opt = stage.make_optimizer()
        scaler = grad_scaler(run.device, enabled=run.amp_dtype == torch.float16)
        best_state = copy.deepcopy(module.state_dict())  # a resumed model holds the best now
        if saved is None:
            return cls(stage, module, loss_fn, opt, scaler, EarlyStopping(math.inf, best_state))
        state = saved["resume"]
        stopping = EarlyStopping(
            float(state["best"]), best_state, int(state["stale"]), bool(state["stopped"])
        )
        module.load_state_dict(state["current"])
        opt.load_state_dict(state["optimizer"])
        if state["scaler"] and scaler.is_enabled():  # a disabled scaler saves {}
            scaler.load_state_dict(state["scaler"])
        return cls(stage, module, loss_fn, opt, scaler, stopping, int(saved["epoch"]))

    def end_epoch(self, val: float, patience: int) -> None:
        """Early stopping on the epoch's validation loss, then the learning rate's decay
        (unless the stage stopped)."""
        self.stopping.update(val, self.module, patience)
        if not self.stopping.stopped:
            for group in self.opt.param_groups:
                group["lr"] *= self.stage.lr_decay

    def resume_entry(self, run: Run) -> dict[str, Any]:
        """A checkpoint's ``resume``: what continuing this stage needs. Distributed, every
        rank's RNG states (each draws its own diffusion noise and dropout), gathered: call it
        on every rank."""
        states = _rng_states(run)
        return {
            "stopped": self.stopping.stopped,
            "best": self.stopping.best,
            "stale": self.stopping.stale,
            "current": self.module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": states if run.ranks.group is None else run.ranks.gather(states),
        }

    def best_weights(self, model: nn.Module) -> dict[str, Any]:
        """``model``'s state dict with this stage's best weights: the model as it would stand
        if training stopped now."""
        best = {f"{self.stage.prefix}.{k}": v for k, v in self.stopping.best_state.items()}
        return {**model.state_dict(), **best}


# ---------------------------------------------------------------------- checks and DDP
def eager_checks(run: Run) -> bool:
    """Check each loss as it comes (one CPU process, where it costs no sync), else once per pass."""
    return run.device.type == "cpu" and run.ranks.group is None


class _StageLoss(nn.Module):
    """A stage's loss as a module whose only parameters are the trained module's, so that
    DistributedDataParallel averages exactly their gradients (the frozen backbone of stage 2
    and the idle denoiser of stage 1 stay out of it)."""

    def __init__(self, module: nn.Module, loss_fn: Callable[[WindowBatch], torch.Tensor]):
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn  # a closure over the model, not a registered submodule

    def forward(self, batch: WindowBatch) -> torch.Tensor:
        return self.loss_fn(batch)


def _distributed_loss(
    run: Run, module: nn.Module, loss_fn: Callable[[WindowBatch], torch.Tensor]
) -> Callable[[WindowBatch], torch.Tensor]:
    """``loss_fn`` as it trains ``module``: itself for one process; distributed, wrapped in
    DistributedDataParallel (which starts every rank from rank 0's weights)."""
    if run.ranks.group is None:
        return loss_fn
    return DistributedDataParallel(
        _StageLoss(module, loss_fn),
        device_ids=[run.device.index] if run.device.type == "cuda" else None,
        process_group=run.ranks.group,
    )


def check_compatible(model: ITransformerDiffusion, data: ForecastDataset) -> None:
    """The model's config fits the data's windows (lookback, horizon, variates, F)."""
    if not isinstance(model, ITransformerDiffusion):
        raise TypeError(expected("model", "an ITransformerDiffusion", model))
    if not isinstance(data, ForecastDataset):
        raise TypeError(expected("data", "a ForecastDataset (load_dataset)", data))
    c = model.config
    want = {
        "lookback": data.lookback,
        "horizon": data.horizon,
        "n_variates": data.n_variates,
        "n_time_features": data.n_marks,
    }
    have = {k: getattr(c, k) for k in want}
    if c.n_time_features == 0:
        want["n_time_features"] = 0  # a model may ignore the time features
    if have != want:
        raise ValueError(f"model, data: the model's config {have} does not match the data {want}")


# ---------------------------------------------------------------------- passes over batches
class PassResult(NamedTuple):
    """A pass over batches: the mean loss, and the first non-finite one (batch from 1), if any."""

    mean: float
    bad_batch: int | None
    bad_loss: float


class LossWatch:
    """The first non-finite loss of a pass, tracked on the loss's device: a CUDA run learns
    of it at the pass's one host sync instead of paying a sync per batch."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device, dtype=torch.float64)
        self.bad = torch.full((), -1, device=device, dtype=torch.int64)  # batch index, -1 none
        self.bad_loss = torch.zeros((), device=device, dtype=torch.float64)

    def add(self, loss: torch.Tensor, i: int, weight: int = 1) -> None:
        loss = loss.detach().double()
        new = ~torch.isfinite(loss) & (self.bad < 0)
        self.bad = torch.where(new, i, self.bad)
        self.bad_loss = torch.where(new, loss, self.bad_loss)
        self.total += loss * weight

    def result(self, count: int, ranks: Ranks) -> PassResult:
        """The pass's mean; distributed, over every rank's batches (a non-finite loss on any
        rank makes it non-finite on all, the batch unknown)."""
        if ranks.group is not None:
            sums = torch.stack([self.total, self.total.new_tensor(float(count))])
            ranks.sum_([sums])
            total, n = sums.tolist()
            return PassResult(total / max(n, 1.0), None, total)
        total, bad, bad_loss = torch.stack(
            [self.total, self.bad.double(), self.bad_loss]
        ).tolist()  # the one sync
        return PassResult(total / max(count, 1), int(bad) + 1 if bad >= 0 else None, bad_loss)


def val_windows(n: int, config: TrainConfig) -> torch.Tensor:
    """The validation windows a pass scores ``[W]``: all ``n``, or with ``max_val_batches``
    that many batches' worth spread evenly over the split (the same ones every epoch)."""
    if config.max_val_batches is None or config.max_val_batches * config.batch_size >= n:
        return torch.arange(n)
    w = config.max_val_batches * config.batch_size
    return torch.linspace(0, n - 1, w, dtype=torch.float64).round().long()  # [W], distinct


def epoch_order(run: Run, stage: int, epoch: int) -> torch.Tensor:
    """The training windows of an epoch, in the order this rank visits them ``[n]``: one
    process shuffles all of them with the run's generator; distributed, DistributedSampler
    shuffles them alike on every rank (seeded by the run's seed, the stage and the epoch, so a
    resumed run repeats it) and hands each rank its share (padded to equal counts)."""
    n = len(run.train_split)
    if run.ranks.group is None:
        return torch.randperm(n, generator=run.g)
    windows = cast("Dataset[int]", range(n))  # the sampler only takes len() of it
    sampler: DistributedSampler[int] = DistributedSampler(
        windows,
        num_replicas=run.ranks.world,
        rank=run.ranks.rank,
        shuffle=True,
        seed=run.config.seed + 1000 * stage,
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def batches(split: ForecastSplit, order: torch.Tensor, batch_size: int) -> Iterator[WindowBatch]:
    """Batches of the windows ``order [n]`` (valid indices by construction: no check, no sync)."""
    order = order.to(split.values.device)
    for lo in range(0, order.numel(), batch_size):
        yield split._gather(order[lo : lo + batch_size])


def capped(it: Iterator[WindowBatch], cap: int | None) -> Iterator[WindowBatch]:
    """The first ``cap`` batches of ``it`` (all of them for None)."""
    for i, batch in enumerate(it):
        if cap is not None and i >= cap:
            return
        yield batch


# ---------------------------------------------------------------------- random streams
def rank_seed(config: TrainConfig, offset: int, ranks: Ranks) -> int:
    """The seed of one of a run's random streams on a rank (rank 0's is a single process's)."""
    return config.seed + offset + 1000 * ranks.rank


def seed_global_rng(device: torch.device, seed: int) -> None:
    """Seed the global CPU RNG and, on CUDA, the device's own (not every GPU's)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def forked_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG ``torch.random.fork_rng`` saves and restores around a run:
    the training device's alone (none on the CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _rng_states(run: Run) -> dict[str, torch.Tensor | None]:
    """Every RNG a run draws from, as CPU byte tensors."""
    cuda = run.device.type == "cuda"
    return {
        "batch_order": run.g.get_state(),
        "diffusion": run.g_dev.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(run.device) if cuda else None,
    }


def restore(run: Run, saved: Mapping[str, Any]) -> int:
    """Load a checkpoint's weights, RNG states and history into ``run``; returns its stage."""
    run.model.load_state_dict(saved["state_dict"])
    rng = saved["resume"]["rng"]
    if isinstance(rng, list):  # a distributed run's: one per rank
        rng = rng[run.ranks.rank]
    run.g.set_state(rng["batch_order"])
    run.g_dev.set_state(rng["diffusion"])
    torch.set_rng_state(rng["torch"])
    if run.device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], run.device)
    record = saved["run"]
    run.history = [dict(r) for r in record["history"]]
    run.best_point = float(record["best_val_point"])
    run.seconds_before = float(record["seconds"])
    if run.ranks.main:
        _log.info("resuming after stage %s epoch %s", saved["stage"], saved["epoch"])
    return int(saved["stage"])
