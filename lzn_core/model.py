"""The model container: every modality of a recipe around one latent space.

``LZNModel(recipe)`` builds, for each ``recipe.modalities[name]``, the plugin's
encoder (batch -> anchors ``(B, q)``) and decoder (latents ``z: (B, q)`` -> batch)
and keeps them in two ``nn.ModuleDict``. Latents are computed by the zoning
solver with the recipe's ``latent`` settings (solver, steps, g, α).

    model = LZNModel(load_recipe("digits_joint.yaml"))
    a = model.encode("image", images)          # anchors (B, q)
    z = model.latents(a)                       # latents (B, q), ≈ N(0, I)
    loss = model.decoders["image"].loss(z, images, cond=model.condition("label", labels))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import LZNError, RecipeError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from .modality import ModalitySpec
    from .recipe import Recipe


class LZNModel(nn.Module):
    """Encoders and decoders of a recipe's modalities over one latent space of dimension q.

    A plugin's ``prepare(config, data.train)`` (e.g. the text tokenizer) runs before its
    modules are built; the prepared config replaces ``recipe.modalities[name].config``.

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
        from .plugins import get_modality

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
            if spec.prepare is not None:  # e.g. train a tokenizer from data.train; idempotent once done
                cfg = spec.prepare(cfg, recipe.data.train)
                entry.config = cfg
            enc = spec.build_encoder(cfg, self.latent_dim)
            dec = spec.build_decoder(cfg, self.latent_dim)
            if hasattr(dec, "bind"):
                dec.bind(enc)
            self.specs[name], self.configs[name] = spec, cfg
            self.encoders[name] = enc
            self.decoders[name] = dec

    # ------------------------------------------------------------------ lookup
    def _check(self, name: str) -> None:
        if name not in self.encoders:
            raise LZNError(
                f"unknown modality {name!r} in this model{did_you_mean(name, self.names)} "
                f"(available: {', '.join(self.names)})"
            )

    def encode(self, name: str, batch: Any) -> torch.Tensor:
        """Anchors of a batch of modality ``name``.

        Args:
            name: a modality of the recipe.
            batch: the modality's batch (e.g. images (B, C, H, W), labels (B,)).

        Returns:
            anchors: (B, q).
        """
        self._check(name)
        return self.encoders[name](batch)

    def latents(
        self,
        anchors: torch.Tensor,
        *,
        alpha: float | None = None,
        noise: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Latents ``z = IFM(a_i, α ε_i)`` of anchors with the recipe's solver settings.

        Args:
            anchors: (N, q) the whole anchor set (the global batch).
            alpha: noise scale α (default ``recipe.latent.alpha``; 0 gives the zone centre).
            noise: ε, (N, q) or (len(index), q) when ``index`` is given; drawn when None.
            weights: (N,) mixture weights, uniform when None.
            index: (R,) rows of ``anchors`` whose latents are wanted (all rows when None).

        Returns:
            z: (N, q), or (R, q) with ``index``.
        """
        from . import zoning

        lat = self.recipe.latent
        kw: dict[str, Any] = dict(
            g=lat.g,
            alpha=lat.alpha if alpha is None else alpha,
            steps=lat.steps,
            solver=lat.solver,
            weights=weights,
            chunk=getattr(lat, "chunk", None),
        )
        if index is not None:
            kw["index"] = index
        return zoning.latents(anchors, noise, **kw)

    def has_fixed_bank(self, name: str) -> bool:
        """True when the encoder of ``name`` defines its own bank (e.g. label classes)."""
        self._check(name)
        return callable(getattr(self.encoders[name], "bank", None))

    def bank(self, name: str) -> torch.Tensor:
        """Anchor bank of ``name``: ``encoder.bank()`` when defined, else the stored sample.

        Returns:
            anchors: (M, q).
        """
        if self.has_fixed_bank(name):
            enc: Any = self.encoders[name]
            return enc.bank()
        stored = getattr(self.banks, name, None)
        if stored is None:
            raise LZNError(
                f"modality {name!r} has no anchor bank yet: training stores one at the end "
                "(model.set_bank(name, anchors)); load an exported run (lzn export) to get it"
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

    def condition(self, name: str, batch: Any) -> torch.Tensor:
        """Conditioning vector from modality ``name`` (e.g. one-hot labels), (B, d)."""
        self._check(name)
        enc: Any = self.encoders[name]
        if not callable(getattr(enc, "condition", None)):
            raise LZNError(f"modality {name!r} cannot condition a decoder (its encoder has no condition())")
        return enc.condition(batch)

    def generate_condition(self, target: str) -> str | None:
        """Name of the modality conditioning ``target``'s decoder in the recipe's generate tasks."""
        from .recipe import GenerateTask

        self._check(target)
        for task in self.recipe.tasks:
            if isinstance(task, GenerateTask) and task.target == target:
                return task.condition
        return None

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
