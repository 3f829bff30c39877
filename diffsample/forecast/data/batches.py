"""What the loaders return: a dataset of three splits, each split's rows, batches of windows.

Dimensions: T rows of a split, N variates, F time features, B windows in a batch,
L lookback (history length), H horizon (forecast length).

A split of T rows holds ``T - L - H + 1`` windows; window ``i`` has history rows ``[i, i + L)``
and target rows ``[i + L, i + L + H)``. Windows are gathered from the contiguous rows on demand
(one indexing op per batch), never stored, so a split costs T rows of memory, not B * (L + H).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch

from ..._utils import check_bool, check_int, check_tensor, expected
from .registry import ett_name_of
from .scaler import StandardScaler

__all__ = [
    "ForecastDataset",
    "ForecastSplit",
    "IndexLike",
    "WindowBatch",
    "check_window_lengths",
]

IndexLike: TypeAlias = int | Sequence[int] | np.ndarray | torch.Tensor


def check_window_lengths(lookback: object, horizon: object) -> tuple[int, int]:
    """``(lookback, horizon)`` as ints if both are positive integers (TypeError / ValueError)."""
    return check_int("lookback", lookback), check_int("horizon", horizon)


def _check_finite_rows(name: str, x: torch.Tensor, start: object) -> None:
    """ValueError naming the row (and the source row, ``start`` + row) and the column of the
    first NaN or infinite value of ``x`` ``[T, C]``: a window holding one trains or scores as
    NaN, far from where the value came from."""
    if not x.is_floating_point():
        return
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        # numpy on the host: torch's thread pool costs milliseconds on a check this small
        bad_np = ~np.isfinite(x.detach().numpy())  # [T, C]
        if not bad_np.any():
            return
        i, j = (int(k) for k in np.argwhere(bad_np)[0])
        n_bad = int(bad_np.sum())
    else:
        bad = ~torch.isfinite(x)  # [T, C]; one sync on a GPU, once per split
        if not bool(bad.any()):
            return
        i, j = (int(k) for k in torch.nonzero(bad)[0])
        n_bad = int(bad.sum())
    source_row = f" (source row {int(start) + i})" if isinstance(start, (int, np.integer)) else ""
    raise ValueError(
        f"{name}: expected finite values, got {float(x[i, j])} at row {i}{source_row}, column "
        f"{j} ({n_bad} NaN/inf value(s) in all)"
    )


@dataclass(frozen=True, eq=False)
class WindowBatch:
    """A batch of forecasting windows (Time-Series-Library layout).

    Attributes:
        x: ``[B, L, N]`` float32 history (scaled).
        y: ``[B, H, N]`` float32 target, the H rows right after the history (scaled).
        x_mark: ``[B, L, F]`` float32 time features of the history rows.
        y_mark: ``[B, H, F]`` float32 time features of the target rows.
        index: ``[B]`` int64 window indices within the split (stable ids, e.g. for keyed noise).
    """

    x: torch.Tensor
    y: torch.Tensor
    x_mark: torch.Tensor
    y_mark: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True, eq=False)
class ForecastSplit:
    """One split (train, val or test) as contiguous scaled rows plus their time features.

    The val and test splits start L rows before their border, as in the reference, so their
    first window's history reaches back into the previous split.

    Attributes:
        name: ``"train"``, ``"val"`` or ``"test"``.
        values: ``[T, N]`` float32 scaled values.
        marks: ``[T, F]`` float32 time features.
        dates: ``[T]`` numpy ``datetime64[s]`` timestamps (read-only).
        start: index of the split's first row among the source's data rows (0 = first row
            after the header); the split covers source rows ``[start, start + T)``.
        lookback: L.
        horizon: H.
    """

    name: str
    values: torch.Tensor
    marks: torch.Tensor
    dates: np.ndarray
    start: int
    lookback: int
    horizon: int

    def __post_init__(self) -> None:
        v = check_tensor("ForecastSplit.values", self.values, floating=True)
        m = check_tensor("ForecastSplit.marks", self.marks)
        if v.ndim != 2:
            raise ValueError(expected("ForecastSplit.values", "a float tensor [T, N]", v))
        if m.ndim != 2 or m.shape[0] != v.shape[0]:
            raise ValueError(
                expected(
                    "ForecastSplit.marks",
                    f"a tensor [T, F] with T = {v.shape[0]} rows like values",
                    m,
                )
            )
        for field, x in (("values", v), ("marks", m)):
            _check_finite_rows(f"ForecastSplit {self.name!r}: {field}", x, self.start)
        lookback, horizon = check_window_lengths(self.lookback, self.horizon)
        object.__setattr__(self, "lookback", lookback)  # a numpy integer becomes an int
        object.__setattr__(self, "horizon", horizon)
        if v.shape[0] < lookback + horizon:
            raise ValueError(
                f"ForecastSplit {self.name!r}: {v.shape[0]} rows hold no window of lookback + "
                f"horizon = {lookback} + {horizon} rows"
            )

    def __len__(self) -> int:
        """Number of windows, ``T - L - H + 1``."""
        return self.values.shape[0] - self.lookback - self.horizon + 1

    @property
    def n_variates(self) -> int:
        """N."""
        return self.values.shape[1]

    def to(self, device: str | torch.device) -> ForecastSplit:
        """The same split with ``values`` and ``marks`` on ``device`` (once, before training)."""
        return dataclasses.replace(self, values=self.values.to(device), marks=self.marks.to(device))

    def windows(self, index: IndexLike) -> WindowBatch:
        """Windows for integer window indices, by one gather (no loop over windows).

        Args:
            index: an int or ``[B]`` integers in ``[0, len(self))``; an int gives B = 1.

        Returns:
            WindowBatch with x ``[B, L, N]``, y ``[B, H, N]``, x_mark ``[B, L, F]``,
            y_mark ``[B, H, F]`` and index ``[B]``.

        Raises:
            TypeError: the indices are not integers.
            ValueError: the indices are not an int or a 1-D sequence.
            IndexError: an index lies outside ``[0, len(self))``.
        """
        return self._gather(self._check_index(index))

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[WindowBatch]:
        """Iterate over all windows in batches; the last, partial batch is kept.

        Args:
            batch_size: windows per batch (positive int).
            shuffle: visit the windows in a random order (``torch.randperm``) instead of 0, 1, ...
            generator: CPU generator for the shuffle; pass one for a reproducible order.

        Yields:
            WindowBatch with B = batch_size (B <= batch_size for the last batch).

        Raises:
            TypeError: ``batch_size`` is not an integer or ``shuffle`` not a bool.
            ValueError: ``batch_size < 1``.
        """
        batch_size = check_int("batch_size", batch_size)
        shuffle = check_bool("shuffle", shuffle)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)  # [len]
        order = order.to(self.values.device)
        for lo in range(0, n, batch_size):
            yield self._gather(order[lo : lo + batch_size])  # indices valid by construction

    def _gather(self, idx: torch.Tensor) -> WindowBatch:
        """``windows`` for checked int64 indices ``[B]`` on the data's device (no host sync)."""
        L, H, dev = self.lookback, self.horizon, self.values.device
        hist = idx[:, None] + torch.arange(L, device=dev)  # [B, L]
        targ = idx[:, None] + (L + torch.arange(H, device=dev))  # [B, H]
        return WindowBatch(
            x=self.values[hist],  # [B, L, N]
            y=self.values[targ],  # [B, H, N]
            x_mark=self.marks[hist],  # [B, L, F]
            y_mark=self.marks[targ],  # [B, H, F]
            index=idx,
        )

    def _check_index(self, index: IndexLike) -> torch.Tensor:
        """``index`` as int64 ``[B]`` on the data's device, every entry a valid window."""
        want = "an int or integer window indices [B]"
        if isinstance(index, (bool, np.bool_)):  # bool is an int to Python, never an index here
            raise TypeError(expected("index", want, index))
        if isinstance(index, torch.Tensor):
            idx = index
        else:
            try:
                idx = torch.as_tensor(np.asarray(index))
            except (TypeError, ValueError) as err:
                raise TypeError(expected("index", want, index)) from err
        if idx.numel() == 0:
            idx = idx.long()  # [] reads as float64; an empty batch is still a valid request
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise TypeError(expected("index", want, idx))
        if idx.ndim > 1:
            raise ValueError(expected("index", "an int or a 1-D sequence [B]", idx))
        idx = idx.reshape(-1).to(device=self.values.device, dtype=torch.long)  # [B]
        out = (idx < 0) | (idx >= len(self))  # [B]
        if idx.numel() and bool(out.any()):
            bad = idx[out][0].item()
            raise IndexError(
                f"{self.name} split: window index {bad} is out of range; expected 0 <= index < "
                f"{len(self)} (= {self.values.shape[0]} rows - lookback {self.lookback} - horizon "
                f"{self.horizon} + 1)"
            )
        return idx


