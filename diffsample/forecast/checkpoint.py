"""The checkpoint format of ITransformerDiffusion, in one place: the atomic, checksummed write
and read, the checks of a file's tensors and weights, the defaults of older files, and the
state a training run resumes from.

A checkpoint is one ``torch.save`` dict, read back with ``weights_only=True``:

    format      "diffsample.ITransformerDiffusion/2" (FORMAT); "/1" is diffsample 0.1's
    config      the ForecastConfig's fields
    state_dict  the weights and the residual buffers (res_mean [N], res_std [N], res_scale [H, N])
    data_spec   what the model trained on (ForecastDataset.spec()), or None
    finished    True for a saved model or a finished run; False for a run still training
    stage, epoch                     (unfinished) the last epoch written
    run         (written by train) what TrainResult reports so far, and the train config
    resume      (unfinished) what continuing needs: optimizer, GradScaler, every RNG, early stopping
    checksum    the sha256 of everything else

A damaged or edited file is refused (the checksum), and so is one that would steer the reader:
every tensor is checked against its declared layout before the checksum reads it, the config
against :data:`~diffsample.forecast.model_config.CONFIG_LIMITS` and the weights' shapes against
the config's before a model of that size is built, and non-finite values are refused.

Older files: format /1 (diffsample 0.1) has no checksum, no data spec and no record of whether
training finished, so it loads only when asked (``allow_unfinished``); a field a file predates
reads as what that release used (:data:`BEFORE_FIELD`), a state without ``res_scale`` as
uncalibrated (ones).

Dimensions: H horizon, N variates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import re
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .._utils import atomic_write, describe, expected
from .data import ForecastDataset, check_data_spec
from .model_config import ForecastConfig, state_shapes

__all__ = [
    "BEFORE_FIELD",
    "FORMAT",
    "FORMAT_V1",
    "ModelCheckpoint",
    "check_resume_device",
    "check_state",
    "config_from",
    "model_payload",
    "read_checkpoint",
    "read_model",
    "read_resume",
    "write_checkpoint",
]

FORMAT = "diffsample.ITransformerDiffusion/2"
# diffsample 0.1: no checksum, no data spec, and no record of whether training had finished
FORMAT_V1 = "diffsample.ITransformerDiffusion/1"

# What a checkpoint saved before a config field existed used, where that differs from today's
# default (0.2.0's denoisers were conditioned on z alone; 0.2.0 trained stage 2 at a constant
# learning rate; before diffusion_draws, one draw per window). Read by read_model() and by the
# resume checks (read_resume), for the model's config and the trainer's alike.
BEFORE_FIELD: dict[str, object] = {
    "history_stats": "none",
    "diffusion_lr_decay": 1.0,
    "diffusion_draws": 1,
}

# deeper than any checkpoint nests its values (payload > resume > optimizer > state > 0 > x)
_MAX_DEPTH = 32
# how many times over a checkpoint's tensors may read its storages: twice leaves room for a
# storage two entries share; a few bytes viewed by thousands of tensors would make the checksum
# read gigabytes
_MAX_READS = 2


# ---------------------------------------------------------------------- writing
def model_payload(
    config: ForecastConfig, state_dict: Mapping[str, Any], data_spec: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A model's entries of a checkpoint: format, config, weights and data spec (the caller
    adds ``finished`` and, for a training run, ``run``, ``stage``, ``epoch``, ``resume``)."""
    return {
        "format": FORMAT,
        "config": dataclasses.asdict(config),
        "state_dict": state_dict,
        "data_spec": data_spec,
    }


def write_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """``payload`` plus its checksum, written atomically with ``torch.save``."""
    full = {**payload, "checksum": _digest(payload)}
    return atomic_write(path, lambda f: torch.save(full, f))


