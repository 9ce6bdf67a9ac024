"""The ``lzn_register_modalities`` hook of the label modality (entry point ``label``)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import lzn_core
from lzn_core.modality import ModalitySpec

from .config import LabelConfig, decode_label, validate_label


def _build_encoder(config: LabelConfig, latent_dim: int) -> Any:
    from .model import build_encoder

    return build_encoder(config, latent_dim)


def _build_decoder(config: LabelConfig, latent_dim: int) -> Any:
    from .model import build_decoder

    return build_decoder(config, latent_dim)


def _as_batch(request: Any) -> Any:
    """``ModalitySpec.as_batch``: a class (``3``, a 0-d tensor) becomes ``tensor([3])``, a list of
    classes an int64 tensor; a batch ``(B,)`` passes unchanged."""
    import torch

    if isinstance(request, torch.Tensor):
        return request.reshape(1) if request.dim() == 0 else request
    if isinstance(request, numbers.Integral) and not isinstance(request, bool):
        return torch.as_tensor([int(request)])
    if isinstance(request, (list, tuple)) and all(isinstance(v, numbers.Integral) for v in request):
        return torch.as_tensor([int(v) for v in request], dtype=torch.int64)
    return request


def _example_items(n: int) -> list[bytes]:
    return [str(i % 3).encode() for i in range(n)]


SPEC = ModalitySpec(
    name="label",
    config=LabelConfig,
    build_encoder=_build_encoder,
    build_decoder=_build_decoder,
    shard_keys=("cls",),
    decode_sample=decode_label,
    validate_item=validate_label,
    condition_dim=lambda config: config.num_classes,
    description="class labels: learnable (C, q) anchors, label-flow classifier",
    example_config={"num_classes": 3},
    example_items=_example_items,
    as_batch=_as_batch,
)


@lzn_core.hookimpl
def lzn_register_modalities(register: Callable[[ModalitySpec], None]) -> None:
    """Register the ``label`` modality."""
    register(SPEC)
