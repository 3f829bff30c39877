"""diffsample.metrics against slow, obviously-correct float64 references, properscoring, the
Gaussian closed form, and the invariants a CRPS must satisfy.

Dimensions: S samples, B windows, H horizon, N variates, E scored shape, Q quantile levels.
"""

from __future__ import annotations

import itertools
import math
import typing
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffsample.metrics as M
from diffsample._utils import choices_of
from diffsample.metrics import (
    ForecastMetrics,
    _engine,
    _kernels,
    coverage,
    crps,
    crps_normal,
    crps_sum,
    interval_width,
    quantile_crps,
    sample_quantiles,
)
from diffsample.metrics._layout import Layout, range_blocks

properscoring = pytest.importorskip("properscoring")

HYP = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


# ============================================================================================
# Slow references (float64 numpy, one element at a time, straight from the definitions)
# ============================================================================================


def ref_energy(x, y, w=None):
    """E|X - y| - 0.5 E|X - X'| by a double loop over the samples of one element."""
    x = np.asarray(x, dtype=np.float64)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64)
    w = w / w.sum()
    first = sum(w[i] * abs(x[i] - y) for i in range(len(x)))
    second = sum(w[i] * w[j] * abs(x[i] - x[j]) for i in range(len(x)) for j in range(len(x)))
    return first - 0.5 * second


def ref_integral(x, y, w=None):
    """int (F(z) - 1[y <= z])^2 dz, exactly, piecewise between consecutive breakpoints."""
    x = np.asarray(x, dtype=np.float64)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64)
    w = w / w.sum()
    points = np.sort(np.concatenate([x, [y]]))
    total = 0.0
    for a, b in itertools.pairwise(points):
        mid = 0.5 * (a + b)
        F = w[x <= mid].sum()
        H = 1.0 if y <= mid else 0.0
        total += (F - H) ** 2 * (b - a)
    return total


def ref_fair(x, y):
    """mean |x_i - y| - sum_{i != j} |x_i - x_j| / (2 S (S - 1))."""
    x = np.asarray(x, dtype=np.float64)
    s = len(x)
    pairs = sum(abs(x[i] - x[j]) for i in range(s) for j in range(s) if i != j)
    return np.mean(np.abs(x - y)) - pairs / (2 * s * (s - 1))


def ref_quantile(x, q):
    """Linear interpolation between order statistics at position h = q (S - 1)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    h = q * (len(x) - 1)
    lo = math.floor(h)
    hi = min(lo + 1, len(x) - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


def ref_quantile_crps(samples, obs, quantiles, mask=None):
    """CSDI's calc_quantile_CRPS as a double loop: over levels, then over elements.

    samples [S, *E], obs [*E], mask [*E] (eval_points), all numpy float64.
    """
    xs = samples.reshape(samples.shape[0], -1)
    ys = obs.reshape(-1)
    ms = np.ones_like(ys) if mask is None else mask.reshape(-1)
    denom = sum(abs(ys[e] * ms[e]) for e in range(len(ys)))
    total = 0.0
    for q in quantiles:
        loss = 0.0
        for e in range(len(ys)):
            qp = ref_quantile(xs[:, e], q)
            loss += abs((qp - ys[e]) * ms[e] * ((1.0 if ys[e] <= qp else 0.0) - q))
        total += 2 * loss / denom
    return total / len(quantiles)


def lanes(samples):
    """[S, *E] numpy -> list of 1-D sample arrays in row-major order of E."""
    return list(samples.reshape(samples.shape[0], -1).T)


def gaussian_crps(m, s, y):
    """Closed form: s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (y - m) / s."""
    z = (y - m) / s
    Phi = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    phi = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return s * (z * (2 * Phi - 1) + 2 * phi - 1 / math.sqrt(math.pi))


def design_notes_score(x, y):
    """The original design notes' formula: sort, sum_i (1[x_(i) <= y] - i/n)^2 / n."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = len(x)
    i = np.arange(1, n + 1)
    return np.sum(((x <= y).astype(float) - i / n) ** 2) / n


def gen(seed):
    return torch.Generator().manual_seed(seed)


def roundoff(dtype, terms, scale=1.0):
    """Tolerances for the same arithmetic evaluated another way (other chunk shapes, so other
    BLAS blocking and vectorised/scalar splits): a few ulps per term of the longest sum."""
    eps = torch.finfo(dtype).eps
    return {"rtol": 4 * terms * eps, "atol": 4 * terms * eps * scale}


def ps_crps(samples, obs, weights=None):
    """properscoring with the ensemble on the last axis, float64."""
    f = np.moveaxis(np.asarray(samples, dtype=np.float64), 0, -1)
    w = None if weights is None else np.moveaxis(np.asarray(weights, dtype=np.float64), 0, -1)
    return properscoring.crps_ensemble(np.asarray(obs, dtype=np.float64), f, weights=w)


# ============================================================================================
# CRPS estimators against references
# ============================================================================================


@pytest.mark.parametrize("S", [1, 2, 3, 10, 57])
def test_ecdf_energy_and_slow_references_agree_float64(S):
    x = torch.randn(S, 4, 6, generator=gen(S), dtype=torch.float64) * 3 + 1
    y = torch.randn(4, 6, generator=gen(100 + S), dtype=torch.float64) * 3
    ecdf = crps(x, y)
    energy = crps(x, y, estimator="energy")
    assert ecdf.dtype == torch.float64 and ecdf.shape == (4, 6)
    assert torch.allclose(ecdf, energy, rtol=0, atol=1e-10)
    ref = np.array(
        [
            ref_integral(lane, yy)
            for lane, yy in zip(lanes(x.numpy()), y.numpy().reshape(-1), strict=True)
        ]
    )
    np.testing.assert_allclose(ecdf.numpy().reshape(-1), ref, rtol=1e-12, atol=1e-12)
    ref2 = np.array(
        [
            ref_energy(lane, yy)
            for lane, yy in zip(lanes(x.numpy()), y.numpy().reshape(-1), strict=True)
        ]
    )
    np.testing.assert_allclose(energy.numpy().reshape(-1), ref2, rtol=1e-12, atol=1e-12)


def test_ecdf_matches_properscoring():
    x = torch.randn(30, 5, 8, generator=gen(1), dtype=torch.float64)
    y = torch.randn(5, 8, generator=gen(2), dtype=torch.float64) * 2
    np.testing.assert_allclose(
        crps(x, y).numpy(), ps_crps(x.numpy(), y.numpy()), rtol=1e-12, atol=1e-13
    )


