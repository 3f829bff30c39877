"""The ``diffsample`` command: demo, train, evaluate.

    diffsample demo                                   # synthetic data, about half a minute on a CPU
    diffsample train --data ETTh1 --out runs/etth1    # ETT CSV from $DIFFSAMPLE_ETT_DIR, a path, or --download
    diffsample train --root_path ./dataset/ETT-small/ --data_path ETTh1.csv --data ETTh1 \\
        --seq_len 96 --pred_len 96 --enc_in 7 --out runs/etth1   # Time-Series-Library flag names
    diffsample train --resume --out runs/etth1 ...    # continue a killed run (the same flags)
    diffsample evaluate runs/etth1/model.pt --samples 100 --steps 10   # on the data it was trained on

Flags take Time-Series-Library's names (``--seq_len``, ``--d_model``, ``--learning_rate``, ...),
with ``-`` or ``_`` alike; every default shown is the library's (ForecastConfig, TrainConfig,
SamplingConfig, Scoring). The results go beside the checkpoint: a JSON file (configuration, data,
machine, versions, wall times, scores), a per-horizon-step CSV, the samples (with
--save-samples) and a fan chart PNG (with matplotlib), in that order. A bad argument (a
mistyped flag value too) or an output that cannot be written ends the command before any
training with one line on stderr and exit status 2, never a traceback. Output paths are
guarded (:mod:`diffsample.forecast.outputs`): no output replaces the checkpoint or the data
read, an unfinished run is not started over without --resume or --overwrite, and one run at
a time holds a folder.

Dimensions (in what it prints and writes): S samples, W windows scored, H horizon, N variates.
Only this module parses arguments (with the parser of :mod:`diffsample.forecast.flags`); it
turns them into the library's frozen configs and typed values, calls the pipeline of
:mod:`diffsample.forecast.run` and prints its lines. What it writes is built by
:mod:`diffsample.forecast.report`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._utils import check_int, expected
from ..distributed import local_device, torchrun_rank_world
from .data import ForecastDataset, Protocol, load_dataset
from .flags import COMMANDS, MODEL_FLAGS, SAMPLING_FLAGS, TRAIN_FLAGS, TSL_DATA
from .model import ForecastConfig
from .outputs import check_out_arg
from .parser import parser as _parser
from .parser import who
from .run import Scoring, score_checkpoint, train_and_score
from .sampling_config import SamplingConfig, check_num_steps
from .training import TrainConfig
from .training import train as train  # re-exported: tests/test_tslib.py patches cli.train
from .tslib import TSLibRun, given_flags, is_tslib

__all__ = ["main"]

# what a user can get wrong: bad values and types, missing or unreadable files, a full disk, no
# network, a diverged run (NonFiniteLossError), no such device
_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


# ---------------------------------------------------------------------------------------- commands
def _demo(a: argparse.Namespace) -> None:
    _train_and_score(a, "demo", source=None, protocol="auto")


def _train(a: argparse.Namespace) -> None:
    tsl = _tslib_run(a)
    source, protocol = _located(a)
    _train_and_score(a, "train", source=source, protocol=protocol, tsl=tsl)


def _tslib_run(a: argparse.Namespace) -> TSLibRun | None:
    """A TSLib script's command line (``--task_name`` given), checked, its notice printed and
    its defaults (--out, the device) filled in; None for diffsample's own command line."""
    flags = given_flags(a)
    if not hasattr(a, "tsl_task_name"):
        if flags:
            raise ValueError(
                f"{flags[0]}: a Time-Series-Library flag, expected with --task_name "
                "long_term_forecast (as a TSLib script passes it)"
            )
        return None
    tsl = TSLibRun.from_args(a)
    if torchrun_rank_world()[1] > 1:
        raise ValueError(
            "--task_name: TSLib's result files need every window in one process; run the "
            "script without torchrun"
        )
    if a.out is None:
        a.out = str(tsl.out)
    if tsl.device is not None and a.device == "auto":
        a.device = tsl.device
    notice = tsl.notice()
    if notice is not None:
        _say(notice)
    return tsl


