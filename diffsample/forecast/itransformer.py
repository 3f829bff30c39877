"""iTransformer backbone (Liu et al., ICLR 2024): variates as tokens.

Dimensions: B windows, L lookback, H horizon, N variates, F time features, D model width.

history [B, L, N] (+ time features [B, L, F]) -> point forecast y_det [B, H, N] and the
variate tokens z [B, N, D] that condition the residual diffusion.

1. Instance normalisation per window and variate (subtract the mean over L, divide by the std).
2. Inverted embedding: each variate's whole lookback is one token, Linear(L -> D); each time
   feature's lookback is one more token (Time-Series-Library's DataEmbedding_inverted).
3. Post-norm encoder layers (attention across tokens, then a position-wise MLP), final LayerNorm.
4. Projection D -> H on the N variate tokens, then the normalisation undone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# check_heads is public for the denoisers and the model, unlisted: a check, not for users
__all__ = ["ITransformer"]


def check_heads(heads_name: str, n_heads: int, width_name: str, width: int) -> None:
    """Attention splits its width into ``n_heads`` equal heads: say so with the names the caller
    knows, rather than as an assert inside torch."""
    if width % n_heads:
        raise ValueError(
            f"{heads_name}: expected a divisor of {width_name}={width}, got int {n_heads}"
        )


class EncoderLayer(nn.Module):
    """Post-norm: x = norm1(x + attn(x)); x = norm2(x + mlp(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        check_heads("n_heads", n_heads, "d_model", d_model)
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ff1, self.ff2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(
            self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads
        )
        p = self.dropout.p if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # [B, heads, tokens, D/heads]
        x = self.norm1(x + self.dropout(self.proj(rearrange(attn, "b h t d -> b t (h d)"))))
        y = self.ff2(self.dropout(F.gelu(self.ff1(x))))
        return self.norm2(x + self.dropout(y))


class ITransformer(nn.Module):
    """The backbone. ``forward(history, time_features=None) -> (y_det, z)``.

    Args:
        lookback: L.
        horizon: H.
        n_time_features: F (0 for none).
        d_model: D, the token width.
        n_heads: attention heads per encoder layer.
        n_layers: encoder layers.
        d_ff: hidden width of the feed-forward blocks.
        dropout: dropout probability in the encoder.
        norm_eps: added to the variance in the instance normalisation.
    """

    def __init__(
        self,
        lookback: int,
        horizon: int,
        *,
        n_time_features: int = 0,
        d_model: int = 128,
        n_heads: int = 8,
        n_layers: int = 2,
        d_ff: int = 128,
        dropout: float = 0.1,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.lookback, self.horizon, self.n_time_features, self.norm_eps = (
            lookback,
            horizon,
            n_time_features,
            norm_eps,
        )
        self.embed = nn.Linear(lookback, d_model)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, horizon)

    def forward(
        self, history: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point forecast and variate tokens.

        Args:
            history: ``[B, L, N]``.
            time_features: ``[B, L, F]`` (F more tokens), or None for none.

        Returns:
            (y_det ``[B, H, N]``, contiguous; z ``[B, N, D]``).
        """
        N = history.shape[2]
        mean = history.mean(dim=1, keepdim=True)  # [B, 1, N]
        std = torch.sqrt(
            history.var(dim=1, keepdim=True, unbiased=False) + self.norm_eps
        )  # [B, 1, N]
        tokens = rearrange((history - mean) / std, "b l n -> b n l")  # [B, N, L]
        if time_features is not None:
            tokens = torch.cat(
                [tokens, rearrange(time_features, "b l f -> b f l")], dim=1
            )  # [B, N + F, L]
        h = self.embed_dropout(self.embed(tokens))  # [B, N + F, D]
        for layer in self.layers:
            h = layer(h)
        z = self.norm(h)[:, :N]  # [B, N, D] variate tokens only
        # contiguous: a permuted y_det would hand its layout to every broadcast with it
        # (the [S, B, H, N] samples), and strided last dims slow the metrics ~20x
        y = rearrange(self.head(z), "b n h -> b h n").contiguous()  # [B, H, N]
        return y * std + mean, z