def _digest(payload: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint's contents but its ``checksum``: every tensor's dtype, shape and
    bytes and every plain value, walked in a fixed order (mapping keys sorted), so the same
    contents give the same digest whatever device they were loaded to."""
    h = hashlib.sha256()

    def feed(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # raw bytes, any dtype
        elif isinstance(obj, Mapping):
            h.update(f"M{len(obj)}:".encode())
            for k in sorted(obj, key=repr):
                feed(k)
                feed(obj[k])
        elif isinstance(obj, (list, tuple)):  # a tuple may come back as either
            h.update(f"L{len(obj)}:".encode())
            for x in obj:
                feed(x)
        elif obj is None or isinstance(obj, (bool, int, float, str)):
            text = repr(obj)
            h.update(f"{type(obj).__name__}{len(text)}:{text}".encode())
        else:
            raise TypeError(expected("checkpoint value", "tensors and plain data", obj))

    feed({k: v for k, v in payload.items() if k != "checksum"})
    return h.hexdigest()


# ---------------------------------------------------------------------- reading
def read_checkpoint(path: Path, *, map_location: Any) -> dict[str, Any]:
    """A checkpoint's payload, its format, checksum and config checked; one-line ValueErrors."""
    payload = _unpickle(path, map_location)
    if not isinstance(payload, Mapping):
        raise ValueError(
            f"checkpoint: {path} is not a diffsample checkpoint (it holds a "
            f"{type(payload).__name__}, not a dict)"
        )
    fmt = payload.get("format")
    if fmt not in (FORMAT, FORMAT_V1):
        raise ValueError(
            f"checkpoint: {path} is not a diffsample checkpoint (format {_short(fmt)}; expected "
            f"{FORMAT!r})"
        )
    tensors = _tensors(payload, path)
    _check_layouts(path, tensors)  # before anything reads a tensor's bytes
    if fmt == FORMAT:
        _check_checksum(path, payload)
    for where, t in tensors:
        if t.is_floating_point() or t.is_complex():
            n_bad = int((~torch.isfinite(t)).sum())
            if n_bad:
                raise ValueError(
                    f"checkpoint: {path}: {where} holds {n_bad} NaN/inf value(s) in "
                    f"{describe(t)}; a trained model's weights and statistics are finite; not "
                    "loaded"
                )
    if not isinstance(payload.get("config"), Mapping):
        raise ValueError(f"checkpoint: {path} holds no config (the model's sizes); not loaded")
    return dict(payload)


def _unpickle(path: Path, map_location: Any) -> object:
    """``torch.load(weights_only=True)`` of a file, its failures as one-line ValueErrors."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before it fails
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, i.e. running the file's code: never here
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise ValueError(
                f"checkpoint: {path} is not a diffsample checkpoint (it refers to the Python "
                f"object {found[1]}, which a checkpoint never holds; not loaded)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
        raise ValueError(
            f"checkpoint: {path} is not a readable diffsample checkpoint (not a file torch.save "
            f"writes: {detail[1] if detail else 'an unknown pickle stream'})"
        ) from None
    except Exception as exc:
        first = str(exc).strip().split("\n")[0].split(". ")[0][:200]
        why = "an empty file" if path.stat().st_size == 0 else f"{type(exc).__name__}: {first}"
        raise ValueError(
            f"checkpoint: {path} is not a readable diffsample checkpoint ({why})"
        ) from None


def _check_checksum(path: Path, payload: Mapping[str, Any]) -> None:
    """The stored checksum equals the contents' digest (format /2 always has one)."""
    stored = payload.get("checksum")
    if not isinstance(stored, str):
        raise ValueError(f"checkpoint: {path} has no checksum (written by hand?); not loaded")
    try:
        actual = _digest(payload)
    except (TypeError, RecursionError):  # a value no checkpoint holds, or keys nested deep
        actual = None
    if actual != stored:
        raise ValueError(
            f"checkpoint: {path} is damaged: its contents do not match the checksum it "
            "was written with (a truncated copy, a disk error or an edited file)"
        )


def _tensors(payload: Mapping[str, Any], path: Path) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a checkpoint's payload with where it sits (``state_dict['res_std']``),
    breadth first, without recursion; ValueError for values nested deeper than
    :data:`_MAX_DEPTH`."""
    found: list[tuple[str, torch.Tensor]] = []
    # (value, its parent's entry, its key, depth): a path is spelled out only for a tensor
    queue: deque[tuple[object, Any, object, int]] = deque([(payload, None, None, 0)])
    while queue:
        entry = queue.popleft()
        obj, _, _, depth = entry
        if isinstance(obj, torch.Tensor):
            found.append((_where(entry), obj))
            continue
        if isinstance(obj, Mapping):
            children: Any = obj.items()
        elif isinstance(obj, (list, tuple)):
            children = enumerate(obj)
        else:
            continue
        if depth >= _MAX_DEPTH:
            raise ValueError(
                f"checkpoint: {path} is not a diffsample checkpoint (values nested deeper than "
                f"{_MAX_DEPTH} levels at {_where(entry)}); not loaded"
            )
        queue.extend((v, entry, k, depth + 1) for k, v in children)
    return found


def _where(entry: tuple[object, Any, object, int]) -> str:
    """``a['b'][0]`` for an entry of ``_tensors``' walk."""
    keys = []
    while entry[1] is not None:
        keys.append(entry[2])
        entry = entry[1]
    if not keys:
        return "the payload"
    *rest, top = keys
    text = str(top) + "".join(f"[{k!r}]" for k in reversed(rest))
    return text if len(text) <= 200 else text[:200] + "..."


def _check_layouts(path: Path, tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Each tensor dense, contiguous and within its storage, and all of them together reading
    their storages at most :data:`_MAX_READS` times over: checked on the metadata alone, so
    a small file declaring a huge expanded tensor is refused before the checksum copies it."""
    storages: dict[tuple[str, int], int] = {}
    reads = 0
    for where, t in tensors:
        if t.layout != torch.strided or t.is_quantized or t.is_nested or t.is_meta:
            why = f"a {t.layout} tensor"
        elif not t.is_contiguous():
            why = f"an expanded or non-contiguous tensor (strides {t.stride()})"
        else:
            storage = t.untyped_storage()
            end = (t.storage_offset() + t.numel()) * t.element_size()
            if t.numel() and end > storage.nbytes():
                why = (
                    f"a tensor of {t.numel()} elements from offset {t.storage_offset()} in a "
                    f"storage of {storage.nbytes()} bytes"
                )
            else:
                storages[(str(storage.device), storage.data_ptr())] = storage.nbytes()
                reads += t.numel() * t.element_size()
                continue
        raise ValueError(
            f"checkpoint: {path}: {where} is {why} of shape {tuple(t.shape)}, which torch.save "
            "of a model never writes; not loaded"
        )
    if reads > _MAX_READS * sum(storages.values()):
        raise ValueError(
            f"checkpoint: {path}: its tensors view {reads} bytes of {sum(storages.values())} "
            f"bytes of storage (more than {_MAX_READS} times over), which torch.save of a model "
            "never writes; not loaded"
        )


def _short(value: object) -> str:
    """``repr(value)``, cut to 200 characters: a file's strings go into messages."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


# ---------------------------------------------------------------------- a model's checkpoint
class ModelCheckpoint(NamedTuple):
    """What :func:`read_model` found: the config, weights that fit it, and the data spec."""

    config: ForecastConfig
    state_dict: Mapping[str, Any]
    data_spec: dict[str, Any] | None


def read_model(
    path: Path, *, map_location: torch.device, allow_unfinished: bool
) -> ModelCheckpoint:
    """A model's checkpoint, checked all the way to weights that fit its config (see
    ``ITransformerDiffusion.load``); nothing of the model's size is built here."""
    payload = read_checkpoint(path, map_location=map_location)
    if payload.get("finished") is not True and not allow_unfinished:
        if payload["format"] == FORMAT_V1:
            raise ValueError(
                f"checkpoint: {path} was written by diffsample 0.1 (format {FORMAT_V1!r}: no "
                "checksum, no record of whether training finished or on which data); "
                "retrain, or pass allow_unfinished=True to load it anyway"
            )
        raise ValueError(
            f"checkpoint: {path} is from an unfinished training run (saved after stage "
            f"{payload.get('stage')} epoch {payload.get('epoch')}); resume it with "
            "train(..., checkpoint=path, resume=True), or pass allow_unfinished=True to load "
            "its best weights so far"
        )
    config = config_from(payload["config"], path)
    state = payload["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint: {path} holds no state_dict of weights")
    shapes = state_shapes(config)
    if "res_scale" not in state:  # written before the spread calibration: uncalibrated
        state = {**state, "res_scale": torch.ones(shapes["res_scale"], device=map_location)}
    check_state(path, state, shapes)
    spec = payload.get("data_spec")
    return ModelCheckpoint(config, state, dict(spec) if isinstance(spec, Mapping) else None)


def config_from(config: Mapping[str, Any], path: Path) -> ForecastConfig:
    """A checkpoint's config as a ForecastConfig; ValueError naming the path and the field."""
    fields = {f.name for f in dataclasses.fields(ForecastConfig)}
    config = {**{k: v for k, v in BEFORE_FIELD.items() if k in fields}, **config}
    unknown = set(config) - fields
    if unknown:
        raise ValueError(
            f"checkpoint: {path}: config has unknown fields {sorted(unknown)} (written by a "
            "newer version?)"
        )
    try:
        return ForecastConfig(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint: {path}: bad config: {exc}") from None


def check_state(
    path: Path, state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """The weights ``state`` have exactly the keys and shapes ``shapes`` of the config, and are
    floating-point tensors; one-line ValueError naming the path and the first few misfits."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted((set(state) - set(shapes)), key=repr)
    wrong = [
        f"{k}: file {tuple(getattr(state[k], 'shape', ()))} vs model {v}"
        for k, v in shapes.items()
        if k in state and tuple(getattr(state[k], "shape", (None,))) != v
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint: {path}: weights do not match the config: missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}, shape mismatches {_few(wrong)}"
        )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ValueError(
                f"checkpoint: {path}: state_dict[{k!r}]: expected a floating-point tensor of "
                f"weights, got {describe(v)}"
            )


def _few(items: list[str], n: int = 8) -> str:
    """The first ``n`` items of a list as its repr, and how many more there are."""
    if len(items) <= n:
        return repr(items)
    return f"{items[:n]!r} and {len(items) - n} more"


# ---------------------------------------------------------------------- a run to resume
def read_resume(
    path: Path | None,
    *,
    model_config: ForecastConfig,
    train_config: Any,
    data: ForecastDataset,
    world: int,
) -> dict[str, Any]:
    """The checkpoint a training run resumes from, checked against the model's config, the
    train config (a TrainConfig), the data and the number of processes ``world``."""
    if path is None:
        raise ValueError("resume: expected a checkpoint path to resume from, got checkpoint=None")
    if not path.is_file():
        raise ValueError(
            f"resume: expected the checkpoint of an interrupted run, but {path} does not exist "
            "(start the run without resume)"
        )
    saved = read_checkpoint(path, map_location="cpu")
    record = saved.get("run")
    if not isinstance(record, Mapping) or (
        saved.get("finished") is not True and not isinstance(saved.get("resume"), Mapping)
    ):
        raise ValueError(f"resume: {path} holds no training state to resume (not written by train)")
    _same(path, "model config", saved["config"], model_config)
    _same(path, "train config", record.get("train_config"), train_config)
    was = record.get("world_size", 1)  # a release before distributed training: one process
    if saved.get("finished") is not True and was != world:
        raise ValueError(
            f"resume: {path} was trained by {was} process(es); this run has {world}: "
            "resume with as many (each continues its own random streams)"
        )
    spec = saved.get("data_spec")
    if not isinstance(spec, Mapping):
        raise ValueError(f"resume: {path} records no data spec; cannot check the data")
    try:
        check_data_spec(spec, data)
    except ValueError as exc:
        raise ValueError(f"resume: {path}: {exc}") from None
    return saved


def check_resume_device(
    saved: Mapping[str, Any], path: Path | None, device_type: str, amp_dtype: str | None
) -> None:
    """An unfinished run continues only on the kind of device and with the autocast dtype
    (``"bfloat16"``, ``"float16"`` or None) it was trained with: its RNG states and its
    precision belong to them."""
    record = saved["run"]
    was = (record.get("device_type", device_type), record.get("amp_dtype"))
    if was != (device_type, amp_dtype):
        raise ValueError(
            f"resume: {path} was trained on {was[0]} with amp dtype {was[1]}; this run is on "
            f"{device_type} with {amp_dtype}: resume on the same kind of device"
        )


def _same(path: Path, what: str, saved: object, given: Any) -> None:
    """ValueError naming the first field of the config dataclass ``given`` that ``saved`` does
    not match; a field the saved run predates counts as what that run used (``BEFORE_FIELD``,
    else the field's default)."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"resume: {path} records no {what}")
    for field in dataclasses.fields(given):
        name, value = field.name, getattr(given, field.name)
        old = saved.get(name, BEFORE_FIELD.get(name, field.default))
        with contextlib.suppress(TypeError, ValueError):  # as the config reads it (True ->
            old = getattr(dataclasses.replace(given, **{name: old}), name)  # "scale_level")
        if _plain(old) != _plain(value):
            raise ValueError(
                f"resume: {path} was trained with another {what}: {name}={old!r} there, "
                f"{name}={value!r} here (resume with the run's own settings, or start afresh)"
            )


def _plain(v: object) -> object:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v
