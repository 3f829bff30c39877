"""Planning a :func:`~diffsample.batching.sample_many` call: every argument check (in the
order the errors are reported), the condition hook, and the chunk size from
:mod:`diffsample.chunking`; :mod:`diffsample.batching` runs the plan.

Dimensions: S samples per condition, B conditions, M = S * B rows, E event shape,
K sampling steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._utils import (
    check_bool,
    check_choice,
    check_device,
    check_finite,
    check_int,
    check_tensor,
    describe,
    expected,
)
from .chunking import Probe, plan_rows
from .memory import check_fits
from .noise import noise_key
from .prediction import Denoiser, autocast_denoiser
from .samplers import SAMPLERS, Known, Sampler, check_grid
from .schedules import NoiseSchedule

__all__ = ["MAX_SAMPLES", "Plan", "plan_sampling", "probe_for", "sampler_extras"]

# Sample indices key the noise as 32-bit words (diffsample.noise.row_keys).
MAX_SAMPLES = 1 << 32

# Sampler arguments that sample_many sets itself (cond and progress are its own parameters).
_RESERVED = ("noise_sampler", "generator", "known")
# per-condition tensors that travel with the cond rows (gathered per chunk, static graph
# inputs) under names no keyword argument can have
_MU, _KV, _KM = "@prior_mean", "@known_values", "@known_mask"


@dataclass(frozen=True)
class Plan:
    """One checked :func:`~diffsample.batching.sample_many` call, ready to run in chunks.

    Attributes:
        sample_fn: the sampler function.
        denoiser: the denoiser, wrapped in ``torch.autocast`` if asked.
        schedule: the training schedule, on the host (the samplers read it there).
        timesteps: the grid ``[K]`` long, on the host (no transfer inside a graph capture).
        E: the event shape.
        S: samples per condition.
        B: conditions.
        key: the call's noise key (the seed folded, or drawn).
        ids: ``[B]`` condition ids keying the noise, on the device.
        cond: the denoiser's keyword arguments ``[B, ...]`` (``prepare_cond`` applied).
        extras: per-condition prior mean and known values ``[B, *E]`` (see
            :func:`sampler_extras`), on the device.
        sampler_kwargs: the other sampler keywords, the callback taken out.
        callback: the user's per-step callback, or None.
        device: where to sample.
        dtype: dtype of the samples.
        graph: whether CUDA-graph mode was asked for.
        probe: the memory probe of this set-up (an OOM lowers its cached limit).
        chunk: rows per denoiser call, before any OOM back-off.
    """

    sample_fn: Sampler
    denoiser: Denoiser
    schedule: NoiseSchedule
    timesteps: torch.Tensor
    E: tuple[int, ...]
    S: int
    B: int
    key: int
    ids: torch.Tensor
    cond: dict[str, Any]
    extras: dict[str, torch.Tensor]
    sampler_kwargs: dict[str, Any]
    callback: Callable[[dict[str, Any]], None] | None
    device: torch.device
    dtype: torch.dtype
    graph: bool
    probe: Probe
    chunk: int

    @property
    def M(self) -> int:
        """Rows in all, S * B."""
        return self.S * self.B


def plan_sampling(
    sampler: str | Sampler,
    denoiser: Denoiser,
    event_shape: Sequence[int],
    n_samples: int,
    *,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    cond: Mapping[str, Any] | None,
    cond_ids: torch.Tensor | Sequence[int] | None,
    prior_mean: torch.Tensor | None,
    known_values: torch.Tensor | None,
    known_mask: torch.Tensor | None,
    max_batch: int | None,
    memory_budget: int | float | None,
    seed: int | Sequence[int] | None,
    device: str | torch.device | None,
    dtype: torch.dtype,
    autocast: torch.dtype | None,
    graph: bool,
    sampler_kwargs: Mapping[str, Any],
) -> Plan:
    """The plan of a :func:`~diffsample.batching.sample_many` call (the arguments as there):
    every argument checked (one sync per input tensor, before any sampling), the condition
    hook applied, then the probe and the rows per call. Nothing is sampled."""
    sample_fn = _resolve_sampler(sampler)
    E = _check_event_shape(event_shape)
    S = check_int("n_samples", n_samples, maximum=MAX_SAMPLES)
    key = _resolve_seed(seed)
    graph = check_bool("graph", graph)
    _check_dtype(dtype)
    schedule = _host_schedule(schedule)
    grid = check_grid(timesteps, schedule.num_train_steps)  # [K] host ints
    _check_reserved(sampler_kwargs)
    extras = _per_condition(E, prior_mean, known_values, known_mask)
    all_cond, B, dev = _prepare_cond(cond, cond_ids, device, denoiser, extras)
    extras = {k: all_cond.pop(k) for k in extras}  # on the device, [B, *E] each
    ids = _check_cond_ids(cond_ids, B, dev)
    _check_output_fits(S, B, E, dtype, dev)
    _check_finite(all_cond, extras)
    wrapped = autocast_denoiser(denoiser, dev.type, _check_autocast(autocast))
    kwargs = dict(sampler_kwargs)
    callback = kwargs.pop("callback", None)
    with torch.no_grad():
        all_cond = _prepared_cond(wrapped, all_cond, B)
        probe = Probe(denoiser, wrapped, E, all_cond, B, dev, dtype, autocast, grid[0])
        chunk = plan_rows(probe, S * B, max_batch, memory_budget)
    return Plan(
        sample_fn=sample_fn,
        denoiser=wrapped,
        schedule=schedule,
        timesteps=torch.tensor(grid, dtype=torch.long),  # [K] on the host
        E=E,
        S=S,
        B=B,
        key=key,
        ids=ids,
        cond=all_cond,
        extras=extras,
        sampler_kwargs=kwargs,
        callback=callback,
        device=dev,
        dtype=dtype,
        graph=graph,
        probe=probe,
        chunk=chunk,
    )


def _host_schedule(schedule: object) -> NoiseSchedule:
    """The schedule on the host, where the samplers read their coefficients: a device copy
    would cost a sync per chunk (and break graph capture, which forbids syncs)."""
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(expected("schedule", "a NoiseSchedule", schedule))
    return schedule if schedule.device.type == "cpu" else schedule.to("cpu")


def _check_reserved(sampler_kwargs: Mapping[str, Any]) -> None:
    bad = [k for k in _RESERVED if k in sampler_kwargs]
    if bad:
        raise TypeError(
            f"sample_many: {bad} are set by sample_many itself (the noise is keyed by seed=, "
            "known values come as known_values= and known_mask=)"
        )


def probe_for(
    denoiser: Denoiser,
    event_shape: Sequence[int],
    cond: Mapping[str, Any] | None,
    device: str | torch.device | None,
    dtype: torch.dtype,
    autocast: torch.dtype | None,
    t_probe: int,
) -> tuple[Probe, int]:
    """(the probe, B) for :func:`~diffsample.batching.plan_chunk` and
    :func:`~diffsample.batching.row_cost`, arguments checked."""
    E = _check_event_shape(event_shape)
    _check_dtype(dtype)
    t_probe = check_int("t_probe", t_probe, minimum=0)
    cond, B, dev = _prepare_cond(cond, None, device, denoiser)
    wrapped = autocast_denoiser(denoiser, dev.type, _check_autocast(autocast))
    with torch.no_grad():
        cond = _prepared_cond(wrapped, cond, B)
    return Probe(denoiser, wrapped, E, cond, B, dev, dtype, autocast, t_probe), B


def _resolve_sampler(sampler: str | Sampler) -> Sampler:
    if isinstance(sampler, str):
        return SAMPLERS[check_choice("sampler", sampler, SAMPLERS)]
    if not callable(sampler):
        raise TypeError(
            expected(
                "sampler", f"a sampler function or one of {', '.join(map(repr, SAMPLERS))}", sampler
            )
        )
    return sampler


def _check_event_shape(event_shape: object) -> tuple[int, ...]:
    if isinstance(event_shape, str) or not isinstance(event_shape, Sequence):
        raise TypeError(expected("event_shape", "a sequence of positive integers", event_shape))
    return tuple(check_int(f"event_shape[{i}]", d) for i, d in enumerate(event_shape))


def _check_dtype(dtype: object) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")


def _resolve_seed(seed: object) -> int:
    """The noise key of a call: the seed folded to one int, or (None) a key drawn from torch's
    default generator, which ``torch.manual_seed`` seeds."""
    if seed is None:
        return int(torch.randint(0, 2**62, (), dtype=torch.long))
    return noise_key(seed)  # type: ignore[arg-type]  # noise_key checks the kind


def _per_condition(
    E: tuple[int, ...], prior_mean: object, known_values: object, known_mask: object
) -> dict[str, torch.Tensor]:
    """The per-condition tensors ``[B, *E]`` that were given, checked for kind and event shape."""
    if (known_values is None) != (known_mask is None):
        raise ValueError(
            "known_values, known_mask: expected both (the values and where they are known) or "
            f"neither, got known_values={describe(known_values)}, known_mask={describe(known_mask)}"
        )
    given = {_MU: ("prior_mean", prior_mean), _KV: ("known_values", known_values)}
    given[_KM] = ("known_mask", known_mask)
    out: dict[str, torch.Tensor] = {}
    for key, (name, v) in given.items():
        if v is None:
            continue
        if key == _KM:
            if not (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
                raise TypeError(expected(name, "a bool tensor (True where the value is known)", v))
        else:
            v = check_tensor(name, v, floating=True)
        if v.ndim != len(E) + 1 or tuple(v.shape[1:]) != E:
            raise ValueError(expected(name, f"shape [B, {', '.join(map(str, E))}] ([B, *E])", v))
        out[key] = v
    return out


def _check_finite(cond: Mapping[str, Any], extras: Mapping[str, torch.Tensor]) -> None:
    """Finite cond tensors, prior mean, and known values where the mask says known (one sync
    each, once, before sampling: NaN in a condition means NaN samples)."""
    for k, v in cond.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            check_finite(f"cond[{k!r}]", v)
    if _MU in extras:
        check_finite("prior_mean", extras[_MU])
    if _KV in extras:
        check_finite(
            "known_values", torch.where(extras[_KM], extras[_KV], 0.0), hint=" where known_mask"
        )


def sampler_extras(rows: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The sampler keywords for one chunk's per-condition rows ``[C, *E]``."""
    extra: dict[str, Any] = {}
    if _MU in rows:
        extra["prior_mean"] = rows[_MU]
    if _KV in rows:
        extra["known"] = Known(rows[_KV], rows[_KM])
    return extra


