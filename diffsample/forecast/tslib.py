"""Time-Series-Library (TSLib) scripts run by the ``diffsample`` command.

A stock TSLib long-term-forecasting script calls ``python -u run.py --task_name
long_term_forecast --is_training 1 --model iTransformer --data ETTh1 ...``; with ``python -u
run.py`` replaced by ``diffsample`` it trains and scores the reference forecaster instead. This
module holds what that takes, for :mod:`diffsample.forecast.cli` (the only module that parses
arguments): the flags of TSLib's ``run.py`` that diffsample does not have, what each means here
(honoured, refused unless it has the one value diffsample can honour, or accepted and ignored),
TSLib's defaults, its run name (``setting``) and the files TSLib writes after a test
(``./results/<setting>/{pred,true,metrics}.npy`` and a line of ``result_long_term_forecast.txt``).

Read from thuml/Time-Series-Library at commit 4e938a1 (April 2026): ``run.py``'s argparse,
``exp/exp_long_term_forecasting.py``'s ``test`` and ``utils/metrics.py``.

Dimensions: W windows scored, H horizon, N variates.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch

from .._utils import atomic_write, expected
from .data import ForecastDataset, WindowBatch
from .model import Forecast

__all__ = [
    "LEDGER",
    "TSLIB_DEFAULTS",
    "PointKeeper",
    "TSLibRun",
    "add_flags",
    "given_flags",
    "is_tslib",
    "tslib_metrics",
]

LEDGER = "result_long_term_forecast.txt"  # TSLib appends each test's scores here, in the cwd
_SWITCH: Literal["switch"] = "switch"  # store_true
_OFF: Literal["off"] = "off"  # store_false
_LIST: Literal["list"] = "list"  # nargs="+", int
Kind = Callable[[str], Any] | Literal["switch", "off", "list"]

# run.py's flags that diffsample's own do not cover: name -> (kind, TSLib's default). Each one
# is accepted; what it does is decided by _MUST (refused unless the value given is the one
# diffsample honours), _HONOURED (used), or else ignored and named in one notice line.
_FLAGS: dict[str, tuple[Kind, Any]] = {
    "task_name": (str, "long_term_forecast"),
    "is_training": (int, 1),
    "model_id": (str, "test"),
    "model": (str, "Autoformer"),
    "features": (str, "M"),
    "target": (str, "OT"),
    "freq": (str, "h"),
    "checkpoints": (str, "./checkpoints/"),
    "label_len": (int, 48),
    "seasonal_patterns": (str, "Monthly"),
    "inverse": (_SWITCH, False),
    "mask_rate": (float, 0.25),
    "anomaly_ratio": (float, 0.25),
    "expand": (int, 2),
    "d_conv": (int, 4),
    "tv_dt": (int, 0),
    "tv_B": (int, 0),
    "tv_C": (int, 0),
    "use_D": (int, 0),
    "top_k": (int, 5),
    "num_kernels": (int, 6),
    "dec_in": (int, 7),
    "c_out": (int, 7),
    "d_layers": (int, 1),
    "moving_avg": (int, 25),
    "factor": (int, 1),
    "distil": (_OFF, True),
    "embed": (str, "timeF"),
    "activation": (str, "gelu"),
    "channel_independence": (int, 1),
    "decomp_method": (str, "moving_avg"),
    "use_norm": (int, 1),
    "down_sampling_layers": (int, 0),
    "down_sampling_window": (int, 1),
    "down_sampling_method": (str, None),
    "seg_len": (int, 96),
    "num_workers": (int, 10),
    "itr": (int, 1),
    "des": (str, "test"),
    "loss": (str, "MSE"),
    "lradj": (str, "type1"),
    "use_gpu": (_SWITCH, True),
    "gpu": (int, 0),
    "gpu_type": (str, "cuda"),
    "use_multi_gpu": (_SWITCH, False),
    "devices": (str, "0,1,2,3"),
    "p_hidden_dims": (_LIST, [128, 128]),
    "p_hidden_layers": (int, 2),
    "use_dtw": (_SWITCH, False),
    "augmentation_ratio": (int, 0),
    **{
        name: (_SWITCH, False)
        for name in (
            "jitter scaling permutation randompermutation magwarp timewarp windowslice "
            "windowwarp rotation spawner dtwwarp shapedtwwarp wdba discdtw discsdtw"
        ).split()
    },
    "extra_tag": (str, ""),
    "patch_len": (int, 16),
    "node_dim": (int, 10),
    "gcn_depth": (int, 2),
    "gcn_dropout": (float, 0.3),
    "propalpha": (float, 0.3),
    "conv_channel": (int, 32),
    "skip_channel": (int, 32),
    "individual": (_SWITCH, False),
    "alpha": (float, 0.1),
    "top_p": (float, 0.5),
    "pos": (int, 1),
}
# the one value diffsample can honour -> why (the refusal's reason)
_MUST: dict[str, tuple[Any, str]] = {
    "task_name": ("long_term_forecast", "the only TSLib task diffsample runs"),
    "is_training": (1, "train then test; score a saved model with diffsample evaluate"),
    "model": ("iTransformer", "the backbone of diffsample's forecaster"),
    "features": ("M", "multivariate to multivariate, the only mode diffsample forecasts"),
    "itr": (1, "one run per command; repeat with another --seed"),
    "loss": ("MSE", "the point forecast's training loss"),
    "lradj": ("type1", "halving after each epoch; other schedules via --lr_decay"),
    "use_norm": (1, "the backbone always normalises each window"),
    "use_multi_gpu": (False, "DataParallel; run diffsample under torchrun instead"),
    "use_dtw": (False, "DTW is not computed; TSLib writes 'Not calculated' without it"),
    "augmentation_ratio": (0, "no data augmentation"),
    **{
        name: (False, "no data augmentation")
        for name in (
            "jitter scaling permutation randompermutation magwarp timewarp windowslice "
            "windowwarp rotation spawner dtwwarp shapedtwwarp wdba discdtw discsdtw"
        ).split()
    },
}
# used: the run's name and folders, the device, the units of pred.npy / true.npy
_HONOURED = ("checkpoints", "inverse", "use_gpu", "gpu")
# run.py requires these (argparse's required=True)
_REQUIRED = ("task_name", "is_training", "model_id", "model", "data")
# TSLib's defaults where they differ from diffsample's, for the flags both have: a TSLib
# script that leaves them out means TSLib's values
TSLIB_DEFAULTS: dict[str, Any] = {
    "d_model": 512,
    "d_ff": 2048,
    "root_path": "./data/ETT/",
    "data_path": "ETTh1.csv",
}
_DEST = "tsl_"  # namespace prefix: --model here is TSLib's, never a clash with diffsample's


def given_flags(a: argparse.Namespace) -> list[str]:
    """The TSLib flags (of :func:`add_flags`) a parsed command line gave, in order."""
    return ["--" + k[len(_DEST) :] for k in vars(a) if k.startswith(_DEST)]


def is_tslib(argv: list[str]) -> bool:
    """Whether a command line is a TSLib script's: it passes ``--task_name`` (which run.py
    requires, so every TSLib script does)."""
    return any(
        a.replace("-", "_").split("=")[0] == "__task_name" for a in argv if a.startswith("--")
    )


def add_flags(q: argparse.ArgumentParser, spellings: Callable[[str], list[str]]) -> None:
    """Add TSLib's run.py flags (those diffsample lacks) to ``q``, in a group of their own.

    Only the ones whose value matters are shown by ``--help``; the rest are accepted and
    hidden. None has a default in the namespace: a flag is there only if it was given.
    """
    shown = {
        "task_name": "long_term_forecast: the command line is a TSLib script's, run as TSLib "
        "would (default: none, diffsample's own command line)",
        "is_training": "1: train, then test",
        "model": "iTransformer, the backbone",
        "model_id": "names the run (TSLib's setting string)",
        "features": "M: multivariate to multivariate",
        "des": "names the run",
        "itr": "1: one run",
        "checkpoints": "the folder of the run's folder <setting>/",
        "inverse": "pred.npy and true.npy in the data's units, not scaled ones",
        "lradj": "type1: the point forecast's learning rate halves each epoch",
        "use_gpu": "TSLib's device switch: a GPU if there is one (the default)",
        "gpu": "the GPU's index, with --use_gpu",
    }
    g = q.add_argument_group(
        "Time-Series-Library scripts",
        "With --task_name, the other flags of TSLib's run.py are accepted too; those that do "
        "not change the run are named in one notice line and ignored.",
    )
    for name, (kind, default) in _FLAGS.items():
        text = shown.get(name, argparse.SUPPRESS)
        if name in _REQUIRED and name != "task_name":
            text = f"{text} (default: none; run.py requires it)"
        elif name in shown and kind not in (_SWITCH, _OFF) and "default:" not in text:
            text = f"{text} (default: {default})"  # TSLib's (the namespace gets none)
        kw: dict[str, Any] = {"dest": _DEST + name, "default": argparse.SUPPRESS, "help": text}
        if kind == _SWITCH:
            kw.update(action="store_true")
        elif kind == _OFF:
            kw.update(action="store_false")
        elif kind == _LIST:
            kw.update(type=int, nargs="+", metavar="N")
        else:
            kw.update(type=kind, metavar=name.upper())
        g.add_argument(*spellings("--" + name), **kw)
    g.add_argument(
        *spellings("--no_use_gpu"),
        dest=_DEST + "use_gpu",
        action="store_false",
        default=argparse.SUPPRESS,
        help="TSLib's switch: the CPU",
    )


@dataclasses.dataclass(frozen=True)
class TSLibRun:
    """What a TSLib command line asks for beyond diffsample's own flags.

    Attributes:
        setting: the run's name, as TSLib's run.py builds it.
        checkpoints: TSLib's ``--checkpoints`` folder; the run's ``--out`` is
            ``checkpoints/setting`` unless given.
        inverse: write ``pred.npy`` and ``true.npy`` in the data's units.
        device: the device TSLib's flags name, or None for diffsample's ``--device``.
        ignored: the flags given that change nothing here, in the order given.
    """

    setting: str
    checkpoints: Path
    inverse: bool
    device: str | None
    ignored: tuple[str, ...]

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> TSLibRun:
        """Check a parsed TSLib command line (one line per refusal, naming the flag).

        Raises:
            ValueError: a flag run.py requires is missing, or a value diffsample cannot
                honour (another model, task or feature mode, augmentation, ...).
        """
        # in the order given: a flag without a default enters the namespace when it is parsed
        given = {k[len(_DEST) :]: v for k, v in vars(a).items() if k.startswith(_DEST)}
        for name in _REQUIRED:
            if name not in given and not (name == "data" and a.data is not None):
                raise ValueError(
                    f"--{name}: expected with --task_name (Time-Series-Library's run.py "
                    "requires it)"
                )
        for name, (value, why) in _MUST.items():
            if name in given and given[name] != value:
                raise ValueError(expected(f"--{name}", f"{value} ({why})", given[name]))
        v = {name: given.get(name, default) for name, (_kind, default) in _FLAGS.items()}
        setting = (
            f"{v['task_name']}_{v['model_id']}_{v['model']}_{a.data}_ft{v['features']}"
            f"_sl{a.lookback}_ll{v['label_len']}_pl{a.horizon}_dm{a.d_model}_nh{a.n_heads}"
            f"_el{a.n_layers}_dl{v['d_layers']}_df{a.d_ff}_expand{v['expand']}_dc{v['d_conv']}"
            f"_fc{v['factor']}_eb{v['embed']}_dt{v['distil']}_{v['des']}_0"
        )  # run.py's format; the trailing 0 is the --itr round
        if os.sep in setting or (os.altsep and os.altsep in setting):
            raise ValueError(
                f"--model_id: expected a run name without {os.sep!r} (it names a folder), got "
                f"{v['model_id']!r} (--des: {v['des']!r})"
            )
        device = None
        if "use_gpu" in given or "gpu" in given:
            device = f"cuda:{v['gpu']}" if v["use_gpu"] and torch.cuda.is_available() else "cpu"
        ignored = [n for n in given if n not in _HONOURED]
        return cls(setting, Path(v["checkpoints"]), bool(v["inverse"]), device, tuple(ignored))

    @property
    def out(self) -> Path:
        """TSLib's checkpoint folder of the run: ``<checkpoints>/<setting>/``."""
        return self.checkpoints / self.setting

    @property
    def results(self) -> Path:
        """TSLib's result folder: ``./results/<setting>/`` (run.py's, relative to the cwd)."""
        return Path("results") / self.setting

    def files(self) -> list[Path]:
        """The files :meth:`write` writes (the ledger is appended to, not replaced)."""
        return [self.results / f for f in ("pred.npy", "true.npy", "metrics.npy")]

    def notice(self) -> str | None:
        """One line naming the flags accepted and ignored, or None."""
        if not self.ignored:
            return None
        flags = ", ".join("--" + n for n in self.ignored)
        return f"note: Time-Series-Library flags accepted and ignored (no effect here): {flags}"

    def write(self, keeper: PointKeeper, data: ForecastDataset) -> list[str]:
        """Write pred.npy, true.npy and metrics.npy into :attr:`results` and append the scores
        to the ledger, as TSLib's test does; returns a line per file written."""
        pred, true = keeper.stacked()  # [W, H, N] each, scaled units
        if self.inverse:
            pred, true = data.scaler.inverse_transform(pred), data.scaler.inverse_transform(true)
        pred_np, true_np = pred.numpy(), true.numpy()
        metrics = tslib_metrics(pred_np, true_np)
        lines = []
        for path, array in zip(self.files(), (pred_np, true_np, metrics), strict=True):
            atomic_write(path, _npy_writer(array))
            lines.append(f"TSLib {path.name}: {path} {list(array.shape)}")
        mae, mse = metrics[0], metrics[1]
        _append(Path(LEDGER), f"{self.setting}  \nmse:{mse}, mae:{mae}, dtw:Not calculated\n\n")
        lines.append(f"TSLib ledger: appended mse {mse:.4f}, mae {mae:.4f} to {LEDGER}")
        return lines


