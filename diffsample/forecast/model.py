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
from collections.abc import Sequence
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
from .checkpoint import model_payload, read_model, write_checkpoint
from .data.spec import spec_columns, spec_scaler
from .dates import check_freq, check_start
from .forecast import Forecast
from .model_checks import check_history_ids, check_inputs, check_own_device
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
        check_inputs(self.config, next(self.backbone.parameters()), history, time_features)
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
            spacing: the grid of the K steps (:meth:`NoiseSchedule.timesteps`). "logsnr"
                (the default since 0.6.0) spaces them evenly in log-SNR, most of them at low
                noise, and ends at t = 0; "trailing" (before 0.6.0) spaces them evenly in t
                and ends with a jump from t = T/K - 1 to the clean residual. At 10 steps the
                samples' spread was 0.72 (ETTh2) and 0.79 (ETTh1) of the true errors' with
                "trailing", 0.78 / 0.85 with "linspace" (which also ends at t = 0), and
                1.08 / 1.00 with "logsnr" (DDIM-50: 1.01 / 0.97) (seed-0 screens,
                benchmarks/results/issue18_screens/).
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
            check_history_ids(window_ids, history.shape[0])
            # what the Forecast carries, checked before sampling
            scaler = spec_scaler(self.data_spec, self.config.n_variates)
            variates = spec_columns(self.data_spec, self.config.n_variates)
            start, freq = check_start(start, history.shape[0]), check_freq(freq)
            if "device" in sampler_kwargs:
                check_own_device(sampler_kwargs["device"], next(self.backbone.parameters()))
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
        scaler, variates = spec_scaler(self.data_spec, N), spec_columns(self.data_spec, N)
        return Forecast(samples, point, scaler=scaler, variates=variates, window_ids=window_ids)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a finished checkpoint atomically (a temp file renamed into place).

        It holds the config, the weights, ``data_spec`` and a checksum (the format:
        :mod:`diffsample.forecast.checkpoint`). Returns the path.
        """
        payload = model_payload(self.config, self.state_dict(), self.data_spec)
        return write_checkpoint(path, {**payload, "finished": True})

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

    # ------------------------------------------------------------------ helpers
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
