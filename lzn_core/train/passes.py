"""How a training step runs the networks: all rows at once, or two passes over micro-batches.

``recipes/train.py`` writes a step's math once (``task_losses``) and calls the networks through
one of these objects: ``nets.encode(name, batch)`` for anchors and ``nets.decoder_loss(...)`` for
a decoder's loss; ``Engine.step(total, nets)`` takes the gradient. Both run the networks under
bf16 autocast when ``train.precision`` is ``"bf16"`` and hand the solver float32 anchors.

:class:`OnePass` builds one graph over all of the rank's rows (today's step).

:class:`TwoPass` (``train.micro_batch_size``) gives the same gradient with the activation
memory of one micro-batch. Plain gradient accumulation would change the method: every latent
depends on every anchor of the global batch (docs/method.md §6). Instead, as in gradient caching
(Gao et al. 2021), the networks and the rest of the step (the *head*: zoning, alignment, the
anchors' all-gather) are differentiated separately:

1. ``encode``: the rows are encoded micro-batch by micro-batch without a graph, each from the
   generator state it starts with (kept: dropout); the anchors a (b, q) become leaves of the head;
2. the head runs on all anchors of the global batch as in one pass. ``decoder_loss`` runs
   micro-batch by micro-batch at once, on z (and the condition) as leaves: each micro-batch's
   forward and backward give its share of the decoder's parameter gradients and of ∂loss/∂z;
   the term enters the head as its value, with ∂/∂z attached (:class:`_CachedTerm`);
3. ``loss_for_backward(total)``: one backward pass over the head gives ∂L/∂a, the head's own
   parameter gradients (e.g. label anchors) and ∂L/∂term, the weight each decoder term has in
   L (its gradients are scaled by it); then every micro-batch is encoded again with a graph,
   from its kept generator state (the same dropout masks), and ∂L/∂a of its rows flows into
   the encoder; the generators are left where step 2 left them;
4. DeepSpeed: the summed parameter gradients G go through one ``engine.backward`` of the
   linear surrogate Σ_p ⟨p, G_p⟩, whose gradient is G exactly. DeepSpeed thus sees one
   backward per step, as with one pass, and reduces, clips and steps as for any loss (ZeRO 0,
   1 or 2: its reduction hooks fire once, on G). The passes take their gradients with
   ``torch.autograd.grad``, which fills no ``.grad`` and fires none of DeepSpeed's hooks.

Cost over one pass: one more forward of each encoder. Batches are cut into rows with
``batch[lo:hi]`` (tensors and lists do it; :mod:`lzn_core.modality`), and the networks must
treat rows independently (no batch statistics), which the conformance kit checks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .rng import set_torch_state, torch_state

__all__ = ["OnePass", "TwoPass", "network_passes", "row_blocks"]


def row_blocks(rows: int, size: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` covering ``range(rows)`` in blocks of ``size`` rows (the last may be shorter)."""
    return [(lo, min(lo + size, rows)) for lo in range(0, rows, size)]


def _rows(batch: Any, lo: int, hi: int) -> Any:
    return batch[lo:hi]


