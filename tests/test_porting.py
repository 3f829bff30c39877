"""The four ports of docs/porting.md, checked pathwise in float64 against their peers' loops.

For each peer a slow reference of its sampling loop, restated here from the peer's source (the
files are named in each reference's docstring), takes its noise from outside. The diffsample
port, written with the arguments the porting guide documents, gets the same noise: through
``noise_sampler`` where a sampler is called directly (``noise_sampler(-2 - i)`` for the forward
noise of known values), and by replaying ``sample_many``'s keyed noise in the reference where
the port goes through ``sample_many``. Both must agree to float64 round-off (``TOL``, the
issue's 1e-10). A port written with the wrong convention (the traps of issue 16) must differ
clearly (``CLEAR``).

The stand-in networks have random weights and the call signature of the peer's network. Each
returns ``sigma_t x_t`` (the exact eps of N(0, I) data, read from a step table as a learned
step embedding would be) plus a random nonlinear term, so that the paths stay at the scale of
the data, as a trained network's do. (With a bare random network the origin's T = 1000 DDPM
path grows to ~3e5, where float64 round-off alone reaches ~1e-9.)

Dimensions: S samples per condition, B conditions, M rows, T train steps, K sampling steps,
N variates, L horizon, C channels, H horizon steps (TimeGrad), P = S * B paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from diffsample import NoiseSchedule, keyed_normal, sample_ddim, sample_ddpm, sample_many
from diffsample.noise import row_keys
from diffsample.samplers import Known

F64 = torch.float64
TOL = 1e-10  # pathwise agreement, float64 (issue 16's target)
CLEAR = 1e-3  # what a wrong convention moves the samples by, at least (measured 0.018 .. 5.8)

Noise = Callable[[int], torch.Tensor]  # step index -> noise of every row


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def _sigma_table(betas: torch.Tensor) -> torch.Tensor:
    """``[T]`` sqrt(1 - alpha_bar): the stand-ins' step embedding."""
    return (1 - torch.cumprod(1 - betas, 0)).sqrt()


