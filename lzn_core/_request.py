"""Requests of :mod:`lzn_core.compose`: latents of a request batch zoned with an anchor bank,
backbone features, decoder conditioning, batching helpers.

Shapes: request of B items, latent dimension q, anchor bank of M rows.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .errors import ComposeError, LZNError

if TYPE_CHECKING:  # pragma: no cover
    from .model import LZNModel

LATENT = "latent"
"""The node name of the shared Gaussian latent space in task graphs."""

CLASS_ZONE_STEPS = 100
"""Euler steps of class-zone latents (IFM over a fixed bank; PAPER §1.4, ``get_latent_from_label``)."""

_CLASS_ZONE_G = 1e-4
WHAT = ("latent", "anchor", "backbone")


class Prediction(NamedTuple):
    """Output of a zonal edge (``image -> label``): ``labels`` (B,) int64, ``confidence`` (B,) float
    = P(predicted anchor | x) at the last reverse-flow step (NaN when the decoder gives none)."""

    labels: torch.Tensor
    confidence: torch.Tensor


# ----------------------------------------------------------------------------- small helpers


def make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """``generator`` if given, else a CPU generator seeded with ``seed``, else None (global RNG)."""
    if generator is not None:
        return generator
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def trains_decoder(model: LZNModel, name: str) -> bool:
    """True when a generate task of the model's recipe trains the decoder of ``name``."""
    return any(getattr(t, "kind", None) == "generate" and t.target == name for t in model.recipe.tasks)


def model_device(model: LZNModel) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


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


