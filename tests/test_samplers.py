"""Samplers: one step against slow reference formulas, the Gaussian oracle, convergence order,
and bad input. All float64 where a tolerance is tight."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch

from diffsample import (
    SAMPLERS,
    NoiseSchedule,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_many,
    to_x0_eps,
    training_target,
)
from diffsample.samplers import Sampler

SCH = NoiseSchedule.cosine(1000)
# Spreads of 0.5..2 in units of the noise. (Much sharper data, SD = 0.1, loses variance in the
# last jump from the smallest grid timestep to x0 = E[x0 | x_t] with any sampler on a coarse
# grid: DPM-Solver++(2M)-20 gives -26% there. That is the grid's limit, not a sampler's.)
MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
SD = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)


def gaussian_oracle(prediction: str = "eps", schedule: NoiseSchedule = SCH):
    """Exact denoiser for x0 ~ N(MU, SD^2): E[eps | x_t] = sigma (x_t - a MU) / (a^2 SD^2 + sigma^2)."""

    def denoiser(x, t):
        ab = schedule.alpha_bar(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        a, sg = ab.sqrt(), (1 - ab).sqrt()
        eps = sg * (x - a * MU) / (a**2 * SD**2 + sg**2)
        x0 = (x - sg * eps) / a
        return training_target(x0, eps, a, sg, prediction)

    return denoiser


def affine_map(sampler, K, **kw):
    """For the Gaussian oracle a deterministic sampler is x_out = h + g * x_T: run it at x_T = 0, 1."""
    x = torch.stack([torch.zeros(3), torch.ones(3)]).double()
    y = sampler(gaussian_oracle(), x, SCH, SCH.timesteps(K), progress=False, **kw)
    return y[0], y[1] - y[0]


# ---------------------------------------------------------------- Gaussian oracle
# Tolerances. Statistical: with n draws the sample mean has standard error SD / sqrt(n) and the
# sample std SD / sqrt(2n); we allow 5 of them (a false alarm below 1e-6). Discretisation: for
# this Gaussian the deterministic samplers are affine maps of x_T, computed exactly by
# ``affine_map`` (cosine schedule, trailing grid): DDIM-50 shrinks the std by 3.1% and
# DPM-Solver++(2M)-20 by 2.3% and (3M)-20 by 2.5%; the means are off by < 1e-4 (the terminal
# SNR of the cosine schedule). So we allow DELTA = 4% of SD (ddim), 3% (dpmpp_2m, dpmpp_3m) and
# 1% (ddpm on all 1000 steps, where the only approximation is the fixed posterior variance).
N_DRAWS = 4000
DELTA = {"ddpm": 0.01, "ddim": 0.04, "dpmpp_2m": 0.03, "dpmpp_3m": 0.03}


@pytest.mark.parametrize(
    "name,K", [("ddpm", 1000), ("ddim", 50), ("dpmpp_2m", 20), ("dpmpp_3m", 20)]
)
def test_gaussian_oracle_recovers_mean_and_std(name, K):
    y = sample_many(
        name,
        gaussian_oracle(),
        (3,),
        N_DRAWS,
        schedule=SCH,
        timesteps=SCH.timesteps(K),
        dtype=torch.float64,
        seed=123,
        progress=False,
    )[:, 0]
    se_mean, se_std = SD / math.sqrt(N_DRAWS), SD / math.sqrt(2 * N_DRAWS)
    tol_mean = 5 * se_mean + DELTA[name] * SD
    tol_std = 5 * se_std + DELTA[name] * SD
    assert bool(((y.mean(0) - MU).abs() <= tol_mean).all()), (y.mean(0), MU, tol_mean)
    assert bool(((y.std(0) - SD).abs() <= tol_std).all()), (y.std(0), SD, tol_std)


@pytest.mark.parametrize(
    "sampler,K", [(sample_ddim, 50), (sample_dpmpp_2m, 20), (sample_dpmpp_3m, 20)]
)
def test_deterministic_samples_follow_their_exact_affine_map(sampler, K):
    """Sharper than the check above: the samples' moments equal the exact map's, up to sampling error only."""
    h, g = affine_map(sampler, K)
    assert bool(((g.abs() - SD).abs() <= DELTA["ddim"] * SD).all()) and bool(
        ((h - MU).abs() < 1e-3).all()
    )
    y = sample_many(
        sampler,
        gaussian_oracle(),
        (3,),
        N_DRAWS,
        schedule=SCH,
        timesteps=SCH.timesteps(K),
        dtype=torch.float64,
        seed=7,
        progress=False,
    )[:, 0]
    x_T = (y - h) / g  # the initial noise each sample came from
    torch.testing.assert_close(h + g * x_T.mean(0), y.mean(0), rtol=0, atol=1e-9)
    assert bool(((x_T.mean(0)).abs() < 5 / math.sqrt(N_DRAWS)).all())
    assert bool(((x_T.std(0) - 1).abs() < 5 / math.sqrt(2 * N_DRAWS)).all())


def test_convergence_orders():
    """DDIM is first order (error halves when K doubles); DPM-Solver++(2M) is second order."""

    def err(sampler, K):
        return float(((affine_map(sampler, K)[1].abs() - SD) / SD).abs().max())

    ddim = [err(sample_ddim, K) for K in (50, 100, 200)]
    dpm = [err(sample_dpmpp_2m, K) for K in (50, 100, 200)]
    for a, b in itertools.pairwise(ddim):
        assert 1.7 < a / b < 2.3, ddim
    for a, b in itertools.pairwise(dpm):
        assert a / b > 2.8, dpm  # second order: a ratio near 4 (first order would give 2)
    assert dpm[0] < ddim[0] / 4


def test_multistep_orders_inside_the_schedule():
    """The error of the state at the last grid point, against the exact probability-flow ODE
    solution of the Gaussian oracle, on grids 600 -> 20 (inside the schedule: the trailing grid's
    first step from t = 999 of the cosine schedule is so long in log-SNR that its first-order
    warm-up step dominates, and neither solver shows its order there). Doubling K divides the
    error by about 2 (DDIM), 4 (2M) and 8 (3M)."""

    def err(sampler, K):
        grid = torch.round(torch.linspace(600, 20, K, dtype=torch.float64)).long()
        x = torch.ones(1, 3, dtype=torch.float64)
        seen = []
        sampler(gaussian_oracle(), x, SCH, grid, callback=seen.append, progress=False)

        def flow(t):  # the exact ODE: x_t = a_t MU + s_t (x_T - a_T MU) / s_T
            ab = float(SCH.alphas_cumprod[t])
            return math.sqrt(ab), (ab * SD**2 + (1 - ab)).sqrt()

        (a_T, s_T), (a, s) = flow(int(grid[0])), flow(int(grid[-1]))
        exact = a * MU + s * (x - a_T * MU) / s_T
        return float(((seen[-2]["x"] - exact).abs() / s).max())  # x after step K - 2: at grid[-1]

    ratios = {}
    for sampler in (sample_ddim, sample_dpmpp_2m, sample_dpmpp_3m):
        e = [err(sampler, K) for K in (16, 32, 64)]
        ratios[sampler.__name__] = [a / b for a, b in itertools.pairwise(e)]
    assert all(1.7 < r < 2.4 for r in ratios["sample_ddim"]), ratios
    assert all(3.3 < r < 5.5 for r in ratios["sample_dpmpp_2m"]), ratios
    assert all(r > 6.5 for r in ratios["sample_dpmpp_3m"]), ratios


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", [sample_ddim, sample_dpmpp_2m, sample_dpmpp_3m])
def test_prediction_types_give_the_same_deterministic_samples(prediction, sampler):
    x = torch.randn(64, 3, dtype=torch.float64)
    ref = sampler(gaussian_oracle("eps"), x, SCH, SCH.timesteps(20), progress=False)
    got = sampler(
        gaussian_oracle(prediction),
        x,
        SCH,
        SCH.timesteps(20),
        prediction=prediction,
        progress=False,
    )
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_prediction_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g).double(), torch.randn(5, 3, generator=g).double()
    a, s = 0.6, 0.8
    xt = a * x0 + s * eps
    for p in ("eps", "x0", "v"):
        x0_hat, eps_hat = to_x0_eps(training_target(x0, eps, a, s, p), xt, a, s, p)
        torch.testing.assert_close(x0_hat, x0)
        torch.testing.assert_close(eps_hat, eps)


# ---------------------------------------------------------------- one step against references
def _first_step(sampler, denoiser, x, grid, z, **kw):
    """x after step 0 of ``sampler`` on ``grid``, with the step noise fixed to ``z``."""
    seen = []
    sampler(
        denoiser,
        x,
        SCH,
        grid,
        noise_sampler=lambda i: z,
        callback=lambda d: seen.append(d["x"]),
        progress=False,
        **kw,
    )
    return seen


def _toy_eps(x, t):
    return torch.tanh(x) * (1 + t[:, None].double() / 1000)


def test_ddpm_step_matches_ho_et_al():
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(6, 4, generator=g).double(), torch.randn(6, 4, generator=g).double()
    t = 500
    grid = torch.tensor([t, t - 1])
    ab, ab_prev = float(SCH.alphas_cumprod[t]), float(SCH.alphas_cumprod[t - 1])
    beta = float(SCH.betas[t])
    eps = _toy_eps(x, torch.full((6,), t))
    mean = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta)  # Ho et al. (2020), Alg. 2
    for variance, var in [("small", beta * (1 - ab_prev) / (1 - ab)), ("large", beta)]:
        got = _first_step(sample_ddpm, _toy_eps, x, grid, z, variance=variance)[0]
        torch.testing.assert_close(got, mean + math.sqrt(var) * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_song_et_al(eta):
    g = torch.Generator().manual_seed(4)
    x, z = torch.randn(6, 4, generator=g).double(), torch.randn(6, 4, generator=g).double()
    grid = SCH.timesteps(10, "leading")  # a non-unit stride: 900 -> 800
    t, s = int(grid[0]), int(grid[1])
    ab, ab_s = float(SCH.alphas_cumprod[t]), float(SCH.alphas_cumprod[s])
    eps = _toy_eps(x, torch.full((6,), t))
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    sigma = (
        eta * math.sqrt((1 - ab_s) / (1 - ab)) * math.sqrt(1 - ab / ab_s)
    )  # Song et al. (2021), eq. 16
    ref = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - sigma**2) * eps + sigma * z  # eq. 12
    got = _first_step(sample_ddim, _toy_eps, x, grid, z, eta=eta)[0]
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_ddim_eta_one_on_the_full_grid_is_ddpm_small():
    g = torch.Generator().manual_seed(5)
    x, z = torch.randn(6, 4, generator=g).double(), torch.randn(6, 4, generator=g).double()
    grid = torch.tensor([300, 299, 298])
    a = _first_step(sample_ddim, _toy_eps, x, grid, z, eta=1.0)
    b = _first_step(sample_ddpm, _toy_eps, x, grid, z, variance="small")
    assert len(a) == len(b) == 3
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


def test_dpmpp_2m_matches_k_diffusion_form():
    """Reference written in k-diffusion's variance-exploding form: sigma_ve = sigma / alpha,
    x_ve = x / alpha, t = -log sigma_ve, denoised = x0; a different algebra for the same solver."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 4, generator=g).double()
    grid = SCH.timesteps(5, "trailing")
    got = _first_step(sample_dpmpp_2m, _toy_eps, x, grid, None)
    ab = [float(SCH.alphas_cumprod[t]) for t in grid] + [1.0]
    alpha = [math.sqrt(a) for a in ab]
    sig = [math.sqrt((1 - a) / a) for a in ab]  # VE sigmas; the last is 0
    x_ve, old = x / alpha[0], None
    for i in range(len(grid)):
        t_i = int(grid[i])
        eps = _toy_eps(x_ve * alpha[i], torch.full((6,), t_i))
        den = to_x0_eps(eps, x_ve * alpha[i], alpha[i], math.sqrt(1 - ab[i]), "eps")[0]
        if sig[i + 1] == 0:
            x_ve = den
        else:
            tt, tn = -math.log(sig[i]), -math.log(sig[i + 1])
            h = tn - tt
            if old is None:
                x_ve = (sig[i + 1] / sig[i]) * x_ve - math.expm1(-h) * den
            else:
                h_last = tt - (-math.log(sig[i - 1]))
                r = h_last / h
                d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
                x_ve = (sig[i + 1] / sig[i]) * x_ve - math.expm1(-h) * d
        old = den
        torch.testing.assert_close(got[i], x_ve * alpha[i + 1], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_dpmpp_3m_matches_the_papers_form(spacing):
    """Every step against DPM-Solver++(3M) written as Lu et al. (2022) and diffusers write it
    (first differences D1_0, D1_1, then D1 and D2 with phi_1..phi_3 in lambda = log(alpha /
    sigma)), in float64 with alpha_bar straight from the schedule: a different algebra from the
    sampler's precombined weights on (m0, m1, m2)."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 4, generator=g).double()
    grid = SCH.timesteps(9, spacing)
    got = _first_step(sample_dpmpp_3m, _toy_eps, x, grid, None)
    ab = [float(SCH.alphas_cumprod[t]) for t in grid] + [1.0]
    alpha = [math.sqrt(a) for a in ab]
    sig = [math.sqrt(1 - a) for a in ab]
    lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alpha, sig, strict=True)]
    ms: list[torch.Tensor] = []
    for i, t in enumerate(grid.tolist()):
        eps = _toy_eps(x, torch.full((6,), t))
        ms.append((x - sig[i] * eps) / alpha[i])
        if i == len(grid) - 1:
            x = ms[-1]
        else:
            h = lam[i + 1] - lam[i]
            lin = sig[i + 1] / sig[i] * x - alpha[i + 1] * (math.exp(-h) - 1) * ms[-1]
            if i == 0:
                x = lin
            elif i == 1:
                r0 = (lam[i] - lam[i - 1]) / h
                d1 = (ms[-1] - ms[-2]) / r0
                x = lin - 0.5 * alpha[i + 1] * (math.exp(-h) - 1) * d1
            else:
                r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
                d1_0, d1_1 = (ms[-1] - ms[-2]) / r0, (ms[-2] - ms[-3]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = (
                    lin
                    + alpha[i + 1] * ((math.exp(-h) - 1) / h + 1) * d1
                    - alpha[i + 1] * ((math.exp(-h) - 1 + h) / h**2 - 0.5) * d2
                )
        torch.testing.assert_close(got[i], x, rtol=1e-11, atol=1e-11)


def test_final_step_returns_x0_estimate_and_callback_sees_every_step():
    x = torch.randn(3, 4, dtype=torch.float64)
    seen = []
    out = sample_ddpm(
        _toy_eps,
        x,
        SCH,
        SCH.timesteps(7),
        callback=seen.append,
        progress=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert [d["i"] for d in seen] == list(range(7))
    assert [d["t_next"] for d in seen][-1] == -1
    assert torch.equal(out, seen[-1]["x0"])


def test_clip_x0_clamps_and_is_off_by_default():
    def big(x, t):
        return -10 * torch.ones_like(x)

    x = torch.zeros(2, 3, dtype=torch.float64)
    free = sample_ddim(big, x, SCH, SCH.timesteps(5), progress=False)
    for rule in ("raw", "rederive"):
        clipped = sample_ddim(
            big, x, SCH, SCH.timesteps(5), clip_x0=1.0, clip_eps=rule, progress=False
        )
        assert float(clipped.abs().max()) <= 1.0
    assert float(free.abs().max()) > 1.0


def test_stochastic_samplers_reproducible_with_generator():
    x = torch.randn(8, 4, dtype=torch.float64)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sample_ddpm(_toy_eps, x, SCH, SCH.timesteps(20), progress=False, generator=g)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


# ---------------------------------------------------------------- every step against references
def _every_step(sampler, grid, x, zs, **kw):
    """x after every step of ``sampler`` on ``grid`` (the step noise of step i fixed to zs[i])."""
    seen = []
    sampler(
        _toy_eps,
        x,
        SCH,
        grid,
        noise_sampler=lambda i: zs[i],
        callback=lambda d: seen.append(d["x"]),
        progress=False,
        **kw,
    )
    return seen


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
@pytest.mark.parametrize(
    "name,kw",
    [
        ("ddpm", {"variance": "small"}),
        ("ddpm", {"variance": "large"}),
        ("ddim", {"eta": 0.0}),
        ("ddim", {"eta": 0.5}),
        ("ddim", {"eta": 1.0}),
    ],
)
def test_every_step_matches_the_alpha_bar_formulas(name, kw, spacing):
    """The samplers take alpha, sigma and log-SNR from the schedule; each step must still equal
    the textbook formula written in alpha_bar (Ho et al. eq. 7; Song et al. eqs. 12 and 16), on
    a non-uniform grid, step after step, to float64 round-off."""
    g = torch.Generator().manual_seed(8)
    grid = SCH.timesteps(12, spacing)
    x = torch.randn(5, 4, generator=g).double()
    zs = [torch.randn(5, 4, generator=g).double() for _ in grid]
    got = _every_step(SAMPLERS[name], grid, x, zs, **kw)
    ab = [float(SCH.alphas_cumprod[t]) for t in grid] + [1.0]
    for i, t in enumerate(grid.tolist()):
        a_t, a_s = ab[i], ab[i + 1]
        eps = _toy_eps(x, torch.full((5,), t))
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if i == len(grid) - 1:
            ref = x0
        elif name == "ddpm":
            b = 1 - a_t / a_s
            mean = (
                math.sqrt(a_s) * b / (1 - a_t) * x0
                + math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t) * x
            )
            var = b * (1 - a_s) / (1 - a_t) if kw["variance"] == "small" else b
            ref = mean + math.sqrt(var) * zs[i]
        else:
            sigma = kw["eta"] * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
            ref = (
                math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps + sigma * zs[i]
            )
        # the two algebras agree to ~1e-15 here (|x| <~ 10); 1e-13 leaves room for other libms
        torch.testing.assert_close(got[i], ref, rtol=1e-13, atol=1e-13)
        x = got[i]


def test_builtin_samplers_follow_the_sampler_protocol():
    """Every built-in sampler takes the protocol's positional operands and keywords, and its
    extra knobs are keyword-only with defaults (so sample_many can call any of them alike)."""
    protocol = inspect.signature(Sampler.__call__).parameters
    wanted = [p for name, p in protocol.items() if name != "self"]
    assert [p.name for p in wanted][:4] == ["denoiser", "x", "schedule", "timesteps"]
    for name, fn in SAMPLERS.items():
        params = inspect.signature(fn).parameters
        for p in wanted:
            assert p.name in params and params[p.name].kind == p.kind, (name, p.name)
        extra = [p for n, p in params.items() if n not in protocol]
        assert all(
            p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
            for p in extra
        ), (name, extra)
    with pytest.raises(TypeError, match="etta"):
        sample_ddim(_toy_eps, torch.zeros(2, 3), SCH, SCH.timesteps(2), etta=0.5)


# ---------------------------------------------------------------- bad input
def test_bad_input_messages():
    x = torch.randn(4, 3)
    grid = SCH.timesteps(5)
    bad_x = x.clone()
    bad_x[0, 1], bad_x[2, 2] = float("nan"), float("inf")
    with pytest.raises(
        ValueError,
        match=r"x: expected finite values, got 2 NaN/inf value\(s\), the first at index \(0, 1\), in a torch.float32 tensor of shape \(4, 3\)",
    ):
        sample_ddim(_toy_eps, bad_x, SCH, grid)
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        sample_ddim(_toy_eps, torch.zeros(4, 3, dtype=torch.long), SCH, grid)
    with pytest.raises(TypeError, match="schedule: expected a NoiseSchedule, got str"):
        sample_ddim(_toy_eps, x, "cosine", grid)
    with pytest.raises(ValueError, match=r"eta: expected a finite number >= 0, got float -0\.1"):
        sample_ddim(_toy_eps, x, SCH, grid, eta=-0.1)
    with pytest.raises(TypeError, match="eta: expected a finite number >= 0, got str"):
        sample_ddim(_toy_eps, x, SCH, grid, eta="0.5")
    with pytest.raises(
        ValueError, match="prediction: expected one of 'eps', 'x0', 'v', got str 'score'"
    ):
        sample_ddim(_toy_eps, x, SCH, grid, prediction="score")
    with pytest.raises(
        ValueError, match="variance: expected one of 'small', 'large', got str 'learned'"
    ):
        sample_ddpm(_toy_eps, x, SCH, grid, variance="learned")
    with pytest.raises(ValueError, match="timesteps: expected a strictly descending grid"):
        sample_ddim(_toy_eps, x, SCH, grid.flip(0))
    with pytest.raises(ValueError, match=r"timesteps: expected values in 0\.\.999"):
        sample_ddim(_toy_eps, x, SCH, torch.tensor([1000, 5]))
    with pytest.raises(TypeError, match="timesteps: expected an integer tensor"):
        sample_ddim(_toy_eps, x, SCH, grid.double())
    with pytest.raises(TypeError, match=r"timesteps: expected a torch\.Tensor"):
        sample_ddim(_toy_eps, x, SCH, [999, 500])
    with pytest.raises(
        ValueError,
        match=r"denoiser: expected an output of shape \(4, 3\).*got a torch.float32 tensor of shape \(4, 2\)",
    ):
        sample_ddim(lambda x, t: x[:, :2], x, SCH, grid)
    with pytest.raises(TypeError, match="denoiser: expected an output of shape"):
        sample_ddim(lambda x, t: (x,), x, SCH, grid)
    with pytest.raises(ValueError, match=r"clip_x0: expected a finite number > 0, got float 0\.0"):
        sample_ddim(_toy_eps, x, SCH, grid, clip_x0=0.0, clip_eps="raw")
    with pytest.raises(ValueError, match=r"clip_eps: expected 'raw' or 'rederive' with clip_x0"):
        sample_ddim(_toy_eps, x, SCH, grid, clip_x0=1.0)
    with pytest.raises(ValueError, match=r"clip_eps: expected one of 'raw', 'rederive'"):
        sample_ddim(_toy_eps, x, SCH, grid, clip_x0=1.0, clip_eps="clipped")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_pass_one_step_as_a_stride0_view(name):
    """The step hook of the denoiser contract: t [M] is one value seen through stride 0."""
    seen = []

    def den(x, t):
        seen.append((t.shape, t.stride(), t.dtype, t[0].item(), bool((t == t[0]).all())))
        return 0.1 * x

    sch = NoiseSchedule.cosine(100)
    ts = sch.timesteps(4)
    SAMPLERS[name](den, torch.randn(5, 3), sch, ts, progress=False)
    assert [s[3] for s in seen] == ts.tolist()
    assert all(s[:3] == ((5,), (0,), torch.long) and s[4] for s in seen)
