"""sample_many: chunking does not change results, conditions keep their noise, OOM back-off
(in the loop and in the memory probe), memory planning, non-finite values, bad input."""

from __future__ import annotations

import pytest
import torch

from diffsample import NoiseSchedule, batching, plan_chunk, sample_ddim, sample_many

SCH = NoiseSchedule.linear(200)
E = (5, 3)


class CondDenoiser(torch.nn.Module):
    """A small nonlinear eps-model: x_t [M, 5, 3], t [M], z [M, 4] -> [M, 5, 3]."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(15 + 4 + 1, 32, generator=g) / 4)
        self.w2 = torch.nn.Parameter(torch.randn(32, 15, generator=g) / 6)

    def forward(self, x, t, *, z):
        h = torch.cat([x.flatten(1), z, t[:, None].to(x.dtype) / 200], dim=1)
        return (torch.tanh(h @ self.w1) @ self.w2).view_as(x)


NET = CondDenoiser()
Z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))


def run(sampler="ddim", *, cond=None, **kw):
    kw.setdefault("schedule", SCH)
    kw.setdefault("timesteps", SCH.timesteps(10))
    return sample_many(
        sampler, NET, E, 9, cond={"z": Z} if cond is None else cond, seed=11, progress=False, **kw
    )


def capture_x_T(denoiser, x, schedule, timesteps, **kw):
    """A 'sampler' that returns its initial noise: exposes x_T through sample_many."""
    return x


@pytest.mark.parametrize(
    "sampler,extra",
    [("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 0.7}), ("dpmpp_2m", {}), ("dpmpp_3m", {})],
)
def test_results_do_not_depend_on_max_batch(sampler, extra):
    ref = run(sampler, **extra)
    assert ref.shape == (9, 6, *E)
    for mb in (1, 7, 54, 1000):
        torch.testing.assert_close(run(sampler, max_batch=mb, **extra), ref, rtol=1e-5, atol=1e-5)


def test_initial_noise_is_bitwise_identical_whatever_the_chunking():
    ref = run(capture_x_T)
    for mb in (1, 5, 7, 54):
        assert torch.equal(run(capture_x_T, max_batch=mb), ref)
    assert torch.equal(run(capture_x_T, memory_budget=20_000), ref)
    assert not torch.equal(
        sample_many(
            capture_x_T,
            NET,
            E,
            9,
            cond={"z": Z},
            seed=12,
            schedule=SCH,
            timesteps=SCH.timesteps(3),
            progress=False,
        ),
        ref,
    )


def test_permuting_conditions_with_their_ids_permutes_outputs():
    ref = run()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    got = run(cond={"z": Z[perm]}, cond_ids=perm)
    torch.testing.assert_close(got, ref[:, perm], rtol=1e-5, atol=1e-5)


def test_test_batch_composition_does_not_matter():
    """A test set scored in batches of 2 with global window ids equals scoring it at once."""
    ref = run(capture_x_T)
    parts = [
        run(capture_x_T, cond={"z": Z[i : i + 2]}, cond_ids=torch.arange(i, i + 2))
        for i in (0, 2, 4)
    ]
    assert torch.equal(torch.cat(parts, dim=1), ref)
    full = run()
    parts = [run(cond={"z": Z[i : i + 2]}, cond_ids=torch.arange(i, i + 2)) for i in (0, 2, 4)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_samples_of_one_condition_differ_and_one_condition_is_expanded_not_copied():
    seen = []

    def spy(x, t, *, z):
        seen.append(z)
        return NET(x, t, z=z)

    y = sample_many(
        "ddim",
        spy,
        E,
        40,
        cond={"z": Z[:1]},
        schedule=SCH,
        timesteps=SCH.timesteps(3),
        progress=False,
    )
    assert y.shape == (40, 1, *E)
    assert all(s.stride(0) == 0 for s in seen)  # a view of the one row, never S copies
    assert torch.unique(y.flatten(1), dim=0).shape[0] == 40


def test_oom_back_off_redoes_only_the_failed_chunk():
    calls = []

    def fragile(x, t, *, z):
        calls.append(x.shape[0])
        if x.shape[0] > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return NET(x, t, z=z)

    ref = run()
    got = sample_many(
        "ddim",
        fragile,
        E,
        9,
        cond={"z": Z},
        seed=11,
        max_batch=40,
        schedule=SCH,
        timesteps=SCH.timesteps(10),
        progress=False,
    )
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert calls[:3] == [40, 20, 10]  # shrank by halves, no chunk above 10 ran to completion
    assert max(calls[3:]) <= 10


def test_oom_at_one_row_is_raised():
    def hopeless(x, t, *, z):
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        sample_many(
            "ddim",
            hopeless,
            E,
            2,
            cond={"z": Z},
            max_batch=4,
            schedule=SCH,
            timesteps=SCH.timesteps(2),
            progress=False,
        )


def test_oom_in_the_memory_probe_backs_off_and_plans_within_what_fit():
    """Issue 8: a denoiser that runs out of memory above 40 rows used to crash the default
    chunking at the probe's 64-row call. The probe halves (16, 64) -> (8, 32), both fit, and
    the chunk stays within the 32 rows that ran."""
    calls = []

    def fragile(x, t, *, z):
        calls.append(x.shape[0])
        if x.shape[0] > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return NET(x, t, z=z)

    kw = dict(schedule=SCH, timesteps=SCH.timesteps(4), seed=3, progress=False)
    ref = sample_many("ddim", NET, E, 20, cond={"z": Z}, max_batch=120, **kw)  # 120 rows
    got = sample_many("ddim", fragile, E, 20, cond={"z": Z}, **kw)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert calls[:4] == [16, 64, 8, 32]  # the probe: 64 ran out of memory, then halves
    assert set(calls[4:]) <= {32, 24}  # then 120 rows as 32 + 32 + 32 + 24, 4 steps each
    assert len(calls[4:]) == 4 * 4
    calls.clear()
    assert plan_chunk(fragile, E, 20, cond={"z": Z}) == 32
    assert plan_chunk(fragile, E, 20, cond={"z": Z}, memory_budget=10**9) == 32


def test_probe_down_to_one_row_and_oom_at_one_row_in_the_probe():
    def tiny(x, t, *, z):
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return NET(x, t, z=z)

    assert plan_chunk(tiny, E, 20, cond={"z": Z}) == 1  # probes (16,64) ... (1,4), (1,2)

    def hopeless(x, t, *, z):
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        plan_chunk(hopeless, E, 20, cond={"z": Z})


def test_non_finite_cond_is_rejected_before_any_denoiser_call():
    calls = []

    def spy(x, t, *, z, w):
        calls.append(1)
        return NET(x, t, z=z)

    z = Z.clone()
    z[1, 2], z[4, 0], z[5, 3] = float("nan"), float("inf"), -float("inf")
    kw = dict(schedule=SCH, timesteps=SCH.timesteps(3), progress=False)
    w = torch.arange(6)  # integer cond tensors are not checked (always finite)
    with pytest.raises(
        ValueError,
        match=r"cond\['z'\]: expected finite values, got 3 NaN/inf value\(s\), the first at index \(1, 2\), in a torch.float32 tensor of shape \(6, 4\)",
    ):
        sample_many("ddim", spy, E, 100, cond={"z": z, "w": w}, **kw)
    assert calls == []  # not even the memory probe ran


def test_non_finite_samples_name_the_chunk():
    def overflowing(x, t, *, z):
        out = NET(x, t, z=z)
        hit = (z[:, 0] == Z[2, 0]).view(-1, 1, 1)  # the rows of condition 2 (gathered copies)
        return torch.where(hit, float("inf"), out)

    with pytest.raises(
        ValueError,
        match=r"denoiser: produced non-finite samples in rows 0\.\.26 \(5 of 27 rows hold "
        r"NaN/inf; the first is row 2, sample 0 of condition 2\)",
    ):
        sample_many(
            "ddim",
            overflowing,
            E,
            9,
            cond={"z": Z},
            max_batch=27,
            schedule=SCH,
            timesteps=SCH.timesteps(3),
            progress=False,
        )


def test_the_finiteness_check_runs_once_per_chunk_not_per_step(monkeypatch):
    n = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: n.append(1) or real(x))
    run(max_batch=18)  # 54 rows: 3 chunks, 10 steps each
    # per chunk: one check of x_T in the sampler and one of the output; plus one for cond
    assert len(n) == 1 + 3 * 2


def test_other_errors_are_not_swallowed():
    def broken(x, t, *, z):
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        sample_many(
            "ddim",
            broken,
            E,
            2,
            cond={"z": Z},
            schedule=SCH,
            timesteps=SCH.timesteps(2),
            progress=False,
        )


def test_plan_chunk_follows_a_memory_budget():
    """A denoiser with a known per-row footprint: a [rows, 1000] float32 scratch (4000 B/row)."""

    def hungry(x, t):
        scratch = torch.ones(x.shape[0], 1000)
        return x * scratch[:, :1].view(-1, *([1] * (x.ndim - 1)))

    per_row = 4000 + x_bytes(E) + batching.SAMPLER_STATE_ROWS * x_bytes(E)
    budget = 100 * per_row + 2000
    rows = plan_chunk(hungry, E, 10_000, memory_budget=budget)
    assert 80 <= rows <= 100
    assert plan_chunk(hungry, E, 10_000, memory_budget=budget, max_batch=30) == 30
    assert plan_chunk(hungry, E, 10_000, max_batch=30) == 30
    assert plan_chunk(hungry, E, 50, memory_budget=budget) == 50
    # CPU default: a cache-sized working set per call, at least CPU_MIN_ROWS
    assert (
        abs(plan_chunk(hungry, E, 10_000) - batching.CPU_WORKING_SET / per_row)
        < 0.05 * batching.CPU_WORKING_SET / per_row
    )
    assert plan_chunk(hungry, E, 40) == 40  # below CPU_MIN_ROWS: one call, no probe
    with pytest.raises(ValueError, match=r"memory_budget: .* does not fit one row"):
        plan_chunk(hungry, E, 10_000, memory_budget=1000)


def x_bytes(shape):
    n = 1
    for d in shape:
        n *= d
    return 4 * n


def test_budgeted_run_matches_unchunked():
    ref = run()
    got = run(memory_budget=30 * (x_bytes(E) * 8 + 4 * 60))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_user_callback_and_sampler_function_are_accepted():
    steps = []
    y = sample_many(
        sample_ddim,
        NET,
        E,
        3,
        cond={"z": Z},
        schedule=SCH,
        timesteps=SCH.timesteps(4),
        callback=lambda d: steps.append(d["i"]),
        max_batch=9,
        progress=False,
    )
    assert y.shape == (3, 6, *E) and steps == [0, 1, 2, 3, 0, 1, 2, 3]


def test_no_cond_gives_one_condition_and_cond_ids_set_b():
    def f(x, t):
        return torch.zeros_like(x)

    assert sample_many(
        "ddim", f, (4,), 3, schedule=SCH, timesteps=SCH.timesteps(2), progress=False
    ).shape == (3, 1, 4)
    y = sample_many(
        capture_x_T,
        f,
        (4,),
        3,
        cond_ids=[5, 9],
        schedule=SCH,
        timesteps=SCH.timesteps(2),
        progress=False,
    )
    assert y.shape == (3, 2, 4) and not torch.equal(y[:, 0], y[:, 1])


def test_schedule_and_timesteps_are_required_keywords():
    with pytest.raises(TypeError, match="timesteps"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, schedule=SCH)
    with pytest.raises(TypeError, match="schedule"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, timesteps=SCH.timesteps(3))
    with pytest.raises(TypeError, match="positional"):
        sample_many("ddim", NET, E, 2, SCH, SCH.timesteps(3))
    with pytest.raises(TypeError, match="schedule: expected a NoiseSchedule, got str 'cosine'"):
        sample_many("ddim", NET, E, 2, schedule="cosine", timesteps=SCH.timesteps(3))
    with pytest.raises(TypeError, match="timesteps: expected an integer tensor"):
        sample_many("ddim", NET, E, 2, schedule=SCH, timesteps=SCH.timesteps(3).double())
    with pytest.raises(ValueError, match=r"timesteps: expected values in 0\.\.199"):
        sample_many("ddim", NET, E, 2, schedule=SCH, timesteps=torch.tensor([500, 10]))


def test_bad_input_messages():
    kw = dict(schedule=SCH, timesteps=SCH.timesteps(3), progress=False)
    with pytest.raises(
        ValueError, match=r"cond: every tensor must have the same leading dimension"
    ):
        sample_many("ddim", NET, E, 2, cond={"z": Z, "w": torch.zeros(5, 1)}, **kw)
    with pytest.raises(TypeError, match="cond: expected a mapping"):
        sample_many("ddim", NET, E, 2, cond=[Z], **kw)
    with pytest.raises(ValueError, match=r"cond_ids: expected shape \[6\].*shape \(5,\)"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, cond_ids=torch.arange(5), **kw)
    with pytest.raises(TypeError, match="cond_ids: expected integer ids"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, cond_ids=torch.zeros(6), **kw)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"n_samples: expected an integer in 1\.\.4294967296"):
            sample_many("ddim", NET, E, bad, cond={"z": Z}, **kw)
    for bad in (2.0, True, "2"):  # the wrong kind: TypeError, as everywhere
        with pytest.raises(TypeError, match=r"n_samples: expected an integer in 1\.\.4294967296"):
            sample_many("ddim", NET, E, bad, cond={"z": Z}, **kw)
    with pytest.raises(
        TypeError, match=r"seed: expected an int or a tuple of ints \(a noise key\), got float"
    ):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, seed=1.5, **kw)
    with pytest.raises(TypeError, match=r"dtype: expected a floating-point torch\.dtype"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, dtype=torch.int64, **kw)

    def fixed(x, t, z):
        return torch.zeros(x.shape[0], 5, 3)

    with pytest.raises(
        ValueError,
        match=r"denoiser: expected an output of shape \(12, 5, 2\).*shape \(12, 5, 3\)",
    ):
        sample_many("ddim", fixed, (5, 2), 2, cond={"z": Z}, **kw)
    with pytest.raises(ValueError, match=r"denoiser: expected an output of shape \(16, 5, 2\)"):
        sample_many("ddim", fixed, (5, 2), 30, cond={"z": Z}, **kw)  # caught by the memory probe
    with pytest.raises(ValueError, match=r"event_shape\[1\]: expected a positive integer"):
        sample_many("ddim", NET, (5, 0), 3, cond={"z": Z}, **kw)
    with pytest.raises(TypeError, match=r"event_shape\[0\]: expected a positive integer"):
        sample_many("ddim", NET, (5.0, 3), 3, cond={"z": Z}, **kw)
    with pytest.raises(TypeError, match="event_shape: expected a sequence"):
        sample_many("ddim", NET, 15, 3, cond={"z": Z}, **kw)
    with pytest.raises(ValueError, match="eta: expected a finite number >= 0"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, eta=-1.0, **kw)
    with pytest.raises(ValueError, match="prediction: expected one of 'eps', 'x0', 'v'"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, prediction="noise", **kw)
    with pytest.raises(
        ValueError,
        match="sampler: expected one of 'ddpm', 'ddim', 'dpmpp_2m', 'dpmpp_3m', got str 'euler'",
    ):
        sample_many("euler", NET, E, 2, cond={"z": Z}, **kw)
    with pytest.raises(TypeError, match="sampler: expected a sampler function"):
        sample_many(3, NET, E, 2, cond={"z": Z}, **kw)
    with pytest.raises(ValueError, match="max_batch: expected a positive integer"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, max_batch=0, **kw)
    with pytest.raises(TypeError, match="max_batch: expected a positive integer"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, max_batch=8.0, **kw)
    with pytest.raises(ValueError, match=r"memory_budget: .*in \(0, 1\].*fraction of free memory"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, memory_budget=1.5, **kw)
    with pytest.raises(ValueError, match="memory_budget: expected a positive integer, got int 0"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, memory_budget=0, **kw)
    with pytest.raises(TypeError, match="memory_budget"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, memory_budget="1GB", **kw)
    with pytest.raises(TypeError, match="memory_budget"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, memory_budget=True, **kw)
    with pytest.raises(TypeError, match="set by sample_many itself"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, generator=torch.Generator(), **kw)
    with pytest.raises(TypeError, match="sampler: expected a tensor of 12 rows"):
        sample_many(lambda *a, **k: None, NET, E, 2, cond={"z": Z}, **kw)


# ---------------------------------------------------------------- bf16: only the denoiser
class DtypeRecorder(torch.nn.Module):
    """CondDenoiser's maths through a Linear (autocast casts it), recording what it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = CondDenoiser()
        self.lin = torch.nn.Linear(15 + 4 + 1, 32, bias=False)
        self.lin.weight.data = self.inner.w1.data.T.clone()
        self.lin2 = torch.nn.Linear(32, 15, bias=False)
        self.lin2.weight.data = self.inner.w2.data.T.clone()
        self.seen: list[tuple[torch.dtype, torch.dtype, bool]] = []  # x dtype, output, autocast

    def forward(self, x, t, *, z):
        h = torch.cat([x.flatten(1), z, t[:, None].to(x.dtype) / 200], dim=1)
        out = self.lin2(torch.tanh(self.lin(h)))
        self.seen.append((x.dtype, out.dtype, torch.is_autocast_enabled("cpu")))
        return out.view_as(x)


