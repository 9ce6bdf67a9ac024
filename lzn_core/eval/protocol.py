"""The paper's evaluation protocols on an :class:`~lzn_core.model.LZNModel` (docs/method.md §5).

Every function names the modalities it evaluates (``source``, ``target``, ...); what a model
offers is found from its recipe and its decoders' kinds (:func:`classification_edges`,
:func:`generation_targets`), never from modality names.

* :func:`zonal_predict` / :func:`alpha_batch_sweep`: classification through a zonal decoder
  (the label flow): latents of an inference batch of exactly ``batch_size`` items at noise
  scale α, zoned by themselves (no stored bank, the paper's minibatch evaluation), reverse flow
  over the class anchors, nearest anchor; the confidence is the zone vote.
* :func:`reconstruction_error`: z = C(x), invert the decoder's sampler conditioned on z (and
  the true condition), regenerate; ℓ2 in the items' space, averaged over draws of ε.
* :func:`class_samples` / :func:`unconditional_samples`: items from class zones or z ~ N(0, I).
* :func:`ood_confidences`: zone-vote confidence of in-distribution vs altered inputs.
* :func:`probe_features`: backbone / anchor / latent / latent α = 0 features (claim 12).
* :func:`backbone_features` / :func:`probe_eval`: the frozen backbone's features of a shard set
  (read batch by batch, so ImageNet need not fit in memory) and the recipe's ``eval.probe``
  (the paper's linear probe, top-1/top-5) and ``eval.knn`` (a cheap kNN accuracy) on them.

Every function is deterministic for a ``seed`` and runs under ``torch.no_grad``; classification
and sampling go through :func:`lzn_core.compose` (one implementation of each task).
"""

from __future__ import annotations

from typing import Any

import torch

from ..data import loader
from ..errors import LZNError
from ..graphs import compose
from ..modality import AnchorBank, BackboneFeatures, Reconstructs, move_batch
from ..model import LZNModel
from .metrics import accuracy, knn_accuracy, linear_probe_topk

__all__ = [
    "classification_edges",
    "generation_targets",
    "take",
    "zonal_predict",
    "alpha_batch_sweep",
    "reconstruction_error",
    "class_samples",
    "unconditional_samples",
    "ood_inputs",
    "ood_confidences",
    "probe_features",
    "backbone_features",
    "probe_eval",
]


SWEEP_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2)
"""α values of the authors' classification sweep (``tunable_std_class_accuracy.py``)."""
RECON_DRAWS = 20
"""Draws of ε per item of the paper's reconstruction error (the authors' ``num_recontruction_per_sample``)."""
RECON_ITEMS = 2000
"""Training images the authors score for CIFAR-10 (256 for the 256² data sets)."""
EVAL_BATCH = 2000
"""The authors' inference batch (``eval_batch_size``): latents of a batch depend on its other items."""


def classification_edges(model: LZNModel) -> list[tuple[str, str]]:
    """``(source, target)`` of every align task of the recipe whose target has a zonal decoder."""
    edges = []
    for task in model.recipe.tasks:
        if task.kind == "align" and task.source != task.target and model.decoder_kind(task.target) == "zonal":
            if (task.source, task.target) not in edges:
                edges.append((task.source, task.target))
    return edges


def generation_targets(model: LZNModel) -> list[str]:
    """Modalities whose generative decoder a generate task trains, in recipe order."""
    return [n for n in model.names if model.decoder_kind(n) == "generative" and model.trains_decoder(n)]


def take(batch: Any, rows: torch.Tensor | slice) -> Any:
    """Rows of a batch: a tensor (indexed) or a list of items."""
    if isinstance(batch, torch.Tensor):
        return batch[rows]
    index = range(len(batch))[rows] if isinstance(rows, slice) else rows.tolist()
    return [batch[i] for i in index]


def _size(batch: Any) -> int:
    n = len(batch)
    if n == 0:
        raise ValueError("the evaluation batch is empty")
    return n


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
    return [
        (perm[start + min(b, n - start) - b : start + min(b, n - start)], min(b, n - start))
        for start in range(0, n, b)
    ]


