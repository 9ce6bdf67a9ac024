"""The single-edge callables of a task graph: Represent, Classify, Generate, Decode.

Shapes: a request of B items, latent dimension q. Every latent of a request comes from
:meth:`LZNModel.zone` (the request zoned with the modality's anchor bank); decoders are called
with the keywords of the contract (:class:`lzn_core.modality.Decoder`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

import torch
from tqdm import tqdm

from ..errors import ComposeError, LZNError
from ..latent import sample_prior
from ..modality import BackboneFeatures, ModalitySpec, Reconstructs, move_batch
from ..model import LZNModel

LATENT = "latent"
"""The node name of the shared Gaussian latent space in task graphs."""

WHAT = ("latent", "anchor", "backbone")


class Prediction(NamedTuple):
    """Output of a zonal edge (``image -> label``).

    Attributes:
        labels: (B,) int64, the zone (class) the label flow sends each item's latent to.
        confidence: (B,) float, the zone vote: the share of ``draws`` latents drawn from the
            item's own zone (noise scale ``vote_alpha``) that the label flow sends to the same
            class; NaN when not computed (``draws=0``, or given latents).
    """

    labels: torch.Tensor
    confidence: torch.Tensor


# ----------------------------------------------------------------------------- helpers


def make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """``generator`` if given, else a CPU generator seeded with ``seed``, else None (global RNG)."""
    if generator is not None:
        return generator
    return None if seed is None else torch.Generator().manual_seed(int(seed))


@contextlib.contextmanager
def inference_mode(model: LZNModel) -> Iterator[None]:
    """No autograd and eval mode (dropout off) for the duration; the previous mode is restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def as_batch(batch: Any, device: torch.device, spec: ModalitySpec | None = None) -> Any:
    """A request as a batch on ``device``: the modality's ``spec.as_batch`` says how a request
    becomes a batch (one item -> a batch of one); without it (or for latents, ``spec`` None) the
    request is taken as a batch. Tensors and custom batch types go to ``device``
    (:func:`~lzn_core.modality.move_batch`)."""
    if spec is not None and spec.as_batch is not None:
        batch = spec.as_batch(batch)
    batch = move_batch(batch, device)
    try:
        size = len(batch)
    except TypeError:  # no __len__, or a 0-d tensor
        size = 0
    if size == 0:
        raise ComposeError(
            f"empty or unsized request ({type(batch).__name__}): give a batch of at least one item"
        )
    return batch


def chunks(n: int, size: int, progress: bool, desc: str) -> Iterator[slice]:
    """Row slices of ``size`` covering ``range(n)`` (a progress bar for several)."""
    if size < 1:
        raise ComposeError(f"batch_size must be >= 1, got {size}")
    starts: Any = range(0, n, size)
    if progress and len(starts) > 1:
        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for s in starts:
        yield slice(s, min(s + size, n))


def concat(parts: list[Any]) -> Any:
    """Join per-chunk outputs (tensors, predictions or lists of items)."""
    first = parts[0]
    if isinstance(first, Prediction):
        return Prediction(*(torch.cat([getattr(p, f) for p in parts]) for f in Prediction._fields))
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    return [x for p in parts for x in p]


def decoder_condition(
    model: LZNModel, target: str, source: str, batch: Any, z: torch.Tensor, given: Any
) -> Any:
    """Conditioning vector (B, d) of ``target``'s decoder, or None when it is unconditioned.

    From ``given`` (a batch of the conditioning modality) when passed; from the request when the
    source *is* the conditioning modality (``label -> image``: the requested classes' one-hot);
    else read from z by the conditioning modality's zonal decoder (docs/method.md §4: the label decoder
    applied to z).
    """
    cname = model.condition_source(target)
    if cname is None:
        if given is not None:
            raise ComposeError(f"the {target!r} decoder takes no condition, but condition= was given")
        return None
    if given is None and cname == source:
        given = batch
    if given is None:
        zonal: Any = model.decoders[cname]
        given = zonal.sample(z)
    return model.condition(cname, as_batch(given, z.device, model.specs[cname]))


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

    def _request(self, batch: Any, name: str | None = None) -> Any:
        """A request of modality ``name`` (default: the source; ``latent``: latents) as a batch."""
        name = self.source if name is None else name
        return as_batch(batch, self.model.device, None if name == LATENT else self.model.specs[name])

    def _zone(self, x: Any, alpha: float, o: dict[str, Any], gen: torch.Generator | None) -> torch.Tensor:
        """Latents (B, q) of the source batch ``x`` at noise scale α, zoned with the bank."""
        try:
            return self.model.zone(
                self.source,
                x,
                alpha=alpha,
                steps=o["latent_steps"],
                bank_size=o["bank_size"],
                generator=gen,
                independent=o["independent"],
            )
        except LZNError as exc:
            raise ComposeError(str(exc)) from None

    def _condition_request(self, condition: Any) -> Any:
        """``condition=`` of a call: a request of the modality that conditions the target's decoder."""
        cname = self.model.condition_source(self.target)
        if cname is None:
            raise ComposeError(f"the {self.target!r} decoder takes no condition, but condition= was given")
        return self._request(condition, cname)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.edge!r}, {opts})"


