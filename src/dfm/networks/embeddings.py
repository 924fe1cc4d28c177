"""Embeddings of scalars (timesteps, noise levels) for conditioning networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sin/cos features of a batch of scalars ``x`` (shape ``(B,)``) -> ``(B, dim)``."""
    half = dim // 2
    dtype = x.dtype if x.is_floating_point() else torch.float32  # float64 models (gradcheck) stay float64
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=dtype) / half)
    args = x.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of the timestep followed by a small MLP (as in DDPM/DiT)."""

    def __init__(self, dim: int, frequency_dim: int = 128):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.frequency_dim))