def tslib_metrics(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """TSLib's ``metric(pred, true)`` as ``metrics.npy`` holds it: [mae, mse, rmse, mape, mspe].

    Computed as TSLib computes it (utils/metrics.py), in the arrays' dtype; MAPE and MSPE
    divide by ``true``, so a zero there gives inf, as in TSLib.

    Args:
        pred: ``[W, H, N]`` forecasts.
        true: ``[W, H, N]`` targets.
    """
    if pred.shape != true.shape:
        raise ValueError(expected("pred", f"the shape of true {list(true.shape)}", pred.shape))
    err = true - pred
    with np.errstate(divide="ignore", invalid="ignore"):
        mae, mse = np.mean(np.abs(err)), np.mean(err**2)
        mape, mspe = np.mean(np.abs(err / true)), np.mean(np.square(err / true))
    return np.array([mae, mse, np.sqrt(mse), mape, mspe])


def _npy_writer(array: np.ndarray) -> Callable[[IO[bytes]], None]:
    def write(f: IO[bytes]) -> None:
        np.save(f, array)

    return write


def _append(path: Path, text: str) -> None:
    """Append ``text`` in one write: with O_APPEND, concurrent runs' lines never interleave
    (a ledger rewritten atomically could lose another run's line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class PointKeeper:
    """The point forecasts and targets of every window scored, for TSLib's pred.npy and
    true.npy: an ``on_batch`` hook of :func:`~diffsample.forecast.evaluate_split`."""

    def __init__(self) -> None:
        self._point: list[torch.Tensor] = []  # [B, H, N] each
        self._true: list[torch.Tensor] = []  # [B, H, N] each
        self._ids: list[torch.Tensor] = []  # [B] each

    def __call__(self, batch: WindowBatch, forecast: Forecast) -> None:
        self._point.append(forecast.point.float().cpu())
        self._true.append(batch.y.float().cpu())
        self._ids.append(batch.index.cpu())

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred, true), ``[W, H, N]`` each, in window order."""
        order = torch.argsort(torch.cat(self._ids))  # [W]
        return torch.cat(self._point)[order], torch.cat(self._true)[order]
