"""Sentencepiece tokenizer of the text modality, kept inside the weights.

The serialized sentencepiece model is a ``uint8`` buffer of a small module
(:class:`TextTokenizer`), so it is saved and restored with the state dict (and
the safetensors export). Every tokenizer uses the fixed special ids
``pad = 0, unk = 1, bos = 2, eos = 3`` (the encoder and decoder are built
with them before any weights are loaded).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_tokenizer(captions: Iterable[str], *, vocab_size: int = 256, model_type: str = "unigram") -> bytes:
    """Train a sentencepiece model on ``captions`` and return its serialized proto.

    Deterministic for a given corpus (no input shuffling, one thread). ``hard_vocab_limit=False``:
    a small corpus gives fewer pieces than ``vocab_size`` instead of failing.

    Raises:
        ValueError: empty corpus, or sentencepiece rejects the settings (message kept).
    """
    import sentencepiece as spm

    corpus = [c.strip() for c in captions if c and c.strip()]
    if not corpus:
        raise ValueError("text tokenizer: cannot train on an empty corpus")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            hard_vocab_limit=False,
            character_coverage=1.0,
            normalization_rule_name="identity",  # no NFKC table: keeps the model a few KB
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ValueError(f"text tokenizer: sentencepiece training failed: {exc}") from exc
    return out.getvalue()


def load_processor(proto: bytes) -> Any:
    """A ``SentencePieceProcessor`` from serialized bytes, checked for the fixed special ids.

    Raises:
        ValueError: the bytes are not a sentencepiece model, or its special ids differ.
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto)
    except Exception as exc:  # sentencepiece raises RuntimeError / OSError by version
        raise ValueError(f"text tokenizer: not a sentencepiece model ({exc})") from exc
    got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
    if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise ValueError(
            f"text tokenizer: special ids (pad, unk, bos, eos) are {got}; the text modality needs "
            f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)} (train with pad_id=0 unk_id=1 bos_id=2 eos_id=3)"
        )
    return sp


def cache_tokenizer(proto: bytes) -> Path:
    """Write ``proto`` to a content-addressed file under ``$LZN_CACHE_DIR`` (or ``~/.cache/lzn``)."""
    root = Path(os.environ.get("LZN_CACHE_DIR") or Path.home() / ".cache" / "lzn") / "text"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"tokenizer-{hashlib.sha256(proto).hexdigest()[:16]}.model"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(proto)
        os.replace(tmp, path)  # atomic: concurrent ranks write the same bytes
    return path


class TextTokenizer(nn.Module):
    """Sentencepiece tokenizer whose model bytes are the buffer ``proto: (n,) uint8``.

    Args:
        num_bytes: length of the serialized model (the buffer is allocated with it so that a
            state dict can be loaded into it).
        proto: the serialized model, or ``None`` to leave the buffer zero until weights are loaded.
    """

    def __init__(self, num_bytes: int, proto: bytes | None = None) -> None:
        super().__init__()
        if proto is not None:
            num_bytes = len(proto)
        self.register_buffer("proto", torch.zeros(num_bytes, dtype=torch.uint8))
        if proto is not None:
            self.proto.copy_(torch.frombuffer(bytearray(proto), dtype=torch.uint8))
        self._cache: tuple[bytes, Any] | None = None

    @property
    def processor(self) -> Any:
        """The ``SentencePieceProcessor`` of the current buffer (parsed again when it changes)."""
        raw = self.proto.detach().cpu().numpy().tobytes()
        if self._cache is None or self._cache[0] != raw:
            if not raw or not any(raw):
                raise ValueError(
                    "text tokenizer: no tokenizer in this model (the 'tokenizer.proto' buffer is empty); "
                    "give `tokenizer:` in the config, run the spec's prepare() on the training shards, "
                    "or load trained weights"
                )
            self._cache = (raw, load_processor(raw))
        return self._cache[1]

    @property
    def vocab_size(self) -> int:
        """Number of pieces."""
        return int(self.processor.GetPieceSize())

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text (no bos/eos)."""
        if isinstance(texts, str):
            raise TypeError("text batch must be a list of str, got a single str")
        return [list(self.processor.EncodeAsIds(t)) for t in texts]

    def encode(self, texts: Sequence[str], length: int) -> torch.Tensor:
        """Token ids ``(B, length)``: pieces cut to ``length - 1``, then eos, then pad (0)."""
        rows = [ids[: length - 1] + [EOS_ID] for ids in self.ids(texts)]
        out = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(self.proto.device)

    def decode(self, ids: Iterable[Sequence[int]]) -> list[str]:
        """Texts of id sequences; stops at the first eos, drops pad/bos."""
        texts = []
        for row in ids:
            row = [int(i) for i in row]
            if EOS_ID in row:
                row = row[: row.index(EOS_ID)]
            texts.append(self.processor.DecodeIds([i for i in row if i not in (PAD_ID, BOS_ID)]))
        return texts
