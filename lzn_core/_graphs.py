"""The single-edge callables of :mod:`lzn_core.compose`: Represent, Classify, Generate, Decode.

Shapes: request of B items, latent dimension q, anchor bank of M rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ._request import (
    CLASS_ZONE_STEPS,
    LATENT,
    WHAT,
    Prediction,
    as_batch,
    backbone,
    chunks,
    concat,
    decoder_condition,
    inference_mode,
    make_generator,
    model_device,
    sample_with,
    trains_decoder,
    zone_latents,
)
from .errors import ComposeError

if TYPE_CHECKING:  # pragma: no cover
    from .model import LZNModel

__all__ = [
    "Graph",
    "Represent",
    "Classify",
    "Generate",
    "Decode",
    "Prediction",
    "LATENT",
    "make_generator",
    "trains_decoder",
]

# ----------------------------------------------------------------------------- the callables


class Graph:
    """A single edge ``source -> target`` bound to a model; subclasses define ``__call__``.

    Options given to :func:`lzn_core.compose` become the defaults of the call's keyword
    arguments; a keyword passed to the call wins. ``DEFAULTS`` holds the paper's defaults.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: LZNModel, source: str, target: str, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            raise ComposeError(
                f"unknown option(s) {', '.join(unknown)} for '{source} -> {target}' "
                f"({type(self).__name__}); options: {', '.join(self.DEFAULTS)}"
            )
        self.model, self.source, self.target = model, source, target
        self.options = {**self.DEFAULTS, **options}

    @property
    def edge(self) -> str:
        """The edge as a string, ``"image -> label"``."""
        return f"{self.source} -> {self.target}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError  # each edge kind defines its own signature

    def _opts(self, given: dict[str, Any]) -> dict[str, Any]:
        return {k: (given[k] if given.get(k) is not None else v) for k, v in self.options.items()}

    def _zone(self, x: Any, alpha: float, o: dict[str, Any], gen: torch.Generator | None) -> torch.Tensor:
        """Latents (B, q) of the source batch ``x`` at noise scale α, zoned with the bank (``o``)."""
        steps, bank = o["latent_steps"], o["bank_size"]
        return zone_latents(
            self.model, self.source, x, alpha=alpha, latent_steps=steps, bank_size=bank, gen=gen
        )

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.edge!r}, {opts})"


