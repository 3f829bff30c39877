"""The reference forecaster: backbone against a hand-written forward, invariances, the training
loss against the forward process written out, shapes and layout through every path,
reproducible forecasts, config and input checks, and checkpoints (round trip, checksum, one-line
errors). The trainer's tests are in test_training.py.

Dimensions: S samples, B windows, L lookback, H horizon, N variates, F time features."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import TINY
from torch import nn

from diffsample.forecast import (
    Forecast,
    ForecastConfig,
    ITransformer,
    ITransformerDiffusion,
    SamplingConfig,
    TokenDenoiser,
    UNet1DDenoiser,
)
from diffsample.forecast.checkpoint import model_payload, write_checkpoint


def tiny_model(**changes) -> ITransformerDiffusion:
    torch.manual_seed(0)
    return ITransformerDiffusion(dataclasses.replace(TINY, **changes)).eval()


def inputs(B=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 24, 3, generator=g) * 2 + 1, torch.rand(B, 24, 4, generator=g) - 0.5


# ---------------------------------------------------------------- backbone
def reference_itransformer(m: ITransformer, x: torch.Tensor, marks: torch.Tensor):
    """iTransformer forward written out with explicit matmuls from the module's weights."""
    N = x.shape[2]
    mu = x.mean(1, keepdim=True)
    sd = torch.sqrt(((x - mu) ** 2).mean(1, keepdim=True) + m.norm_eps)
    tokens = torch.cat(
        [((x - mu) / sd).transpose(1, 2), marks.transpose(1, 2)], dim=1
    )  # [B, N + F, L]
    h = tokens @ m.embed.weight.T + m.embed.bias
    for layer in m.layers:
        D = h.shape[-1]
        nh = layer.n_heads
        q, k, v = (h @ layer.qkv.weight.T + layer.qkv.bias).split(D, dim=-1)
        heads = []
        for i in range(nh):
            sl = slice(i * D // nh, (i + 1) * D // nh)
            att = torch.softmax(
                q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(D // nh), dim=-1
            )
            heads.append(att @ v[..., sl])
        a = torch.cat(heads, dim=-1) @ layer.proj.weight.T + layer.proj.bias
        h = F.layer_norm(h + a, (D,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        ff = F.gelu(h @ layer.ff1.weight.T + layer.ff1.bias) @ layer.ff2.weight.T + layer.ff2.bias
        h = F.layer_norm(h + ff, (D,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
    z = F.layer_norm(h, (h.shape[-1],), m.norm.weight, m.norm.bias, m.norm.eps)[:, :N]
    y = (z @ m.head.weight.T + m.head.bias).transpose(1, 2)
    return y * sd + mu, z


def test_backbone_matches_hand_written_forward():
    m = tiny_model().backbone.double()
    x, marks = (t.double() for t in inputs())
    y, z = m(x, marks)
    y_ref, z_ref = reference_itransformer(m, x, marks)
    assert y.shape == (5, 12, 3) and z.shape == (5, 3, 16)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z, z_ref, rtol=1e-10, atol=1e-10)


def test_time_feature_tokens_change_the_output():
    m = tiny_model()
    x, marks = inputs()
    y1, _ = m(x, marks)
    y2, _ = m(x, marks + 0.3)
    assert not torch.allclose(y1, y2, atol=1e-4)


def test_point_forecast_is_equivariant_to_per_window_shift_and_scale():
    m = tiny_model().double()
    x, marks = (t.double() for t in inputs())
    g = torch.Generator().manual_seed(2)
    a = (
        torch.rand(5, 1, 3, generator=g, dtype=torch.float64) * 3 + 0.5
    )  # per window and variate, > 0
    b = torch.randn(5, 1, 3, generator=g, dtype=torch.float64) * 10
    y, _ = m(x, marks)
    y_t, _ = m(a * x + b, marks)
    # exact up to the norm_eps = 1e-5 inside sqrt(var + eps): relative effect ~ eps / var ~ 1e-6 here
    torch.testing.assert_close(y_t, a * y + b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- denoisers
@pytest.mark.parametrize("horizon", [12, 13])
def test_denoisers_shapes_and_identity_start(horizon):
    g = torch.Generator().manual_seed(3)
    x, t, z = (
        torch.randn(4, horizon, 3, generator=g),
        torch.randint(0, 50, (4,), generator=g),
        torch.randn(4, 3, 16, generator=g),
    )
    for net in (
        TokenDenoiser(horizon, 16, d_model=16, n_heads=2, n_layers=1),
        UNet1DDenoiser(horizon, 16, channels=(8, 16), emb_dim=16, n_heads=2),
    ):
        with torch.no_grad():
            out = net(x, t, z=z)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.abs().max()) == 0.0  # zero-initialised output layer: starts at eps = 0
    unet = UNet1DDenoiser(horizon, 16, channels=(8, 16), emb_dim=16, n_heads=2)
    block = unet.down[0]
    emb = torch.randn(12, 16, generator=g)
    with torch.no_grad():
        gamma, beta = block.film(emb).chunk(2, dim=1)
    assert (
        float(gamma.abs().max()) == 0.0 and float(beta.abs().max()) == 0.0
    )  # FiLM starts as the identity


@pytest.mark.parametrize("denoiser", ["token", "unet"])
def test_denoisers_read_the_step_and_the_tokens_once_trained_a_little(denoiser):
    m = tiny_model(denoiser=denoiser)
    for p in m.denoiser.parameters():  # move off the zero/identity init
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(4)
    dz = m.config.d_model + 1  # z and the history's log std (history_stats="scale", the default)
    x, z = torch.randn(2, 12, 3, generator=g), torch.randn(2, 3, dz, generator=g)
    out = m.denoiser(x, torch.tensor([3, 3]), z=z)
    assert not torch.allclose(out, m.denoiser(x, torch.tensor([40, 40]), z=z))
    assert not torch.allclose(out, m.denoiser(x, torch.tensor([3, 3]), z=z + 1))


def _trained_a_little(net: nn.Module) -> nn.Module:
    torch.manual_seed(5)
    for p in net.parameters():  # off the zero/identity init, so every branch matters
        torch.nn.init.normal_(p, std=0.1)
    return net.eval().requires_grad_(False)


def _denoisers(horizon=12):
    return [
        _trained_a_little(TokenDenoiser(horizon, 16, d_model=16, n_heads=2, n_layers=2)),
        # channels 16 = Dz packs q, k, v in one in_proj weight; 32 keeps three: both paths
        _trained_a_little(UNet1DDenoiser(horizon, 16, channels=(8, 16, 32), emb_dim=16, n_heads=2)),
    ]


def _mha_token_forward(net: TokenDenoiser, x_t, t, z):
    """TokenDenoiser written with nn.MultiheadAttention's own forward (what SDPA replaced)."""
    tokens = net.embed(x_t.transpose(1, 2)) + net.cond(z)
    c = net.step(t)
    for b in net.blocks:
        s1, c1, g1, s2, c2, g2 = b.ada(c).chunk(6, dim=-1)
        h = b.norm1(tokens) * (1 + c1[:, None]) + s1[:, None]
        tokens = tokens + g1[:, None] * b.attn(h, h, h, need_weights=False)[0]
        h = b.norm2(tokens) * (1 + c2[:, None]) + s2[:, None]
        tokens = tokens + g2[:, None] * b.mlp(h)
    shift, scale = net.final_ada(c).chunk(2, dim=-1)
    return net.out(net.norm(tokens) * (1 + scale[:, None]) + shift[:, None]).transpose(1, 2)


def test_attention_through_sdpa_matches_nn_multiheadattention():
    g = torch.Generator().manual_seed(6)
    x, t = torch.randn(4, 12, 3, generator=g), torch.randint(0, 50, (4,), generator=g)
    z = torch.randn(4, 3, 16, generator=g)
    token, unet = _denoisers()
    with torch.no_grad():
        torch.testing.assert_close(token(x, t, z=z), _mha_token_forward(token, x, t, z))
        for attn in (unet.down_attn[1], unet.mid_attn):  # C = 16 (packed) and 32 (not)
            # the U-Net's cross-attention: every series reads its row's N tokens
            h = torch.randn(4 * 3, attn.attn.embed_dim, 5, generator=g)  # [M*N, C, L]
            q = attn.norm(h).transpose(1, 2)
            z_rows = z.repeat_interleave(3, dim=0)  # [M*N, N, Dz]
            ref = h + attn.attn(q, z_rows, z_rows, need_weights=False)[0].transpose(1, 2)
            torch.testing.assert_close(attn(h, attn.kv(z)), ref)
    # the weights stay where they were: checkpoints of earlier versions load unchanged
    assert {"blocks.0.attn.in_proj_weight", "blocks.0.attn.out_proj.weight"} <= set(
        token.state_dict()
    )
    assert {"down_attn.1.attn.in_proj_weight", "mid_attn.attn.k_proj_weight"} <= set(
        unet.state_dict()
    )


@pytest.mark.parametrize("which", [0, 1], ids=["token", "unet"])
def test_denoiser_hooks_give_the_same_output_and_see_fewer_rows(which):
    net = _denoisers()[which]
    g = torch.Generator().manual_seed(7)
    x, z = torch.randn(6, 12, 3, generator=g), torch.randn(6, 3, 16, generator=g)
    t_rows = torch.full((6,), 17)  # one step, one value per row
    t_view = torch.full((1,), 17).expand(6)  # one step as a stride-0 view (what samplers pass)
    step_rows = []
    net.step.register_forward_hook(lambda mod, args, out: step_rows.append(args[0].shape[0]))
    with torch.no_grad():
        ref = net(x, t_rows, z=z)
        torch.testing.assert_close(net(x, t_view, z=z), ref)
        torch.testing.assert_close(net(x, t_view, **net.prepare_cond(z=z)), ref)
    assert step_rows == [6, 1, 1]  # the step embedding once per call for a stride-0 t
    prepared = net.prepare_cond(z=z[:2])
    assert all(v.shape[0] == 2 for v in prepared.values())  # one row per window
    with pytest.raises(TypeError, match="pass"):
        net(x, t_rows)  # neither z nor the prepared keywords


@pytest.mark.parametrize("denoiser", ["token", "unet"])
def test_sample_many_uses_prepare_cond_once_per_window_and_changes_nothing(denoiser):
    from diffsample import sample_many

    m = tiny_model(denoiser=denoiser)
    _trained_a_little(m.denoiser)
    g = torch.Generator().manual_seed(8)
    z = torch.randn(5, 3, m.config.d_model + 1, generator=g)  # B = 5 windows, [B, N, Dz]
    calls = []
    prepare = m.denoiser.prepare_cond
    m.denoiser.prepare_cond = lambda **c: calls.append(c["z"].shape[0]) or prepare(**c)
    kw = dict(cond={"z": z}, schedule=m.schedule, timesteps=m.schedule.timesteps(6),
              prediction="v", progress=False, max_batch=7, seed=0)  # fmt: skip
    hooked = sample_many("ddim", m.denoiser, (12, 3), 4, **kw)

    def plain(x, t, *, z):  # no hooks: a copy of t per row, no prepare_cond attribute
        return m.denoiser(x, t.contiguous(), z=z)

    torch.testing.assert_close(hooked, sample_many("ddim", plain, (12, 3), 4, **kw))
    assert calls == [5]  # once, on the B windows, before chunking


# ---------------------------------------------------------------- model paths
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("denoiser", ["token", "unet"])
def test_losses_and_forecast_shapes(prediction, denoiser):
    m = tiny_model(prediction=prediction, denoiser=denoiser)
    x, marks = inputs(B=4)
    y = torch.randn(4, 12, 3, generator=torch.Generator().manual_seed(5))
    assert m.point_loss(x, y, marks).shape == () and torch.isfinite(m.point_loss(x, y, marks))
    loss = m.diffusion_loss(x, y, marks, generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and loss.requires_grad
    loss.backward()
    assert all(p.grad is None for p in m.backbone.parameters())  # stage 2 never trains the backbone
    for sampler in ("ddim", "ddpm", "dpmpp_2m", "dpmpp_3m"):
        fc = m.forecast(x, 6, time_features=marks, sampler=sampler, num_steps=5, progress=False)
        assert isinstance(fc, Forecast)
        assert fc.samples.shape == (6, 4, 12, 3) and fc.samples.dtype == torch.float32
        assert fc.point.shape == (4, 12, 3)
        assert bool(torch.isfinite(fc.samples).all())


@pytest.mark.parametrize("denoiser", ["token", "unet"])
def test_forecast_returns_one_named_tuple_of_contiguous_tensors(denoiser):
    """The token denoiser answers in a permuted layout and the backbone's head ends in a
    transpose; neither may reach the samples (strided samples made the metrics ~20x slower)."""
    m = tiny_model(denoiser=denoiser)
    for p in m.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, marks = inputs(B=5)
    fc = m.forecast(x, 4, time_features=marks, num_steps=3, progress=False)
    assert type(fc) is Forecast and Forecast._fields == ("samples", "point")
    samples, point = fc  # still a tuple
    assert samples is fc.samples and point is fc.point
    assert samples.is_contiguous() and samples.stride() == (5 * 12 * 3, 12 * 3, 3, 1)
    assert point.is_contiguous() and point.stride() == (12 * 3, 3, 1)
    y_det, _ = m(x, marks)
    torch.testing.assert_close(point, y_det)  # the point field is the backbone's forecast
    assert not torch.allclose(samples[0], point)  # and the samples field is not


@pytest.mark.parametrize(
    ("prediction", "history_stats"),
    [("eps", "scale"), ("x0", "scale"), ("v", "scale"), ("v", "scale_level"), ("v", "none")],
)
def test_diffusion_loss_is_the_forward_process_written_out(prediction, history_stats):
    """The loss against x_t = sqrt(ab[t]) r0 + sqrt(1 - ab[t]) eps and the target of each
    prediction type, written from the formulas with the same draws of t and eps; the denoiser
    conditioned on z, then (history_stats) each variate's history log std (and mean)."""
    m = tiny_model(prediction=prediction, history_stats=history_stats)
    mean, std = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([1.5, 0.5, 2.0])
    m.set_residual_stats(mean, std)
    seen = {}

    class Recorder(nn.Module):
        def forward(self, x_t, t, *, z):
            seen.update(x_t=x_t, t=t, z=z)
            return 0.5 * x_t - 0.1

    m.denoiser = Recorder()
    x, marks = inputs(B=6)
    y = torch.randn(6, 12, 3, generator=torch.Generator().manual_seed(6)) * 2
    loss = m.diffusion_loss(x, y, marks, generator=torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)  # the loss draws t, then the noise
    t = torch.randint(0, 50, (6,), generator=g)
    noise = torch.randn(6, 12, 3, generator=g).double()
    with torch.no_grad():  # as inside the loss: the same kernels, so z compares bitwise
        y_det, z = m(x, marks)
    r0 = ((y - y_det - mean) / std).double()
    ab = m.schedule.alphas_cumprod[t][:, None, None]  # float64
    x_t = ab.sqrt() * r0 + (1 - ab).sqrt() * noise
    target = {"eps": noise, "x0": r0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * r0}[prediction]
    ref = ((0.5 * x_t - 0.1 - target) ** 2).mean()

    var = x.var(dim=1, unbiased=False) + m.backbone.norm_eps  # [B, N]
    stats = {"none": [], "scale": [0.5 * var.log()], "scale_level": [0.5 * var.log(), x.mean(1)]}
    z = torch.cat([z, *(s[..., None] for s in stats[history_stats])], dim=-1)
    assert z.shape == (6, 3, m.config.d_model + len(stats[history_stats]))
    assert torch.equal(seen["t"], t) and torch.equal(seen["z"], z)
    assert seen["x_t"].dtype == torch.float32
    torch.testing.assert_close(seen["x_t"].double(), x_t, rtol=1e-6, atol=1e-6)  # float32 r0
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)


def test_diffusion_loss_draws_are_copies_of_each_window():
    """draws=k: the k * B rows are the batch k times over (window b in rows b, B + b, ...),
    each with its own t and noise, in the order the generator gives them: the same loss as
    one draw on the batch concatenated k times, with the backbone run on B rows only."""
    m = tiny_model()
    x, marks = inputs(B=4)
    y = torch.randn(4, 12, 3, generator=torch.Generator().manual_seed(8))
    seen = []

    class Recorder(nn.Module):
        def forward(self, x_t, t, *, z):
            seen.append((x_t, t, z))
            return 0.5 * x_t

    m.denoiser = Recorder()
    calls = []
    m.backbone.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    three = m.diffusion_loss(x, y, marks, generator=torch.Generator().manual_seed(9), draws=3)
    cat = [torch.cat([u] * 3) for u in (x, y, marks)]
    once = m.diffusion_loss(*cat, generator=torch.Generator().manual_seed(9))
    assert calls == [4, 12]
    (xt3, t3, z3), (xt1, t1, z1) = seen
    assert xt3.shape == (12, 12, 3) and torch.equal(t3, t1)
    torch.testing.assert_close(z3, z1, rtol=1e-6, atol=1e-6)  # B rows vs 3 B rows of kernels
    torch.testing.assert_close(xt3, xt1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(three, once, rtol=1e-6, atol=1e-6)
    assert len(set(t3.tolist())) > 4  # not one t per window repeated
    with pytest.raises(ValueError, match=r"^draws: expected a positive integer, got int 0$"):
        m.diffusion_loss(x, y, marks, draws=0)


def test_forecast_is_the_point_forecast_plus_rescaled_residual_samples():
    m = tiny_model()
    for p in m.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, marks = inputs(B=3)

    def run() -> Forecast:
        return m.forecast(x, 4, time_features=marks, num_steps=3, progress=False)

    s1, y_det = run()
    mean, std = torch.tensor([0.5, -1.0, 0.0]), torch.tensor([2.0, 0.5, 1.0])
    m.set_residual_stats(mean, std)
    s2, y_det2 = run()
    torch.testing.assert_close(y_det2, y_det)
    # the same normalised residual samples r, mapped back with the fixed statistics
    torch.testing.assert_close(s2, y_det + (s1 - y_det) * std + mean, rtol=1e-5, atol=1e-5)


def test_residual_scale_multiplies_the_sampled_residual_per_step_and_variate():
    m = tiny_model()
    for p in m.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, marks = inputs(B=3)
    m.set_residual_stats(torch.tensor([0.5, -1.0, 0.0]), torch.tensor([2.0, 0.5, 1.0]))
    assert torch.equal(m.res_scale, torch.ones(12, 3))  # uncalibrated until told

    def run() -> Forecast:
        return m.forecast(x, 4, time_features=marks, num_steps=3, progress=False)

    s1, y_det = run()
    scale = torch.linspace(0.5, 2.0, 36).reshape(12, 3)  # [H, N]
    m.set_residual_scale(scale)
    s2, _ = run()
    # y = y_det + res_mean + res_std * res_scale * r, with the same r
    dev = s1 - y_det - m.res_mean
    torch.testing.assert_close(s2, y_det + m.res_mean + dev * scale, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("scale", "error", "pattern"),
    [
        (torch.ones(3), ValueError, r"^scale: expected a tensor \[12, 3\] \(H, N\), got"),
        (torch.zeros(12, 3), ValueError, r"^scale: expected positive finite values"),
        (torch.full((12, 3), math.inf), ValueError, r"^scale: expected positive finite"),
        (torch.ones(12, 3, dtype=torch.long), TypeError, r"^scale: expected a floating-point"),
    ],
)
def test_bad_residual_scale(scale, error, pattern):
    with pytest.raises(error, match=pattern):
        tiny_model().set_residual_scale(scale)


def test_checkpoint_without_residual_scale_loads_uncalibrated(tmp_path):
    m = tiny_model()
    m.set_residual_scale(torch.full((12, 3), 2.0))
    path = m.save(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["res_scale"]  # as written before the spread calibration existed
    write_checkpoint(path, payload)
    back = ITransformerDiffusion.load(path)
    assert torch.equal(back.res_scale, torch.ones(12, 3))


def test_a_0_2_checkpoint_loads_as_a_denoiser_of_z_alone(tmp_path):
    m = tiny_model(history_stats="none")  # what 0.2.0 built
    path = m.save(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["history_stats"]  # 0.2.0 had no such field
    write_checkpoint(path, payload)
    back = ITransformerDiffusion.load(path)
    assert back.config.history_stats == "none" and back.config == m.config
    x, marks = inputs(B=3)
    kw = dict(n_samples=4, num_steps=3, time_features=marks, progress=False)
    torch.testing.assert_close(back.forecast(x, **kw).samples, m.forecast(x, **kw).samples)


def test_the_history_stats_reach_the_denoiser_so_its_spread_can_follow_the_window():
    m = tiny_model()
    for p in m.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, marks = inputs(B=2)
    # the backbone is shift- and scale-equivariant, so z is the same for both windows; only
    # the stats tell the denoiser that the second is 4x as volatile
    two, two_marks = torch.cat([x[:1], 4 * x[:1]]), marks[:1].expand(2, -1, -1).contiguous()
    _, z = m(two, two_marks)
    torch.testing.assert_close(z[0], z[1], rtol=1e-4, atol=1e-4)
    cond = m.condition(two, z)  # [2, N, D + 1]
    torch.testing.assert_close(cond[1, :, -1] - cond[0, :, -1], torch.full((3,), math.log(4.0)))
    off = tiny_model(history_stats="none")
    for p in off.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    assert torch.equal(off.condition(x, z), z)
    # the same noise for both windows (one window id): their residual samples differ only
    # when the denoiser sees the stats
    kw = dict(n_samples=4, num_steps=3, time_features=two_marks, progress=False)
    ids = torch.tensor([0, 0])
    r_on, r_off = (
        fc.samples - fc.point
        for fc in (model.forecast(two, window_ids=ids, **kw) for model in (m, off))
    )  # [S, 2, H, N]
    assert not torch.allclose(r_on[:, 0], r_on[:, 1], atol=1e-3)
    torch.testing.assert_close(r_off[:, 0], r_off[:, 1], rtol=1e-3, atol=1e-3)


def test_history_stats_scale_leaves_out_the_level_and_old_booleans_read_as_before(tmp_path):
    """ "scale" conditions on the log std only, so shifting a window's history (its level)
    changes neither z nor the condition; "scale_level" sees the shift. True / False (0.3.0 to
    0.5.0 configs and checkpoints) read as "scale_level" / "none"."""
    x, marks = inputs(B=2)
    both = tiny_model(history_stats="scale_level")
    for m in (tiny_model(), both):
        _, z = m(x, marks)
        _, z_up = m(x + 3.0, marks)
        torch.testing.assert_close(z_up, z, rtol=1e-4, atol=1e-4)  # instance normalisation
        moved = m.condition(x + 3.0, z) - m.condition(x, z)  # [B, N, Dz]
        assert bool((moved.abs() > 1).any()) == (m.config.history_stats == "scale_level")
    assert ForecastConfig(history_stats=True).history_stats == "scale_level"
    assert ForecastConfig(history_stats=False).history_stats == "none"
    with pytest.raises(ValueError, match="history_stats"):
        ForecastConfig(history_stats="level")
    path = both.save(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["history_stats"] = True  # as 0.5.0 wrote it
    write_checkpoint(path, payload)
    back = ITransformerDiffusion.load(path)
    assert back.config == both.config
    kw = dict(n_samples=3, num_steps=2, time_features=marks, progress=False)
    assert torch.equal(back.forecast(x, **kw).samples, both.forecast(x, **kw).samples)


def test_forecast_identical_across_max_batch_and_test_batches():
    m = tiny_model()
    for p in m.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, marks = inputs(B=6)
    ids = torch.arange(100, 106)
    ref = m.forecast(
        x, 5, time_features=marks, num_steps=4, window_ids=ids, seed=3, progress=False
    ).samples
    for mb in (1, 7, 30):
        got = m.forecast(
            x,
            5,
            time_features=marks,
            num_steps=4,
            window_ids=ids,
            seed=3,
            max_batch=mb,
            progress=False,
        ).samples
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    parts = [
        m.forecast(
            x[i : i + 3],
            5,
            time_features=marks[i : i + 3],
            num_steps=4,
            window_ids=ids[i : i + 3],
            seed=3,
            progress=False,
        ).samples
        for i in (0, 3)
    ]
    torch.testing.assert_close(torch.cat(parts, dim=1), ref, rtol=1e-5, atol=1e-5)
    other = m.forecast(
        x, 5, time_features=marks, num_steps=4, window_ids=ids, seed=4, progress=False
    ).samples
    assert not torch.allclose(other, ref)


def test_forecast_takes_a_sampling_config_or_its_loose_keywords():
    m = tiny_model()
    for p in m.denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, marks = inputs(B=4)
    kw = dict(time_features=marks, window_ids=torch.arange(10, 14), progress=False)
    loose = m.forecast(
        x, 5, sampler="ddim", num_steps=3, spacing="trailing", seed=(2, 1), max_batch=7,
        eta=0.5, clip_x0=4.0, clip_eps="raw", **kw,
    )  # fmt: skip
    config = SamplingConfig(
        n_samples=5, num_steps=3, sampler="ddim", spacing="trailing", seed=(2, 1), max_batch=7,
        eta=0.5, clip_x0=4.0, clip_eps="raw",
    )  # fmt: skip
    given = m.forecast(x, sampling=config, **kw)
    assert torch.equal(given.samples, loose.samples) and torch.equal(given.point, loose.point)
    assert torch.equal(m.forecast(x, 5, sampling=config, eta=0.5, **kw).samples, loose.samples)
    assert not torch.equal(
        m.forecast(x, sampling=dataclasses.replace(config, eta=0.0), **kw).samples, loose.samples
    )  # eta reaches the sampler
    with pytest.raises(
        ValueError,
        match=r"^eta, sampling: expected eta left out or equal to sampling\.eta, got eta=0\.0 "
        r"and sampling\.eta=0\.5$",
    ):
        m.forecast(x, sampling=config, eta=0.0, **kw)
    with pytest.raises(ValueError, match=r"^n_samples, sampling: expected n_samples left out"):
        m.forecast(x, 6, sampling=config, **kw)
    assert m.forecast(x, num_steps=2, **kw).samples.shape == (100, 4, 12, 3)  # S defaults to 100
    # autocast as sample_many takes it (a dtype) or as the config names it: the same samples,
    # and not the full-precision ones (the denoiser ran in bf16)
    bf16 = m.forecast(x, 3, num_steps=2, autocast=torch.bfloat16, **kw).samples
    named = m.forecast(x, sampling=SamplingConfig(3, 2, autocast="bf16"), **kw).samples
    assert torch.equal(bf16, named)
    assert not torch.equal(bf16, m.forecast(x, 3, num_steps=2, **kw).samples)
    with pytest.raises(TypeError, match=r"^sampling: expected a SamplingConfig or None"):
        m.forecast(x, sampling={"n_samples": 3}, **kw)


def test_backbone_runs_once_per_window_not_per_sample():
    m = tiny_model()
    calls = []
    m.backbone.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    x, marks = inputs(B=3)
    m.forecast(x, 50, time_features=marks, num_steps=2, max_batch=16, progress=False)
    assert calls == [3]


# ---------------------------------------------------------------- config, input checks, persistence
@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"lookback": 0}, ValueError, r"^lookback: expected a positive integer, got int 0$"),
        ({"lookback": 1.5}, TypeError, r"^lookback: expected a positive integer, got float 1\.5$"),
        ({"horizon": True}, TypeError, r"^horizon: expected a positive integer, got bool True$"),
        ({"n_time_features": -1}, ValueError, r"^n_time_features: expected a non-negative"),
        ({"dropout": 1.0}, ValueError, r"^dropout: expected a finite number in \[0, 1\)"),
        ({"dropout": "0.1"}, TypeError, r"^dropout: expected a finite number"),
        ({"dropout": math.nan}, ValueError, r"^dropout: expected a finite number"),
        ({"denoiser": "mlp"}, ValueError, r"^denoiser: expected one of 'token', 'unet', got"),
        ({"denoiser": 1}, TypeError, r"^denoiser: expected one of"),
        ({"prediction": "score"}, ValueError, r"^prediction: expected one of 'eps', 'x0', 'v'"),
        ({"schedule": "cos"}, ValueError, r"^schedule: expected one of 'linear', "),
        ({"num_train_steps": 2.0}, TypeError, r"^num_train_steps: expected a positive integer"),
        ({"unet_channels": ()}, ValueError, r"^unet_channels: expected at least one"),
        ({"unet_channels": "32"}, TypeError, r"^unet_channels: expected a sequence"),
        ({"unet_channels": (8, 0)}, ValueError, r"^unet_channels\[1\]: expected a positive"),
        ({"n_heads": 3}, ValueError, r"^n_heads: expected a divisor of d_model=16, got int 3$"),
        (
            {"denoiser_heads": 3},
            ValueError,
            r"^denoiser_heads: expected a divisor of denoiser_width",
        ),
        (
            {"denoiser": "unet", "unet_channels": (8, 12), "denoiser_heads": 8},
            ValueError,
            r"^denoiser_heads: expected a divisor of unet_channels\[1\]=12, got int 8$",
        ),
    ],
)
def test_forecast_config_checks_every_field(change, error, pattern):
    with pytest.raises(error, match=pattern):
        dataclasses.replace(TINY, **change)


def test_forecast_config_stores_plain_python_numbers():
    """numpy scalars (from a sweep, say) become int / float: a checkpoint must load with
    torch.load(weights_only=True)."""
    c = dataclasses.replace(
        TINY, lookback=np.int64(24), dropout=np.float32(0.25), unet_channels=[8, 16]
    )
    assert type(c.lookback) is int and type(c.dropout) is float and c.unet_channels == (8, 16)
    # widths that no GroupNorm group count divided before now build (groups = gcd)
    m = ITransformerDiffusion(dataclasses.replace(TINY, denoiser="unet", unet_channels=(6, 10)))
    x, marks = inputs(B=2)
    fc = m.forecast(x, 2, time_features=marks, num_steps=2, progress=False)
    assert fc.samples.shape == (2, 2, 12, 3)


def test_bad_inputs():
    m = tiny_model()
    x, marks = inputs()
    with pytest.raises(
        ValueError,
        match=r"^history: expected a tensor \[B, 24, 3\] \(B windows >= 1, L, N\), got a "
        r"torch\.float32 tensor of shape \(5, 24, 4\)$",
    ):
        m(torch.zeros(5, 24, 4), marks)
    with pytest.raises(TypeError, match=r"^history: expected a torch\.Tensor"):
        m(x.numpy(), marks)
    with pytest.raises(ValueError, match="time_features: this model uses 4 time features"):
        m(x)
    with pytest.raises(ValueError, match=r"^time_features: expected a tensor \[5, 24, 4\]"):
        m(x, marks[:, :, :2])
    with pytest.raises(ValueError, match="std: expected positive"):
        m.set_residual_stats(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(TypeError, match=r"^config: expected a ForecastConfig"):
        ITransformerDiffusion(dataclasses.asdict(TINY))


@pytest.mark.parametrize(
    ("history", "marks", "error", "pattern"),
    [
        # issue 8: float64 reached the float32 matmuls and failed inside torch; B = 0 went on
        # into the sampler
        (
            lambda x: x.double(),
            None,
            TypeError,
            r"^history: expected a torch\.float32 tensor like the model's parameters \(cast with "
            r"\.to\(torch\.float32\)\), got a torch\.float64 tensor of shape \(5, 24, 3\)$",
        ),
        (
            lambda x: x.long(),
            None,
            TypeError,
            r"^history: expected a torch\.float32 tensor .*, got a torch\.int64 tensor",
        ),
        (
            lambda x: x[:0],
            lambda m: m[:0],
            ValueError,
            r"^history: expected a tensor \[B, 24, 3\] \(B windows >= 1, L, N\), got a "
            r"torch\.float32 tensor of shape \(0, 24, 3\)$",
        ),
        (
            lambda x: x[0],
            None,
            ValueError,
            r"^history: expected a tensor \[B, 24, 3\].*of shape \(24, 3\)$",
        ),
        (
            None,
            lambda m: m.double(),
            TypeError,
            r"^time_features: expected a torch\.float32 tensor .*, got a torch\.float64 tensor",
        ),
        (
            None,
            lambda m: m[:3],
            ValueError,
            r"^time_features: expected a tensor \[5, 24, 4\] \(B, L, F\), got .*\(3, 24, 4\)$",
        ),
    ],
)
def test_forecast_rejects_inputs_of_the_wrong_dtype_or_shape(history, marks, error, pattern):
    """One rule: inputs have the parameters' dtype (no silent cast, documented in
    model_checks.check_inputs) and at least one window; each message is one line in the one
    grammar."""
    m = tiny_model()
    x, mk = inputs()
    x, mk = (history or (lambda v: v))(x), (marks or (lambda v: v))(mk)
    with pytest.raises(error, match=pattern):
        m.forecast(x, 2, time_features=mk, num_steps=2, progress=False)
    # a float64 model takes float64 inputs: the rule is "like the parameters", not "float32"
    y_det, _ = tiny_model().double()(inputs()[0].double(), inputs()[1].double())
    assert y_det.dtype == torch.float64


def test_save_load_round_trip_and_bad_files(tmp_path):
    m = tiny_model(denoiser="unet", prediction="v")
    m.set_residual_stats(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.5, 2.5, 3.5]))
    path = m.save(tmp_path / "sub" / "model.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp file left behind
    back = ITransformerDiffusion.load(path)
    assert back.config == m.config and back.data_spec is None and not back.training
    for (k, v), (k2, v2) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    x, marks = inputs()
    torch.testing.assert_close(
        back.forecast(x, 3, time_features=marks, num_steps=3, progress=False),
        m.forecast(x, 3, time_features=marks, num_steps=3, progress=False),
    )  # both fields

    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(
        ValueError, match=r"^checkpoint: .*broken\.pt is not a readable diffsample checkpoint \("
    ):
        ITransformerDiffusion.load(broken)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(
        ValueError, match=r"^checkpoint: .*other\.pt is not a diffsample checkpoint \(format None"
    ):
        ITransformerDiffusion.load(other)
    payload = torch.load(path, weights_only=True)
    payload["config"]["d_model"] = 32
    mismatched = tmp_path / "mismatched.pt"
    write_checkpoint(mismatched, payload)  # a valid checksum: the config itself is wrong
    with pytest.raises(
        ValueError, match=r"mismatched\.pt: weights do not match the config.*shape mismatches"
    ):
        ITransformerDiffusion.load(mismatched)
    payload["config"]["d_model"] = 1.5
    write_checkpoint(mismatched, payload)
    with pytest.raises(ValueError, match=r"mismatched\.pt: bad config: d_model: expected a pos"):
        ITransformerDiffusion.load(mismatched)
    with pytest.raises(FileNotFoundError):
        ITransformerDiffusion.load(tmp_path / "missing.pt")


def test_a_damaged_checkpoint_is_refused(tmp_path):
    """issue 8: 64 bytes flipped inside the weights loaded silently (one bias off by 7181)."""
    m = tiny_model()
    path = m.save(tmp_path / "model.pt")
    raw = bytearray(path.read_bytes())
    weight = m.state_dict()["backbone.head.weight"].numpy().tobytes()
    at = raw.find(weight)  # torch.save stores tensors uncompressed
    assert at > 0
    raw[at + 16 : at + 80] = bytes(b ^ 0xFF for b in raw[at + 16 : at + 80])
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as info:
        ITransformerDiffusion.load(damaged)
    message = str(info.value)
    assert message.startswith(f"checkpoint: {damaged} is damaged: its contents do not match")
    assert "\n" not in message
    # the file still unpickles: only the checksum tells the weights are wrong
    assert not torch.equal(
        torch.load(damaged, weights_only=True)["state_dict"]["backbone.head.weight"],
        m.state_dict()["backbone.head.weight"],
    )


class _Foreign:  # a class a checkpoint never holds
    pass


def test_foreign_and_incomplete_checkpoints_get_one_line_errors(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "x", "payload": _Foreign()}, foreign)
    with pytest.raises(ValueError) as info:
        ITransformerDiffusion.load(foreign)
    message = str(info.value)
    assert message == (
        f"checkpoint: {foreign} is not a diffsample checkpoint (it refers to the Python object "
        f"{__name__}._Foreign, which a checkpoint never holds; not loaded)"
    )
    assert "weights_only" not in message  # never advise running a file's code
    for name, content, why in [
        ("junk", b"not a checkpoint", r"not a file torch\.save writes: Unsupported operand"),
        ("empty", b"", r"an empty file"),
    ]:
        p = tmp_path / f"{name}.pt"
        p.write_bytes(content)
        with pytest.raises(ValueError) as info:
            ITransformerDiffusion.load(p)
        assert re.fullmatch(
            rf"checkpoint: {re.escape(str(p))} is not a readable diffsample checkpoint \({why}.*\)",
            str(info.value),
        ), str(info.value)
        assert "weights_only" not in str(info.value)

    model = tiny_model()
    payload = model_payload(model.config, model.state_dict(), model.data_spec)
    for name, change, pattern in [
        ("noconfig", {"config": None}, r"holds no config \(the model's sizes\); not loaded$"),
        ("nochecksum", {"checksum": None}, r"has no checksum"),
        ("notadict", None, r"is not a diffsample checkpoint \(it holds a list, not a dict\)$"),
    ]:
        p = tmp_path / f"{name}.pt"
        if change is None:
            torch.save([1, 2], p)
        elif "checksum" in change:
            torch.save({**payload, "finished": True}, p)
        else:
            write_checkpoint(p, {**payload, **change, "finished": True})
        with pytest.raises(ValueError, match=rf"^checkpoint: .*{name}\.pt {pattern}") as info:
            ITransformerDiffusion.load(p)
        assert "\n" not in str(info.value)


def test_checkpoints_of_diffsample_0_1_load_only_when_asked(tmp_path):
    m = tiny_model()
    old = tmp_path / "old.pt"
    torch.save(
        {
            "format": "diffsample.ITransformerDiffusion/1",
            "config": dataclasses.asdict(m.config),
            "state_dict": m.state_dict(),
        },
        old,
    )
    with pytest.raises(ValueError, match=r"old\.pt was written by diffsample 0\.1 .*allow_unf"):
        ITransformerDiffusion.load(old)
    back = ITransformerDiffusion.load(old, allow_unfinished=True)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_history_is_refused_before_sampling(bad):
    model = tiny_model()
    x = torch.randn(2, TINY.lookback, TINY.n_variates)
    x[1, 3, 2] = bad
    marks = torch.zeros(2, TINY.lookback, TINY.n_time_features)
    with pytest.raises(
        ValueError,
        match=r"^history: expected finite values, got 1 NaN/inf value\(s\), the first at index \(1, 3, 2\)",
    ):
        model.forecast(x, 2, time_features=marks, num_steps=2)
