"""Keyed noise: the hash against a uint32 numpy reference, purity, independence, normality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsample.noise import keyed_normal, mix, mix_int, row_keys


def lowbias32_reference(x: np.ndarray) -> np.ndarray:
    """Wellons' lowbias32 in native uint32 arithmetic (wrapping multiply)."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x21F0AAAD)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x735A2D97)
    x ^= x >> np.uint32(15)
    return x


def test_mix_matches_uint32_reference_and_is_a_bijection_sample():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.integers(0, 2**32, 100_000, dtype=np.uint64), [0, 1, 2**32 - 1]])
    got = mix(torch.from_numpy(v.astype(np.int64))).numpy()
    np.testing.assert_array_equal(got, lowbias32_reference(v).astype(np.int64))
    distinct = np.unique(v).size
    assert np.unique(got).size == distinct  # injective on the sample
    assert [mix_int(int(a)) for a in v[:200]] == got[:200].tolist()  # the host twin agrees


def test_keyed_normal_is_pure_and_independent_of_batch_composition():
    keys = row_keys(17, torch.arange(40) % 5, torch.arange(40) // 5)
    full = keyed_normal(keys, 3, (6, 2))
    assert full.shape == (40, 6, 2) and full.dtype == torch.float32
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keyed_normal(keys[perm], 3, (6, 2)), full[perm])
    assert torch.equal(keyed_normal(keys[7:9], 3, (6, 2)), full[7:9])
    assert not torch.equal(keyed_normal(keys, 4, (6, 2)), full)  # another step, other noise
    assert torch.equal(keyed_normal(keys, 3, (6, 2), dtype=torch.float64), full.double())


def test_keys_depend_on_every_part_and_never_collide_within_a_condition():
    base = row_keys(0, torch.zeros(3, dtype=torch.long), torch.arange(3))
    assert not torch.equal(row_keys(1, torch.zeros(3, dtype=torch.long), torch.arange(3)), base)
    assert not torch.equal(row_keys(0, torch.ones(3, dtype=torch.long), torch.arange(3)), base)
    assert not torch.equal(
        row_keys(0, torch.full((3,), 2**40), torch.arange(3)),
        row_keys(0, torch.zeros(3, dtype=torch.long), torch.arange(3)),
    )
    assert not torch.equal(row_keys(2**33, torch.zeros(3, dtype=torch.long), torch.arange(3)), base)
    many = row_keys(5, torch.full((200_000,), 12345), torch.arange(200_000))
    assert torch.unique(many).numel() == 200_000  # bijective chain: no two samples share a key


def test_keyed_normal_is_standard_normal():
    keys = row_keys(0, torch.arange(400), torch.zeros(400, dtype=torch.long))
    z = keyed_normal(keys, -1, (500,)).double()  # 200k draws
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    skew, kurt = float((z**3).mean()), float((z**4).mean())
    assert abs(skew) < 5 * math.sqrt(15 / n) and abs(kurt - 3) < 5 * math.sqrt(96 / n)
    # Kolmogorov-Smirnov distance to N(0, 1); the 1e-6 critical value is about 2.7 / sqrt(n)
    x = np.sort(z.flatten().numpy())
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 2.7 / math.sqrt(n)
    assert float(z.abs().max()) < 5.4  # the 23-bit uniform bounds the tails at 5.3


def test_no_correlation_between_rows_steps_and_elements():
    keys = row_keys(
        3, torch.zeros(2000, dtype=torch.long), torch.arange(2000)
    )  # 2000 samples, one condition
    a, b = keyed_normal(keys, 0, (256,)).double(), keyed_normal(keys, 1, (256,)).double()
    bound = 5 / math.sqrt(a.numel())

    def corr(u, v):
        return float(((u - u.mean()) * (v - v.mean())).mean() / (u.std() * v.std()))

    assert abs(corr(a[:-1], a[1:])) < bound  # neighbouring samples
    assert abs(corr(a, b)) < bound  # consecutive steps
    assert abs(corr(a[:, :-1], a[:, 1:])) < bound  # neighbouring elements
    # rows whose keys differ by a fixed xor still decorrelate (the per-element stage is one hash)
    k2 = keys ^ 1
    assert abs(corr(keyed_normal(k2, 0, (256,)).double(), a)) < bound


def test_bad_input_messages():
    keys = row_keys(0, torch.arange(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"step: expected an integer in -2147483648\.\.2147483646"):
        keyed_normal(keys, 1.0, (4,))
    with pytest.raises(ValueError, match=r"step: expected an integer in .*, got int -2147483649"):
        keyed_normal(keys, -(2**31) - 1, (4,))
    with pytest.raises(TypeError, match="keys: expected an integer tensor"):
        keyed_normal(keys.double(), 0, (4,))
    with pytest.raises(ValueError, match=r"event_shape\[1\]: expected a positive integer"):
        keyed_normal(keys, 0, (4, 0))
    with pytest.raises(TypeError, match="cond_ids: expected an integer tensor"):
        row_keys(0, torch.zeros(3), torch.arange(3))
    with pytest.raises(ValueError, match=r"sample_ids: expected shape \(3,\) \(as cond_ids\)"):
        row_keys(0, torch.arange(3), torch.arange(4))
    with pytest.raises(TypeError, match="seed: expected an int or a tuple of ints"):
        row_keys(0.5, torch.arange(3), torch.arange(3))
    with pytest.raises(TypeError, match=r"seed\[1\]: expected an integer, got float 1\.5"):
        row_keys((0, 1.5), torch.arange(3), torch.arange(3))
    with pytest.raises(ValueError, match=r"seed: expected a tuple of 1\.\.64 ints"):
        row_keys((), torch.arange(3), torch.arange(3))


def test_element_stage_and_step_blocks_equal_the_int64_definition():
    """The per-element stage runs on int32 bit patterns (masked shifts, wrapping products) and
    a block of steps in one call; both must give the bits of the int64 definition."""
    from diffsample.noise import _C_ELEMENT, _C_STEP, _MASK32, keyed_normal_steps, mix, mix_int

    def reference(keys, step, E):  # the construction of the module docstring, in int64
        P = math.prod(E)
        step_key = mix(keys ^ mix_int(step + 1 + _C_STEP))
        elem = mix((torch.arange(P) + _C_ELEMENT) & _MASK32)
        bits = mix(step_key[:, None] ^ elem[None, :])
        u = ((bits >> 9).to(torch.float32) + 0.5) * 2.0**-23
        return (torch.erfinv(2 * u - 1) * math.sqrt(2.0)).reshape(len(keys), *E)

    keys = row_keys(123, torch.arange(3000) % 37, torch.arange(3000) // 37)
    for step in (-1, 0, 5, -7, 999, 2**31 - 2):
        assert torch.equal(keyed_normal(keys, step, (24, 3)), reference(keys, step, (24, 3)))
    block = keyed_normal_steps(keys[:50], -3, 6, (4, 5), dtype=torch.float64)
    assert block.shape == (6, 50, 4, 5) and block.dtype == torch.float64
    for j in range(6):
        assert torch.equal(block[j], keyed_normal(keys[:50], -3 + j, (4, 5), dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"count: expected an integer in 1\.\.2147483647, got int 0"
    ):
        keyed_normal_steps(keys, 0, 0, (4,))