def test_ties_match_properscoring_and_references():
    # integer-valued samples: many exact ties, and observations equal to sample values
    x = torch.randint(-3, 4, (12, 40), generator=gen(3)).double()
    y = torch.randint(-3, 4, (40,), generator=gen(4)).double()
    assert bool((x == y).any())  # the case under test really occurs
    out = crps(x, y)
    np.testing.assert_allclose(out.numpy(), ps_crps(x.numpy(), y.numpy()), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(
        out.numpy(),
        [ref_energy(lane, v) for lane, v in zip(lanes(x.numpy()), y.numpy(), strict=True)],
        atol=1e-12,
    )
    np.testing.assert_allclose(crps(x, y, estimator="energy").numpy(), out.numpy(), atol=1e-12)


def test_single_sample_is_absolute_error_and_matches_properscoring():
    x = torch.randn(1, 7, 3, generator=gen(5), dtype=torch.float64)
    y = torch.randn(7, 3, generator=gen(6), dtype=torch.float64)
    for est in ("ecdf", "energy"):
        torch.testing.assert_close(crps(x, y, estimator=est), (x[0] - y).abs(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(crps(x, y).numpy(), ps_crps(x.numpy(), y.numpy()), atol=1e-15)


def test_weights_match_properscoring_and_duplication():
    x = torch.randn(6, 10, generator=gen(7), dtype=torch.float64)
    y = torch.randn(10, generator=gen(8), dtype=torch.float64)
    w = torch.randint(0, 4, (6, 10), generator=gen(9)).double()
    w[0] = 1.0  # every element keeps positive total weight
    out = crps(x, y, weights=w)
    np.testing.assert_allclose(
        out.numpy(), ps_crps(x.numpy(), y.numpy(), w.numpy()), rtol=1e-12, atol=1e-13
    )
    np.testing.assert_allclose(
        crps(x, y, weights=w, estimator="energy").numpy(), out.numpy(), atol=1e-12
    )
    # integer weights = repeating each sample that many times (a weight of 0 drops it)
    for e in range(10):
        dup = torch.repeat_interleave(x[:, e], w[:, e].long())
        torch.testing.assert_close(
            out[e], crps(dup[:, None], y[e : e + 1])[0], rtol=1e-12, atol=1e-13
        )


def test_weights_broadcast_over_elements_and_scale_free():
    x = torch.randn(5, 3, 4, generator=gen(10), dtype=torch.float64)
    y = torch.randn(3, 4, generator=gen(11), dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)[:, None, None]  # [S, 1, 1]
    full = w.expand(5, 3, 4)
    out = crps(x, y, weights=w)
    np.testing.assert_allclose(
        out.numpy(), ps_crps(x.numpy(), y.numpy(), full.numpy()), rtol=1e-12, atol=1e-13
    )
    torch.testing.assert_close(crps(x, y, weights=7.5 * w), out, rtol=1e-13, atol=1e-14)
    assert not torch.allclose(out, crps(x, y))  # the weights do something


def test_fair_matches_its_definition_and_differs_from_ecdf():
    x = torch.randn(9, 12, generator=gen(12), dtype=torch.float64)
    y = torch.randn(12, generator=gen(13), dtype=torch.float64)
    fair = crps(x, y, estimator="fair")
    ref = [ref_fair(lane, v) for lane, v in zip(lanes(x.numpy()), y.numpy(), strict=True)]
    np.testing.assert_allclose(fair.numpy(), ref, rtol=1e-12, atol=1e-13)
    ecdf = crps(x, y)
    # ecdf - fair = (1/S^2 - 1/(S(S-1))) * (-0.5 sum_{i!=j} |x_i - x_j|) < 0 unless all equal
    assert bool((fair < ecdf).all())


def test_fair_edge_cases():
    with pytest.raises(ValueError, match=r"samples: expected at least 2 samples.*'fair'"):
        crps(torch.zeros(1, 3), torch.zeros(3), estimator="fair")
    with pytest.raises(ValueError, match=r"weights: expected None for estimator='fair'"):
        crps(torch.zeros(4, 3), torch.zeros(3), estimator="fair", weights=torch.ones(4, 1))
    x = torch.tensor(
        [[1.0, 2.0], [float("nan"), 5.0], [float("nan"), 3.0]], dtype=torch.float64
    )  # [S=3, 2]
    out = crps(
        x, torch.tensor([0.0, 4.0], dtype=torch.float64), estimator="fair", nan_policy="omit"
    )
    assert math.isnan(out[0])  # one valid sample: the fair estimator is undefined
    torch.testing.assert_close(
        out[1], torch.tensor(ref_fair([2.0, 5.0, 3.0], 4.0), dtype=torch.float64)
    )


# ============================================================================================
# Gaussian closed form
# ============================================================================================


def test_quantile_ensembles_converge_to_gaussian_closed_form():
    m = torch.tensor([0.0, 1.5, -2.0, 10.0], dtype=torch.float64)
    s = torch.tensor([1.0, 0.3, 2.5, 4.0], dtype=torch.float64)
    y = torch.tensor([0.2, 3.0, -2.1, -1.0], dtype=torch.float64)
    exact = gaussian_crps(m, s, y)
    errors = []
    for S in (10, 100, 1000, 10000):
        u = (torch.arange(1, S + 1, dtype=torch.float64) - 0.5) / S
        x = m + s * torch.special.ndtri(u)[:, None]  # [S, 4] deterministic "perfect" ensembles
        errors.append(float((crps(x, y) - exact).abs().max()))
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-3 * float(s.min())


def ref_crps_normal_quadrature(m, s, y):
    """int (Phi((z - m) / s) - 1[y <= z])^2 dz by adaptive quadrature on each side of y."""
    from scipy import integrate, stats

    left = integrate.quad(lambda z: stats.norm.cdf(z, m, s) ** 2, -np.inf, y, limit=200)
    right = integrate.quad(lambda z: stats.norm.sf(z, m, s) ** 2, y, np.inf, limit=200)
    return left[0] + right[0]


def test_crps_normal_matches_properscoring_and_scoringrules():
    sr = pytest.importorskip("scoringrules")
    g = gen(400)
    mu = torch.randn(4, 1, 3, generator=g, dtype=torch.float64)  # broadcasts with sigma, obs
    sigma = torch.rand(5, 1, generator=g, dtype=torch.float64) * 3 + 0.01
    obs = torch.randn(4, 5, 3, generator=g, dtype=torch.float64) * 4
    got = crps_normal(mu, sigma, obs)
    assert got.shape == (4, 5, 3) and got.dtype == torch.float64
    m, sd, y = (np.broadcast_to(t.numpy(), (4, 5, 3)) for t in (mu, sigma, obs))
    np.testing.assert_allclose(got.numpy(), properscoring.crps_gaussian(y, m, sd), rtol=1e-12)
    np.testing.assert_allclose(got.numpy(), sr.crps_normal(y, m, sd, backend="numpy"), rtol=1e-12)


def test_crps_normal_matches_quadrature_and_monte_carlo():
    pytest.importorskip("scipy")
    m, s = 1.5, 0.7
    z = torch.tensor([-30.0, -5.0, -1.0, 0.0, 0.3, 2.0, 8.0, 30.0], dtype=torch.float64)
    y = m + s * z
    got = crps_normal(m, s, y)
    want = [ref_crps_normal_quadrature(m, s, float(v)) for v in y]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)
    # Monte Carlo: E|X - y| - E|X - X'| / 2 with independent pairs, within 5 standard errors
    n = 400_000
    x1 = m + s * torch.randn(n, generator=gen(401), dtype=torch.float64)
    x2 = m + s * torch.randn(n, generator=gen(402), dtype=torch.float64)
    for v, exact in zip(y[2:6], got[2:6], strict=True):
        draws = (x1 - v).abs() - 0.5 * (x1 - x2).abs()
        se = float(draws.std()) / math.sqrt(n)
        assert abs(float(draws.mean()) - float(exact)) < 5 * se


def test_crps_normal_at_sigma_zero_is_the_absolute_error_and_its_limit():
    mu = torch.tensor([0.0, 1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    sigma = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 4.0, -5.0, 3.0], dtype=torch.float64)
    got = crps_normal(mu, sigma, y)
    assert torch.equal(got.detach(), (y - mu).abs().detach())
    got.sum().backward()  # finite gradients at the point mass
    assert torch.equal(mu.grad, torch.tensor([0.0, -1.0, 1.0, 0.0], dtype=torch.float64))
    assert bool(torch.isfinite(sigma.grad).all())
    # continuous in sigma: a tiny sigma scores |y - mu| - sigma / sqrt(pi) away from y = mu
    tiny = crps_normal(mu.detach(), 1e-200, y)
    torch.testing.assert_close(tiny, (y - mu).abs().detach(), rtol=1e-15, atol=1e-199)
    # NaN anywhere gives NaN
    nan = crps_normal(torch.tensor([0.0, math.nan, 0.0]), torch.tensor([1.0, 1.0, math.nan]), 0.0)
    assert not math.isnan(nan[0]) and math.isnan(nan[1]) and math.isnan(nan[2])


def test_crps_normal_is_stable_where_z_is_huge_or_tiny():
    # z = (y - mu) / sigma overflows float32 at 1e40: sigma z (2 Phi(z) - 1) gave inf there
    y = torch.tensor([1e10, -1e10, 3e38])
    got = crps_normal(torch.zeros(3), torch.full((3,), 1e-30), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, y.abs(), rtol=1e-6, atol=0)
    # float32 agrees with float64 over a wide range of z and scales, relative to the value
    g = gen(403)
    z = torch.cat([torch.linspace(-40, 40, 801), torch.tensor([1e-8, -1e-8, 1e3, -1e5])])
    sig = 10 ** (torch.rand(z.shape, generator=g) * 40 - 20)
    mu = torch.randn(z.shape, generator=g)
    y = mu + sig * z
    got = crps_normal(mu, sig, y).double()
    want = crps_normal(mu.double(), sig.double(), y.double())
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want, rtol=5e-6, atol=0)


def test_crps_normal_dtypes_numbers_and_gradients():
    x32, x64 = torch.zeros(3), torch.zeros(3, dtype=torch.float64)
    assert crps_normal(x32, 1.0, x32).dtype == torch.float32
    assert crps_normal(x32, 1.0, x64).dtype == torch.float64
    assert crps_normal(x32.half(), 1, 0).dtype == torch.float32
    assert crps_normal(torch.zeros(3, dtype=torch.long), 1.0, 2).dtype == torch.float32
    assert crps_normal(0.0, 1.0, 0.0).shape == ()
    assert float(crps_normal(0.0, 1.0, 0.0)) == pytest.approx(
        math.sqrt(2 / math.pi) - 1 / math.sqrt(math.pi), rel=1e-7
    )
    g = gen(404)
    args = [
        torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True),
        (torch.rand(5, generator=g, dtype=torch.float64) + 0.1).requires_grad_(),
        torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True),
    ]
    assert torch.autograd.gradcheck(crps_normal, args)


def test_crps_normal_bad_input():
    x = torch.zeros(3)
    with pytest.raises(
        ValueError,
        match=r"^sigma: expected values >= 0, got 1 negative value\(s\) in a torch.float32 tensor of shape \(3,\)$",
    ):
        crps_normal(x, torch.tensor([1.0, -1.0, 1.0]), x)
    with pytest.raises(
        ValueError, match=r"^sigma: expected values >= 0, got 1 negative value\(s\) in float -0\.5$"
    ):
        crps_normal(x, -0.5, x)
    with pytest.raises(
        TypeError, match=r"^mu: expected a torch.Tensor or a real number, got list$"
    ):
        crps_normal([0.0], 1.0, x)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^sigma: expected a torch.Tensor or a real number, got bool True$"
    ):
        crps_normal(x, True, x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^obs: expected a real tensor, got a torch.complex64"):
        crps_normal(x, 1.0, torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"^obs: expected a torch.Tensor or a real number, got str"):
        crps_normal(x, 1.0, "0")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"^mu, sigma, obs: expected shapes that broadcast together, got \(3,\), \(\) and \(4,\)$",
    ):
        crps_normal(x, 1.0, torch.zeros(4))
    with pytest.raises(
        ValueError,
        match=r"^mu, sigma, obs: expected tensors on one device, got mu on cpu, obs on meta$",
    ):
        crps_normal(x, 1.0, torch.zeros(3, device="meta"))


