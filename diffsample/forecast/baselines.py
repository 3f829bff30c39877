"""What the diffusion head must beat: the same backbone with noise that ignores the window.

Dimensions: S samples, B windows, H horizon, N variates, R residual windows.

    sigma = residual_std(model, split)                    [N]  std of y - y_det on a split
    samples = gaussian_samples(point, sigma, S)           [S, B, H, N]  y ~ N(y_det, sigma_n^2)
    gaussian_crps(point, sigma, y)                        [B, H, N]  its exact CRPS (crps_normal)
    r = residuals(model, data.train)                      [R, H, N]  y - y_det of each window
    samples = bootstrap_samples(point, r, S)              [S, B, H, N]  y = y_det + r_w, w random
    residual_baselines(model, data)                       name -> forecaster of each baseline

With ``sigma`` fitted on the training windows (``model.res_std``, what stage 2 normalises by) or
on held-out ones (``residual_std(model, data.val)``) the Gaussian gives the two baselines that
every result of the diffusion head is reported beside; the bootstrap of whole training
residual windows keeps their heavy tails and their correlation over steps and variates, and
is the stronger one on ETTh1 (see ``docs/results.md``).

:func:`residual_baselines` gives the three as forecasters (:class:`GaussianBaseline`,
:class:`BootstrapBaseline`): objects with ``forecast(history, n_samples, ...) -> Forecast`` that
:func:`~diffsample.forecast.evaluate_split` scores like the diffusion head, in the same run and
with the same estimators. Their draws are keyed by window id and sample index, as the head's
noise is, so a window's samples do not depend on the batch it is scored in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from .._utils import check_int, check_tensor, expected
from ..metrics import crps_normal
from ..noise import keyed_normal, mix, row_keys
from .data import ForecastDataset, ForecastSplit
from .forecast import Forecast
from .model import ITransformerDiffusion
from .model_checks import check_history_ids

__all__ = [
    "BootstrapBaseline",
    "GaussianBaseline",
    "bootstrap_samples",
    "gaussian_crps",
    "gaussian_samples",
    "residual_baselines",
    "residual_stats",
    "residual_std",
    "residuals",
]


def _check_sigma(sigma: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    check_tensor("sigma", sigma, floating=True)
    try:
        torch.broadcast_shapes(sigma.shape, point.shape)
    except RuntimeError:
        raise ValueError(
            expected("sigma", f"a tensor broadcastable to the point's {tuple(point.shape)}", sigma)
        ) from None
    if not bool((sigma > 0).all()) or not bool(torch.isfinite(sigma).all()):
        raise ValueError(expected("sigma", "positive finite values", sigma))
    return sigma.to(point.dtype)


def gaussian_samples(
    point: torch.Tensor,
    sigma: torch.Tensor,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Samples of the Gaussian-residual baseline, y ~ N(point, sigma^2) elementwise.

    Args:
        point: ``[B, H, N]`` the backbone's point forecast.
        sigma: ``[N]`` (per variate) or anything broadcastable to ``point`` (e.g. ``[H, N]``).
        n_samples: S.
        generator: draws the noise (on ``point``'s device).

    Returns:
        ``[S, B, H, N]``, contiguous, ``point``'s dtype.
    """
    check_tensor("point", point, floating=True)
    n_samples = check_int("n_samples", n_samples)
    sigma = _check_sigma(sigma, point)
    noise = torch.randn(
        (n_samples, *point.shape), generator=generator, device=point.device, dtype=point.dtype
    )  # [S, B, H, N]
    return (point + sigma * noise).contiguous()