@torch.no_grad()
def zonal_predict(
    model: LZNModel,
    source: str,
    target: str,
    batch: Any,
    *,
    alpha: float = 0.0,
    batch_size: int = 256,
    steps: int | None = None,
    draws: int = 0,
    vote_alpha: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify ``batch`` of ``source`` into the zonal ``target`` (no cross-entropy head).

    Args:
        batch: n items of the source modality.
        alpha: noise scale α of the latents (0: zone centres).
        batch_size: inference batch b; latents of a batch depend on its other items.
        steps: Euler steps of the target's flow (default: its zonal decoder's).
        draws: ε draws of the zone-vote confidence (0: confidence NaN).
        vote_alpha: α of the zone-vote draws.
        seed: seeds the batch permutation and ε.

    Returns:
        pred (n,) int64 and confidence (n,).
    """
    n = _size(batch)
    classify: Any = compose(f"{source} -> {target}", model=model)
    gen = torch.Generator().manual_seed(seed)
    pred = torch.empty(n, dtype=torch.int64)
    conf = torch.empty(n)
    for rows, k in _batches(n, batch_size, gen):
        out = classify(
            take(batch, rows),
            alpha=alpha,
            steps=steps,
            draws=draws,
            vote_alpha=vote_alpha,
            bank_size=0,
            batch_size=len(rows),
            generator=gen,
        )
        pred[rows[-k:]], conf[rows[-k:]] = out.labels[-k:].cpu(), out.confidence[-k:].cpu().float()
    return pred, conf


def alpha_batch_sweep(
    model: LZNModel,
    source: str,
    target: str,
    batch: Any,
    labels: torch.Tensor,
    *,
    alphas: tuple[float, ...] = SWEEP_ALPHAS,
    batch_sizes: tuple[int, ...] = (EVAL_BATCH,),
    steps: int | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Test accuracy of the zonal classifier for every (α, inference batch) pair (the paper's Fig. 25).

    Defaults: the authors' ``TunableStdClassAccuracy`` (α ∈ {0, 0.2, ..., 1.2} at their inference
    batch 2000); pass smaller ``batch_sizes`` (e.g. 32, 128, 300) for a cheap look at the trend.

    Returns:
        rows ``{"alpha", "batch_size", "accuracy"}`` (batch sizes above n are capped at n).
    """
    n = _size(batch)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    rows = []
    for b in batch_sizes:
        for a in alphas:
            pred, _ = zonal_predict(
                model, source, target, batch, alpha=a, batch_size=b, steps=steps, seed=seed
            )
            rows.append({"alpha": float(a), "batch_size": min(int(b), n), "accuracy": accuracy(pred, labels)})
    return rows


def _condition(model: LZNModel, target: str, given: Any) -> Any:
    source = model.condition_source(target)
    if source is None:
        return None
    if given is None:
        raise ValueError(f"the {target!r} decoder is conditioned on {source!r}: pass its items (condition=)")
    return model.condition(source, given)


@torch.no_grad()
def reconstruction_error(
    model: LZNModel,
    name: str,
    batch: torch.Tensor,
    condition: Any = None,
    *,
    draws: int = RECON_DRAWS,
    batch_size: int = EVAL_BATCH,
    chunk: int = 500,
    clip: bool = False,
    steps: int | None = None,
    seed: int = 0,
) -> float:
    """Mean ℓ2 reconstruction error (docs/method.md §5) of items ``batch (n, ...)`` of ``name``.

    The authors' protocol (``Reconstructions``): per draw of ε, z = C(x) over inference batches of
    ``batch_size`` items (α of the recipe); the decoder inverts its sampler x -> noise
    conditioned on z (and ``condition``, items of the conditioning modality, when the decoder is
    conditioned) and regenerates (:class:`~lzn_core.modality.Reconstructs`), unclipped; score =
    mean over items and draws of ‖x̂ − x‖₂. The paper scores 2000 CIFAR-10 *training* images
    (:data:`RECON_ITEMS`) with 20 draws; the caller picks the items.

    Args:
        batch: (n, ...) float items.
        condition: n items of the conditioning modality (e.g. the true labels).
        draws: draws of ε (paper: 20).
        batch_size: inference batch of the latents (paper: 2000; the last batch is shorter).
        chunk: items per encoder / decoder call (memory only: neither depends on other items).
        clip: clip the regenerated items to the data range first (a cheaper, non-paper variant).
        steps: the decoder's sampler steps (default from its config).
    """
    decoder = model.decoders[name]
    if not isinstance(decoder, Reconstructs):
        raise LZNError(f"the {name!r} decoder has no reconstruct(); it cannot be scored for reconstruction")
    if draws < 1 or batch_size < 1 or chunk < 1:
        raise ValueError(f"draws, batch_size and chunk must be >= 1, got {draws}, {batch_size}, {chunk}")
    cond = _condition(model, name, condition)
    n = _size(batch)
    anchors = torch.cat([model.encode(name, batch[i : i + chunk]) for i in range(0, n, chunk)])
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(draws):
        noise = torch.randn(anchors.shape, generator=gen, dtype=anchors.dtype).to(anchors.device)
        z = torch.cat(
            [
                model.latents(anchors[i : i + batch_size], noise=noise[i : i + batch_size])
                for i in range(0, n, batch_size)
            ]
        )
        for i in range(0, n, chunk):
            x = batch[i : i + chunk]
            c = cond[i : i + chunk] if cond is not None else None
            rec = decoder.reconstruct(
                move_batch(x, model.device), z[i : i + chunk], c, steps=steps, clip=clip
            )
            total += float((rec - x.to(rec)).flatten(1).norm(dim=1).sum())
    return total / (n * draws)