def test_autocast_runs_only_the_denoiser_in_bf16(monkeypatch):
    net = DtypeRecorder()
    coef_dtypes: list[torch.dtype] = []
    real = batching.SAMPLERS["ddim"]

    def sampler(denoiser, x, schedule, timesteps, **kw):
        coef_dtypes.append(schedule.alpha_bar(torch.tensor([0])).dtype)
        return real(denoiser, x, schedule, timesteps, **kw)

    fp32 = sample_many(
        sampler,
        net,
        E,
        9,
        cond={"z": Z},
        schedule=SCH,
        timesteps=SCH.timesteps(10),
        seed=11,
        progress=False,
    )
    assert all(s == (torch.float32, torch.float32, False) for s in net.seen)
    net.seen.clear()
    bf16 = sample_many(
        sampler,
        net,
        E,
        9,
        cond={"z": Z},
        schedule=SCH,
        autocast=torch.bfloat16,
        timesteps=SCH.timesteps(10),
        seed=11,
        progress=False,
    )
    # the denoiser saw fp32 x under autocast and computed its Linear in bf16 ...
    assert net.seen and all(s == (torch.float32, torch.bfloat16, True) for s in net.seen)
    # ... while the samples, and the schedule the sampler reads, stay in fp32 / fp64
    assert bf16.dtype == torch.float32 and coef_dtypes == [torch.float64] * 2
    assert not torch.equal(bf16, fp32)
    # bf16 keeps 8 bits of mantissa (eps 2**-8 = 0.0039); the error of a few steps stays near it
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=4 * 2**-8 * float(fp32.abs().max()))