class Represent(Graph):
    """``X -> latent``: representations of a batch of X, (B, d).

    ``what``: "latent" (z at noise scale α, zoned with X's bank: (B, q)), "anchor" (the encoder
    output, (B, q)) or "backbone" (the encoder's pooled features before its latent blocks,
    (B, d); PAPER §1.6: the representation used for linear probes).
    """

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        what="latent", alpha=0.0, latent_steps=None, batch_size=256, bank_size=None, progress=False
    )

    def __call__(
        self,
        batch: Any,
        *,
        what: str | None = None,
        alpha: float | None = None,
        latent_steps: int | None = None,
        batch_size: int | None = None,
        bank_size: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Representations (B, d) of ``batch`` (images (B, C, H, W), labels (B,), texts list[str])."""
        o = self._opts(locals())
        if o["what"] not in WHAT:
            raise ComposeError(f"unknown representation what={o['what']!r}; choose one of {', '.join(WHAT)}")
        gen = make_generator(seed, generator)
        batch = as_batch(batch, model_device(self.model))
        parts = []
        with inference_mode(self.model):
            for rows in chunks(len(batch), o["batch_size"], o["progress"], self.edge):
                x = batch[rows]
                if o["what"] == "anchor":
                    parts.append(self.model.encode(self.source, x))
                elif o["what"] == "backbone":
                    parts.append(backbone(self.model, self.source, x))
                else:
                    parts.append(self._zone(x, o["alpha"], o, gen))
        return concat(parts)


class Classify(Graph):
    """``X -> Y`` with a zonal Y (``image -> label``): latents of X (or given z for ``latent -> Y``),
    reverse flow over Y's anchors (``steps`` Euler steps, uniform weights), nearest anchor.

    Returns a :class:`Prediction` (labels (B,), confidence (B,)). α = 0 (the zone centre) and a
    large inference batch (``batch_size`` with ``bank_size=0``, or the bank) give the best accuracy.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        alpha=0.0, steps=CLASS_ZONE_STEPS, latent_steps=None, batch_size=256, bank_size=None, progress=False
    )

    def __call__(
        self,
        batch: Any,
        *,
        alpha: float | None = None,
        steps: int | None = None,
        latent_steps: int | None = None,
        batch_size: int | None = None,
        bank_size: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> Prediction:
        """Classify ``batch`` (a batch of the source modality, or latents z (B, q) from ``latent``)."""
        o = self._opts(locals())
        gen = make_generator(seed, generator)
        batch = as_batch(batch, model_device(self.model))
        dec: Any = self.model.decoders[self.target]
        parts = []
        with inference_mode(self.model):
            for rows in chunks(len(batch), o["batch_size"], o["progress"], self.edge):
                x = batch[rows]
                z = x if self.source == LATENT else self._zone(x, o["alpha"], o, gen)
                out = dec.sample(z, steps=o["steps"])
                labels, conf = (
                    out if isinstance(out, tuple) else (out, torch.full((z.shape[0],), float("nan")))
                )
                parts.append(Prediction(labels, conf.float()))
        return concat(parts)


class Generate(Graph):
    """``latent -> X``: z ~ N(0, I) (or the given z (B, q)) -> X's generative decoder.

    When the recipe conditions X's decoder on a zonal modality (case 3's label one-hot), the
    condition is that modality's decoding of z (PAPER §1.4), unless ``condition=`` gives it.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = dict(steps=None, batch_size=256, progress=False)

    def __call__(
        self,
        n_or_z: int | torch.Tensor,
        *,
        condition: Any = None,
        steps: int | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        **sample_kw: Any,
    ) -> Any:
        """Generate ``n`` items (or one per row of z); ``sample_kw`` go to the decoder's ``sample``."""
        o = self._opts({"steps": steps, "batch_size": batch_size, "progress": progress})
        gen = make_generator(seed, generator)
        dev = model_device(self.model)
        if isinstance(n_or_z, torch.Tensor) and n_or_z.is_floating_point():
            z = n_or_z.to(dev)
            if z.dim() != 2 or z.shape[1] != self.model.latent_dim:
                raise ComposeError(f"z must be (B, {self.model.latent_dim}), got {tuple(z.shape)}")
        else:
            if int(n_or_z) < 1:
                raise ComposeError(f"number of samples must be >= 1, got {n_or_z}")
            z = torch.randn((int(n_or_z), self.model.latent_dim), generator=gen).to(dev)
        cond_all = None if condition is None else as_batch(condition, dev)
        dec: Any = self.model.decoders[self.target]
        parts = []
        with inference_mode(self.model):
            for rows in chunks(z.shape[0], o["batch_size"], o["progress"], self.edge):
                given = None if cond_all is None else cond_all[rows]
                cond = decoder_condition(self.model, self.target, LATENT, None, z[rows], given)
                parts.append(sample_with(dec, z[rows], cond, gen, steps=o["steps"], **sample_kw))
        return concat(parts)


class Decode(Graph):
    """``X -> Y`` with a generative Y: latents of X -> Y's decoder.

    ``label -> image``: class-zone latents (α = 1) with the one-hot conditioning when the model
    was trained with it; ``text -> image``, ``image -> text``: the source's latents zoned with its
    bank. When the target's decoder is conditioned on a third modality (``text -> image`` with a
    label-conditioned image decoder), z keeps the requested α (a sample from the caption's zone)
    but the condition is read at the zone centre (α = 0), where the label flow classifies best
    (PAPER §1.6): it is the source item's class, not that of a random point of its zone.

    ``X -> X``: reconstruction (α = 0, the zone centre, by default). ``mode="invert"`` (X -> X
    only) is the paper's reconstruction metric: invert the decoder's ODE to noise conditioned on
    z, then regenerate from it (``decoder.reconstruct``).
    """

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        alpha=None,
        latent_steps=None,
        steps=None,
        mode="latent",
        batch_size=256,
        bank_size=None,
        progress=False,
    )

    def __call__(
        self,
        batch: Any,
        *,
        condition: Any = None,
        alpha: float | None = None,
        latent_steps: int | None = None,
        steps: int | None = None,
        mode: str | None = None,
        batch_size: int | None = None,
        bank_size: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        **sample_kw: Any,
    ) -> Any:
        """Decode ``batch`` of the source modality into the target modality (B items)."""
        o = self._opts({k: v for k, v in locals().items() if k in self.DEFAULTS})
        alpha = o["alpha"] if o["alpha"] is not None else (0.0 if self.source == self.target else 1.0)
        if o["mode"] not in ("latent", "invert"):
            raise ComposeError(f"unknown mode {o['mode']!r}; choose 'latent' or 'invert'")
        dec: Any = self.model.decoders[self.target]
        if o["mode"] == "invert" and (
            self.source != self.target or not callable(getattr(dec, "reconstruct", None))
        ):
            raise ComposeError(
                f"mode='invert' needs 'X -> X' and a decoder with reconstruct(); got '{self.edge}'"
            )
        gen = make_generator(seed, generator)
        batch = as_batch(batch, model_device(self.model))
        cond_all = None if condition is None else as_batch(condition, model_device(self.model))
        parts = []
        with inference_mode(self.model):
            for rows in chunks(len(batch), o["batch_size"], o["progress"], self.edge):
                x = batch[rows]
                z = self._zone(x, alpha, o, gen)
                given = None if cond_all is None else cond_all[rows]
                z_read = z
                if given is None and alpha != 0.0 and self._reads_condition():
                    z_read = self._zone(x, 0.0, o, gen)  # the source's class: read at its zone centre
                cond = decoder_condition(self.model, self.target, self.source, x, z_read, given)
                if o["mode"] == "invert":
                    parts.append(dec.reconstruct(x, z, cond, steps=o["steps"], **sample_kw))
                else:
                    parts.append(sample_with(dec, z, cond, gen, steps=o["steps"], **sample_kw))
        return concat(parts)

    def _reads_condition(self) -> bool:
        """True when the target's decoder is conditioned on a modality read from z (not the source)."""
        return self.model.generate_condition(self.target) not in (None, self.source)
