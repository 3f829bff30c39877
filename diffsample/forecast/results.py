"""The content of a result's ``<name>.json``: what was scored, how, where and with what.

:func:`results_dict` gathers the configs, the data spec, the scores (and the baselines' beside
them), the wall times, the machine (:func:`machine_info`) and the library versions
(:func:`library_versions`); :func:`per_step_columns` the per-step table of the model and its
baselines. Writing them is :mod:`diffsample.forecast.report`'s (``write_json``,
``write_per_step_csv``), where these names also import from.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._utils import check_int, expected
from .evaluation import Evaluation
from .model import ForecastConfig
from .training import TrainConfig

__all__ = ["library_versions", "machine_info", "per_step_columns", "results_dict"]

PathLike = str | os.PathLike[str]


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Where a result was computed: platform, CPU name, cores, torch threads, CUDA device name."""
    device = torch.device(device)
    return {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def _cpu_name() -> str:
    try:  # Linux: platform.processor() only says "x86_64"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def library_versions() -> dict[str, str]:
    """Versions of diffsample, torch, numpy and Python."""
    from .. import __version__

    return {
        "diffsample": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def results_dict(
    *,
    command: str,
    data: Mapping[str, Any],
    split: str,
    evaluation: Evaluation,
    config: ForecastConfig,
    device: str | torch.device,
    checkpoint: PathLike | None = None,
    train_config: TrainConfig | None = None,
    history: Sequence[Mapping[str, float]] = (),
    training_seconds: float | None = None,
    files: Mapping[str, PathLike | None] | None = None,
    processes: int = 1,
    baselines: Mapping[str, Evaluation] | None = None,
) -> dict[str, Any]:
    """The results file's content: what was scored, how, where, with what, and the scores.

    Args:
        command: ``"train"``, ``"evaluate"``, ``"demo"`` or a script's name.
        data: the data's spec (``ForecastDataset.spec()``: source, lookback, horizon, ...).
        split: the split scored (``"test"``, ``"val"``, ``"train"``).
        evaluation: what :func:`~diffsample.forecast.evaluate_split` returned.
        config: the model's configuration.
        device: where it ran.
        checkpoint: the model file.
        train_config: the trainer's settings, if trained in this run.
        history: the training epochs' records.
        training_seconds: wall time of training, if trained in this run.
        files: the other outputs (per-step table, fan chart, samples), name -> path or None.
        processes: how many processes (torchrun ranks) sampled the split.
        baselines: name -> the scores of a baseline on the same windows
            (:func:`~diffsample.forecast.evaluation.evaluate_baselines`), written under
            ``"baselines"``; None: not scored.

    Returns:
        A JSON-ready dict (NaN scores included;
        :func:`~diffsample.forecast.report.write_json` writes them as null).
    """
    _checked("evaluation", evaluation)
    return {
        "command": command,
        "data": dict(data),
        "split": split,
        "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
        "config": dataclasses.asdict(config),
        "train": None if train_config is None else dataclasses.asdict(train_config),
        "history": [dict(r) for r in history],
        "scores": evaluation.as_dict(),
        "baselines": None
        if baselines is None
        else {k: _checked(f"baselines[{k!r}]", v).as_dict() for k, v in baselines.items()},
        "seconds": {
            "training": None if training_seconds is None else round(training_seconds, 3),
            "sampling": round(evaluation.seconds, 3),
            "scoring": round(evaluation.scoring_seconds, 3),
        },
        "machine": machine_info(device),
        "processes": check_int("processes", processes),
        "versions": library_versions(),
        "files": {k: None if v is None else os.fspath(v) for k, v in (files or {}).items()},
    }


def _checked(name: str, evaluation: object) -> Evaluation:
    if not isinstance(evaluation, Evaluation):
        raise TypeError(expected(name, "an Evaluation (evaluate_split)", evaluation))
    return evaluation


def per_step_columns(
    evaluation: Evaluation, baselines: Mapping[str, Evaluation] | None = None
) -> dict[str, tuple[float, ...]]:
    """The per-step table of a result: ``evaluation.per_step``, then for each baseline its
    ``crps``, ``mse_mean`` and ``coverage_*`` columns as ``<name>_<column>`` (its point
    columns are the model's own)."""
    out = dict(_checked("evaluation", evaluation).per_step)
    for name, ev in (baselines or {}).items():
        for col, values in _checked(f"baselines[{name!r}]", ev).per_step.items():
            if col == "crps" or col == "mse_mean" or col.startswith("coverage_"):
                out[f"{name}_{col}"] = values
    return out
