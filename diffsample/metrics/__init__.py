"""Scoring rules for sample forecasts: exact CRPS estimators, quantile CRPS, multivariate
scores (energy, variogram), the closed-form Gaussian CRPS, streaming metrics.

Dimensions: S samples, B conditions, H horizon, N variates, E the scored shape (the shape of
``samples`` without its sample axis, broadcast with ``obs``), P = prod(E) scored elements, one
"lane" per element (the S samples of that element), C lanes per chunk, Q quantile levels,
V interval levels (in ``multivariate.py``: V the event shape, D its size).

Every function is elementwise unless its name says otherwise: the caller reduces. Samples carry
the sample axis first by default (``[S, *E]``, ``sample_dim=0``); any other axis and any memory
layout is accepted at the same cost.

One module per job:

    _checks.py       argument checks of the metrics (sample axis, levels, NaN policy, finiteness)
    _layout.py       samples as P lanes of S, cut into chunks of consecutive lanes (any strides)
    _engine.py       per chunk: gather, sort (numpy in place on CPU, torch.sort for CUDA and
                     autograd), run a kernel; a small thread pool
    _kernels.py      per-chunk kernels (CRPS estimators and their registry, quantiles, means)
                     and the additive float64 sums, pinball losses included
    _sums.py         ForecastMetrics' named float64 sums (overall and per index of a breakdown
                     axis) and the scorer that fills them from one sort of each chunk
    scores.py        crps, crps_sum, sample_quantiles, coverage, interval_width, quantile_crps
    multivariate.py  energy_score, variogram_score: vectors of several elements, chunked
    _vectors.py      their operands as vectors: checks, chunks into reused buffers, NaN weights
    parametric.py    crps_normal, the closed-form CRPS of a Gaussian
    streaming.py     ForecastMetrics

Whole ETTh1 test set, samples [100, 2785, 7, 96] float32 on a 2-core Intel Xeon container
(AVX-512, torch 2.13 CPU): ``crps`` 0.47 s and 28.5 MiB extra peak memory vs properscoring
(numba) 2.42 s and 4.3 GiB; ``torch.sort`` route 4.7 s. See ``docs/crps.md`` and
``benchmarks/bench_metrics.py``.

Precision: half and bfloat16 inputs are computed in float32, float64 stays float64, results
have that computation dtype. Reductions over many elements (``quantile_crps``,
``ForecastMetrics``) accumulate per-chunk sums in float64.
"""

from ._checks import NanPolicy as NanPolicy
from ._kernels import Estimator as Estimator
from .multivariate import MultivariateEstimator as MultivariateEstimator
from .multivariate import energy_score, variogram_score
from .parametric import crps_normal
from .scores import DEFAULT_QUANTILES as DEFAULT_QUANTILES
from .scores import (
    coverage,
    crps,
    crps_sum,
    interval_width,
    quantile_crps,
    sample_quantiles,
)
from .streaming import ForecastMetrics

__all__ = [
    "ForecastMetrics",
    "coverage",
    "crps",
    "crps_normal",
    "crps_sum",
    "energy_score",
    "interval_width",
    "quantile_crps",
    "sample_quantiles",
    "variogram_score",
]