def _check_output_fits(
    S: int, B: int, E: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    """Refuse an output ``[S, B, *E]`` larger than the memory available on ``device``, before
    any allocation (the probe included)."""
    need = S * B * math.prod(E) * torch.empty((), dtype=dtype).element_size()
    check_fits(
        need,
        device,
        name="n_samples",
        what=f"the output of {S} samples x {B} conditions x {math.prod(E)} values",
        hint="draw fewer samples per call",
    )


def _check_autocast(autocast: object) -> torch.dtype | None:
    if autocast is None:
        return None
    if not (isinstance(autocast, torch.dtype) and autocast.is_floating_point):
        raise TypeError(
            expected("autocast", "None or a floating torch.dtype such as torch.bfloat16", autocast)
        )
    return autocast


def _prepared_cond(denoiser: Any, cond: dict[str, Any], B: int) -> dict[str, Any]:
    """``denoiser.prepare_cond(**cond)`` (the per-condition hook), checked to keep one row per
    condition, or ``cond`` itself for a denoiser without the hook."""
    prepare = getattr(denoiser, "prepare_cond", None)
    if not callable(prepare):
        return cond
    prepared = prepare(**cond)
    if not isinstance(prepared, Mapping):
        raise TypeError(expected("denoiser.prepare_cond", "a dict of keyword arguments", prepared))
    sizes = {k: tuple(v.shape) for k, v in prepared.items() if isinstance(v, torch.Tensor)}
    wrong = {k: shape for k, shape in sizes.items() if not shape or shape[0] != B}
    if wrong:
        raise ValueError(
            f"denoiser.prepare_cond: expected tensors with the leading dimension B={B} (one row "
            f"per condition), got shapes {wrong}"
        )
    return dict(prepared)


def _prepare_cond(
    cond: object,
    cond_ids: object,
    device: str | torch.device | None,
    denoiser: object,
    extras: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], int, torch.device]:
    """(cond and the per-condition ``extras`` in one dict on the sampling device, B, that
    device), after checking that every tensor has B rows."""
    if cond is None:
        cond = {}
    if not isinstance(cond, Mapping):
        raise TypeError(expected("cond", "a mapping of keyword tensors for the denoiser", cond))
    clash = [k for k in cond if isinstance(k, str) and k.startswith("@")]
    if clash:
        raise ValueError(f"cond: names starting with '@' are sample_many's own, got {clash}")
    cond = {**cond, **(extras or {})}
    B = _num_conditions(cond, cond_ids)
    dev = _resolve_device(device, cond, denoiser)
    moved = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    return moved, B, dev


