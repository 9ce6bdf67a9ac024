"""The modality contract: what a plugin gives the core.

A modality (image, label, text, audio, ...) is an encoder that maps a batch to
anchors ``(B, q)`` in the shared latent space and a decoder that reads latents
``z: (B, q)``. Plugins describe one with a frozen :class:`ModalitySpec` and
hand it to ``register`` in their ``lzn_register_modalities`` hook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

Batch = Any
"""Whatever a modality's ``collate`` returns (a tensor for images, a list of str for text, ...)."""


@runtime_checkable
class Encoder(Protocol):
    """An ``nn.Module`` with ``forward(batch) -> anchors (B, q)``.

    Optional members the core uses when present:

    * ``bank() -> Tensor (M, q)``: a fixed anchor set that *is* the modality's
      anchor bank (the label plugin's class matrix). Modalities without it get a
      bank of training anchors kept by the model (``LZNModel.set_bank``).
    * ``condition(batch) -> Tensor (B, d)`` and ``condition_dim: int``: the
      vector another decoder is conditioned on (the label's one-hot, case 3).
    """

    def __call__(self, batch: Batch) -> Any: ...


@runtime_checkable
class Decoder(Protocol):
    """An ``nn.Module`` that reads latents ``z: (B, q)``.

    * ``kind``: ``"generative"`` (decoder trained with ``loss``; image, text) or
      ``"zonal"`` (label: flow ``z`` to the anchors, nearest anchor; no trained part).
    * ``loss(z, batch, cond=None) -> scalar``: training loss given latents.
    * ``sample(z, cond=None, **kw) -> batch``: decode latents.
    * optional ``bind(encoder)``: called once after both sides are built, for a
      decoder that reads its encoder's anchors (the label flow).
    """

    kind: str

    def loss(self, z: Any, batch: Batch, cond: Any = None) -> Any: ...

    def sample(self, z: Any, cond: Any = None, **kw: Any) -> Batch: ...


def _default_collate(items: Sequence[Any]) -> Any:
    import torch

    if isinstance(items[0], torch.Tensor):
        return torch.stack(list(items))
    if isinstance(items[0], (int, float)):
        return torch.tensor(list(items))
    return list(items)


@dataclass(frozen=True)
class ModalitySpec:
    """What a plugin registers for one modality.

    Attributes:
        name: modality name used in recipes and ``compose`` ("image", "label", ...).
        config: the plugin's pydantic model (``extra="forbid"``); recipes'
            ``modalities.<m>.config`` is validated by it.
        build_encoder: ``(config, latent_dim q) -> Encoder``.
        build_decoder: ``(config, latent_dim q) -> Decoder``.
        shard_keys: webdataset keys it reads, in order of preference (``("png", "jpg")``);
            the loader takes the first one a sample has.
        decode_sample: raw shard bytes -> one item (runs in loader workers); raises
            ``ValueError`` with a clear message on corrupt input.
        collate: list of items -> batch (default: ``torch.stack`` / ``torch.tensor`` / list).
        augment: optional ``(batch, config, *, generator=None) -> batch`` random view (case 2's
            SimCLR views); randomness from ``generator`` so a resumed run sees the same views.
        prepare: optional ``(config, train_pattern) -> config`` run once before building
            (e.g. train a tokenizer from the training shards); returns the completed config.
        version: contract version the plugin was written for.
        description: one line for ``lzn plugins``.
        example_config: keyword arguments that make a small valid ``config`` (the
            required fields, small sizes); the conformance kit
            (:func:`lzn_core.testing.check_modality`) and docs build from it.
        example_items: ``n -> list[bytes]``: ``n`` raw shard values (as stored under
            ``shard_keys[0]``) that ``decode_sample`` accepts and that fit
            ``example_config``; the conformance kit decodes and collates them.
    """

    name: str
    config: type[BaseModel]
    build_encoder: Callable[[Any, int], Any]
    build_decoder: Callable[[Any, int], Any]
    shard_keys: tuple[str, ...]
    decode_sample: Callable[[bytes], Any]
    collate: Callable[[Sequence[Any]], Any] = field(default=_default_collate)
    augment: Callable[[Any, Any], Any] | None = None
    prepare: Callable[[Any, str], Any] | None = None
    version: str = "1"
    description: str = ""
    example_config: Mapping[str, Any] = field(default_factory=dict)
    example_items: Callable[[int], list[bytes]] | None = None

    def __post_init__(self) -> None:
        from .errors import ContractError

        if not self.name or not self.name.isidentifier():
            raise ContractError(f"modality name must be an identifier, got {self.name!r}")
        if not (isinstance(self.config, type) and issubclass(self.config, BaseModel)):
            raise ContractError(f"modality {self.name!r}: config must be a pydantic BaseModel subclass")
        if self.config.model_config.get("extra") != "forbid":
            raise ContractError(f"modality {self.name!r}: config model must set extra='forbid'")
        if not self.shard_keys:
            raise ContractError(f"modality {self.name!r}: shard_keys must name at least one key")


DecoderKind = Literal["generative", "zonal"]
