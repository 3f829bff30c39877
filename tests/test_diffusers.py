"""The samplers against an external reference: the schedulers of Hugging Face diffusers, step
for step on the same grid, schedule, denoiser and noise.

DDIM and DDPM are compared in float64 (each scheduler is given our float64 alpha_bar in place
of its float32 cumprod), to 1e-9. DPM-Solver++ in diffusers computes each step in float32
whatever the input dtype, so there the tolerance is 100 float32 epsilons of the state's size;
the 2M and 3M results differ by more than 50 times that, so the check tells the orders apart.
"""

from __future__ import annotations

import types

import pytest
import torch

from diffsample import SAMPLERS, NoiseSchedule, sample_ddim, sample_many

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


def _ddim_ref(sch: NoiseSchedule, K: int, **kw):
    """diffusers' ``DDIMScheduler`` on our float64 schedule, trailing grid of K steps, alpha_bar
    = 1 after the last step (``kw``: prediction_type, clipping and thresholding settings)."""
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=sch.betas.numpy(),
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        **kw,
    )
    _float64(ref, sch)
    ref.set_timesteps(K)
    return ref


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
    ref = _ddim_ref(sch, K, prediction_type=PREDICTION[prediction], clip_sample=False)
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
    ref = _ddim_ref(
        sch, 10, prediction_type=PREDICTION[prediction], clip_sample=True, clip_sample_range=0.9
    )
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
    ref = _ddim_ref(
        sch, 10, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.5
    )
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


# ---------------------------------------------------------------- NoiseSchedule.from_diffusers
EPS32 = float(torch.finfo(torch.float32).eps)
SUPPORTED = [
    (cls, kind)
    for cls in ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")
    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
    if cls == "DDPMScheduler" or kind not in ("sigmoid", "laplace")  # DDPM's alone
]


@pytest.mark.parametrize("cls,kind", SUPPORTED)
@pytest.mark.parametrize(
    "T,start,end", [(1000, 1e-4, 0.02), (1000, 0.00085, 0.012), (37, 1e-3, 0.3)]
)
def test_from_diffusers_matches_the_schedulers_betas(cls, kind, T, start, end):
    """Our float64 betas rounded to float32 are diffusers' float32 betas to 4 float32 ulps (its
    float32 linspace rounds each end and step, and scaled_linear squares a rounded root: 2.6
    ulps seen; the cosine and laplace betas, computed in float64 there too, round alike).
    alpha_bar, diffusers' float32 cumprod of those betas, is within the error bound of that
    product (below)."""
    ref = getattr(diffusers, cls)(
        num_train_timesteps=T, beta_schedule=kind, beta_start=start, beta_end=end
    )
    sch = NoiseSchedule.from_diffusers(ref)
    assert sch.name == f"diffusers:{kind}" and sch.betas.dtype == torch.float64
    torch.testing.assert_close(sch.betas.float(), ref.betas, rtol=4 * EPS32, atol=0)
    # each float32 factor 1 - beta adds an ulp (its rounding and the product's) and carries
    # beta's error of up to 4 ulps, relative to 1 - beta: 4 beta / (1 - beta) ulps (~4000 for
    # the cosine's last beta, 0.999)
    b = sch.betas
    bound = EPS32 * torch.cumsum(1 + 4 * b / (1 - b), 0)  # [T] relative
    err = (ref.alphas_cumprod.double() - sch.alphas_cumprod).abs() / sch.alphas_cumprod
    assert bool((err <= bound).all()), float((err / bound).max())
    # the scheduler and its config (a FrozenDict, or a plain dict) read alike
    assert torch.equal(NoiseSchedule.from_diffusers(ref.config).betas, sch.betas)
    assert torch.equal(NoiseSchedule.from_diffusers(dict(ref.config)).betas, sch.betas)


def test_from_diffusers_reads_trained_betas_and_refuses_zero_terminal_snr():
    betas = NoiseSchedule.cosine(50).betas
    ref = diffusers.DDIMScheduler(num_train_timesteps=50, trained_betas=betas.numpy())
    sch = NoiseSchedule.from_diffusers(ref)
    assert sch.name == "diffusers:trained_betas" and torch.equal(sch.betas, betas)
    zsnr = diffusers.DDIMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True)
    assert float(zsnr.alphas_cumprod[-1]) < 1e-6  # what is refused: alpha_bar_T ~ 0
    with pytest.raises(ValueError, match=r"^rescale_betas_zero_snr: expected False, got True"):
        NoiseSchedule.from_diffusers(zsnr)
    flow = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True)
    with pytest.raises(ValueError, match=r"^use_flow_sigmas: expected False, got True"):
        NoiseSchedule.from_diffusers(flow)


# ---------------------------------------------------------------- diffusers models as denoisers
def _unet1d(seed: int = 0):
    """A small UNet1DModel with random weights: eps for x [M, 3, 16] (channels 3, length 16)."""
    torch.manual_seed(seed)
    return diffusers.UNet1DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        time_embedding_type="positional",
        use_timestep_embedding=True,
        flip_sin_to_cos=False,
        freq_shift=1.0,
        down_block_types=("DownResnetBlock1D", "DownResnetBlock1D"),
        up_block_types=("UpResnetBlock1D",),
        mid_block_type="MidResTemporalBlock1D",
        out_block_type="OutConv1DBlock",
        act_fn="mish",
    ).eval()


