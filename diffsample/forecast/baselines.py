"""What the diffusion head must beat: the same backbone with noise that ignores the window.

Dimensions: S samples, B windows, H horizon, N variates, R residual windows.

    sigma = residual_std(model, split)                    [N]  std of y - y_det on a split
    samples = gaussian_samples(point, sigma, S)           [S, B, H, N]  y ~ N(y_det, sigma_n^2)
    gaussian_crps(point, sigma, y)                        [B, H, N]  its exact CRPS (crps_normal)
    r = residuals(model, data.train)                      [R, H, N]  y - y_det of each window
    samples = bootstrap_samples(point, r, S)              [S, B, H, N]  y = y_det + r_w, w random

With ``sigma`` fitted on the training windows (``model.res_std``, what stage 2 normalises by) or
on held-out ones (``residual_std(model, data.val)``) the Gaussian gives the two baselines that
every result of the diffusion head is reported beside; the bootstrap of whole training
residual windows keeps their heavy tails and their correlation over steps and variates, and
is the stronger one on ETTh1 (see ``docs/results.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .._utils import check_int, check_tensor, expected
from ..metrics import crps_normal
from .data import ForecastSplit
from .model import ITransformerDiffusion

__all__ = ["bootstrap_samples", "gaussian_crps", "gaussian_samples", "residual_std", "residuals"]


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
def residual_std(
    model: ITransformerDiffusion, split: ForecastSplit, *, batch_size: int = 256
) -> torch.Tensor:
    """Per-variate std ``[N]`` of y - y_det over every window of ``split`` (float64 sums).

    On the training split this is what training stores as ``model.res_std``; on the
    validation split it is the held-out ("val-fitted") sigma of the baseline.
    """
    from .training import _residual_stats  # the one implementation of these sums

    batch_size, device = _check_model_split(model, split, batch_size)
    with _eval_mode(model):
        _, std = _residual_stats(model, split.to(device), batch_size, device)
    return std


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
    """The model in eval mode (no dropout) inside, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
