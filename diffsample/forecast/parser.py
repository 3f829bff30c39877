"""The ``diffsample`` command's parser, built from the tables of :mod:`diffsample.forecast.flags`.

Each config field's flag takes its type, choices and default from the dataclass
(:class:`~diffsample.forecast.model.ForecastConfig`,
:class:`~diffsample.forecast.training.TrainConfig`,
:class:`~diffsample.forecast.sampling_config.SamplingConfig`),
so every default shown is the library's; each flag has its ``-`` and ``_`` spellings; a bad
flag is one line on stderr and exit status 2, not argparse's usage block. With
:mod:`diffsample.forecast.cli` (and TSLib's flags in :mod:`diffsample.forecast.tslib`), the only
modules that know argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Callable
from typing import Any, NoReturn

from .. import __version__
from .._utils import choices_of
from ..distributed import torchrun_rank_world
from ..samplers import SAMPLERS
from .flags import COMMANDS, DEMO, DESCRIPTION, MODEL_FLAGS, SAMPLING_FLAGS, TRAIN_FLAGS, TSL_DATA
from .model import ForecastConfig
from .sampling_config import SamplingConfig, Scoring
from .scoring import SPLITS
from .training import TrainConfig
from .tslib import TSLIB_DEFAULTS, add_flags

__all__ = ["parser", "spellings", "who"]


# ---------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors as one line, as every other error of the command:
    ``diffsample: error: argument --train_epochs/--epochs: invalid int value: 'x' (...)``,
    exit status 2, not the usage block."""

    def error(self, message: str) -> NoReturn:
        message = _FLAG_LIST.sub(lambda m: _short_flags(m[1]), message)
        self.exit(2, f"{who()}: error: {message} ({self.prog} --help lists the flags)\n")


# argparse names a flag by all its spellings: "argument --batch_size/--batch-size: ..."
_FLAG_LIST = re.compile(r"(?<=argument )(--?[\w-]+(?:/--?[\w-]+)+)")


def _short_flags(text: str) -> str:
    """``--train_epochs/--train-epochs/--epochs`` -> ``--train_epochs/--epochs``: one spelling
    each (``-`` and ``_`` alike), so the line stays short."""
    seen: dict[str, str] = {}
    for flag in text.split("/"):
        seen.setdefault(flag.replace("-", "_"), flag)
    return "/".join(seen.values())


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written; each flag's spellings once with one metavar; its default after
    its help (a flag whose default is None says in its help what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings:  # a positional or a command: given, never defaulted
            return text
        if action.nargs == 0 or "default:" in text:  # on/off switches; a default in words
            return text
        if action.default is None:
            return f"{text} (default: none)"
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


def spellings(flag: str, *aliases: str) -> list[str]:
    """``flag`` and its aliases, each with ``_`` and ``-`` alike (``--batch_size``, ``--batch-size``)."""
    out: list[str] = []
    for f in (flag, *aliases):
        body = f[2:]
        for s in (f, "--" + body.replace("-", "_"), "--" + body.replace("_", "-")):
            if s not in out:
                out.append(s)
    return out


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def _add_field(
    q: argparse._ActionsContainer,
    cls: type,
    field: str,
    spec: tuple[str, tuple[str, ...], str],
    *,
    choices: tuple[str, ...] | None = None,
) -> None:
    """A flag for a config field: its type, choices and default read from the dataclass
    (``choices``: a registry's names, for a field that also takes an object)."""
    flag, aliases, help_text = spec
    hint = typing.get_type_hints(cls)[field]
    default = next(f.default for f in dataclasses.fields(cls) if f.name == field)
    kw: dict[str, Any] = {"dest": field, "default": default, "help": help_text}
    kw.update(_kind(hint, flag[2:].upper()) if choices is None else {"choices": choices})
    q.add_argument(*spellings(flag, *aliases), **kw)


def _kind(hint: Any, metavar: str) -> dict[str, Any]:
    """How argparse reads a value of type ``hint``: a switch, choices, a list, or a type
    (``X | None`` also takes "none")."""
    args = [t for t in typing.get_args(hint) if t is not type(None)]
    if hint is bool:  # --flag / --no-flag
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is typing.Literal:
        return {"choices": choices_of(hint)}
    if typing.get_origin(hint) is tuple:  # tuple[int, ...]
        return {"type": args[0], "nargs": "+", "metavar": "C"}
    if type(None) not in typing.get_args(hint):
        return {"type": hint, "metavar": metavar}
    if len(args) == 1 and typing.get_origin(args[0]) is typing.Literal:  # Literal[...] | None
        names = choices_of(args[0])
        return {"type": _optional(_one_of(names)), "metavar": "{" + ",".join(names) + "}|none"}
    return {"type": _optional(_number(args)), "metavar": f"{metavar}|none"}


def _one_of(names: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(names)}, none)"
            )
        return text

    return parse