class OnePass:
    """The networks on all of this rank's rows at once, in one graph.

    Args:
        model: the ``LZNModel`` being trained.
        precision: ``"fp32"`` or ``"bf16"`` (autocast around the encoders and decoders).
    """

    def __init__(self, model: Any, precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.model = model
        self.precision = precision

    def networks(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast region of an encoder or decoder call (none in fp32)."""
        device = self.model.device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _anchors(self, a: torch.Tensor) -> torch.Tensor:
        return a.float() if self.precision == "bf16" else a

    def encode(self, name: str, batch: Any) -> torch.Tensor:
        """Anchors (b, q) of this rank's rows of modality ``name`` (float32 under bf16)."""
        with self.networks():
            return self._anchors(self.model.encode(name, batch))

    def decoder_loss(
        self,
        name: str,
        z: torch.Tensor,
        batch: Any,
        cond: torch.Tensor | None,
        *,
        generator: torch.Generator | None,
        rows: tuple[int, int],
    ) -> torch.Tensor:
        """``decoders[name].loss(z, batch, cond, generator=, rows=)``: a scalar, differentiable in z."""
        with self.networks():
            loss = self.model.decoders[name].loss(z, batch, cond, generator=generator, rows=rows)
        return loss.float() if self.precision == "bf16" else loss

    def loss_for_backward(self, total: torch.Tensor) -> torch.Tensor:
        """The loss to hand ``engine.backward``: the total itself."""
        return total

    def discard(self) -> None:
        """Forget this step (a skipped step): nothing is kept."""


@dataclass
class _Encoded:
    """One ``encode`` call of a two-pass step: what pass 2 needs to encode the rows again."""

    name: str
    batch: Any
    blocks: list[tuple[int, int]]
    states: list[Any]
    anchors: torch.Tensor  # the leaf (b, q) the head reads


@dataclass
class _Term:
    """One ``decoder_loss`` of a two-pass step: its parameter gradients per unit weight."""

    grads: list[torch.Tensor | None]
    out: torch.Tensor | None = None


class _CachedTerm(torch.autograd.Function):
    """A decoder term in the head: forward gives its value, backward the cached ∂term/∂z (and ∂/∂cond)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        value: torch.Tensor,
        tie: torch.Tensor,
        z: torch.Tensor,
        cond: torch.Tensor | None,
        dz: torch.Tensor,
        dcond: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.grads = (dz, dcond)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        dz, dcond = ctx.grads
        return None, None, grad * dz, None if dcond is None else grad * dcond, None, None


def _accumulate(acc: list[torch.Tensor | None], grads: Any, scale: torch.Tensor | None = None) -> None:
    for i, g in enumerate(grads):
        if g is None:
            continue
        if scale is not None:
            g = g * scale.to(g.dtype)
        acc[i] = g if acc[i] is None else acc[i].add_(g)  # type: ignore[union-attr]


class TwoPass(OnePass):
    """The exact gradient of the rank's whole batch with the memory of ``micro`` rows (module doc).

    Args:
        model: the ``LZNModel`` being trained.
        micro: rows per micro-batch.
        precision: ``"fp32"`` or ``"bf16"``.
    """

    def __init__(self, model: Any, micro: int, precision: str = "fp32") -> None:
        super().__init__(model, precision)
        if isinstance(micro, bool) or not isinstance(micro, int) or micro < 1:
            raise ValueError(f"micro-batch size must be a positive int, got {micro!r}")
        self.micro = micro
        self._encoded: list[_Encoded] = []
        self._terms: list[_Term] = []
        self._tie = torch.zeros((), requires_grad=True)  # makes every term differentiable

    def _params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def encode(self, name: str, batch: Any) -> torch.Tensor:
        """Pass 1: anchors of every micro-batch, without a graph; a leaf (b, q) the head differentiates."""
        blocks, states, parts = row_blocks(len(batch), self.micro), [], []
        with torch.no_grad():
            for lo, hi in blocks:
                states.append(torch_state())
                parts.append(super().encode(name, _rows(batch, lo, hi)))
        anchors = torch.cat(parts).requires_grad_()
        self._encoded.append(_Encoded(name, batch, blocks, states, anchors))
        return anchors

    def decoder_loss(
        self,
        name: str,
        z: torch.Tensor,
        batch: Any,
        cond: torch.Tensor | None,
        *,
        generator: torch.Generator | None,
        rows: tuple[int, int],
    ) -> torch.Tensor:
        """The decoder's loss over all rows, its forward and backward run micro-batch by micro-batch.

        Each micro-batch draws from ``generator`` as the whole batch does (restored to its state
        on entry, ``rows`` shifted to the micro-batch), so the terms add up to the one-pass loss.
        """
        params = self._params()
        b, (start, total) = z.shape[0], rows
        state = generator.get_state() if generator is not None else None
        dz = torch.zeros_like(z)
        dcond = torch.zeros_like(cond) if cond is not None and cond.requires_grad else None
        grad_cond = dcond is not None
        grads: list[torch.Tensor | None] = [None] * len(params)
        value = z.new_zeros(())
        for lo, hi in row_blocks(b, self.micro):
            if generator is not None and state is not None:
                generator.set_state(state)
            zj = z.detach()[lo:hi].requires_grad_()
            cj = None if cond is None else cond.detach()[lo:hi].requires_grad_(grad_cond)
            with torch.enable_grad():
                part = super().decoder_loss(
                    name, zj, _rows(batch, lo, hi), cj, generator=generator, rows=(start + lo, total)
                ) * ((hi - lo) / b)
            wrt: list[torch.Tensor] = [*params, zj] + ([cj] if grad_cond and cj is not None else [])
            got = torch.autograd.grad(part, wrt, allow_unused=True)
            _accumulate(grads, got[: len(params)])
            if got[len(params)] is not None:
                dz[lo:hi] = got[len(params)]
            if dcond is not None and got[-1] is not None:
                dcond[lo:hi] = got[-1]
            value = value + part.detach()
        term = _Term(grads)
        term.out = _CachedTerm.apply(value, self._tie, z, cond, dz, dcond)
        self._terms.append(term)
        return term.out

    def loss_for_backward(self, total: torch.Tensor) -> torch.Tensor:
        """Passes 2 and 3 (module doc); returns the surrogate Σ_p ⟨p, G_p⟩ for ``engine.backward``."""
        params = self._params()
        leaves = [e.anchors for e in self._encoded]
        outs = [t.out for t in self._terms if t.out is not None]
        got = torch.autograd.grad(total, [*params, *leaves, *outs], allow_unused=True)
        acc: list[torch.Tensor | None] = list(got[: len(params)])
        da = got[len(params) : len(params) + len(leaves)]
        for term, weight in zip(self._terms, got[len(params) + len(leaves) :], strict=True):
            if weight is not None:
                _accumulate(acc, term.grads, weight)
        after = torch_state()  # pass 2 redraws pass 1's masks, then the stream goes on from here
        for enc, grad in zip(self._encoded, da, strict=True):
            if grad is None:
                continue
            for (lo, hi), state in zip(enc.blocks, enc.states, strict=True):
                set_torch_state(state)
                with torch.enable_grad():
                    a = OnePass.encode(self, enc.name, _rows(enc.batch, lo, hi))
                _accumulate(acc, torch.autograd.grad(a, params, grad[lo:hi], allow_unused=True))
        set_torch_state(after)
        self.discard()
        pairs = [(p, g) for p, g in zip(params, acc, strict=True) if g is not None]
        if not pairs:
            raise RuntimeError("the step's loss reaches no trainable parameter")
        return torch.stack([(p * g.detach()).sum() for p, g in pairs]).sum()

    def discard(self) -> None:
        """Forget the step's cached anchors and decoder terms."""
        self._encoded, self._terms = [], []


def network_passes(model: nn.Module, train: Any, world_size: int = 1) -> OnePass:
    """:class:`TwoPass` when a rank holds more than ``train.micro_batch_size`` rows, else :class:`OnePass`.

    Args:
        model: the ``LZNModel`` being trained.
        train: the recipe's ``train`` section (``batch_size``, ``micro_batch_size``, ``precision``).
        world_size: ranks the global batch is split over.
    """
    rows = int(train.batch_size) // max(int(world_size), 1)
    micro, precision = train.micro_batch_size, train.precision
    if micro == "auto":
        raise ValueError(
            "train.micro_batch_size: auto is a plan, not a size: plan it first (lzn_core.train.plan; "
            "recipes/train.py does before training) and pass the planned size"
        )
    if micro is None or micro >= rows:
        return OnePass(model, precision)
    return TwoPass(model, int(micro), precision)