def test_autocast_must_be_a_floating_dtype():
    with pytest.raises(TypeError, match=r"autocast: expected None or a floating torch\.dtype"):
        run(autocast="bf16")
    with pytest.raises(TypeError, match="autocast"):
        run(autocast=torch.int8)


# ---------------------------------------------------------------- hooks for row-free work
class Counting(torch.nn.Module):
    """CondDenoiser with the optional hooks: ``prepare_cond`` projects z once per condition, the
    step embedding is computed once per call when ``t`` is stride 0. Counts the rows each sees."""

    def __init__(self, hooks: bool = True) -> None:
        super().__init__()
        self.net, self.hooks = CondDenoiser(), hooks
        self.cond_rows = self.step_rows = 0
        if not hooks:
            self.prepare_cond = None  # type: ignore[assignment]

    def prepare_cond(self, *, z):  # an instance attribute None hides it (hooks=False)
        self.cond_rows += z.shape[0]
        return {"zp": z @ self.net.w1[15:19]}  # [B, 32]

    def forward(self, x, t, *, z=None, zp=None):
        if zp is None:
            self.cond_rows += z.shape[0]
            zp = z @ self.net.w1[15:19]
        ts = t[:1] if self.hooks and t.stride(0) == 0 else t  # [1] or [M]
        self.step_rows += ts.shape[0]
        step = ts[:, None].to(x.dtype) / 200 @ self.net.w1[19:]  # [1 or M, 32]
        h = x.flatten(1) @ self.net.w1[:15] + zp + step
        return (torch.tanh(h) @ self.net.w2).view_as(x)


