"""energy_score and variogram_score against slow loops over the definitions, scoringrules, the
CRPS (one-element events), each other's routes, and the invariants of the scores.

Dimensions: S samples, B windows, H horizon, N variates, D elements of one vector.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsample.metrics import crps, energy_score, multivariate, variogram_score

sr = pytest.importorskip("scoringrules")


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ============================================================================================
# Slow references (float64 numpy, one vector at a time, loops straight from the definitions)
# ============================================================================================


def ref_energy(x, y, fair=False):
    """x [S, D], y [D]: (1/S) sum_i |x_i - y| - sum_ij |x_i - x_j| / (2 S^2 or 2 S (S - 1))."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    s = len(x)
    first = sum(math.sqrt(sum((x[i, k] - y[k]) ** 2 for k in range(len(y)))) for i in range(s))
    pairs = sum(
        math.sqrt(sum((x[i, k] - x[j, k]) ** 2 for k in range(len(y))))
        for i in range(s)
        for j in range(s)
    )
    return first / s - pairs / (2 * (s * (s - 1) if fair else s * s))


def ref_variogram(x, y, p=0.5, w=None, fair=False):
    """x [S, D], y [D]: sum_ij w_ij (mean_m |x_mi - x_mj|^p - |y_i - y_j|^p)^2, or the fair
    pairwise form sum_ij w_ij [mean_m (f_m - g)^2 - sum_{m != l} (f_m - f_l)^2 / (2 S (S - 1))]."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    s, d = x.shape
    w = np.ones((d, d)) if w is None else np.asarray(w, dtype=np.float64)
    total = 0.0
    for i in range(d):
        for j in range(d):
            f = [abs(x[m, i] - x[m, j]) ** p for m in range(s)]
            g = abs(y[i] - y[j]) ** p
            if not fair:
                total += w[i, j] * (sum(f) / s - g) ** 2
            else:
                e1 = sum((fm - g) ** 2 for fm in f) / s
                e2 = sum((f[m] - f[n]) ** 2 for m in range(s) for n in range(s) if m != n)
                total += w[i, j] * (e1 - e2 / (2 * s * (s - 1)))
    return total


def per_vector(ref, x, y, **kw):
    """A reference over the vectors of x [S, n, D], y [n, D] -> [n]."""
    return np.array([ref(x[:, v], y[v], **kw) for v in range(x.shape[1])])


def data(seed, shape=(12, 3, 4, 5), dtype=torch.float64):
    """samples [S, B, H, N] and obs [B, H, N] with correlated components (seeded)."""
    g = gen(seed)
    common = torch.randn((*shape[:-1], 1), generator=g, dtype=dtype)
    x = common + 0.5 * torch.randn(shape, generator=g, dtype=dtype)
    y = torch.randn(shape[1:], generator=g, dtype=dtype)
    return x, y


# ============================================================================================
# Against the loops and scoringrules
# ============================================================================================


@pytest.mark.parametrize("estimator", ["ecdf", "fair"])
def test_energy_score_equals_the_double_loop(estimator):
    x, y = data(0)  # events: the N = 5 variates of each (B, H)
    got = energy_score(x, y, estimator=estimator)
    assert got.shape == (3, 4) and got.dtype == torch.float64
    xs, ys = x.reshape(12, -1, 5).numpy(), y.reshape(-1, 5).numpy()
    want = per_vector(ref_energy, xs, ys, fair=estimator == "fair").reshape(3, 4)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("estimator", ["ecdf", "fair"])
@pytest.mark.parametrize("p", [0.5, 1.0, 2.0, 1.3])
def test_variogram_score_equals_the_double_loop(estimator, p):
    x, y = data(1, shape=(6, 2, 3, 4))
    w = torch.rand(4, 4, generator=gen(2), dtype=torch.float64)  # not symmetric
    got = variogram_score(x, y, p=p, pair_weights=w, estimator=estimator)
    assert got.shape == (2, 3) and got.dtype == torch.float64
    xs, ys = x.reshape(6, -1, 4).numpy(), y.reshape(-1, 4).numpy()
    want = per_vector(ref_variogram, xs, ys, p=p, w=w.numpy(), fair=estimator == "fair")
    np.testing.assert_allclose(got.numpy(), want.reshape(2, 3), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize(("ours", "theirs"), [("ecdf", "nrg"), ("fair", "fair")])
def test_both_scores_match_scoringrules(ours, theirs):
    x, y = data(3, shape=(30, 4, 6, 7))
    # scoringrules wants the ensemble on m_axis (-2 by default) and the variables on v_axis
    fct = x.permute(1, 2, 0, 3).numpy()  # [B, H, S, N]
    es = sr.es_ensemble(y.numpy(), fct, estimator=theirs, backend="numpy")
    np.testing.assert_allclose(energy_score(x, y, estimator=ours).numpy(), es, rtol=1e-12)
    for p in (0.5, 1.0):
        vs = sr.vs_ensemble(y.numpy(), fct, p=p, estimator=theirs, backend="numpy")
        got = variogram_score(x, y, p=p, estimator=ours).numpy()
        np.testing.assert_allclose(got, vs, rtol=1e-12)
    # a whole window (H x N = 42 elements) as one vector, pair weights on the flattened order
    flat = x.reshape(30, 4, 42).permute(1, 0, 2).numpy()  # [B, S, H * N]
    obs = y.reshape(4, 42).numpy()
    es = sr.es_ensemble(obs, flat, estimator=theirs, backend="numpy")
    got = energy_score(x, y, event_dims=(-2, -1), estimator=ours)
    np.testing.assert_allclose(got.numpy(), es, rtol=1e-12)
    w = torch.rand(42, 42, generator=gen(4), dtype=torch.float64)
    vs = sr.vs_ensemble(obs, flat, w=w.numpy(), estimator=theirs, backend="numpy")
    got = variogram_score(x, y, event_dims=(1, 2), pair_weights=w, estimator=ours)
    np.testing.assert_allclose(got.numpy(), vs, rtol=1e-12)


@pytest.mark.parametrize("estimator", ["ecdf", "fair"])
def test_energy_score_of_one_element_events_is_the_crps(estimator):
    x, y = data(5, shape=(40, 6, 8, 3))
    got = energy_score(x[..., :1], y[..., :1], estimator=estimator)  # [B, H]
    want = crps(x[..., 0], y[..., 0], estimator=estimator)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # and a one-element vector has no pairs: its variogram score is 0
    assert torch.equal(variogram_score(x[..., :1], y[..., :1]), torch.zeros(6, 8, dtype=x.dtype))


# ============================================================================================
# Layouts, chunks, routes, dtypes
# ============================================================================================


def test_axes_layouts_and_broadcasting_agree():
    x, y = data(6, shape=(10, 3, 4, 5))
    for score in (energy_score, variogram_score):
        base = score(x, y, event_dims=(-2, -1))  # [B]
        # the same events named by positive axes, in another order
        torch.testing.assert_close(score(x, y, event_dims=[2, 1]), base, rtol=0, atol=0)
        # samples on another axis, and in another memory layout
        torch.testing.assert_close(
            score(x.movedim(0, 2), y, sample_dim=2, event_dims=(-2, -1)), base
        )
        swapped = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not swapped.is_contiguous()
        torch.testing.assert_close(score(swapped, y, event_dims=(-2, -1)), base, rtol=0, atol=0)
        # obs broadcasting: one observation for every window equals its expanded copy
        torch.testing.assert_close(
            score(x, y[:1], event_dims=(-2, -1)),
            score(x, y[:1].expand(3, 4, 5).contiguous(), event_dims=(-2, -1)),
        )
        # events across non-adjacent axes: B and N, one vector per step
        got = score(x, y, event_dims=(0, 2))  # [H]
        want = score(x.permute(0, 2, 1, 3), y.permute(1, 0, 2), event_dims=(1, 2))
        torch.testing.assert_close(got, want)
        # every axis of E in the event: one score, shape ()
        one = score(x, y, event_dims=(0, 1, 2))
        assert one.shape == ()
        torch.testing.assert_close(one, score(x.reshape(10, 1, 60), y.reshape(1, 60))[0])


@pytest.mark.parametrize("estimator", ["ecdf", "fair"])
def test_chunk_sizes_do_not_change_results(monkeypatch, estimator):
    x, y = data(7, shape=(9, 5, 3, 6))
    es = energy_score(x, y, event_dims=(-2, -1), estimator=estimator)
    vs = variogram_score(x, y, event_dims=(-2, -1), estimator=estimator)
    # one vector per chunk and one row of the pair matrix per block
    monkeypatch.setattr(multivariate, "MV_CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(
        energy_score(x, y, event_dims=(-2, -1), estimator=estimator), es, rtol=1e-13, atol=0
    )
    torch.testing.assert_close(
        variogram_score(x, y, event_dims=(-2, -1), estimator=estimator), vs, rtol=1e-13, atol=0
    )
    # vectors cut mid-row of R: chunks of 4 vectors (S D + S^2 elements each) over R = (5, 3)
    monkeypatch.undo()
    want = energy_score(x, y, estimator=estimator)  # [B, H]: events of N = 6
    monkeypatch.setattr(multivariate, "MV_CHUNK_ELEMENTS", 4 * (9 * 6 + 9 * 9))
    torch.testing.assert_close(energy_score(x, y, estimator=estimator), want, rtol=1e-13, atol=0)


def test_the_chunk_budget_is_read_where_the_tests_patch_it(monkeypatch):
    """MV_CHUNK_ELEMENTS of the multivariate module sets the vectors per chunk of both scores
    (the operands moved to _vectors.py; a budget read there would make the patches above
    change nothing, and the test above pass without testing the chunking)."""
    from diffsample.metrics import _vectors
    from diffsample.metrics._vectors import Vectors

    assert multivariate.MultivariateEstimator is _vectors.MultivariateEstimator  # still here
    seen = []
    real = Vectors.chunks

    def spy(self, per_chunk, dtype, scratch):
        seen.append(per_chunk)
        return real(self, per_chunk, dtype, scratch)

    monkeypatch.setattr(Vectors, "chunks", spy)
    x, y = data(7, shape=(9, 5, 3, 6))
    energy_score(x, y)
    variogram_score(x, y)
    S, D = 9, 6  # budget // elements per vector: S D + S^2 (energy), S D^2 (variogram)
    assert seen == [(1 << 20) // (S * D + S * S), (1 << 20) // (S * D * D)]
    monkeypatch.setattr(multivariate, "MV_CHUNK_ELEMENTS", 1)
    energy_score(x, y)
    variogram_score(x, y)
    assert seen[2:] == [1, 1]


def test_float32_is_computed_accurately_and_returned_as_float32():
    x, y = data(8, shape=(50, 4, 24, 7))
    x32, y32 = x.float(), y.float()
    for score in (energy_score, variogram_score):
        got = score(x32, y32, event_dims=(-2, -1))
        assert got.dtype == torch.float32
        want = score(x32.double(), y32.double(), event_dims=(-2, -1))
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)
    half = energy_score(x32.half(), y32.half())
    assert half.dtype == torch.float32


def test_gram_route_equals_direct_differences_far_from_the_origin_and_with_duplicates():
    # the Gram matrix of centred samples keeps a large common offset from costing precision;
    # duplicated samples (a bootstrap draws them) have distance exactly 0
    x, y = data(9, shape=(40, 3, 16, 7))
    x, y = x + 1e6, y + 1e6
    x[20:] = x[:20]
    got = energy_score(x, y, event_dims=(-2, -1))
    xs, ys = x.reshape(40, 3, -1), y.reshape(3, -1)
    direct = torch.cdist(
        xs.transpose(0, 1), xs.transpose(0, 1), compute_mode="donot_use_mm_for_euclid_dist"
    )
    want = (xs - ys).norm(dim=-1).mean(0) - 0.5 * direct.mean((-2, -1))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # the route taken for gradients (direct differences) gives the same numbers
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(
        energy_score(xg, y, event_dims=(-2, -1)).detach(), got, rtol=1e-12, atol=0
    )


def test_gradients_match_autograd_of_the_definitions():
    x, y = data(10, shape=(7, 2, 3, 4))
    for score, ref in (
        (lambda a, b: energy_score(a, b, event_dims=(-2, -1)), _torch_energy),
        (lambda a, b: variogram_score(a, b, p=0.5), _torch_variogram),
        (lambda a, b: variogram_score(a, b, p=2.0, estimator="fair"), _torch_variogram_fair2),
    ):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        score(a, b).sum().backward()
        a2, b2 = x.clone().requires_grad_(), y.clone().requires_grad_()
        ref(a2, b2).sum().backward()
        torch.testing.assert_close(a.grad, a2.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b.grad, b2.grad, rtol=1e-10, atol=1e-12)
        assert bool(torch.isfinite(a.grad).all())
    xs = x[:, :1, :1].clone().requires_grad_()  # [S, 1, 1, N]
    assert torch.autograd.gradcheck(
        lambda a: energy_score(a, y[:1, :1], estimator="fair"), (xs,), eps=1e-6, atol=1e-6
    )
    assert torch.autograd.gradcheck(lambda a: variogram_score(a, y[:1, :1], p=1.5), (xs,))


def _torch_energy(x, y):
    """ES over the (H, N) events by explicit differences: x [S, B, H, N] -> [B]."""
    xs, ys = x.flatten(2), y.flatten(1)  # [S, B, D], [B, D]
    first = (xs - ys).norm(dim=-1).mean(0)
    d = xs[:, None] - xs[None]  # [S, S, B, D]
    off = ~torch.eye(xs.shape[0], dtype=torch.bool)[:, :, None]  # |0| has no gradient
    pairs = torch.where(off, d.square().sum(-1).clamp_min(1e-300).sqrt(), 0).mean((0, 1))
    return first - 0.5 * pairs


def _pair_powers(x, y, p):
    """|x_i - x_j|^p [S, B, H, P] and |y_i - y_j|^p [B, H, P] over the pairs i < j of N."""
    i, j = torch.triu_indices(x.shape[-1], x.shape[-1], 1)
    return (x[..., i] - x[..., j]).abs() ** p, (y[..., i] - y[..., j]).abs() ** p


def _torch_variogram(x, y):
    fx, fy = _pair_powers(x, y, 0.5)
    return 2 * (fx.mean(0) - fy).square().sum(-1)  # both orders of each pair


def _torch_variogram_fair2(x, y):
    fx, fy = _pair_powers(x, y, 2.0)
    s = x.shape[0]
    e1 = (fx - fy).square().mean(0)
    e2 = (fx[:, None] - fx[None]).square().sum((0, 1)) / (2 * s * (s - 1))
    return 2 * (e1 - e2).sum(-1)


# ============================================================================================
# NaN policies
# ============================================================================================


@pytest.mark.parametrize("estimator", ["ecdf", "fair"])
def test_omit_drops_samples_with_a_nan_in_their_vector(estimator):
    x, y = data(11, shape=(8, 4, 5))  # [S, B, N]: four vectors
    x[2, 0, 3] = x[5, 0, 0] = math.nan  # vector 0 loses two samples
    x[:, 1, 1] = math.nan  # vector 1 loses every sample
    x[1:, 2, 4] = math.nan  # vector 2 keeps one sample
    y[3, 2] = math.nan  # vector 3's observation is NaN
    for score in (energy_score, variogram_score):
        got = score(x, y, nan_policy="omit", estimator=estimator)
        keep = [i for i in range(8) if i not in (2, 5)]
        torch.testing.assert_close(got[0], score(x[keep, :1], y[:1], estimator=estimator)[0])
        assert math.isnan(got[1]) and math.isnan(got[3])
        if estimator == "fair":  # one sample left: no pair to estimate the spread from
            assert math.isnan(got[2])
        else:
            torch.testing.assert_close(got[2], score(x[:1, 2:3], y[2:3])[0])
        prop = score(x, y, estimator=estimator)  # propagate: every vector above holds a NaN
        assert bool(torch.isnan(prop).all())
        with pytest.raises(
            ValueError, match=r"^samples: expected finite values \(nan_policy='raise'"
        ):
            score(x, y, nan_policy="raise")


def test_propagate_touches_only_the_vectors_holding_nan():
    x, y = data(12, shape=(8, 6, 5))
    clean = energy_score(x, y), variogram_score(x, y)
    x[3, 2, 1] = math.nan
    for got, want in zip((energy_score(x, y), variogram_score(x, y)), clean, strict=True):
        assert math.isnan(got[2])
        mask = torch.arange(6) != 2
        assert torch.equal(got[mask], want[mask])


# ============================================================================================
# Numerics and invariants
# ============================================================================================


def test_values_near_the_float32_maximum_and_past_the_float64_square_root():
    # the float64 computation of the same (rounded) values is the reference
    g = gen(13)
    x = (torch.rand(20, 3, 6, generator=g, dtype=torch.float64) * 2 - 1) * 3e38
    y = (torch.rand(3, 6, generator=g, dtype=torch.float64) * 2 - 1) * 1e38
    x32, y32 = x.float(), y.float()
    x64, y64 = x32.double(), y32.double()
    # ES: float32 inputs are computed in float64, where no squared distance overflows
    es = energy_score(x32, y32)
    assert es.dtype == torch.float32 and bool(torch.isfinite(es).all())
    torch.testing.assert_close(es.double(), energy_score(x64, y64), rtol=1e-6, atol=0)
    # VS: x_i - x_j overflows float32 here; scaled vectors give the score, which small pair
    # weights keep representable
    w = torch.full((6, 6), 1e-4)
    for estimator in ("ecdf", "fair"):
        vs = variogram_score(x32, y32, pair_weights=w, estimator=estimator)
        want = variogram_score(x64, y64, pair_weights=w.double(), estimator=estimator)
        assert bool(torch.isfinite(vs).all())
        torch.testing.assert_close(vs.double(), want, rtol=1e-5, atol=0)
    # p = 2 squares a square: (|x_i - x_j|^2 - mean)^2 passes float32's range near 1e10
    z, v = x32 / 2.0**90, y32 / 2.0**90  # ~2e11
    tiny = torch.full((6, 6), 1e-30)
    vs = variogram_score(z, v, p=2.0, pair_weights=tiny, estimator="fair")
    want = variogram_score(
        z.double(), v.double(), p=2.0, pair_weights=tiny.double(), estimator="fair"
    )
    assert bool(torch.isfinite(vs).all())
    torch.testing.assert_close(vs.double(), want, rtol=1e-5, atol=0)
    # float64 past sqrt(max): squared distances would overflow; scaled by a power of two
    big = 2.0**770  # values near 1e270
    es64 = energy_score(x64 * big, y64 * big)
    assert bool(torch.isfinite(es64).all())
    torch.testing.assert_close(es64, energy_score(x64, y64) * big, rtol=1e-12, atol=0)


def test_invariances():
    x, y = data(14, shape=(20, 5, 6))
    es, vs = energy_score(x, y), variogram_score(x, y, p=1.0)
    shift = torch.randn(6, generator=gen(15), dtype=torch.float64)
    # ES: translation of samples and observation together; rotation of the event space
    torch.testing.assert_close(energy_score(x + shift, y + shift), es)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen(16), dtype=torch.float64))
    torch.testing.assert_close(energy_score(x @ q, y @ q), es)
    # VS: a level common to all components of each sample and of the observation is invisible
    level = torch.randn(20, 5, 1, generator=gen(17), dtype=torch.float64)
    torch.testing.assert_close(variogram_score(x + level, y + 3.0, p=1.0), vs)
    # homogeneity: ES(aX, ay) = a ES, VS_p(aX, ay) = a^(2p) VS_p
    torch.testing.assert_close(energy_score(3 * x, 3 * y), 3 * es)
    torch.testing.assert_close(variogram_score(3 * x, 3 * y, p=1.0), 9 * vs)


def test_the_variogram_score_sees_dependence_that_marginals_miss():
    # observations with strongly correlated components: a forecast with the right marginals
    # and the right correlation beats one with the right marginals and independent components
    g = gen(18)
    n, s, d = 400, 50, 5
    corr = torch.full((d, d), 0.9, dtype=torch.float64).fill_diagonal_(1.0)
    chol = torch.linalg.cholesky(corr)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) @ chol.T
    right = torch.randn(s, n, d, generator=g, dtype=torch.float64) @ chol.T
    independent = torch.randn(s, n, d, generator=g, dtype=torch.float64)
    assert variogram_score(right, y).mean() < 0.5 * variogram_score(independent, y).mean()
    assert energy_score(right, y).mean() < energy_score(independent, y).mean()
    # the CRPS of each component cannot tell them apart (same marginals)
    a, b = crps(right, y).mean(), crps(independent, y).mean()
    assert abs(float(a - b)) < 0.05 * float(a)


# ============================================================================================
# Bad input
# ============================================================================================


@pytest.mark.parametrize("score", [energy_score, variogram_score])
def test_bad_input_is_one_line_naming_the_argument(score):
    x, y = torch.zeros(10, 4, 5), torch.zeros(4, 5)
    cases = [
        (
            dict(samples=np.zeros((10, 4))),
            TypeError,
            r"^samples: expected a torch.Tensor \(wrap it",
        ),
        (
            dict(samples=torch.zeros(10, 4, dtype=torch.long)),
            TypeError,
            r"^samples: expected a floating-point tensor",
        ),
        (
            dict(samples=torch.zeros(10), obs=torch.zeros(())),
            ValueError,
            r"^samples: expected an event axis beside the sample axis",
        ),
        (dict(samples=torch.zeros(0, 4, 5)), ValueError, r"^samples: expected at least one sample"),
        (dict(obs=None), TypeError, r"^obs: expected a torch.Tensor, got NoneType None"),
        (
            dict(obs=torch.zeros(4, 6)),
            ValueError,
            r"^obs: expected a shape that broadcasts to samples of shape \(10, 4, 5\)",
        ),
        (
            dict(event_dims=2),
            ValueError,
            r"^event_dims: expected an axis of the scored shape \(4, 5\) .*in -2\.\.1, got int 2",
        ),
        (
            dict(event_dims=(1, -1)),
            ValueError,
            r"^event_dims: expected distinct axes of the scored shape \(4, 5\)",
        ),
        (
            dict(event_dims=()),
            ValueError,
            r"^event_dims: expected an axis or a non-empty sequence of axes",
        ),
        (
            dict(event_dims="-1"),
            TypeError,
            r"^event_dims: expected an axis or a non-empty sequence of axes.*got str '-1'",
        ),
        (dict(event_dims=1.0), TypeError, r"^event_dims: expected an integer, got float 1\.0"),
        (
            dict(sample_dim=3),
            ValueError,
            r"^sample_dim: expected an axis of samples of shape \(10, 4, 5\), in -3\.\.2",
        ),
        (
            dict(estimator="nrg"),
            ValueError,
            r"^estimator: expected one of 'ecdf', 'fair', got str 'nrg'",
        ),
        (
            dict(estimator=None),
            TypeError,
            r"^estimator: expected one of 'ecdf', 'fair', got NoneType",
        ),
        (
            dict(nan_policy="ignore"),
            ValueError,
            r"^nan_policy: expected one of 'propagate', 'omit', 'raise'",
        ),
        (
            dict(samples=torch.zeros(1, 4, 5), estimator="fair"),
            ValueError,
            r"^samples: expected at least 2 samples along sample_dim=0 for estimator='fair'",
        ),
        (
            dict(samples=torch.zeros(10, 4, 0), obs=torch.zeros(4, 0)),
            ValueError,
            r"^event_dims: expected event axes holding at least one element, got -1",
        ),
    ]
    for kw, error, pattern in cases:
        args = {"samples": x, "obs": y, **kw}
        with pytest.raises(error, match=pattern) as info:
            score(args.pop("samples"), args.pop("obs"), **args)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^obs: expected finite values \(nan_policy='raise'"):
        score(x, torch.full((4, 5), math.inf), nan_policy="raise")


def test_variogram_score_bad_order_and_pair_weights():
    x, y = torch.zeros(10, 4, 5), torch.zeros(4, 5)
    cases = [
        (dict(p=0.0), ValueError, r"^p: expected a finite number > 0, got float 0\.0"),
        (dict(p=-1), ValueError, r"^p: expected a finite number > 0, got int -1"),
        (dict(p=math.nan), ValueError, r"^p: expected a finite number > 0, got float nan"),
        (dict(p="0.5"), TypeError, r"^p: expected a finite number > 0, got str '0\.5'"),
        (dict(pair_weights=np.ones((5, 5))), TypeError, r"^pair_weights: expected a torch.Tensor"),
        (
            dict(pair_weights=torch.ones(5, 5, dtype=torch.bool)),
            TypeError,
            r"^pair_weights: expected a real tensor",
        ),
        (
            dict(pair_weights=torch.ones(4, 4)),
            ValueError,
            r"^pair_weights: expected a \[D, D\] tensor with D = 5.*shape \(4, 4\)",
        ),
        (
            dict(pair_weights=-torch.eye(5)),
            ValueError,
            r"^pair_weights: expected non-negative values, got 5 negative",
        ),
        (
            dict(pair_weights=torch.full((5, 5), math.nan)),
            ValueError,
            r"^pair_weights: expected finite values, got 25 NaN/inf",
        ),
        (
            dict(pair_weights=torch.ones(5, 5, device="meta")),
            ValueError,
            r"^pair_weights: expected a tensor on cpu",
        ),
    ]
    for kw, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            variogram_score(x, y, **kw)
    # integer weights are weights
    w = torch.ones(5, 5, dtype=torch.long)
    torch.testing.assert_close(
        variogram_score(x + torch.arange(5.0), y, pair_weights=w),
        variogram_score(x + torch.arange(5.0), y),
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = data(19, shape=(30, 4, 8, 5))
    for score in (energy_score, variogram_score):
        for kw in ({}, {"event_dims": (-2, -1)}, {"estimator": "fair", "nan_policy": "omit"}):
            got = score(x.cuda(), y.cuda(), **kw)
            assert got.device.type == "cuda"
            torch.testing.assert_close(got.cpu(), score(x, y, **kw), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"^obs: expected a tensor on cuda"):
        energy_score(x.cuda(), y)