def _ddim_loop(scheduler, unet, x_T: torch.Tensor) -> torch.Tensor:
    """diffusers' pipeline loop (DDIMPipeline): set_timesteps, then step with eta = 0."""
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return x


def _ddim_scheduler(**kw):
    return diffusers.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
        **kw,
    )


def test_unet1d_ddim_path_matches_diffusers():
    """A diffusers UNet1DModel (returning ``UNet1DOutput``) sampled by ``sample_ddim`` and by
    ``sample_many`` follows diffusers' own DDIM loop from the same x_T: in float64 (the UNet
    cast, the scheduler given the float64 alpha_bar of ``from_diffusers``) to 1e-9 of the
    sample's size; in float32, with the scheduler untouched, to 100 float32 epsilons of it."""
    K = 10
    unet = _unet1d()
    scheduler = _ddim_scheduler()
    sch = NoiseSchedule.from_diffusers(scheduler)
    scheduler.set_timesteps(K)
    grid = sch.timesteps(K, "trailing")
    assert scheduler.timesteps.tolist() == grid.tolist()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(4, 3, 16, generator=g, dtype=torch.float64)  # [M, C, L]

    with torch.no_grad():
        # float32, as a user runs it: the scheduler's own float32 alpha_bar
        ours32 = sample_ddim(unet, x_T.float(), sch, grid, prediction="eps", progress=False)
        ref32 = _ddim_loop(scheduler, unet, x_T.float())
        scale = float(ref32.abs().max())
        torch.testing.assert_close(ours32, ref32, rtol=0, atol=TOL32 * scale)

        unet.double()
        _float64(scheduler, sch)
        ours = sample_ddim(unet, x_T, sch, grid, prediction="eps", progress=False)
        ref = _ddim_loop(scheduler, unet, x_T)
        torch.testing.assert_close(ours, ref, rtol=0, atol=TOL * float(ref.abs().max()))
        # the grid may also be taken from the scheduler itself
        same = sample_ddim(unet, x_T, sch, scheduler.timesteps, prediction="eps", progress=False)
        assert torch.equal(same, ours)

        # through sample_many: record the x_T it draws (the first call of its first chunk), then
        # run diffusers' loop from there; memory_budget makes it probe the UNet first
        first: list[torch.Tensor] = []

        def recorded(x, t):
            if not first and int(t[0]) == int(grid[0]) and bool(x.any()):  # not the probe's zeros
                first.append(x.clone())
            return unet(x, t)

        many = sample_many(
            "ddim", recorded, (3, 16), 6, schedule=sch, timesteps=grid, seed=0,
            dtype=torch.float64, memory_budget=2**30, max_batch=6, progress=False,
        )  # fmt: skip
        assert many.shape == (6, 1, 3, 16)  # [S, B, C, L]
        ref_many = _ddim_loop(scheduler, unet, first[0])
        torch.testing.assert_close(
            many[:, 0], ref_many, rtol=0, atol=TOL * float(ref_many.abs().max())
        )


def test_denoiser_outputs_with_a_sample_tensor_are_accepted():
    """UNet1DOutput and UNet2DOutput give their ``.sample``; the same samples as a denoiser that
    returns the tensor. Objects without a tensor ``.sample`` (a tuple, as with
    ``return_dict=False``; a ``.sample`` that is not a tensor) keep the one-line TypeError."""
    sch = NoiseSchedule.linear(1000)
    grid = sch.timesteps(4)
    torch.manual_seed(0)
    unet2d = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    unet1d = _unet1d()
    with torch.no_grad():
        for net, E in ((unet1d, (3, 16)), (unet2d, (1, 8, 8))):
            x = torch.randn(3, *E, generator=torch.Generator().manual_seed(2))
            out = net(x, grid[:1].expand(3))
            assert not isinstance(out, torch.Tensor) and isinstance(out.sample, torch.Tensor)
            got = sample_ddim(net, x, sch, grid, progress=False)
            want = sample_ddim(lambda x, t, n=net: n(x, t).sample, x, sch, grid, progress=False)
            assert torch.equal(got, want)
        # under autocast the output object's .sample is cast back to the sample dtype
        y = sample_many(
            "ddim", unet1d, (3, 16), 2, schedule=sch, timesteps=grid, seed=0,
            autocast=torch.bfloat16, progress=False,
        )  # fmt: skip
        assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())

        x = torch.randn(3, 3, 16, generator=torch.Generator().manual_seed(2))
        for bad, seen in (
            (lambda x, t: unet1d(x, t, return_dict=False), "tuple"),
            (lambda x, t: types.SimpleNamespace(sample=x.tolist()), "SimpleNamespace"),
            (lambda x, t: types.SimpleNamespace(prev_sample=x), "SimpleNamespace"),
        ):
            with pytest.raises(
                TypeError,
                match=r"^denoiser: expected an output of shape \(3, 3, 16\) \(the input x_t "
                rf"\[M, \*event_shape\]\) as a tensor or an object with a tensor \.sample, "
                rf"got {seen}$",
            ):
                sample_ddim(bad, x, sch, grid, progress=False)
        # a .sample of the wrong shape is named like a tensor of the wrong shape
        with pytest.raises(ValueError, match=r"got a torch.float32 tensor of shape \(3, 3\)"):
            sample_ddim(
                lambda x, t: types.SimpleNamespace(sample=x[..., 0]), x, sch, grid, progress=False
            )
