"""The model container: every modality of a recipe around one latent space.

``LZNModel(recipe)`` builds, for each ``recipe.modalities[name]``, the plugin's encoder
(batch -> anchors ``(B, q)``) and decoder (latents ``z: (B, q)`` -> batch) and keeps them in
two ``nn.ModuleDict``. It is the one place that zones a batch: training, ``compose`` and the
evaluations call :meth:`LZNModel.latents` (the forward flow over a given anchor set),
:meth:`LZNModel.reverse` (the reverse flow, alignment and classification) and
:meth:`LZNModel.zone` (an inference request zoned with the modality's anchor bank), and
nothing else reads ``recipe.latent``.

    model = LZNModel(load_recipe("digits_joint.yaml"))
    a = model.encode("image", images)          # anchors (B, q)
    z = model.latents(a)                       # latents (B, q), ≈ N(0, I)
    loss = model.decoders["image"].loss(z, images, model.condition("label", labels))
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import zoning
from .data import iter_raw, loader
from .errors import ContractError, LZNError, RecipeError, ZonalLossError, did_you_mean
from .modality import AnchorBank, ConditionProvider, ModalitySpec, move_batch
from .plugins import get_modality

if TYPE_CHECKING:  # pragma: no cover
    from .recipe import Recipe

CLASS_ZONE_STEPS = 100
"""Euler steps of class-zone latents (IFM over a fixed bank; docs/method.md §4, ``get_latent_from_label``)."""
CLASS_ZONE_G = 1e-4
"""Start time g of class-zone latents."""
ZONAL_STEPS = 100
"""Default Euler steps of a zonal decoder's reverse flow (the label flow, docs/method.md §4)."""
INDEPENDENT = True
"""Default of :meth:`LZNModel.zone`'s ``independent``: each item of a request is zoned against the
stored bank alone, so its answer does not depend on the rest of the request. Chosen by
``benchmarks/results/batch_dependence.md`` (2026-12-07, the demo model, 3 seeds): test accuracy
96.0% independent vs 96.4% with the 300 test digits zoned together (within the 1-point margin),
while a digit alone agreed with its class inside the 300 for 98.9% of the digits; it costs one
flow per item (4.1 vs 0.3 ms of CPU per digit)."""


def _training_samples(pattern: str | None, keys: tuple[str, ...]) -> Iterator[bytes]:
    """Raw values of the first of ``keys`` each training sample has (read lazily, for ``prepare``)."""
    if not pattern:
        return

    yield from iter_raw(pattern, keys)


