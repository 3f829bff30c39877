"""The samplers against an external reference: the schedulers of Hugging Face diffusers, step
for step on the same grid, schedule, denoiser and noise.

DDIM and DDPM are compared in float64 (each scheduler is given our float64 alpha_bar in place
of its float32 cumprod), to 1e-9. DPM-Solver++ in diffusers computes each step in float32
whatever the input dtype, so there the tolerance is 100 float32 epsilons of the state's size;
the 2M and 3M results differ by more than 50 times that, so the check tells the orders apart.
"""

from __future__ import annotations

import pytest
import torch

from diffsample import SAMPLERS, NoiseSchedule

diffusers = pytest.importorskip("diffusers")
# diffusers' own numpy 2 deprecation (np.array(..., copy=False) on a tensor), not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL = 1e-9  # float64 (DDIM, DDPM)
TOL32 = 100 * torch.finfo(torch.float32).eps  # 1.2e-5 (DPM-Solver++, float32 inside diffusers)
T = 1000
PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def _toy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth denoiser output of size ~1, nonlinear in x and t (read as eps, x0 or v)."""
    tt = t.double().reshape(-1, *([1] * (x.ndim - 1))) / T
    return torch.tanh(x) * (0.5 + tt) + 0.1 * torch.sin(3 * x * tt)


def _schedule(name: str) -> NoiseSchedule:
    return NoiseSchedule.by_name(name, T)


def _float64(ref, sch: NoiseSchedule) -> None:
    """Give a diffusers scheduler our float64 alpha_bar in place of its float32 cumprod."""
    ref.alphas_cumprod = sch.alphas_cumprod.clone()
    ref.alphas = 1 - sch.betas
    ref.betas = sch.betas.clone()


def _x() -> torch.Tensor:
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _ours(name: str, sch: NoiseSchedule, grid: torch.Tensor, prediction: str, **kw):
    """Our state after every step ([K] tensors [16, 5]; the last is the returned sample)."""
    seen: list[torch.Tensor] = []
    out = SAMPLERS[name](
        _toy, _x(), sch, grid, prediction=prediction, callback=lambda d: seen.append(d["x"]), **kw
    )
    assert torch.equal(out, seen[-1])
    return seen


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("K", [5, 10, 25])
def test_dpmpp_multistep_matches_diffusers(schedule, prediction, K):
    """DPM-Solver++(2M) and (3M) against ``DPMSolverMultistepScheduler`` (algorithm
    "dpmsolver++", midpoint form, warm-up by lower orders, the final step to sigma = 0 first
    order; ``lower_order_final=False``: we do not drop the order of the step before it)."""
    sch = _schedule(schedule)
    grid = sch.timesteps(K)
    finals = {}
    for order in (2, 3):
        ref = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=T,
            trained_betas=sch.betas.numpy(),
            solver_order=order,
            prediction_type=PREDICTION[prediction],
            algorithm_type="dpmsolver++",
            solver_type="midpoint",
            lower_order_final=False,
            final_sigmas_type="zero",
        )
        _float64(ref, sch)
        ref.set_timesteps(timesteps=grid.tolist())
        assert ref.timesteps.tolist() == grid.tolist()
        ours = _ours(f"dpmpp_{order}m", sch, grid, prediction)
        x = _x()
        for i, t in enumerate(ref.timesteps):
            x = ref.step(_toy(x, t.expand(x.shape[0])), t, x).prev_sample
            # diffusers steps in float32 whatever the input: a float32 tolerance, relative to
            # the state's size (|x| ~ 1e2 at the first steps of the eps form)
            torch.testing.assert_close(ours[i], x, rtol=0, atol=TOL32 * float(x.abs().max()))
        finals[order] = ours[-1]
    # the two orders differ far beyond the tolerance (at K = 5, 3M takes two third-order steps)
    assert float((finals[2] - finals[3]).abs().max()) > 50 * TOL32


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("K", [10, 50])
def test_ddim_matches_diffusers(prediction, eta, K):
    """DDIM against ``DDIMScheduler`` on the trailing grid (whose steps are T / K apart: the
    scheduler derives the previous step as t - T // K) with alpha_bar = 1 after the last."""
    sch = _schedule("cosine")
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=sch.betas.numpy(),
        prediction_type=PREDICTION[prediction],
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
    )
    _float64(ref, sch)
    ref.set_timesteps(K)
    grid = sch.timesteps(K, "trailing")
    assert ref.timesteps.tolist() == grid.tolist()
    g = torch.Generator().manual_seed(1)
    zs = [torch.randn(16, 5, generator=g, dtype=torch.float64) for _ in range(K)]
    ours = _ours("ddim", sch, grid, prediction, eta=eta, noise_sampler=lambda i: zs[i])
    x = _x()
    for i, t in enumerate(ref.timesteps):
        out = _toy(x, t.expand(x.shape[0]))
        x = ref.step(out, t, x, eta=eta, variance_noise=zs[i]).prev_sample
        torch.testing.assert_close(ours[i], x, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_matches_diffusers(variance, prediction):
    """Ancestral sampling against ``DDPMScheduler`` on a strided custom grid, the step noise drawn
    in the same order from equal generators. diffusers' last step (to t = -1) adds noise of
    variance beta = 1 - alpha_bar_t with "fixed_large" where ours returns the x0 estimate, so
    that step is compared for "small" only (whose variance there is 0)."""
    sch = _schedule("cosine")
    grid = sch.timesteps(20, "linspace")  # steps of 52 or 53: not uniform
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        trained_betas=sch.betas.numpy(),
        variance_type=f"fixed_{variance}",
        prediction_type=PREDICTION[prediction],
        clip_sample=False,
    )
    _float64(ref, sch)
    ref.set_timesteps(timesteps=grid.tolist())
    assert ref.timesteps.tolist() == grid.tolist()
    g_ours = torch.Generator().manual_seed(2)
    ours = _ours(
        "ddpm",
        sch,
        grid,
        prediction,
        variance=variance,
        noise_sampler=lambda i: torch.randn(16, 5, generator=g_ours, dtype=torch.float64),
    )
    g_ref = torch.Generator().manual_seed(2)
    x = _x()
    compared = len(grid) if variance == "small" else len(grid) - 1
    for i, t in enumerate(ref.timesteps[:compared]):
        x = ref.step(_toy(x, t.expand(x.shape[0])), t, x, generator=g_ref).prev_sample
        torch.testing.assert_close(ours[i], x, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("clipped_eps", [False, True])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_clip_conventions_match_diffusers(clipped_eps, prediction):
    """``clip_eps="raw"`` is diffusers' ``use_clipped_model_output=False`` (its default) and
    "rederive" is ``True``, with ``clip_sample_range`` as the bound."""
    sch = _schedule("cosine")
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=sch.betas.numpy(),
        prediction_type=PREDICTION[prediction],
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=True,
        clip_sample_range=0.9,
    )
    _float64(ref, sch)
    ref.set_timesteps(10)
    grid = sch.timesteps(10, "trailing")
    rule = "rederive" if clipped_eps else "raw"
    ours = _ours("ddim", sch, grid, prediction, clip_x0=0.9, clip_eps=rule)
    x = _x()
    for i, t in enumerate(ref.timesteps):
        out = _toy(x, t.expand(x.shape[0]))
        x = ref.step(out, t, x, use_clipped_model_output=clipped_eps).prev_sample
        torch.testing.assert_close(ours[i], x, rtol=TOL, atol=TOL)


def test_dynamic_threshold_matches_diffusers():
    """``DynamicThreshold`` is diffusers' ``thresholding=True`` rule, inside a DDIM loop."""
    from diffsample.prediction import DynamicThreshold

    sch = _schedule("linear")
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=sch.betas.numpy(),
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        thresholding=True,
        dynamic_thresholding_ratio=0.9,
        sample_max_value=2.5,
    )
    _float64(ref, sch)
    ref.set_timesteps(10)
    x = 2 * torch.randn(16, 5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seen: list[torch.Tensor] = []
    SAMPLERS["ddim"](
        _toy,
        x,
        sch,
        sch.timesteps(10, "trailing"),
        clip_x0=DynamicThreshold(0.9, 2.5),
        clip_eps="raw",
        callback=lambda d: seen.append(d["x"]),
    )
    for i, t in enumerate(ref.timesteps):
        x = ref.step(_toy(x, t.expand(x.shape[0])), t, x).prev_sample
        torch.testing.assert_close(seen[i], x, rtol=TOL, atol=TOL)