def _number(types: list[Any]) -> Callable[[str], Any]:
    """The reader of a number field: int, float, or int-else-float for ``int | float`` (an
    integer means bytes, a fraction a share, as for ``memory_budget``); other members of the
    union (a DynamicThreshold) are the API's only."""
    if int in types and float in types:

        def number(text: str) -> int | float:
            try:
                return int(text)
            except ValueError:
                return float(text)

        return number
    return int if int in types else float


def who() -> str:
    """The command's name in its error lines; under torchrun with the rank of the process."""
    rank = torchrun_rank_world()[0]
    return "diffsample" if rank == 0 else f"diffsample (rank {rank})"


# Scoring's and SamplingConfig's defaults (the flags show them)
_SCORING = {f.name: f.default for f in dataclasses.fields(Scoring)}
_SAMPLING = {f.name: f.default for f in dataclasses.fields(SamplingConfig)}


def parser(*, tslib: bool = False) -> argparse.ArgumentParser:
    """The command's parser; ``tslib``: a TSLib script's command line, whose flags default to
    TSLib's values where the two differ (--d_model 512, --d_ff 2048, the CSV's place)."""
    p = _Parser(
        prog="diffsample",
        description=DESCRIPTION,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"diffsample {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    _demo_command(sub)
    _train_command(sub, tslib=tslib)
    _evaluate_command(sub)
    return p


# what add_subparsers() returns (argparse's own, private name)
_Commands = argparse._SubParsersAction


def _command(sub: _Commands, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )


def _demo_command(sub: _Commands) -> None:
    d = _command(sub, "demo", "train a small model on the built-in synthetic data and score it")
    _model_and_training(d)
    _sampling(d)
    _run(d, out_help="folder for model.pt and the results", out_default="runs/demo")
    d.set_defaults(data=None, download=False, enc_in=None, **DEMO)


def _train_command(sub: _Commands, *, tslib: bool) -> None:
    t = _command(
        sub,
        "train",
        "train on a CSV (ETT protocol or 70/10/20) or the synthetic data, then score the test split",
    )
    g = _data_flags(
        t, "ETTh1 | ETTh2 | ETTm1 | ETTm2 | a CSV path | synthetic (default: the synthetic data)"
    )
    g.add_argument(
        *spellings("--enc_in"),
        type=int,
        default=None,
        help="N, the data's variates (Time-Series-Library); if given, checked against the data",
    )
    _model_and_training(t)
    _sampling(t)
    _run(
        t,
        out_help="folder for model.pt and the results (with --task_name: "
        "<checkpoints>/<setting>/, as Time-Series-Library names it)",
        out_required=not tslib,
    )
    add_flags(t, spellings)
    t.set_defaults(**(TSLIB_DEFAULTS if tslib else {}))


def _evaluate_command(sub: _Commands) -> None:
    e = _command(sub, "evaluate", "score a saved model on a split of the data it was trained on")
    e.add_argument("checkpoint", help="a model.pt written by diffsample train")
    _data_flags(e, "the data to score on (default: the checkpoint's own; other data are refused)")
    g = _sampling(e)
    _run(
        e,
        out_help="the results file; a folder puts eval_<split>.json there (default: "
        "eval_<split>.json beside the checkpoint)",
    )
    g.add_argument("--split", choices=SPLITS, default="test", help="the split to score")
    g.add_argument(
        *spellings("--batch_size"),
        type=int,
        default=_SCORING["batch_size"],
        help="windows per forecast call",
    )
    g.add_argument(
        *spellings("--allow_unfinished"),
        action="store_true",
        help="also score the checkpoint of a run that has not finished (its best weights so far)",
    )
    g.add_argument("--seed", type=int, default=_SAMPLING["seed"], help="keys the sampling noise")


def _data_flags(q: argparse.ArgumentParser, data_help: str) -> argparse._ArgumentGroup:
    g = q.add_argument_group("data")
    g.add_argument("--data", default=None, help=data_help)
    g.add_argument(
        *spellings("--root_path"),
        default=None,
        help="folder of --data_path (Time-Series-Library; default: the current folder)",
    )
    g.add_argument(
        *spellings("--data_path"),
        default=None,
        help="the CSV's file name in --root_path; --data then names its split protocol "
        f"({', '.join(TSL_DATA)}; default: by the file's name). Without it, --data is the "
        "source",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="fetch a named ETT file into the cache if missing",
    )
    return g


def _model_and_training(q: argparse.ArgumentParser) -> None:
    g = q.add_argument_group("model (ForecastConfig)")
    for field, spec in MODEL_FLAGS.items():
        _add_field(g, ForecastConfig, field, spec)
    g = q.add_argument_group("training (TrainConfig)")
    for field, spec in TRAIN_FLAGS.items():
        _add_field(g, TrainConfig, field, spec)
    g.add_argument(
        *spellings("--use_amp"),
        dest="amp",
        action="store_const",
        const="auto",
        default=argparse.SUPPRESS,
        help="Time-Series-Library's switch: the same as --amp auto",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed run saved in --out/model.pt (pass the same flags)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh over an unfinished run (or another file) in --out/model.pt, "
        "losing it; without it or --resume such a run is refused",
    )


def _sampling(q: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = q.add_argument_group("sampling and scoring (SamplingConfig, Scoring)")
    for field, spec in SAMPLING_FLAGS.items():
        names = choices_of(SAMPLERS) if field == "sampler" else None  # a name, or a function
        _add_field(g, SamplingConfig, field, spec, choices=names)
    g.add_argument(
        "--windows",
        type=_optional(int),
        default=_SCORING["windows"],
        help="score N windows spread evenly over the split's period; none: all",
    )
    g.add_argument(
        *spellings("--save_samples"),
        action="store_true",
        help="also write the samples, [S, W, H, N] float32 with their window ids, start "
        "dates, units and scaler (.npz; read it with diffsample.forecast.load_samples)",
    )
    g.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=_SCORING["baselines"],
        help="also score the same backbone with Gaussian residuals (sigma fitted on the "
        "training and on the validation windows) and with bootstrapped training residual "
        "windows, on the same windows, into the same files",
    )
    return g


def _run(
    q: argparse.ArgumentParser,
    *,
    out_help: str,
    out_default: str | None = None,
    out_required: bool = False,
) -> None:
    g = q.add_argument_group("run")
    g.add_argument("--out", default=out_default, required=out_required, help=out_help)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument(
        "--threads",
        type=_optional(int),
        default=None,
        help="CPU threads of torch; none: torch's own choice. On a busy machine fewer "
        "threads are faster (an idle OpenMP thread spins)",
    )
    g.add_argument(
        *spellings("--no_progress"),
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars (there are none without a terminal anyway)",
    )