@torch.no_grad()
def class_samples(
    model: LZNModel,
    zonal: str,
    target: str,
    classes: torch.Tensor,
    *,
    steps: int | None = None,
    seed: int = 0,
) -> Any:
    """Items of ``target`` from the zones of ``classes (B,)`` of ``zonal`` (Euler 100, α = 1).

    The condition of ``zonal`` (the one-hot) conditions the decoder when the recipe trains it that way.
    """
    gen = torch.Generator().manual_seed(seed)
    draw: Any = compose(f"{zonal} -> {target}", model=model)  # one edge: a Decode graph
    return draw(classes, alpha=1.0, steps=steps, generator=gen)


@torch.no_grad()
def unconditional_samples(
    model: LZNModel, target: str, n: int, *, steps: int | None = None, seed: int = 0
) -> Any:
    """n items of ``target`` from z ~ N(0, I); a conditioned decoder gets the zonal class of z."""
    gen = torch.Generator().manual_seed(seed)
    draw: Any = compose(f"latent -> {target}", model=model)  # a Generate graph
    return draw(n, steps=steps, generator=gen)


def ood_inputs(batch: torch.Tensor, kind: str, *, seed: int = 0) -> torch.Tensor:
    """Out-of-distribution counterparts of float items in [-1, 1]: "noise" (uniform) or "inverted" (−x)."""
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(batch.shape, generator=gen) * 2 - 1
    if kind == "inverted":
        return -batch
    raise ValueError(f"unknown OOD kind {kind!r}; choose 'noise' or 'inverted'")


def ood_confidences(
    model: LZNModel,
    source: str,
    target: str,
    batch: torch.Tensor,
    kind: str,
    *,
    mode: str = "mixed",
    alpha: float = 0.0,
    vote_alpha: float = 1.0,
    draws: int = 16,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zone-vote confidences of in-distribution items and of their OOD counterparts.

    Args:
        kind: "noise" or "inverted" (see :func:`ood_inputs`).
        mode: "mixed": both sets are shuffled into the same inference batches (a request that
            contains some odd inputs); "separate": each set is zoned on its own (an all-OOD
            batch still gets latents ≈ N(0, I), so the confidence can only separate the sets
            through the encoder and the flow).

    Returns:
        (confidence of the items (n,), confidence of the OOD inputs (n,)).
    """
    if mode not in ("mixed", "separate"):
        raise ValueError(f"unknown OOD mode {mode!r}; choose 'mixed' or 'separate'")
    odd = ood_inputs(batch, kind, seed=seed)

    def conf(x: torch.Tensor) -> torch.Tensor:
        return zonal_predict(
            model,
            source,
            target,
            x,
            alpha=alpha,
            vote_alpha=vote_alpha,
            draws=draws,
            batch_size=batch_size,
            seed=seed,
        )[1]

    n = batch.shape[0]
    if mode == "mixed":
        both = conf(torch.cat([batch, odd]))
        return both[:n], both[n:]
    return conf(batch), conf(odd)


PROBE_KINDS = ("backbone", "anchor", "latent", "latent0")


@torch.no_grad()
def probe_features(
    model: LZNModel, name: str, batch: Any, kind: str, *, batch_size: int = 256, seed: int = 0
) -> torch.Tensor:
    """Frozen features of items for a linear probe (docs/method.md §9, claim 12).

    Args:
        kind: "backbone" (the encoder's features before the latent blocks,
            :class:`~lzn_core.modality.BackboneFeatures`), "anchor" (encoder output),
            "latent" (α = recipe α) or "latent0" (α = 0, zone centre); latents are computed
            over batches of ``batch_size`` zoned by themselves.

    Returns:
        (n, d) float32 features on the CPU.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe feature {kind!r}; choose one of {', '.join(PROBE_KINDS)}")
    encoder: Any = model.encoders[name]
    if kind == "backbone" and not isinstance(encoder, BackboneFeatures):
        raise LZNError(
            f"the {name!r} encoder exposes no backbone features (lzn_core.modality.BackboneFeatures)"
        )
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, _size(batch), batch_size):
        x = take(batch, slice(start, start + batch_size))
        if kind == "backbone":
            parts.append(encoder.features(move_batch(x, model.device)).flatten(1))
            continue
        a = model.encode(name, x)
        if kind == "anchor":
            parts.append(a)
        else:
            noise = torch.randn(a.shape, generator=gen, dtype=a.dtype)
            parts.append(model.latents(a, alpha=0.0 if kind == "latent0" else None, noise=noise))
    return torch.cat(parts).float().cpu()