class ZonalDecoder(nn.Module):
    """The decoder of a zonal modality (the label flow, docs/method.md §4): the one implementation.

    ``sample(z)`` runs the reverse flow (FM, τ = 1 -> 0, Euler) of latents ``z: (B, q)`` over the
    modality's anchor bank ``A: (M, q)`` (its encoder's :class:`~lzn_core.modality.AnchorBank`,
    read through :meth:`bind`) and returns the zone each lands in, the nearest anchor:
    ``argmin_k ‖FM_A(z) − A_k‖²``, ``(B,)`` int64 indices into the bank (for labels: classes).
    It has no parameters and nothing to train (``loss`` raises :class:`ZonalLossError`); the
    anchors train through ``align`` tasks, whose reverse flow is the same :func:`zoning.assign`.
    A plugin returns one from ``build_decoder`` (``ZonalDecoder(steps=config.flow_steps)``).

    Args:
        steps: Euler steps of ``sample`` when the call gives none: the one default of every
            inference path (compose's classification, the condition read from z).
    """

    kind = "zonal"

    def __init__(self, steps: int = ZONAL_STEPS) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"ZonalDecoder: steps must be a positive int, got {steps!r}")
        self.steps = steps
        object.__setattr__(self, "_encoder", None)  # not a submodule: nothing is saved twice

    def bind(self, encoder: Any) -> None:
        """Read the anchor bank of ``encoder`` (``BindsEncoder``; called once after both sides are built)."""
        if not isinstance(encoder, AnchorBank):
            raise ContractError(
                f"a zonal decoder flows latents to its modality's anchor bank: the encoder "
                f"({type(encoder).__name__}) must define bank()"
            )
        object.__setattr__(self, "_encoder", encoder)

    def loss(
        self,
        z: torch.Tensor,
        batch: Any,
        cond: Any = None,
        *,
        generator: torch.Generator | None = None,
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Not available: a zonal decoder has nothing to train."""
        raise ZonalLossError(
            "a zonal decoder (reverse flow to its modality's anchors) has no loss of its own; train the "
            "anchors with an align task into the zonal modality, e.g. {kind: align, source: X, target: Y}"
        )

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        cond: Any = None,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The zone of each latent: ``(B,)`` int64 indices into the bank.

        Args:
            z: latents (B, q).
            cond: must be None (a zonal flow takes no conditioning).
            steps: Euler steps (default :attr:`steps`).
            generator: unused (the flow is deterministic); part of the decoder contract.
            weights: (M,) mixture weights of the bank; uniform when None (test time).
        """
        if cond is not None:
            raise ValueError("zonal decoder: sample() takes no conditioning (cond must be None)")
        encoder: Any = self._encoder
        if encoder is None:
            raise ContractError("zonal decoder is not bound to its encoder; call decoder.bind(encoder) first")
        anchors = encoder.bank()
        if z.dim() != 2 or z.shape[1] != anchors.shape[1]:
            raise ValueError(f"zonal decoder: z must be (B, {anchors.shape[1]}), got {tuple(z.shape)}")
        out = zoning.assign(z.to(anchors.dtype), anchors, steps=steps or self.steps, weights=weights)
        return torch.cdist(out.final, anchors).argmin(dim=1)


class LZNModel(nn.Module):
    """Encoders and decoders of a recipe's modalities over one latent space of dimension q.

    A plugin's ``prepare(config, samples)`` (e.g. the text tokenizer) runs before its modules
    are built; the prepared config replaces ``recipe.modalities[name].config``, so exports
    carry it. A decoder that a ``generate`` task conditions is built with the conditioning
    modality's ``condition_dim``.

    Attributes:
        recipe: the resolved ``Recipe`` the model was built from.
        latent_dim: q.
        names: modality names, in recipe order.
        specs: name -> ``ModalitySpec`` of its plugin.
        configs: name -> validated plugin config (pydantic).
        encoders: ``nn.ModuleDict`` name -> encoder (``forward(batch) -> (B, q)``).
        decoders: ``nn.ModuleDict`` name -> decoder (``loss``, ``sample``).
        banks: submodule holding the stored anchor banks as buffers ``banks.<name>: (M, q)``.
    """

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.latent_dim: int = int(recipe.latent.dim)
        self.names: tuple[str, ...] = tuple(recipe.modalities)
        self.specs: dict[str, ModalitySpec] = {}
        self.configs: dict[str, Any] = {}
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.banks = nn.Module()
        for name, entry in recipe.modalities.items():
            spec = get_modality(entry.plugin)
            cfg = entry.config
            if not isinstance(cfg, spec.config):  # a plain dict when the recipe skipped plugin validation
                cfg = spec.config.model_validate(cfg if cfg is not None else {})
            if spec.prepare is not None:  # e.g. train a tokenizer; idempotent once done
                cfg = spec.prepare(cfg, _training_samples(recipe.data.train, spec.shard_keys))
                entry.config = cfg
            self.specs[name], self.configs[name] = spec, cfg
        for name in self.names:
            source = self.condition_source(name)
            dim = 0
            if source is not None:
                size = self.specs[source].condition_dim
                if size is None:
                    raise RecipeError(
                        f"modality {source!r} cannot condition a decoder (its plugin declares no condition_dim)"
                    )
                dim = int(size(self.configs[source]))
            self.encoders[name], self.decoders[name] = self.specs[name].build(
                self.configs[name], self.latent_dim, dim
            )

    # ------------------------------------------------------------------ lookup
    def _check(self, name: str) -> None:
        if name not in self.encoders:
            raise LZNError(
                f"unknown modality {name!r} in this model{did_you_mean(name, self.names)} "
                f"(available: {', '.join(self.names)})"
            )

    @property
    def device(self) -> torch.device:
        """Where the parameters are (CPU for a model without any)."""
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def decoder_kind(self, name: str) -> str:
        """``"generative"``, ``"zonal"`` or ``"none"`` (:data:`lzn_core.modality.DecoderKind`)."""
        self._check(name)
        return str(self.decoders[name].kind)

    def condition_source(self, target: str) -> str | None:
        """The modality whose ``condition(batch)`` conditions ``target``'s decoder (a generate task's
        ``condition:``), or None."""
        for task in self.recipe.tasks:
            if task.kind == "generate" and task.target == target:
                return task.condition
        return None

    def trains_decoder(self, name: str) -> bool:
        """True when a ``generate`` task of the recipe trains the decoder of ``name``."""
        return any(t.kind == "generate" and t.target == name for t in self.recipe.tasks)

    def encode(self, name: str, batch: Any) -> torch.Tensor:
        """Anchors of a batch of modality ``name``: (B, q); the batch is moved to the model's
        device first (:func:`~lzn_core.modality.move_batch`)."""
        self._check(name)
        return self.encoders[name](move_batch(batch, self.device))

    # ------------------------------------------------------------------ zoning
    def latents(
        self,
        anchors: torch.Tensor,
        *,
        alpha: float | None = None,
        noise: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latents ``z = IFM(a_i, α ε_i)`` (docs/method.md §2) with the recipe's solver settings.

        Args:
            anchors: (N, q) the whole anchor set (the global batch).
            alpha: noise scale α (default ``recipe.latent.alpha``; 0 gives the zone centre).
            noise: ε, (N, q) or (len(index), q) when ``index`` is given; drawn when None.
            weights: (N,) mixture weights, uniform when None.
            index: (R,) rows of ``anchors`` whose latents are wanted (all rows when None).
            generator: random source of ε when ``noise`` is None.

        Returns:
            z: (N, q), or (R, q) with ``index``.
        """
        lat = self.recipe.latent
        return zoning.latents(
            anchors,
            noise,
            g=lat.g,
            alpha=lat.alpha if alpha is None else alpha,
            steps=lat.steps,
            solver=lat.solver,
            weights=weights,
            chunk=lat.chunk,
            index=index,
            generator=generator,
        )

    def reverse(
        self,
        z: torch.Tensor,
        anchors: torch.Tensor,
        *,
        steps: int,
        weights: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> zoning.Assignment:
        """The reverse flow (latent -> anchors, docs/method.md §3) of ``z: (B, q)`` over ``anchors: (N, q)``."""
        return zoning.assign(
            z, anchors, steps=steps, weights=weights, targets=targets, chunk=self.recipe.latent.chunk
        )

    def zone(
        self,
        name: str,
        batch: Any,
        *,
        alpha: float,
        steps: int | None = None,
        bank_size: int | None = None,
        generator: torch.Generator | None = None,
        independent: bool | None = None,
    ) -> torch.Tensor:
        """Latents (B, q) of an inference request of modality ``name``, zoned with its bank.

        Zones are defined relative to other anchors (docs/method.md §6), so a request is zoned together
        with context:

        * fixed bank (:class:`~lzn_core.modality.AnchorBank`, e.g. label classes (C, q)): item
          i's anchor is bank row k_i; z_i = IFM over the bank from (1 − g)·bank[k_i] + g·α·ε_i
          (Euler, ``steps`` or :data:`CLASS_ZONE_STEPS`; docs/method.md §4's class zones);
        * otherwise the request's anchors are appended to ``bank_size`` rows of the stored
          bank (all when None; 0: the request batch alone, the paper's minibatch evaluation)
          and the recipe's forward flow runs over all of them; the request's rows are returned.
          Every item's latent then depends on the other items of the request;
        * with ``independent=True`` each item is zoned against the stored bank and its own
          anchor only (M + 1 anchors), so its latent, and every answer read from it, is the same
          whatever else the request holds (one flow per item: slower for large requests).
          None: :data:`INDEPENDENT`, except with ``bank_size=0`` (no bank: the request is zoned by
          itself); ``True`` with ``bank_size=0`` is an error.

        ε is drawn on the CPU from ``generator`` (the same numbers on every device for one seed).
        """
        return self.zone_anchors(
            name,
            self.encode(name, batch),
            alpha=alpha,
            steps=steps,
            bank_size=bank_size,
            generator=generator,
            independent=independent,
        )

    def zone_anchors(
        self,
        name: str,
        anchors: torch.Tensor,
        *,
        alpha: float,
        steps: int | None = None,
        bank_size: int | None = None,
        generator: torch.Generator | None = None,
        independent: bool | None = None,
    ) -> torch.Tensor:
        """:meth:`zone` for anchors (B, q) already encoded (e.g. several draws of one request)."""
        noise = torch.randn(tuple(anchors.shape), generator=generator, dtype=anchors.dtype).to(anchors.device)
        if self.has_fixed_bank(name):
            bank = self.bank(name).to(anchors.dtype)
            index = torch.cdist(anchors, bank).argmin(dim=1)
            return zoning.latents(
                bank, noise, g=CLASS_ZONE_G, alpha=alpha, steps=steps or CLASS_ZONE_STEPS, index=index
            )
        if bank_size is not None and bank_size < 0:
            raise LZNError(f"bank_size must be >= 0 (0: no bank), got {bank_size}")
        if independent is None:
            independent = INDEPENDENT and bank_size != 0
        if independent and bank_size == 0:
            raise LZNError(
                "independent=True zones each item against the stored bank alone, so it needs the bank: "
                "give bank_size > 0 (or None: all of it), or independent=False to zone the request by itself"
            )
        context = anchors.new_empty(0, self.latent_dim)
        if bank_size != 0:
            stored = self.bank(name)
            context = (stored if bank_size is None else stored[:bank_size]).to(anchors)
        lat = self.recipe.latent
        flow: dict[str, Any] = dict(
            g=lat.g, alpha=alpha, steps=steps or lat.steps, solver=lat.solver, chunk=lat.chunk
        )
        if independent:  # one flow per item over the bank and its own anchor (the last row)
            last = torch.tensor([context.shape[0]], device=anchors.device)
            return torch.cat(
                [
                    zoning.latents(
                        torch.cat([context, anchors[i : i + 1]]), noise[i : i + 1], index=last, **flow
                    )
                    for i in range(anchors.shape[0])
                ]
            )
        every = torch.cat([context, anchors])
        index = torch.arange(context.shape[0], every.shape[0], device=every.device)
        return zoning.latents(every, noise, index=index, **flow)

    # ------------------------------------------------------------------ banks and conditioning
    def has_fixed_bank(self, name: str) -> bool:
        """True when the encoder of ``name`` is an :class:`~lzn_core.modality.AnchorBank` (label classes)."""
        self._check(name)
        return isinstance(self.encoders[name], AnchorBank)

    def bank(self, name: str) -> torch.Tensor:
        """Anchor bank of ``name`` (M, q): the encoder's own bank, else the stored sample.

        Raises:
            LZNError: a modality without a fixed bank whose bank was never stored.
        """
        encoder = self.encoders[name] if name in self.encoders else None
        if isinstance(encoder, AnchorBank):
            return encoder.bank()
        self._check(name)
        stored = getattr(self.banks, name, None)  # a registered buffer, or None
        if stored is None:
            raise LZNError(
                f"modality {name!r} has no anchor bank yet: training stores one at the end "
                "(model.set_bank(name, anchors)); load an exported run (lzn export) to get it, "
                "or zone each request batch alone (bank_size=0)"
            )
        return stored

    def set_bank(self, name: str, anchors: torch.Tensor) -> None:
        """Store ``anchors: (M, q)`` as the bank of ``name`` (buffer ``banks.<name>``, saved)."""
        self._check(name)
        if anchors.dim() != 2 or anchors.shape[1] != self.latent_dim:
            raise ValueError(
                f"bank of {name!r} must have shape (M, {self.latent_dim}), got {tuple(anchors.shape)}"
            )
        self.banks.register_buffer(name, anchors.detach().clone())

    def fill_banks(self, pattern: str | None = None, *, seed: int = 0) -> None:
        """Store a fixed sample of ``latent.bank_size`` anchors as the bank of every modality
        without a fixed one (:meth:`set_bank`).

        Runs the encoders (eval mode, no gradients) over shuffled batches of the shards matching
        ``pattern`` (default: the recipe's ``data.train``); the previous mode is restored.

        Raises:
            DataError: no shards match ``pattern`` (for the recipe's own, the message says the
                recipe's ``data.make``).
        """
        names = [n for n in self.names if not self.has_fixed_bank(n)]
        if not names:
            return
        size = self.recipe.latent.bank_size
        with self.recipe.data.explained():  # missing shards of the recipe: say its data.make
            ld = loader(
                pattern or self.recipe.data.train,
                {n: self.specs[n] for n in names},
                batch_size=min(size, 256),
                seed=seed + 1,
                drop_last=False,
            )
        device = self.device
        rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for batch in ld:
                for n in names:
                    rows[n].append(self.encode(n, batch[n]).cpu())  # encode moves the batch
                if sum(r.shape[0] for r in rows[names[0]]) >= size:
                    break
        for n in names:
            self.set_bank(n, torch.cat(rows[n])[:size].to(device))
        self.train(was_training)

    def condition(self, name: str, batch: Any) -> torch.Tensor:
        """Conditioning vector (B, d) from modality ``name`` (e.g. one-hot labels)."""
        self._check(name)
        encoder = self.encoders[name]
        if not isinstance(encoder, ConditionProvider):
            raise LZNError(f"modality {name!r} cannot condition a decoder (its encoder has no condition())")
        return encoder.condition(move_batch(batch, self.device))

    # ------------------------------------------------------------------ weights
    def load_weights(self, state: dict[str, torch.Tensor], *, strict: bool = True) -> None:
        """Load a state dict (e.g. from safetensors), creating stored banks first.

        Raises:
            RecipeError: when keys or shapes do not match this model (lists the first problems).
        """
        state = dict(state)
        shapes = []
        for key in [k for k in state if k.startswith("banks.")]:
            name, bank = key.split(".", 1)[1], state[key]
            if name in self.encoders and bank.dim() == 2 and bank.shape[1] == self.latent_dim:
                self.set_bank(name, bank)
            else:
                shapes.append(f"{key}: {tuple(bank.shape)} in file, (M, {self.latent_dim}) in model")
        own = self.state_dict()
        shapes += [
            f"{k}: {tuple(v.shape)} in file, {tuple(own[k].shape)} in model"
            for k, v in state.items()
            if k in own and tuple(own[k].shape) != tuple(v.shape)
        ]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if shapes or (strict and (missing or unexpected)):
            lines = [f"shape mismatch {s}" for s in shapes[:5]]
            lines += [f"missing key {k}" for k in missing[:5]] + [
                f"unexpected key {k}" for k in unexpected[:5]
            ]
            raise RecipeError("weights do not match the recipe's model:\n  " + "\n  ".join(lines))
        self.load_state_dict(state, strict=strict)

    def extra_repr(self) -> str:
        return f"q={self.latent_dim}, modalities={list(self.names)}"
