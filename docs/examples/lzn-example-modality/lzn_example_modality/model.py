"""The networks of the "vector" modality: x (B, dim) <-> latent (B, q)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


class VectorEncoder(nn.Module):
    """x (B, dim) -> anchors (B, q)."""

    def __init__(self, config, latent_dim: int) -> None:
        super().__init__()
        self.dim = config.dim
        self.net = mlp(config.dim, config.hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vector encoder: expected (B, {self.dim}), got {tuple(x.shape)}")
        return self.net(x)


class VectorDecoder(nn.Module):
    """Generative decoder: latent z (B, q) -> x (B, dim), trained with mean squared error."""

    kind = "generative"

    def __init__(self, config, latent_dim: int) -> None:
        super().__init__()
        self.net = mlp(latent_dim, config.hidden, config.dim)

    def loss(self, z: torch.Tensor, x: torch.Tensor, cond=None, *, generator=None, rows=None) -> torch.Tensor:
        # A loss that draws random numbers takes them from `generator`, for all `rows` of the global batch
        # (see lzn_core.modality.Decoder.loss); this one draws none.
        return ((self.net(z) - x) ** 2).mean()

    def sample(self, z: torch.Tensor, cond=None, *, steps=None, generator=None) -> torch.Tensor:
        return self.net(z)
