"""PointSets: a ragged batch as one padded tensor and a mask (what a custom batch type supports:
``len``, ``[lo:hi]`` with independent rows, pickling for loader workers, ``to(device)``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PointSets:
    """B point sets: ``points`` (B, K, 3) rows ``[x, y, weight]`` padded with zeros after each set's
    end, ``mask`` (B, K) bool, True for a real point. K is the longest set of the batch."""

    points: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, items: list[torch.Tensor]) -> PointSets:
        """A batch of ``items``, each (k_i, 3)."""
        k = max(len(x) for x in items)
        points = torch.zeros(len(items), k, 3)
        mask = torch.zeros(len(items), k, dtype=torch.bool)
        for i, x in enumerate(items):
            points[i, : len(x)] = x
            mask[i, : len(x)] = True
        return cls(points, mask)

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: slice | int) -> PointSets | torch.Tensor:
        """``[lo:hi]``: the rows lo..hi as a batch; ``[i]``: set i as a (k_i, 3) tensor."""
        if isinstance(index, slice):
            return PointSets(self.points[index], self.mask[index])
        return self.points[index][self.mask[index]]

    def to(self, *args, **kwargs) -> PointSets:  # noqa: ANN002, ANN003 - torch.Tensor.to's arguments
        points = self.points.to(*args, **kwargs)
        return PointSets(points, self.mask.to(points.device))

    @property
    def device(self) -> torch.device:
        return self.points.device

    def counts(self) -> torch.Tensor:
        """(B,) points per set."""
        return self.mask.sum(1)
