"""ResNet-GN image encoder with a projection head (docs/method.md §7, case 2: ImageNet representation).

Backbone: torchvision's ResNet-50 (or ResNet-18 for small tests) built from scratch
(``weights=None``) with **every BatchNorm replaced by GroupNorm(32)** and the classifier
``fc`` removed: images (B, 3, H, W) -> stem (conv 7×7/2, GN, ReLU, max-pool /2) -> 4 stages
(/1, /2, /2, /2) -> global average pool -> features (B, w), w = 2048 (ResNet-50) or 512
(ResNet-18). Any input side works (the pool is global), so 8×8 and 32×32 smoke tests run.

Projection head ("MLP with one hidden layer"), anchors a: (B, q):

    Linear(w -> proj_hidden, no bias), GN, ReLU, Linear(proj_hidden -> q, no bias), GN

Every GroupNorm of the head uses the largest group count <= 32 that divides its width and
leaves >= 8 features per group (:func:`norm_groups`: 32 for 2048 and for q = 256). Residual branches end in a zero-initialised GN (``zero_init_residual``),
so every block starts as the identity.

Parameter counts (ResNet-50, q = 256): backbone 23,508,032; head 4,723,200
(hidden Linear + GN 4,198,400; output Linear + GN 524,800); whole encoder 28,231,232.
The paper's 24,032,832 is backbone + output Linear + GN, i.e. the encoder **without the
hidden layer** (28,231,232 − 4,198,400); the official configuration does have the hidden
layer (two head layers), so the paper's number leaves it out.

The representation for linear probing is :meth:`ResNetEncoder.features` (backbone, no head);
``forward`` returns the anchors. ``checkpoint=True`` recomputes each of the 4 stages in
backward (``torch.utils.checkpoint``, non-reentrant) to save activation memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import ImageConfig
from .io import fit_batch

#: backbone output width per architecture
FEATURE_DIMS = {"resnet50": 2048, "resnet18": 512}


def norm_groups(width: int, max_groups: int = 32, min_size: int = 8) -> int:
    """Group count of a head GroupNorm over ``width`` features.

    The largest divisor of ``width`` that is <= ``max_groups`` and leaves at least ``min_size``
    features per group (as 256 / 32 = 8 in the paper's head); 1 when none does. A group of one
    feature would normalise it to its bias (a constant), so small q must get fewer groups.
    """
    if width < 1:
        raise ValueError(f"GroupNorm width must be positive, got {width}")
    top = max(1, min(max_groups, width // min_size))
    return next(g for g in range(top, 0, -1) if width % g == 0)


def _group_norm(channels: int) -> nn.GroupNorm:
    """The backbone's norm layer: GroupNorm(32, channels) in place of BatchNorm2d(channels)."""
    return nn.GroupNorm(32, channels)


def _torchvision_resnet(arch: str) -> nn.Module:
    import torchvision

    builders = {"resnet50": torchvision.models.resnet50, "resnet18": torchvision.models.resnet18}
    if arch not in builders:
        raise ValueError(f"unknown ResNet architecture {arch!r}; choose one of {', '.join(builders)}")
    return builders[arch](weights=None, norm_layer=_group_norm, zero_init_residual=True)


class ResNetBackbone(nn.Module):
    """ResNet with GroupNorm and no classifier: images (B, 3, H, W) -> features (B, w).

    Args:
        arch: "resnet50" (w = 2048) or "resnet18" (w = 512).
        checkpoint: recompute the 4 stages in backward (activation memory for compute).
    """

    def __init__(self, arch: str = "resnet50", checkpoint: bool = False) -> None:
        super().__init__()
        net = _torchvision_resnet(arch)
        self.arch = arch
        self.out_dim = FEATURE_DIMS[arch]
        self.checkpoint = checkpoint
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, w), the global average pool of the last stage."""
        h = self.stem(x)
        recompute = self.checkpoint and torch.is_grad_enabled() and self.training
        for stage in self.stages:
            if recompute:
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(stage, h, use_reentrant=False)
            else:
                h = stage(h)
        return h.mean(dim=(2, 3))


class ProjectionHead(nn.Sequential):
    """Features (B, w) -> anchors (B, q): Linear(no bias), GN, ReLU, Linear(no bias), GN.

    The last GroupNorm's bias starts at 0 (its weight at 1), so the initial anchors have
    zero mean and unit variance within each group.
    """

    def __init__(self, in_dim: int, hidden: int, q: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden, bias=False),
            nn.GroupNorm(norm_groups(hidden), hidden),
            nn.ReLU(),
            nn.Linear(hidden, q, bias=False),
            nn.GroupNorm(norm_groups(q), q),
        )


class ResNetEncoder(nn.Module):
    """Images (B, C, H, W) in [-1, 1] -> anchors (B, q) (case 2's encoder).

    Pixels are mapped to [0, 1] and grayscale batches repeated to 3 channels before the
    backbone; the batch side must equal ``config.resolution``, or ``config.eval_resize`` is
    set and other sizes (a ragged batch included) are encoded at their evaluation view
    (:func:`lzn_image.io.fit_batch`).

    Args:
        config: an :class:`ImageConfig` with ``encoder`` "resnet50" or "resnet18".
        latent_dim: q.
    """

    def __init__(self, config: ImageConfig, latent_dim: int) -> None:
        super().__init__()
        if config.encoder not in FEATURE_DIMS:
            raise ValueError(f"ResNetEncoder needs encoder resnet50 or resnet18, got {config.encoder!r}")
        self.config = config
        self.latent_dim = latent_dim
        self.backbone = ResNetBackbone(config.encoder, checkpoint=config.checkpoint)
        self.head = ProjectionHead(self.backbone.out_dim, config.proj_hidden, latent_dim)

    @property
    def feature_dim(self) -> int:
        """w: width of :meth:`features` (2048 for ResNet-50)."""
        return self.backbone.out_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The representation for linear probing (backbone, no head): images -> (B, w)."""
        x = fit_batch(images, self.config, channels=3).to(self.backbone.stem[0].weight.device)
        return self.backbone((x + 1) / 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) in [-1, 1] -> anchors (B, q)."""
        return self.head(self.features(images))


def parameter_counts(module: Any) -> dict[str, int]:
    """Parameter counts of a :class:`ResNetEncoder`: backbone, head layers and total."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    head = module.head
    return {
        "backbone": count(module.backbone),
        "head_hidden": count(head[0]) + count(head[1]),
        "head_out": count(head[3]) + count(head[4]),
        "total": count(module),
    }