def _randn(shape: tuple[int, ...], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) drawn on the CPU (same numbers on every device for one seed), moved next to ``like``."""
    return torch.randn(shape, generator=gen, dtype=like.dtype).to(like.device)


def as_batch(batch: Any, device: torch.device) -> Any:
    """Normalise a request: an int/str/scalar becomes a batch of one; tensors go to ``device``;
    a float (C, H, W) tensor becomes (1, C, H, W)."""
    if isinstance(batch, (int, bool)) or (isinstance(batch, torch.Tensor) and batch.dim() == 0):
        batch = torch.as_tensor([int(batch)])
    elif isinstance(batch, str):
        batch = [batch]
    elif isinstance(batch, (list, tuple)) and batch and all(isinstance(b, int) for b in batch):
        batch = torch.as_tensor(batch, dtype=torch.int64)
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point() and batch.dim() == 3:
            batch = batch[None]
        batch = batch.to(device)
    if not hasattr(batch, "__len__") or len(batch) == 0:
        raise ComposeError(
            f"empty or unsized request ({type(batch).__name__}): give a batch of at least one item"
        )
    return batch


def chunks(n: int, size: int, progress: bool, desc: str) -> Iterator[slice]:
    if size < 1:
        raise ComposeError(f"batch_size must be >= 1, got {size}")
    starts = range(0, n, size)
    if progress and len(starts) > 1:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for s in starts:
        yield slice(s, min(s + size, n))


def concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, Prediction):
        return Prediction(*(torch.cat([getattr(p, f) for p in parts]) for f in Prediction._fields))
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    return [x for p in parts for x in p]


def sample_with(dec: Any, z: torch.Tensor, cond: Any, gen: torch.Generator | None, **kw: Any) -> Any:
    """``dec.sample(z, cond, **kw)``, passing ``generator`` only to decoders that accept it."""
    params = inspect.signature(dec.sample).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "generator" in params or takes_any:
        kw["generator"] = gen
    kw = {k: v for k, v in kw.items() if v is not None}
    return dec.sample(z, cond, **kw)


# ----------------------------------------------------------------------------- latents of a request


def _bank_context(model: LZNModel, name: str, bank_size: int | None) -> torch.Tensor:
    """The first ``bank_size`` rows (all when None) of the stored anchor bank of ``name``: (M, q)."""
    if bank_size == 0:
        return torch.empty(0, model.latent_dim, device=model_device(model))
    if bank_size is not None and bank_size < 0:
        raise ComposeError(f"bank_size must be >= 0 (0: no bank), got {bank_size}")
    try:
        bank = model.bank(name)
    except LZNError as exc:
        raise ComposeError(f"{exc}; or pass bank_size=0 to zone each inference batch alone") from None
    return bank if bank_size is None else bank[:bank_size]


def zone_latents(
    model: LZNModel,
    name: str,
    batch: Any,
    *,
    alpha: float,
    latent_steps: int | None,
    bank_size: int | None,
    gen: torch.Generator | None,
) -> torch.Tensor:
    """Latents z (B, q) of a request batch of modality ``name``.

    * Fixed bank (label classes, bank (C, q)): item i's anchor is bank row k_i; z_i =
      IFM over the bank from (1 − g)·bank[k_i] + g·α·ε_i (Euler, ``latent_steps`` or 100).
    * Otherwise: anchors (B, q) are appended to ``bank_size`` rows of the stored bank (M, q) and
      the forward flow (the recipe's solver, ``latent_steps`` or the recipe's steps) runs over
      all M + B anchors; the B request rows are returned.
    """
    from . import zoning

    lat = model.recipe.latent
    anchors = model.encode(name, batch)
    if model.has_fixed_bank(name):
        bank = model.bank(name).to(anchors.dtype)
        index = torch.cdist(anchors, bank).argmin(dim=1)
        noise = _randn(tuple(anchors.shape), gen, anchors)
        steps = latent_steps or CLASS_ZONE_STEPS
        return zoning.latents(bank, noise, g=_CLASS_ZONE_G, alpha=alpha, steps=steps, index=index)
    ctx = _bank_context(model, name, bank_size).to(anchors)
    every = torch.cat([ctx, anchors])
    index = torch.arange(ctx.shape[0], every.shape[0], device=every.device)
    noise = _randn(tuple(anchors.shape), gen, anchors)
    return zoning.latents(
        every,
        noise,
        g=lat.g,
        alpha=alpha,
        steps=latent_steps or lat.steps,
        solver=lat.solver,
        chunk=lat.chunk,
        index=index,
    )


def backbone(model: LZNModel, name: str, batch: Any) -> torch.Tensor:
    """The encoder's features before its latent blocks, globally average-pooled: (B, d).

    Uses ``encoder.features(batch)`` when defined; otherwise the output of the encoder's ``down``
    path (a U-Net down path returning ``(skips, middle)``), caught with a forward hook.
    """
    enc: Any = model.encoders[name]
    if callable(getattr(enc, "features", None)):
        out = enc.features(batch)
    elif isinstance(getattr(enc, "down", None), torch.nn.Module):
        seen: list[Any] = []
        hook = enc.down.register_forward_hook(lambda _m, _i, o: seen.append(o))
        try:
            enc(batch)
        finally:
            hook.remove()
        out = seen[-1][-1] if isinstance(seen[-1], (tuple, list)) else seen[-1]
    else:
        raise ComposeError(
            f"the {name!r} encoder ({type(enc).__name__}) exposes no backbone features: define "
            "features(batch) -> (B, d), or use what='anchor' or what='latent'"
        )
    return out.mean(dim=tuple(range(2, out.dim()))) if out.dim() > 2 else out


def decoder_condition(
    model: LZNModel, target: str, source: str, batch: Any, z: torch.Tensor, given: Any
) -> Any:
    """Conditioning vector (B, d) of ``target``'s decoder, or None when it is unconditioned.

    From ``given`` (a batch of the conditioning modality) when passed; from the request when the
    source *is* the conditioning modality (``label -> image``: the requested classes' one-hot);
    else read from z by the conditioning modality's zonal decoder (PAPER §1.4: the label decoder
    applied to z).
    """
    cname = model.generate_condition(target)
    if cname is None:
        if given is not None:
            raise ComposeError(f"the {target!r} decoder takes no condition, but condition= was given")
        return None
    if given is None and cname == source:
        given = batch
    if given is None:
        zonal: Any = model.decoders[cname]
        out = zonal.sample(z)
        given = out[0] if isinstance(out, tuple) else out
    return model.condition(cname, as_batch(given, z.device))
