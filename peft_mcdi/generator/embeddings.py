"""Small encodings the denoisers share: diffusion step, relative depth of a LoRA block."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_features(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sin/cos features of a real-valued position x (...,) → (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = x.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimestepEmbedding(nn.Module):
    """Embeds the integer step t ∈ [0, T] with sin/cos features and a 2-layer MLP.

    T is at most a few dozen, so :meth:`table` embeds every step once per forward and callers index it: the MLP runs
    on T + 1 rows instead of on every sample of the batch.
    """

    def __init__(self, num_train_timesteps: int, hidden_dim: int, frequency_dim: int = 64) -> None:
        super().__init__()
        self.num_train_timesteps = num_train_timesteps
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))

    def table(self) -> torch.Tensor:
        steps = torch.arange(self.num_train_timesteps + 1, device=self.mlp[0].weight.device)
        # Scale steps to [0, 1000] so the frequencies span the same range as for T = 1000 DDPM models.
        return self.mlp(sinusoidal_features(steps * (1000.0 / self.num_train_timesteps), self.frequency_dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.table()[timesteps]


class RelativeDepthEncoding(nn.Module):
    """Encodes a block's relative depth in [0, 1], so one generator can address deeper or shallower models."""

    def __init__(self, hidden_dim: int, frequency_dim: int = 16) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.proj = nn.Linear(frequency_dim, hidden_dim)

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        # Periods from 1/100 to 2π·(1/1) of the depth range resolve neighbouring layers of a 100-layer model.
        return self.proj(sinusoidal_features(depth * 100.0, self.frequency_dim, max_period=100.0))