def test_random_samples_fair_unbiased_ecdf_biased_by_known_amount():
    P, S = 20000, 10
    m = torch.randn(P, generator=gen(14), dtype=torch.float64)
    s = 0.5 + torch.rand(P, generator=gen(15), dtype=torch.float64)
    y = m + s * torch.randn(P, generator=gen(16), dtype=torch.float64)
    x = m + s * torch.randn(S, P, generator=gen(17), dtype=torch.float64)
    exact = gaussian_crps(m, s, y)
    # E[ecdf] = CRPS + E|X - X'| / (2S) = CRPS + s / (sqrt(pi) S); E[fair] = CRPS.
    bias = s / (math.sqrt(math.pi) * S)
    for est, expected in (("fair", torch.zeros_like(bias)), ("ecdf", bias)):
        d = crps(x, y, estimator=est) - exact - expected
        se = float(d.std() / math.sqrt(P))
        assert abs(float(d.mean())) < 4 * se, (est, float(d.mean()), se)
    assert float(bias.mean()) > 10 * se  # the two hypotheses are distinguishable at this size


# ============================================================================================
# Invariants
# ============================================================================================

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@HYP
@given(xs=st.lists(finite, min_size=1, max_size=12), y=finite, c=finite, a=st.floats(1e-2, 1e2))
def test_invariants(xs, y, c, a):
    x = torch.tensor(xs, dtype=torch.float64)[:, None]
    yt = torch.tensor([y], dtype=torch.float64)
    base = crps(x, yt)
    scale = max(map(abs, [*xs, y, c])) + 1.0
    assert float(base) >= 0.0
    assert abs(float(crps(x + c, yt + c) - base)) <= 1e-12 * scale  # translation invariance
    assert (
        abs(float(crps(a * x, a * yt) - a * base)) <= 1e-12 * a * scale
    )  # positive scale equivariance
    assert abs(float(crps(x.flip(0), yt) - base)) <= 1e-12 * scale  # order of samples is irrelevant
    assert abs(float(base) - ref_integral(xs, y)) <= 1e-10 * scale
    fair = float(crps(x, yt, estimator="fair")) if len(xs) > 1 else 0.0
    assert fair >= -1e-12 * scale


@HYP
@given(v=finite, y=finite, S=st.integers(1, 20))
def test_point_mass_gives_absolute_error(v, y, S):
    x = torch.full((S, 1), v, dtype=torch.float64)
    for est in ("ecdf", "energy") + (("fair",) if S > 1 else ()):
        got = float(crps(x, torch.tensor([y], dtype=torch.float64), estimator=est))
        assert abs(got - abs(v - y)) <= 8 * np.finfo(np.float64).eps * abs(v - y), (est, got)


def test_float32_far_from_origin_stays_accurate():
    # sum_k k (S - k) g_k uses only differences: a large common offset costs no precision
    x64 = 1e4 + torch.randn(100, 500, generator=gen(18), dtype=torch.float64) * 0.01
    y64 = 1e4 + torch.randn(500, generator=gen(19), dtype=torch.float64) * 0.01
    x32, y32 = x64.float(), y64.float()
    truth = crps(x32.double(), y32.double())  # same (rounded) inputs, float64 arithmetic
    out = crps(x32, y32)
    assert out.dtype == torch.float32
    # float32 inputs are exact multiples of ulp(1e4) ~ 1e-3, differences are exact: error is
    # round-off of the ~100-term sums of O(0.01) numbers, far below the offset's own ulp
    assert float((out.double() - truth).abs().max()) < 1e-3 * float(truth.mean())


def _huge(shape, seed, top=3e38):
    """float32 values spread over [-top, top] (seeded), and their float64 twins."""
    x = ((torch.rand(shape, generator=gen(seed), dtype=torch.float64) * 2 - 1) * top).float()
    return x, x.double()


@pytest.mark.parametrize("estimator", ["ecdf", "fair", "energy"])
@pytest.mark.parametrize("nan_policy", ["propagate", "omit"])
def test_float32_near_the_float32_maximum_is_finite_and_right(estimator, nan_policy):
    # issue 20: sum_i |x_i - y| and the gaps overflowed float32 for values near 1e38, though
    # the CRPS itself (< 3e38 here) is representable; the float64 twin is the reference
    x32, x64 = _huge((100, 64), 300)
    y32, y64 = _huge((64,), 301, top=1e38)
    x32[:, :8] = torch.randn(100, 8, generator=gen(302))  # ordinary lanes in the same chunk
    x64[:, :8] = x32[:, :8].double()
    got = crps(x32, y32, estimator=estimator, nan_policy=nan_policy)
    want = crps(x64, y64, estimator=estimator, nan_policy=nan_policy)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    # the ordinary lanes score exactly as they do on their own (no scaling reaches them)
    alone = crps(x32[:, :8], y32[:8], estimator=estimator, nan_policy=nan_policy)
    assert torch.equal(got[:8], alone)


def test_float32_near_the_maximum_with_weights_nan_and_other_scores():
    x32, x64 = _huge((50, 40), 303)
    y32, y64 = _huge((40,), 304, top=1e38)
    w = torch.rand(50, 40, generator=gen(305))
    got = crps(x32, y32, weights=w)
    torch.testing.assert_close(got.double(), crps(x64, y64, weights=w.double()), rtol=1e-5, atol=0)
    x32[3, 5] = x64[3, 5] = float("nan")  # omit drops it; the lane's other values are huge
    got = crps(x32, y32, nan_policy="omit")
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), crps(x64, y64, nan_policy="omit"), rtol=1e-5, atol=0)
    x32[3, 5] = x64[3, 5] = 0.0
    # the pinball sums (float64) and ForecastMetrics' point errors too
    q = quantile_crps(x32, y32)
    assert math.isfinite(float(q))
    assert float(q) == pytest.approx(float(quantile_crps(x64, y64)), rel=1e-5)
    m = ForecastMetrics(variate_dim=None)
    m.update(x32, y32)
    ref = ForecastMetrics(variate_dim=None)
    ref.update(x64, y64)
    got_m, want_m = m.compute(), ref.compute()
    for k in ("crps", "mae_mean", "mse_mean", "mae_median", "mse_median", "width_90"):
        assert math.isfinite(got_m[k]) and got_m[k] == pytest.approx(want_m[k], rel=1e-5), k


def test_float32_beyond_representable_crps_is_inf_not_nan():
    # samples at +3e38, observation at -3e38: the CRPS (6e38) does not fit in float32
    x = torch.full((10, 2), 3e38)
    out = crps(x, torch.tensor([-3e38, 3e38]))
    assert out[0] == math.inf and out[1] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype):
    x = torch.randn(100, 64, generator=gen(20)).to(dtype)
    y = torch.randn(64, generator=gen(21)).to(dtype)
    out = crps(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, crps(x.double(), y.double()).float(), rtol=1e-5, atol=1e-6)
    q = sample_quantiles(x, 0.3)
    assert q.dtype == torch.float32


def test_design_notes_formula_is_not_a_crps():
    """sum_i (1[x_(i) <= y] - i/n)^2 / n ignores the spacing of the samples, so (a) it cannot see
    how far away the observation is, and (b) any calibrated forecast scores about 0.5, sharp or
    not (E over a uniform rank u of int_0^u (1-t)^2 dt + int_u^1 t^2 dt is 1/2)."""
    x = torch.randn(100, generator=gen(22), dtype=torch.float64)
    near = float(x.max()) + 1.0
    far = near + 300.0  # both above every sample
    assert design_notes_score(x.numpy(), near) == design_notes_score(x.numpy(), far)
    c_near, c_far = (
        float(crps(x[:, None], torch.tensor([near]).double())),
        float(crps(x[:, None], torch.tensor([far]).double())),
    )
    assert c_far > c_near + (far - near) * 0.99  # the CRPS grows with the distance, as |x - y| does

    # calibrated forecasts of very different sharpness: observations from the forecast itself
    P, S = 4000, 50
    scores, crpss = {}, {}
    for sd in (0.1, 10.0):
        xs = sd * torch.randn(S, P, generator=gen(23), dtype=torch.float64)
        ys = sd * torch.randn(P, generator=gen(24), dtype=torch.float64)
        scores[sd] = np.mean(
            [design_notes_score(lane, v) for lane, v in zip(xs.T.numpy(), ys.numpy(), strict=True)]
        )
        crpss[sd] = float(crps(xs, ys).mean())
    assert abs(scores[0.1] - scores[10.0]) < 0.02  # blind to sharpness
    assert crpss[10.0] / crpss[0.1] == pytest.approx(100.0, rel=1e-9)  # CRPS: scale equivariant


# ============================================================================================
# NaN policies
# ============================================================================================


