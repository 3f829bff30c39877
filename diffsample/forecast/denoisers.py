"""Conditional denoisers for the residual diffusion: any of them plugs into ``sample_many``.

Dimensions: M rows (samples x windows), H horizon, N variates, D model width, Dz width of the
backbone's variate tokens z, C U-Net channels, T train steps.

Contract (the core's): ``denoiser(x_t [M, H, N], t [M] long, *, z [M, N, Dz]) -> [M, H, N]``.

Both use the core's two optional hooks for work that does not depend on the row:

- per step: when ``t.stride(0) == 0`` (the samplers pass one step for all rows as a stride-0
  view; host metadata, no sync) the step embedding and what is computed from it alone (the
  adaLN modulation of the token denoiser) are computed once from ``t[:1]`` and broadcast;
- per condition: ``prepare_cond(z=z [B, N, Dz]) -> dict`` (the core's ``PreparesCond``),
  called once per window by ``sample_many``, returns what depends on z alone (the token
  denoiser's projected tokens; the U-Net's own-token embedding and every cross-attention
  layer's keys and values); ``forward`` accepts those prepared keywords instead of ``z``.

Attention runs through ``F.scaled_dot_product_attention`` (fused kernels on GPU); the weights
stay in the ``nn.MultiheadAttention`` modules, so checkpoints load unchanged.

- ``TokenDenoiser`` (the default): a light transformer over the N variate tokens, each token the
  noisy residual series of one variate (Linear H -> D) plus its backbone token z_n; the
  diffusion step modulates every block adaLN-Zero style (Peebles & Xie, 2023), so each block
  starts as the identity. ~0.5M parameters at D = 128: cheap enough to sample the ETTh1 test
  set at 100 samples x 50 steps in seconds on one GPU.
- ``UNet1DDenoiser``: a 1D U-Net over the horizon of each variate's series, FiLM from the step
  and the variate's own token (initialised to the identity), and cross-attention from every
  position of the series to all N tokens z. More capacity, several times the cost per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .itransformer import check_heads

__all__ = ["TokenDenoiser", "UNet1DDenoiser", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer steps ``t [M]`` -> ``[M, dim]`` (float32)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]  # [M, dim/2]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class StepEmbedding(nn.Module):
    """t [M] -> [M, dim]: sinusoidal features through a two-layer MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim))


def _zero(layer: nn.Linear | nn.Conv1d) -> None:
    """Zero a layer's weight and bias: the block it ends starts as the identity (or output 0)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # x [M, N, D], shift/scale [M or 1, D]


def _step_rows(t: torch.Tensor) -> torch.Tensor:
    """``t [M]`` -> ``[1]`` when every row holds the same step as a stride-0 view (what the
    samplers pass; host metadata, no sync), else ``t`` itself: the step embedding is then
    computed once and broadcast over the rows."""
    return t[:1] if t.ndim == 1 and t.shape[0] > 1 and t.stride(0) == 0 else t


def _in_proj(
    attn: nn.MultiheadAttention,
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor | None, ...]]:
    """(W_q, W_k, W_v), (b_q, b_k, b_v) of an ``nn.MultiheadAttention`` (packed or not)."""
    if attn._qkv_same_embed_dim:
        wq, wk, wv = attn.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
    if attn.in_proj_bias is None:
        return (wq, wk, wv), (None, None, None)
    return (wq, wk, wv), tuple(attn.in_proj_bias.chunk(3))


def _sdpa(
    attn: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Attention of projected ``q [M, Lq, C]`` to projected ``k, v [M, Lk, C]`` with the
    module's heads, dropout and output projection -> ``[M, Lq, C]``."""
    h = attn.num_heads
    q, k, v = (rearrange(a, "m l (h d) -> m h l d", h=h) for a in (q, k, v))
    p = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # [M, heads, Lq, C / heads]
    return attn.out_proj(rearrange(out, "m h l d -> m l (h d)"))