def _train_and_score(
    a: argparse.Namespace,
    command: str,
    *,
    source: str | None,
    protocol: Protocol,
    tsl: TSLibRun | None = None,
) -> None:
    # every check before any work: a bad --samples or an unwritable --out fails now, not after
    # the hour of training it would follow; nothing is created for a run that cannot start
    device = _device(a.device)
    out = check_out_arg(a.out)
    scoring = _scoring(a, batch_size=Scoring.batch_size)
    check_num_steps(
        scoring.sampling.num_steps, a.num_train_steps, name="--steps", t_name="--diffusion_steps"
    )
    tc = TrainConfig(**{field: getattr(a, field) for field in TRAIN_FLAGS})
    data = load_dataset(
        source, lookback=a.lookback, horizon=a.horizon, protocol=protocol, download=a.download
    )
    _check_enc_in(a.enc_in, data)
    config = ForecastConfig(
        n_variates=data.n_variates,
        n_time_features=data.n_marks,
        **{field: _field_value(a, field) for field in MODEL_FLAGS},
    )
    train_and_score(
        data,
        config,
        tc,
        out,
        scoring=scoring,
        device=device,
        resume=a.resume,
        overwrite=a.overwrite,
        command=command,
        tslib=tsl,
        progress=a.progress,
        say=_say,
    )


def _evaluate(a: argparse.Namespace) -> None:
    device = _device(a.device)
    scoring = _scoring(a, batch_size=a.batch_size)
    results = _results_path(a.out, a.split)
    source, protocol = _located(a)
    try:
        score_checkpoint(
            a.checkpoint,
            split=a.split,
            source=source,
            protocol=protocol,
            download=a.download,
            results=results,
            scoring=scoring,
            device=device,
            allow_unfinished=a.allow_unfinished,
            progress=a.progress,
            say=_say,
        )
    except ValueError as exc:  # the library's advice, in the command's words
        text = (
            str(exc)
            .replace("pass allow_unfinished=True", "pass --allow-unfinished")
            .replace("train(..., checkpoint=path, resume=True)", "diffsample train --resume")
        )
        if text == str(exc):
            raise
        raise ValueError(text) from None


