"""CRPS speed and memory: ``diffsample.metrics.crps`` vs ``properscoring.crps_ensemble``; the
energy score of whole windows and the per-step multivariate scores at the same shape.

Not part of the default test run (pytest-benchmark; needs the ``bench`` extra, and numba for
properscoring's fast path, without which properscoring falls back to an O(S^2)-memory route).
Run::

    python -m pytest benchmarks/bench_metrics.py --benchmark-only
    DIFFSAMPLE_BENCH_CRPS_SHAPE=100,256,7,96 python -m pytest benchmarks/bench_metrics.py  # quick

Shape (``DIFFSAMPLE_BENCH_CRPS_SHAPE``, default ``100,2785,7,96``): the ETTh1 test set at 100
samples, S first. float32 samples and observations, seeded. ``DIFFSAMPLE_BENCH_ROUNDS``
(default 3) rounds per timing; the slow routes run once.

What is timed is what a user runs: ``crps(samples, obs)`` on the sample-first tensor, and
``properscoring.crps_ensemble(obs, np.moveaxis(samples, 0, -1))`` on the same memory
(``moveaxis`` is a view; the transposition happens inside properscoring's ``np.sort`` and is
counted). The ``*_transposed`` cases score the same values with the last two axes swapped in
memory (``samples.transpose(-1, -2).contiguous().transpose(-1, -2)``), the layout the
forecaster's ``forecast()`` returns: the cost must not depend on it (issue 9). The
``*_energy_score*`` and ``*_variogram_score*`` cases score vectors: each window's last two axes
(7 x 96 = 672 values) for the energy score, each step's 7 variates for both. Peak memory is measured in a fresh subprocess per call: the peak resident size
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call; Linux only) minus the
resident size just before the call (input already resident), recorded as ``extra_peak_mib`` in
``extra_info``. tracemalloc cannot see torch's allocations, hence whole-process accounting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from diffsample.metrics import (
    ForecastMetrics,
    _engine,
    crps,
    energy_score,
    quantile_crps,
    variogram_score,
)

properscoring = pytest.importorskip("properscoring")

SHAPE: tuple[int, ...] = tuple(
    int(v) for v in os.environ.get("DIFFSAMPLE_BENCH_CRPS_SHAPE", "100,2785,7,96").split(",")
)
ROUNDS = int(os.environ.get("DIFFSAMPLE_BENCH_ROUNDS", "3"))
SEED = 0
TIMES: dict[str, float] = {}  # best time per route in this run, for the speed ratio
RESULTS: dict[str, float] = {}


def make_data(
    shape: tuple[int, ...] = SHAPE, *, transposed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """samples [S, *E] and obs [*E], float32, seeded; allocated in place (no temporaries).

    ``transposed``: the same values with the last two axes swapped in memory (the copy is made
    here, before anything is measured).
    """
    g = torch.Generator().manual_seed(SEED)
    samples = torch.randn(shape, generator=g)
    obs = torch.randn(shape[1:], generator=g)
    if transposed:
        samples = transpose_memory(samples)
    return samples, obs


def transpose_memory(samples: torch.Tensor) -> torch.Tensor:
    """The same values and shape, the last two axes swapped in memory."""
    return samples.transpose(-1, -2).contiguous().transpose(-1, -2)


def run_properscoring(samples: torch.Tensor, obs: torch.Tensor) -> np.ndarray:
    return properscoring.crps_ensemble(obs.numpy(), np.moveaxis(samples.numpy(), 0, -1))


def window_energy_score(samples: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """The energy score of each window: its last two axes as one vector -> [B]."""
    return energy_score(samples, obs, event_dims=(-2, -1))


ROUTES = {
    "diffsample": lambda s, o: crps(s, o),
    "properscoring": run_properscoring,
    "energy_score": window_energy_score,
}

_PEAK_SCRIPT = r"""
import json, sys
sys.path.insert(0, {bench_dir!r})
import bench_metrics as b
shape = tuple(json.loads(sys.argv[2]))
samples, obs = b.make_data(shape, transposed=sys.argv[3] == "transposed")
route = b.ROUTES[sys.argv[1]]
route(samples[:, :1], obs[:1])                     # warm up (numba, thread pools) on a sliver
def status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key))
with open("/proc/self/clear_refs", "w") as f:    # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status_kib("VmRSS")
out = route(samples, obs)
peak = status_kib("VmHWM")
input_kib = samples.numel() * 4 // 1024
print(json.dumps({{"extra_kib": peak - before, "input_kib": input_kib, "rss_before_kib": before}}))
"""


def extra_peak(
    route: str, shape: tuple[int, ...] = SHAPE, *, transposed: bool = False
) -> dict[str, float]:
    """Extra peak resident memory of one call (MiB) in a fresh process, and the input size.

    Linux only: the peak resident size (VmHWM) is reset to the current one through
    /proc/self/clear_refs just before the call, with the input already resident.
    """
    code = _PEAK_SCRIPT.format(bench_dir=os.path.dirname(os.path.abspath(__file__)))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    layout = "transposed" if transposed else "contiguous"
    args = [sys.executable, "-c", code, route, json.dumps(shape), layout]
    res = subprocess.run(args, capture_output=True, text=True, check=True, cwd=repo)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "extra_peak_mib": round(got["extra_kib"] / 1024, 1),
        "input_mib": round(got["input_kib"] / 1024, 1),
        "rss_before_mib": round(got["rss_before_kib"] / 1024, 1),
    }


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data()


@pytest.fixture(scope="module")
def transposed(data) -> torch.Tensor:
    """The samples of ``data`` with the last two axes swapped in memory."""
    return transpose_memory(data[0])


@pytest.fixture(scope="module")
def reference(data) -> np.ndarray:
    """properscoring's float64 result, computed once."""
    return run_properscoring(*data)


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    threads = torch.get_num_threads()
    torch_info = f"torch {torch.__version__} ({threads} threads)"
    return f"{cpu}, {os.cpu_count()} cores, {torch_info}, numpy {np.__version__}"


