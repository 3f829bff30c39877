"""The checks of scoring a split, made before any window is sampled: the evaluation's
settings, the windows picked, and the memory one forecast call's samples need.

Dimensions: S samples, B windows per forecast call, H horizon, N variates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._utils import check_int, expected
from ..memory import check_fits
from .sampling_config import SamplingConfig, check_num_steps

__all__ = [
    "PEAK_COPIES",
    "check_evaluation_args",
    "check_sampling_memory",
    "check_windows",
    "sampling_bytes",
]

# Sampling and scoring one batch peaks at about three float32 copies of its samples
# [S, B, H, N] (measured on the CPU at S = 200..800, B = 64..256: 3.0x): the sampler's output,
# the forecast's scaled copy, the metrics' sorted copy. A lower bound: a run refused for
# needing more than the memory available could not have run.
PEAK_COPIES = 3


def check_evaluation_args(
    *,
    n_samples: object,
    num_steps: object,
    sampler: object,
    batch_size: object,
    max_windows: object,
    num_train_steps: int | None = None,
) -> tuple[int, int, int, int | None]:
    """The sampling settings of :func:`~diffsample.forecast.evaluate_split`, checked (the
    command checks them before training, so that a bad value fails in a second, not after the
    training it follows). The sampling ones are :class:`SamplingConfig`'s checks.

    Args:
        n_samples: S, as for :func:`~diffsample.forecast.evaluate_split`.
        num_steps: K.
        sampler: a name in :data:`diffsample.SAMPLERS` or a sampler function.
        batch_size: windows per forecast call.
        max_windows: a window count, or None.
        num_train_steps: the model's T, if known: ``num_steps`` may not exceed it.

    Returns:
        ``(n_samples, num_steps, batch_size, max_windows)`` as ints (``max_windows`` may be None).

    Raises:
        TypeError: a non-integer count, a sampler that is neither a name nor a callable.
        ValueError: a count below 1, an unknown sampler name, more steps than T.
    """
    s = SamplingConfig(n_samples=n_samples, num_steps=num_steps, sampler=sampler)  # type: ignore[arg-type]
    if num_train_steps is not None:
        check_num_steps(s.num_steps, num_train_steps)
    return (
        s.n_samples,
        s.num_steps,
        check_int("batch_size", batch_size),
        None if max_windows is None else check_int("max_windows", max_windows),
    )


def sampling_bytes(n_samples: int, windows: int, horizon: int, n_variates: int) -> int:
    """Memory that sampling and scoring one call of ``windows`` windows peaks at, about:
    ``PEAK_COPIES`` float32 copies of the samples ``[S, B, H, N]``."""
    return PEAK_COPIES * n_samples * windows * horizon * n_variates * 4


def check_sampling_memory(
    needed: int,
    device: str | torch.device,
    *,
    name: str,
    what: str,
    hint: str,
) -> None:
    """ValueError if ``needed`` bytes exceed what ``device`` has available
    (:func:`diffsample.memory.check_fits`), before anything is allocated.

    Args:
        needed: bytes (e.g. :func:`sampling_bytes`).
        device: where they would be allocated.
        name: the argument(s) to blame.
        what: what needs them, e.g. ``"100 samples x 256 windows x [96, 7] (H, N)"``.
        hint: what to lower.
    """
    check_fits(needed, device, name=name, what=what, hint=hint, purpose=" to sample and score")


def check_windows(windows: object, n_split: int, max_windows: object) -> torch.Tensor | None:
    """``windows`` as a long tensor ``[n]`` of ascending, distinct split indices, or None."""
    if windows is None:
        return None
    if max_windows is not None:
        raise ValueError("windows, max_windows: expected one of them, got both")
    if isinstance(windows, (str, bytes)) or not isinstance(windows, (torch.Tensor, Sequence)):
        raise TypeError(expected("windows", "a sequence or tensor of split indices", windows))
    t = torch.as_tensor(windows)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim != 1 or t.numel() == 0:
        raise TypeError(expected("windows", "a non-empty 1-D sequence of integer indices", t))
    t = t.long().cpu()
    if int(t.min()) < 0 or int(t.max()) >= n_split or bool((t[1:] <= t[:-1]).any()):
        raise ValueError(
            f"windows: expected ascending, distinct indices in 0..{n_split - 1}, got "
            f"{t[:8].tolist()}{'...' if t.numel() > 8 else ''}"
        )
    return t
