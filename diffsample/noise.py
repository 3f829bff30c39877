"""Counter-based Gaussian noise keyed by (seed, condition id, sample index, step).

Dimensions: B conditions, S samples, M rows, E event shape (P = prod(E) elements per row).

Why not ``torch.randn`` with a generator: a generator's stream is consumed in call order, so
the noise a row receives depends on which rows share its call (chunk position, batch size,
test-batch composition). Here every element is a pure function of

    (seed, condition id, sample index, step, element index)

computed with integer hashing in ordinary tensor ops, on any device, so ``sample_many`` gives
the same x_T bit for bit whatever the chunking, and a window keeps its noise whatever test
batch it is scored in.

Construction. ``mix`` is Wellons' lowbias32 integer hash, a bijection on 32-bit words,
evaluated in int64 so nothing overflows (both multipliers are < 2**31, operands < 2**32):

    cond_key  = mix(mix(mix(mix(seed_lo ^ C) ^ seed_hi) ^ id_lo) ^ id_hi)
    row_key   = mix(cond_key ^ mix(sample + C'))
    step_key  = mix(row_key ^ mix(step + 1 + C''))
    bits[e]   = mix(step_key ^ mix(e + C'''))
    noise[e]  = sqrt(2) * erfinv(2 u - 1),   u = (bits >> 9 + 1/2) / 2**23  in (0, 1)

For a fixed condition each stage is a bijection of the one before, so two samples of one
condition never share a key at any step (no birthday collisions where they would matter).
The 23-bit uniform keeps float32 exact and bounds |noise| by 5.3; the cost is one hash per
element (measured in ``benchmarks/bench_sampling.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._utils import check_int, check_tensor, expected

__all__ = ["NoiseSampler", "keyed_normal", "keyed_normal_steps", "noise_key", "row_keys"]

NoiseSampler = Callable[[int], torch.Tensor]  # step index -> standard normal noise shaped like x

_MASK32 = 0xFFFFFFFF
_C_SEED, _C_SAMPLE, _C_STEP, _C_ELEMENT = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F
_C_FOLD = 0x165667B1
_MAX_KEY_PARTS = 64


def mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2**32): a bijection of 32-bit words."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def mix_int(x: int) -> int:
    """``mix`` on one Python int (host side: no tensor, no device transfer)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & _MASK32
    x ^= x >> 15
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """``mix`` in place on int32 tensors holding the 32-bit words as bit patterns: the
    per-element stage, half the memory traffic of int64. Right shifts are masked to be logical
    and products wrap modulo 2**32, so the bits equal ``mix``'s (tested against it)."""
    x.bitwise_xor_((x >> 16) & 0xFFFF)
    x.mul_(0x21F0AAAD)
    x.bitwise_xor_((x >> 15) & 0x1FFFF)
    x.mul_(0x735A2D97)
    return x.bitwise_xor_((x >> 15) & 0x1FFFF)


