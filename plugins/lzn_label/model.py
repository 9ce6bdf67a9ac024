"""Label encoder (learnable class anchors); the decoder is the core's zonal decoder.

Shapes: C classes, latent dimension q, batch B. The anchor matrix A: (C, q) is
shared by both sides: the encoder maps a label k to A_k; the decoder
(:class:`lzn_core.model.ZonalDecoder`) flows a latent z: (B, q) to the anchors with the reverse
flow (τ = 1 -> 0, Euler) and returns the nearest anchor (docs/method.md §4, code version:
argmin_c ‖FM_A(z) − A_c‖²).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lzn_core.errors import checks_values
from lzn_core.model import ZonalDecoder

from .config import LabelConfig


def _check_labels(labels: Any, num_classes: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise ValueError(
            f"label: expected an integer tensor of shape (B,), got {labels.dtype} {tuple(labels.shape)}"
        )
    if (
        labels.numel()
        and checks_values(labels)
        and (int(labels.min()) < 0 or int(labels.max()) >= num_classes)
    ):
        raise ValueError(
            f"label: class indices must be in [0, {num_classes - 1}] (num_classes={num_classes}), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


class LabelEncoder(nn.Module):
    """Class index -> anchor row. ``anchors``: learnable (C, q), init ``init_scale·randn``.

    Capabilities (:mod:`lzn_core.modality`): ``AnchorBank`` (the class matrix is the bank) and
    ``ConditionProvider`` (the one-hot, C wide).
    """

    def __init__(self, config: LabelConfig, latent_dim: int) -> None:
        super().__init__()
        self.config = config
        self.anchors = nn.Parameter(config.init_scale * torch.randn(config.num_classes, latent_dim))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B,) int64 -> anchors A[labels] (B, q)."""
        return self.anchors[_check_labels(labels, self.config.num_classes).to(self.anchors.device)]

    def bank(self) -> torch.Tensor:
        """The anchor bank: the whole class matrix A (C, q)."""
        return self.anchors

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B,) -> one-hot (B, C) float (conditions e.g. the image decoder)."""
        labels = _check_labels(labels, self.config.num_classes).to(self.anchors.device)
        return nn.functional.one_hot(labels, self.config.num_classes).to(self.anchors.dtype)


def build_encoder(config: LabelConfig, latent_dim: int) -> LabelEncoder:
    """``ModalitySpec.build_encoder`` of the label modality."""
    return LabelEncoder(config, latent_dim)


def build_decoder(config: LabelConfig, latent_dim: int) -> ZonalDecoder:
    """``ModalitySpec.build_decoder`` of the label modality: the core's zonal decoder (the label flow
    over the class anchors, ``config.flow_steps`` Euler steps by default; the framework calls
    ``bind(encoder)`` next)."""
    return ZonalDecoder(steps=config.flow_steps)
