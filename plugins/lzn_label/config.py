"""Configuration and raw-sample decoding of the label modality (no torch import)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LabelConfig(BaseModel):
    """Config of the label modality (``modalities.<name>.config`` in a recipe).

    Attributes:
        num_classes: number of classes C; the anchor matrix is (C, q).
        flow_steps: Euler steps of the label flow (reverse flow latent -> class anchors): the
            zonal decoder's default wherever a call gives none (compose's classification, the
            condition read from a latent; docs/method.md §4: 100).
        init_scale: the anchors start as ``init_scale * randn(C, q)``.
    """

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(ge=2, description="number of classes C")
    flow_steps: int = Field(default=100, ge=1, description="Euler steps of the label flow")
    init_scale: float = Field(default=1.0, gt=0, description="anchors start as init_scale * randn(C, q)")


def validate_label(label: int, config: LabelConfig) -> None:
    """``ModalitySpec.validate_item``: a decoded class index must be < ``num_classes``.

    Raises:
        ValueError: the index is out of range (the loader skips and counts the sample).
    """
    if not 0 <= int(label) < config.num_classes:
        raise ValueError(f"label: class index {label} is out of range for num_classes={config.num_classes}")


def decode_label(raw: bytes) -> int:
    """Decode a ``cls`` shard value: ASCII digits (b"7", b" 7\\n") -> 7.

    Raises:
        ValueError: the bytes are not a non-negative decimal integer.
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise ValueError(f"label: 'cls' value must be bytes, got {type(raw).__name__}")
    shown = bytes(raw[:40])
    try:
        text = bytes(raw).decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(
            f"label: 'cls' value {shown!r} is not ASCII text; expected a class index like b'7'"
        ) from None
    if not text.isdigit():
        raise ValueError(
            f"label: 'cls' value {shown!r} is not a non-negative integer class index (like b'7')"
        )
    return int(text)
