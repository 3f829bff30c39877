"""NoiseSchedule: constructors against their formulas, grids against Lin et al. (2023) Table 2."""

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch

from diffsample import NoiseSchedule


def test_linear_matches_formula():
    sch = NoiseSchedule.linear(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(sch.betas.numpy(), betas, rtol=0, atol=1e-15)
    np.testing.assert_allclose(sch.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    assert sch.betas.dtype == torch.float64 and sch.alphas_cumprod.dtype == torch.float64


def test_scaled_linear_and_sigmoid_match_formulas():
    sl = NoiseSchedule.scaled_linear(50)
    np.testing.assert_allclose(
        sl.betas.numpy(), np.linspace(0.00085**0.5, 0.012**0.5, 50) ** 2, rtol=1e-12
    )
    sg = NoiseSchedule.sigmoid(50)
    ref = 1 / (1 + np.exp(-np.linspace(-6, 6, 50))) * (0.02 - 1e-4) + 1e-4
    np.testing.assert_allclose(sg.betas.numpy(), ref, rtol=1e-12)


def test_cosine_alpha_bar_follows_closed_form_until_clipping():
    T, s = 1000, 0.008
    sch = NoiseSchedule.cosine(T)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    ref = np.array([f(t + 1) / f(0) for t in range(T)])
    # the last betas are clipped at 0.999, which changes alpha_bar only at the very end
    np.testing.assert_allclose(sch.alphas_cumprod.numpy()[:-5], ref[:-5], rtol=1e-10)
    assert float(sch.betas.max()) <= 0.999


def test_alpha_bar_lookup_and_clean_step():
    sch = NoiseSchedule.linear(100)
    t = torch.tensor([-1, 0, 57, 99])
    ab = sch.alpha_bar(t)
    assert ab[0] == 1.0
    assert torch.equal(ab[1:], sch.alphas_cumprod[t[1:]])
    with pytest.raises(TypeError, match="t: expected an integer tensor"):
        sch.alpha_bar(torch.tensor([0.5]))


def test_alpha_sigma_and_log_snr_match_their_formulas():
    sch = NoiseSchedule.cosine(1000)
    t = torch.tensor([-1, 0, 1, 499, 998, 999])
    alpha, sigma = sch.alpha_sigma(t)
    lam = sch.log_snr(t)
    assert alpha.dtype == sigma.dtype == lam.dtype == torch.float64
    assert (float(alpha[0]), float(sigma[0]), float(lam[0])) == (1.0, 0.0, math.inf)
    for i, ti in enumerate(t.tolist()[1:], start=1):
        ab = float(sch.alphas_cumprod[ti])
        assert math.isclose(float(alpha[i]), math.sqrt(ab), rel_tol=1e-15)
        assert math.isclose(float(sigma[i]), math.sqrt(1 - ab), rel_tol=1e-15)
        # two float64 logs of a value in (0, 1): a few ulps of log(ab / (1 - ab))
        assert math.isclose(float(lam[i]), math.log(ab / (1 - ab)), rel_tol=1e-14, abs_tol=1e-14)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(6, dtype=torch.float64))
    assert bool((lam[1:] < lam[:-1]).all())  # log-SNR falls as t grows


def test_add_noise_is_the_forward_process():
    sch = NoiseSchedule.cosine(100)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 3, 2, generator=g), torch.randn(4, 3, 2, generator=g)
    t = torch.tensor([0, 10, 50, 99])
    xt = sch.add_noise(x0, noise, t)
    for i in range(4):
        ab = float(sch.alphas_cumprod[t[i]])
        torch.testing.assert_close(xt[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i])
    with pytest.raises(ValueError, match=r"t: expected shape \[4\]"):
        sch.add_noise(x0, noise, t[:3])
    with pytest.raises(ValueError, match="noise: expected shape"):
        sch.add_noise(x0, noise[:2], t)


