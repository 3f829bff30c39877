"""Per-variate standardisation fitted on the train rows.

Dimensions: T rows, N variates; ``...`` any leading dimensions (e.g. S samples, B windows,
H horizon of a forecast ``[S, B, H, N]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, overload

import numpy as np
import torch

from ..._utils import expected

__all__ = ["StandardScaler"]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def _float64_vector(name: str, value: object) -> np.ndarray:
    """``value`` as a fresh float64 numpy array (TypeError if it holds no numbers)."""
    try:
        return np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(expected(name, "numbers [N]", value)) from err


@dataclass(frozen=True, eq=False)
class StandardScaler:
    """Per-variate standardisation ``(v - mean) / std`` fitted on train rows (population std).

    A variate whose train rows are constant gets ``std = 1`` (as scikit-learn does), so it is
    centred but not divided by zero.

    Attributes:
        mean: ``[N]`` float64 (read-only).
        std: ``[N]`` float64 (read-only), the scale actually divided by.
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean = _float64_vector("StandardScaler.mean", self.mean)  # [N]
        std = _float64_vector("StandardScaler.std", self.std)  # [N]
        if mean.ndim != 1 or std.shape != mean.shape:
            raise ValueError(
                f"StandardScaler: expected mean and std of shape [N], got {mean.shape} and "
                f"{std.shape}"
            )
        for name, v, positive in (("mean", mean, False), ("std", std, True)):
            bad = ~np.isfinite(v) | ((v <= 0) if positive else False)  # [N]
            if bad.any():
                k = int(np.argmax(bad))
                raise ValueError(
                    f"StandardScaler.{name}: expected finite values{' > 0' if positive else ''}, "
                    f"got {float(v[k])!r} for variate {k}"
                )
        # read-only copies: a frozen scaler whose arrays could be edited in place would not be
        mean.setflags(write=False)
        std.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def fit(cls, values: np.ndarray) -> StandardScaler:
        """Fit on rows: mean and population std (ddof = 0) per variate, in float64.

        Args:
            values: ``[T, N]`` with T >= 1, anything ``numpy.asarray`` reads as numbers.

        Returns:
            StandardScaler with ``mean`` and ``std`` of shape ``[N]``.
        """
        v = _float64_vector("StandardScaler.fit(values)", values)  # [T, N]
        if v.ndim != 2 or v.shape[0] < 1:
            raise ValueError(
                f"StandardScaler.fit(values): expected values [T, N] with T >= 1, got shape "
                f"{v.shape}"
            )
        std = v.std(axis=0)  # [N]
        return cls(mean=v.mean(axis=0), std=np.where(std > 0, std, 1.0))

    @property
    def n_variates(self) -> int:
        """N."""
        return self.mean.shape[0]

    def transform(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Original units -> scaled.

        Args:
            values: ``[..., N]`` tensor (any device) or numpy array.

        Returns:
            ``[..., N]`` of the same kind; a floating tensor keeps its dtype and device.
        """
        mean, std = self._params_like(values, "StandardScaler.transform")
        return (values - mean) / std

    def inverse_transform(self, values: ArrayOrTensor) -> ArrayOrTensor:
        """Scaled -> original units, e.g. forecast samples ``[S, B, H, N]`` back to file units.

        Args:
            values: ``[..., N]`` tensor (any device) or numpy array.

        Returns:
            ``[..., N]`` of the same kind; a floating tensor keeps its dtype and device.
        """
        mean, std = self._params_like(values, "StandardScaler.inverse_transform")
        return values * std + mean

    @overload
    def _params_like(
        self, values: torch.Tensor, name: str
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def _params_like(self, values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]: ...
    def _params_like(
        self, values: object, name: str
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[np.ndarray, np.ndarray]:
        """``mean`` and ``std`` ``[N]`` as the kind, dtype and device of ``values [..., N]``."""
        if not isinstance(values, (torch.Tensor, np.ndarray)):
            raise TypeError(expected(name, "a tensor or array [..., N]", values))
        shape = tuple(values.shape)
        if len(shape) == 0 or shape[-1] != self.n_variates:
            raise ValueError(
                f"{name}: expected values [..., N] with N = {self.n_variates} variates in the "
                f"last dimension, got shape {shape}"
            )
        if isinstance(values, np.ndarray):
            return self.mean, self.std
        # an integer tensor would truncate the result; it gets the default float dtype instead
        dtype = values.dtype if values.is_floating_point() else torch.get_default_dtype()
        return (
            torch.from_numpy(self.mean.copy()).to(dtype=dtype, device=values.device),  # [N]
            torch.from_numpy(self.std.copy()).to(dtype=dtype, device=values.device),  # [N]
        )