class _AdaLNBlock(nn.Module):
    """Pre-norm transformer block; the step embedding sets shift/scale/gate (zero gates at init)."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d_model)
        )
        ada = nn.Linear(d_model, 6 * d_model)
        _zero(ada)
        self.ada = nn.Sequential(nn.SiLU(), ada)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # each [M, D]
        h = _modulate(self.norm1(x), shift1, scale1)
        (wq, wk, wv), (bq, bk, bv) = _in_proj(self.attn)
        q, k, v = F.linear(h, wq, bq), F.linear(h, wk, bk), F.linear(h, wv, bv)  # [M, N, D]
        x = x + gate1[:, None] * _sdpa(self.attn, q, k, v)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class TokenDenoiser(nn.Module):
    """Transformer over variate tokens with adaLN-Zero step conditioning (the default denoiser).

    Args:
        horizon: H, length of each variate's series.
        cond_dim: Dz, width of the backbone's tokens z.
        d_model: D. n_heads, n_layers, mlp_ratio, dropout: the usual.
    """

    def __init__(
        self,
        horizon: int,
        cond_dim: int,
        *,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_heads("n_heads", n_heads, "d_model", d_model)
        self.embed = nn.Linear(horizon, d_model)
        self.cond = nn.Linear(cond_dim, d_model)
        self.step = StepEmbedding(d_model)
        self.blocks = nn.ModuleList(
            _AdaLNBlock(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        final_ada = nn.Linear(d_model, 2 * d_model)
        self.final_ada = nn.Sequential(nn.SiLU(), final_ada)
        self.out = nn.Linear(d_model, horizon)
        for layer in (final_ada, self.out):  # the whole network starts at output 0
            _zero(layer)

    def prepare_cond(self, *, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-condition hook: z ``[B, N, Dz]`` -> ``{"z_tokens": [B, N, D]}``, the
        projection of the backbone's tokens, computed once per window."""
        return {"z_tokens": self.cond(z)}

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        z: torch.Tensor | None = None,
        z_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t ``[M, H, N]``, t ``[M]``, and either z ``[M, N, Dz]`` or the prepared
        z_tokens ``[M, N, D]`` (from :meth:`prepare_cond`) -> ``[M, H, N]``."""
        if (z is None) == (z_tokens is None):
            raise TypeError("TokenDenoiser: pass exactly one of z= or z_tokens= (prepare_cond)")
        cz = self.cond(z) if z_tokens is None else z_tokens  # [M, N, D]
        tokens = self.embed(rearrange(x_t, "m h n -> m n h")) + cz  # [M, N, D]
        c = self.step(_step_rows(t))  # [M, D], or [1, D] for one step (broadcast)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.out(_modulate(self.norm(tokens), shift, scale))  # [M, N, H]
        return rearrange(out, "m n h -> m h n")


def unet_attention_levels(n_levels: int) -> list[int]:
    """The levels whose width :class:`UNet1DDenoiser`'s cross-attention splits into heads: every
    level below the top (down, middle and up paths), or the only one."""
    return list(range(1, n_levels)) or [0]


def _group_count(channels: int, groups: int) -> int:
    """GroupNorm groups for ``channels``: ``min(groups, channels)`` where that divides them (what
    every existing checkpoint uses), else the largest common divisor, so any width builds."""
    g = min(groups, channels)
    return g if channels % g == 0 else math.gcd(groups, channels)


class _FiLMResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, FiLM (1 + gamma, beta) from the embedding between them."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = (
            nn.GroupNorm(_group_count(c_in, groups), c_in),
            nn.Conv1d(c_in, c_out, 3, padding=1),
        )
        self.film = nn.Linear(emb_dim, 2 * c_out)
        _zero(self.film)  # FiLM starts as the identity
        self.norm2, self.conv2 = (
            nn.GroupNorm(_group_count(c_out, groups), c_out),
            nn.Conv1d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [R, C, L]
        gamma, beta = self.film(emb)[:, :, None].chunk(2, dim=1)  # each [R, C, 1]
        h = h * (1 + gamma) + beta
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class _CrossAttention(nn.Module):
    """Every position of a variate's series attends to its window's N tokens z (residual, zero-init out)."""

    def __init__(self, channels: int, cond_dim: int, n_heads: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.attn = nn.MultiheadAttention(
            channels, n_heads, kdim=cond_dim, vdim=cond_dim, batch_first=True
        )
        _zero(self.attn.out_proj)  # the residual branch starts at 0

    def kv(self, z: torch.Tensor) -> torch.Tensor:
        """Keys and values of tokens z ``[B, N, Dz]`` -> ``[B, N, 2C]`` (what prepare_cond keeps)."""
        (_, wk, wv), (_, bk, bv) = _in_proj(self.attn)
        return torch.cat([F.linear(z, wk, bk), F.linear(z, wv, bv)], dim=-1)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """x ``[M*N, C, L]`` (the N series of a row consecutive), kv ``[M, N, 2C]`` -> same as x.

        The N series of one row attend to the same N tokens, so the queries of a row are one
        sequence ``[M, N*L, C]`` against its ``[M, N, C]`` keys: no copy of z per series."""
        M = kv.shape[0]
        (wq, _, _), (bq, _, _) = _in_proj(self.attn)
        q = F.linear(rearrange(self.norm(x), "(m n) c l -> m (n l) c", m=M), wq, bq)
        k, v = kv.chunk(2, dim=-1)  # [M, N, C] each
        out = _sdpa(self.attn, q, k.to(q.dtype), v.to(q.dtype))  # [M, N*L, C]
        return x + rearrange(out, "m (n l) c -> (m n) c l", l=x.shape[-1])


class UNet1DDenoiser(nn.Module):
    """1D U-Net over the horizon of each variate's series, with FiLM and cross-attention to z.

    Each of the M * N series is one sequence with a single input channel; the step embedding
    plus the variate's own token z_n drive FiLM; cross-attention at every resolution below the
    top reads all N tokens of the window. H is zero-padded to a multiple of 2**(levels-1).

    Args:
        horizon: H. cond_dim: Dz. channels: C per level, e.g. (32, 64, 128).
        emb_dim: width of the step embedding. n_heads: cross-attention heads. groups: GroupNorm groups.
    """

    def __init__(
        self,
        horizon: int,
        cond_dim: int,
        *,
        channels: Sequence[int] = (32, 64, 128),
        emb_dim: int = 128,
        n_heads: int = 4,
        groups: int = 8,
    ) -> None:
        super().__init__()
        for i in unet_attention_levels(len(channels)):
            check_heads("n_heads", n_heads, f"channels[{i}]", channels[i])
        self.horizon, self.levels = horizon, len(channels)
        self.step = StepEmbedding(emb_dim)
        self.own_token = nn.Linear(cond_dim, emb_dim)
        self.inp = nn.Conv1d(1, channels[0], 3, padding=1)
        self.down, self.down_attn, self.pool = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, c in enumerate(channels):
            self.down.append(_FiLMResBlock(channels[max(i - 1, 0)], c, emb_dim, groups))
            self.down_attn.append(_CrossAttention(c, cond_dim, n_heads) if i > 0 else nn.Identity())
            self.pool.append(
                nn.Conv1d(c, c, 3, stride=2, padding=1) if i < len(channels) - 1 else nn.Identity()
            )
        self.mid = _FiLMResBlock(channels[-1], channels[-1], emb_dim, groups)
        self.mid_attn = _CrossAttention(channels[-1], cond_dim, n_heads)
        self.up, self.up_attn = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(channels))):
            c_out = channels[max(i - 1, 0)]
            self.up.append(_FiLMResBlock(2 * channels[i], c_out, emb_dim, groups))
            self.up_attn.append(
                _CrossAttention(c_out, cond_dim, n_heads) if i > 1 else nn.Identity()
            )
        out = nn.Conv1d(channels[0], 1, 3, padding=1)
        _zero(out)  # starts at output 0, as the token denoiser
        self.out = nn.Sequential(
            nn.GroupNorm(_group_count(channels[0], groups), channels[0]), nn.SiLU(), out
        )

    def _attentions(self) -> list[_CrossAttention]:
        """Every cross-attention layer, in the order prepare_cond packs their keys and values."""
        layers = [*self.down_attn, self.mid_attn, *self.up_attn]
        return [a for a in layers if isinstance(a, _CrossAttention)]

    def prepare_cond(self, *, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-condition hook: z ``[B, N, Dz]`` -> ``{"own": [B, N, E], "z_kv": [B, N,
        sum 2C]}``: the variate tokens' FiLM embedding and every cross-attention layer's keys
        and values, computed once per window."""
        return self._prepare(z)

    def _prepare(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        kv = torch.cat([a.kv(z) for a in self._attentions()], dim=-1)  # [B, N, sum 2C]
        return {"own": self.own_token(z), "z_kv": kv}

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        z: torch.Tensor | None = None,
        own: torch.Tensor | None = None,
        z_kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t ``[M, H, N]``, t ``[M]``, and either z ``[M, N, Dz]`` or the prepared
        ``own``, ``z_kv`` (from :meth:`prepare_cond`) -> ``[M, H, N]``."""
        if z is not None and (own is None) and (z_kv is None):
            prepared = self._prepare(z)  # [M, ...]: z's work for each row
            own, z_kv = prepared["own"], prepared["z_kv"]
        elif z is not None or own is None or z_kv is None:
            raise TypeError("UNet1DDenoiser: pass z=, or both own= and z_kv= (prepare_cond)")
        M, H, N = x_t.shape
        mult = 2 ** (self.levels - 1)
        pad = -H % mult
        x = rearrange(F.pad(x_t, (0, 0, 0, pad)), "m h n -> (m n) 1 h")  # [M*N, 1, H + pad]
        # the step (once per call for one step) plus the variate's own token: [M, N, E]
        emb = self.step(_step_rows(t))[:, None] + own.to(x_t.dtype)
        emb = rearrange(emb, "m n e -> (m n) e")
        widths = [2 * a.attn.embed_dim for a in self._attentions()]
        kvs = dict(zip(map(id, self._attentions()), z_kv.split(widths, dim=-1), strict=True))
        h, skips = self.inp(x), []
        for block, attn, pool in zip(self.down, self.down_attn, self.pool, strict=True):
            h = block(h, emb)
            h = attn(h, kvs[id(attn)]) if isinstance(attn, _CrossAttention) else h
            skips.append(h)
            h = pool(h)
        h = self.mid_attn(self.mid(h, emb), kvs[id(self.mid_attn)])
        for block, attn in zip(self.up, self.up_attn, strict=True):
            skip = skips.pop()
            h = (
                F.interpolate(h, size=skip.shape[-1], mode="nearest")
                if h.shape[-1] != skip.shape[-1]
                else h
            )
            h = block(torch.cat([h, skip], dim=1), emb)
            h = attn(h, kvs[id(attn)]) if isinstance(attn, _CrossAttention) else h
        out = self.out(h)[:, 0, :H]  # [M*N, H]
        return rearrange(out, "(m n) h -> m h n", m=M, n=N)
