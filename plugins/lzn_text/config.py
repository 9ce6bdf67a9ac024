"""Configuration of the text modality (``modalities.<m>.config`` in a recipe).

Where the tokenizer lives: the serialized sentencepiece model (its proto bytes)
is a ``uint8`` buffer ``tokenizer.proto`` of both the encoder and the decoder, so
it is saved with the weights (safetensors export) and comes back with
``load_state_dict`` / ``lzn_core.load``. The buffer's length must be known
before the weights are loaded, so the config records it in ``tokenizer_bytes``
and the vocabulary size in ``vocab_size``. ``prepare`` (run once before
building, from the training shards) fills both: it trains a tokenizer on the
captions when ``tokenizer`` is empty, writes it to a content-addressed cache
file (``$LZN_CACHE_DIR`` or ``~/.cache/lzn``) and sets ``tokenizer`` to that
path. At build time the buffer is filled from ``tokenizer`` when the file
exists; otherwise it stays zero until the weights are loaded (a model rebuilt
by ``lzn_core.load`` needs neither the shards nor the cache file).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TextConfig(BaseModel):
    """Sizes of the text tokenizer, encoder and decoder.

    Attributes:
        tokenizer: path of a sentencepiece ``.model`` file; ``None`` = train one from the
            training shards' captions in ``prepare``.
        tokenizer_bytes: length of the serialized tokenizer (set by ``prepare``; 0 = unknown).
        vocab_size: vocabulary size: the target when training (``hard_vocab_limit=False``, so a
            small corpus may give fewer pieces), the actual size after ``prepare``.
        model_type: sentencepiece algorithm used when training a tokenizer.
        context_length: tokens per caption, including the end-of-sequence token (longer ones are cut).
        width, layers, heads, mlp_ratio: the open_clip ``TextTransformer`` encoder.
        pool: ``"eos"`` (the causal tower's end-of-sequence token) or ``"mean"`` (mean over tokens).
        pretrained: optional local open_clip text-tower weights (``.safetensors`` or a torch
            state dict read with ``weights_only=True``); never downloaded.
        decoder_width, decoder_layers, decoder_heads: the causal decoder.
        prefix_tokens: k, the number of prefix tokens made from z (Linear(q -> k * decoder_width)).
        dropout: dropout of the decoder.
        retrieval_bank: captions for retrieval decoding (``sample(method="retrieve")``); ``prepare``
            fills it with up to ``retrieval_bank_size`` distinct training captions when empty.
        retrieval_bank_size: most captions ``prepare`` puts in the bank (0 = none).
    """

    model_config = ConfigDict(extra="forbid")

    tokenizer: str | None = None
    tokenizer_bytes: int = Field(0, ge=0)
    vocab_size: int = Field(256, ge=8, le=65536)
    model_type: Literal["unigram", "bpe"] = "unigram"
    context_length: int = Field(32, ge=2, le=1024)
    width: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    pool: Literal["eos", "mean"] = "eos"
    pretrained: str | None = None
    decoder_width: int = Field(64, ge=8)
    decoder_layers: int = Field(2, ge=1)
    decoder_heads: int = Field(4, ge=1)
    prefix_tokens: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    retrieval_bank: list[str] = Field(default_factory=list)
    retrieval_bank_size: int = Field(1024, ge=0)

    @model_validator(mode="after")
    def _check_heads(self) -> TextConfig:
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.decoder_width % self.decoder_heads:
            raise ValueError(
                f"decoder_width ({self.decoder_width}) must be divisible by decoder_heads ({self.decoder_heads})"
            )
        return self
