"""The label modality of LZN: learnable class anchors and the label flow decoder.

Registered through the entry point ``label = "lzn_label.plugin"`` (group ``lzn``),
like any third-party plugin. Torch-heavy code lives in :mod:`lzn_label.model` and
is imported only when an encoder or decoder is built.
"""

from __future__ import annotations

from .config import LabelConfig

__all__ = ["LabelConfig"]
