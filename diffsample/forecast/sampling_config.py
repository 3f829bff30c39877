"""How the forecaster samples, and how the command scores a split: two frozen, checked records.

:class:`SamplingConfig` is shared by :meth:`~diffsample.forecast.ITransformerDiffusion.forecast`,
:func:`~diffsample.forecast.evaluate_split`, the spread calibration
(:func:`~diffsample.forecast.calibration.fit_spread_scale`) and the ``diffsample`` command
(whose sampling flags are its fields, :mod:`diffsample.forecast.flags`), and recorded in
``results.json`` under ``"sampling"``. :class:`Scoring`, what
:func:`~diffsample.forecast.scoring.score` takes, holds one beside the windows scored, the
batch size, the baselines and whether the samples are kept.

Each of those still takes its older loose keywords (``n_samples``, ``num_steps``, ``sampler``,
...): :func:`resolve_sampling` folds them into a config, and refuses a loose keyword that
disagrees with a config given beside it (naming both) rather than letting one silently win.

Dimensions: S samples per window, K sampling steps, T the model's training steps.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import torch

from .._utils import check_bool, check_choice, check_int, check_number, expected
from ..distributed import torchrun_rank_world
from ..noise import noise_key
from ..prediction import Clip, ClipEps, check_clip
from ..samplers import SAMPLERS, Sampler, sample_ddim
from ..schedules import Spacing

__all__ = [
    "AutocastMode",
    "SamplingConfig",
    "Scoring",
    "check_num_steps",
    "resolve_sampling",
]

AutocastMode = Literal["off", "bf16", "fp16"]
_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "off": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# the built-in samplers whose update uses eps: with clip_x0 they need clip_eps (check_clip)
_USES_EPS = frozenset({sample_ddim})
# the fields forecast() reads from its **sampler_kwargs (the others are its own keywords)
EXTRA_FIELDS = ("eta", "clip_x0", "clip_eps", "autocast", "graph")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the forecaster's samples are drawn; checked when built (integers normalised).

    The defaults are the library's (DPM-Solver++(2M), 10 steps on the log-SNR grid, 100
    samples: ETTh1 scored within 1% of DDIM-50 at a fifth of the cost; fewer samples bias
    interval coverage low; docs/results.md).

    Attributes:
        n_samples: S, samples per window.
        num_steps: K, sampling steps (at most the model's T, checked where the model is known).
        sampler: a name in :data:`diffsample.SAMPLERS` or a sampler function.
        spacing: the grid of the K steps (:meth:`diffsample.NoiseSchedule.timesteps`):
            "logsnr" spaces them evenly in log-SNR, most at low noise, down to t = 0;
            "trailing" (before 0.6.0) evenly in t, which at 10 steps narrowed the forecaster's
            samples to 0.72-0.79 of the true errors' spread (docs/results.md).
        seed: the noise key, an int or a tuple of ints (:func:`diffsample.noise.noise_key`),
            with each window's id: the same window, seed and settings give the same samples in
            any batch and at any chunking.
        eta: DDIM's eta (0 deterministic, 1 DDPM-like); None: not passed (the sampler's own
            default). Only for a sampler that takes ``eta``.
        clip_x0: clamp each x0 estimate to [-c, c] (a number c > 0) or a
            :class:`diffsample.prediction.DynamicThreshold`; None: no clipping.
        clip_eps: with ``clip_x0``, the eps DDIM's update uses: "raw" or "rederive"
            (required for DDIM; the others use x0 only); None: not passed.
        autocast: run the denoiser (only) under ``torch.autocast`` in "bf16" or "fp16";
            "off": full precision. On a CPU this is CPU autocast.
        graph: capture one chunk's step loop as a CUDA graph and replay it; on other devices
            :func:`diffsample.sample_many` warns and samples eagerly.
        max_batch: rows (samples x windows) per denoiser call at most; None: as the memory
            budget allows.
        memory_budget: per denoiser call, bytes (an int) or a fraction in (0, 1] of free device
            memory (a float); None: a share of free memory (on a CPU, a cache-sized working set).
    """

    n_samples: int = 100
    num_steps: int = 10
    sampler: str | Sampler = "dpmpp_2m"
    spacing: Spacing = "logsnr"
    seed: int | tuple[int, ...] = 0
    eta: float | None = None
    clip_x0: Clip | None = None
    clip_eps: ClipEps | None = None
    autocast: AutocastMode = "off"
    graph: bool = False
    max_batch: int | None = None
    memory_budget: int | float | None = None

    def __post_init__(self) -> None:
        fn = _sampler_function(self.sampler)
        checked = {
            "n_samples": check_int("n_samples", self.n_samples),
            "num_steps": check_int("num_steps", self.num_steps),
            "seed": _check_seed(self.seed),
            "eta": _check_eta(self.eta, self.sampler, fn),
            "clip_x0": check_clip(self.clip_x0, self.clip_eps, uses_eps=fn in _USES_EPS)[0],
            "max_batch": None if self.max_batch is None else check_int("max_batch", self.max_batch),
            "memory_budget": _check_budget(self.memory_budget),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        check_choice("spacing", self.spacing, Spacing)
        check_choice("autocast", self.autocast, AutocastMode)
        check_bool("graph", self.graph)

    @property
    def sampler_name(self) -> str:
        """The sampler's name: the registry name, or a function's ``__name__``."""
        if isinstance(self.sampler, str):
            return self.sampler
        return str(getattr(self.sampler, "__name__", "custom"))

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``autocast`` as :func:`diffsample.sample_many` takes it (None: off)."""
        return _AUTOCAST_DTYPES[self.autocast]

    def sample_many_kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`diffsample.sample_many` this config sets besides the sampler,
        S and the grid: the noise key, chunking, autocast, graph, and the sampler's own
        options that are set (``eta``, ``clip_x0``, ``clip_eps``; unset ones are not passed)."""
        kw: dict[str, Any] = {
            "seed": self.seed,
            "max_batch": self.max_batch,
            "memory_budget": self.memory_budget,
            "autocast": self.autocast_dtype,
            "graph": self.graph,
        }
        options = {"eta": self.eta, "clip_x0": self.clip_x0, "clip_eps": self.clip_eps}
        kw.update((k, v) for k, v in options.items() if v is not None)
        return kw

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready record (:func:`dataclasses.asdict`, the sampler by its name)."""
        return {**dataclasses.asdict(self), "sampler": self.sampler_name}


@dataclasses.dataclass(frozen=True, init=False)
class Scoring:
    """How a split is sampled and scored, and what is kept; checked when built.

    ``Scoring(sampling=SamplingConfig(...), windows=..., ...)``; the sampling fields may also
    come as loose keywords as before (``Scoring(n_samples=100, num_steps=10)``), and read back
    as attributes (``scoring.n_samples`` is ``scoring.sampling.n_samples``); a loose keyword
    that contradicts ``sampling`` is a ValueError naming both.

    Attributes:
        sampling: how the head samples (:class:`~diffsample.forecast.SamplingConfig`: S, K,
            sampler, grid, seed, eta, clipping, autocast, graph, chunking); its ``n_samples``
            and ``seed`` apply to the baselines too.
        windows: score this many windows spread evenly over the split's period, not its first
            ones; None: all.
        batch_size: windows per forecast call.
        baselines: also score the Gaussian (train and validation sigma) and bootstrap baselines
            of the same backbone on the same windows, into the same files.
        save_samples: also write every sample, ``[S, W, H, N]`` float32 (``.npz``), kept in
            memory until then; not under torchrun (each rank keeps only its own).
    """

    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    windows: int | None = None
    batch_size: int = 256
    baselines: bool = True
    save_samples: bool = False

    def __init__(
        self,
        *,
        sampling: SamplingConfig | None = None,
        windows: int | None = None,
        batch_size: int = 256,
        baselines: bool = True,
        save_samples: bool = False,
        n_samples: int | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        spacing: Spacing | None = None,
        seed: int | tuple[int, ...] | None = None,
    ) -> None:
        if save_samples and torchrun_rank_world()[1] > 1:
            raise ValueError(
                "--save-samples: not available under torchrun (the samples stay on the rank that "
                "drew them; only the metric sums are combined): evaluate in one process to keep them"
            )
        s = resolve_sampling(
            sampling,
            n_samples=n_samples,
            num_steps=num_steps,
            sampler=sampler,
            spacing=spacing,
            seed=seed,
        )
        checked = {
            "sampling": s,
            "windows": None if windows is None else check_int("windows", windows),
            "batch_size": check_int("batch_size", batch_size),
            "baselines": check_bool("baselines", baselines),
            "save_samples": check_bool("save_samples", save_samples),
        }
        if baselines and not isinstance(s.seed, int):
            raise TypeError(
                expected(
                    "seed", "an int with baselines (their draws take one), or no baselines", s.seed
                )
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    # the sampling fields, read through (Scoring held them itself before SamplingConfig)
    @property
    def n_samples(self) -> int:
        """S: ``sampling.n_samples``."""
        return self.sampling.n_samples

    @property
    def num_steps(self) -> int:
        """K: ``sampling.num_steps``."""
        return self.sampling.num_steps

    @property
    def sampler(self) -> str:
        """The sampler's name: ``sampling.sampler_name``."""
        return self.sampling.sampler_name

    @property
    def spacing(self) -> Spacing:
        """The grid: ``sampling.spacing``."""
        return self.sampling.spacing

    @property
    def seed(self) -> int | tuple[int, ...]:
        """The noise key: ``sampling.seed``."""
        return self.sampling.seed


def resolve_sampling(
    sampling: SamplingConfig | None,
    *,
    default: SamplingConfig | None = None,
    **given: Any,
) -> SamplingConfig:
    """The config a call samples with, from its ``sampling=`` and its loose keywords.

    Args:
        sampling: the caller's config, or None.
        default: the config without ``sampling`` (None: ``SamplingConfig()``).
        **given: loose keywords named as the fields (None: not given); ``autocast`` may be a
            torch dtype (``torch.bfloat16``, ``torch.float16``), as ``sample_many`` takes it.

    Returns:
        ``sampling`` if given (a loose keyword may repeat its value), else ``default`` with the
        given keywords put in; checked either way.

    Raises:
        ValueError: a loose keyword that differs from ``sampling``'s field, naming both.
        TypeError: ``sampling`` not a SamplingConfig.
    """
    loose = {k: v for k, v in given.items() if v is not None}
    if "autocast" in loose:
        loose["autocast"] = _autocast_name(loose["autocast"])
    if sampling is None:
        return dataclasses.replace(default or SamplingConfig(), **loose)
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(expected("sampling", "a SamplingConfig or None", sampling))
    merged = dataclasses.replace(sampling, **loose)  # the loose values checked and normalised
    for name in loose:
        mine, theirs = getattr(merged, name), getattr(sampling, name)
        if mine != theirs:
            raise ValueError(
                f"{name}, sampling: expected {name} left out or equal to sampling.{name}, got "
                f"{name}={mine!r} and sampling.{name}={theirs!r}"
            )
    return sampling


def check_num_steps(
    num_steps: int,
    num_train_steps: int,
    *,
    name: str = "num_steps",
    t_name: str = "the model's num_train_steps",
) -> int:
    """``num_steps`` if a grid of that many sampling steps fits the model's T training steps.

    Every sampling setting goes through this before any work (``evaluate_split``, ``train``'s
    calibration, the command before training), not at the first sampling call after it.

    Raises:
        ValueError: ``num_steps > num_train_steps``, naming ``name`` and where T comes from.
    """
    steps = check_int(name, num_steps)
    if steps > num_train_steps:
        raise ValueError(
            f"{name}: expected at most T = {num_train_steps} sampling steps ({t_name}), got {steps}"
        )
    return steps


# ---------------------------------------------------------------------------------------- checks
def _sampler_function(sampler: object) -> Sampler:
    """The sampler function of a registry name or a callable."""
    if isinstance(sampler, str):
        check_choice("sampler", sampler, SAMPLERS)
        return SAMPLERS[sampler]
    if not callable(sampler):
        raise TypeError(expected("sampler", "a name in SAMPLERS or a sampler function", sampler))
    return sampler  # a callable; its signature is the caller's


def _takes(fn: Sampler, name: str) -> bool:
    """Whether ``fn`` accepts the keyword ``name`` (or any keyword); True if unknowable."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a callable whose signature cannot be read
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _check_eta(eta: object, sampler: object, fn: Sampler) -> float | None:
    if eta is None:
        return None
    value = check_number("eta", eta, minimum=0)
    if not _takes(fn, "eta"):
        raise ValueError(
            f"eta: expected None with sampler {sampler!r} (which has no eta; ddim has), "
            f"got {value!r}"
        )
    return value


def _check_seed(seed: object) -> int | tuple[int, ...]:
    """The seed as an int or a tuple of ints (a noise key), checked by ``noise_key``."""
    noise_key(seed)  # type: ignore[arg-type]  # noise_key checks the kind
    if isinstance(seed, Sequence):
        return tuple(int(p) for p in seed)
    return int(seed)  # type: ignore[call-overload]  # an integer, noise_key checked


def _check_budget(memory_budget: object) -> int | float | None:
    """An int of bytes, or a float fraction in (0, 1] of free memory (as ``sample_many``)."""
    if memory_budget is None:
        return None
    try:
        if isinstance(memory_budget, numbers.Integral) and not isinstance(memory_budget, bool):
            return check_int("memory_budget", memory_budget)
        return check_number("memory_budget", memory_budget, minimum=0, maximum=1, open_min=True)
    except (TypeError, ValueError) as exc:
        hint = " (bytes as an int, or a fraction of free memory as a float)"
        raise type(exc)(f"{exc}{hint}") from None


def _autocast_name(value: object) -> object:
    """A loose ``autocast`` (a torch dtype, as ``sample_many`` takes it) as the field's name;
    anything else is left for the field's check."""
    if isinstance(value, torch.dtype):
        for name, dtype in _AUTOCAST_DTYPES.items():
            if dtype == value:
                return name
        raise TypeError(
            expected("autocast", "None, torch.bfloat16, torch.float16, 'bf16' or 'fp16'", value)
        )
    return value
