"""A built-in hourly multivariate series, so that every command runs without a file.

Dimensions: T time steps (rows), N variates, K = 2 shared latent factors, L lookback,
H horizon.

The generator is a pure function of its arguments (one ``numpy.random.Generator`` seeded with
``seed``, its draws taken in a fixed order): changing the order of the draws below changes the
data every test and doc example was written against.
"""

from __future__ import annotations

import numpy as np

from ..._utils import check_int, expected
from .batches import ForecastDataset, check_window_lengths
from .registry import synthetic_call, synthetic_source  # the first still exported from here
from .splits import build_dataset, split_borders

__all__ = [
    "MAX_CELLS",
    "MAX_STEPS",
    "MAX_VARIATES",
    "check_synthetic_sizes",
    "synthetic_call",
    "synthetic_dataset",
    "synthetic_values",
]

# the generator's sizes: far above what a test or a demo needs (6000 x 7), and below what
# would exhaust a machine's memory (it holds about ten float64 arrays of n_steps x n_variates:
# at the cell limit, under a GiB)
MAX_STEPS = 1_000_000
MAX_VARIATES = 10_000
MAX_CELLS = 10_000_000


def check_synthetic_sizes(n_steps: object, n_variates: object) -> tuple[int, int]:
    """``(n_steps, n_variates)`` as ints if both are positive integers within the generator's
    limits (:data:`MAX_STEPS`, :data:`MAX_VARIATES`, :data:`MAX_CELLS`); TypeError /
    ValueError naming the argument otherwise. Checked before anything is allocated."""
    T, N = check_int("n_steps", n_steps), check_int("n_variates", n_variates)
    for name, value, limit in (("n_steps", T, MAX_STEPS), ("n_variates", N, MAX_VARIATES)):
        if value > limit:
            raise ValueError(
                expected(name, f"an integer <= {limit} (the synthetic generator's limit)", value)
            )
    if T * N > MAX_CELLS:
        raise ValueError(
            f"n_steps, n_variates: expected at most {MAX_CELLS} values (the synthetic "
            f"generator's limit), got n_steps * n_variates = {T} * {N} = {T * N}"
        )
    return T, N


def synthetic_dataset(
    *,
    n_steps: int = 6000,
    n_variates: int = 7,
    lookback: int = 96,
    horizon: int = 96,
    seed: int = 0,
) -> ForecastDataset:
    """A built-in hourly multivariate series that needs no file (70/10/20 split, like a custom CSV).

    Per variate n (hour-of-day h, weekday w, step t, all from the timestamps, which start at
    2020-01-01 00:00:00)::

        z_n(t) = daily_n(h) + weekly_n(w, t) + trend_n(t) + sum_k loading_nk f_k(t)
                 + sigma_n(h, t) e_n(t) + gamma_n z_{n-1}(t - lag_n)          (n >= 1)
        value_n(t) = level_n + scale_n z_n(t)

    - ``f_k``: K = 2 shared latent AR(1) factors (coefficients 0.98 and 0.85, unit variance):
      cross-variate coupling.
    - ``gamma_n z_{n-1}(t - lag_n)``: lagged influence of the previous variate (1 to 6 hours).
    - ``sigma_n``: heteroscedastic, about 3x larger mid-afternoon than at night (9x the variance)
      and growing with the first factor's level.
    - ``e_n``: skewed shocks, a standardised mix of Gaussian (20% of the variance) and centred
      exponential (80%) draws, skewness about 1.4.
    - daily: two harmonics; weekly: a weekend dip plus a weekly harmonic; trend: a slow drift
      plus a slow oscillation over the whole series.

    Args:
        n_steps: number of hourly rows T (the default 6000 is about 8 months), at most
            1000000.
        n_variates: N, at most 10000, and n_steps * n_variates at most 10000000 (the sizes
            are checked before anything is allocated).
        lookback: L.
        horizon: H.
        seed: a non-negative integer seeding a ``numpy.random.Generator``; the data are a pure
            function of the arguments.

    Returns:
        ForecastDataset (protocol ``"custom"``, freq ``"h"``), columns ``var0 ... var{N-1}``,
        splits of 0.7 T, 0.1 T + L and 0.2 T + L rows.

    Raises:
        TypeError: an argument is not an integer (``2.0`` and ``True`` included).
        ValueError: an argument is out of range (the size limits included), or ``n_steps``
            too small for the window lengths (the message says how many rows would do).
    """
    lookback, horizon = check_window_lengths(lookback, horizon)
    n_steps, n_variates = check_synthetic_sizes(n_steps, n_variates)
    seed = check_int("seed", seed, minimum=0)
    source = synthetic_source(n_steps, n_variates, seed)
    borders = split_borders(n_steps, "custom", lookback, horizon, source)
    dates, raw = synthetic_values(n_steps, n_variates, seed)
    return build_dataset(
        dates,
        raw,
        columns=tuple(f"var{n}" for n in range(n_variates)),
        borders=borders,
        lookback=lookback,
        horizon=horizon,
        freq="h",
        protocol="custom",
        source=source,
        digest=False,  # a pure function of its source; no file to edit
    )


