"""Every metric that applies to a trained model, as one JSON-able report (``lzn eval``).

What is measured follows from the model, not from modality names:

* for every classification edge ``S -> T`` (an align task into a zonal T): accuracy at the
  recipe's ``eval`` setting, the zone-vote confidence with its calibration (ECE and a
  reliability diagram), OOD rejection (AUROC of the confidence, items vs uniform noise /
  inverted items, for float tensor items) and the α × inference-batch sweep (default: the
  authors' α ∈ {0, ..., 1.2} at batch 2000);
* for every trained generative decoder T: what its :class:`~lzn_core.modality.SampleJudge`
  returns for class-conditional samples (when T is conditioned on a zonal modality; e.g. the
  image decoder's class consistency) and for ``samples`` items drawn from the prior, against the
  real training items (e.g. the image decoder's FID/KID and the features they were computed
  on), recorded as returned; a preview grid (:class:`~lzn_core.modality.PreviewWriter`); and the
  reconstruction error (:class:`~lzn_core.modality.Reconstructs`) with the paper's protocol by
  default (2000 training items, 20 draws, inference batch 2000, unclipped);
* with ``eval.probe`` / ``eval.knn`` in the recipe: the linear probe (top-1/top-5) and the kNN
  accuracy of the frozen backbone (:func:`~lzn_core.eval.protocol.probe_eval`), read from shards.

:data:`PRESETS` hold the settings: ``paper`` (the defaults above) and ``quick`` (the former
cheap ones: test items, 4 clipped draws, batches 32/128/300, 500 judged samples).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..data import loader
from ..errors import DataError
from ..modality import PreviewWriter, Reconstructs, SampleJudge
from ..model import LZNModel
from . import protocol as p
from .metrics import accuracy, auroc, expected_calibration_error, reliability_diagram

PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        alphas=p.SWEEP_ALPHAS,
        batch_sizes=(p.EVAL_BATCH,),
        samples=None,
        recon=p.RECON_ITEMS,
        recon_split="train",
        draws=p.RECON_DRAWS,
        recon_batch=p.EVAL_BATCH,
        recon_clip=False,
    ),
    "quick": dict(
        alphas=(0.0, 0.5, 1.0),
        batch_sizes=(32, 128, 300),
        samples=500,
        recon=256,
        recon_split="test",
        draws=4,
        recon_batch=256,
        recon_clip=True,
    ),
}
"""Evaluation settings: ``paper`` (the authors' protocols) and ``quick`` (cheap, not comparable).
``samples=None``: as many generated items as real training items (the paper: 50k on CIFAR-10)."""


def join(parts: list[Any]) -> Any:
    """Concatenate batches: tensors along dim 0, lists of items one after the other."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [x for part in parts for x in part]


def needed_modalities(model: LZNModel) -> list[str]:
    """The modalities :func:`evaluate` reads: classification edges, generated targets, their conditions."""
    names = [n for edge in p.classification_edges(model) for n in edge]
    for target in p.generation_targets(model):
        source = model.condition_source(target)
        names += [target] + ([source] if source else [])
    return [n for n in model.names if n in names]


def load_split(
    model: LZNModel, pattern: str, names: list[str] | None = None, *, limit: int | None = None
) -> dict[str, Any]:
    """All samples of the shards matching ``pattern`` (shard order), decoded by the model's modalities.

    Args:
        names: modalities to read (default: :func:`needed_modalities`).
        limit: keep at most this many samples.

    Returns:
        ``{modality name: batch}`` holding every sample.
    """
    names = needed_modalities(model) if names is None else names
    if not names:
        return {}
    specs = {n: model.specs[n] for n in names}
    configs = {n: model.configs[n] for n in names}
    with model.recipe.data.explained():  # the recipe's own shards: say how they are made (data.make)
        ld = loader(
            pattern,
            specs,
            configs=configs,
            batch_size=512,
            shuffle=False,
            drop_last=False,
            infinite=False,
            replace_bad=False,
        )
    parts: dict[str, list[Any]] = {n: [] for n in names}
    for batch in ld:
        for n in names:
            parts[n].append(batch[n])
    if not parts[names[0]]:
        raise DataError(f"no samples in {pattern}")
    out = {n: join(v) for n, v in parts.items()}
    return {n: p.take(v, slice(0, limit)) for n, v in out.items()} if limit else out


def evaluate(
    model: LZNModel,
    test: dict[str, Any],
    train: dict[str, Any],
    *,
    alphas: tuple[float, ...] = p.SWEEP_ALPHAS,
    batch_sizes: tuple[int, ...] = (p.EVAL_BATCH,),
    samples: int | None = None,
    per_class: int = 20,
    recon: int = p.RECON_ITEMS,
    recon_split: str = "train",
    draws: int = p.RECON_DRAWS,
    recon_batch: int = p.EVAL_BATCH,
    recon_clip: bool = False,
    steps: int | None = None,
    judge: Mapping[str, Mapping[str, str]] | None = None,
    out: Path | None = None,
    seed: int = 0,
    vote_alpha: float = 1.0,
    vote_draws: int = 16,
    classify: bool = True,
) -> dict[str, Any]:
    """Every metric that applies to ``model`` on ``{modality name: batch}`` test/train splits.

    Defaults are the paper's protocols (:data:`PRESETS` ``paper``). ``classify=False`` skips the
    classification metrics (e.g. for a baseline whose zonal anchors are never trained).

    Args:
        samples: items drawn from the prior for each decoder's judge (FID/KID for images; None: as
            many as the real training items; 0: none).
        recon: items scored for reconstruction (0: skip), the first ``recon`` of ``recon_split``
            ("train", the paper, or "test").
        draws, recon_batch, recon_clip: see :func:`~lzn_core.eval.protocol.reconstruction_error`.
        judge: ``{modality: {key: value}}``: options of each decoder's judge
            (``SampleJudge.judge_samples(..., options=)``; e.g. the image decoder's ``fid``).

    Returns:
        ``{"n_test", "classification": {"S -> T": {...}}, "generation": {"T": {...}}}``.
    """
    judge = dict(judge or {})
    judged = [t for t in p.generation_targets(model) if isinstance(model.decoders[t], SampleJudge)]
    stray = sorted(set(judge) - set(judged))
    if stray:
        raise ValueError(
            f"judge options for {', '.join(stray)}: no trained decoder of that name judges samples "
            f"(judges: {', '.join(judged) or 'none'})"
        )
    if recon_split not in ("train", "test"):
        raise ValueError(f"recon_split must be 'train' or 'test', got {recon_split!r}")
    first = next(iter(test.values()), None)
    res: dict[str, Any] = {
        "n_test": len(first) if first is not None else 0,
        "classification": {},
        "generation": {},
    }
    for source, target in p.classification_edges(model) if classify else []:
        if source in test and target in test:
            res["classification"][f"{source} -> {target}"] = _classification(
                model,
                source,
                target,
                test[source],
                test[target],
                alphas,
                batch_sizes,
                out,
                seed,
                vote_alpha,
                vote_draws,
            )
    recon_kw = dict(n=recon, split=recon_split, draws=draws, batch=recon_batch, clip=recon_clip)
    for target in p.generation_targets(model):
        if target in test:
            res["generation"][target] = _generation(
                model, target, test, train, samples, per_class, recon_kw, steps, judge.get(target), out, seed
            )
    return res


def _classification(
    model: LZNModel,
    source: str,
    target: str,
    x: Any,
    y: torch.Tensor,
    alphas: tuple[float, ...],
    batch_sizes: tuple[int, ...],
    out: Path | None,
    seed: int,
    vote_alpha: float,
    vote_draws: int,
) -> dict[str, Any]:
    ecfg = model.recipe.eval
    setting = dict(batch_size=ecfg.batch_size, steps=ecfg.steps, seed=seed)
    pred, conf = p.zonal_predict(
        model, source, target, x, alpha=ecfg.alpha, draws=vote_draws, vote_alpha=vote_alpha, **setting
    )
    ece = expected_calibration_error(conf, pred == y)
    if out is not None:
        reliability_diagram(
            ece,
            out / f"reliability-{source}-{target}.png",
            title=f"{source} -> {target}: zone-vote confidence ({vote_draws} draws, α={vote_alpha}), ECE {ece['ece']:.3f}",
        )
    ood: dict[str, float] = {}
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        for kind in ("noise", "inverted"):
            for mode in ("mixed", "separate"):
                c_in, c_out = p.ood_confidences(
                    model,
                    source,
                    target,
                    x,
                    kind,
                    mode=mode,
                    alpha=ecfg.alpha,
                    vote_alpha=vote_alpha,
                    draws=vote_draws,
                    batch_size=ecfg.batch_size,
                    seed=seed,
                )
                ood[f"{kind}_{mode}"] = auroc(c_in, c_out)
    sweep = p.alpha_batch_sweep(
        model, source, target, x, y, alphas=alphas, batch_sizes=batch_sizes, steps=ecfg.steps, seed=seed
    )
    return {
        "accuracy": accuracy(pred, y),
        "setting": {"alpha": ecfg.alpha, "batch_size": min(ecfg.batch_size, len(y)), "steps": ecfg.steps},
        "vote_setting": {"alpha": vote_alpha, "draws": vote_draws},
        "mean_confidence": float(conf.mean()),
        "ece": ece["ece"],
        "ood_auroc": ood,
        "sweep": sweep,
    }


def _generation(
    model: LZNModel,
    target: str,
    test: dict[str, Any],
    train: dict[str, Any],
    samples: int | None,
    per_class: int,
    recon: dict[str, Any],
    steps: int | None,
    options: Mapping[str, str] | None,
    out: Path | None,
    seed: int,
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    decoder = model.decoders[target]
    real = train.get(target, test[target])
    zonal = model.condition_source(target)
    zonal = zonal if zonal is not None and model.decoder_kind(zonal) == "zonal" else None
    labels = (train if target in train else test).get(zonal) if zonal else None
    if zonal is not None and per_class:
        classes = torch.arange(int(model.bank(zonal).shape[0])).repeat_interleave(per_class)
        items = p.class_samples(model, zonal, target, classes, steps=steps, seed=seed)
        if isinstance(decoder, SampleJudge) and labels is not None:
            res.update(decoder.judge_samples(items, classes, real, labels, options=options))
        if isinstance(decoder, PreviewWriter) and out is not None:
            out.mkdir(parents=True, exist_ok=True)
            decoder.save_preview(items, out / f"samples-{target}.png", nrow=per_class)
    n_fake = len(real) if samples is None else samples
    if n_fake and isinstance(decoder, SampleJudge):
        fake = p.unconditional_samples(model, target, n_fake, steps=steps, seed=seed)
        res.update(decoder.judge_samples(fake, None, real, labels, held_out=test[target], options=options))
    items = train if recon["split"] == "train" and target in train else test
    if recon["n"] and isinstance(decoder, Reconstructs) and isinstance(items[target], torch.Tensor):
        cond_source = model.condition_source(target)
        n = min(recon["n"], len(items[target]))
        condition = p.take(items[cond_source], slice(0, n)) if cond_source in items else None
        res["recon_error"] = p.reconstruction_error(
            model,
            target,
            items[target][:n],
            condition,
            draws=recon["draws"],
            batch_size=recon["batch"],
            clip=recon["clip"],
            steps=steps,
            seed=seed,
        )
        res["recon_setting"] = {
            "items": n,
            "split": recon["split"] if items is train else "test",
            "draws": recon["draws"],
            "batch_size": recon["batch"],
            "clipped": recon["clip"],
        }
    return res


def format_table(res: dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate` result."""
    lines = [f"model: {res.get('model', '?')}   data: {res.get('data', '?')}   n_test: {res['n_test']}"]

    def row(name: str, value: Any) -> None:
        lines.append(f"  {name:<40} {value:.4f}" if isinstance(value, float) else f"  {name:<40} {value}")

    for edge, c in res.get("classification", {}).items():
        lines.append(f"{edge}:")
        s, v = c["setting"], c["vote_setting"]
        row(f"accuracy (α={s['alpha']}, batch {s['batch_size']})", c["accuracy"])
        row(f"mean zone-vote confidence ({v['draws']} draws, α={v['alpha']})", c["mean_confidence"])
        row("ECE of the zone-vote confidence", c["ece"])
        for k, val in c["ood_auroc"].items():
            row(f"OOD AUROC {k}", val)
        alphas = sorted({r["alpha"] for r in c["sweep"]})
        sizes = sorted({r["batch_size"] for r in c["sweep"]})
        acc = {(r["alpha"], r["batch_size"]): r["accuracy"] for r in c["sweep"]}
        lines.append("  accuracy by α (rows) and inference batch (columns):")
        lines.append("    α     " + "".join(f"{b:>8}" for b in sizes))
        for a in alphas:
            lines.append(f"    {a:<5} " + "".join(f"{acc[(a, b)]:>8.4f}" for b in sizes))
    for target, g in res.get("generation", {}).items():
        lines.append(f"generation of {target}:")
        for key, val in g.items():  # what the judges returned, in their order, then the reconstruction
            if key == "recon_setting":
                continue
            if key == "recon_error":
                s = g["recon_setting"]
                clipped = "clipped" if s["clipped"] else "unclipped"
                key += f" ({s['items']} {s['split']} items, {s['draws']} draws, batch {s['batch_size']}, {clipped})"
            row(key, val)
    for what, r in res.get("probe", {}).items():
        lines.append(f"{what}:")
        for key, val in r.items():
            row(key, val)
    return "\n".join(lines)