# ---------------------------------------------------------------------------------------- checks
def _device(name: str) -> torch.device:
    """The --device, checked; under torchrun, ``cuda`` is each process's own GPU."""
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(expected("--device", "auto, cpu, cuda, cuda:1, ...", name)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device: expected a device this machine has, got {name!r} (this torch "
                f"{torch.__version__} sees no CUDA device)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device: expected a device this machine has, got {name!r} "
                f"({torch.cuda.device_count()} CUDA devices)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device: expected a device this machine has, got {name!r} (no MPS)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(expected("--device", "auto, cpu, cuda, cuda:1, mps", name))
    return local_device(device)


def _scoring(a: argparse.Namespace, *, batch_size: int) -> Scoring:
    """The sampling flags as a checked :class:`~diffsample.forecast.scoring.Scoring`: a
    :class:`~diffsample.forecast.SamplingConfig` of the flags named after its fields
    (``--seed`` keys the noise), and the scoring's own."""
    sampling = SamplingConfig(seed=a.seed, **{field: getattr(a, field) for field in SAMPLING_FLAGS})
    return Scoring(
        sampling=sampling,
        windows=a.windows,
        batch_size=batch_size,
        baselines=a.baselines,
        save_samples=a.save_samples,
    )


def _check_enc_in(enc_in: int | None, data: ForecastDataset) -> None:
    if enc_in is not None and enc_in != data.n_variates:
        raise ValueError(
            f"--enc_in: expected the data's {data.n_variates} variates "
            f"({', '.join(data.columns)} in {Path(data.source).name}), got {enc_in}"
        )


def _located(a: argparse.Namespace) -> tuple[str | None, Protocol]:
    """:func:`_source`, with a --root_path / --data_path CSV that is not there named by those
    flags (the loader would name its own argument)."""
    source, protocol = _source(a)
    if a.data_path is not None and source is not None and not Path(source).is_file():
        raise ValueError(
            f"--data_path: expected a CSV file in --root_path {a.root_path or '.'!r}, got "
            f"{a.data_path!r} ({source} is not a file)"
        )
    return source, protocol


def _source(a: argparse.Namespace) -> tuple[str | None, Protocol]:
    """(source for load_dataset, protocol) from --data, or from --root_path / --data_path with
    --data naming the split protocol as in Time-Series-Library."""
    if a.data_path is None:
        if a.root_path is not None:
            raise ValueError(
                "--root_path: expected --data_path with it (the CSV's name in that folder)"
            )
        return a.data, "auto"
    path = str(Path(a.root_path or ".") / a.data_path)
    if a.data is None:
        return path, "auto"
    if a.data not in TSL_DATA:
        raise ValueError(
            expected(
                "--data",
                f"with --data_path, a Time-Series-Library dataset name ({', '.join(TSL_DATA)})",
                a.data,
            )
        )
    return path, TSL_DATA[a.data]


def _field_value(a: argparse.Namespace, field: str) -> Any:
    v = getattr(a, field)
    return tuple(v) if isinstance(v, list) else v  # nargs="+" gives a list


def _results_path(out: str | None, split: str) -> Path | None:
    """The results file of --out: a folder (or a name ending in a slash) gets
    eval_<split>.json inside; None: the default, beside the checkpoint."""
    if out is None:
        return None
    p = check_out_arg(out)
    return p / f"eval_{split}.json" if p.is_dir() or out.endswith(("/", "\\")) else p


def _check_threads(threads: object) -> int:
    """--threads within the machine's CPUs: a million threads kill the interpreter inside the
    OpenMP runtime, past any error handling."""
    cpus = os.cpu_count() or 1
    n = check_int("--threads", threads)
    if n > cpus:
        raise ValueError(expected("--threads", f"at most the {cpus} CPUs of this machine", threads))
    return n


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------------------- printing
def _say(line: str) -> None:
    if torchrun_rank_world()[0] == 0:  # under torchrun, one voice: rank 0's
        print(line, flush=True)  # flushed: a log file shows each stage as it happens


# ---------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tslib = is_tslib(argv)
    if tslib and (not argv or argv[0] not in COMMANDS):  # "python -u run.py" -> "diffsample"
        argv = ["train", *argv]
    elif argv and argv[0].startswith("--") and argv[0] not in ("--help", "--version"):
        flag = argv[0].split("=")[0]
        print(
            f"{who()}: error: {flag}: expected a command first ({', '.join(COMMANDS)}), or "
            "--task_name for a Time-Series-Library script's command line (diffsample --help "
            "lists them)",
            file=sys.stderr,
        )
        return 2
    try:
        args = _parser(tslib=tslib).parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2: one line, _Parser.error)
        return exc.code if isinstance(exc.code, int) else 2
    threads = torch.get_num_threads()
    try:
        if args.threads is not None:  # for this command only (main may run in-process)
            torch.set_num_threads(_check_threads(args.threads))
        _run_command(args)
    except KeyboardInterrupt:
        hint = (
            " (continue it with the same command and --resume)"
            if args.command != "evaluate"
            else ""
        )
        print(f"{who()}: interrupted{hint}", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        print(f"{who()}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, and a different status
        print(
            f"{who()}: error: unexpected {type(exc).__name__}: {_one_line(exc)} (a bug in "
            "diffsample; please report it with the command line)",
            file=sys.stderr,
        )
        return 1
    finally:
        torch.set_num_threads(threads)
    return 0


def _run_command(a: argparse.Namespace) -> None:
    {"demo": _demo, "train": _train, "evaluate": _evaluate}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
