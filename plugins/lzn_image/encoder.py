"""Image encoder: U-Net down path + latent transformation blocks -> anchors (docs/method.md §4).

The down path of :class:`lzn_image.unet.DownPath` without time embedding. Each feature map
it produces (conv_in, every ResNet(+attention) block, every down-sampling block, the
middle) goes through a latent transformation block

    1×1 conv (ch -> latent_channels), SiLU, flatten, Linear(latent_channels·s·s -> latent_hidden),
    SiLU, Linear(latent_hidden -> q)

and the anchor is the sum of the blocks' outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ImageConfig
from .io import fit_batch
from .unet import DownPath, ncsnpp_init


class LatentBlock(nn.Module):
    """Feature map (B, ch, s, s) -> (B, q): 1×1 conv, act, flatten, MLP."""

    def __init__(self, channels: int, side: int, latent_channels: int, hidden: int, q: int) -> None:
        super().__init__()
        self.conv = ncsnpp_init(nn.Conv2d(channels, latent_channels, 1))  # NCSN++ conv1x1; MLP: torch default
        self.mlp = nn.Sequential(
            nn.Linear(latent_channels * side * side, hidden), nn.SiLU(), nn.Linear(hidden, q)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, ch, s, s) -> (B, q)."""
        return self.mlp(torch.nn.functional.silu(self.conv(h)).flatten(1))


class ImageEncoder(nn.Module):
    """Images (B, C, H, W) in [-1, 1] -> anchors (B, q).

    Args:
        config: an :class:`ImageConfig`.
        latent_dim: q.
    """

    def __init__(self, config: ImageConfig, latent_dim: int) -> None:
        super().__init__()
        if config.encoder != "unet":
            raise ValueError(
                f"ImageEncoder is the U-Net encoder; config.encoder is {config.encoder!r} "
                "(use lzn_image.resnet.ResNetEncoder, or the plugin's build_encoder)"
            )
        self.config = config
        self.latent_dim = latent_dim
        self.down = DownPath(config, temb_dim=None)
        keep = set(config.latent_resolutions or config.sides)
        maps = list(zip(self.down.skip_channels, self.down.skip_sides, strict=True))
        maps.append((self.down.out_channels, config.sides[-1]))  # the middle
        self.block_index = [i for i, (_, side) in enumerate(maps) if side in keep]
        self.latent_blocks = nn.ModuleList(
            LatentBlock(maps[i][0], maps[i][1], config.latent_channels, config.latent_hidden, latent_dim)
            for i in self.block_index
        )

    def _fit(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """A tensor or ragged batch -> (B, C, res, res) on the encoder's device (:func:`fit_batch`)."""
        return fit_batch(images, self.config).to(self.down.conv_in.weight.device)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``BackboneFeatures``: the down path's last (middle) feature map, averaged over space: (B, ch)."""
        _, mid = self.down(self._fit(images))
        return mid.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) in [-1, 1] (or a ragged batch, see :func:`fit_batch`) -> anchors (B, q)."""
        hs, mid = self.down(self._fit(images))
        maps = [*hs, mid]
        out = [blk(maps[i]) for i, blk in zip(self.block_index, self.latent_blocks, strict=True)]
        return torch.stack(out).sum(dim=0)
