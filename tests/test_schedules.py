"""NoiseSchedule: constructors against their formulas, grids against Lin et al. (2023) Table 2."""

import dataclasses
import math

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
        match="spacing: expected one of 'trailing', 'leading', 'linspace', 'range', got str 'uniform'",
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