class Represent(Graph):
    """``X -> latent``: representations of a batch of X, (B, d).

    ``what``: "latent" (z at noise scale α, zoned with X's bank: (B, q)), "anchor" (the encoder
    output, (B, q)) or "backbone" (the encoder's pooled features before its latent blocks,
    (B, d), for an encoder with :class:`~lzn_core.modality.BackboneFeatures`; docs/method.md §5: the
    representation used for linear probes).
    """

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        what="latent",
        alpha=0.0,
        latent_steps=None,
        batch_size=256,
        bank_size=None,
        independent=None,
        progress=False,
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
        independent: bool | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Representations (B, d) of ``batch`` (images (B, C, H, W), labels (B,), texts list[str])."""
        o = self._opts(locals())
        if o["what"] not in WHAT:
            raise ComposeError(f"unknown representation what={o['what']!r}; choose one of {', '.join(WHAT)}")
        encoder: Any = self.model.encoders[self.source]
        if o["what"] == "backbone" and not isinstance(encoder, BackboneFeatures):
            raise ComposeError(
                f"the {self.source!r} encoder ({type(encoder).__name__}) exposes no backbone features "
                "(lzn_core.modality.BackboneFeatures); use what='anchor' or what='latent'"
            )
        gen = make_generator(seed, generator)
        batch = self._request(batch)
        parts = []
        with inference_mode(self.model):
            for rows in chunks(len(batch), o["batch_size"], o["progress"], self.edge):
                x = batch[rows]
                if o["what"] == "anchor":
                    parts.append(self.model.encode(self.source, x))
                elif o["what"] == "backbone":
                    parts.append(encoder.features(x))
                else:
                    parts.append(self._zone(x, o["alpha"], o, gen))
        return concat(parts)


class Classify(Graph):
    """``X -> Y`` with a zonal Y (``image -> label``): latents of X (or given z for ``latent -> Y``),
    the reverse flow over Y's anchors (``steps`` Euler steps, default: Y's zonal decoder's, as
    everywhere; uniform weights), nearest anchor.

    Returns a :class:`Prediction`. α = 0 (the zone centre) and a large inference batch
    (``batch_size`` with ``bank_size=0``, or the bank) give the best accuracy (docs/method.md §5).
    The confidence is the zone vote: ``draws`` latents drawn from each item's zone at noise
    scale ``vote_alpha``, each classified the same way; the share that agrees with the
    prediction estimates how much of the item's zone lies in the predicted class's zone (the
    last-step assignment probability of the flow is ≈ 1 for every input and says nothing).

    ``independent=True`` zones each item against the stored bank alone (:meth:`LZNModel.zone`):
    at α = 0 its label is then the same whatever else the request holds (the zone-vote draws
    still come from the request's seeded random stream).
    """

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        alpha=0.0,
        steps=None,
        latent_steps=None,
        batch_size=256,
        bank_size=None,
        independent=None,
        draws=16,
        vote_alpha=1.0,
        progress=False,
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
        independent: bool | None = None,
        draws: int | None = None,
        vote_alpha: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> Prediction:
        """Classify ``batch`` (a batch of the source modality, or latents z (B, q) from ``latent``)."""
        o = self._opts(locals())
        if o["draws"] < 0:
            raise ComposeError(f"draws must be >= 0, got {o['draws']}")
        gen = make_generator(seed, generator)
        batch = self._request(batch)
        decoder: Any = self.model.decoders[self.target]
        parts = []
        with inference_mode(self.model):
            for rows in chunks(len(batch), o["batch_size"], o["progress"], self.edge):
                x = batch[rows]
                nan = torch.full((len(x),), float("nan"))
                if self.source == LATENT:
                    parts.append(Prediction(decoder.sample(x, steps=o["steps"]).cpu(), nan))
                    continue
                try:
                    anchors = self.model.encode(self.source, x)
                    zone = dict(
                        steps=o["latent_steps"],
                        bank_size=o["bank_size"],
                        generator=gen,
                        independent=o["independent"],
                    )
                    z = self.model.zone_anchors(self.source, anchors, alpha=o["alpha"], **zone)
                    labels = decoder.sample(z, steps=o["steps"]).cpu()
                    votes = torch.zeros(len(x))
                    for _ in range(o["draws"]):
                        zd = self.model.zone_anchors(self.source, anchors, alpha=o["vote_alpha"], **zone)
                        votes += (decoder.sample(zd, steps=o["steps"]).cpu() == labels).float()
                except LZNError as exc:
                    raise ComposeError(str(exc)) from None
                parts.append(Prediction(labels, votes / o["draws"] if o["draws"] else nan))
        return concat(parts)


class Generate(Graph):
    """``latent -> X``: z ~ N(0, I) (or the given z (B, q)) -> X's generative decoder.

    When the recipe conditions X's decoder on a zonal modality (case 3's label one-hot), the
    condition is that modality's decoding of z (docs/method.md §4), unless ``condition=`` gives it.
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
        dev = self.model.device
        if isinstance(n_or_z, torch.Tensor) and n_or_z.is_floating_point():
            z = n_or_z.to(dev)
            if z.dim() != 2 or z.shape[1] != self.model.latent_dim:
                raise ComposeError(f"z must be (B, {self.model.latent_dim}), got {tuple(z.shape)}")
        else:
            if int(n_or_z) < 1:
                raise ComposeError(f"number of samples must be >= 1, got {n_or_z}")
            z = sample_prior(int(n_or_z), self.model.latent_dim, generator=gen).to(
                dev
            )  # on the CPU: one seed, one z
        cond_all = None if condition is None else self._condition_request(condition)
        decoder: Any = self.model.decoders[self.target]
        parts = []
        with inference_mode(self.model):
            for rows in chunks(z.shape[0], o["batch_size"], o["progress"], self.edge):
                given = None if cond_all is None else cond_all[rows]
                cond = decoder_condition(self.model, self.target, LATENT, None, z[rows], given)
                parts.append(decoder.sample(z[rows], cond, steps=o["steps"], generator=gen, **sample_kw))
        return concat(parts)