def _with_nans():
    x = torch.randn(8, 20, generator=gen(25), dtype=torch.float64)
    x[torch.rand(8, 20, generator=gen(26)) < 0.25] = float("nan")
    x[:, 3] = float("nan")  # an element with no valid sample
    y = torch.randn(20, generator=gen(27), dtype=torch.float64)
    y[5] = float("nan")
    return x, y


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # properscoring on an all-NaN row
def test_nan_omit_matches_properscoring_and_subsets():
    x, y = _with_nans()
    out = crps(x, y, nan_policy="omit")
    np.testing.assert_allclose(
        out.numpy(), ps_crps(x.numpy(), y.numpy()), rtol=1e-12, atol=1e-13, equal_nan=True
    )
    assert math.isnan(out[3]) and math.isnan(out[5])
    for e in range(20):
        ok = ~torch.isnan(x[:, e])
        if e in (3, 5):
            continue
        torch.testing.assert_close(
            out[e], crps(x[ok, e][:, None], y[e : e + 1])[0], rtol=1e-12, atol=1e-13
        )
    np.testing.assert_allclose(
        crps(x, y, nan_policy="omit", estimator="energy").numpy(),
        out.numpy(),
        atol=1e-12,
        equal_nan=True,
    )


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # properscoring on an all-NaN row
def test_nan_omit_with_weights_matches_properscoring():
    x, y = _with_nans()
    w = 0.5 + torch.rand(8, 20, generator=gen(28), dtype=torch.float64)
    out = crps(x, y, weights=w, nan_policy="omit")
    np.testing.assert_allclose(
        out.numpy(),
        ps_crps(x.numpy(), y.numpy(), w.numpy()),
        rtol=1e-12,
        atol=1e-13,
        equal_nan=True,
    )


def test_nan_propagate_and_raise():
    x, y = _with_nans()
    out = crps(x, y)
    bad = torch.isnan(x).any(0) | torch.isnan(y)
    assert bool(torch.isnan(out[bad]).all()) and bool(torch.isfinite(out[~bad]).all())
    assert bool(bad.any() & (~bad).any())
    with pytest.raises(
        ValueError,
        match=r"samples: expected finite values.*got \d+ NaN/inf value\(s\), the first at index",
    ):
        crps(x, y, nan_policy="raise")
    with pytest.raises(
        ValueError,
        match=r"obs: expected finite .*got 1 NaN/inf value\(s\), the first at index \(5,\)",
    ):
        crps(torch.zeros(3, 20, dtype=torch.float64), y, nan_policy="raise")
    with pytest.raises(ValueError, match=r"samples: expected finite .*got 1 NaN/inf value"):
        crps(torch.tensor([[0.0], [float("inf")]]), torch.zeros(1), nan_policy="raise")


# ============================================================================================
# Layouts, routes and chunking
# ============================================================================================


def test_sample_dim_layouts_and_broadcasting_agree():
    # Bitwise where the path is literally the same: every layout of the same values is
    # gathered into the same contiguous [C, S] chunks (same lane ranges, checked by
    # test_chunks_do_not_depend_on_memory_layout) and scored by the same kernels.
    x = torch.randn(11, 3, 5, 4, generator=gen(29), dtype=torch.float64)  # [S, B, H, N]
    y = torch.randn(3, 5, 4, generator=gen(30), dtype=torch.float64)
    base = crps(x, y)
    torch.testing.assert_close(crps(x.movedim(0, -1), y, sample_dim=-1), base, rtol=0, atol=0)
    torch.testing.assert_close(
        crps(x.movedim(0, 2).contiguous(), y, sample_dim=2), base, rtol=0, atol=0
    )
    torch.testing.assert_close(
        crps(x.movedim(0, 1).contiguous(), y, sample_dim=1), base, rtol=0, atol=0
    )
    # other values order (E is [N, H, B] here): other chunk contents, so round-off may differ
    torch.testing.assert_close(
        crps(x.transpose(1, 3), y.transpose(0, 2)),
        base.transpose(0, 2),
        **roundoff(torch.float64, 11, float(x.abs().max())),
    )
    # the same values order in another memory layout: the forecaster's [S, B, H, N] with H and
    # N swapped in memory
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert xt.stride() != x.stride()
    torch.testing.assert_close(crps(xt, y), base, rtol=0, atol=0)
    # obs broadcasting: one observation per (H, N) shared across B, and samples broadcast too
    yb = y[0]
    torch.testing.assert_close(
        crps(x, yb), crps(x, yb.expand(3, 5, 4).contiguous()), rtol=0, atol=0
    )
    xb = x[:, :1].expand(11, 3, 5, 4)
    torch.testing.assert_close(crps(xb, y), crps(xb.contiguous(), y), rtol=0, atol=0)
    # a scalar element: samples [S], obs []; a 1-lane chunk instead of 60 lanes (another GEMV)
    torch.testing.assert_close(
        crps(x[:, 0, 0, 0], y[0, 0, 0]),
        base[0, 0, 0],
        **roundoff(torch.float64, 11, float(x.abs().max())),
    )


@pytest.mark.parametrize("estimator", ["ecdf", "fair", "energy"])
def test_chunking_and_threads_do_not_change_results(monkeypatch, estimator):
    x = torch.randn(20, 37, 29, generator=gen(31))  # float32, numpy route
    y = torch.randn(37, 29, generator=gen(32))
    w = torch.rand(20, 1, 29, generator=gen(33)) + 0.1
    one = crps(x, y, estimator=estimator)
    weighted = crps(x, y, weights=w) if estimator == "ecdf" else None
    q = sample_quantiles(x, [0.1, 0.5, 0.95])
    # 7 lanes per chunk: many chunks, thread pool
    monkeypatch.setattr(_engine, "CPU_CHUNK_ELEMENTS", 20 * 7)
    monkeypatch.setattr(_engine, "ENERGY_CHUNK_PAIRS", 400 * 3)
    many = crps(x, y, estimator=estimator)
    # float32 reductions may round differently for other chunk sizes (BLAS blocking), no more
    torch.testing.assert_close(many, one, rtol=2e-6, atol=1e-7)
    # chunk boundaries are fixed by the sizes, not by thread timing: repeated calls are identical
    torch.testing.assert_close(crps(x, y, estimator=estimator), many, rtol=0, atol=0)
    if weighted is not None:
        torch.testing.assert_close(crps(x, y, weights=w), weighted, rtol=2e-6, atol=1e-7)
    # no reduction, but chunks of another shape: torch may split an elementwise op between its
    # vectorised (fused multiply-add) and scalar loops differently, one rounding apart
    torch.testing.assert_close(
        sample_quantiles(x, [0.1, 0.5, 0.95]), q, **roundoff(torch.float32, 1, float(x.abs().max()))
    )


@HYP
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    data=st.data(),
)
def test_blocks_cover_a_lane_range_in_order(shape, data):
    p = math.prod(shape)
    start = data.draw(st.integers(0, p))
    stop = data.draw(st.integers(start, p))
    positions = np.arange(p).reshape(shape)  # the slow twin: row-major positions
    blocks = list(range_blocks(tuple(shape), start, stop))
    covered = [positions[b].reshape(-1) for b in blocks]
    got = np.concatenate(covered) if covered else np.array([], dtype=int)
    np.testing.assert_array_equal(got, np.arange(start, stop))
    assert len(blocks) <= max(1, 2 * len(shape) - 1)  # a bounded number of copies per chunk


def test_chunks_do_not_depend_on_memory_layout(monkeypatch):
    # issue 9: the forecaster returns [S, B, H, N] with H and N swapped in memory; its chunks
    # must be the lanes a contiguous tensor gives, not thousands of N-lane pieces
    monkeypatch.setattr(_engine, "CPU_CHUNK_ELEMENTS", 9 * 7)  # 7 lanes: ranges cross rows
    x = torch.randn(9, 4, 6, 5, generator=gen(54), dtype=torch.float64)  # [S, B, H, N]
    w = torch.rand(9, 1, 6, 5, generator=gen(55), dtype=torch.float64) + 0.1
    variants = {
        "contiguous": x,
        "H and N swapped in memory": x.transpose(2, 3).contiguous().transpose(2, 3),
        "S last in memory": x.movedim(0, -1).contiguous().movedim(-1, 0),
        "broadcast samples": x[:, :1].expand(9, 4, 6, 5),
    }
    for name, v in variants.items():
        ref = v.movedim(0, -1).reshape(-1, 9)  # [P, S]: the definition of the lanes
        for sort in (False, True):  # the torch route's gather and the numpy route's copy

            def grab(c, sort=sort):
                return c.offset, c.xs.clone(), None if c.w is None else c.w.clone()

            got = list(_engine.map_chunks(Layout(v, None, 0, weights=w), grab, sort=sort))
            assert [o for o, _, _ in got] == list(range(0, 120, 7)), name
            xs = torch.cat([c for _, c, _ in got])
            want = ref.sort(-1).values if sort else ref
            assert torch.equal(xs, want), name  # copies and sorts are exact
            if not sort:
                assert torch.equal(
                    torch.cat([c for _, _, c in got]),
                    w.expand(9, 4, 6, 5).movedim(0, -1).reshape(-1, 9),
                ), name
    # gradients through the gathered blocks (the torch route concatenates them)
    xg = x[:, :2, :3, :2].transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()
    yg = torch.randn(2, 3, 2, generator=gen(56), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: crps(a, yg), (xg,))


