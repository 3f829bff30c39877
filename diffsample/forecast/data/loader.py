"""``load_dataset``: one entry point over the synthetic data, a CSV path and an ETT name.

Dimensions: L lookback, H horizon (passed through to the loaders).
"""

from __future__ import annotations

from ..._utils import check_bool, check_choice, check_path
from .batches import ForecastDataset
from .download import locate_ett
from .reader import PathLike
from .registry import ETT_NAMES, synthetic_call
from .splits import Protocol, load_csv
from .synthetic import synthetic_dataset
from .timefeatures import Freq

__all__ = ["load_dataset"]


def load_dataset(
    source: PathLike | None = None,
    *,
    lookback: int = 96,
    horizon: int = 96,
    protocol: Protocol = "auto",
    freq: Freq | None = None,
    download: bool = False,
) -> ForecastDataset:
    """One entry point: the synthetic default, a CSV path, or an ETT name.

    Args:
        source: ``None`` or ``"synthetic"`` -> ``synthetic_dataset(lookback=..., horizon=...)``;
            ``"synthetic(n_steps=T, n_variates=N, seed=s)"`` (a synthetic dataset's ``source``)
            -> ``synthetic_dataset`` with those arguments; a path to an existing CSV ->
            ``load_csv``; an ETT name (``"ETTh1"``, ``"ETTm2"``, ...) -> that file from
            ``$DIFFSAMPLE_ETT_DIR`` or the download cache.
        lookback: L.
        horizon: H.
        protocol: passed to ``load_csv`` (checked, unused, for the synthetic data).
        freq: passed to ``load_csv`` (checked, unused, for the synthetic data).
        download: for an ETT name not found locally, fetch it with ``download_ett`` (off by
            default: nothing touches the network unless asked).

    Returns:
        ForecastDataset with splits values ``[T, N]`` and marks ``[T, F]``.

    Raises:
        FileNotFoundError: neither a file nor a locally available ETT name (the message says
            where it looked and how to fetch it).
        TypeError: ``source`` is not None, a str or a path; ``download`` not a bool; see
            ``load_csv`` and ``synthetic_dataset`` for the rest.
        ValueError: see ``load_csv`` and ``synthetic_dataset``.
    """
    download = check_bool("download", download)
    check_choice("protocol", protocol, Protocol)
    if freq is not None:
        check_choice("freq", freq, Freq)
    if source is None or (isinstance(source, str) and source == "synthetic"):
        return synthetic_dataset(lookback=lookback, horizon=horizon)
    call = synthetic_call(source) if isinstance(source, str) else None
    if call is not None:
        return synthetic_dataset(**call, lookback=lookback, horizon=horizon)
    p = check_path("source", source)
    if p.is_file():
        return load_csv(p, lookback=lookback, horizon=horizon, protocol=protocol, freq=freq)
    stem = p.name.removesuffix(".csv")
    # a bare name only: "data/ETTh1.csv" that is not a file is a wrong path, not a name
    if isinstance(source, str) and stem in ETT_NAMES and str(p.parent) == ".":
        found = locate_ett(stem, download=download)
        return load_csv(found, lookback=lookback, horizon=horizon, protocol=protocol, freq=freq)
    raise FileNotFoundError(
        f"source: {str(source)!r} is not a file; expected None (synthetic data), a CSV path, "
        f"or one of {', '.join(ETT_NAMES)}"
    )
