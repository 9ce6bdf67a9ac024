"""Text encoder: sentencepiece ids -> open_clip ``TextTransformer`` -> anchors ``(B, q)``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .config import TextConfig
from .tokenizer import EOS_ID, PAD_ID, TextTokenizer


def _tokenizer_from_config(config: TextConfig) -> TextTokenizer:
    """The tokenizer module: bytes from ``config.tokenizer`` when that file exists, else an empty
    buffer of ``config.tokenizer_bytes`` (filled when trained weights are loaded)."""
    path = Path(config.tokenizer) if config.tokenizer else None
    if path is not None and path.is_file():
        proto = path.read_bytes()
        if config.tokenizer_bytes and len(proto) != config.tokenizer_bytes:
            raise ValueError(
                f"text tokenizer {path} has {len(proto)} bytes but the config says tokenizer_bytes="
                f"{config.tokenizer_bytes}; run prepare again or fix the config"
            )
        return TextTokenizer(len(proto), proto)
    return TextTokenizer(config.tokenizer_bytes)


def _load_pretrained(tower: nn.Module, path: str) -> None:
    """Load local open_clip text-tower weights (safetensors or ``weights_only`` torch file)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"text encoder: pretrained weights {path!r} not found (nothing is downloaded)"
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    own = tower.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if bad or missing or unexpected:
        raise ValueError(
            f"text encoder: pretrained weights {path!r} do not fit the configured tower "
            f"(shape mismatch: {bad[:5]}, missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    tower.load_state_dict(state)


class TextEncoder(nn.Module):
    """Anchors of captions: ``forward(texts: list[str]) -> (B, q)``.

    The tower is open_clip's causal ``TextTransformer`` (built offline, no download) over
    sentencepiece ids (eos appended, pad = 0); its pooled output (eos token or token mean)
    is projected to q by the tower's own ``text_projection``.

    Args:
        config: the modality config (sizes, tokenizer).
        latent_dim: q.
    """

    def __init__(self, config: TextConfig, latent_dim: int) -> None:
        super().__init__()
        from open_clip.transformer import TextTransformer

        self.config = config
        self.latent_dim = latent_dim
        self.tokenizer = _tokenizer_from_config(config)
        self.tower = TextTransformer(
            context_length=config.context_length,
            vocab_size=config.vocab_size,
            width=config.width,
            heads=config.heads,
            layers=config.layers,
            mlp_ratio=config.mlp_ratio,
            output_dim=latent_dim,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            pool_type="eos" if config.pool == "eos" else "none",
        )
        if config.pretrained:
            _load_pretrained(self.tower, config.pretrained)

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``(B, context_length)`` on the encoder's device."""
        ids = self.tokenizer.encode(texts, self.config.context_length)
        if int(ids.max()) >= self.config.vocab_size:
            raise ValueError(
                f"text encoder: the tokenizer has more pieces than vocab_size={self.config.vocab_size}; "
                "set vocab_size to the tokenizer's size (prepare does this)"
            )
        return ids

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Anchors ``(B, q)`` of a list of B captions."""
        ids = self.tokens(texts)
        out = self.tower(ids)
        if isinstance(out, tuple):  # output_tokens=False gives a tensor; be safe across versions
            out = out[0]
        if self.config.pool == "mean":  # (B, L, q): mean over real tokens (pieces + eos)
            keep = (ids != PAD_ID).unsqueeze(-1).to(out.dtype)
            out = (out * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return out
