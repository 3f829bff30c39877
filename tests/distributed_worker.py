"""One process of a torchrun job that tests/test_distributed.py launches (gloo, on the CPU).

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT MODE [ARGS]

MODE evaluate CHECKPOINT: score the tiny data's test split through evaluate_split (the process
group is started by diffsample from torchrun's environment); each rank writes its scores and the
windows it sampled to OUT/rank<r>.json.
MODE train CHECKPOINT [STOP_AFTER]: train a tiny model with a checkpoint; each rank writes its
result, a digest of its weights and the checkpoint writes it made (seen where a write ends, in
torch.save, so nothing depends on how training.py binds write_checkpoint); with STOP_AFTER,
every rank raises KeyboardInterrupt in its epoch number STOP_AFTER + 1, after the epoch's passes
and before its checkpoint (an interrupted run: that epoch's work is lost), from
training_run.Fitting.end_epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from tiny import QUICK, TINY  # beside this script, which Python puts first on the path

from diffsample.distributed import Ranks
from diffsample.forecast import (
    ITransformerDiffusion,
    evaluate_split,
    load_dataset,
    training,
    training_run,
)
from diffsample.forecast.checkpoint import FORMAT
from diffsample.forecast.training import fit_spread_scale

MODEL = dataclasses.replace(TINY, n_variates=7)  # the synthetic data's variates
SPREAD = dict(n_samples=4, num_steps=2, max_windows=9, batch_size=4)
EVAL = dict(n_samples=6, num_steps=3, max_windows=11, batch_size=4, seed=3, progress=False)


def data():
    return load_dataset(None, lookback=TINY.lookback, horizon=TINY.horizon)


def evaluate(out: Path, checkpoint: Path) -> dict:
    model = ITransformerDiffusion.load(checkpoint)
    seen: list[int] = []
    ev = evaluate_split(
        model, data().test, on_batch=lambda b, fc: seen.extend(b.index.tolist()), **EVAL
    )
    record = {"metrics": ev.metrics, "per_step": ev.per_step, "windows": ev.windows, "seen": seen}
    record["spread_scale"] = fit_spread_scale(model, data().val, **SPREAD).tolist()
    ranks = Ranks.resolve()
    # ranks calling with other arguments: an error on every rank, not a hang
    try:
        evaluate_split(model, data().test, **{**EVAL, "max_windows": 5 + ranks.rank})
    except ValueError as exc:
        record["mismatch"] = str(exc)
    # one rank alone, opting out of the group: no collective, so no hang
    if ranks.main:
        record["alone"] = evaluate_split(model, data().test, group=False, **EVAL).metrics
    # a write that fails on rank 0 fails on every rank
    try:
        ranks.on_main(lambda: open(out / "missing" / "file", "w"), "writing a file")
    except OSError as exc:
        record["write_error"] = f"{type(exc).__name__}: {exc}"
    return record


def train(out: Path, checkpoint: Path, stop_after: int | None) -> dict:
    writes: list[str] = []
    save = torch.save

    def counted(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            writes.append("finished" if obj["finished"] else f"epoch {obj['epoch']}")
        return save(obj, f, *args, **kwargs)

    torch.save = counted
    if stop_after is not None:
        end_epoch, calls = training_run.Fitting.end_epoch, [0]

        def interrupted(*args, **kwargs):
            if calls[0] == stop_after:
                raise KeyboardInterrupt
            calls[0] += 1
            return end_epoch(*args, **kwargs)

        training_run.Fitting.end_epoch = interrupted
    torch.manual_seed(0)
    model = ITransformerDiffusion(MODEL)
    resume = checkpoint.exists()
    record: dict = {"writes": writes, "resumed": resume}
    try:
        result = training.train(model, data(), QUICK, checkpoint=checkpoint, resume=resume)
    except KeyboardInterrupt:
        return {**record, "interrupted": True}
    digest = float(sum(p.double().sum() * (i + 1) for i, p in enumerate(model.parameters())))
    return {**record, "history": list(result.history), "digest": digest, "interrupted": False}


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    rank = int(os.environ["RANK"])
    if mode == "evaluate":
        record = evaluate(out, Path(sys.argv[3]))
    else:
        stop = int(sys.argv[4]) if len(sys.argv) > 4 else None
        record = train(out, Path(sys.argv[3]), stop)
    dist = torch.distributed
    record["world"] = dist.get_world_size() if dist.is_initialized() else 1
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    if dist.is_initialized():  # a clean end: no group left for the interpreter's finalisation
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