def _paper_grid(T: int, N: int, spacing: str) -> np.ndarray:
    """Lin et al. 2023, Table 2, written as in the paper."""
    if spacing == "leading":
        return (np.arange(N) * (T // N))[::-1]
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / N)) - 1
    return np.round(np.linspace(0, T - 1, N))[::-1]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize(
    "T,N",
    [
        (1000, 50),
        (1000, 10),
        (1000, 3),
        (1000, 7),
        (1000, 999),
        (1000, 1000),
        (10, 3),
        (10, 1),
        (7, 7),
    ],
)
def test_grids_match_their_definitions(spacing, T, N):
    grid = NoiseSchedule.linear(T).timesteps(N, spacing)
    assert grid.dtype == torch.long and grid.shape == (N,)
    ref = _paper_grid(T, N, spacing)
    assert len(ref) == N  # the paper's arange form has the right length at these sizes
    np.testing.assert_array_equal(grid.numpy(), ref.astype(np.int64))
    assert bool((grid[1:] < grid[:-1]).all()), "grid must be strictly descending"
    assert int(grid.min()) >= 0 and int(grid.max()) <= T - 1


def test_trailing_starts_at_last_step_and_leading_does_not():
    sch = NoiseSchedule.linear(1000)
    assert int(sch.timesteps(50, "trailing")[0]) == 999
    assert int(sch.timesteps(50, "leading")[0]) == 980


@pytest.mark.parametrize("num_steps", [0, -3, 1001])
def test_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match=r"num_steps: expected an integer in 1\.\.1000"):
        NoiseSchedule.linear(1000).timesteps(num_steps)


@pytest.mark.parametrize("num_steps", [2.5, 50.0, True, "50"])
def test_num_steps_of_the_wrong_kind(num_steps):
    with pytest.raises(TypeError, match=r"num_steps: expected an integer in 1\.\.1000"):
        NoiseSchedule.linear(1000).timesteps(num_steps)


def test_bad_spacing_and_betas():
    with pytest.raises(
        ValueError,
        match="spacing: expected one of 'trailing', 'leading', 'linspace', 'range', 'logsnr', got str 'uniform'",
    ):
        NoiseSchedule.linear(10).timesteps(5, "uniform")
    with pytest.raises(ValueError, match=r"betas\[2\] = 1.0"):
        NoiseSchedule.from_betas([0.1, 0.2, 1.0])
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule.from_betas([0.1, -0.2])
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule.from_betas([[0.1, 0.2]])
    with pytest.raises(ValueError, match="strictly decreasing"):
        NoiseSchedule(torch.tensor([0.1, 0.1]), torch.tensor([0.9, 0.95]))
    with pytest.raises(
        ValueError, match=r"name: expected one of 'linear', .*, got str 'quadratic'"
    ):
        NoiseSchedule.by_name("quadratic")
    with pytest.raises(TypeError, match="betas: expected a floating-point tensor"):
        NoiseSchedule(torch.tensor([1, 2]), torch.tensor([0.9, 0.8]))
    with pytest.raises(TypeError, match=r"betas: expected a real tensor .*complex128"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 0.2], dtype=torch.complex128))
    with pytest.raises(TypeError, match=r"betas: expected a 1-D tensor or sequence .*got str"):
        NoiseSchedule.from_betas("0.1 0.2")
    with pytest.raises(TypeError, match=r"betas: expected a 1-D tensor or sequence .*got list"):
        NoiseSchedule.from_betas(["0.1", "0.2"])


def test_alpha_bar_refuses_timesteps_outside_the_schedule():
    sch = NoiseSchedule.linear(10)
    assert float(sch.alpha_bar(torch.tensor(-1))) == 1.0  # the clean data
    for bad, seen in ((-2, "-2..0"), (10, "0..10")):  # -2 used to wrap to alpha_bar[T - 1]
        with pytest.raises(ValueError, match=rf"t: expected timesteps in -1\.\.9, got {seen}$"):
            sch.alpha_bar(torch.tensor([0, bad]))