def _to_int32(v: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2**32) as int32 bit patterns (two's complement)."""
    return (v - ((v >> 31) << 32)).to(torch.int32)


@functools.lru_cache(maxsize=16)
def _element_keys(P: int, device: torch.device) -> torch.Tensor:
    """The element words ``mix(e + C_ELEMENT)``, e = 0..P-1, as int32 bit patterns ``[P]``
    (the same at every step, so computed once per size and device)."""
    e = torch.arange(P, device=device, dtype=torch.long)
    return _to_int32(mix((e + _C_ELEMENT) & _MASK32))


def noise_key(seed: int | Sequence[int]) -> int:
    """One 64-bit seed from an int or a tuple of ints: ``noise_key((seed, step))``.

    An int is taken modulo 2**64 (``noise_key(s) == s % 2**64``, and ``(s,)`` equals ``s``).
    A tuple folds each further part into the key with the 32-bit hash, so ``(seed, 0)``,
    ``(seed, 1)``, ... key independent draws: the way to mark the calls of an autoregressive
    or rolling loop as different draws while a rerun stays bit-reproducible.

    Args:
        seed: an int, or a non-empty tuple or list of at most 64 ints (any sign, any size).

    Returns:
        The key, an int in [0, 2**64).
    """
    if isinstance(seed, (str, bytes)) or not isinstance(seed, (Sequence, int, np.integer)):
        raise TypeError(expected("seed", "an int or a tuple of ints (a noise key)", seed))
    if not isinstance(seed, Sequence):
        return check_int("seed", seed, minimum=None) % (1 << 64)
    if not 1 <= len(seed) <= _MAX_KEY_PARTS:
        raise ValueError(
            f"seed: expected a tuple of 1..{_MAX_KEY_PARTS} ints (a noise key), got {len(seed)} parts"
        )
    parts = [check_int(f"seed[{i}]", p, minimum=None) % (1 << 64) for i, p in enumerate(seed)]
    h = parts[0]
    for p in parts[1:]:
        lo = mix_int(mix_int((h & _MASK32) ^ _C_FOLD) ^ (p & _MASK32))
        hi = mix_int(mix_int((h >> 32) ^ lo) ^ (p >> 32))
        h = (hi << 32) | lo
    return h


def _words(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high 32-bit words of an int64 tensor (two's complement for negatives)."""
    v = v.long()
    return v & _MASK32, (v >> 32) & _MASK32


def row_keys(
    seed: int | Sequence[int], cond_ids: torch.Tensor, sample_ids: torch.Tensor
) -> torch.Tensor:
    """Keys ``[M]`` for rows given by their condition ids ``[M]`` and sample indices ``[M]``.

    Args:
        seed: any Python int (taken modulo 2**64), or a tuple of ints (see :func:`noise_key`).
        cond_ids: ``[M]`` integer condition id of each row (e.g. a global window index).
        sample_ids: ``[M]`` integer sample index of each row, 0 <= s < 2**32.

    Returns:
        ``[M]`` int64 keys holding 32-bit words, for :func:`keyed_normal`.
    """
    seed = noise_key(seed)
    _check_ids("cond_ids", cond_ids)
    _check_ids("sample_ids", sample_ids)
    if cond_ids.shape != sample_ids.shape:
        raise ValueError(
            expected("sample_ids", f"shape {tuple(cond_ids.shape)} (as cond_ids)", sample_ids)
        )
    seed_key = mix_int(mix_int(seed ^ _C_SEED) ^ (seed >> 32))  # host int
    id_lo, id_hi = _words(cond_ids)
    key = mix(mix(id_lo ^ seed_key) ^ id_hi)  # [M] cond_key
    return mix(key ^ mix((sample_ids.long() + _C_SAMPLE) & _MASK32))  # [M] row_key


def keyed_normal(
    keys: torch.Tensor,
    step: int,
    event_shape: Sequence[int] | torch.Size,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise ``[M, *E]`` for rows ``keys [M]`` at sampler step ``step`` (-1: x_T).

    Pure function of its arguments: the same key, step and element index give the same value
    on any call, in any batch.

    Args:
        keys: ``[M]`` row keys from :func:`row_keys`.
        step: the sampler step i >= 0, -1 for the initial noise x_T; steps below -1 key
            further streams of a row (``sample_many`` draws the forward noise of known values
            at step i as step ``-2 - i``).
        event_shape: E.
        dtype: of the result; the noise is made in float32 and cast.

    Returns:
        ``[M, *E]`` standard normal noise (|z| < 5.3).
    """
    E = _check_keys_and_shape(keys, event_shape)
    step = check_int("step", step, minimum=_MIN_STEP, maximum=_MAX_STEP)
    # [M]; the step word stays a host int (no transfer)
    step_keys = mix(keys ^ mix_int(step + 1 + _C_STEP))  # [M]
    return _normal(step_keys, E).reshape(keys.shape[0], *E).to(dtype)


def keyed_normal_steps(
    keys: torch.Tensor,
    first: int,
    count: int,
    event_shape: Sequence[int] | torch.Size,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The noise of ``count`` consecutive steps in one call: ``[count, M, *E]``, entry j equal
    bit for bit to ``keyed_normal(keys, first + j, event_shape)``. Fewer, larger tensor ops
    than one call per step (``sample_many`` draws a stochastic sampler's noise in such blocks).

    Args:
        keys: ``[M]`` row keys from :func:`row_keys`.
        first: the first step (as ``step`` of :func:`keyed_normal`).
        count: the number of steps, >= 1.
        event_shape: E.
        dtype: of the result.

    Returns:
        ``[count, M, *E]`` standard normal noise.
    """
    E = _check_keys_and_shape(keys, event_shape)
    first = check_int("first", first, minimum=_MIN_STEP, maximum=_MAX_STEP)
    count = check_int("count", count, maximum=_MAX_STEP - first + 1)
    steps = torch.arange(first, first + count, device=keys.device)  # [count], no host copy
    words = mix((steps + 1 + _C_STEP) & _MASK32)  # [count]: mix_int of each step, on the device
    step_keys = mix(keys[None, :] ^ words[:, None])  # [count, M]
    return _normal(step_keys, E).reshape(count, keys.shape[0], *E).to(dtype)


_MIN_STEP, _MAX_STEP = -(1 << 31), (1 << 31) - 2


def _check_keys_and_shape(keys: object, event_shape: object) -> tuple[int, ...]:
    keys = _check_ids("keys", keys)
    if keys.ndim != 1:
        raise ValueError(expected("keys", "a 1-D tensor [M] from row_keys", keys))
    if isinstance(event_shape, (str, bytes)) or not isinstance(event_shape, Sequence):
        raise TypeError(expected("event_shape", "a sequence of positive integers", event_shape))
    return tuple(check_int(f"event_shape[{i}]", d) for i, d in enumerate(event_shape))


def _normal(step_keys: torch.Tensor, E: tuple[int, ...]) -> torch.Tensor:
    """The per-element stage: float32 normals ``[*step_keys.shape, P]`` from step keys (int64
    words), bits[e] = mix(step_key ^ mix(e + C_ELEMENT)), computed on int32 bit patterns."""
    P = math.prod(E)
    k = _to_int32(step_keys).unsqueeze(-1)  # [..., 1]
    bits = _mix32_(k ^ _element_keys(P, step_keys.device))  # [..., P]
    # 2u - 1 with u = ((bits >> 9) + 1/2) / 2**23 in (0, 1): every operation exact in float32
    v = ((bits >> 9) & 0x7FFFFF).to(torch.float32).mul_(2.0**-22).add_(2.0**-23 - 1.0)
    return torch.erfinv(v).mul_(math.sqrt(2.0))


def _check_ids(name: str, ids: object) -> torch.Tensor:
    """``ids`` if it is an integer tensor (host-side dtype check only: no device sync)."""
    ids = check_tensor(name, ids)
    if ids.is_floating_point():
        raise TypeError(expected(name, "an integer tensor", ids))
    return ids