@pytest.mark.parametrize("max_batch", [None, 7])
def test_prepare_cond_and_stride0_step_are_used_once_and_change_nothing(max_batch):
    hooked, plain = Counting(), Counting(hooks=False)
    kw = {"max_batch": max_batch, "timesteps": SCH.timesteps(10), "schedule": SCH}
    a = sample_many("ddim", hooked, E, 9, cond={"z": Z}, seed=11, progress=False, **kw)
    b = sample_many("ddim", plain, E, 9, cond={"z": Z}, seed=11, progress=False, **kw)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    calls = 10 * (1 if max_batch is None else -(-54 // 7))  # denoiser calls while sampling
    assert hooked.cond_rows == 6  # once per condition, before chunking
    assert plain.cond_rows == 54 * 10  # every row at every step
    assert hooked.step_rows == calls  # one row per call
    assert plain.step_rows == 54 * 10


def test_prepare_cond_must_keep_one_row_per_condition():
    class Bad(Counting):
        def prepare_cond(self, *, z):
            return {"zp": (z @ self.net.w1[15:19])[:2]}

    with pytest.raises(
        ValueError,
        match=r"prepare_cond: expected tensors with the leading "
        r"dimension B=6.*\{'zp': \(2, 32\)\}",
    ):
        sample_many(
            "ddim",
            Bad(),
            E,
            9,
            cond={"z": Z},
            schedule=SCH,
            timesteps=SCH.timesteps(4),
            progress=False,
        )


def test_zero_conditions_and_bad_cond_ids_are_clear_errors():
    sch = NoiseSchedule.cosine(10)
    kw = dict(schedule=sch, timesteps=sch.timesteps(2), progress=False)
    with pytest.raises(
        ValueError, match=r"^cond: expected at least one condition \(B >= 1\), got B = 0"
    ):
        sample_many("ddim", lambda x, t, z: x, (3,), 2, cond={"z": torch.zeros(0, 3)}, **kw)
    with pytest.raises(
        TypeError, match=r"^cond_ids: expected a tensor or sequence of integer ids, got str 'ab'"
    ):
        sample_many("ddim", lambda x, t: x, (3,), 2, cond_ids="ab", **kw)


def test_a_schedule_on_another_device_is_read_on_the_host():
    sch = NoiseSchedule.cosine(10)
    calls = []

    class Moved(NoiseSchedule):  # stands in for schedule.to("cuda") on a CPU-only machine
        @property
        def device(self) -> torch.device:
            return torch.device("meta")

        def to(self, device):
            calls.append(str(device))
            return sch

    moved = Moved(sch.betas, sch.alphas_cumprod, "cosine")
    kw = dict(timesteps=sch.timesteps(3), progress=False, cond_ids=torch.arange(2), seed=0)
    out = sample_many("ddim", lambda x, t: 0.1 * x, (4,), 3, schedule=moved, **kw)
    torch.testing.assert_close(
        out, sample_many("ddim", lambda x, t: 0.1 * x, (4,), 3, schedule=sch, **kw), rtol=0, atol=0
    )
    assert calls == ["cpu"]


# ---------------------------------------------------------------- planning apart from running
def test_graph_fallback_warnings_point_at_the_caller(monkeypatch):
    """The warnings come from deep in the running half (sample_many -> _Chunks.run -> .draw ->
    _capture); their stacklevel must still name the line that called sample_many."""
    with pytest.warns(UserWarning, match="needs a CUDA device") as seen:
        run(graph=True)  # CPU: no graph
    assert [w.filename for w in seen] == [__file__]

    class FailingGraph:
        def __init__(self, sample, keys, rows):
            self.first = sample(keys, rows)

        def capture(self):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(batching, "ChunkGraph", FailingGraph)
    monkeypatch.setattr(batching, "_graph_unavailable", lambda *a: None)
    with pytest.warns(UserWarning, match="could not capture the step loop") as seen:
        got = run(graph=True, max_batch=4)
    assert [w.filename for w in seen] == [__file__]
    assert torch.equal(got, run(max_batch=4))  # the eager fallback, bit for bit


def test_the_names_that_moved_out_of_batching_and_samplers_still_import_from_there():
    from diffsample import chunking, planning, walk
    from diffsample.batching import (
        CPU_MIN_ROWS,
        CPU_WORKING_SET,
        DEFAULT_FRACTION,
        PROBE_ROWS,
        SAMPLER_STATE_ROWS,
    )
    from diffsample.samplers import check_grid, grid_coefficients

    assert (CPU_MIN_ROWS, CPU_WORKING_SET, PROBE_ROWS, SAMPLER_STATE_ROWS) == (
        chunking.CPU_MIN_ROWS,
        chunking.CPU_WORKING_SET,
        chunking.PROBE_ROWS,
        chunking.SAMPLER_STATE_ROWS,
    )
    assert DEFAULT_FRACTION is chunking.DEFAULT_FRACTION
    assert (check_grid, grid_coefficients) == (walk.check_grid, walk.grid_coefficients)
    assert batching.SAMPLERS is planning.SAMPLERS and batching.Known is planning.Known


def test_planning_checks_every_argument_before_the_denoiser_runs():
    """A bad argument found by plan_sampling (here the last it checks before the probe: a
    NaN in a cond tensor) fails before any denoiser call, the probe's included."""
    calls = []

    def den(x, t, *, z):
        calls.append(x.shape[0])
        return 0 * x

    z = torch.zeros(6, 4)
    z[2, 1] = torch.nan
    with pytest.raises(ValueError, match=r"cond\['z'\]"):
        sample_many(
            "ddim",
            den,
            E,
            9,
            cond={"z": z},
            schedule=SCH,
            timesteps=SCH.timesteps(3),
            memory_budget=0.5,
            seed=0,
            progress=False,
        )
    assert calls == []
