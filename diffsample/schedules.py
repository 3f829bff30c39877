"""Noise schedules: frozen float64 data describing the forward process q(x_t | x_0).

Dimensions: T train steps, K sampling steps, M rows (samples x conditions), E event shape.

x_t = alpha_t * x_0 + sigma_t * noise,   alpha_t = sqrt(alpha_bar[t]),
                                         sigma_t = sqrt(1 - alpha_bar[t]),   t in 0..T-1,

with log-SNR lambda_t = log(alpha_t^2 / sigma_t^2). ``NoiseSchedule.alpha_sigma`` and
``NoiseSchedule.log_snr`` are the one place these are computed (in float64): ``add_noise``,
the samplers and training targets all take them from there.

t = -1 is the clean data (alpha_bar = 1, alpha = 1, sigma = 0, lambda = +inf). Samplers walk a
descending grid from ``NoiseSchedule.timesteps`` and take one explicit final step from its last
entry to t = -1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from ._utils import check_choice, check_int, check_number, check_tensor, expected
from .diffusers_config import DiffusersBetaSchedule as DiffusersBetaSchedule
from .diffusers_config import (
    beta_schedule,
    config_field,
    diffusers_config,
    laplace_betas,
    trained_betas,
)

__all__ = ["NoiseSchedule", "Spacing"]

Spacing = Literal["trailing", "leading", "linspace", "range", "logsnr"]


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete-time variance-preserving noise schedule.

    Build one with a constructor (``linear``, ``scaled_linear``, ``cosine``, ``sigmoid``,
    ``from_betas``); the constructors work in float64 and the tensors stay float64: per-step
    coefficients are cast to the sample dtype only where they are used (in fp16/bf16,
    ``sqrt(1 - alpha_bar)`` of the first steps would round to 0).

    Attributes:
        betas: ``[T]`` float64, each in (0, 1).
        alphas_cumprod: ``[T]`` float64, alpha_bar, strictly decreasing.
        name: how the schedule was built, for reprs and checkpoints.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    name: str = "custom"

    def __post_init__(self) -> None:
        betas = check_tensor("betas", self.betas, floating=True)
        abar = check_tensor("alphas_cumprod", self.alphas_cumprod, floating=True)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(expected("betas", "a 1-D tensor with at least one entry", betas))
        if abar.shape != betas.shape:
            raise ValueError(
                expected("alphas_cumprod", f"shape {tuple(betas.shape)} (as betas)", abar)
            )
        b = betas.detach().cpu().double()
        bad = ~((b > 0) & (b < 1))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"betas: every beta must lie in (0, 1); betas[{i}] = {float(b[i])!r}")
        a = abar.detach().cpu().double()
        if not bool(torch.isfinite(a).all()) or bool(((a <= 0) | (a >= 1)).any()):
            raise ValueError("alphas_cumprod: every alpha_bar must lie in (0, 1)")
        if a.numel() > 1 and not bool((a[1:] < a[:-1]).all()):
            i = int((a[1:] >= a[:-1]).nonzero()[0])
            raise ValueError(
                "alphas_cumprod: alpha_bar must be strictly decreasing; "
                f"alpha_bar[{i}] = {float(a[i])!r} <= alpha_bar[{i + 1}] = {float(a[i + 1])!r}"
            )
        object.__setattr__(self, "betas", betas.double())
        object.__setattr__(self, "alphas_cumprod", abar.double())

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_betas(
        cls, betas: torch.Tensor | list[float], *, name: str = "custom"
    ) -> NoiseSchedule:
        """Schedule from explicit betas ``[T]``; alpha_bar is their cumulative product of 1 - beta."""
        if isinstance(betas, (str, bytes)) or not isinstance(betas, (torch.Tensor, Sequence)):
            raise TypeError(
                expected("betas", "a 1-D tensor or sequence of floats in (0, 1)", betas)
            )
        if isinstance(betas, torch.Tensor) and (betas.is_complex() or betas.dtype == torch.bool):
            raise TypeError(expected("betas", "a real tensor of floats in (0, 1)", betas))
        try:
            betas = torch.as_tensor(betas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                expected("betas", "a 1-D tensor or sequence of floats in (0, 1)", betas)
            ) from None
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(expected("betas", "a 1-D sequence with at least one entry", betas))
        return cls(betas, torch.cumprod(1.0 - betas, dim=0), name)

    @classmethod
    def linear(
        cls, num_train_steps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """Ho et al. (2020): betas linear from ``beta_start`` to ``beta_end``."""
        T = check_int("num_train_steps", num_train_steps)
        beta_start, beta_end = _check_beta_range(beta_start, beta_end)
        return cls.from_betas(
            torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear"
        )

    @classmethod
    def scaled_linear(
        cls, num_train_steps: int = 1000, *, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> NoiseSchedule:
        """Latent-diffusion schedule: sqrt(beta) linear, then squared."""
        T = check_int("num_train_steps", num_train_steps)
        beta_start, beta_end = _check_beta_range(beta_start, beta_end)
        root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
        return cls.from_betas(root**2, name="scaled_linear")

    @classmethod
    def cosine(
        cls,
        num_train_steps: int = 1000,
        *,
        s: float = 0.008,
        max_beta: float = 0.999,
        min_beta: float = 0.0,
    ) -> NoiseSchedule:
        """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2) / f(0),
        betas clipped to [``min_beta``, ``max_beta``] (by default only from above, at 0.999, so
        the last step stays finite).

        Implementations differ in the bounds, and the bounds change the samples: the
        iTransformerDiffusion project clips to [1e-4, 0.9999], which is
        ``cosine(T, min_beta=1e-4, max_beta=0.9999)``; for any other variant take the peer's
        own betas with :meth:`from_betas` (see the porting guide).
        """
        T = check_int("num_train_steps", num_train_steps)
        s = check_number("s", s, minimum=0)
        max_beta = check_number(
            "max_beta", max_beta, minimum=0, maximum=1, open_min=True, open_max=True
        )
        min_beta = check_number("min_beta", min_beta, minimum=0, maximum=max_beta, open_max=True)
        grid = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.clamp(1 - f[1:] / f[:-1], min=min_beta, max=max_beta)
        return cls.from_betas(betas, name="cosine")

    @classmethod
    def sigmoid(
        cls, num_train_steps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """GeoDiff (Xu et al., 2022): betas = sigmoid(linspace(-6, 6, T)) scaled to [beta_start, beta_end]."""
        T = check_int("num_train_steps", num_train_steps)
        beta_start, beta_end = _check_beta_range(beta_start, beta_end)
        betas = (
            torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start)
            + beta_start
        )
        return cls.from_betas(betas, name="sigmoid")

    @classmethod
    def from_diffusers(cls, scheduler_or_config: Any) -> NoiseSchedule:
        """The schedule of a Hugging Face diffusers scheduler, its betas rebuilt in float64.

        Reads ``trained_betas`` if set, else ``beta_schedule`` with ``beta_start``,
        ``beta_end`` and ``num_train_timesteps``: "linear", "scaled_linear",
        "squaredcos_cap_v2" (:meth:`cosine` with ``max_beta=0.999``), "sigmoid" and "laplace"
        (``DDPMScheduler``'s), by diffusers' formulas. diffusers builds them in float32;
        these are the same betas without that round-off. diffusers is not imported: any
        object with a ``.config`` mapping, or a mapping (a dict, a ``FrozenDict``, a parsed
        ``scheduler_config.json``), is read. A field missing from a mapping takes diffusers'
        default (1000 steps, betas from 1e-4 to 0.02), except that ``beta_schedule`` or
        ``trained_betas`` must be there.

        The sampling settings (``timestep_spacing``, ``set_alpha_to_one``, ``prediction_type``,
        ``clip_sample``, ...) are not part of a schedule: they map to the samplers' arguments
        (see the diffusers page of the docs). Grid options such as ``use_karras_sigmas`` are
        not read either: the grid is ``timesteps(K, spacing)`` or one of your own.

        Args:
            scheduler_or_config: a diffusers scheduler (``DDPMScheduler``, ``DDIMScheduler``,
                ``DPMSolverMultistepScheduler``, ...) or its ``config``.

        Returns:
            A schedule named ``"diffusers:<beta_schedule>"`` (or ``"diffusers:trained_betas"``).

        Raises:
            TypeError: not a scheduler or mapping, or a field of the wrong kind.
            ValueError: a field this schedule cannot express: ``rescale_betas_zero_snr=True``
                (alpha_bar = 0 at the last step; every alpha_bar here lies in (0, 1)),
                ``use_flow_sigmas=True`` (flow matching, not these betas), an unknown
                ``beta_schedule``, a ``trained_betas`` of another length than
                ``num_train_timesteps``, or betas outside (0, 1).
        """
        config = diffusers_config(scheduler_or_config)
        T = check_int("num_train_timesteps", config_field(config, "num_train_timesteps"))
        trained = config.get("trained_betas")
        if trained is not None:
            return cls.from_betas(trained_betas(trained, T), name="diffusers:trained_betas")
        kind = beta_schedule(config)
        start, end = config_field(config, "beta_start"), config_field(config, "beta_end")
        if kind == "squaredcos_cap_v2":  # betas_for_alpha_bar(T): max_beta 0.999, s = 0.008
            sch = cls.cosine(T, s=0.008, max_beta=0.999)
        elif kind == "laplace":
            sch = cls.from_betas(laplace_betas(T))
        else:
            builder = {"linear": cls.linear, "scaled_linear": cls.scaled_linear}.get(
                kind, cls.sigmoid
            )
            sch = builder(T, beta_start=start, beta_end=end)
        return dataclasses.replace(sch, name=f"diffusers:{kind}")

    @classmethod
    def by_name(cls, name: str, num_train_steps: int = 1000) -> NoiseSchedule:
        """``NoiseSchedule.by_name("cosine", 1000)``: the named constructor with its defaults."""
        builders: dict[str, Callable[[int], NoiseSchedule]] = {
            "linear": cls.linear,
            "scaled_linear": cls.scaled_linear,
            "cosine": cls.cosine,
            "sigmoid": cls.sigmoid,
        }
        return builders[check_choice("name", name, builders)](num_train_steps)

    # ----------------------------------------------------------------- queries
    @property
    def num_train_steps(self) -> int:
        """T, the number of training timesteps."""
        return self.betas.numel()

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps ``t`` (any shape, values in -1..T-1; -1 gives 1.0).

        Args:
            t: integer timesteps, any shape; -1 is the clean data. Checked to lie in -1..T-1
                on the host (ValueError); on a device not checked (a sync per call).

        Returns:
            float64 tensor shaped like ``t``, on the schedule's device.
        """
        t = torch.as_tensor(t, device=self.device)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(expected("t", "an integer tensor of timesteps", t))
        if t.device.type == "cpu":  # free on the host; on a device it would cost a sync
            lo, hi = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
            if lo < -1 or hi > self.num_train_steps - 1:
                raise ValueError(
                    f"t: expected timesteps in -1..{self.num_train_steps - 1}, got {lo}..{hi}"
                )
        padded = torch.cat(
            [self.alphas_cumprod.new_ones(1), self.alphas_cumprod]
        )  # [T + 1], index 0 is t = -1
        return padded[t.long() + 1]

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)): x_t = alpha * x0 + sigma * eps.

        Args:
            t: integer timesteps, any shape, in -1..T-1 (t = -1 gives (1, 0)).

        Returns:
            Two float64 tensors shaped like ``t``.
        """
        ab = self.alpha_bar(t)
        return ab.sqrt(), (1.0 - ab).sqrt()

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda = log(alpha^2 / sigma^2) = log(alpha_bar) - log1p(-alpha_bar).

        Args:
            t: integer timesteps, any shape, in -1..T-1 (t = -1 gives +inf).

        Returns:
            float64 tensor shaped like ``t``. DPM-Solver's half log-SNR is ``log_snr(t) / 2``.
        """
        ab = self.alpha_bar(t)
        return torch.log(ab) - torch.log1p(-ab)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process: ``alpha_t * x0 + sigma_t * noise`` (coefficients from ``alpha_sigma``).

        Args:
            x0: clean data ``[M, *E]``.
            noise: standard normal noise, same shape as ``x0``.
            t: ``[M]`` integer timesteps (one per row).

        Returns:
            x_t ``[M, *E]`` in the dtype of ``x0`` (computed in float64, cast at the end).
        """
        check_tensor("x0", x0, floating=True)
        check_tensor("noise", noise, floating=True)
        check_tensor("t", t)
        if noise.shape != x0.shape:
            raise ValueError(expected("noise", f"shape {tuple(x0.shape)} (as x0)", noise))
        if t.ndim != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(
                expected("t", f"shape [{x0.shape[0]}] (one timestep per row of x0)", t)
            )
        alpha, sigma = self.alpha_sigma(t.to(self.device))
        shape = (-1, *([1] * (x0.ndim - 1)))  # [M, 1, ...]
        alpha, sigma = alpha.to(x0.device).reshape(shape), sigma.to(x0.device).reshape(shape)
        return (alpha * x0 + sigma * noise).to(x0.dtype)

    def timesteps(self, num_steps: int, spacing: Spacing = "trailing") -> torch.Tensor:
        """A strictly descending grid of ``num_steps`` training timesteps (long, ``[K]``).

        Definitions of Lin et al. (2023, "Common diffusion noise schedules and sample steps are
        flawed", Table 2), with N = num_steps and T = num_train_steps:

        - ``leading``:  ``arange(N) * (T // N)``, reversed (never reaches T - 1);
        - ``trailing``: ``round(arange(T, 0, -T / N)) - 1`` (starts at T - 1; the default);
        - ``linspace``: ``round(linspace(0, T - 1, N))``, reversed;
        - ``range``: ``range(0, T, T // N)``, reversed: the DDIM authors' code (``skip_type
          "uniform"``). It equals ``leading`` when N divides T; otherwise it has
          ``ceil(T / (T // N)) > N`` steps (N = 30, T = 1000: 33 apart, 31 steps);
        - ``logsnr``: the training steps nearest to N log-SNR values evenly spaced from step
          T - 1's to step 0's (DPM-Solver's ``skip_type="logSNR"``, for few steps), nudged
          apart where two would coincide; it starts at T - 1 and ends at 0.
        """
        T = self.num_train_steps
        N = check_int("num_steps", num_steps, maximum=T)
        check_choice("spacing", spacing, Spacing)
        if spacing == "leading":
            grid = (torch.arange(N, dtype=torch.float64) * (T // N)).flip(0)
        elif spacing == "range":
            grid = torch.arange(0, T, T // N, dtype=torch.float64).flip(0)
        elif spacing == "trailing":
            # T - k * T / N for k = 0..N-1 is arange(T, 0, -T / N) without its float-length pitfall
            grid = torch.round(T - torch.arange(N, dtype=torch.float64) * (T / N)) - 1
        elif spacing == "logsnr":
            grid = _logsnr_grid(self.log_snr(torch.arange(T, device=self.device)).cpu(), N)
        else:  # "linspace"
            grid = torch.round(torch.linspace(0, T - 1, N, dtype=torch.float64)).flip(0)
        grid = grid.long()
        # unreachable for N <= T; kept as a guard against a future spacing
        if N > 1 and not bool((grid[1:] < grid[:-1]).all()):
            raise ValueError(
                f"spacing {spacing!r} gave a grid that is not strictly descending: {grid.tolist()}"
            )
        return grid.to(self.device)

    def to(self, device: str | torch.device) -> NoiseSchedule:
        """The same schedule with its tensors on ``device`` (still float64)."""
        return dataclasses.replace(
            self, betas=self.betas.to(device), alphas_cumprod=self.alphas_cumprod.to(device)
        )

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, num_train_steps={self.num_train_steps}, device={self.device})"


def _logsnr_grid(lam: torch.Tensor, N: int) -> torch.Tensor:
    """The descending grid ``[N]`` of steps nearest to N log-SNR values evenly spaced over
    ``lam [T]`` (decreasing in t), made strictly descending from T - 1 to 0 where neighbours
    coincide (steep ends of the schedule): each step at most the one before minus one, then at
    least the one after plus one (N <= T leaves room for both)."""
    T = lam.numel()
    target = torch.linspace(float(lam[-1]), float(lam[0]), N, dtype=torch.float64)  # [N]
    grid = (lam[None, :] - target[:, None]).abs().argmin(1).tolist()  # [N], descending
    for i in range(1, N):
        grid[i] = min(grid[i], grid[i - 1] - 1)
    grid[-1] = max(grid[-1], 0)
    for i in range(N - 2, -1, -1):
        grid[i] = max(grid[i], grid[i + 1] + 1)
    grid[0] = min(grid[0], T - 1)
    return torch.tensor(grid, dtype=torch.float64)


def _check_beta_range(beta_start: float, beta_end: float) -> tuple[float, float]:
    """Both ends of a beta ramp in (0, 1); from_betas then checks every beta in between."""
    lo = check_number("beta_start", beta_start, minimum=0, maximum=1, open_min=True, open_max=True)
    hi = check_number("beta_end", beta_end, minimum=0, maximum=1, open_min=True, open_max=True)
    return lo, hi
