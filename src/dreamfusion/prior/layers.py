"""Building blocks shared by the prior's text encoder and U-Net: attention, feed-forward, embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps: (B,) -> (B, dim) float32 (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so the residual branch it ends starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Attention(nn.Module):
    """Multi-head attention of `x` over `context` (itself when None), with an optional key mask.

    x (B, N, dim), context (B, M, context_dim), key_mask (B, M) bool, True = attend -> (B, N, dim).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.out = zero_init(nn.Linear(dim, dim))

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        B, N, D = x.shape
        context = x if context is None else context
        q = self.q(x).view(B, N, self.heads, -1).transpose(1, 2)  # (B, h, N, d)
        k, v = self.kv(context).view(B, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # broadcast over heads, queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear (zero-initialized): the transformer's MLP branch."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), zero_init(nn.Linear(mult * dim, dim))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