def _num_conditions(cond: Mapping[str, Any], cond_ids: Any) -> int:
    sizes = {k: v.shape[0] for k, v in cond.items() if isinstance(v, torch.Tensor) and v.ndim}
    scalars = [k for k, v in cond.items() if isinstance(v, torch.Tensor) and not v.ndim]
    if scalars:
        raise ValueError(
            f"cond: every tensor needs a leading condition dimension B; got 0-d tensors for {scalars}"
        )
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"cond: every tensor must have the same leading dimension B (one row per condition); "
            f"got {sizes}"
        )
    B = next(iter(sizes.values())) if sizes else 1 if cond_ids is None else len(cond_ids)
    if B < 1:  # an empty batch of windows: nothing to sample, and no chunk size to plan
        raise ValueError(f"cond: expected at least one condition (B >= 1), got B = {B}")
    return B


def _check_cond_ids(cond_ids: Any, B: int, device: torch.device) -> torch.Tensor:
    if cond_ids is None:
        return torch.arange(B, device=device)
    if isinstance(cond_ids, (str, bytes)) or not isinstance(cond_ids, (torch.Tensor, Sequence)):
        raise TypeError(expected("cond_ids", "a tensor or sequence of integer ids", cond_ids))
    ids = torch.as_tensor(cond_ids, device=device)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise TypeError(expected("cond_ids", "integer ids", ids))
    if ids.shape != (B,):
        raise ValueError(
            expected("cond_ids", f"shape [{B}] (one id per condition, B from cond)", ids)
        )
    return ids.long()


def _resolve_device(device: Any, cond: Mapping[str, Any], denoiser: Any) -> torch.device:
    if device is not None:
        return check_device("device", device)
    for v in cond.values():
        if isinstance(v, torch.Tensor):
            return v.device
    if isinstance(denoiser, torch.nn.Module):
        for p in denoiser.parameters():
            return p.device
    return torch.device("cpu")