def _best(benchmark) -> float:
    return float(benchmark.stats.stats.min)


# ----------------------------------------------------------------------------------------------
def test_properscoring_crps_ensemble(benchmark, data, reference):
    benchmark.group = f"CRPS ecdf, samples {list(SHAPE)} float32, CPU"
    benchmark.extra_info.update(
        machine=_machine(),
        transposition_counted=True,
        numba=properscoring._crps._crps_ensemble_core.__name__ != "_crps_ensemble_vectorized",
    )
    out = benchmark.pedantic(lambda: run_properscoring(*data), rounds=ROUNDS, iterations=1)
    TIMES["properscoring"] = _best(benchmark)
    benchmark.extra_info.update(extra_peak("properscoring"))
    assert out.shape == SHAPE[1:] and np.array_equal(out, reference)


def test_diffsample_crps(benchmark, data, reference):
    benchmark.group = f"CRPS ecdf, samples {list(SHAPE)} float32, CPU"
    samples, obs = data
    out = benchmark.pedantic(
        lambda: crps(samples, obs), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    TIMES["diffsample"] = _best(benchmark)
    info = extra_peak("diffsample")
    route = "numpy sort of contiguous chunks + torch arithmetic"
    benchmark.extra_info.update(machine=_machine(), route=route, **info)
    if "properscoring" in TIMES:
        benchmark.extra_info["time_vs_properscoring"] = round(
            TIMES["diffsample"] / TIMES["properscoring"], 3
        )
    assert out.shape == SHAPE[1:] and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), reference, rtol=1e-4, atol=1e-5)
    assert info["extra_peak_mib"] <= info["input_mib"]  # the memory bound of the issue