def _at(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` shaped to broadcast over ``[M, *E]`` (t is [M] or, as the peers pass it, [1])."""
    return table[t].reshape(-1, *([1] * (ndim - 1)))


def _keyed(seed: int | tuple[int, ...], S: int, B: int, E: tuple[int, ...]) -> Noise:
    """The noise sample_many draws for its rows r = s * B + b (sample-major): step -> [S*B, *E]."""
    r = torch.arange(S * B)
    keys = row_keys(seed, r % B, r // B)  # [S * B]
    return lambda i: keyed_normal(keys, i, E, dtype=F64)


def _condition_major(v: torch.Tensor, S: int, B: int) -> torch.Tensor:
    """Rows s * B + b (ours) -> rows b * S + s (TMDM, CARD, TimeGrad)."""
    return v.reshape(S, B, *v.shape[1:]).transpose(0, 1).reshape(S * B, *v.shape[1:])


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ================================================================ origin: iTransformerDiffusion
T_ORIGIN = 1000


def origin_betas(T: int) -> torch.Tensor:
    """models/iTransformerDiffusion.py:97-105: improved-DDPM cosine, clipped to [1e-4, 0.9999]."""
    grid = torch.linspace(0, T, T + 1, dtype=F64) / T
    f = torch.cos(((grid + 0.008) / 1.008) * math.pi * 0.5) ** 2
    f = f / f[0]
    return torch.clip(1 - f[1:] / f[:-1], 0.0001, 0.9999)


class OriginNet:
    """Stand-in for ``denoise_net(x [M, N, L], t [M], z [M, N, Dz]) -> eps [M, N, L]``
    (layers/Diffusion_layers.py:361-397)."""

    def __init__(self, betas: torch.Tensor, L: int, Dz: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.sigma = _sigma_table(betas)
        self.w, self.v = _randn(gen, L, L, scale=0.5), _randn(gen, Dz, L, scale=0.5)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s = _at(self.sigma, t, x.ndim)
        return s * x + 0.3 * torch.tanh(x @ self.w + z @ self.v + s)


def origin_ddpm(
    net: OriginNet, betas: torch.Tensor, x: torch.Tensor, z: torch.Tensor, noise: Noise
):
    """sample_ddpm_batch, models/iTransformerDiffusion.py:362-408 (the default path): the
    eps-form posterior mean, variance beta, no clamp, no noise at t = 0. ``noise(k)`` is the
    k-th step noise drawn."""
    T = len(betas)
    alpha = 1 - betas
    abar = torch.cumprod(alpha, 0)
    k = 0
    for t in range(T - 1, -1, -1):
        e = net(x, torch.full((x.shape[0],), t), z)
        mean = (x - betas[t] / torch.sqrt(1 - abar[t]) * e) / torch.sqrt(alpha[t])
        if t > 0:
            x = mean + torch.sqrt(betas[t]) * noise(k)
            k += 1
        else:
            x = mean
    return x


def origin_ddim(net: OriginNet, betas: torch.Tensor, x: torch.Tensor, z: torch.Tensor, K: int):
    """sample_ddim_batch, models/iTransformerDiffusion.py:411-471, as predict calls it (eta is
    never passed, so eta = 0): grid range(0, T, T // K) reversed, x0 clamped to [-3, 3], the
    network's raw eps in the direction term."""
    T = len(betas)
    abar = torch.cumprod(1 - betas, 0)
    grid = list(range(0, T, T // K))[::-1]
    for i, t in enumerate(grid):
        e = net(x, torch.full((x.shape[0],), t), z)
        a_t = abar[t]
        a_s = abar[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, dtype=F64)
        x0 = torch.clamp((x - torch.sqrt(1 - a_t) * e) / torch.sqrt(a_t), -3.0, 3.0)
        x = torch.sqrt(a_s) * x0 + torch.sqrt(1 - a_s) * e  # sigma_t = 0: no noise term
    return x


@pytest.fixture(scope="module")
def origin():
    """(schedule, net, z [B, N, Dz]) with S = 3, B = 2, N = 3, L = 4, Dz = 5."""
    betas = origin_betas(T_ORIGIN)
    gen = torch.Generator().manual_seed(11)
    return NoiseSchedule.from_betas(betas), OriginNet(betas, 4, 5, seed=12), _randn(gen, 2, 3, 5)


S_O, B_O, E_O = 3, 2, (3, 4)


def test_origin_schedule_is_the_bounded_cosine():
    betas = origin_betas(T_ORIGIN)
    bounded = NoiseSchedule.cosine(T_ORIGIN, min_beta=1e-4, max_beta=0.9999)
    # the same formula with its operations in another order: beta = 1 - f_t / f_{t-1} cancels
    # to ~1e-4, so one ulp of the ratio is ~1e-12 of beta
    assert float(((bounded.betas - betas) / betas).abs().max()) < 1e-11
    plain = NoiseSchedule.cosine(T_ORIGIN).betas  # no lower bound, upper 0.999
    assert int(((plain - betas).abs() > 1e-12).sum()) == 14  # 13 raised to 1e-4, and the last


def test_origin_ddpm_port_matches_its_loop(origin):
    sch, net, z = origin
    betas = sch.betas
    gen = torch.Generator().manual_seed(13)
    M = S_O * B_O
    z_rows = z.repeat(S_O, 1, 1)  # [S * B, N, Dz]: rows s * B + b, as the origin expands z
    x_T, steps = _randn(gen, M, *E_O), _randn(gen, T_ORIGIN - 1, M, *E_O)
    ref = origin_ddpm(net, betas, x_T, z_rows, lambda k: steps[k])
    grid = sch.timesteps(T_ORIGIN)  # the full grid, T - 1 .. 0
    assert torch.equal(grid, torch.arange(T_ORIGIN - 1, -1, -1))
    direct = sample_ddpm(
        net, x_T, sch, grid, cond={"z": z_rows}, variance="large",
        noise_sampler=lambda i: steps[i], progress=False,
    )  # fmt: skip
    assert _gap(direct, ref) < TOL
    # through sample_many: the reference replays its keyed noise
    noise = _keyed(5, S_O, B_O, E_O)
    ref = origin_ddpm(net, betas, noise(-1), z_rows, noise).reshape(S_O, B_O, *E_O)
    many = sample_many(
        "ddpm", net, E_O, S_O, cond={"z": z}, schedule=sch, timesteps=grid, variance="large",
        seed=5, dtype=F64, progress=False,
    )  # fmt: skip
    assert many.shape == (S_O, B_O, *E_O)
    assert _gap(many, ref) < TOL


@pytest.mark.parametrize("K", [50, 30])
def test_origin_ddim_port_matches_its_loop(origin, K):
    sch, net, z = origin
    z_rows = z.repeat(S_O, 1, 1)
    grid = sch.timesteps(K, "range")
    assert grid.tolist() == list(range(0, T_ORIGIN, T_ORIGIN // K))[::-1]  # 50 or 31 steps
    x_T = _randn(torch.Generator().manual_seed(14), S_O * B_O, *E_O)
    ref = origin_ddim(net, sch.betas, x_T, z_rows, K)
    kw = dict(cond={"z": z_rows}, eta=0.0, clip_x0=3.0, clip_eps="raw", progress=False)
    assert _gap(sample_ddim(net, x_T, sch, grid, **kw), ref) < TOL
    noise = _keyed((5, K), S_O, B_O, E_O)
    ref = origin_ddim(net, sch.betas, noise(-1), z_rows, K).reshape(S_O, B_O, *E_O)
    many = sample_many(
        "ddim", net, E_O, S_O, cond={"z": z}, schedule=sch, timesteps=grid, eta=0.0,
        clip_x0=3.0, clip_eps="raw", seed=(5, K), dtype=F64, progress=False,
    )  # fmt: skip
    assert _gap(many, ref) < TOL


def test_origin_ports_with_the_wrong_convention_differ(origin):
    sch, net, z = origin
    M = S_O * B_O
    z_rows = z.repeat(S_O, 1, 1)
    gen = torch.Generator().manual_seed(15)
    x_T, steps = _randn(gen, M, *E_O), _randn(gen, T_ORIGIN - 1, M, *E_O)
    ddim_ref = origin_ddim(net, sch.betas, x_T, z_rows, 30)
    kw = dict(cond={"z": z_rows}, progress=False)
    clip = dict(clip_x0=3.0, clip_eps="raw")

    def ddim(schedule=sch, grid=None, **over):
        grid = sch.timesteps(30, "range") if grid is None else grid
        return sample_ddim(net, x_T, schedule, grid, **kw, **{**clip, **over})

    assert _gap(ddim(), ddim_ref) < TOL
    assert _gap(ddim(clip_eps="rederive"), ddim_ref) > CLEAR  # guided-diffusion's convention
    assert _gap(ddim(clip_x0=None, clip_eps=None), ddim_ref) > CLEAR  # no clamp
    leading = sch.timesteps(30, "leading")  # 30 steps, 33 apart, from 957: not the origin's 31
    assert len(leading) == 30 and _gap(ddim(grid=leading), ddim_ref) > CLEAR

    ddpm_ref = origin_ddpm(net, sch.betas, x_T, z_rows, lambda k: steps[k])
    full = sch.timesteps(T_ORIGIN)

    def ddpm(schedule=sch, variance="large"):
        return sample_ddpm(
            net, x_T, schedule, full, variance=variance, noise_sampler=lambda i: steps[i], **kw
        )

    assert _gap(ddpm(), ddpm_ref) < TOL
    assert _gap(ddpm(variance="small"), ddpm_ref) > CLEAR
    # same name, other bounds: they move the first 13 betas and the last (t = 999, which the
    # DDIM grids above never visit)
    assert _gap(ddpm(schedule=NoiseSchedule.cosine(T_ORIGIN)), ddpm_ref) > CLEAR


# ================================================================ CSDI
T_CSDI = 50
B_C, S_C, E_C, DS = 2, 3, (3, 5), 4  # E = (K features, L time), DS side-info channels


def csdi_betas() -> torch.Tensor:
    """main_model.py:33-36 with config/base.yaml: "quad", 50 steps, 1e-4 .. 0.5."""
    return torch.linspace(1e-4**0.5, 0.5**0.5, T_CSDI, dtype=F64) ** 2


class CSDINet:
    """Stand-in for ``diffmodel(total_input [M, C, K, L], side_info [M, DS, K, L], t) -> eps
    [M, K, L]`` (diff_models.py:88); C = 2 (conditional) or 1 (unconditional), the last
    channel the noisy sample. ``t`` is ``[1]`` in CSDI's sampler, ``[M]`` in ours."""

    def __init__(self, betas: torch.Tensor, channels: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.sigma = _sigma_table(betas)
        self.w, self.v = _randn(gen, channels, scale=0.7), _randn(gen, DS, scale=0.5)
        self.mix = _randn(gen, E_C[1], E_C[1], scale=0.4)

    def __call__(self, inp: torch.Tensor, side: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = _at(self.sigma, t, 3)
        h = torch.einsum("mckl,c->mkl", inp, self.w) + torch.einsum("mdkl,d->mkl", side, self.v)
        return s * inp[:, -1] + 0.3 * torch.tanh(h @ self.mix + s)


def csdi_chain(observed: torch.Tensor, cond_mask: torch.Tensor, betas: torch.Tensor, noise: Noise):
    """main_model.py:155-161: the observed values noised by one forward Markov chain; returns
    the history ``[T, B, K, L]`` (masked to the observed positions)."""
    hist, h = [], observed
    for t in range(len(betas)):
        h = torch.sqrt(1 - betas[t]) * h + torch.sqrt(betas[t]) * noise(t)
        hist.append(h * cond_mask)
    return torch.stack(hist)


def csdi_impute(
    net: CSDINet,
    betas: torch.Tensor,
    observed: torch.Tensor,
    cond_mask: torch.Tensor,
    side: torch.Tensor,
    x_T: Noise,
    noise: Callable[[int, int], torch.Tensor],
    history: Callable[[int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """impute, main_model.py:148-187: one sample at a time (B rows per call), variance
    beta-tilde, no noise at t = 0. Conditional (``history`` None): the observed values as an
    input channel beside the masked sample. Unconditional: ``history(s)`` ``[T, B, K, L]``
    placed in the network input at the observed positions. ``x_T(s)``, ``noise(s, k)``: the
    initial and the k-th step noise of sample s. Returns ``[B, S, K, L]``."""
    T = len(betas)
    alpha_hat = 1 - betas  # CSDI's names: alpha_hat per step, alpha the cumulative product
    alpha = torch.cumprod(alpha_hat, 0)
    samples = []
    for s in range(S_C):
        hist = history(s) if history is not None else None
        x = x_T(s)
        for k, t in enumerate(range(T - 1, -1, -1)):
            if hist is not None:
                inp = (cond_mask * hist[t] + (1 - cond_mask) * x).unsqueeze(1)
            else:
                cond_obs = (cond_mask * observed).unsqueeze(1)
                inp = torch.cat([cond_obs, ((1 - cond_mask) * x).unsqueeze(1)], dim=1)
            e = net(inp, side, torch.tensor([t]))
            x = 1 / alpha_hat[t] ** 0.5 * (x - (1 - alpha_hat[t]) / (1 - alpha[t]) ** 0.5 * e)
            if t > 0:
                x = x + ((1 - alpha[t - 1]) / (1 - alpha[t]) * betas[t]) ** 0.5 * noise(s, k)
        samples.append(x)
    return torch.stack(samples, 1)


@pytest.fixture(scope="module")
def csdi():
    """(schedule, observed [B, K, L], cond_mask [B, K, L] float, side [B, DS, K, L])."""
    gen = torch.Generator().manual_seed(21)
    observed = _randn(gen, B_C, *E_C)
    cond_mask = (torch.rand(B_C, *E_C, generator=gen) < 0.5).to(F64)
    return NoiseSchedule.from_betas(csdi_betas()), observed, cond_mask, _randn(gen, B_C, DS, *E_C)


def _rows_of(v: torch.Tensor, s: int) -> torch.Tensor:
    return v[s * B_C : (s + 1) * B_C]  # sample s's B rows of ours [S * B, ...]


def test_csdi_schedule_is_scaled_linear_with_its_ends():
    quad = NoiseSchedule.scaled_linear(T_CSDI, beta_start=1e-4, beta_end=0.5).betas
    assert float((quad - csdi_betas()).abs().max()) < 1e-15
    assert NoiseSchedule.from_betas(csdi_betas()).timesteps(T_CSDI).tolist() == list(
        range(49, -1, -1)
    )


def test_csdi_conditional_port_matches_its_loop(csdi):
    sch, observed, cond_mask, side = csdi
    net = CSDINet(sch.betas, 2, seed=22)

    def den(x, t, *, observed, cond_mask, side):  # the port: CSDI's input assembly, our loop
        cond_obs = (cond_mask * observed).unsqueeze(1)
        return net(torch.cat([cond_obs, ((1 - cond_mask) * x).unsqueeze(1)], 1), side, t)

    noise = _keyed(7, S_C, B_C, E_C)
    ref = csdi_impute(
        net, sch.betas, observed, cond_mask, side,
        lambda s: _rows_of(noise(-1), s), lambda s, k: _rows_of(noise(k), s),
    )  # fmt: skip
    cond = {"observed": observed, "cond_mask": cond_mask, "side": side}
    many = sample_many(
        "ddpm", den, E_C, S_C, cond=cond, schedule=sch, timesteps=sch.timesteps(T_CSDI),
        variance="small", seed=7, dtype=F64, progress=False,
    )  # fmt: skip
    assert _gap(many, ref.transpose(0, 1)) < TOL  # CSDI [B, S, K, L] -> ours [S, B, K, L]
    wrong = sample_many(
        "ddpm", den, E_C, S_C, cond=cond, schedule=sch, timesteps=sch.timesteps(T_CSDI),
        variance="large", seed=7, dtype=F64, progress=False,
    )  # fmt: skip
    assert _gap(wrong, ref.transpose(0, 1)) > CLEAR


def test_csdi_unconditional_port_matches_its_loop_with_its_own_chain(csdi):
    """Direct sampler call: the chain's noise, standardised, goes in as noise_sampler(-2 - i);
    the network then sees CSDI's input, and the paths agree at the target positions."""
    sch, observed, cond_mask, side = csdi
    net = CSDINet(sch.betas, 1, seed=23)
    gen = torch.Generator().manual_seed(24)
    M = S_C * B_C
    x_T, steps = _randn(gen, M, *E_C), _randn(gen, T_CSDI - 1, M, *E_C)
    chain = _randn(gen, S_C, T_CSDI, B_C, *E_C)  # each sample's forward-chain noise
    hists = [
        csdi_chain(observed, cond_mask, sch.betas, lambda t, s=s: chain[s, t]) for s in range(S_C)
    ]
    ref = csdi_impute(
        net, sch.betas, observed, cond_mask, side,
        lambda s: _rows_of(x_T, s), lambda s, k: _rows_of(steps[k], s), lambda s: hists[s],
    )  # fmt: skip
    alpha, sigma = sch.alpha_sigma(torch.arange(T_CSDI))
    grid = sch.timesteps(T_CSDI).tolist()
    known_rows = torch.cat(hists, 1)  # [T, S * B, K, L], rows s * B + b

    def noise(i: int) -> torch.Tensor:
        if i >= 0:
            return steps[i]
        t = grid[-2 - i]  # the step whose known values this noise forwards
        rows = observed.repeat(S_C, 1, 1)
        return (known_rows[t] - alpha[t] * rows) / sigma[t]  # read only where known

    out = sample_ddpm(
        lambda x, t, side: net(x.unsqueeze(1), side, t), x_T, sch, sch.timesteps(T_CSDI),
        cond={"side": side.repeat(S_C, 1, 1, 1)}, variance="small", progress=False,
        known=Known(observed.repeat(S_C, 1, 1), cond_mask.bool().repeat(S_C, 1, 1)),
        noise_sampler=noise,
    )  # fmt: skip
    known = cond_mask.bool().repeat(S_C, 1, 1)  # [S * B, K, L]
    ref_rows = ref.transpose(0, 1).reshape(M, *E_C)
    assert _gap(out[~known], ref_rows[~known]) < TOL  # the target positions
    assert torch.equal(out[known], observed.repeat(S_C, 1, 1)[known])


def test_csdi_unconditional_port_with_keyed_noise(csdi):
    """sample_many with known_values/known_mask: CSDI's loop, the history made of the keyed
    forward noise (independent per step, unlike CSDI's chain: same marginal per step)."""
    sch, observed, cond_mask, side = csdi
    net = CSDINet(sch.betas, 1, seed=25)
    noise = _keyed(8, S_C, B_C, E_C)
    alpha, sigma = sch.alpha_sigma(torch.arange(T_CSDI))
    grid = sch.timesteps(T_CSDI).tolist()

    def history(s: int) -> torch.Tensor:  # [T, B, K, L]: step i forwards to t_i with key -2 - i
        hist = torch.empty(T_CSDI, B_C, *E_C, dtype=F64)
        for i, t in enumerate(grid):
            hist[t] = (alpha[t] * observed + sigma[t] * _rows_of(noise(-2 - i), s)) * cond_mask
        return hist

    ref = csdi_impute(
        net, sch.betas, observed, cond_mask, side,
        lambda s: _rows_of(noise(-1), s), lambda s, k: _rows_of(noise(k), s), history,
    )  # fmt: skip
    many = sample_many(
        "ddpm", lambda x, t, *, side: net(x.unsqueeze(1), side, t), E_C, S_C,
        cond={"side": side}, known_values=observed, known_mask=cond_mask.bool(), schedule=sch,
        timesteps=sch.timesteps(T_CSDI), variance="small", seed=8, dtype=F64, progress=False,
    )  # fmt: skip
    target = (1 - cond_mask).bool()
    assert _gap(many[:, target], ref.transpose(0, 1)[:, target]) < TOL
    assert torch.equal(
        many[:, cond_mask.bool()], observed.expand(S_C, -1, -1, -1)[:, cond_mask.bool()]
    )


# ================================================================ TMDM / CARD
T_TMDM = 1000
B_T, S_T, E_T = 2, 3, (4, 3)  # E = (label_len + pred_len, C)


def tmdm_betas() -> torch.Tensor:
    """diffusion_utils.py:7-8 with configs/toy_8gauss.yml: linear 1e-4 .. 0.02, T = 1000."""
    return torch.linspace(1e-4, 0.02, T_TMDM, dtype=F64)


class TMDMNet:
    """Stand-in for ``model(x, x_mark, 0, y_t, y_0_hat, t) -> eps [M, L, C]`` (diffuMTS.py:89-93,
    model.py:36-62: the input is cat((y_t, y_0_hat), -1), each time position on its own)."""

    def __init__(self, betas: torch.Tensor, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.sigma = _sigma_table(betas)
        self.w = _randn(gen, 2 * E_T[1], E_T[1], scale=0.5)

    def __call__(self, y_t: torch.Tensor, y_0_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = _at(self.sigma, t, y_t.ndim)
        return s * (y_t - y_0_hat) + 0.3 * torch.tanh(torch.cat([y_t, y_0_hat], -1) @ self.w + s)


def tmdm_denoiser(net: TMDMNet):
    """The port's denoiser: TMDM's call in diffsample's contract ``(y_t, t, **cond)``."""

    def denoiser(y_t: torch.Tensor, t: torch.Tensor, *, y_0_hat: torch.Tensor) -> torch.Tensor:
        return net(y_t, y_0_hat, t)

    return denoiser


def tmdm_loop(
    net: TMDMNet,
    betas: torch.Tensor,
    y_0_hat: torch.Tensor,
    mu: torch.Tensor,
    z: torch.Tensor,
    noise: Noise,
) -> torch.Tensor:
    """p_sample_loop, p_sample, p_sample_t_1to0 (TMDM and CARD diffusion_utils.py:57-119): y_T =
    z + mu, CARD's posterior with gamma_0, gamma_1, gamma_2 and the y_0 reparameterisation
    around the prior mean mu (y_T_mean), variance beta-tilde, no noise at the last step."""
    T = len(betas)
    alphas = 1 - betas
    s1 = torch.sqrt(1 - torch.cumprod(alphas, 0))  # one_minus_alphas_bar_sqrt
    y = z + mu
    for k, t in enumerate(range(T - 1, 0, -1)):
        a_t = alphas[t]
        sa_t, sa_p = torch.sqrt(1 - s1[t] ** 2), torch.sqrt(1 - s1[t - 1] ** 2)
        gamma_0 = (1 - a_t) * sa_p / s1[t] ** 2
        gamma_1 = s1[t - 1] ** 2 * a_t.sqrt() / s1[t] ** 2
        gamma_2 = 1 + (sa_t - 1) * (a_t.sqrt() + sa_p) / s1[t] ** 2
        e = net(y, y_0_hat, torch.tensor([t]))
        y_0 = 1 / sa_t * (y - (1 - sa_t) * mu - e * s1[t])
        var = s1[t - 1] ** 2 / s1[t] ** 2 * (1 - a_t)
        y = gamma_0 * y_0 + gamma_1 * y + gamma_2 * mu + var.sqrt() * noise(k)
    sa_0 = torch.sqrt(1 - s1[0] ** 2)
    e = net(y, y_0_hat, torch.tensor([0]))
    return 1 / sa_0 * (y - (1 - sa_0) * mu - e * s1[0])


@pytest.fixture(scope="module")
def tmdm():
    """(schedule, net, y_0_hat [B, L, C])."""
    gen = torch.Generator().manual_seed(31)
    betas = tmdm_betas()
    return (
        NoiseSchedule.from_betas(betas),
        TMDMNet(betas, seed=32),
        _randn(gen, B_T, *E_T, scale=2.0),
    )


def test_card_gamma_2_is_one_minus_gamma_0_minus_gamma_1():
    """So CARD's step is the DDPM posterior of u = y - mu (docs/porting.md has the algebra)."""
    alphas = 1 - tmdm_betas()
    abar = torch.cumprod(alphas, 0)
    s1 = torch.sqrt(1 - abar)
    t = torch.arange(1, T_TMDM)
    sa_t, sa_p = torch.sqrt(1 - s1[t] ** 2), torch.sqrt(1 - s1[t - 1] ** 2)
    gamma_0 = (1 - alphas[t]) * sa_p / s1[t] ** 2
    gamma_1 = s1[t - 1] ** 2 * alphas[t].sqrt() / s1[t] ** 2
    gamma_2 = 1 + (sa_t - 1) * (alphas[t].sqrt() + sa_p) / s1[t] ** 2
    # gamma_2 is 1 minus an O(1) quotient by 1 - abar_t >= 1 - abar_1 = 2.2e-4: the rounding of
    # its numerator, a few ulps of 1, is divided by that; 16 ulps of headroom
    bound = 16 * torch.finfo(F64).eps / float(1 - abar[1])
    assert float((gamma_2 - (1 - gamma_0 - gamma_1)).abs().max()) < bound
    c0 = (1 - alphas[t]) * abar[t - 1].sqrt() / (1 - abar[t])  # DDPM's posterior coefficients
    ct = alphas[t].sqrt() * (1 - abar[t - 1]) / (1 - abar[t])
    assert float((gamma_0 - c0).abs().max()) < 1e-14 and float((gamma_1 - ct).abs().max()) < 1e-14


def test_tmdm_port_matches_its_loop(tmdm):
    sch, net, y_0_hat = tmdm
    M = S_T * B_T
    gen = torch.Generator().manual_seed(33)
    mu = _randn(gen, B_T, *E_T)  # CARD keeps the prior mean apart from y_0_hat
    rows = {"y_0_hat": y_0_hat.repeat(S_T, 1, 1)}
    mu_rows = mu.repeat(S_T, 1, 1)  # [S * B, L, C], rows s * B + b
    z, steps = _randn(gen, M, *E_T), _randn(gen, T_TMDM - 1, M, *E_T)
    ref = tmdm_loop(net, sch.betas, rows["y_0_hat"], mu_rows, z, lambda k: steps[k])
    full = sch.timesteps(T_TMDM)
    direct = sample_ddpm(
        tmdm_denoiser(net), z + mu_rows, sch, full, cond=rows, prior_mean=mu_rows, variance="small",
        noise_sampler=lambda i: steps[i], progress=False,
    )  # fmt: skip
    assert _gap(direct, ref) < TOL
    # the same without prior_mean: DDPM on u = y - mu, the denoiser fed u + mu
    on_u = mu_rows + sample_ddpm(
        lambda u, t, y_0_hat, mu: net(u + mu, y_0_hat, t), z, sch, full,
        cond={**rows, "mu": mu_rows}, variance="small", noise_sampler=lambda i: steps[i],
        progress=False,
    )  # fmt: skip
    assert _gap(on_u, ref) < TOL
    # sample_many, mu = y_0_hat as TMDM samples; TMDM's rows are condition-major (b * S + s)
    noise = _keyed(9, S_T, B_T, E_T)
    peer_rows = y_0_hat.repeat_interleave(S_T, 0)  # [B * S, L, C], rows b * S + s

    def peer_noise(k: int) -> torch.Tensor:
        return _condition_major(noise(k), S_T, B_T)

    ref = tmdm_loop(net, sch.betas, peer_rows, peer_rows, peer_noise(-1), peer_noise)
    many = sample_many(
        "ddpm", tmdm_denoiser(net), E_T, S_T, cond={"y_0_hat": y_0_hat}, prior_mean=y_0_hat, schedule=sch,
        timesteps=full, variance="small", seed=9, dtype=F64, progress=False,
    )  # fmt: skip
    assert _gap(many, ref.reshape(B_T, S_T, *E_T).transpose(0, 1)) < TOL


def test_tmdm_port_without_the_prior_mean_differs(tmdm):
    sch, net, y_0_hat = tmdm
    noise = _keyed(9, S_T, B_T, E_T)
    peer_rows = y_0_hat.repeat_interleave(S_T, 0)

    def peer_noise(k: int) -> torch.Tensor:
        return _condition_major(noise(k), S_T, B_T)

    ref = tmdm_loop(net, sch.betas, peer_rows, peer_rows, peer_noise(-1), peer_noise)
    ref = ref.reshape(B_T, S_T, *E_T).transpose(0, 1)
    kw = dict(schedule=sch, timesteps=sch.timesteps(T_TMDM), seed=9, dtype=F64, progress=False)
    port = sample_many(
        "ddpm", tmdm_denoiser(net), E_T, S_T, cond={"y_0_hat": y_0_hat}, prior_mean=y_0_hat, **kw
    )
    assert _gap(port, ref) < TOL
    no_mu = sample_many("ddpm", tmdm_denoiser(net), E_T, S_T, cond={"y_0_hat": y_0_hat}, **kw)
    assert _gap(no_mu, ref) > CLEAR
    large = sample_many(  # CARD's `var_type: fixedlarge` is never read by its sampler
        "ddpm",
        tmdm_denoiser(net),
        E_T,
        S_T,
        cond={"y_0_hat": y_0_hat},
        prior_mean=y_0_hat,
        variance="large",
        **kw,
    )
    assert _gap(large, ref) > CLEAR


# ================================================================ TimeGrad (pytorch-ts)
T_TG = 100
B_G, S_G, D_G, H_G = 2, 3, 2, 4  # conditions, samples, target dim, horizon steps
HID, LC, F_G = 5, 3, 2  # RNN width, conditioning length, time features


def timegrad_betas() -> torch.Tensor:
    """gaussian_diffusion.py:67-68 with the estimator's defaults (time_grad_estimator.py):
    np.linspace(1e-4, beta_end = 0.1, diff_steps = 100)."""
    return torch.linspace(1e-4, 0.1, T_TG, dtype=F64)


class TimeGradToy:
    """Stand-ins for TimeGrad's pieces (time_grad_network.py, epsilon_theta.py): one recurrent
    step ``rnn(state [P, HID], lags [P, 1, D], time_feat [P, F]) -> state``, the projection
    ``proj(state) -> cond [P, 1, LC]`` and ``eps_theta(x [P, 1, D], t, cond) -> eps``."""

    def __init__(self, betas: torch.Tensor, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.sigma = _sigma_table(betas)
        self.a, self.b = _randn(gen, HID, HID, scale=0.5), _randn(gen, D_G, HID)
        self.c, self.p = _randn(gen, F_G, HID), _randn(gen, HID, LC)
        self.w, self.v = _randn(gen, D_G, D_G, scale=0.5), _randn(gen, LC, D_G, scale=0.5)

    def rnn(self, state: torch.Tensor, lags: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        return torch.tanh(state @ self.a + lags[:, 0] @ self.b + feat @ self.c)

    def proj(self, state: torch.Tensor) -> torch.Tensor:
        return (state @ self.p).unsqueeze(1)

    def eps_theta(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = _at(self.sigma, t, 3)
        return s * x + 0.3 * torch.tanh(x @ self.w + cond @ self.v + s)


def timegrad_diffuse(toy: TimeGradToy, betas: torch.Tensor, cond, x, noise: Noise):
    """p_sample_loop / p_sample / p_mean_variance, gaussian_diffusion.py:148-200: x0 from eps,
    the posterior coefficients, log-variance clipped at 1e-20, noise drawn at every t and
    masked at t = 0."""
    T = len(betas)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    coef1 = betas * abar_prev.sqrt() / (1 - abar)
    coef2 = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    log_var = torch.log(torch.clamp(betas * (1 - abar_prev) / (1 - abar), min=1e-20))
    for j, t in enumerate(range(T - 1, -1, -1)):
        e = toy.eps_theta(x, torch.full((x.shape[0],), t), cond)
        x0 = torch.sqrt(1 / abar[t]) * x - torch.sqrt(1 / abar[t] - 1) * e
        mean = coef1[t] * x0 + coef2[t] * x
        x = mean + (1.0 - float(t == 0)) * torch.exp(0.5 * log_var[t]) * noise(j)
    return x


def timegrad_sample(toy, betas, state, past, scale, feat, x_T, noise) -> torch.Tensor:
    """sampling_decoder, time_grad_network.py:447-540: everything repeated S times with
    repeat_interleave (rows b * S + s); per horizon step one RNN step on the last value / scale,
    one diffusion (``x_T(h)``, ``noise(h, j)``), times scale, appended to the past. Returns
    ``[B, S, H, D]``."""
    rep = lambda v, dim=0: v.repeat_interleave(S_G, dim)  # noqa: E731
    state, past, scale, feat = rep(state), rep(past), rep(scale), rep(feat)
    out = []
    for h in range(H_G):
        state = toy.rnn(state, past[:, -1:] / scale, feat[:, h])
        y = timegrad_diffuse(toy, betas, toy.proj(state), x_T(h), lambda j, h=h: noise(h, j))
        y = y * scale
        out.append(y)
        past = torch.cat([past, y], 1)
    return torch.cat(out, 1).reshape(B_G, S_G, H_G, D_G)


def timegrad_port(toy, sch, state, past, scale, feat, seed_of) -> torch.Tensor:
    """The port of docs/porting.md: paths p = s * B + b as S * B conditions, n_samples = 1, one
    sample_many call per horizon step keyed ``seed_of(h)``. Returns ``[S, B, H, D]``."""
    state, past = state.repeat(S_G, 1), past.repeat(S_G, 1, 1)
    scale, feat = scale.repeat(S_G, 1, 1), feat.repeat(S_G, 1, 1)
    out = []
    for h in range(H_G):
        state = toy.rnn(state, past[:, -1:] / scale, feat[:, h])
        y = sample_many(
            "ddpm", toy.eps_theta, (1, D_G), 1, cond={"cond": toy.proj(state)}, schedule=sch,
            timesteps=sch.timesteps(T_TG), variance="small", seed=seed_of(h), dtype=F64,
            progress=False,
        )[0]  # fmt: skip
        y = y * scale  # [P, 1, D]
        out.append(y)
        past = torch.cat([past, y], 1)
    return torch.cat(out, 1).reshape(S_G, B_G, H_G, D_G)


@pytest.fixture(scope="module")
def timegrad():
    gen = torch.Generator().manual_seed(41)
    inputs = (
        _randn(gen, B_G, HID, scale=0.5),  # begin state
        _randn(gen, B_G, 6, D_G),  # past target
        1 + torch.rand(B_G, 1, D_G, generator=gen, dtype=F64),  # mean scale
        _randn(gen, B_G, H_G, F_G),  # time features
    )
    betas = timegrad_betas()
    return NoiseSchedule.from_betas(betas), TimeGradToy(betas, seed=42), inputs


def test_timegrad_port_matches_its_loop(timegrad):
    sch, toy, inputs = timegrad
    P = S_G * B_G
    gen = torch.Generator().manual_seed(43)
    discarded = _randn(gen, H_G, P, 1, D_G)  # TimeGrad's t = 0 draw, multiplied by 0
    noises = [_keyed((4, h), 1, P, (1, D_G)) for h in range(H_G)]  # 1 sample of P conditions

    def noise(h: int, j: int) -> torch.Tensor:
        z = noises[h](j) if j < T_TG - 1 else discarded[h]
        return _condition_major(z, S_G, B_G)

    ref = timegrad_sample(toy, sch.betas, *inputs, lambda h: noise(h, -1), noise)
    port = timegrad_port(toy, sch, *inputs, lambda h: (4, h))
    assert port.shape == (S_G, B_G, H_G, D_G)
    assert _gap(port, ref.transpose(0, 1)) < TOL
    # the trap: one key for every horizon step replays the same noise at every step
    assert _gap(timegrad_port(toy, sch, *inputs, lambda h: 4), ref.transpose(0, 1)) > CLEAR
