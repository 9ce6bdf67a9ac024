"""Feature extractors for FID/KID of generated images.

:class:`InceptionFeatures`: torchvision's Inception-v3 pool features (2048-d), only from
weights the user has on disk (never downloaded). The embedded digits use the features of a
small classifier fitted on real digits instead (:mod:`lzn_core.data.digits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..errors import LZNError


def _check_images(images: Any, what: str) -> None:

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"{what}: expected images of shape (B, C, H, W), got {shape}")


class InceptionFeatures:
    """Inception-v3 pool features (B, 2048) from a local weights file (never downloaded).

    Args:
        weights: path to a torchvision ``inception_v3`` state dict (``.pt``/``.pth``
            loaded with ``weights_only``, or ``.safetensors``).
        batch_size: images per forward pass.

    Grayscale inputs are repeated to 3 channels; images are resized to 299x299
    (bilinear) and fed in [-1, 1], the range the network was trained on.
    """

    def __init__(self, weights: str | Path, *, batch_size: int = 64) -> None:
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise LZNError(
                f"Inception weights not found: {path}; give a local torchvision inception_v3 state dict "
                "(nothing is downloaded), or use the digits features for 8x8 data"
            )
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("AuxLogits.")]
        if missing or unexpected:
            raise LZNError(
                f"{path} is not an inception_v3 state dict: {len(missing)} missing keys "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        net.fc = torch.nn.Identity()
        self.net = net.eval()
        self.batch_size = batch_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1], C in {1, 3} -> features (B, 2048)."""

        _check_images(images, "InceptionFeatures")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures: expected 1 or 3 channels, got {images.shape[1]}")
        out = []
        with torch.no_grad():
            for chunk in images.float().split(self.batch_size):
                if chunk.shape[1] == 1:
                    chunk = chunk.repeat(1, 3, 1, 1)
                chunk = F.interpolate(chunk, size=(299, 299), mode="bilinear", align_corners=False)
                out.append(self.net(chunk))
        return torch.cat(out)
