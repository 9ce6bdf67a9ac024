"""The pointset networks: a PointSets batch <-> z (B, q)."""

from __future__ import annotations

import torch
from torch import nn

from .batch import PointSets


class PointSetEncoder(nn.Module):
    """A per-point MLP, mean-pooled over each set's real points (rows independent), then to q."""

    def __init__(self, config, latent_dim: int) -> None:
        super().__init__()
        self.point = nn.Sequential(
            nn.Linear(3, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.hidden)
        )
        self.head = nn.Sequential(nn.GELU(), nn.Linear(config.hidden + 1, latent_dim))
        self.max_points = config.max_points

    def forward(self, x: PointSets) -> torch.Tensor:
        m = x.mask.unsqueeze(-1).to(x.points.dtype)
        pooled = (self.point(x.points) * m).sum(1) / m.sum(1).clamp(min=1.0)
        size = x.counts().to(pooled).unsqueeze(1) / self.max_points
        return self.head(torch.cat([pooled, size], 1))


class PointSetDecoder(nn.Module):
    """z (and a condition) -> ``slots`` weighted points; the loss is a weighted Chamfer distance."""

    kind = "generative"

    def __init__(self, config, latent_dim: int, condition_dim: int) -> None:
        super().__init__()
        self.slots, self.condition_dim = config.slots, condition_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim + condition_dim, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.slots * 3 + 1),
        )
        self.max_points = config.max_points

    def _out(self, z: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.condition_dim and cond is None:
            raise ValueError(f"pointset decoder: needs cond (B, {self.condition_dim})")
        h = self.net(torch.cat([z] + ([cond.to(z)] if self.condition_dim else []), 1))
        return h[:, :-1].view(len(z), self.slots, 3), h[:, -1]

    def loss(self, z, x: PointSets, cond=None, *, generator=None, rows=None):
        """Mean over rows of: weighted Chamfer distance between the set and the slots, plus the
        squared error of the predicted set size (no randomness: ``generator`` is not needed)."""
        pred, size = self._out(z, cond)
        d = (
            torch.cdist(x.points[..., :2], pred[..., :2]) ** 2
            + (x.points[..., 2:] - pred[..., 2:].transpose(1, 2)) ** 2
        )
        m = x.mask.to(d.dtype)
        to_slots = (d.min(2).values * m).sum(1) / m.sum(1).clamp(min=1.0)
        big = torch.finfo(d.dtype).max / 4
        to_points = d.masked_fill(~x.mask.unsqueeze(2), big).min(1).values.mean(1)
        count = (size - x.counts().to(size) / self.max_points) ** 2
        return (to_slots + to_points + count).mean()

    def sample(self, z, cond=None, *, steps=None, generator=None) -> PointSets:
        pred, size = self._out(z, cond)
        k = (size * self.max_points).round().clamp(1, self.slots).long()
        mask = torch.arange(self.slots, device=z.device).unsqueeze(0) < k.unsqueeze(1)
        return PointSets(pred * mask.unsqueeze(-1), mask)
