"""Text decoder: a small causal transformer conditioned on the latent z through prefix tokens.

Sequence layout (T = context_length): ``[p_1 .. p_k, bos, t_1 .. t_n]`` where the k prefix
tokens are ``Linear(q -> k * width)(z)`` (plus a projection of the optional conditioning
vector); the outputs at ``bos, t_1 .. t_n`` predict ``t_1 .. t_n, eos``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .encoder import _tokenizer_from_config
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

Method = str  # "greedy" | "temperature" | "retrieve"


class TextDecoder(nn.Module):
    """Causal language model ``p(text | z, cond)`` with teacher-forced training.

    Capabilities (:mod:`lzn_core.modality`): ``BindsEncoder`` (retrieval decoding reads the
    encoder), ``PreviewWriter`` (a text file of captions).

    Args:
        config: the modality config.
        latent_dim: q.
        condition_dim: d, size of the conditioning vector added to the prefix tokens (0: none).
    """

    kind = "generative"

    def __init__(self, config: TextConfig, latent_dim: int, condition_dim: int = 0) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = latent_dim
        self.condition_dim = condition_dim
        w, k, length = config.decoder_width, config.prefix_tokens, config.context_length
        self.tokenizer = _tokenizer_from_config(config)
        self.prefix = nn.Linear(latent_dim, k * w)
        self.cond = nn.Linear(condition_dim, w) if condition_dim else None
        self.token_embedding = nn.Embedding(config.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.randn(k + length, w) * 0.01)
        layer = nn.TransformerEncoderLayer(
            w,
            config.decoder_heads,
            4 * w,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.decoder_layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(w)
        self.head = nn.Linear(w, config.vocab_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self._encoder: tuple[nn.Module, ...] = ()

    def bind(self, encoder: nn.Module) -> None:
        """Remember the text encoder (not registered as a submodule) for retrieval decoding."""
        self._encoder = (encoder,)

    def _prefix(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Prefix tokens ``(B, k, width)`` from z ``(B, q)`` and cond ``(B, d)``."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"text decoder: z must be (B, {self.latent_dim}), got {tuple(z.shape)}")
        p = self.prefix(z).view(z.shape[0], self.config.prefix_tokens, self.config.decoder_width)
        if self.cond is not None:
            if cond is None:
                raise ValueError(
                    f"text decoder: built with condition_dim={self.condition_dim} but no cond was given"
                )
            p = p + self.cond(cond.to(p.dtype)).unsqueeze(1)
        elif cond is not None:
            raise ValueError("text decoder: got cond but the decoder was built without a condition")
        return p

    def _logits(self, prefix: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(B, T, V)`` at the T input positions ``inputs: (B, T)``."""
        k = prefix.shape[1]
        x = torch.cat([prefix, self.token_embedding(inputs)], dim=1)
        n = x.shape[1]
        x = x + self.positional_embedding[:n]
        mask = torch.full((n, n), float("-inf"), device=x.device).triu_(1)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.ln_final(x[:, k:]))

    def loss(
        self,
        z: torch.Tensor,
        texts: Sequence[str],
        cond: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy: mean over each caption's target tokens (pieces + eos),
        then mean over the B captions (so W ranks' losses average to the one-process loss).

        Args:
            z: latents ``(B, q)``.
            texts: B captions.
            cond: optional conditioning ``(B, d)``.
            generator: unused (the loss has no randomness); accepted for the decoder contract.
            rows: ``(start, total)``: this batch is rows ``[start, start + B)`` of a global batch
                of ``total`` (checked only: the loss of a row does not depend on the others).
        """
        texts = list(texts)
        b = z.shape[0]
        if len(texts) != b:
            raise ValueError(f"text decoder: {b} latents but {len(texts)} captions")
        if rows is not None and not (0 <= rows[0] and rows[0] + b <= rows[1]):
            raise ValueError(
                f"text decoder: rows=(start, total)={tuple(rows)} does not contain a batch of {b}"
            )
        targets = self.tokenizer.encode(texts, self.config.context_length).to(z.device)
        inputs = torch.cat([torch.full_like(targets[:, :1], BOS_ID), targets[:, :-1]], dim=1)
        logits = self._logits(self._prefix(z, cond), inputs).float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
        keep = (targets != PAD_ID).to(nll.dtype)
        return ((nll * keep).sum(1) / keep.sum(1)).mean()

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        max_len: int | None = None,
        method: Method = "greedy",
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        steps: int = 100,
    ) -> list[str]:
        """Captions of latents ``z: (B, q)``.

        Args:
            z: latents ``(B, q)``.
            cond: optional conditioning ``(B, d)``.
            max_len: most tokens to generate (default and cap: ``context_length``).
            method: ``"greedy"`` (argmax), ``"temperature"`` (softmax(logits / temperature),
                optionally restricted to the ``top_k`` best), or ``"retrieve"`` (the caption of
                the nearest anchor of the config's ``retrieval_bank``, see :meth:`retrieve`).
            temperature: > 0, for ``"temperature"``.
            top_k: keep the k most likely tokens (``"temperature"``).
            generator: random source of ``"temperature"``.
            steps: reverse-flow steps of ``"retrieve"`` (unused by the other methods).
        """
        if method == "retrieve":
            return self.retrieve(z, steps=steps)
        if method not in ("greedy", "temperature"):
            raise ValueError(f"text decoder: unknown method {method!r}; use greedy, temperature or retrieve")
        if method == "temperature" and not temperature > 0:
            raise ValueError(f"text decoder: temperature must be > 0, got {temperature}")
        length = self.config.context_length
        max_len = length if max_len is None else min(int(max_len), length)
        prefix = self._prefix(z, cond)
        seq = torch.full((z.shape[0], 1), BOS_ID, dtype=torch.long, device=z.device)
        done = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        for _ in range(max_len):
            logits = self._logits(prefix, seq)[:, -1].float()
            logits[:, [PAD_ID, BOS_ID, UNK_ID]] = float("-inf")
            nxt = self._pick(logits, method, temperature, top_k, generator)
            nxt = nxt.masked_fill(done, PAD_ID)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            done |= nxt == EOS_ID
            if bool(done.all()):
                break
        return self.tokenizer.decode(seq[:, 1:].tolist())

    def save_preview(self, texts: Sequence[str], path: str | Path, *, nrow: int | None = None) -> Path:
        """``PreviewWriter``: the captions, one per line (``nrow`` per paragraph), in ``path`` as ``.txt``."""
        path = Path(path).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(texts)
        n = nrow or len(texts) or 1
        blocks = ["\n".join(texts[i : i + n]) for i in range(0, len(texts), n)]
        path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
        return path

    @torch.no_grad()
    def retrieve(
        self,
        z: torch.Tensor,
        bank_anchors: torch.Tensor | None = None,
        bank_texts: Sequence[str] | None = None,
        *,
        steps: int = 100,
        weights: torch.Tensor | None = None,
        return_index: bool = False,
    ) -> Any:
        """Retrieval decoding: flow z to the text anchor bank, return the nearest anchor's caption.

        ``zoning.assign`` runs the reverse flow (tau = 1 -> 0) of ``z: (B, q)`` over the bank
        anchors ``(M, q)``; the caption of the anchor nearest to the end point is the answer.

        Args:
            z: latents ``(B, q)``.
            bank_anchors: ``(M, q)`` text anchors; default: the bound encoder's anchors of
                ``bank_texts``.
            bank_texts: the M captions; default: the config's ``retrieval_bank``.
            steps: Euler steps of the reverse flow.
            weights: optional mixture weights ``(M,)``.
            return_index: also return the bank indices ``(B,)``.
        """
        texts = list(self.config.retrieval_bank if bank_texts is None else bank_texts)
        if not texts:
            raise ValueError(
                "text decoder: retrieval needs a caption bank (bank_texts, or the config's retrieval_bank "
                "that prepare() fills from the training shards)"
            )
        if bank_anchors is None:
            if not self._encoder:
                raise ValueError("text decoder: retrieval without bank_anchors needs bind(encoder) first")
            bank_anchors = self._encoder[0](texts)
        if bank_anchors.shape[0] != len(texts):
            raise ValueError(
                f"text decoder: {bank_anchors.shape[0]} bank anchors but {len(texts)} bank texts"
            )
        from lzn_core import zoning

        bank_anchors = bank_anchors.to(z.dtype)
        final = zoning.assign(z, bank_anchors, steps=steps, weights=weights).final
        index = torch.cdist(final, bank_anchors).argmin(dim=1)
        out = [texts[i] for i in index.tolist()]
        return (out, index) if return_index else out

    @staticmethod
    def _pick(
        logits: torch.Tensor, method: Method, temperature: float, top_k: int | None, generator: Any
    ) -> torch.Tensor:
        """Next token ``(B,)`` from logits ``(B, V)``."""
        if method == "greedy":
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(min(int(top_k), logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)
