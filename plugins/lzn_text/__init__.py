"""The text modality of LZN: sentencepiece tokenizer, open_clip text tower, latent-conditioned decoder.

Registered through the ``lzn`` entry point ``text = "lzn_text.plugin"``; the core never
imports this package by name. Importing it does not import torch.
"""

from __future__ import annotations

from .config import TextConfig

__all__ = ["TextConfig"]
__version__ = "0.1.0"
