"""Forecasting data: ETT / custom CSV loaders with the Time-Series-Library splits, a built-in
synthetic dataset, and an opt-in download helper.

Dimensions: T time steps (rows) of a split, N variates, F time features, B windows in a batch,
L lookback (history length), H horizon (forecast length).

Protocol (Time-Series-Library, ``Dataset_ETT_hour`` / ``Dataset_ETT_minute`` / ``Dataset_Custom``):

    ETTh (hourly)      train [0, 8640)        val [8640 - L, 11520)     test [11520 - L, 14400)
    ETTm (15-minute)   train [0, 34560)       val [34560 - L, 46080)    test [46080 - L, 57600)
    custom (70/10/20)  train [0, n_tr)        val [n_tr - L, n_tr + n_va)  test [n - n_te - L, n)
                       n_tr = int(0.7 n), n_te = int(0.2 n), n_va = n - n_tr - n_te

Rows past the last ETT border are ignored, as in the reference. The scaler is fitted on the
train rows only; every window is kept: a split of T rows has ``T - L - H + 1`` windows, window
``i`` has history rows ``[i, i + L)`` and target rows ``[i + L, i + L + H)``.

Time features (``timeenc=1``): hour/23 - 0.5, weekday/6 - 0.5 (Monday = 0), (day - 1)/30 - 0.5,
(day_of_year - 1)/365 - 0.5, in that order (freq ``"h"``); freq ``"t"`` puts minute/59 - 0.5 first.

Import from here; the modules are the implementation, one job each:

    registry       the data known by name: ETT names, the synthetic generator's call
    batches        WindowBatch, ForecastSplit (windows, batches), ForecastDataset (and its spec)
    scaler         StandardScaler
    timefeatures   time_features
    reader         CSV reading and parsing, with file / line / column in every error
    splits         the split borders, scaling and cutting the splits, load_csv
    synthetic      synthetic_dataset
    spec           data_spec, check_data_spec, reload_data: what a model was trained on, the
                   check, and getting those data back (never from a path the spec names)
    download       download_ett, the cache folder, finding ETT files
    loader         load_dataset
"""

from __future__ import annotations

# ``X as X``: names the single module had (ETT constants, type aliases), still importable from
# here though not in __all__
from .batches import ForecastDataset, ForecastSplit, WindowBatch
from .batches import IndexLike as IndexLike
from .download import ETT_BASE_URL as ETT_BASE_URL
from .download import ETT_NAMES as ETT_NAMES
from .download import download_ett
from .loader import load_dataset
from .reader import ETT_COLUMNS as ETT_COLUMNS
from .reader import PathLike as PathLike
from .scaler import ArrayOrTensor as ArrayOrTensor
from .scaler import StandardScaler
from .spec import check_data_spec, reload_data
from .splits import Protocol as Protocol
from .splits import load_csv
from .synthetic import synthetic_dataset
from .timefeatures import Freq as Freq
from .timefeatures import time_features

__all__ = [
    "ForecastDataset",
    "ForecastSplit",
    "StandardScaler",
    "WindowBatch",
    "check_data_spec",
    "download_ett",
    "load_csv",
    "load_dataset",
    "reload_data",
    "synthetic_dataset",
    "time_features",
]
