"""The modality contract: everything the framework calls on a plugin, declared in one place.

A modality (image, label, text, audio, ...) is an encoder that maps a batch to anchors
``(B, q)`` in the shared latent space and a decoder that reads latents ``z: (B, q)``.
A plugin describes one with a frozen :class:`ModalitySpec` and hands it to ``register``
in its ``lzn_register_modalities`` hook (:mod:`lzn_core.hookspecs`).

What the framework calls, and where (every call below is made by the conformance kit,
:func:`lzn_core.testing.check_modality`, in the same way):

===============================================  ==============================================
call                                             made by
===============================================  ==============================================
``spec.prepare(config, samples)``                ``LZNModel`` before building (once per run)
``spec.build_encoder(config, q)``                ``LZNModel``
``spec.build_decoder(config, q)``                ``LZNModel``; with ``condition_dim=d`` when a
                                                 ``generate`` task conditions it (only for specs
                                                 with ``accepts_condition=True``)
``spec.decode_sample(raw) -> item``              the data loader, per sample and shard key
``spec.validate_item(item, config)``             the data loader, after decoding
``spec.collate(items) -> batch``                 the data loader, per batch
``spec.as_batch(request) -> batch``              compose, on every request of the modality
``spec.transform(batch, config, generator=,      training, every batch before it is encoded
rows=)``
``spec.augment(batch, config, generator=...)``   training, two-view alignment (case 2)
``encoder(batch) -> (B, q)``                     training, compose, evaluation
``decoder.loss(z, batch, cond, generator=,       training (``generate`` tasks)
rows=)``
``decoder.sample(z, cond, steps=, generator=)``  compose, evaluation
``batch[lo:hi]``                                 two-pass training (``train.micro_batch_size``):
                                                 encoder and loss on row blocks; rows must be
                                                 independent (no batch statistics)
``batch.to(device)`` (:class:`MovesToDevice`)    :func:`move_batch`: training before the step,
                                                 ``LZNModel.encode`` / ``condition`` (so compose,
                                                 evaluation and bank filling), compose requests
===============================================  ==============================================

Batches (:data:`Batch`): whatever ``collate`` returns. A tensor, a list (of str, or of tensors
that the plugin's encoder places on its own device), or a *custom batch type* of the plugin (a
padded tensor + a mask, points of different counts, ...). A custom batch type supports:

* ``len(batch)``: the number of rows B;
* ``batch[lo:hi]``: rows lo..hi as a batch of the same type, independent of the other rows
  (two-pass steps encode and decode row blocks; a moved batch's rows stay on its device);
* pickling: loader workers send batches to the training process;
* ``to(device) -> batch`` (:class:`MovesToDevice`) when it holds tensors: the same rows with
  every tensor on ``device``, returned (not moved in place and ``None`` returned). The framework
  calls it (:func:`move_batch`) before any encoder, decoder loss or condition sees the batch, so
  a plugin never meets a CPU batch on a GPU model. ``transform`` and ``augment`` then get a
  generator on that device.

The conformance kit checks all four on CPU (``to("meta")`` stands in for a GPU: a tensor left
behind, or made on the CPU inside the encoder, fails there as it would on a GPU), and that the
framework's entry points hand the encoder and the loss moved batches only (a spy batch).

Optional capabilities are named protocols below; the framework tests for one with
``isinstance(module, Capability)`` and never probes attribute names:

* encoder: :class:`AnchorBank` (a fixed anchor set, e.g. the label classes),
  :class:`ConditionProvider` (the vector that conditions another decoder, e.g. the label
  one-hot; its size is ``spec.condition_dim(config)``), :class:`BackboneFeatures`
  (features before the latent blocks, for linear probes);
* decoder: :class:`BindsEncoder` (reads its own encoder, e.g. the label flow reads the class
  anchors), :class:`Reconstructs` (inversion: the paper's reconstruction error),
  :class:`PreviewWriter` (sample grids written during training), :class:`SampleJudge`
  (modality-specific scores of generated items against real ones).

Decoder kinds (:data:`DecoderKind`): ``"generative"`` decoders are trained by ``generate``
tasks through ``loss`` and decode with ``sample``; a ``"zonal"`` decoder has nothing to
train: ``sample(z)`` flows z to the modality's anchor bank and returns the index of the
zone it lands in, ``(B,)`` int64 (so the items of a zonal modality are bank indices, e.g.
class ids); the core implements it once, :class:`lzn_core.model.ZonalDecoder` (a plugin's
``build_decoder`` returns one, with its default number of steps); ``"none"`` is an
encoder-only modality (no decoder is ever called).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from .errors import ContractError

__all__ = [
    "Batch",
    "MovesToDevice",
    "move_batch",
    "DecoderKind",
    "DECODER_KINDS",
    "Encoder",
    "Decoder",
    "AnchorBank",
    "ConditionProvider",
    "BackboneFeatures",
    "BindsEncoder",
    "Reconstructs",
    "PreviewWriter",
    "SampleJudge",
    "ModalitySpec",
    "LOSS_KEYWORDS",
    "SAMPLE_KEYWORDS",
]

Batch = Any
"""Whatever a modality's ``collate`` returns (a tensor for images, a list of str for text, a
custom batch type: the module doc says what one supports)."""


@runtime_checkable
class MovesToDevice(Protocol):
    """Batch capability: a batch that holds tensors moves itself (tensors have it too)."""

    def to(self, device: Any) -> Any:
        """The same rows with every tensor on ``device``; a new batch (or ``self``), never None."""
        ...


def move_batch(batch: Batch, device: Any) -> Batch:
    """``batch`` on ``device``: ``batch.to(device)`` for a tensor or a :class:`MovesToDevice`
    batch type; any other batch (a list of str, or of tensors the encoder places itself) as it is.

    This is the framework's one rule for where a batch goes (training, ``LZNModel.encode`` and
    ``condition``, compose requests).

    Raises:
        ContractError: ``to`` returned None (a batch type that moves in place must return self).
    """
    if not isinstance(batch, MovesToDevice):
        return batch
    moved = batch.to(device)
    if moved is None:
        raise ContractError(
            f"{type(batch).__name__}.to(device) returned None: return the moved batch "
            "(lzn_core.modality: custom batch types)"
        )
    return moved


DecoderKind = Literal["generative", "zonal", "none"]
DECODER_KINDS: tuple[str, ...] = ("generative", "zonal", "none")

LOSS_KEYWORDS: tuple[str, ...] = ("generator", "rows")
"""Keyword arguments training passes to every ``Decoder.loss`` call."""

SAMPLE_KEYWORDS: tuple[str, ...] = ("steps", "generator")
"""Keyword arguments compose and evaluation pass to ``Decoder.sample`` (extra keywords a user
gives to a compose call go to ``sample`` too: the plugin's own options)."""


# ----------------------------------------------------------------------------- the two sides


@runtime_checkable
class Encoder(Protocol):
    """An ``nn.Module``: ``encoder(batch) -> anchors (B, q)``, float, differentiable.

    ``batch`` is what ``spec.collate`` returns (already on the model's device where it holds
    tensors). Anchors are the points a_i of docs/method.md §2; every latent of a batch depends on all
    of them.
    """

    def __call__(self, batch: Batch) -> Any: ...


@runtime_checkable
class Decoder(Protocol):
    """An ``nn.Module`` that reads latents ``z: (B, q)``; see the module doc for the kinds.

    Attributes:
        kind: ``"generative"``, ``"zonal"`` or ``"none"``.
    """

    kind: DecoderKind

    def loss(
        self,
        z: Any,
        batch: Batch,
        cond: Any = None,
        *,
        generator: Any = None,
        rows: tuple[int, int] | None = None,
    ) -> Any:
        """Training loss of a generative decoder: a finite scalar tensor, differentiable in z.

        Args:
            z: latents (B, q) of this rank's rows.
            batch: the same B rows of the modality's batch.
            cond: (B, condition_dim) conditioning vector, or None when the decoder is built
                without one.
            generator: a seeded ``torch.Generator`` (CPU or the model's device): draw every
                random number of the loss from it (e.g. rectified flow's t and ε), so that a
                resumed run and every rank see the same randomness.
            rows: ``(start, total)``: these B rows are rows ``[start, start + B)`` of a global
                batch of ``total`` rows split across ranks. Draw the randomness for ``total``
                rows and use rows ``[start, start + B)``, so that W processes compute what one
                process computes on the whole batch. The loss is a mean over the B rows.
        """
        ...

    def sample(self, z: Any, cond: Any = None, *, steps: int | None = None, generator: Any = None) -> Batch:
        """Decode latents ``z: (B, q)`` to a batch of B items (no autograd needed).

        Args:
            z: latents (B, q).
            cond: (B, condition_dim) or None, as in :meth:`loss`.
            steps: solver steps of an iterative decoder (None: the plugin's default).
            generator: random source of a stochastic decoder (None: the global RNG).

        Returns:
            a batch of B items; a zonal decoder returns (B,) int64 zone indices.
        """
        ...


# ----------------------------------------------------------------------------- capabilities


@runtime_checkable
class AnchorBank(Protocol):
    """Encoder capability: a fixed anchor set that *is* the modality's bank (the label classes).

    Modalities without it get a bank of training anchors kept by the model
    (``LZNModel.set_bank``, filled at the end of training). A bank is the context a small
    inference request is zoned with (zones are defined relative to other anchors).
    """

    def bank(self) -> Any:
        """The anchors (M, q); row k is the anchor of item k (for labels: class k)."""
        ...


@runtime_checkable
class ConditionProvider(Protocol):
    """Encoder capability: the vector another decoder is conditioned on (case 3's one-hot).

    Its size is declared statically by ``ModalitySpec.condition_dim(config)`` (so recipes can
    be validated without building a network); the framework passes that size to the
    conditioned decoder's builder.
    """

    def condition(self, batch: Batch) -> Any:
        """batch of B items -> (B, condition_dim) float."""
        ...


@runtime_checkable
class BackboneFeatures(Protocol):
    """Encoder capability: the representation before the latent blocks (linear probes, docs/method.md §5)."""

    def features(self, batch: Batch) -> Any:
        """batch -> (B, d) float features, pooled over any spatial dimensions."""
        ...


@runtime_checkable
class BindsEncoder(Protocol):
    """Decoder capability: read the modality's own encoder (called once after both are built)."""

    def bind(self, encoder: Any) -> None: ...


@runtime_checkable
class Reconstructs(Protocol):
    """Decoder capability: inversion (the paper's reconstruction error, ``mode="invert"``)."""

    def reconstruct(
        self, batch: Batch, z: Any, cond: Any = None, *, steps: int | None = None, clip: bool = True
    ) -> Batch:
        """Invert the decoder's sampler from ``batch`` to its noise given z, then regenerate.

        Args:
            steps: solver steps (None: the plugin's default).
            clip: keep the regenerated items in the data range, as ``sample`` does (True), or
                return the sampler's end point as it is (False: what the paper's reconstruction
                error scores, :func:`lzn_core.eval.protocol.reconstruction_error`).
        """
        ...


@runtime_checkable
class PreviewWriter(Protocol):
    """Decoder capability: a picture of a batch of decoded items (sample grids during training)."""

    def save_preview(self, batch: Batch, path: str | Path, *, nrow: int | None = None) -> Path:
        """Write ``batch`` to ``path`` (e.g. a PNG grid, ``nrow`` items per row); return the path.

        The framework creates ``path``'s folder before the call (training: ``run/samples/``); the
        plugin writes the file (it may change the suffix, and returns the path it wrote).
        """
        ...


@runtime_checkable
class SampleJudge(Protocol):
    """Decoder capability: modality-specific scores of generated items against real ones.

    Training calls it on class-conditional samples; ``lzn eval`` on those and on samples drawn
    from the prior, and records whatever it returns (e.g. the image decoder's
    ``class_consistency``, and FID/KID with the name of the features they were computed on).
    """

    def judge_samples(
        self,
        samples: Batch,
        classes: Any,
        real: Batch,
        real_classes: Any,
        *,
        held_out: Batch | None = None,
        options: Mapping[str, str] | None = None,
    ) -> Mapping[str, float | int | str]:
        """Scores of B generated ``samples`` given N real items.

        Args:
            samples: B generated items.
            classes: (B,) the classes the samples were generated for (class-conditional), or None:
                the samples were drawn from the prior (distribution scores such as FID).
            real: N real training items.
            real_classes: (N,) their classes, or None when the model has none.
            held_out: real items of another split (the test items), for a real-vs-real reference
                of a distribution score; None when there are none.
            options: the user's settings for this judge (``lzn eval --judge MODALITY.KEY=VALUE``),
                as strings; raise ``ValueError`` naming the keys it reads for one it does not.

        Returns:
            name -> number (or a string saying how numbers were computed, e.g. the features);
            an empty mapping when nothing applies (e.g. no classes to check against).
        """
        ...


# ----------------------------------------------------------------------------- the spec


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
        name: modality name used in recipes (``plugin:``) and ``lzn plugins``.
        config: the plugin's pydantic model (``extra="forbid"``); recipes'
            ``modalities.<m>.config`` is validated by it.
        build_encoder: ``(config, q) -> Encoder`` (an ``nn.Module``).
        build_decoder: ``(config, q) -> Decoder`` (an ``nn.Module``, possibly parameter-free);
            called as ``build_decoder(config, q, condition_dim=d)`` when a ``generate`` task
            conditions the decoder on a vector of size d (``accepts_condition`` must be True).
        shard_keys: webdataset keys it reads, in order of preference (``("png", "jpg")``);
            the loader takes the first one a sample has.
        decode_sample: raw shard bytes -> one item (runs in loader workers). Corrupt input
            raises ``ValueError`` with a message naming the modality or the shard key; any
            other exception is a plugin bug and stops the run.
        validate_item: optional ``(item, config) -> None``: raise ``ValueError`` for an item
            that decodes but does not fit the config (an image of another size, a class index
            out of range); the loader skips and counts it like a corrupt one.
        collate: list of items -> batch (default: ``torch.stack`` / ``torch.tensor`` / list).
        transform: optional ``(batch, config, *, generator, rows) -> batch``: training-time
            augmentation of every training batch before it is encoded (e.g. CIFAR's random
            horizontal flips). Draw the randomness from ``generator`` for ``rows=(start,
            total)`` as ``Decoder.loss`` does, so every rank and a resumed run see the same views.
        augment: optional ``(batch, config, *, generator) -> batch``: a random view (case 2's
            SimCLR views); all randomness from ``generator``.
        prepare: optional ``(config, samples) -> config`` run once before building, e.g. to
            train a tokenizer; ``samples`` is an iterator over the raw values of the
            modality's shard key in the training shards (read lazily: a prepared config need
            not touch it). Returns the completed config (saved with the model).
        condition_dim: optional ``config -> int``: the size of the vector the encoder's
            ``condition(batch)`` returns (:class:`ConditionProvider`); None when the modality
            cannot condition another decoder.
        accepts_condition: True when ``build_decoder`` takes ``condition_dim=`` and the
            decoder reads ``cond`` in ``loss`` and ``sample``.
        version: contract version the plugin was written for ("2": this module).
        description: one line for ``lzn plugins``.
        example_config: keyword arguments of a small valid ``config``; the conformance kit
            builds, trains and serves the modality from it.
        example_items: ``n -> list[bytes]``: n raw shard values (as stored under
            ``shard_keys[0]``) that ``decode_sample`` accepts and that fit ``example_config``.
        as_batch: optional ``request -> batch``: what ``compose`` does with a request of this
            modality before anything else (a decoder's output fed to the next edge of a chain
            included): one item becomes a batch of one (an image ``(C, H, W)`` ->
            ``(1, C, H, W)``, a class ``3`` -> ``tensor([3])``, a string -> ``[string]``), a
            batch passes unchanged. None: every request is a batch already (the core guesses
            nothing from shapes or types).
    """

    name: str
    config: type[BaseModel]
    build_encoder: Callable[..., Any]
    build_decoder: Callable[..., Any]
    shard_keys: tuple[str, ...]
    decode_sample: Callable[[bytes], Any]
    validate_item: Callable[[Any, Any], None] | None = None
    collate: Callable[[Sequence[Any]], Any] = field(default=_default_collate)
    transform: Callable[..., Any] | None = None
    augment: Callable[..., Any] | None = None
    prepare: Callable[[Any, Iterable[bytes]], Any] | None = None
    condition_dim: Callable[[Any], int] | None = None
    accepts_condition: bool = False
    version: str = "2"
    description: str = ""
    example_config: Mapping[str, Any] = field(default_factory=dict)
    example_items: Callable[[int], list[bytes]] | None = None
    as_batch: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ContractError(f"modality name must be an identifier, got {self.name!r}")
        if not (isinstance(self.config, type) and issubclass(self.config, BaseModel)):
            raise ContractError(f"modality {self.name!r}: config must be a pydantic BaseModel subclass")
        if self.config.model_config.get("extra") != "forbid":
            raise ContractError(f"modality {self.name!r}: config model must set extra='forbid'")
        if not self.shard_keys or not all(isinstance(k, str) and k for k in self.shard_keys):
            raise ContractError(f"modality {self.name!r}: shard_keys must name at least one key")

    def build(self, config: Any, latent_dim: int, condition_dim: int = 0) -> tuple[Any, Any]:
        """Build ``(encoder, decoder)`` as the framework does; bind the decoder to its encoder.

        Raises:
            ContractError: a builder returned something that is not an ``nn.Module``, or a
                condition was asked of a decoder that does not accept one.
        """
        from torch import nn

        encoder = self.build_encoder(config, latent_dim)
        if condition_dim:
            if not self.accepts_condition:
                raise ContractError(
                    f"modality {self.name!r}: its decoder takes no conditioning vector "
                    "(ModalitySpec.accepts_condition is False)"
                )
            decoder = self.build_decoder(config, latent_dim, condition_dim=condition_dim)
        else:
            decoder = self.build_decoder(config, latent_dim)
        for what, module in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(module, nn.Module):
                raise ContractError(
                    f"modality {self.name!r}: build_{what} must return a torch.nn.Module, "
                    f"got {type(module).__name__}"
                )
        kind = getattr(decoder, "kind", None)  # the one declared attribute every decoder has
        if kind not in DECODER_KINDS:
            raise ContractError(
                f"modality {self.name!r}: decoder.kind must be one of {', '.join(DECODER_KINDS)}, got {kind!r}"
            )
        if isinstance(decoder, BindsEncoder):
            decoder.bind(encoder)
        return encoder, decoder
