"""points: a set of 3-D points of any size (a JSON list of [x, y, z]) in a padded batch type.

A batch is a :class:`PointBatch` (zero-padded points (B, K, d) + a mask (B, K)), the custom batch
type of ``lzn_core.modality``: ``len``, ``[lo:hi]`` (rows independent), ``[i]`` (one item: its
points), pickling (a frozen dataclass of tensors) and ``to(device)``. The encoder pools a per-point
MLP over the mask (no batch statistics); the generative decoder predicts the set's centroid and
log size from z (denoising: the targets carry noise drawn for the global batch), and samples sets
of that size around that centroid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import lzn_core
from lzn_core.modality import ModalitySpec


class PointsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(3, ge=1)
    hidden: int = Field(32, ge=4)
    max_points: int = Field(64, ge=1)
    noise: float = Field(0.05, ge=0.0)  # the decoder's targets carry noise·ε


@dataclass(frozen=True)
class PointBatch:
    """B point sets: ``points`` (B, K, d) zero-padded to the largest set, ``mask`` (B, K) bool."""

    points: Any
    mask: Any

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __getitem__(self, rows: int | slice) -> Any:
        if isinstance(rows, slice):  # a batch of those rows (on the same device)
            return PointBatch(self.points[rows], self.mask[rows])
        return self.points[rows][self.mask[rows]]  # one item: its (k, d) points

    def to(self, device: Any) -> PointBatch:
        return PointBatch(self.points.to(device), self.mask.to(device))

    @staticmethod
    def collate(items: Sequence[Any]) -> PointBatch:
        import torch

        k = max(int(x.shape[0]) for x in items)
        points = torch.zeros(len(items), k, items[0].shape[1])
        mask = torch.zeros(len(items), k, dtype=torch.bool)
        for i, x in enumerate(items):
            points[i, : x.shape[0]] = x
            mask[i, : x.shape[0]] = True
        return PointBatch(points, mask)


def as_batch(request: Any) -> PointBatch:
    """``ModalitySpec.as_batch``: a PointBatch as it is, one set (k, d) as a batch of one, a list of
    sets (what ``batch[i]`` gives: evaluation gathers rows that way) collated."""
    if isinstance(request, PointBatch):
        return request
    return PointBatch.collate(list(request) if isinstance(request, (list, tuple)) else [request])


def decode(raw: bytes) -> Any:
    import torch

    try:
        values = json.loads(raw.decode("utf-8"))
        points = torch.tensor(values, dtype=torch.float32)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"points: the 'pts' value is not a JSON list of [x, y, z] ({exc})") from None
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(
            f"points: the 'pts' value must be a non-empty list of points, got shape {tuple(points.shape)}"
        )
    return points


def validate(item: Any, config: PointsConfig) -> None:
    if item.shape[1] != config.dim or item.shape[0] > config.max_points:
        raise ValueError(
            f"points: {item.shape[0]} points of dimension {item.shape[1]}; the config takes up to "
            f"{config.max_points} of dimension {config.dim}"
        )


def build_encoder(config: PointsConfig, latent_dim: int) -> Any:
    from torch import nn

    class PointsEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.phi = nn.Sequential(
                nn.Linear(config.dim, config.hidden), nn.SiLU(), nn.Linear(config.hidden, config.hidden)
            )
            self.rho = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden + 1, latent_dim))

        def forward(self, batch: PointBatch) -> Any:
            import torch

            m = batch.mask.unsqueeze(-1).to(batch.points.dtype)
            count = m.sum(1).clamp_min(1.0)
            pooled = (self.phi(batch.points) * m).sum(1) / count
            return self.rho(torch.cat([pooled, count.log()], dim=1))

    return PointsEncoder()


def build_decoder(config: PointsConfig, latent_dim: int, condition_dim: int = 0) -> Any:
    import torch
    from torch import nn

    class PointsDecoder(nn.Module):
        kind = "generative"

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(latent_dim + condition_dim, config.hidden),
                nn.SiLU(),
                nn.Linear(config.hidden, config.dim + 1),
            )

        def _predict(self, z: Any, cond: Any) -> Any:
            return self.net(z if cond is None else torch.cat([z, cond.to(z.dtype)], dim=1))

        def loss(
            self, z: Any, batch: PointBatch, cond: Any = None, *, generator: Any = None, rows: Any = None
        ) -> Any:
            start, total = rows if rows is not None else (0, len(batch))
            m = batch.mask.unsqueeze(-1).to(batch.points.dtype)
            count = m.sum(1)
            target = torch.cat([(batch.points * m).sum(1) / count.clamp_min(1.0), count.log()], dim=1)
            dev = generator.device if generator is not None else z.device
            eps = torch.randn((total, config.dim + 1), generator=generator, device=dev)[
                start : start + len(batch)
            ]
            target = target + config.noise * eps.to(z.device)
            return (self._predict(z, cond).float() - target).square().mean()

        @torch.no_grad()
        def sample(
            self, z: Any, cond: Any = None, *, steps: int | None = None, generator: Any = None
        ) -> PointBatch:
            pred = self._predict(z, cond).float()
            sizes = pred[:, -1].exp().round().clamp(1, config.max_points).long()
            k = int(sizes.max())
            dev = generator.device if generator is not None else z.device
            spread = 0.1 * torch.randn((z.shape[0], k, config.dim), generator=generator, device=dev).to(
                z.device
            )
            mask = torch.arange(k, device=z.device)[None] < sizes[:, None]
            return PointBatch((pred[:, None, : config.dim] + spread) * mask.unsqueeze(-1), mask)

    return PointsDecoder()


def example_items(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        k = 3 + i % 7
        out.append(json.dumps([[math.sin(i + j), math.cos(2 * i + j), 0.1 * j] for j in range(k)]).encode())
    return out


SPEC = ModalitySpec(
    name="points",
    config=PointsConfig,
    build_encoder=build_encoder,
    build_decoder=build_decoder,
    shard_keys=("pts",),
    decode_sample=decode,
    validate_item=validate,
    collate=PointBatch.collate,
    as_batch=as_batch,
    accepts_condition=True,
    description="test: point sets of different sizes in a padded batch type (PointBatch)",
    example_items=example_items,
)


@lzn_core.hookimpl
def lzn_register_modalities(register: Any) -> None:
    register(SPEC)
