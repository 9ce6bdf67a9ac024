"""The image modality of LZN: U-Net encoder -> anchors, rectified-flow U-Net decoder.

Registered through the ``lzn`` entry point ``image = "lzn_image.plugin"``. Public names:
:class:`ImageConfig`, :class:`ImageEncoder`, :class:`ResNetEncoder`, :class:`ImageDecoder`, :func:`augment`,
:func:`decode_sample`, :func:`collate`, :func:`save_grid`. The torch modules are imported
on first use, so ``import lzn_image`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import PRESETS, ImageConfig
from .io import collate, decode_sample, save_grid, to_config_channels

if TYPE_CHECKING:  # pragma: no cover
    from .augment import augment
    from .decoder import ImageDecoder
    from .encoder import ImageEncoder
    from .resnet import ResNetEncoder

_LAZY = {
    "ImageEncoder": ".encoder",
    "ResNetEncoder": ".resnet",
    "ImageDecoder": ".decoder",
    "augment": ".augment",
}

__all__ = [
    "PRESETS",
    "ImageConfig",
    "ImageDecoder",
    "ImageEncoder",
    "ResNetEncoder",
    "augment",
    "collate",
    "decode_sample",
    "save_grid",
    "to_config_channels",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lzn_image' has no attribute {name!r}")
