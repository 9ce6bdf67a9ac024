"""The rowsum networks: x (B, rows) <-> z (B, q)."""

from __future__ import annotations

import torch
from torch import nn


class RowsumEncoder(nn.Module):
    def __init__(self, config, latent_dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(config.rows, config.hidden), nn.GELU())
        self.head = nn.Linear(config.hidden, latent_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # lzn_core.modality.BackboneFeatures
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class RowsumDecoder(nn.Module):
    kind = "generative"

    def __init__(self, config, latent_dim: int, condition_dim: int) -> None:
        super().__init__()
        self.noise, self.condition_dim = config.noise, condition_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim + condition_dim + config.rows, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.rows),
        )
        self.rows = config.rows

    def _inputs(self, z, x, cond):
        if self.condition_dim and cond is None:
            raise ValueError(f"rowsum decoder: needs cond (B, {self.condition_dim})")
        return torch.cat([z, x] + ([cond.to(z)] if self.condition_dim else []), dim=1)

    def loss(self, z, x, cond=None, *, generator=None, rows=None):
        start, total = rows if rows is not None else (0, len(x))
        eps = torch.randn((total, self.rows), generator=generator)[start : start + len(x)].to(x)
        noisy = x + self.noise * eps
        return ((self.net(self._inputs(z, noisy, cond)) - x) ** 2).mean()

    def sample(self, z, cond=None, *, steps=None, generator=None):
        x = torch.zeros(len(z), self.rows, device=z.device)
        for _ in range(steps or 3):  # a few denoising passes from zero
            x = self.net(self._inputs(z, x, cond))
        return x