@dataclass(frozen=True, eq=False)
class ForecastDataset:
    """Train / val / test splits of one source, with the scaler that maps back to its units.

    Attributes:
        train: rows ``[0, border_1)``.
        val: rows ``[border_1 - L, border_2)``.
        test: rows ``[border_2 - L, border_3)``.
        scaler: fitted on the train rows; ``scaler.inverse_transform`` maps forecasts ``[..., N]``
            back to original units.
        columns: the N variate names, in file order.
        time_features: the F time-feature names, in ``marks`` order.
        lookback: L.
        horizon: H.
        freq: ``"h"`` or ``"t"``, the time-feature set.
        protocol: ``"etth"``, ``"ettm"`` or ``"custom"`` (the synthetic data use ``"custom"``).
        source: the CSV's absolute path, or the synthetic generator's call
            (``"synthetic(n_steps=6000, n_variates=7, seed=0)"``); ``load_dataset(source)``
            reloads either.
        digest: sha256 (hex) of the raw float64 values and timestamps of the rows the splits
            use (:func:`~diffsample.forecast.data.splits.values_digest`), for data read from a
            file; None for the synthetic data (a pure function of its source) or a dataset
            built by hand. The data spec records it, and ``check_data_spec`` refuses data whose
            values changed.
    """

    train: ForecastSplit
    val: ForecastSplit
    test: ForecastSplit
    scaler: StandardScaler
    columns: tuple[str, ...]
    time_features: tuple[str, ...]
    lookback: int
    horizon: int
    freq: str
    protocol: str
    source: str
    digest: str | None = None

    @property
    def n_variates(self) -> int:
        """N."""
        return len(self.columns)

    @property
    def n_marks(self) -> int:
        """F."""
        return len(self.time_features)

    @property
    def borders(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """``((lo, hi), ...)`` of train, val and test: the source rows each split covers."""
        lo_hi = [(s.start, s.start + s.values.shape[0]) for s in self.splits()]
        return lo_hi[0], lo_hi[1], lo_hi[2]

    def splits(self) -> tuple[ForecastSplit, ForecastSplit, ForecastSplit]:
        """``(train, val, test)``."""
        return self.train, self.val, self.test

    def spec(self) -> dict[str, Any]:
        """What the data are, as JSON: the record ``train`` stores in a model and
        ``check_data_spec`` compares (``data_spec`` in :mod:`~diffsample.forecast.data.spec`
        returns the same, after checking its argument).

        Returns:
            ``{"source", "ett", "protocol", "freq", "lookback", "horizon", "borders",
            "columns", "time_features", "scaler_mean", "scaler_std", "digest"}`` of plain
            lists, str, int and float: ``borders`` is ``[[lo, hi]] * 3`` of train, val and test
            among the source's rows, ``ett`` the ETT name (``"ETTh1"``, ...) of an ETT file or
            None, the scaler statistics are ``[N]`` lists of floats, ``digest`` is
            :attr:`digest`.
        """
        return {
            "source": self.source,
            "ett": ett_name_of(self.source, self.protocol),
            "protocol": self.protocol,
            "freq": self.freq,
            "lookback": self.lookback,
            "horizon": self.horizon,
            "borders": [list(b) for b in self.borders],
            "columns": list(self.columns),
            "time_features": list(self.time_features),
            "scaler_mean": [float(v) for v in self.scaler.mean],
            "scaler_std": [float(v) for v in self.scaler.std],
            "digest": self.digest,
        }