class Decode(Graph):
    """``X -> Y`` with a generative Y: latents of X -> Y's decoder.

    ``label -> image``: class-zone latents (α = 1) with the one-hot conditioning when the model
    was trained with it; ``text -> image``, ``image -> text``: the source's latents zoned with its
    bank. When the target's decoder is conditioned on a third modality (``text -> image`` with a
    label-conditioned image decoder), z keeps the requested α (a sample from the caption's zone)
    but the condition is read at the zone centre (α = 0), where the label flow classifies best
    (docs/method.md §5): it is the source item's class, not that of a random point of its zone.

    ``X -> X``: reconstruction (α = 0, the zone centre, by default). ``mode="invert"`` (X -> X,
    a decoder with :class:`~lzn_core.modality.Reconstructs`) is the paper's reconstruction
    metric: invert the decoder's sampler to noise conditioned on z, then regenerate from it.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        alpha=None,
        latent_steps=None,
        steps=None,
        mode="latent",
        batch_size=256,
        bank_size=None,
        independent=None,
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
        independent: bool | None = None,
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
        decoder: Any = self.model.decoders[self.target]
        if o["mode"] == "invert" and (self.source != self.target or not isinstance(decoder, Reconstructs)):
            raise ComposeError(
                f"mode='invert' needs 'X -> X' and a decoder with reconstruct() "
                f"(lzn_core.modality.Reconstructs); got '{self.edge}'"
            )
        gen = make_generator(seed, generator)
        batch = self._request(batch)
        cond_all = None if condition is None else self._condition_request(condition)
        reads_condition = self.model.condition_source(self.target) not in (None, self.source)
        parts = []
        with inference_mode(self.model):
            for rows in chunks(len(batch), o["batch_size"], o["progress"], self.edge):
                x = batch[rows]
                z = self._zone(x, alpha, o, gen)
                given = None if cond_all is None else cond_all[rows]
                z_read = z
                if given is None and alpha != 0.0 and reads_condition:
                    z_read = self._zone(x, 0.0, o, gen)  # the source's class: read at its zone centre
                cond = decoder_condition(self.model, self.target, self.source, x, z_read, given)
                if o["mode"] == "invert":
                    parts.append(decoder.reconstruct(x, z, cond, steps=o["steps"], **sample_kw))
                else:
                    parts.append(decoder.sample(z, cond, steps=o["steps"], generator=gen, **sample_kw))
        return concat(parts)