def gaussian_crps(point: torch.Tensor, sigma: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """The exact CRPS of the baseline's law N(point, sigma^2) at ``obs``: the metrics'
    closed form :func:`diffsample.metrics.crps_normal` (Gneiting & Raftery, 2007)::

        CRPS = sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)),   z = (obs - point) / sigma

    with the baseline's checks of ``sigma`` (a floating tensor of positive finite values that
    broadcasts to ``point``, cast to ``point``'s dtype as :func:`gaussian_samples` does).

    Args:
        point: ``[B, H, N]``.
        sigma: broadcastable to ``point`` (``[N]`` per variate).
        obs: ``[B, H, N]``.

    Returns:
        ``[B, H, N]`` in the units of ``obs``.
    """
    check_tensor("point", point, floating=True)
    check_tensor("obs", obs, floating=True)
    return crps_normal(point, _check_sigma(sigma, point), obs)


@torch.no_grad()
def residual_stats(
    model: ITransformerDiffusion, split: ForecastSplit, *, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-variate mean and std ``[N]`` of y - y_det over every window of ``split`` (float64
    sums, float32 results): on the training split, what training stores as ``model.res_mean``
    and ``model.res_std``."""
    batch_size, device = _check_model_split(model, split, batch_size)
    N = model.config.n_variates
    s1 = torch.zeros(N, dtype=torch.float64, device=device)
    s2 = torch.zeros(N, dtype=torch.float64, device=device)
    n = 0
    with _eval_mode(model):
        for batch in split.to(device).batches(batch_size):
            y_det, _ = model(batch.x, batch.x_mark)
            r = (batch.y - y_det).double().reshape(-1, N)  # [B * H, N]
            s1 += r.sum(0)
            s2 += (r * r).sum(0)
            n += r.shape[0]
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def residual_std(
    model: ITransformerDiffusion, split: ForecastSplit, *, batch_size: int = 256
) -> torch.Tensor:
    """Per-variate std ``[N]`` of y - y_det over every window of ``split`` (float64 sums).

    On the training split this is what training stores as ``model.res_std``; on the
    validation split it is the held-out ("val-fitted") sigma of the baseline.
    """
    return residual_stats(model, split, batch_size=batch_size)[1]


@torch.no_grad()
def residuals(
    model: ITransformerDiffusion, split: ForecastSplit, *, batch_size: int = 256
) -> torch.Tensor:
    """The backbone's errors y - y_det ``[W, H, N]`` on every window of ``split`` (in window
    order, on the model's device): the pool of :func:`bootstrap_samples`."""
    batch_size, device = _check_model_split(model, split, batch_size)
    with _eval_mode(model):
        out = [b.y - model(b.x, b.x_mark)[0] for b in split.to(device).batches(batch_size)]
    return torch.cat(out)  # [W, H, N]


def _check_model_split(
    model: object, split: object, batch_size: object
) -> tuple[int, torch.device]:
    """The checked batch size and the model's device, for a model scored on a split."""
    if not isinstance(model, ITransformerDiffusion):
        raise TypeError(expected("model", "an ITransformerDiffusion", model))
    if not isinstance(split, ForecastSplit):
        raise TypeError(expected("split", "a ForecastSplit", split))
    return check_int("batch_size", batch_size), next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) inside; after, each submodule's own mode again
    (a trainer that froze its backbone in eval mode keeps it so)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def bootstrap_samples(
    point: torch.Tensor,
    residuals: torch.Tensor,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Samples of the residual-bootstrap baseline: ``point + residuals[w]``, with a residual
    window w drawn uniformly (with replacement) for every sample of every window.

    Args:
        point: ``[B, H, N]`` the backbone's point forecast.
        residuals: ``[R, H, N]`` a pool of errors y - y_det (:func:`residuals` of the
            training split), R >= 1.
        n_samples: S.
        generator: draws the indices (a CPU generator).

    Returns:
        ``[S, B, H, N]``, contiguous, ``point``'s dtype and device.
    """
    check_tensor("point", point, floating=True)
    check_tensor("residuals", residuals, floating=True)
    n_samples = check_int("n_samples", n_samples)
    if point.ndim != 3 or residuals.ndim != 3 or residuals.shape[1:] != point.shape[1:]:
        raise ValueError(
            f"point, residuals: expected [B, H, N] and [R, H, N], got {tuple(point.shape)} and "
            f"{tuple(residuals.shape)}"
        )
    if residuals.shape[0] == 0:
        raise ValueError(expected("residuals", "at least one residual window", residuals))
    w = torch.randint(residuals.shape[0], (n_samples, point.shape[0]), generator=generator)
    pool = residuals.to(point.device, point.dtype)
    return (point + pool[w.to(point.device)]).contiguous()  # [S, B, H, N]


class _Baseline:
    """The backbone's point forecast plus residuals drawn by a subclass, keyed per row."""

    name: str
    _stream: int  # a seed word of its own, so no baseline shares the head's noise

    def __init__(self, model: ITransformerDiffusion, name: str) -> None:
        if not isinstance(model, ITransformerDiffusion):
            raise TypeError(expected("model", "an ITransformerDiffusion", model))
        self.model, self.name = model, name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forecast(
        self,
        history: torch.Tensor,
        n_samples: int,
        *,
        time_features: torch.Tensor | None = None,
        window_ids: torch.Tensor | Sequence[int] | None = None,
        seed: int = 0,
        progress: bool | None = None,
    ) -> Forecast:
        """``n_samples`` samples per window of history ``[B, L, N]``: a
        :class:`~diffsample.forecast.forecast.Forecast` (samples ``[S, B, H, N]``, the
        backbone's point ``[B, H, N]``), scaled units. ``window_ids [B]`` and ``seed`` key the
        draws (default ids 0..B-1); ``progress`` is accepted for the protocol and unused."""
        S = check_int("n_samples", n_samples)
        with _eval_mode(self.model):
            point = self.model(history, time_features)[0].contiguous()  # [B, H, N]
        B = point.shape[0]
        check_history_ids(window_ids, B)  # the model's own check of the ids, its words
        ids = torch.arange(B) if window_ids is None else torch.as_tensor(window_ids)
        ids = ids.to(point.device)
        sample = torch.arange(S, device=point.device).repeat_interleave(B)  # [S * B]
        keys = row_keys((check_int("seed", seed, minimum=0), self._stream), ids.repeat(S), sample)
        r = self._draw(keys, point)  # [S * B, H, N]
        samples = (point + r.reshape(S, *point.shape)).contiguous()  # [S, B, H, N]
        return self.model.wrap(samples, point, window_ids=window_ids)

    def _draw(self, keys: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GaussianBaseline(_Baseline):
    """y ~ N(y_det, sigma^2) elementwise on the model's backbone, as a forecaster.

    Args:
        model: a trained forecaster (its backbone gives y_det).
        sigma: ``[N]`` per variate (or broadcastable to ``[H, N]``), positive.
        name: how results name it.
    """

    _stream = 1

    def __init__(
        self, model: ITransformerDiffusion, sigma: torch.Tensor, *, name: str = "gaussian"
    ) -> None:
        super().__init__(model, name)
        c = model.config
        self.sigma = _check_sigma(sigma, torch.empty(c.horizon, c.n_variates))

    def _draw(self, keys: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        z = keyed_normal(keys, -1, point.shape[1:], dtype=point.dtype)  # [S * B, H, N]
        return z * self.sigma.to(point.device, point.dtype)


class BootstrapBaseline(_Baseline):
    """y = y_det + r_w on the model's backbone, as a forecaster: each sample adds a whole
    residual window w of the pool, drawn uniformly (with replacement).

    Args:
        model: a trained forecaster.
        residuals: ``[R, H, N]`` the pool (:func:`residuals` of the training split).
        name: how results name it.
    """

    _stream = 2

    def __init__(
        self, model: ITransformerDiffusion, residuals: torch.Tensor, *, name: str = "bootstrap"
    ) -> None:
        super().__init__(model, name)
        c = model.config
        check_tensor("residuals", residuals, floating=True)
        if residuals.ndim != 3 or residuals.shape[1:] != (c.horizon, c.n_variates):
            raise ValueError(
                expected("residuals", f"[R, {c.horizon}, {c.n_variates}] (R, H, N)", residuals)
            )
        if residuals.shape[0] == 0:
            raise ValueError(expected("residuals", "at least one residual window", residuals))
        self.residuals = residuals

    def _draw(self, keys: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        pool = self.residuals.to(point.device, point.dtype)  # [R, H, N]
        return pool[mix(keys ^ 0x5BD1E995) % pool.shape[0]]  # a uniform 32-bit word mod R


def residual_baselines(
    model: ITransformerDiffusion, data: ForecastDataset, *, batch_size: int = 256
) -> dict[str, GaussianBaseline | BootstrapBaseline]:
    """The three baselines every result of the diffusion head is reported beside, as
    forecasters on the same backbone: ``gaussian_train_sigma`` (sigma fitted on the training
    windows, ``model.res_std``), ``gaussian_val_sigma`` (on the validation windows) and
    ``bootstrap`` (of the training residual windows)."""
    if not isinstance(data, ForecastDataset):
        raise TypeError(expected("data", "a ForecastDataset", data))
    sigma_val = residual_std(model, data.val, batch_size=batch_size)
    pool = residuals(model, data.train, batch_size=batch_size)
    return {
        "gaussian_train_sigma": GaussianBaseline(
            model, model.res_std.clone(), name="gaussian_train_sigma"
        ),
        "gaussian_val_sigma": GaussianBaseline(model, sigma_val, name="gaussian_val_sigma"),
        "bootstrap": BootstrapBaseline(model, pool, name="bootstrap"),
    }
