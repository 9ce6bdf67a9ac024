"""Evaluation of an :class:`~lzn_core.model.LZNModel`: the paper's metrics that need a model.

* :func:`label_flow_predict` / :func:`alpha_batch_sweep`: classification through the
  label flow (PAPER.md §1.6): image latents of an inference batch of size b at noise
  scale α over the batch's own anchors, reverse label flow (100 Euler steps, uniform
  weights) over the class anchors, nearest anchor.
* :func:`reconstruction_error`: z = C(x), invert the RF ODE conditioned on z (and the
  true label), regenerate; ℓ2 in [-1, 1] pixels, averaged over draws of ε.
* :func:`class_samples` / :func:`unconditional_samples`: images from class zones or z ~ N(0, I).
* :func:`ood_confidences`: label-flow confidence of in-distribution vs altered inputs.
* :func:`probe_features`: backbone / anchor / latent / latent α = 0 features (claim 12).

Every function is deterministic for a ``seed`` and runs under ``torch.no_grad``.
Classification and sampling run through :func:`lzn_core.compose` (one implementation of each
task); what this module adds is the paper's evaluation protocol: inference batches of exactly
``batch_size`` images zoned by themselves (no stored bank), seeded draws, and the metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

import torch

from .errors import LZNError

if TYPE_CHECKING:  # pragma: no cover
    from .model import LZNModel

__all__ = [
    "label_flow_predict",
    "zone_vote",
    "alpha_batch_sweep",
    "reconstruction_error",
    "class_samples",
    "unconditional_samples",
    "ood_confidences",
    "ood_inputs",
    "probe_features",
    "find_modality",
]


@overload
def find_modality(model: LZNModel, plugin: str) -> str: ...


@overload
def find_modality(model: LZNModel, plugin: str, *, required: bool) -> str | None: ...


def find_modality(model: LZNModel, plugin: str, *, required: bool = True) -> str | None:
    """Name of the first modality of ``model`` built by ``plugin`` ("image", "label", ...).

    Raises:
        LZNError: when there is none and ``required`` (else None is returned).
    """
    for name, entry in model.recipe.modalities.items():
        if entry.plugin == plugin:
            return name
    if required:
        raise LZNError(
            f"this model has no {plugin!r} modality (modalities: {', '.join(model.names)}); "
            f"the metric needs one"
        )
    return None


def _dec(model: LZNModel, name: str) -> Any:
    """The decoder of modality ``name`` (typed loosely: plugins add their own methods)."""
    return model.decoders[name]


def _batches(n: int, b: int, gen: torch.Generator) -> list[tuple[torch.Tensor, int]]:
    """Batches of exactly ``min(b, n)`` rows covering a random permutation of ``range(n)``.

    Returns ``(rows, k)`` pairs: predictions are kept for the last ``k`` rows; a short last
    batch is completed with earlier rows (context only), so every prediction is made in a
    batch of the requested size.
    """
    if b < 1:
        raise ValueError(f"batch size must be >= 1, got {b}")
    b = min(b, n)
    perm = torch.randperm(n, generator=gen)
    out = []
    for start in range(0, n, b):
        k = min(b, n - start)
        out.append((perm[start + k - b : start + k], k))
    return out


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (n, C, H, W) tensor, got {tuple(images.shape)}")


def _classifier(model: LZNModel, images: torch.Tensor) -> Any:
    """``compose("image -> label")`` of ``model``: the one classification path (lzn_core._graphs)."""
    from .compose import compose

    img, lab = find_modality(model, "image"), find_modality(model, "label")
    _check_images(images)
    return compose(f"{img} -> {lab}", model=model)


def _alone(rows: torch.Tensor) -> dict[str, int]:
    """Options zoning one inference batch by itself (no stored bank), as the paper evaluates."""
    return {"bank_size": 0, "batch_size": len(rows)}


@torch.no_grad()
def label_flow_predict(
    model: LZNModel,
    images: torch.Tensor,
    *,
    alpha: float = 0.0,
    batch_size: int = 256,
    steps: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify images with the label flow (no cross-entropy head).

    Args:
        model: a model with an image and a label modality.
        images: (n, C, H, W) in [-1, 1].
        alpha: noise scale α of the image latents (0: zone centres).
        batch_size: inference batch b; latents of a batch depend on its other images.
        steps: label-flow Euler steps (default 100, as compose's classification).
        seed: seeds the batch permutation and ε.

    Returns:
        pred (n,) int64 and confidence (n,) = P(predicted anchor | x) at the last flow step.
    """
    classify = _classifier(model, images)
    gen = torch.Generator().manual_seed(seed)
    pred = torch.empty(images.shape[0], dtype=torch.int64)
    conf = torch.empty(images.shape[0])
    for rows, k in _batches(images.shape[0], batch_size, gen):
        out = classify(images[rows], alpha=alpha, steps=steps, **_alone(rows), generator=gen)
        pred[rows[-k:]], conf[rows[-k:]] = out.labels[-k:].cpu(), out.confidence[-k:].cpu()
    return pred, conf


