"""The ``text`` modality's plugin module (entry point ``text = "lzn_text.plugin"``).

Importing this module is cheap (no torch, sentencepiece or open_clip); the builders
import them. Captions come from the ``txt`` key of the shards; a batch is ``list[str]``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lzn_core.hookspecs import hookimpl
from lzn_core.modality import ModalitySpec

from .config import TextConfig


def decode_sample(data: bytes) -> str:
    """One caption from the raw bytes of a ``txt`` shard entry.

    Raises:
        ValueError: the bytes are not utf-8 (``"text sample is not valid utf-8 ..."``), or the
            caption is empty after stripping whitespace (``"empty caption ..."``; the loader skips
            and counts such samples like any corrupt one).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"text sample must be bytes, got {type(data).__name__}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"text sample is not valid utf-8 (byte {exc.start}: {exc.reason})") from None
    text = text.strip()
    if not text:
        raise ValueError("empty caption (the text sample has no characters)")
    return text


def collate(items: Sequence[str]) -> list[str]:
    """A batch of captions is the list of its strings."""
    return [str(t) for t in items]


def as_batch(request: Any) -> Any:
    """``ModalitySpec.as_batch``: one caption (a ``str``) becomes ``[caption]``; a list passes unchanged."""
    return [request] if isinstance(request, str) else request


_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEMPLATES = (
    "a handwritten {word}",
    "the digit {num}, written by hand",
    "a small picture of the number {word}",
)
EXAMPLE_CAPTIONS: tuple[str, ...] = tuple(
    t.format(word=w, num=i) for t in _TEMPLATES for i, w in enumerate(_WORDS)
)
"""The corpus of the bundled example tokenizer (``example_tokenizer.model``)."""

EXAMPLE_TOKENIZER = Path(__file__).with_name("example_tokenizer.model")
"""``train_tokenizer(EXAMPLE_CAPTIONS, vocab_size=128, model_type="bpe")``, shipped for the conformance kit."""

EXAMPLE_CONFIG = {
    "tokenizer": str(EXAMPLE_TOKENIZER),
    "tokenizer_bytes": 1640,
    "vocab_size": 128,
    "context_length": 12,
    "width": 16,
    "layers": 1,
    "heads": 2,
    "decoder_width": 16,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "prefix_tokens": 2,
}
"""A small valid config over the example tokenizer (conformance kit, docs, tests)."""


def example_items(n: int) -> list[bytes]:
    """``n`` utf-8 captions (raw ``txt`` values) from :data:`EXAMPLE_CAPTIONS`."""
    return [EXAMPLE_CAPTIONS[i % len(EXAMPLE_CAPTIONS)].encode("utf-8") for i in range(n)]


def _bank(captions: list[str], size: int) -> list[str]:
    """Up to ``size`` distinct captions, sorted; a fixed-seed subset when there are more."""
    distinct = sorted(set(captions))
    if len(distinct) > size:
        distinct = sorted(random.Random(0).sample(distinct, size))
    return distinct


def _captions(samples: Iterable[bytes]) -> list[str]:
    """The usable captions among raw ``txt`` values (undecodable or empty ones are passed over,
    as the loader skips them)."""
    out = []
    for raw in samples:
        try:
            out.append(decode_sample(raw))
        except ValueError:
            continue
    if not out:
        raise ValueError("text: the training shards hold no usable 'txt' caption to train a tokenizer from")
    return out


def prepare(config: TextConfig, samples: Iterable[bytes]) -> TextConfig:
    """Complete a text config from the training captions before the model is built.

    * ``tokenizer`` empty: train a sentencepiece model on the shards' captions, cache it
      (``tokenizer.cache_tokenizer``) and point ``tokenizer`` at it;
    * set ``tokenizer_bytes`` and ``vocab_size`` from the tokenizer;
    * fill an empty ``retrieval_bank`` with distinct training captions.

    A config whose ``tokenizer`` file is gone but whose ``tokenizer_bytes`` is set (a prepared
    recipe on another machine) is returned unchanged: the tokenizer comes with the weights.

    Args:
        config: the recipe's text config.
        samples: the raw ``txt`` values of the training shards (read only when needed).

    Raises:
        FileNotFoundError: ``tokenizer`` names a missing file (and the config was never prepared).
        ValueError: no caption to train from, or a bad tokenizer file.
    """
    from .tokenizer import cache_tokenizer, load_processor, train_tokenizer

    captions: list[str] | None = None
    need_bank = not config.retrieval_bank and config.retrieval_bank_size > 0
    if config.tokenizer:
        path = Path(config.tokenizer)
        if not path.is_file():
            if config.tokenizer_bytes:
                return config
            raise FileNotFoundError(f"text: tokenizer file {config.tokenizer!r} not found")
        proto = path.read_bytes()
    else:
        captions = _captions(samples)
        proto = train_tokenizer(captions, vocab_size=config.vocab_size, model_type=config.model_type)
        path = cache_tokenizer(proto)
    sp = load_processor(proto)
    update: dict[str, Any] = {
        "tokenizer": str(path),
        "tokenizer_bytes": len(proto),
        "vocab_size": int(sp.GetPieceSize()),
    }
    if need_bank:
        try:
            captions = captions if captions is not None else _captions(samples)
        except ValueError:
            captions = []  # no training data at hand: no retrieval bank
        if captions:
            update["retrieval_bank"] = _bank(captions, config.retrieval_bank_size)
    return TextConfig.model_validate({**config.model_dump(), **update})


def build_encoder(config: TextConfig, latent_dim: int) -> Any:
    """``TextEncoder(config, q)``: captions -> anchors ``(B, q)``."""
    from .encoder import TextEncoder

    return TextEncoder(config, latent_dim)


def build_decoder(config: TextConfig, latent_dim: int, condition_dim: int = 0) -> Any:
    """``TextDecoder(config, q, condition_dim)``: latents ``(B, q)`` -> captions (generative)."""
    from .decoder import TextDecoder

    return TextDecoder(config, latent_dim, condition_dim)


SPEC = ModalitySpec(
    name="text",
    config=TextConfig,
    build_encoder=build_encoder,
    build_decoder=build_decoder,
    shard_keys=("txt",),
    decode_sample=decode_sample,
    collate=collate,
    prepare=prepare,
    accepts_condition=True,
    description="captions: sentencepiece + open_clip TextTransformer; causal decoder conditioned on z",
    example_config=EXAMPLE_CONFIG,
    example_items=example_items,
    as_batch=as_batch,
)


@hookimpl
def lzn_register_modalities(register: Any) -> None:
    """Register the ``text`` modality."""
    register(SPEC)