def synthetic_values(T: int, N: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps ``[T]`` and raw values ``[T, N]`` float64 of the synthetic series (sizes
    checked against the limits first, see ``check_synthetic_sizes``)."""
    T, N = check_synthetic_sizes(T, N)
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    dates = np.datetime64("2020-01-01T00:00:00", "s") + np.arange(T) * np.timedelta64(1, "h")  # [T]
    day = dates.astype("datetime64[D]")
    hour = (dates.astype("datetime64[h]") - day).astype(np.int64).astype(np.float64)  # [T]
    weekday = (day.astype(np.int64) + 3) % 7  # [T]
    t = np.arange(T, dtype=np.float64)  # [T]

    # shared latent AR(1) factors with unit stationary variance
    phi = np.array([0.98, 0.85])  # [K]
    innov = rng.standard_normal((T, 2)) * np.sqrt(1.0 - phi**2)  # [T, K]
    f = np.empty((T, 2))
    f[0] = rng.standard_normal(2)
    for i in range(1, T):
        f[i] = phi * f[i - 1] + innov[i]

    def col(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, N)[None, :]  # [1, N]

    ang = 2.0 * np.pi * hour[:, None] / 24.0  # [T, 1]
    phase = 0.4 * rng.standard_normal(N)[None, :] - 0.5 * np.pi  # [1, N]
    daily = col(0.8, 1.5) * np.sin(ang + phase) + col(0.1, 0.4) * np.sin(2.0 * ang + 2.0 * phase)
    weekly = -col(0.3, 0.7) * (weekday[:, None] >= 5) + col(0.1, 0.3) * np.sin(
        2.0 * np.pi * t[:, None] / 168.0 + col(0.0, 2.0 * np.pi)
    )
    u = t[:, None] / max(T - 1, 1)  # [T, 1]
    trend = rng.normal(0.0, 0.8, N)[None, :] * u + col(0.2, 0.5) * np.sin(
        2.0 * np.pi * u * 1.5 + col(0.0, 2.0 * np.pi)
    )
    loadings = rng.normal(0.0, 0.6, (N, 2)) + np.array([0.6, 0.0])  # [N, K]
    latent = f @ loadings.T  # [T, N]

    daytime = 0.5 * (1.0 - np.cos(2.0 * np.pi * (hour[:, None] - 3.0) / 24.0))  # [T, 1] peak 15:00
    sigma = col(0.3, 0.5) * (0.5 + daytime) * np.exp(0.2 * f[:, :1])  # [T, N]
    k = 1.0
    shocks = np.sqrt(0.2) * rng.standard_normal((T, N)) + np.sqrt(0.8) * (
        rng.gamma(k, 1.0, (T, N)) - k
    ) / np.sqrt(k)  # [T, N]

    base = daily + weekly + trend + latent + sigma * shocks  # [T, N]
    gamma = rng.uniform(0.3, 0.6, N)
    lags = rng.integers(1, 7, N)
    z = base.copy()
    for n in range(1, N):  # loop over variates; each step is vectorised over time
        prev = np.concatenate([np.full(lags[n], z[0, n - 1]), z[: T - lags[n], n - 1]])  # [T]
        z[:, n] += gamma[n] * prev
    level, scale = col(5.0, 50.0), col(0.5, 5.0)
    return dates, level + scale * z  # [T, N]