@torch.no_grad()
def backbone_features(
    model: LZNModel,
    features: str,
    labels: str,
    pattern: str,
    *,
    limit: int | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features of ``features``' items and the class indices of ``labels``' items, for the
    samples of the shards matching ``pattern`` (shard order, the first ``limit``).

    The items are encoded as the modality encodes a batch outside training (e.g. the image
    plugin's Resize + CenterCrop evaluation view of full-size images); nothing is augmented.

    Returns:
        features (n, d) float32 and labels (n,) int64, on the CPU.

    Raises:
        LZNError: the encoder has no backbone features, or ``labels``' items are not class indices.
    """
    encoder: Any = model.encoders[features]
    if not isinstance(encoder, BackboneFeatures):
        raise LZNError(
            f"the {features!r} encoder exposes no backbone features (lzn_core.modality.BackboneFeatures); "
            "point eval.probe / eval.knn features: at a modality whose encoder has them"
        )
    names = dict.fromkeys((features, labels))
    ld = loader(
        pattern,
        {n: model.specs[n] for n in names},
        configs={n: model.configs[n] for n in names},
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        infinite=False,
        num_workers=num_workers,
    )
    feats, ys, n = [], [], 0
    for batch in ld:
        y = batch[labels]
        if not (isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point()):
            raise LZNError(
                f"the items of {labels!r} are not class indices (got {type(y).__name__}); "
                "eval.probe / eval.knn labels: must name a modality whose items are ints (e.g. one reading cls)"
            )
        feats.append(encoder.features(move_batch(batch[features], model.device)).flatten(1).float().cpu())
        ys.append(y.long().cpu())
        n += len(y)
        if limit is not None and n >= limit:
            break
    if not feats:
        raise LZNError(f"no samples in {pattern} for the {features!r} backbone probe")
    return torch.cat(feats)[:limit], torch.cat(ys)[:limit]


def _num_classes(model: LZNModel, labels: str) -> int | None:
    encoder = model.encoders[labels]
    return int(encoder.bank().shape[0]) if isinstance(encoder, AnchorBank) else None


def probe_eval(
    model: LZNModel,
    train_pattern: str,
    test_pattern: str,
    *,
    probe: Any = None,
    knn: Any = None,
    num_workers: int = 0,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The recipe's probes of frozen backbone features: ``{"linear_probe": {...}, "knn": {...}}``.

    Args:
        train_pattern: shards whose features train the probe / fill the kNN bank (``data.train``).
        test_pattern: shards scored (``data.eval``).
        probe: an ``eval.probe`` (:class:`~lzn_core.recipe.schema.ProbeConfig`) or None.
        knn: an ``eval.knn`` (:class:`~lzn_core.recipe.schema.KnnConfig`) or None.

    Each result holds top1, top5, the modalities, the item counts and the settings used.
    """
    out: dict[str, dict[str, Any]] = {}
    cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def split(cfg: Any, pattern: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        key = (cfg.features, cfg.labels, pattern, limit)
        if key not in cache:
            cache[key] = backbone_features(
                model,
                cfg.features,
                cfg.labels,
                pattern,
                limit=limit,
                batch_size=cfg.batch_size,
                num_workers=num_workers,
            )
        return cache[key]

    for what, cfg in (("knn", knn), ("linear_probe", probe)):
        if cfg is None:
            continue
        (xtr, ytr), (xte, yte) = (
            split(cfg, train_pattern, cfg.train_limit),
            split(cfg, test_pattern, cfg.test_limit),
        )
        classes = _num_classes(model, cfg.labels)
        if what == "knn":
            res = knn_accuracy(xtr, ytr, xte, yte, k=cfg.k, temperature=cfg.temperature, num_classes=classes)
            setting = {"k": cfg.k, "temperature": cfg.temperature}
        else:
            res = linear_probe_topk(
                xtr,
                ytr,
                xte,
                yte,
                num_classes=classes,
                epochs=cfg.epochs,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                batch_size=cfg.probe_batch_size,
                seed=seed,
                device=model.device,
            )
            setting = {
                "optimizer": "AdamW",
                "epochs": cfg.epochs,
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "batch_size": cfg.probe_batch_size,
            }
        out[what] = {
            **res,
            "features": cfg.features,
            "labels": cfg.labels,
            "train_items": len(ytr),
            "test_items": len(yte),
            "feature_dim": int(xtr.shape[1]),
            **setting,
        }
    return out