def test_metrics_of_a_transposed_forecast_equal_the_contiguous_ones():
    x = torch.randn(16, 5, 8, 3, generator=gen(57), dtype=torch.float64)  # [S, B, H, N]
    y = torch.randn(5, 8, 3, generator=gen(58), dtype=torch.float64)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, N before H in memory
    a, b = ForecastMetrics(), ForecastMetrics()
    a.update(x, y)
    b.update(xt, y)
    ra, rb = a.compute(), b.compute()
    assert ra.keys() == rb.keys()
    for k in ra:
        if k.endswith("_sum"):  # samples summed over N in another memory order: round-off
            assert rb[k] == pytest.approx(ra[k], rel=roundoff(torch.float64, 3)["rtol"]), k
        else:  # the same chunks and kernels: bitwise
            assert rb[k] == ra[k], k
    assert float(quantile_crps(xt, y)) == float(quantile_crps(x, y))
    torch.testing.assert_close(
        sample_quantiles(xt, [0.1, 0.9]), sample_quantiles(x, [0.1, 0.9]), rtol=0, atol=0
    )


def test_estimator_registry_is_the_one_dispatch(monkeypatch):
    assert set(choices_of(M.Estimator)) == set(_kernels.ESTIMATORS)
    assert typing.get_args(M.NanPolicy) == ("propagate", "omit", "raise")

    # a new estimator is one kernel and one registry line
    def median_error(xs, y, w, *, omit, scratch):  # |median - y| of sorted lanes, odd S
        return (xs[:, xs.shape[1] // 2] - y).abs()

    monkeypatch.setitem(_kernels.ESTIMATORS, "median_error", _kernels.EstimatorSpec(median_error))
    x = torch.randn(9, 4, 3, generator=gen(59), dtype=torch.float64)
    y = torch.randn(4, 3, generator=gen(60), dtype=torch.float64)
    out = crps(x, y, estimator="median_error")  # type: ignore[arg-type]
    # sorting is exact and the subtraction is the same elementwise operation: bitwise
    torch.testing.assert_close(out, (x.median(0).values - y).abs(), rtol=0, atol=0)


def test_torch_sort_route_matches_numpy_route(monkeypatch):
    x = torch.randn(15, 40, generator=gen(34), dtype=torch.float64)
    y = torch.randn(40, generator=gen(35), dtype=torch.float64)
    x[2, 3] = float("nan")
    w = torch.rand(15, 40, generator=gen(36), dtype=torch.float64)

    def results():
        return [
            crps(x, y),
            crps(x, y, weights=w),
            crps(x, y, nan_policy="omit"),
            sample_quantiles(x, [0.2, 0.5], nan_policy="omit"),
            crps(x, y, estimator="fair"),
        ]

    via_numpy = results()
    monkeypatch.setattr(_engine, "numpy_route", lambda t: False)
    for a, b in zip(results(), via_numpy, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13, equal_nan=True)


def test_gradients(monkeypatch):
    x = torch.randn(7, 5, generator=gen(37), dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, generator=gen(38), dtype=torch.float64, requires_grad=True)
    out = crps(x, y)
    with torch.no_grad():
        torch.testing.assert_close(out, crps(x, y))  # same value on both routes
    out.sum().backward()
    # d/dy mean|x - y| = mean sign(y - x); the pairwise term does not depend on y
    torch.testing.assert_close(y.grad, torch.sign(y - x).mean(0).detach())
    # obs-only gradients through the numpy route, chunked over the thread pool, and the caller's
    # no_grad honoured inside the workers
    xs = torch.randn(30, 200, generator=gen(53), dtype=torch.float64)
    monkeypatch.setattr(_engine, "CPU_CHUNK_ELEMENTS", 30 * 16)
    with torch.no_grad():
        assert not crps(xs, y[:1]).requires_grad
    yy = y[:1].detach().clone().requires_grad_()
    crps(xs, yy).sum().backward()
    torch.testing.assert_close(yy.grad, torch.sign(yy - xs).mean(0).sum(0, keepdim=True))
    w = torch.rand(7, 5, generator=gen(39), dtype=torch.float64, requires_grad=True)
    for est in ("ecdf", "fair", "energy"):
        assert torch.autograd.gradcheck(lambda a, b, est=est: crps(a, b, estimator=est), (x, y))
    assert torch.autograd.gradcheck(lambda a, b, c: crps(a, b, weights=c + 0.1), (x, y, w))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(100, 64, 7, generator=gen(40))
    y = torch.randn(64, 7, generator=gen(41))
    torch.testing.assert_close(crps(x.cuda(), y.cuda()).cpu(), crps(x, y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        sample_quantiles(x.cuda(), [0.1, 0.9]).cpu(), sample_quantiles(x, [0.1, 0.9])
    )
    m_cpu, m_gpu = ForecastMetrics(breakdown_dim=0), ForecastMetrics(breakdown_dim=0)
    m_cpu.update(x, y, point=y.flip(0))
    m_gpu.update(x.cuda(), y.cuda(), point=y.flip(0).cuda())
    for k, v in m_cpu.compute().items():
        assert m_gpu.compute()[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    for k, v in m_cpu.breakdown().items():  # per index of the 64 rows, summed on the device
        assert m_gpu.breakdown()[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


# ============================================================================================
# Quantiles, coverage, widths
# ============================================================================================


def test_sample_quantiles_match_numpy_torch_and_definition():
    x = torch.randn(13, 4, 6, generator=gen(42), dtype=torch.float64)
    qs = [0.0, 0.05, 0.25, 0.5, 0.77, 1.0]
    out = sample_quantiles(x, qs)
    assert out.shape == (6, 4, 6)
    np.testing.assert_allclose(
        out.numpy(), np.quantile(x.numpy(), qs, axis=0), rtol=1e-14, atol=1e-14
    )
    torch.testing.assert_close(out, torch.quantile(x, torch.tensor(qs, dtype=torch.float64), dim=0))
    for qi, q in enumerate(qs):
        ref = [ref_quantile(lane, q) for lane in lanes(x.numpy())]
        np.testing.assert_allclose(out[qi].numpy().reshape(-1), ref, rtol=1e-14, atol=1e-14)
    assert sample_quantiles(x, 0.5).shape == (4, 6)
    torch.testing.assert_close(
        sample_quantiles(x, 0.5), x.median(0).values
    )  # odd S: the middle sample
    torch.testing.assert_close(sample_quantiles(x, torch.tensor(0.5)), sample_quantiles(x, 0.5))


def test_sample_quantiles_nan_policies():
    x, _ = _with_nans()
    qs = [0.1, 0.5, 0.9]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns about the all-NaN element
        expected = np.nanquantile(x.numpy(), qs, axis=0)
    np.testing.assert_allclose(
        sample_quantiles(x, qs, nan_policy="omit").numpy(), expected, rtol=1e-14, equal_nan=True
    )
    np.testing.assert_allclose(
        sample_quantiles(x, qs).numpy(),
        np.quantile(x.numpy(), qs, axis=0),
        rtol=1e-14,
        equal_nan=True,
    )
    with pytest.raises(ValueError, match="samples: expected finite values"):
        sample_quantiles(x, qs, nan_policy="raise")


def test_coverage_and_width_match_references():
    x = torch.randn(40, 50, generator=gen(43), dtype=torch.float64)
    y = 1.5 * torch.randn(50, generator=gen(44), dtype=torch.float64)
    for level in (0.5, 0.9):
        lo = np.quantile(x.numpy(), (1 - level) / 2, axis=0)
        hi = np.quantile(x.numpy(), (1 + level) / 2, axis=0)
        cov = coverage(x, y, level=level)
        # numpy's quantiles are another computation: the exact comparison below is sound only
        # because no observation lies within round-off of an interval end
        margin = np.minimum(np.abs(y.numpy() - lo), np.abs(y.numpy() - hi)).min()
        assert margin > 1e3 * np.finfo(np.float64).eps * float(x.abs().max())
        np.testing.assert_array_equal(
            cov.numpy(), ((lo <= y.numpy()) & (y.numpy() <= hi)).astype(float)
        )
        np.testing.assert_allclose(interval_width(x, level=level).numpy(), hi - lo, rtol=1e-14)
        assert 0 < float(cov.mean()) < 1
    # closed interval: observations sitting on the interval's end points count as covered
    ends = sample_quantiles(x, [0.25, 0.75])
    assert bool((coverage(x, ends[0], level=0.5) == 1).all()) and bool(
        (coverage(x, ends[1], level=0.5) == 1).all()
    )
    y_nan = y.clone()
    y_nan[0] = float("nan")
    assert math.isnan(coverage(x, y_nan)[0]) and not bool(torch.isnan(coverage(x, y_nan)[1:]).any())


# ============================================================================================
# quantile_crps and crps_sum
# ============================================================================================


def test_quantile_crps_equals_double_loop():
    x = torch.randn(17, 3, 5, 2, generator=gen(45), dtype=torch.float64) + 2
    y = torch.randn(3, 5, 2, generator=gen(46), dtype=torch.float64) + 2
    mask = (torch.rand(3, 5, 2, generator=gen(47)) < 0.7).double()
    qs = [0.05, 0.3, 0.5, 0.95]
    out = quantile_crps(x, y, quantiles=qs)
    assert out.shape == () and out.dtype == torch.float64
    assert float(out) == pytest.approx(ref_quantile_crps(x.numpy(), y.numpy(), qs), rel=1e-12)
    assert float(quantile_crps(x, y, quantiles=qs, mask=mask)) == pytest.approx(
        ref_quantile_crps(x.numpy(), y.numpy(), qs, mask.numpy()), rel=1e-12
    )
    default = quantile_crps(x, y)
    assert float(default) == pytest.approx(
        ref_quantile_crps(x.numpy(), y.numpy(), np.arange(0.05, 1.0, 0.05)), rel=1e-12
    )


def test_quantile_crps_sum_follows_csdi():
    # CSDI's calc_quantile_CRPS_sum: forecast and target summed over variates, mask averaged
    x = torch.randn(9, 4, 6, 3, generator=gen(48), dtype=torch.float64) + 1  # [S, B, H, N]
    y = torch.randn(4, 6, 3, generator=gen(49), dtype=torch.float64) + 1
    mask = (torch.rand(4, 6, 3, generator=gen(50)) < 0.6).double()
    qs = list(M.DEFAULT_QUANTILES)
    expected = ref_quantile_crps(x.sum(-1).numpy(), y.sum(-1).numpy(), qs, mask.mean(-1).numpy())
    assert float(quantile_crps(x, y, sum_dim=-1, mask=mask)) == pytest.approx(expected, rel=1e-12)
    assert float(quantile_crps(x.movedim(0, 1), y, sum_dim=2, sample_dim=1)) == pytest.approx(
        ref_quantile_crps(x.sum(-1).numpy(), y.sum(-1).numpy(), qs), rel=1e-12
    )


def test_crps_sum_is_crps_of_the_sums():
    # bitwise: crps_sum is literally this computation (the same sums, then the same crps call)
    x = torch.randn(12, 5, 7, generator=gen(51), dtype=torch.float64)
    y = torch.randn(5, 7, generator=gen(52), dtype=torch.float64)
    torch.testing.assert_close(crps_sum(x, y), crps(x.sum(-1), y.sum(-1)), rtol=0, atol=0)
    torch.testing.assert_close(
        crps_sum(x, y, variate_dim=0), crps(x.sum(1), y.sum(0)), rtol=0, atol=0
    )
    torch.testing.assert_close(
        crps_sum(x, y, estimator="fair"), crps(x.sum(-1), y.sum(-1), estimator="fair")
    )


# ============================================================================================
# ForecastMetrics
# ============================================================================================


def _forecast_data(seed=60, S=16, B=10, H=6, N=3):
    x = torch.randn(S, B, H, N, generator=gen(seed), dtype=torch.float64) * 2 + 1
    y = torch.randn(B, H, N, generator=gen(seed + 1), dtype=torch.float64) * 2 + 1
    return x, y


def _assert_same_metrics(a, b, rel=1e-12):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-14, nan_ok=True), k


def test_forecast_metrics_match_the_functions():
    x, y = _forecast_data()
    m = ForecastMetrics()
    m.update(x, y)
    got = m.compute()
    mean, med = x.mean(0), x.median(0)  # S even: torch.median is the lower middle, not ours
    med = sample_quantiles(x, 0.5)
    assert got["count"] == y.numel()
    assert got["crps"] == pytest.approx(float(crps(x, y).mean()), rel=1e-12)
    assert got["crps_sum"] == pytest.approx(float(crps_sum(x, y).mean()), rel=1e-12)
    assert got["quantile_crps"] == pytest.approx(float(quantile_crps(x, y)), rel=1e-12)
    assert got["quantile_crps_sum"] == pytest.approx(
        float(quantile_crps(x, y, sum_dim=-1)), rel=1e-12
    )
    assert got["mse_mean"] == pytest.approx(float(((mean - y) ** 2).mean()), rel=1e-12)
    assert got["mae_mean"] == pytest.approx(float((mean - y).abs().mean()), rel=1e-12)
    assert got["mse_median"] == pytest.approx(float(((med - y) ** 2).mean()), rel=1e-12)
    assert got["mae_median"] == pytest.approx(float((med - y).abs().mean()), rel=1e-12)
    for level, name in ((0.5, "50"), (0.9, "90")):
        assert got[f"coverage_{name}"] == pytest.approx(
            float(coverage(x, y, level=level).mean()), rel=1e-12
        )
        assert got[f"width_{name}"] == pytest.approx(
            float(interval_width(x, level=level).mean()), rel=1e-12
        )


def test_forecast_metrics_batches_merge_and_state_sum_equal_whole():
    x, y = _forecast_data(S=12, B=9)
    whole = ForecastMetrics(levels=(0.5, 0.8, 0.975))
    whole.update(x, y)
    batched = ForecastMetrics(levels=(0.5, 0.8, 0.975))
    for b0, b1 in ((0, 2), (2, 3), (3, 9)):
        batched.update(x[:, b0:b1], y[b0:b1])
    _assert_same_metrics(batched.compute(), whole.compute())
    halves = [ForecastMetrics(levels=(0.5, 0.8, 0.975)) for _ in range(2)]
    halves[0].update(x[:, :4], y[:4])
    halves[1].update(x[:, 4:], y[4:])
    _assert_same_metrics((halves[0] + halves[1]).compute(), whole.compute())
    _assert_same_metrics(sum(halves).compute(), whole.compute())
    # all_reduce by hand: sum the state tensors of the "ranks" and load the result
    states = [h.state_dict() for h in halves]
    reduced = {k: states[0][k] + states[1][k] for k in states[0]}
    fresh = ForecastMetrics(levels=(0.5, 0.8, 0.975))
    fresh.load_state_dict(reduced)
    _assert_same_metrics(fresh.compute(), whole.compute())
    assert "coverage_97.5" in fresh.compute()
    fresh.reset()
    assert fresh.compute()["count"] == 0 and math.isnan(fresh.compute()["crps"])
    with pytest.raises(ValueError, match="different configs"):
        halves[0].merge(ForecastMetrics())
    with pytest.raises(ValueError, match="state"):
        ForecastMetrics().load_state_dict(reduced)  # 3 levels into a 2-level config


def test_forecast_metrics_state_is_named_and_its_format_stable():
    m = ForecastMetrics(levels=(0.5, 0.8, 0.975), quantiles=(0.1, 0.5))
    x, y = _forecast_data(seed=65)
    m.update(x, y)
    state = m.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "count": (),
        "crps": (),
        "abs_obs": (),
        "pinball": (2,),
        "se_mean": (),
        "ae_mean": (),
        "se_median": (),
        "ae_median": (),
        "covered": (3,),
        "width": (3,),
        "count_point": (),
        "se_point": (),
        "ae_point": (),
        "count_sum": (),
        "crps_sum": (),
        "abs_obs_sum": (),
        "pinball_sum": (2,),
    }
    assert all(v.dtype == torch.float64 and v.device.type == "cpu" for v in state.values())
    assert float(state["count"]) == y.numel() and float(state["count_sum"]) == y[..., 0].numel()
    state["crps"] += 1.0  # a copy: the accumulator is untouched
    assert m.state_dict()["crps"] == state["crps"] - 1.0
    back = ForecastMetrics(levels=(0.5, 0.8, 0.975), quantiles=(0.1, 0.5))
    back.load_state_dict(m.state_dict())
    assert back.compute() == m.compute()  # the same sums: bitwise
    with pytest.raises(TypeError, match="state: expected a dict"):
        back.load_state_dict([])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"state\['count'\]: expected a tensor"):
        back.load_state_dict({**m.state_dict(), "count": 3.0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="state: expected keys"):
        back.load_state_dict({"count": torch.zeros(())})
    with pytest.raises(TypeError, match="other: expected a ForecastMetrics"):
        back.merge(1)  # type: ignore[arg-type]


def test_forecast_metrics_mask_and_omit():
    x, y = _forecast_data(seed=70)
    mask = (torch.rand(y.shape, generator=gen(71)) < 0.7).double()
    m = ForecastMetrics()
    m.update(x, y, mask=mask)
    got = m.compute()
    keep = mask.bool()
    assert got["count"] == float(mask.sum())
    assert got["crps"] == pytest.approx(float(crps(x, y)[keep].mean()), rel=1e-12)
    assert got["quantile_crps"] == pytest.approx(float(quantile_crps(x, y, mask=mask)), rel=1e-12)
    assert got["quantile_crps_sum"] == pytest.approx(
        float(quantile_crps(x, y, mask=mask, sum_dim=-1)), rel=1e-12
    )
    assert got["coverage_90"] == pytest.approx(float(coverage(x, y)[keep].mean()), rel=1e-12)
    # omit: NaN observations are left out exactly as a zero mask would leave them out
    y_nan = torch.where(keep, y, torch.full_like(y, float("nan")))
    o = ForecastMetrics(nan_policy="omit", variate_dim=None)
    o.update(x, y_nan)
    ref = ForecastMetrics(variate_dim=None)
    ref.update(x, y, mask=mask)
    _assert_same_metrics(o.compute(), ref.compute())
    p = ForecastMetrics()
    p.update(x, y_nan)
    assert math.isnan(p.compute()["crps"])
    with pytest.raises(ValueError, match="obs: expected finite values"):
        ForecastMetrics(nan_policy="raise").update(x, y_nan)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_mask_with_a_non_finite_weight_is_refused(bad):
    # issue 20: a NaN weight failed every "> 0" test and its element was dropped as if 0
    x, y = _forecast_data(seed=72)
    mask = torch.ones(y.shape, dtype=torch.float64)
    mask[1, 2, 0] = bad
    pattern = (
        r"^mask: expected finite values \(element weights\), got 1 NaN/inf value\(s\), "
        r"the first at index \(1, 2, 0\)"
    )
    with pytest.raises(ValueError, match=pattern):
        quantile_crps(x, y, mask=mask)
    with pytest.raises(ValueError, match=pattern):
        quantile_crps(x, y, mask=mask, sum_dim=-1)
    with pytest.raises(ValueError, match=pattern):
        ForecastMetrics().update(x, y, mask=mask)


def test_forecast_metrics_other_sample_dim_and_no_grad():
    x, y = _forecast_data(seed=80)
    a, b = ForecastMetrics(), ForecastMetrics(sample_dim=1)
    a.update(x, y)
    b.update(x.movedim(0, 1).requires_grad_(), y)  # CSDI layout [B, S, H, N]
    _assert_same_metrics(a.compute(), b.compute())
    assert all(not t.requires_grad for t in b.state_dict().values())


def _per_index(values, mask, dim):
    """The slow twin of a breakdown: mask-weighted means of elementwise ``values`` [*E] over
    every axis of E but ``dim`` -> [K]."""
    v = torch.where(mask > 0, values.double() * mask, torch.zeros_like(values, dtype=torch.float64))
    others = [d for d in range(values.dim()) if d != dim % values.dim()]
    return v.sum(others) / mask.sum(others)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_forecast_metrics_breakdown_matches_the_elementwise_functions(dim):
    x, y = _forecast_data(seed=100, S=11, B=4, H=5, N=3)
    point = torch.randn(y.shape, generator=gen(101), dtype=torch.float64)
    mask = (torch.rand(y.shape, generator=gen(102)) < 0.8).double()
    m = ForecastMetrics(levels=(0.5, 0.8), breakdown_dim=dim)
    m.update(x, y, mask=mask, point=point)
    got = m.breakdown()
    mean, med = x.mean(0), sample_quantiles(x, 0.5)
    want = {
        "crps": crps(x, y),
        "mse_mean": (mean - y) ** 2,
        "mae_mean": (mean - y).abs(),
        "mse_median": (med - y) ** 2,
        "mae_median": (med - y).abs(),
    }
    for level, name in ((0.5, "50"), (0.8, "80")):
        want[f"coverage_{name}"] = coverage(x, y, level=level)
        want[f"width_{name}"] = interval_width(x, level=level)
    want.update(count=torch.ones_like(y), point_mse=(point - y) ** 2, point_mae=(point - y).abs())
    assert list(got) == list(want)
    others = [d for d in range(3) if d != dim % 3]
    for k, v in want.items():
        ref = mask.sum(others) if k == "count" else _per_index(v, mask, dim)
        assert got[k] == pytest.approx(ref.tolist(), rel=1e-12, abs=1e-14), k
    # the indices' sums are the headline's: with the counts as weights their mean is the score
    total = m.compute()
    counts = torch.tensor(got["count"], dtype=torch.float64)
    for k in ("crps", "mse_mean", "coverage_80", "point_mae"):
        per = torch.tensor(got[k], dtype=torch.float64)
        assert float((per * counts).sum() / counts.sum()) == pytest.approx(total[k], rel=1e-12)


def test_forecast_metrics_breakdown_does_not_depend_on_chunks_layout_or_batches(monkeypatch):
    x, y = _forecast_data(seed=103, S=9, B=6, H=7, N=4)
    point = y + 0.5
    whole = ForecastMetrics(breakdown_dim=1)
    whole.update(x, y, point=point)
    want = whole.breakdown()
    monkeypatch.setattr(_engine, "CPU_CHUNK_ELEMENTS", 9 * 5)  # 5 lanes: chunks cross steps
    variants = {
        "chunks of 5 lanes": (x, 0),
        "H and N swapped in memory": (x.transpose(2, 3).contiguous().transpose(2, 3), 0),
        "samples on axis 1": (x.movedim(0, 1), 1),
    }
    for name, (v, sd) in variants.items():
        m = ForecastMetrics(breakdown_dim=1, sample_dim=sd)
        m.update(v, y, point=point)
        for k, col in m.breakdown().items():
            assert col == pytest.approx(want[k], rel=1e-12, abs=1e-14), (name, k)
    batched, halves = ForecastMetrics(breakdown_dim=1), []
    for b0, b1 in ((0, 1), (1, 4), (4, 6)):
        batched.update(x[:, b0:b1], y[b0:b1], point=point[b0:b1])
        halves.append(ForecastMetrics(breakdown_dim=1))
        halves[-1].update(x[:, b0:b1], y[b0:b1], point=point[b0:b1])
    states = [h.state_dict() for h in halves]  # all_reduce by hand
    fresh = ForecastMetrics(breakdown_dim=1)
    fresh.load_state_dict({k: sum(st[k] for st in states) for k in states[0]})
    for acc in (batched, sum(halves), fresh):
        for k, col in acc.breakdown().items():
            assert col == pytest.approx(want[k], rel=1e-12, abs=1e-14), k
        _assert_same_metrics(acc.compute(), whole.compute())


def test_forecast_metrics_sorts_each_lane_once(monkeypatch):
    """Issue 17: the per-step scores came from a second accumulator that sorted each batch
    three more times (crps, then coverage at each level)."""
    sorted_lanes = []
    real = _engine.sort_lanes

    def counting(xs, **kw):
        sorted_lanes.append(xs.shape[0])
        return real(xs, **kw)

    monkeypatch.setattr(_engine, "sort_lanes", counting)
    x, y = _forecast_data(seed=104, S=8, B=5, H=6, N=3)
    m = ForecastMetrics(breakdown_dim=1)
    m.update(x, y, point=y)
    assert sum(sorted_lanes) == 5 * 6 * 3 + 5 * 6  # the elements, then their sums over variates


def test_forecast_metrics_point_and_breakdown_state():
    x, y = _forecast_data(seed=105, S=7, B=3, H=4, N=2)
    plain = ForecastMetrics()
    plain.update(x, y)
    assert "point_mse" not in plain.compute()  # no point given: no point columns
    plain.update(x, y, point=y.mean(0))  # a point broadcast over the scored shape
    got = plain.compute()
    assert list(got)[-3:] == ["count", "point_mse", "point_mae"]
    # the point counts only the elements of the update that had one
    assert got["point_mse"] == pytest.approx(float(((y.mean(0) - y) ** 2).mean()), rel=1e-12)
    with pytest.raises(ValueError, match="breakdown_dim: expected an axis to break"):
        plain.breakdown()
    m = ForecastMetrics(levels=(0.5, 0.8, 0.975), quantiles=(0.1, 0.5), breakdown_dim=-2)
    assert m.breakdown() == {}
    before = m.state_dict()
    assert before["breakdown_count"].shape == (0,) and before["breakdown_covered"].shape == (0, 3)
    m.update(x, y)
    state = m.state_dict()
    per_index = {k: tuple(v.shape) for k, v in state.items() if k.startswith("breakdown_")}
    assert per_index == {
        "breakdown_count": (4,),
        "breakdown_crps": (4,),
        "breakdown_se_mean": (4,),
        "breakdown_ae_mean": (4,),
        "breakdown_se_median": (4,),
        "breakdown_ae_median": (4,),
        "breakdown_covered": (4, 3),
        "breakdown_width": (4, 3),
        "breakdown_count_point": (4,),
        "breakdown_se_point": (4,),
        "breakdown_ae_point": (4,),
    }
    back = ForecastMetrics(levels=(0.5, 0.8, 0.975), quantiles=(0.1, 0.5), breakdown_dim=-2)
    back.load_state_dict(before)  # an empty breakdown loads, and takes the next update's size
    back.load_state_dict(state)
    assert back.breakdown() == m.breakdown() and back.compute() == m.compute()
    bad = {**state, "breakdown_width": torch.zeros(5, 3, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"state\['breakdown_width'\]: expected shape \(4, 3\)"):
        back.load_state_dict(bad)
    # a state saved before update(point=) existed loads with no point sums
    legacy = {k: v for k, v in plain.state_dict().items() if not k.endswith("_point")}
    old = ForecastMetrics()
    old.load_state_dict(legacy)
    assert "point_mse" not in old.compute() and old.compute()["crps"] == got["crps"]


def test_forecast_metrics_breakdown_and_point_bad_input():
    x, y = _forecast_data(seed=106, S=5, B=3, H=4, N=2)
    m = ForecastMetrics(breakdown_dim=1)
    m.update(x, y)
    with pytest.raises(
        ValueError,
        match=r"^samples: expected a breakdown axis of size 4 \(as accumulated so far\), got 6$",
    ):
        m.update(torch.zeros(5, 2, 6, 2), torch.zeros(2, 6, 2))
    assert m.compute()["count"] == y.numel()  # nothing half-written
    other = ForecastMetrics(breakdown_dim=1)
    other.update(x[:, :, :3], y[:, :3])
    with pytest.raises(ValueError, match="other: expected a breakdown axis of size 4"):
        m.merge(other)
    with pytest.raises(
        ValueError,
        match=r"^breakdown_dim: expected an axis of the scored shape \(3, 4, 2\) \(samples "
        r"without their sample axis\), in -3\.\.2, got int 3$",
    ):
        ForecastMetrics(breakdown_dim=3).update(x, y)
    with pytest.raises(TypeError, match=r"^breakdown_dim: expected an integer, got str '1'$"):
        ForecastMetrics(breakdown_dim="1")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"^point: expected a shape that broadcasts to the scored shape \(3, 4, 2\), "
        r"got a torch.float64 tensor of shape \(3, 5, 2\)$",
    ):
        m.update(x, y, point=torch.zeros(3, 5, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^point: expected a torch.Tensor"):
        m.update(x, y, point=[0.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^point: expected finite values"):
        ForecastMetrics(nan_policy="raise").update(x, y, point=torch.full_like(y, math.nan))
    assert ForecastMetrics(breakdown_dim=1) != m and m.config["breakdown_dim"] == 1
    with pytest.raises(ValueError, match="different configs"):
        m.merge(ForecastMetrics())


# ============================================================================================
# Bad input
# ============================================================================================


def test_bad_input_messages():
    x = torch.zeros(10, 4, 5)
    without = r"samples of shape \(10, 4, 5\) without its sample axis \(dim 0\), \(4, 5\)"
    with pytest.raises(
        ValueError, match=rf"obs: expected a shape that broadcasts to {without}.*shape \(4, 6\)"
    ):
        crps(x, torch.zeros(4, 6))
    with pytest.raises(
        ValueError, match=r"obs: expected at most 2 dimension\(s\).*shape \(10, 4, 5\)"
    ):
        crps(x, torch.zeros(10, 4, 5))
    with pytest.raises(ValueError, match=r"samples: expected at least one sample.*\(0, 4, 5\)"):
        crps(torch.zeros(0, 4, 5), torch.zeros(4, 5))
    with pytest.raises(
        ValueError,
        match=r"sample_dim: expected an axis of samples of shape \(10, 4, 5\), in -3\.\.2, got int 3",
    ):
        crps(x, torch.zeros(4, 5), sample_dim=3)
    with pytest.raises(ValueError, match=r"sample_dim: .*got int -4"):
        sample_quantiles(x, 0.5, sample_dim=-4)
    with pytest.raises(
        ValueError, match=r"weights: expected non-negative values, got 1 negative.*\(10, 1, 1\)"
    ):
        crps(
            x,
            torch.zeros(4, 5),
            weights=torch.ones(10, 1, 1).index_fill_(0, torch.tensor([3]), -1.0),
        )
    with pytest.raises(
        ValueError, match=r"weights: expected a shape that broadcasts to .*\(10, 4, 5\).*\(3,\)"
    ):
        crps(x, torch.zeros(4, 5), weights=torch.ones(3))
    with pytest.raises(ValueError, match="weights: expected a positive total weight"):
        crps(x, torch.zeros(4, 5), weights=torch.zeros(10, 1, 1))
    with pytest.raises(
        ValueError, match="estimator: expected one of 'ecdf', 'fair', 'energy', got str 'sorted'"
    ):
        crps(x, torch.zeros(4, 5), estimator="sorted")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="nan_policy: expected one of 'propagate', 'omit', 'raise'"
    ):
        crps(x, torch.zeros(4, 5), nan_policy="ignore")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"samples: expected a torch.Tensor \(wrap it with torch.as_tensor\)"
    ):
        crps(np.zeros((10, 4)), torch.zeros(4))  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"samples: expected a floating-point tensor, got a torch.int64"
    ):
        crps(torch.zeros(10, 4, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match=r"samples: expected a tensor with a sample axis"):
        crps(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(
        ValueError, match=r"q\[1\]: expected a finite number in \[0, 1\], got float 1.5"
    ):
        sample_quantiles(x, [0.5, 1.5])
    with pytest.raises(
        ValueError, match=r"level: expected a finite number in \(0, 1\), got float 1.0"
    ):
        coverage(x, torch.zeros(4, 5), level=1.0)
    with pytest.raises(
        ValueError,
        match=r"mask: expected a shape that broadcasts to the scored shape \(4, 5\).*\(3,\)",
    ):
        quantile_crps(x, torch.ones(4, 5), mask=torch.ones(3))
    with pytest.raises(
        ValueError, match=r"variate_dim: expected an axis of .*\(4, 5\), in -2\.\.1, got int 2"
    ):
        crps_sum(x, torch.zeros(4, 5), variate_dim=2)
    with pytest.raises(ValueError, match=r"obs: expected a shape that broadcasts .*\(4, 6\)"):
        ForecastMetrics().update(x, torch.zeros(4, 6))
    with pytest.raises(
        ValueError, match=r"levels\[1\]: expected a finite number in \(0, 1\), got float 0.0"
    ):
        ForecastMetrics(levels=(0.5, 0.0))
    with pytest.raises(ValueError, match=r"levels: expected distinct levels"):
        ForecastMetrics(levels=(0.5, 0.5))
    # integer observations are fine (count data), and score like their float twins
    xi = torch.randn(10, 4, generator=gen(90))
    torch.testing.assert_close(crps(xi, torch.arange(4)), crps(xi, torch.arange(4.0)))


def test_wrong_kind_is_a_type_error_bad_value_a_value_error():
    x, y = torch.zeros(10, 4), torch.zeros(4)
    with pytest.raises(TypeError, match="estimator: expected one of"):
        crps(x, y, estimator=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nan_policy: expected one of"):
        crps(x, y, nan_policy=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sample_dim: expected an integer, got float 0\.0"):
        crps(x, y, sample_dim=0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sample_dim: expected an integer, got bool True"):
        ForecastMetrics(sample_dim=True)
    with pytest.raises(TypeError, match="variate_dim: expected an integer, got str '-1'"):
        ForecastMetrics(variate_dim="-1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"quantiles\[0\]: expected a finite number .*got str"):
        quantile_crps(x, y, quantiles=["0.5"])  # type: ignore[list-item]
    with pytest.raises(
        TypeError, match=r"quantiles: expected a sequence of levels, got float 0\.5"
    ):
        ForecastMetrics(quantiles=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quantiles: expected at least one level"):
        quantile_crps(x, y, quantiles=[])
    with pytest.raises(TypeError, match=r"obs: expected a torch.Tensor \(wrap it"):
        crps(x, [0.0] * 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"mask: expected a real tensor, got a torch\.bool"):
        quantile_crps(x, y, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"q: expected a sequence of levels, got str '0\.5'"):
        sample_quantiles(x, "0.5")  # type: ignore[arg-type]
    # levels as tensors and numpy numbers are numbers
    torch.testing.assert_close(
        sample_quantiles(x, torch.tensor([0.1, 0.9])), sample_quantiles(x, [0.1, 0.9])
    )
    assert sample_quantiles(x, np.float64(0.5)).shape == (4,)


def _probts_reference(y, f, quantiles_num=20):
    """ProbTS's Evaluator (microsoft/ProbTS, probts/utils/evaluator.py), written out in numpy:
    y ``[W, H, N]``, f ``[W, S, H, N]``; per window the 19-level weighted quantile loss over
    its own sum |y|, then the mean over windows; the same on the sums over variates."""
    qs = (np.arange(quantiles_num) / quantiles_num)[1:]

    def one(y, f):
        per_window = []
        for yi, fi in zip(y, f, strict=True):
            losses = []
            for q in qs:
                pred = np.quantile(fi, q, axis=0)
                losses.append(
                    (2 * np.abs((pred - yi) * ((yi <= pred) - q))).sum() / np.abs(yi).sum()
                )
            per_window.append(np.mean(losses))
        return np.mean(per_window)

    return one(y, f), one(y.sum(-1), f.sum(-1))


def test_quantile_crps_per_window_is_probts_evaluator():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(30, 5, 8, 3, generator=g, dtype=torch.float64) * 2 + 1  # [S, W, H, N]
    y = torch.randn(5, 8, 3, generator=g, dtype=torch.float64) + 1  # [W, H, N]
    want, want_sum = _probts_reference(y.numpy(), x.movedim(0, 1).numpy())
    got = quantile_crps(x, y, window_dim=0)
    assert float(got) == pytest.approx(want, rel=1e-12)
    assert float(quantile_crps(x, y, window_dim=0, sum_dim=-1)) == pytest.approx(
        want_sum, rel=1e-12
    )
    # the samples' axis anywhere; a per-window normaliser is not the global one
    assert float(quantile_crps(x.movedim(0, 2), y, sample_dim=2, window_dim=0)) == pytest.approx(
        want, rel=1e-12
    )
    assert abs(float(quantile_crps(x, y)) - want) > 1e-3
    # one window: the global score
    assert float(quantile_crps(x[:, :1], y[:1], window_dim=0)) == pytest.approx(
        float(quantile_crps(x[:, :1], y[:1])), rel=1e-12
    )


def test_quantile_crps_per_window_of_a_point_forecast_is_nmae():
    """A point forecast (S = 1): every quantile is the point and the mean weight over the 19
    levels is 1, so each window scores sum |y - yhat| / sum |y| (ProbTS's iTransformer rows)."""
    g = torch.Generator().manual_seed(12)
    point = torch.randn(4, 6, 2, generator=g, dtype=torch.float64)
    y = torch.randn(4, 6, 2, generator=g, dtype=torch.float64)
    nmae = ((point - y).abs().sum((1, 2)) / y.abs().sum((1, 2))).mean()
    torch.testing.assert_close(quantile_crps(point[None], y, window_dim=0), nmae)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"window_dim": 3}, "window_dim"),
        ({"window_dim": 0, "sum_dim": 0}, "sum_dim, window_dim"),
        ({"window_dim": "0"}, "window_dim"),
    ],
)
def test_quantile_crps_per_window_rejects_bad_axes(kwargs, pattern):
    x, y = torch.randn(4, 2, 3, 2), torch.randn(2, 3, 2)
    with pytest.raises((TypeError, ValueError), match=pattern):
        quantile_crps(x, y, **kwargs)
    with pytest.raises(ValueError, match="window_dim"):
        quantile_crps(x, y[0], window_dim=0)