@torch.no_grad()
def zone_vote(
    model: LZNModel,
    images: torch.Tensor,
    *,
    alpha: float = 1.0,
    draws: int = 16,
    batch_size: int = 256,
    steps: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify by sampling each image's latent zone: the share of ``draws`` latents per class.

    The final-step assignment probability of the label flow is ≈ one-hot (the flow ends on
    an anchor), so it carries no confidence. Drawing ε ``draws`` times at noise scale α
    samples the image's latent zone; the label flow sends each draw to a class, and the
    share of the majority class estimates how much of the zone lies in that class's zone.

    Returns:
        pred (n,) int64 (majority class, ties to the lower index) and confidence (n,) in [1/draws, 1].
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    from .compose import compose

    img, lab = find_modality(model, "image"), find_modality(model, "label")
    _check_images(images)
    classify: Any = compose(f"latent -> {lab}", model=model)  # the draws share one encoding
    gen = torch.Generator().manual_seed(seed)
    votes = torch.zeros(images.shape[0], int(model.bank(lab).shape[0]))
    for rows, k in _batches(images.shape[0], batch_size, gen):
        anchors = model.encode(img, images[rows])
        for _ in range(draws):
            noise = torch.randn(anchors.shape, generator=gen, dtype=anchors.dtype)
            z = model.latents(anchors, alpha=alpha, noise=noise)  # the batch zoned by itself
            labels = classify(z, steps=steps, batch_size=len(rows)).labels
            votes[rows[-k:], labels[-k:].cpu()] += 1
    conf, pred = votes.max(dim=1)
    return pred, conf / draws


def alpha_batch_sweep(
    model: LZNModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    alphas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2),
    batch_sizes: tuple[int, ...] = (32, 128, 300),
    steps: int | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Test accuracy of the label-flow classifier for every (α, inference batch) pair.

    Args:
        images: (n, C, H, W); labels: (n,) int64.

    Returns:
        rows ``{"alpha", "batch_size", "accuracy"}`` (batch sizes above n are capped at n).
    """
    from .evaluation import accuracy

    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    rows = []
    for b in batch_sizes:
        for a in alphas:
            pred, _ = label_flow_predict(model, images, alpha=a, batch_size=b, steps=steps, seed=seed)
            rows.append(
                {
                    "alpha": float(a),
                    "batch_size": min(int(b), images.shape[0]),
                    "accuracy": accuracy(pred, labels),
                }
            )
    return rows


def _label_condition(model: LZNModel, img: str, labels: torch.Tensor | None) -> torch.Tensor | None:
    cname = model.generate_condition(img)
    if cname is None:
        return None
    if labels is None:
        raise ValueError(f"the {img!r} decoder is conditioned on {cname!r}: pass the labels")
    return model.condition(cname, labels)


@torch.no_grad()
def reconstruction_error(
    model: LZNModel,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    draws: int = 20,
    steps: int | None = None,
    method: str | None = None,
    seed: int = 0,
) -> float:
    """Mean ℓ2 reconstruction error (PAPER.md §1.6) in [-1, 1] pixel space.

    z = C(x) over the batch ``images`` (fresh ε each draw, α of the recipe), the image
    decoder inverts the RF ODE x -> noise conditioned on z (and the true label's one-hot
    when it is conditioned on labels) and regenerates; score = mean over images and
    draws of ‖x̂ − x‖₂. A model whose decoder ignores the latent (``use_latent: false``,
    the RF baseline) gets the same number for every draw, so it is computed once.

    Args:
        images: (n, C, H, W) in [-1, 1], zoned as one batch (the paper uses n = 256).
        labels: (n,) int64 when the image decoder is label-conditioned.
        draws: draws of ε per image (paper: 20).
        steps, method: the decoder's ODE solver settings (defaults from its config).
    """
    img = find_modality(model, "image")
    dec = _dec(model, img)
    if not callable(getattr(dec, "reconstruct", None)):
        raise LZNError(f"the {img!r} decoder has no reconstruct(); it cannot be scored for reconstruction")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    cond = _label_condition(model, img, labels)
    anchors = model.encode(img, images)
    uses_latent = getattr(dec.config, "use_latent", True)
    gen = torch.Generator().manual_seed(seed)
    errs = []
    for _ in range(draws if uses_latent else 1):
        noise = torch.randn(anchors.shape, generator=gen, dtype=anchors.dtype)
        z = model.latents(anchors, noise=noise)
        rec = dec.reconstruct(images, z, cond, steps=steps, method=method)
        errs.append((rec - images).flatten(1).norm(dim=1).mean())
    return float(torch.stack(errs).mean())


@torch.no_grad()
def class_samples(
    model: LZNModel, classes: torch.Tensor, *, steps: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Class-conditional images: z = C({A_1..A_C})_k from class k's zone (Euler 100, α = 1).

    The one-hot of k conditions the decoder when the recipe trains it that way.

    Args:
        classes: (B,) int64.

    Returns:
        images (B, C, H, W) in [-1, 1].
    """
    from .compose import compose

    img, lab = find_modality(model, "image"), find_modality(model, "label")
    gen = torch.Generator().manual_seed(seed)
    draw: Any = compose(f"{lab} -> {img}", model=model)  # one edge: a Decode graph
    return draw(classes, alpha=1.0, steps=steps, generator=gen)


@torch.no_grad()
def unconditional_samples(
    model: LZNModel, n: int, *, steps: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Images from z ~ N(0, I); a label-conditioned decoder gets the label flow's class of z.

    Returns:
        images (n, C, H, W) in [-1, 1].
    """
    from .compose import compose

    gen = torch.Generator().manual_seed(seed)
    draw: Any = compose(f"latent -> {find_modality(model, 'image')}", model=model)  # a Generate graph
    return draw(n, steps=steps, generator=gen)


def ood_inputs(images: torch.Tensor, kind: str, *, seed: int = 0) -> torch.Tensor:
    """Out-of-distribution counterparts of ``images (n, C, H, W)``: "noise" (uniform in [-1, 1]) or "inverted" (−x)."""
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(images.shape, generator=gen) * 2 - 1
    if kind == "inverted":
        return -images
    raise ValueError(f"unknown OOD kind {kind!r}; choose 'noise' or 'inverted'")


def ood_confidences(
    model: LZNModel,
    images: torch.Tensor,
    kind: str,
    *,
    mode: str = "mixed",
    confidence: str = "vote",
    alpha: float = 1.0,
    draws: int = 16,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-flow confidences of in-distribution images and of their OOD counterparts.

    Args:
        kind: "noise" or "inverted" (see :func:`ood_inputs`).
        mode: "mixed": both sets are shuffled into the same inference batches (a request
            that contains some odd inputs); "separate": each set is zoned on its own. In
            "separate" mode an all-OOD batch still gets latents ≈ N(0, I) (the zoning maps
            any batch there), so confidence can only separate the sets through the decoder.
        confidence: "vote" (:func:`zone_vote` with ``alpha`` and ``draws``) or "final"
            (:func:`label_flow_predict`'s last-step probability at ``alpha``).

    Returns:
        (confidence of images (n,), confidence of the OOD inputs (n,)).
    """
    if confidence not in ("vote", "final"):
        raise ValueError(f"unknown confidence {confidence!r}; choose 'vote' or 'final'")
    if mode not in ("mixed", "separate"):
        raise ValueError(f"unknown OOD mode {mode!r}; choose 'mixed' or 'separate'")
    odd = ood_inputs(images, kind, seed=seed)

    def conf(x: torch.Tensor) -> torch.Tensor:
        if confidence == "vote":
            return zone_vote(model, x, alpha=alpha, draws=draws, batch_size=batch_size, seed=seed)[1]
        return label_flow_predict(model, x, alpha=alpha, batch_size=batch_size, seed=seed)[1]

    n = images.shape[0]
    if mode == "mixed":
        both = conf(torch.cat([images, odd]))
        return both[:n], both[n:]
    return conf(images), conf(odd)


_PROBE_KINDS = ("backbone", "anchor", "latent", "latent0")


@torch.no_grad()
def probe_features(
    model: LZNModel, images: torch.Tensor, kind: str, *, batch_size: int = 256, seed: int = 0
) -> torch.Tensor:
    """Frozen features of images for a linear probe (PAPER.md claim 12).

    Args:
        kind: "backbone" (the encoder's down path before the latent blocks: its
            ``features(x)`` when defined, else its last feature map flattened), "anchor"
            (encoder output), "latent" (α = recipe α) or "latent0" (α = 0, zone centre);
            latents are computed over batches of ``batch_size``.

    Returns:
        (n, d) features.
    """
    if kind not in _PROBE_KINDS:
        raise ValueError(f"unknown probe feature {kind!r}; choose one of {', '.join(_PROBE_KINDS)}")
    img = find_modality(model, "image")
    enc: Any = model.encoders[img]
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for rows in torch.arange(images.shape[0]).split(batch_size):
        x = images[rows]
        if kind == "backbone":
            if callable(getattr(enc, "features", None)):
                parts.append(enc.features(x).flatten(1))
            else:
                _, mid = enc.down(x)
                parts.append(mid.flatten(1))
            continue
        a = model.encode(img, x)
        if kind == "anchor":
            parts.append(a)
        else:
            noise = torch.randn(a.shape, generator=gen, dtype=a.dtype)
            parts.append(model.latents(a, alpha=0.0 if kind == "latent0" else None, noise=noise))
    out = torch.cat(parts)
    return out.float().cpu()
