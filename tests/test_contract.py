"""The sampling contract ported forecasters need: new noise by default and keys for loops,
known values (imputation), the prior mean (CARD), both x0-clip conventions and dynamic
thresholding (against slow float64 references; diffusers in tests/test_diffusers.py), the
cached memory probe, and the output-size and device checks."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from diffsample import NoiseSchedule, sample_ddim, sample_ddpm, sample_many
from diffsample.batching import clear_plan_cache
from diffsample.noise import keyed_normal, noise_key, row_keys
from diffsample.prediction import DynamicThreshold
from diffsample.samplers import SAMPLERS, Known

SCH = NoiseSchedule.linear(100)
E = (6, 2)


def toy(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
    """A smooth nonlinear eps-model of size ~1."""
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / 100
    return torch.tanh(x) * (0.5 + tt) + 0.1 * torch.sin(3 * x * tt)


def mixing(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
    """``toy`` plus a term that couples every element of a row (as a real network does)."""
    return toy(x, t) + 0.3 * torch.tanh(x.flatten(1).mean(1)).reshape(-1, *([1] * (x.ndim - 1)))


def many(**kw):
    kw.setdefault("schedule", SCH)
    kw.setdefault("timesteps", SCH.timesteps(10))
    kw.setdefault("progress", False)
    sampler = kw.pop("sampler", "ddpm")
    return sample_many(sampler, kw.pop("denoiser", toy), E, kw.pop("S", 5), **kw)


# ---------------------------------------------------------------- noise: defaults and keys
def test_default_seed_draws_new_noise_and_follows_torch_manual_seed():
    torch.manual_seed(3)
    a, b = many(cond_ids=torch.arange(4)), many(cond_ids=torch.arange(4))
    assert not torch.equal(a, b)  # two calls, two draws
    torch.manual_seed(3)
    assert torch.equal(many(cond_ids=torch.arange(4)), a)  # a script is reproducible
    keyed = many(cond_ids=torch.arange(4), seed=5)
    assert torch.equal(many(cond_ids=torch.arange(4), seed=5), keyed)


def test_noise_keys_fold_tuples_and_keep_ints():
    assert noise_key(7) == 7 and noise_key((7,)) == 7 and noise_key(-1) == 2**64 - 1
    keys = {noise_key((7, h)) for h in range(1000)} | {noise_key(7)}
    assert len(keys) == 1001  # every step of a loop its own key
    assert noise_key((7, 1)) != noise_key((1, 7)) and noise_key((7, 0, 0)) != noise_key((7, 0))
    ids, s = torch.arange(3), torch.zeros(3, dtype=torch.long)
    assert torch.equal(row_keys((7,), ids, s), row_keys(7, ids, s))
    assert not torch.equal(row_keys((7, 1), ids, s), row_keys(7, ids, s))
    a = many(cond_ids=torch.arange(4), seed=(7, 1))
    assert torch.equal(many(cond_ids=torch.arange(4), seed=[7, 1]), a)  # a list is the same key
    assert not torch.equal(many(cond_ids=torch.arange(4), seed=(7, 2)), a)


def _rollout(seed_of, H=8, S=3000):
    """An autoregressive loop (TimeGrad's shape): one call per horizon step, per-path
    conditions (S paths, n_samples = 1), each step conditioned on the path's last draw."""
    prev, path = torch.zeros(S, 1), []

    def den(x, t, *, prev):
        return 0.1 * torch.tanh(x + 0.5 * prev)

    for h in range(H):
        y = sample_many("ddpm", den, (1,), 1, cond={"prev": prev}, schedule=SCH,
                        timesteps=SCH.timesteps(5), seed=seed_of(h), progress=False)  # fmt: skip
        prev = y[0]  # [S, 1]
        path.append(prev)
    return torch.cat(path, 1)  # [S, H]


def _lag1(y: torch.Tensor) -> float:
    return float(
        torch.stack([torch.corrcoef(y[:, h : h + 2].T)[0, 1] for h in range(y.shape[1] - 1)]).mean()
    )


def test_an_autoregressive_loop_draws_new_noise_per_step_and_reruns_bit_for_bit():
    torch.manual_seed(0)
    fresh = _rollout(lambda h: None)
    keyed = _rollout(lambda h: (11, h))
    one_key = _rollout(lambda h: 11)  # the 0.4.0 default: every call replays one key
    bound = 5 / math.sqrt(3000 * 7)  # 5 standard errors of a mean of 7 correlations
    assert abs(_lag1(fresh)) < bound + 0.02 and abs(_lag1(keyed)) < bound + 0.02
    assert _lag1(one_key) > 0.9
    assert torch.equal(_rollout(lambda h: (11, h)), keyed)
    torch.manual_seed(0)
    assert torch.equal(_rollout(lambda h: None), fresh)


# ---------------------------------------------------------------- known values
def _repaint_ddpm(den, x, grid, known, mask, z, k):
    """Slow float64 reference: DDPM (beta-tilde) with the known values forward-noised to t_i
    and put into x before each denoiser call (RePaint), and exact at the end."""
    abar = SCH.alphas_cumprod
    for i, t in enumerate(grid):
        a_t = float(abar[t])
        x = torch.where(mask, math.sqrt(a_t) * known + math.sqrt(1 - a_t) * k[i], x)
        x0 = (x - math.sqrt(1 - a_t) * den(x, torch.full((x.shape[0],), t))) / math.sqrt(a_t)
        if i == len(grid) - 1:
            x = x0
            break
        a_s = float(abar[grid[i + 1]])
        c0 = math.sqrt(a_s) * (1 - a_t / a_s) / (1 - a_t)
        ct = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
        var = (1 - a_t / a_s) * (1 - a_s) / (1 - a_t)
        x = c0 * x0 + ct * x + math.sqrt(var) * z[i]
    return torch.where(mask, known, x)


def test_known_values_match_a_slow_repaint_reference():
    g = torch.Generator().manual_seed(0)
    M, K = 7, 12
    x = torch.randn(M, *E, generator=g, dtype=torch.float64)
    known = 2 * torch.randn(M, *E, generator=g, dtype=torch.float64)
    mask = torch.rand(M, *E, generator=g) < 0.4
    z = [torch.randn(M, *E, generator=g, dtype=torch.float64) for _ in range(K)]
    k = [torch.randn(M, *E, generator=g, dtype=torch.float64) for _ in range(K)]
    grid = SCH.timesteps(K, "linspace")
    ref = _repaint_ddpm(mixing, x.clone(), grid.tolist(), known, mask, z, k)

    def noise(i: int) -> torch.Tensor:
        return z[i] if i >= 0 else k[-2 - i]

    out = sample_ddpm(mixing, x, SCH, grid, known=Known(known, mask), noise_sampler=noise)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert torch.equal(out[mask], known[mask])
    free = sample_ddpm(mixing, x, SCH, grid, noise_sampler=noise)
    assert float((free - out)[~mask].abs().max()) > 0.01  # the known values steer the rest


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_known_values_do_not_depend_on_the_chunking(sampler):
    g = torch.Generator().manual_seed(1)
    B = 4
    values = torch.randn(B, *E, generator=g)
    mask = torch.rand(B, *E, generator=g) < 0.5
    values[~mask] = float("nan")  # never read outside the mask
    kw = dict(sampler=sampler, denoiser=mixing, known_values=values, known_mask=mask, seed=3, S=6)
    ref = many(**kw)
    assert torch.equal(ref[:, mask], values[mask].expand(6, -1))
    assert bool(torch.isfinite(ref).all())
    for mb in (1, 5, 24):
        torch.testing.assert_close(many(max_batch=mb, **kw), ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(many(**{**kw, "known_mask": torch.zeros_like(mask)}), ref)


def test_known_values_bad_input():
    v, m = torch.zeros(3, *E), torch.zeros(3, *E, dtype=torch.bool)
    with pytest.raises(ValueError, match="known_values, known_mask: expected both"):
        many(known_values=v)
    with pytest.raises(TypeError, match="known_mask: expected a bool tensor"):
        many(known_values=v, known_mask=m.float())
    with pytest.raises(ValueError, match=r"known_values: expected shape \[B, 6, 2\]"):
        many(known_values=v[:, :3], known_mask=m[:, :3])
    with pytest.raises(ValueError, match=r"known_values: expected finite values where known_mask"):
        many(known_values=v.masked_fill(m.logical_not(), 0).index_fill(0, torch.tensor([1]),
             float("nan")), known_mask=m.logical_not())  # fmt: skip
    with pytest.raises(TypeError, match="are set by sample_many itself"):
        many(known=Known(v, m))
    with pytest.raises(TypeError, match="known: expected Known"):
        sample_ddpm(toy, torch.zeros(3, *E), SCH, SCH.timesteps(3), known=v)
    with pytest.raises(TypeError, match=r"known\.mask: expected a bool tensor"):
        sample_ddpm(toy, torch.zeros(3, *E), SCH, SCH.timesteps(3), known=Known(v, v))


# ---------------------------------------------------------------- prior mean (CARD)
def test_prior_mean_starts_at_mu_and_equals_the_direct_sampler():
    g = torch.Generator().manual_seed(2)
    B, S = 3, 4
    mu = 50 + torch.randn(B, *E, generator=g)
    seen = []

    def den(x, t):
        seen.append(x.detach().clone())
        return toy(x - 50, t)

    out = many(denoiser=den, prior_mean=mu, seed=9, S=S, max_batch=5)
    first = torch.cat(seen[: math.ceil(S * B / 5) * 0 + 1])  # the first chunk's x_T
    assert abs(float(first.mean()) - 50) < 1.0  # the denoiser sees data-space x_T ~ N(mu, I)
    # the same as the direct sampler on x_T = keyed noise + mu, rows r = sample r // B
    ids = torch.arange(B).repeat(S)
    keys = row_keys(9, ids, torch.arange(S * B) // B)
    direct = sample_ddpm(
        den,
        keyed_normal(keys, -1, E) + mu.repeat(S, 1, 1),
        SCH,
        SCH.timesteps(10),
        prior_mean=mu.repeat(S, 1, 1),
        noise_sampler=functools.partial(keyed_normal, keys, event_shape=E),
    )
    torch.testing.assert_close(out.reshape(S * B, *E), direct, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(many(denoiser=den, prior_mean=mu, seed=9, S=S), out)
    assert float((out.mean((0,)) - mu).abs().mean()) < 3  # samples around mu, not around 0


def test_a_zero_prior_mean_changes_nothing():
    for name in sorted(SAMPLERS):
        a = many(sampler=name, seed=1, cond_ids=torch.arange(2))
        b = many(sampler=name, seed=1, prior_mean=torch.zeros(2, *E))
        assert torch.equal(a, b), name


def test_prior_mean_bad_input():
    with pytest.raises(ValueError, match=r"prior_mean: expected shape \[B, 6, 2\]"):
        many(prior_mean=torch.zeros(2, 6))
    with pytest.raises(TypeError, match="prior_mean: expected a floating-point tensor"):
        many(prior_mean=torch.zeros(2, *E, dtype=torch.long))
    with pytest.raises(ValueError, match="prior_mean: expected finite values"):
        many(prior_mean=torch.full((2, *E), float("inf")))
    with pytest.raises(ValueError, match="prior_mean: expected a tensor broadcastable"):
        sample_ddpm(toy, torch.zeros(3, *E), SCH, SCH.timesteps(3), prior_mean=torch.zeros(2, *E))


# ---------------------------------------------------------------- x0 clipping
def _ddim_clipped_ref(den, x, grid, c, rule):
    """Slow float64 DDIM (eta = 0) with x0 clamped to [-c, c]; the direction term takes the
    network's eps ("raw") or the eps of the clamped x0 ("rederive")."""
    abar = SCH.alphas_cumprod
    for i, t in enumerate(grid):
        a_t = float(abar[t])
        a_s = float(abar[grid[i + 1]]) if i + 1 < len(grid) else 1.0
        eps = den(x, torch.full((x.shape[0],), t))
        x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-c, c)
        if rule == "rederive":
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        x = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps
    return x


def test_ddim_clip_conventions_match_slow_references():
    x = torch.randn(9, *E, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = SCH.timesteps(8)
    refs = {}
    for rule in ("raw", "rederive"):
        refs[rule] = _ddim_clipped_ref(mixing, x, grid.tolist(), 1.2, rule)
        out = sample_ddim(mixing, x, SCH, grid, clip_x0=1.2, clip_eps=rule)
        torch.testing.assert_close(out, refs[rule], rtol=0, atol=1e-12)
    assert float((refs["raw"] - refs["rederive"]).abs().max()) > 1e-3  # 1e9 x the tolerance


def test_clip_convention_does_not_matter_where_the_update_uses_x0_only():
    x = 2 * torch.randn(9, *E, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for name in ("ddpm", "dpmpp_2m", "dpmpp_3m"):
        g = [torch.Generator().manual_seed(6) for _ in range(3)]
        a, b, c = (
            SAMPLERS[name](toy, x, SCH, SCH.timesteps(8), clip_x0=0.8, clip_eps=rule, generator=gi)
            for rule, gi in zip(("raw", "rederive", None), g, strict=True)
        )
        assert torch.equal(a, b) and torch.equal(a, c), name


def _threshold_ref(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's rule row by row with a sort-based quantile (linear interpolation)."""
    out = torch.empty_like(x0)
    for r in range(x0.shape[0]):
        a = x0[r].abs().flatten().sort().values
        pos = ratio * (a.numel() - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, a.numel() - 1)
        q = float(a[lo] + (pos - lo) * (a[hi] - a[lo]))
        s = min(max(q, 1.0), max_value)
        out[r] = x0[r].clamp(-s, s) / s
    return out


def test_dynamic_threshold_matches_a_slow_reference():
    x0 = 3 * torch.randn(20, 4, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x0[0] *= 0.1  # a row whose quantile is below 1: s = 1, a plain clamp at 1
    for ratio, max_value in ((0.995, 1.0), (0.9, 2.5), (0.5, 10.0)):
        rule = DynamicThreshold(ratio, max_value)
        torch.testing.assert_close(
            rule(x0), _threshold_ref(x0, ratio, max_value), rtol=0, atol=1e-12
        )
    assert rule(x0.float()).dtype == torch.float32 and rule(x0.half()).dtype == torch.float16
    with pytest.raises(ValueError, match=r"ratio: expected a finite number in \(0, 1\]"):
        DynamicThreshold(ratio=0.0)
    with pytest.raises(ValueError, match="max_value: expected a finite number >= 1"):
        DynamicThreshold(max_value=0.5)


# ---------------------------------------------------------------- the plan cache
class Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(12, 12)
        self.rows: list[int] = []

    def forward(self, x, t):
        self.rows.append(x.shape[0])
        return self.lin(x.flatten(1).float()).view_as(x).to(x.dtype)


def test_a_loop_of_calls_probes_once():
    clear_plan_cache()
    net = Counting()
    kw = dict(denoiser=net, S=100, cond_ids=torch.arange(3), memory_budget=2**22, seed=0)
    with torch.no_grad():
        first = many(**kw)
        probes = net.rows[:2]
        net.rows.clear()
        again = many(**kw)
    assert probes == [16, 64]
    assert len(net.rows) == 10 * math.ceil(300 / max(net.rows))  # chunks x steps, no probe
    assert torch.equal(first, again)
    net.rows.clear()
    with torch.no_grad():
        many(**{**kw, "dtype": torch.float64})  # another dtype: another probe
    assert net.rows[:2] == [16, 64]
    clear_plan_cache()
    net.rows.clear()
    with torch.no_grad():
        many(**kw)
    assert net.rows[:2] == [16, 64]


def test_an_out_of_memory_chunk_lowers_the_cached_limit():
    clear_plan_cache()
    net = Counting()

    def den(x, t):
        if x.shape[0] > 40:
            raise torch.OutOfMemoryError("fake: more than 40 rows")
        return net(x, t)

    kw = dict(denoiser=den, S=100, cond_ids=torch.arange(3), memory_budget=2**22, seed=0)
    with torch.no_grad():
        many(**kw)  # the probe backs off at 64 rows, then the chunk size is capped
        net.rows.clear()
        many(**kw)
    assert max(net.rows) <= 40 and len(net.rows) == 10 * math.ceil(300 / max(net.rows))


# ---------------------------------------------------------------- sizes and devices
def test_an_output_larger_than_memory_is_refused_before_any_allocation():
    calls = []

    def den(x, t):
        calls.append(x.shape[0])
        return x

    with pytest.raises(
        ValueError,
        match=r"n_samples: the output of 1000000000 samples x 4 conditions x 672 values need about 9\.8 TiB",
    ):
        sample_many("ddim", den, (96, 7), 10**9, schedule=SCH, timesteps=SCH.timesteps(3),
                    cond_ids=torch.arange(4), memory_budget=2**20)  # fmt: skip
    assert calls == []


def test_device_strings_are_checked():
    with pytest.raises(ValueError, match=r"device: expected a device such as 'cpu', .*got 'bogus'"):
        many(device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(
            ValueError, match=r"device: expected a device this machine has, got 'cuda'"
        ):
            many(device="cuda")
    with pytest.raises(TypeError, match=r"device: expected a device such as 'cpu'"):
        many(device=0.5)


# ---------------------------------------------------------------- atomic writes
def test_atomic_write_names_the_file_and_follows_the_umask_of_the_moment(tmp_path):
    import errno
    import os
    import stat

    from diffsample._utils import atomic_write

    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "model.pt"
    with pytest.raises(OSError, match=r"No space left on device: '.*model\.pt'") as info:
        atomic_write(target, full)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temp file
    old = os.umask(0o077)  # set after import: a umask read once at import would miss it
    try:
        atomic_write(target, lambda f: f.write(b"ok"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, lambda f: f.write(b"ok"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~old


def test_sample_many_reports_progress_off_a_terminal_when_asked(capsys, monkeypatch):
    monkeypatch.setenv("DIFFSAMPLE_PROGRESS_INTERVAL", "0")  # a line at every update
    many(seed=0, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("sample_many: 1/10 steps") and err[-1].startswith("sample_many: 10/10")
    many(seed=0)  # None: quiet off a terminal
    assert capsys.readouterr().err == ""
