"""Label encoder (learnable class anchors) and the zonal label-flow decoder.

Shapes: C classes, latent dimension q, batch B. The anchor matrix A: (C, q) is
shared by both sides: the encoder maps a label k to A_k; the decoder flows a
latent z: (B, q) to the anchors with the reverse flow (τ = 1 -> 0, Euler) and
returns the nearest anchor (docs/method.md §4, code version: argmin_c ‖FM_A(z) − A_c‖²).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lzn_core.errors import ContractError, checks_values

from .config import LabelConfig


class ZonalLossError(ContractError, NotImplementedError):
    """``loss`` was called on a zonal decoder, which has nothing to train."""


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


class LabelDecoder(nn.Module):
    """Zonal decoder: reverse label flow of z over the class anchors, nearest anchor.

    It has no parameters of its own; :meth:`bind` (``BindsEncoder``) gives it the encoder
    whose anchors it reads (not registered as a submodule, so nothing is saved twice).
    """

    kind = "zonal"

    def __init__(self, config: LabelConfig, latent_dim: int) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = latent_dim
        object.__setattr__(self, "_encoder", None)

    def bind(self, encoder: LabelEncoder) -> None:
        """Read the class anchors of ``encoder`` (called once after both sides are built)."""
        object.__setattr__(self, "_encoder", encoder)

    def _anchors(self) -> torch.Tensor:
        if self._encoder is None:
            raise ContractError("label decoder is not bound to its encoder; call decoder.bind(encoder) first")
        return self._encoder.bank()

    def loss(
        self,
        z: torch.Tensor,
        batch: Any,
        cond: Any = None,
        *,
        generator: torch.Generator | None = None,
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Not available: the label decoder is zonal. Train the anchors with an align task."""
        raise ZonalLossError(
            "the label decoder is zonal (reverse flow to the class anchors): it has no loss of its own; "
            "train the label anchors with an align task, e.g. {kind: align, source: image, target: label}"
        )

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        cond: Any = None,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Classify latents: reverse flow over the anchors, then the nearest anchor.

        Args:
            z: latents (B, q).
            cond: must be None (the label flow takes no conditioning).
            steps: Euler steps (default ``config.flow_steps``, 100).
            generator: unused (the flow is deterministic); part of the decoder contract.
            weights: class mixture weights (C,); uniform when None (test time).

        Returns:
            labels (B,) int64 = argmin_c ‖x_final − A_c‖² (the zone index: the class).
        """
        from lzn_core import zoning

        if cond is not None:
            raise ValueError("label decoder: sample() takes no conditioning (cond must be None)")
        anchors = self._anchors()
        if z.dim() != 2 or z.shape[1] != anchors.shape[1]:
            raise ValueError(f"label decoder: z must be (B, {anchors.shape[1]}), got {tuple(z.shape)}")
        out = zoning.assign(
            z.to(anchors.dtype), anchors, steps=steps or self.config.flow_steps, weights=weights
        )
        return torch.cdist(out.final, anchors).argmin(dim=1)


def build_encoder(config: LabelConfig, latent_dim: int) -> LabelEncoder:
    """``ModalitySpec.build_encoder`` of the label modality."""
    return LabelEncoder(config, latent_dim)


def build_decoder(config: LabelConfig, latent_dim: int) -> LabelDecoder:
    """``ModalitySpec.build_decoder`` of the label modality (the framework calls ``bind(encoder)`` next)."""
    return LabelDecoder(config, latent_dim)
