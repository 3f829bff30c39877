"""ITransformerDiffusion: iTransformer point forecast + conditional residual diffusion.

Dimensions: S samples, B windows, L lookback, H horizon, N variates, F time features,
D backbone width, T train steps, K sampling steps, M rows (samples x windows).

    history [B, L, N] --backbone (once per window)--> y_det [B, H, N], z [B, N, D]
    residual r = (y - y_det - res_mean) / res_std            per variate, stats fixed after training
    denoiser(r_t [M, H, N], t [M], z [M, N, D]) -> eps | x0 | v
    forecast: y = y_det + res_std * res_scale * r + res_mean,   r ~ sample_many(...)   -> [S, B, H, N]

``res_scale [H, N]`` (ones unless calibrated) is an optional spread calibration fitted after
stage 2 (``TrainConfig.calibration``, :func:`~diffsample.forecast.training.fit_spread_scale`):
the trained denoiser, sampled with a few-step solver, returns residuals narrower than the ones
it was trained on (on ETTh1 ~0.78 of their rms on its own training windows, more at the far
horizon steps; see docs/results.md), and the scale undoes that per horizon step and variate.

The backbone never runs per sample: ``forecast`` hands z to ``sample_many``, which folds the
S samples into the batch. A researcher with another denoiser copies ``forecast`` and swaps
``self.denoiser``.

Checkpoints (``save`` / ``load``, and the trainer's per-epoch files) are one ``torch.save``
dict read back with ``weights_only=True``, checksummed, its tensors, config and weights checked
before a model is built; the format is :mod:`diffsample.forecast.checkpoint`'s. The sizes are a
:class:`ForecastConfig` (:mod:`diffsample.forecast.model_config`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import NoiseSchedule, sample_many
from .._utils import check_bool, check_device, check_finite, check_int, check_tensor, expected
from ..prediction import training_target
from ..samplers import Sampler
from ..schedules import Spacing
from .checkpoint import model_payload, read_model
from .checkpoint import write_checkpoint as _write_checkpoint  # tests/test_outputs.py imports it
from .data import StandardScaler
from .forecast import Forecast
from .forecast import check_freq as _check_freq
from .forecast import check_start as _check_start
from .model_config import CONFIG_LIMITS as CONFIG_LIMITS
from .model_config import DenoiserName, ForecastConfig, HistoryStats, ScheduleName, networks
from .sampling_config import EXTRA_FIELDS, SamplingConfig, resolve_sampling

__all__ = [
    "DenoiserName",
    "Forecast",
    "ForecastConfig",
    "HistoryStats",
    "ITransformerDiffusion",
    "ScheduleName",
]


def _spec_scaler(spec: Mapping[str, Any] | None, n: int) -> StandardScaler | None:
    """The scaler of the data a model trained on, from its data spec (None without one)."""
    if not spec or spec.get("scaler_mean") is None or spec.get("scaler_std") is None:
        return None
    try:
        scaler = StandardScaler(mean=spec["scaler_mean"], std=spec["scaler_std"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"model.data_spec: scaler_mean / scaler_std are not a scaler: {err}"
        ) from err
    if scaler.n_variates != n:
        raise ValueError(
            f"model.data_spec: expected scaler statistics of {n} variates, got {scaler.n_variates}"
        )
    return scaler


def _spec_columns(spec: Mapping[str, Any] | None, n: int) -> tuple[str, ...] | None:
    """The variate names of the data spec, if it holds N of them."""
    cols = None if not spec else spec.get("columns")
    if isinstance(cols, (list, tuple)) and len(cols) == n and all(isinstance(c, str) for c in cols):
        return tuple(cols)
    return None


class ITransformerDiffusion(nn.Module):
    """Point forecast from an iTransformer, uncertainty from a diffusion model of its residuals.

    Args:
        config: the sizes (:class:`ForecastConfig`); the default is the ETT reference model.
    """

    res_mean: torch.Tensor  # [N] buffer
    res_std: torch.Tensor  # [N] buffer
    res_scale: torch.Tensor  # [H, N] buffer: spread calibration of the samples, ones by default
    data_spec: dict[str, Any] | None  # what it was trained on (ForecastDataset.spec()), or None

    # a frozen dataclass, so one shared default is safe (ruff sees that only within its module)
    def __init__(self, config: ForecastConfig = ForecastConfig()) -> None:  # noqa: B008
        super().__init__()
        if not isinstance(config, ForecastConfig):
            raise TypeError(expected("config", "a ForecastConfig", config))
        c = self.config = config
        self.backbone, self.denoiser = networks(c)
        # float64 and on the CPU, not a buffer: samplers read their per-step coefficients on
        # the host (no device sync in the step loop) and cast them only at use
        self.schedule = NoiseSchedule.by_name(c.schedule, c.num_train_steps)
        self._device_schedules: dict[torch.device, tuple[NoiseSchedule, NoiseSchedule]] = {}
        self.register_buffer("res_mean", torch.zeros(c.n_variates))  # [N]
        self.register_buffer("res_std", torch.ones(c.n_variates))  # [N]
        self.register_buffer("res_scale", torch.ones(c.horizon, c.n_variates))  # [H, N]
        self.data_spec = None  # set by train(); saved and loaded with the weights

    # ------------------------------------------------------------------ pieces
    def forward(
        self, history: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone: history ``[B, L, N]`` (+ ``[B, L, F]``) -> (y_det ``[B, H, N]``, z ``[B, N, D]``)."""
        self._check_inputs(history, time_features)
        return self.backbone(history, time_features if self.config.n_time_features else None)

    def condition(self, history: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The denoiser's condition ``[B, N, Dz]``: the variate tokens z ``[B, N, D]`` and, as
        ``config.history_stats`` says, each variate's log std over the history ``[B, L, N]``
        ("scale", Dz = D + 1) and its mean ("scale_level", Dz = D + 2): the scale and level
        that the backbone's instance normalisation hides. "none": z alone."""
        stats = self.config.history_stats
        if stats == "none":
            return z
        var = history.var(dim=1, unbiased=False) + self.backbone.norm_eps  # [B, N]
        cols = [0.5 * var.log()] + ([history.mean(dim=1)] if stats == "scale_level" else [])
        return torch.cat([z, torch.stack(cols, dim=-1).to(z.dtype)], dim=-1)  # [B, N, Dz]

    def point_loss(
        self, history: torch.Tensor, target: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE of the point forecast (stage 1).

        Args:
            history: ``[B, L, N]``.
            target: ``[B, H, N]``.
            time_features: ``[B, L, F]`` or None.

        Returns:
            A float32 scalar.
        """
        y_det, _ = self(history, time_features)
        return F.mse_loss(y_det.float(), target.float())

    def diffusion_loss(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        time_features: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        draws: int = 1,
    ) -> torch.Tensor:
        """Denoising loss on normalised residuals (stage 2); the backbone is not trained here.

        Each window draws a uniform step t and noise, ``draws`` times (rows ``[draws * B]``:
        the backbone runs once, the denoiser on every draw; more draws, a less noisy gradient
        for the same backbone cost); the forward process is the schedule's own
        (:meth:`NoiseSchedule.add_noise`, :meth:`NoiseSchedule.alpha_sigma`) and the loss is the
        MSE between the denoiser's output and its target for ``config.prediction``.

        Args:
            history: ``[B, L, N]``.
            target: ``[B, H, N]``.
            time_features: ``[B, L, F]`` or None.
            generator: draws t ``[draws * B]`` and the noise ``[draws * B, H, N]``; on the
                data's device.
            draws: (t, noise) draws per window, at least 1.

        Returns:
            A float32 scalar.
        """
        draws = check_int("draws", draws)
        with torch.no_grad():
            y_det, z = self(history, time_features)
            z = self.condition(history, z).repeat(draws, 1, 1)  # [draws * B, N, Dz]
            r0 = self.normalise_residual(target, y_det).repeat(draws, 1, 1)  # [draws * B, H, N]
            schedule = self._schedule_on(r0.device)
            t = torch.randint(
                0, schedule.num_train_steps, r0.shape[:1], device=r0.device, generator=generator
            )  # [draws * B]
            noise = torch.randn(r0.shape, device=r0.device, dtype=r0.dtype, generator=generator)
            r_t = schedule.add_noise(r0, noise, t)  # [draws * B, H, N]
            alpha, sigma = (a[:, None, None] for a in schedule.alpha_sigma(t))  # [draws*B, 1, 1]
            goal = training_target(r0, noise, alpha, sigma, self.config.prediction)
        return F.mse_loss(self.denoiser(r_t, t, z=z).float(), goal.float())

    def normalise_residual(self, target: torch.Tensor, y_det: torch.Tensor) -> torch.Tensor:
        """r = (target - y_det - res_mean) / res_std, per variate: ``[B, H, N]`` -> ``[B, H, N]``."""
        return (target - y_det - self.res_mean) / self.res_std

    @torch.no_grad()
    def set_residual_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the per-variate residual statistics ``[N]`` (computed on training data)."""
        N = self.config.n_variates
        check_tensor("mean", mean, floating=True)
        check_tensor("std", std, floating=True)
        if mean.shape != (N,) or std.shape != (N,):
            raise ValueError(
                f"mean, std: expected shape [{N}] each, got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError(f"std: expected positive finite values, got {std.tolist()}")
        if not bool(torch.isfinite(mean).all()):
            raise ValueError(f"mean: expected finite values, got {mean.tolist()}")
        self.res_mean.copy_(mean)
        self.res_std.copy_(std)

    @torch.no_grad()
    def set_residual_scale(self, scale: torch.Tensor) -> None:
        """Fix the spread calibration ``[H, N]``: sampled residuals are multiplied by it (per
        horizon step and variate) before they are mapped back to the data's units. Ones undo it."""
        c = self.config
        check_tensor("scale", scale, floating=True)
        if scale.shape != (c.horizon, c.n_variates):
            raise ValueError(
                expected("scale", f"a tensor [{c.horizon}, {c.n_variates}] (H, N)", scale)
            )
        if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
            raise ValueError(expected("scale", "positive finite values", scale))
        self.res_scale.copy_(scale)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def forecast(
        self,
        history: torch.Tensor,
        n_samples: int | None = None,
        *,
        time_features: torch.Tensor | None = None,
        sampler: str | Sampler | None = None,
        num_steps: int | None = None,
        spacing: Spacing | None = None,
        max_batch: int | None = None,
        memory_budget: int | float | None = None,
        seed: int | tuple[int, ...] | None = None,
        window_ids: torch.Tensor | Sequence[int] | None = None,
        progress: bool | None = None,
        start: object = None,
        freq: str | None = None,
        sampling: SamplingConfig | None = None,
        **sampler_kwargs: Any,
    ) -> Forecast:
        """Probabilistic forecast: ``n_samples`` samples per window, in the data's (scaled) units.

        The sampling settings come as one :class:`~diffsample.forecast.SamplingConfig`
        (``sampling=``, whose docs give the defaults and why) or as loose keywords (None: the
        config's); a loose keyword beside ``sampling`` may repeat it, not contradict it.

        Args:
            history: ``[B, L, N]``.
            n_samples: S (default 100).
            time_features: ``[B, L, F]`` for the history, if the model uses them.
            sampler: a name in :data:`diffsample.SAMPLERS` (default "dpmpp_2m"; it, "dpmpp_3m"
                and "ddim" are deterministic given the noise) or a sampler function.
            num_steps: K sampling steps (default 10: DPM-Solver++(2M) with 10 steps scored
                ETTh1 as well as DDIM-50 at a fifth of the cost, docs/results.md).
            spacing: the grid of the K steps (:meth:`NoiseSchedule.timesteps`), default
                "logsnr" (since 0.6.0), which ends at t = 0; "trailing" ends at t = T / K - 1
                and jumps to the clean residual, the denoiser's posterior mean there: at 10
                steps the samples' spread was 0.72 (ETTh2) and 0.79 (ETTh1) of the true
                errors', 1.08 and 1.00 with "logsnr" (DDIM-50: 1.01, 0.97; docs/results.md).
            max_batch: see :func:`diffsample.sample_many`.
            memory_budget: see :func:`diffsample.sample_many`.
            seed: keys the noise with ``window_ids`` (default 0; an int or a tuple key): the
                same window id and seed give the same samples in any batch and chunking.
            window_ids: ``[B]`` integer ids keying each window's noise. Default 0..B-1; pass
                global indices.
            progress: see :func:`diffsample.sample_many`.
            start: ``[B]`` timestamps of each window's first forecast step (numpy
                ``datetime64`` or ISO strings), for the Forecast's dates; None leaves them
                unknown. :func:`~diffsample.forecast.forecast.window_dates` gives them for
                windows of a split.
            freq: the step between forecast steps, a pandas alias (``"h"``, ``"15min"``).
            sampling: every sampling setting at once.
            **sampler_kwargs: the config's other fields, loose: ``graph=True`` (CUDA graphs),
                ``autocast=torch.bfloat16`` or ``"bf16"`` (the denoiser in bf16), ``eta``
                (DDIM), ``clip_x0``, ``clip_eps``; the rest go to :func:`diffsample.sample_many`
                as they are (e.g. ``variance``). A ``device`` must be the model's own.

        Returns:
            :class:`~diffsample.forecast.forecast.Forecast` ``(samples [S, B, H, N], point
            [B, H, N])``, both contiguous, in scaled units; it carries the scaler and variate
            names of the data the model trained on (``fc.in_data_units()`` maps to the data's
            units), ``window_ids`` when given, and ``start`` / ``freq``.
        """
        s = resolve_sampling(
            sampling,
            n_samples=n_samples,
            sampler=sampler,
            num_steps=num_steps,
            spacing=spacing,
            max_batch=max_batch,
            memory_budget=memory_budget,
            seed=seed,
            **{k: sampler_kwargs.pop(k) for k in EXTRA_FIELDS if k in sampler_kwargs},
        )
        was_training = self.training
        self.eval()
        try:
            y_det, z = self(history, time_features)  # [B, H, N], [B, N, D]; checks the shapes
            _check_window_ids(window_ids, history.shape[0])
            # what the Forecast carries, checked before sampling
            scaler = _spec_scaler(self.data_spec, self.config.n_variates)
            variates = _spec_columns(self.data_spec, self.config.n_variates)
            start, freq = _check_start(start, history.shape[0]), _check_freq(freq)
            if "device" in sampler_kwargs:
                self._check_own_device(sampler_kwargs["device"])
            # once per call, before sampling (not in forward: a sync per training batch);
            # NaN here would only surface as NaN samples
            check_finite("history", history)
            if time_features is not None and self.config.n_time_features:
                check_finite("time_features", time_features)
            c = self.config
            r = sample_many(
                s.sampler,
                self.denoiser,
                (c.horizon, c.n_variates),
                s.n_samples,
                cond={"z": self.condition(history, z)},  # [B, N, Dz]
                cond_ids=window_ids,
                dtype=y_det.dtype,
                progress=progress,
                schedule=self.schedule,
                timesteps=self.schedule.timesteps(s.num_steps, s.spacing),
                prediction=c.prediction,
                **s.sample_many_kwargs(),
                **sampler_kwargs,
            )  # [S, B, H, N]
            # a broadcast takes its operands' memory layout; a permuted one (from the backbone
            # or a denoiser's output) made the metrics on these samples ~20x slower
            point = y_det.contiguous()
            scale = self.res_std * self.res_scale  # [H, N]
            samples = (point + r * scale + self.res_mean).contiguous()  # [S, B, H, N]
        finally:
            self.train(was_training)
        return Forecast(
            samples,
            point,
            scaler=scaler,
            variates=variates,
            window_ids=window_ids,
            start=start,
            freq=freq,
        )

    def wrap(
        self,
        samples: torch.Tensor,
        point: torch.Tensor,
        *,
        window_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> Forecast:
        """Samples ``[S, B, H, N]`` and a point ``[B, H, N]`` made by other means (a baseline on
        this backbone) as a :class:`Forecast` carrying this model's scaler and variate names,
        as :meth:`forecast`'s own do."""
        N = self.config.n_variates
        scaler, variates = _spec_scaler(self.data_spec, N), _spec_columns(self.data_spec, N)
        return Forecast(samples, point, scaler=scaler, variates=variates, window_ids=window_ids)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a finished checkpoint atomically (a temp file renamed into place).

        It holds the config, the weights, ``data_spec`` and a checksum (the format:
        :mod:`diffsample.forecast.checkpoint`). Returns the path.
        """
        return _write_checkpoint(path, {**self._checkpoint_payload(), "finished": True})

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        map_location: Any = "cpu",
        allow_unfinished: bool = False,
    ) -> ITransformerDiffusion:
        """Read a checkpoint written by :meth:`save` or by ``train`` (``weights_only=True``).

        Args:
            path: the file.
            map_location: the device to load the weights to (``"cpu"``, ``"cuda"``,
                ``"cuda:1"``, ``"mps"`` or a ``torch.device``); one this machine has.
            allow_unfinished: also load the checkpoint of a run that has not finished (killed,
                or stopped by an error): the best weights so far of the stage it was in; in
                stage 1 the denoiser is still untrained. Also loads a checkpoint of diffsample
                0.1 (format ``/1``), which has no checksum and no record of either.

        Returns:
            The model in eval mode, with ``data_spec`` as saved (None if it never trained).

        Nothing in the file steers more than it should: every tensor is checked against its
        declared shape and storage before the checksum reads it (a few bytes declaring a huge
        expanded tensor are refused, not materialised), the config against
        :data:`CONFIG_LIMITS`, and the weights' shapes against the config's before a model of
        that size is built; non-finite weights or statistics are refused.

        Raises:
            FileNotFoundError: no such file.
            TypeError: ``map_location`` is not a str or ``torch.device``.
            ValueError: ``map_location`` names no device this machine has; or (one line,
                naming the path) not a readable torch file, not a diffsample checkpoint
                (another format, Python objects or tensor layouts a checkpoint never holds), a
                checksum that does not match the contents, no or a bad config (sizes beyond
                the limits included), weights that do not fit the config, NaN or infinite
                weights, or an unfinished run without ``allow_unfinished``.
        """
        device = check_device("map_location", map_location)
        allow_unfinished = check_bool("allow_unfinished", allow_unfinished)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        found = read_model(path, map_location=device, allow_unfinished=allow_unfinished)
        model = cls(found.config)  # only now: the file holds weights of this size
        model.load_state_dict(found.state_dict)
        model.data_spec = found.data_spec
        return model.eval()

    def _checkpoint_payload(self, state_dict: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """format, config, weights (``state_dict`` or the model's own) and data spec."""
        weights = self.state_dict() if state_dict is None else state_dict
        return model_payload(self.config, weights, self.data_spec)

    # ------------------------------------------------------------------ checks
    def _schedule_on(self, device: torch.device) -> NoiseSchedule:
        """``self.schedule`` on ``device``, copied once per device: the training loss indexes
        it with t drawn there, and moving t to the host instead would sync at every step."""
        if device == self.schedule.device:
            return self.schedule
        source, moved = self._device_schedules.get(device, (None, None))
        if source is not self.schedule or moved is None:  # first use, or the schedule was replaced
            moved = self.schedule.to(device)
            self._device_schedules[device] = (self.schedule, moved)
        return moved

    def _check_own_device(self, value: object) -> None:
        """``value`` a device (see ``diffsample._utils.check_device``) that is the parameters' own."""
        device = check_device("device", value)
        own = next(self.backbone.parameters()).device
        if device.type != own.type or device.index not in (None, own.index):
            raise ValueError(
                f"device: expected the model's device {own} (move the model with "
                f".to({str(device)!r}) to sample there), got {str(value)!r}"
            )

    def _check_inputs(self, history: torch.Tensor, time_features: torch.Tensor | None) -> None:
        """history ``[B, L, N]`` (B >= 1) and time features ``[B, L, F]`` of the parameters'
        dtype and device. No implicit cast: a float64 history would only be rounded to float32
        here, and an integer one is almost always a mistake upstream."""
        c = self.config
        param = next(self.backbone.parameters())
        _check_input(
            "history", history, (None, c.lookback, c.n_variates), param, "B windows >= 1, L, N"
        )
        if not c.n_time_features:
            return  # a model built without time features ignores any it is given
        if time_features is None:
            raise ValueError(
                f"time_features: this model uses {c.n_time_features} time features; pass [B, "
                f"{c.lookback}, {c.n_time_features}] (or build it with n_time_features=0)"
            )
        want = (history.shape[0], c.lookback, c.n_time_features)
        _check_input("time_features", time_features, want, param, "B, L, F")


def _check_window_ids(window_ids: object, B: int) -> None:
    """``window_ids`` None or ``[B]`` integer ids (a tensor or a sequence)."""
    if window_ids is None:
        return
    want = f"[{B}] integer ids, one per history window"
    if isinstance(window_ids, (str, bytes)) or not isinstance(window_ids, (torch.Tensor, Sequence)):
        raise TypeError(expected("window_ids", f"a tensor or sequence of {want}", window_ids))
    try:
        ids = torch.as_tensor(window_ids)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(expected("window_ids", want, window_ids)) from None
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(expected("window_ids", want, ids))
    if tuple(ids.shape) != (B,):
        raise ValueError(expected("window_ids", f"{want} (history holds B = {B})", ids))


def _check_input(
    name: str, x: object, shape: tuple[int | None, ...], param: torch.Tensor, legend: str
) -> None:
    """``x`` a tensor of ``shape`` (None: any size >= 1) with ``param``'s dtype and device."""
    x = check_tensor(name, x)
    dims = ", ".join("B" if n is None else str(n) for n in shape)
    if x.ndim != len(shape) or any(
        x.shape[i] != n if n is not None else x.shape[i] < 1 for i, n in enumerate(shape)
    ):
        raise ValueError(expected(name, f"a tensor [{dims}] ({legend})", x))
    if x.dtype != param.dtype:
        raise TypeError(
            expected(
                name,
                f"a {param.dtype} tensor like the model's parameters (cast with .to({param.dtype}))",
                x,
            )
        )
    if x.device != param.device:
        raise ValueError(
            f"{name}: expected a tensor on {param.device} (the model's device), got one on "
            f"{x.device}"
        )