def test_range_spacing_is_the_ddim_papers_grid():
    """``range(0, T, T // K)`` reversed, as the DDIM authors' code builds it: equal to "leading"
    when K divides T, one step longer or more when it does not."""
    sch = NoiseSchedule.cosine(1000)
    for K in (10, 30, 50, 300, 1000):
        want = list(range(0, 1000, 1000 // K))[::-1]
        assert sch.timesteps(K, "range").tolist() == want
    assert len(sch.timesteps(30, "range")) == 31
    assert torch.equal(sch.timesteps(50, "range"), sch.timesteps(50, "leading"))


def test_cosine_beta_bounds_match_a_clipped_reference():
    """The origin project's cosine clips betas to [1e-4, 0.9999]: min_beta and max_beta say so,
    against a float64 reference of that clip written here."""
    T, s = 1000, 0.008
    tt = [t / T for t in range(T + 1)]
    f = [math.cos((u + s) / (1 + s) * math.pi / 2) ** 2 for u in tt]
    ref = [min(max(1 - f[i + 1] / f[i], 1e-4), 0.9999) for i in range(T)]
    sch = NoiseSchedule.cosine(T, min_beta=1e-4, max_beta=0.9999)
    torch.testing.assert_close(
        sch.betas, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0
    )
    assert int((sch.betas == 1e-4).sum()) == 13  # the first 13 raised to the floor
    assert not torch.equal(sch.betas, NoiseSchedule.cosine(T).betas)
    with pytest.raises(ValueError, match=r"min_beta: expected a finite number in \[0, 0\.5\)"):
        NoiseSchedule.cosine(T, min_beta=0.6, max_beta=0.5)


def test_constructor_knobs_are_checked():
    with pytest.raises(
        ValueError, match=r"beta_end: expected a finite number in \(0, 1\), got float 1.5"
    ):
        NoiseSchedule.linear(10, beta_end=1.5)
    with pytest.raises(TypeError, match="beta_start: expected a finite number"):
        NoiseSchedule.scaled_linear(10, beta_start="0.001")
    with pytest.raises(ValueError, match="max_beta"):
        NoiseSchedule.cosine(10, max_beta=1.0)
    with pytest.raises(TypeError, match="num_train_steps: expected a positive integer, got float"):
        NoiseSchedule.sigmoid(10.0)


def test_frozen_and_to():
    sch = NoiseSchedule.linear(10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sch.betas = torch.zeros(10)
    moved = sch.to("cpu")
    assert (
        torch.equal(moved.alphas_cumprod, sch.alphas_cumprod)
        and moved.alphas_cumprod.dtype == torch.float64
    )


# ---------------------------------------------------------------- NoiseSchedule.from_diffusers
EPS64 = float(np.finfo(np.float64).eps)


def _diffusers_betas(kind: str, T: int, start: float, end: float) -> np.ndarray:
    """diffusers' beta formulas (``DDPMScheduler.__init__``, ``betas_for_alpha_bar``), written
    here in float64 as diffusers writes them in float32 (numpy for the ramps, Python floats for
    the alpha_bar ratios)."""
    if kind == "linear":
        return np.linspace(start, end, T)
    if kind == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, T) ** 2
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-np.linspace(-6, 6, T))) * (end - start) + start

    def cosine(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    def laplace(t):
        lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
        snr = math.exp(lmb)
        return math.sqrt(snr / (1 + snr))

    f = {"squaredcos_cap_v2": cosine, "laplace": laplace}[kind]
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


@pytest.mark.parametrize(
    "kind", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"]
)
@pytest.mark.parametrize(
    "T,start,end", [(1000, 1e-4, 0.02), (1000, 0.00085, 0.012), (37, 1e-3, 0.3)]
)
def test_from_diffusers_matches_diffusers_formulas_in_float64(kind, T, start, end):
    """A config (as a dict) gives diffusers' betas to float64 round-off: every beta is <= 1,
    and each is a few float64 operations from the reference (at most 2 ulps of 1 seen)."""
    config = {"num_train_timesteps": T, "beta_schedule": kind, "beta_start": start, "beta_end": end}
    sch = NoiseSchedule.from_diffusers(config)
    assert sch.name == f"diffusers:{kind}" and sch.num_train_steps == T
    assert sch.betas.dtype == torch.float64
    ref = _diffusers_betas(kind, T, start, end)
    np.testing.assert_allclose(sch.betas.numpy(), ref, rtol=0, atol=8 * EPS64)
    np.testing.assert_allclose(sch.alphas_cumprod.numpy(), np.cumprod(1 - ref), rtol=1e-12)


def test_from_diffusers_reads_trained_betas_a_mapping_or_a_config_attribute():
    from types import MappingProxyType, SimpleNamespace

    betas = [0.01, 0.2, 0.5]
    for trained in (betas, np.array(betas, dtype=np.float32), torch.tensor(betas)):
        config = {"num_train_timesteps": 3, "trained_betas": trained, "beta_schedule": "linear"}
        sch = NoiseSchedule.from_diffusers(config)
        assert sch.name == "diffusers:trained_betas"  # trained_betas wins over beta_schedule
        want = torch.as_tensor(trained, dtype=torch.float64)  # the values given, not re-rounded
        assert torch.equal(sch.betas, want)
    config = {"num_train_timesteps": 3, "trained_betas": betas, "rescale_betas_zero_snr": False}
    for given in (MappingProxyType(config), SimpleNamespace(config=config)):  # FrozenDict-like
        assert torch.equal(
            NoiseSchedule.from_diffusers(given).betas, torch.tensor(betas, dtype=torch.float64)
        )


def test_the_diffusers_reading_is_its_own_module_and_its_literal_still_imports_here():
    """Issue 17 moved the reading of a diffusers config to diffusers_config.py; the Literal of
    the beta schedules still imports from schedules, and is the same object."""
    from diffsample import diffusers_config, schedules

    assert schedules.DiffusersBetaSchedule is diffusers_config.DiffusersBetaSchedule
    assert set(typing.get_args(schedules.DiffusersBetaSchedule)) == {
        "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"
    }  # fmt: skip


def test_from_diffusers_takes_diffusers_defaults_for_missing_fields():
    """diffusers' defaults (1000 steps, betas 1e-4 to 0.02) for fields a hand-written config
    leaves out or sets to None; beta_start and beta_end are not read by the cosine."""
    sch = NoiseSchedule.from_diffusers({"beta_schedule": "linear", "beta_end": None})
    assert torch.equal(sch.betas, NoiseSchedule.linear(1000, beta_start=1e-4, beta_end=0.02).betas)
    cos = NoiseSchedule.from_diffusers({"beta_schedule": "squaredcos_cap_v2", "beta_start": 0.5})
    assert torch.equal(cos.betas, NoiseSchedule.cosine(1000).betas)
    assert float(cos.betas.max()) == 0.999  # diffusers' max_beta


@pytest.mark.parametrize(
    "given,exc,message",
    [
        (
            {"beta_schedule": "linear", "rescale_betas_zero_snr": True},
            ValueError,
            r"rescale_betas_zero_snr: expected False, got True: zero terminal SNR makes "
            r"alpha_bar = 0 at the last step, and a NoiseSchedule needs every alpha_bar in \(0, 1\)",
        ),
        (
            {"beta_schedule": "linear", "use_flow_sigmas": True},
            ValueError,
            r"use_flow_sigmas: expected False, got True: flow-matching",
        ),
        (
            {"beta_schedule": "linear", "rescale_betas_zero_snr": "yes"},
            TypeError,
            r"rescale_betas_zero_snr: expected True or False, got str 'yes'",
        ),
        (
            {"beta_schedule": "exp"},
            ValueError,
            r"beta_schedule: expected one of 'linear', 'scaled_linear', 'squaredcos_cap_v2', "
            r"'sigmoid', 'laplace', got str 'exp'",
        ),
        (
            {"num_train_timesteps": 1000, "shift": 3.0},  # a flow-matching scheduler's config
            ValueError,
            r"beta_schedule: expected it \(or trained_betas\) in the config, got neither",
        ),
        (
            {"beta_schedule": "linear", "num_train_timesteps": 0},
            ValueError,
            r"num_train_timesteps: expected a positive integer, got int 0",
        ),
        (
            {"beta_schedule": "linear", "num_train_timesteps": 1000.0},
            TypeError,
            r"num_train_timesteps: expected a positive integer, got float 1000.0",
        ),
        (
            {"beta_schedule": "linear", "beta_start": 0.0},
            ValueError,
            r"beta_start: expected a finite number in \(0, 1\), got float 0.0",
        ),
        (
            {"beta_schedule": "scaled_linear", "beta_end": "0.012"},
            TypeError,
            r"beta_end: expected a finite number in \(0, 1\), got str '0.012'",
        ),
        (
            {"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, 0.3]},
            ValueError,
            r"trained_betas: expected a 1-D sequence of 4 floats in \(0, 1\) "
            r"\(num_train_timesteps = 4\), got a torch.float64 tensor of shape \(3,\)",
        ),
        (
            {"num_train_timesteps": 3, "trained_betas": [0.1, 1.0, 0.3]},
            ValueError,
            r"trained_betas: expected .*, got trained_betas\[1\] = 1.0",
        ),
        (
            {"num_train_timesteps": 2, "trained_betas": [0.1, float("nan")]},
            ValueError,
            r"trained_betas: expected .*, got trained_betas\[1\] = nan",
        ),
        (
            {"num_train_timesteps": 2, "trained_betas": "0.1 0.2"},
            TypeError,
            r"trained_betas: expected a 1-D sequence of 2 floats .*, got str",
        ),
        (
            "scaled_linear",
            TypeError,
            r"scheduler_or_config: expected a diffusers scheduler \(with a \.config mapping\) "
            r"or its config \(a dict or FrozenDict\), got str 'scaled_linear'",
        ),
        (
            [("beta_schedule", "linear")],
            TypeError,
            r"scheduler_or_config: expected .*, got list",
        ),
    ],
)
def test_from_diffusers_refuses_what_a_schedule_cannot_express(given, exc, message):
    with pytest.raises(exc, match=f"^{message}") as info:
        NoiseSchedule.from_diffusers(given)
    assert "\n" not in str(info.value)


def test_from_diffusers_does_not_import_diffusers():
    """Duck typing on the config: reading one never imports diffusers (an optional extra)."""
    import subprocess
    import sys

    code = (
        "import sys; from diffsample import NoiseSchedule; "
        "NoiseSchedule.from_diffusers({'beta_schedule': 'scaled_linear'}); "
        "print('diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_logsnr_spacing_is_nearest_to_even_log_snr_and_always_distinct():
    """``"logsnr"``: the steps nearest to log-SNR values evenly spaced from step T - 1's to step
    0's (checked against that argmin wherever no two coincide), and K distinct descending steps
    from T - 1 to 0 for every K <= T, also where the nearest steps coincide."""
    for sch in (NoiseSchedule.linear(100, beta_end=0.1), NoiseSchedule.cosine(200)):
        T = sch.num_train_steps
        lam = sch.log_snr(torch.arange(T))
        nudged = 0
        for K in range(2, T + 1):
            grid = sch.timesteps(K, "logsnr")
            assert len(grid) == K and bool((grid[1:] < grid[:-1]).all())
            assert (int(grid[0]), int(grid[-1])) == (T - 1, 0)
            target = torch.linspace(float(lam[-1]), float(lam[0]), K, dtype=torch.float64)
            nearest = (lam[None, :] - target[:, None]).abs().argmin(1)
            if len(torch.unique(nearest)) == K:
                assert torch.equal(grid, nearest), (T, K)
            else:
                nudged += 1
        assert nudged > 0  # the nudging was exercised
    assert NoiseSchedule.linear(100, beta_end=0.1).timesteps(10, "logsnr").tolist() == [
        99, 83, 63, 41, 22, 10, 4, 2, 1, 0
    ]  # fmt: skip
