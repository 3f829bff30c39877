"""sample_many: chunking does not change results, conditions keep their noise, OOM back-off,
memory planning, bad input."""

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
    "sampler,extra", [("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 0.7}), ("dpmpp_2m", {})]
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
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
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
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
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
    with pytest.raises(ValueError, match="memory_budget: .* does not fit one row"):
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
    f = lambda x, t: torch.zeros_like(x)
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


def test_bad_input_messages():
    kw = dict(schedule=SCH, timesteps=SCH.timesteps(3), progress=False)
    with pytest.raises(
        ValueError, match=r"cond: every tensor must have the same leading dimension"
    ):
        sample_many("ddim", NET, E, 2, cond={"z": Z, "w": torch.zeros(5, 1)}, **kw)
    with pytest.raises(ValueError, match=r"cond_ids: expected shape \[6\].*got \(5,\)"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, cond_ids=torch.arange(5), **kw)
    with pytest.raises(ValueError, match="cond_ids: expected integer ids"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, cond_ids=torch.zeros(6), **kw)
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="n_samples: expected a positive integer"):
            sample_many("ddim", NET, E, bad, cond={"z": Z}, **kw)
    fixed = lambda x, t, z: torch.zeros(x.shape[0], 5, 3)
    with pytest.raises(
        ValueError, match=r"denoiser: expected an output of shape \(12, 5, 2\).*got \(12, 5, 3\)"
    ):
        sample_many("ddim", fixed, (5, 2), 2, cond={"z": Z}, **kw)
    with pytest.raises(ValueError, match=r"denoiser: expected an output of shape \(16, 5, 2\)"):
        sample_many("ddim", fixed, (5, 2), 30, cond={"z": Z}, **kw)  # caught by the memory probe
    with pytest.raises(ValueError, match="event_shape"):
        sample_many("ddim", NET, (5, 0), 3, cond={"z": Z}, **kw)
    with pytest.raises(ValueError, match="eta: expected a finite number >= 0"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, eta=-1.0, **kw)
    with pytest.raises(ValueError, match="prediction: unknown prediction type"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, prediction="noise", **kw)
    with pytest.raises(ValueError, match="sampler: unknown sampler 'euler'"):
        sample_many("euler", NET, E, 2, cond={"z": Z}, **kw)
    with pytest.raises(ValueError, match="max_batch: expected a positive integer"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, max_batch=0, **kw)
    with pytest.raises(ValueError, match="memory_budget"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, memory_budget=1.5, **kw)
    with pytest.raises(TypeError, match="missing sampler argument timesteps"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, schedule=SCH)
    with pytest.raises(TypeError, match="set by sample_many itself"):
        sample_many("ddim", NET, E, 2, cond={"z": Z}, generator=torch.Generator(), **kw)