def test_diffsample_crps_transposed(benchmark, data, transposed, reference):
    """The same values as ``test_diffsample_crps``, last two axes swapped in memory."""
    benchmark.group = f"CRPS ecdf, samples {list(SHAPE)} float32, CPU"
    obs = data[1]
    out = benchmark.pedantic(
        lambda: crps(transposed, obs), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    info = extra_peak("diffsample", transposed=True)
    benchmark.extra_info.update(machine=_machine(), strides=list(transposed.stride()), **info)
    if "diffsample" in TIMES:
        benchmark.extra_info["time_vs_contiguous"] = round(
            _best(benchmark) / TIMES["diffsample"], 3
        )
    assert not transposed.is_contiguous() and torch.equal(transposed, data[0])
    np.testing.assert_allclose(out.numpy(), reference, rtol=1e-4, atol=1e-5)
    assert info["extra_peak_mib"] <= info["input_mib"]  # the same memory bound


def test_diffsample_crps_torch_sort_route(benchmark, data, reference, monkeypatch):
    """The route not taken on CPU: torch.sort (what tensors requiring grad get)."""
    benchmark.group = f"CRPS ecdf, samples {list(SHAPE)} float32, CPU"
    monkeypatch.setattr(_engine, "numpy_route", lambda t: False)
    samples, obs = data
    out = benchmark.pedantic(lambda: crps(samples, obs), rounds=1, iterations=1)
    np.testing.assert_allclose(out.numpy(), reference, rtol=1e-4, atol=1e-5)


def test_diffsample_quantile_crps(benchmark, data):
    benchmark.group = f"other metrics, samples {list(SHAPE)} float32, CPU"
    samples, obs = data
    out = benchmark.pedantic(lambda: quantile_crps(samples, obs), rounds=1, iterations=1)
    RESULTS["quantile_crps"] = float(out)
    # the same call on a slice of windows against numpy's quantiles and CSDI's formula
    xs, ys = samples[:, :16].numpy().astype(np.float64), obs[:16].numpy().astype(np.float64)
    qs = np.arange(1, 20) / 20
    qp = np.quantile(xs, qs, axis=0)  # [Q, *E]
    loss = 2 * np.abs((qp - ys) * ((ys <= qp) - qs.reshape(-1, *([1] * ys.ndim)))).sum(
        axis=tuple(range(1, qp.ndim))
    )
    expected = np.mean(loss / np.abs(ys).sum())
    assert float(quantile_crps(samples[:, :16], obs[:16])) == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(float(out)) and float(out) > 0


def _forecast_metrics(samples: torch.Tensor, obs: torch.Tensor) -> dict[str, float]:
    m = ForecastMetrics(variate_dim=1)  # [S, B, N, H]: variates are dim 1 of [B, N, H]
    m.update(samples, obs)
    return m.compute()


def test_diffsample_forecast_metrics_update(benchmark, data, reference):
    benchmark.group = f"other metrics, samples {list(SHAPE)} float32, CPU"
    samples, obs = data
    got = benchmark.pedantic(lambda: _forecast_metrics(samples, obs), rounds=1, iterations=1)
    TIMES["forecast_metrics"] = _best(benchmark)
    RESULTS.update({f"forecast_metrics/{k}": v for k, v in got.items()})
    assert got["count"] == obs.numel() and all(np.isfinite(v) for v in got.values())
    assert got["crps"] == pytest.approx(float(np.mean(reference)), rel=1e-5)
    if "quantile_crps" in RESULTS:
        assert got["quantile_crps"] == pytest.approx(RESULTS["quantile_crps"], rel=1e-6)


def test_diffsample_forecast_metrics_update_transposed(benchmark, data, transposed, reference):
    """The same values as the contiguous case, last two axes swapped in memory."""
    benchmark.group = f"other metrics, samples {list(SHAPE)} float32, CPU"
    obs = data[1]
    got = benchmark.pedantic(lambda: _forecast_metrics(transposed, obs), rounds=1, iterations=1)
    benchmark.extra_info.update(machine=_machine(), strides=list(transposed.stride()))
    if "forecast_metrics" in TIMES:
        benchmark.extra_info["time_vs_contiguous"] = round(
            _best(benchmark) / TIMES["forecast_metrics"], 3
        )
    assert got["count"] == obs.numel() and all(np.isfinite(v) for v in got.values())
    assert got["crps"] == pytest.approx(float(np.mean(reference)), rel=1e-5)
    for k, v in got.items():  # the same values: the same metrics up to float32 round-off
        if f"forecast_metrics/{k}" in RESULTS:
            assert v == pytest.approx(RESULTS[f"forecast_metrics/{k}"], rel=1e-5), k


def _energy_reference(samples: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """The energy score of each window by direct differences in float64 (no Gram matrix):
    samples [S, B, *V], obs [B, *V] -> [B]."""
    x = samples.flatten(2).double().transpose(0, 1)  # [B, S, D]
    y = obs.flatten(1).double()  # [B, D]
    pairs = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # [B, S, S]
    return (x - y[:, None]).norm(dim=-1).mean(1) - 0.5 * pairs.mean((1, 2))


def test_diffsample_energy_score(benchmark, data):
    """The energy score of every window, its 7 x 96 values as one vector (O(S^2 D) each)."""
    benchmark.group = f"multivariate scores, samples {list(SHAPE)} float32, CPU"
    samples, obs = data
    out = benchmark.pedantic(
        lambda: window_energy_score(samples, obs), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    info = extra_peak("energy_score")
    benchmark.extra_info.update(
        machine=_machine(),
        vectors=SHAPE[1],
        vector_length=SHAPE[2] * SHAPE[3],
        route="float64 Gram matrix of centred samples, one bmm per chunk",
        **info,
    )
    assert out.shape == SHAPE[1:2] and out.dtype == torch.float32
    want = _energy_reference(samples[:, :16], obs[:16])
    np.testing.assert_allclose(out[:16].double().numpy(), want.numpy(), rtol=1e-6)
    # a few reused float64 chunk buffers (8 MiB each), whatever the number of windows
    assert info["extra_peak_mib"] <= 64


def test_diffsample_energy_score_per_step(benchmark, data):
    """The energy score of each step's N variates: B x H vectors of 7 (the S^2 pass dominates)."""
    benchmark.group = f"multivariate scores, samples {list(SHAPE)} float32, CPU"
    samples, obs = data  # [S, B, N, H]: the variates are axis -2 of E
    out = benchmark.pedantic(
        lambda: energy_score(samples, obs, event_dims=-2), rounds=1, iterations=1
    )
    benchmark.extra_info.update(machine=_machine(), vectors=SHAPE[1] * SHAPE[3])
    assert out.shape == (SHAPE[1], SHAPE[3])
    want = _energy_reference(samples[:, :4, :, 0], obs[:4, :, 0])
    np.testing.assert_allclose(out[:4, 0].double().numpy(), want.numpy(), rtol=1e-6)


def test_diffsample_variogram_score_per_step(benchmark, data):
    """The variogram score (p = 0.5) of each step's N variates: B x H vectors of 7."""
    benchmark.group = f"multivariate scores, samples {list(SHAPE)} float32, CPU"
    samples, obs = data
    out = benchmark.pedantic(
        lambda: variogram_score(samples, obs, event_dims=-2), rounds=1, iterations=1
    )
    benchmark.extra_info.update(machine=_machine(), vectors=SHAPE[1] * SHAPE[3])
    assert out.shape == (SHAPE[1], SHAPE[3]) and bool(torch.isfinite(out).all())
    x = samples[:, :4, :, 0].double()  # [S, 4, N]
    y = obs[:4, :, 0].double()  # [4, N]
    fx = (x[..., :, None] - x[..., None, :]).abs().sqrt().mean(0)  # [4, N, N]
    fy = (y[..., :, None] - y[..., None, :]).abs().sqrt()
    want = (fx - fy).square().sum((-2, -1))
    np.testing.assert_allclose(out[:4, 0].double().numpy(), want.numpy(), rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_diffsample_energy_score_cuda(benchmark, data):
    benchmark.group = f"multivariate scores, samples {list(SHAPE)} float32, CUDA"
    samples, obs = (t.cuda() for t in data)

    def run() -> torch.Tensor:
        out = window_energy_score(samples, obs)
        torch.cuda.synchronize()
        return out

    run()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(),
        extra_peak_mib=round((torch.cuda.max_memory_allocated() - base) / 2**20, 1),
    )
    want = _energy_reference(data[0][:, :16], data[1][:16])
    np.testing.assert_allclose(out[:16].double().cpu().numpy(), want.numpy(), rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_diffsample_crps_cuda(benchmark, data, reference):
    benchmark.group = f"CRPS ecdf, samples {list(SHAPE)} float32, CUDA"
    samples, obs = (t.cuda() for t in data)

    def run() -> torch.Tensor:
        out = crps(samples, obs)
        torch.cuda.synchronize()
        return out

    run()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(),
        extra_peak_mib=round((torch.cuda.max_memory_allocated() - base) / 2**20, 1),
    )
    np.testing.assert_allclose(out.cpu().numpy(), reference, rtol=1e-4, atol=1e-5)


if __name__ == "__main__":  # quick manual check: python benchmarks/bench_metrics.py
    for layout in ("contiguous", "transposed"):
        s, o = make_data(transposed=layout == "transposed")
        for name, fn in ROUTES.items():
            if name == "properscoring" and layout == "transposed":
                continue
            t0 = time.perf_counter()
            fn(s, o)
            took = time.perf_counter() - t0
            peak = extra_peak(name, transposed=layout == "transposed")
            print(f"{name} ({layout}): {took:.3f} s, {peak}")
