"""Every metric that applies to a trained model, as one JSON-able report (``lzn eval``).

What is measured follows from the model, not from modality names:

* for every classification edge ``S -> T`` (an align task into a zonal T): accuracy at the
  recipe's ``eval`` setting, the zone-vote confidence with its calibration (ECE and a
  reliability diagram), OOD rejection (AUROC of the confidence, items vs uniform noise /
  inverted items, for float tensor items) and the α × inference-batch sweep (default: the
  authors' α ∈ {0, ..., 1.2} at batch 2000);
* for every trained generative decoder T: class consistency of class-conditional samples when
  T is conditioned on a zonal modality (the decoder's :class:`~lzn_core.modality.SampleJudge`),
  a preview grid (:class:`~lzn_core.modality.PreviewWriter`), FID/KID of unconditional samples
  against the real training items for image-like items, by the implementation ``fid`` names and
  the result records (``fid_features``): clean-fid (:class:`~lzn_core.eval.features.
  CleanFIDFeatures`, the paper's clean-fid column) or the features of a small classifier fitted
  on the real training items (:class:`~lzn_core.data.digits.DigitFeatures`, the embedded
  digits); and the reconstruction error (:class:`~lzn_core.modality.Reconstructs`) with the
  paper's protocol by default (2000 training items, 20 draws, inference batch 2000, unclipped);
* with ``eval.probe`` / ``eval.knn`` in the recipe: the linear probe (top-1/top-5) and the kNN
  accuracy of the frozen backbone (:func:`~lzn_core.eval.protocol.probe_eval`), read from shards.

:data:`PRESETS` hold the settings: ``paper`` (the defaults above) and ``quick`` (the former
cheap ones: test items, 4 clipped draws, batches 32/128/300, 500 FID samples).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data import loader
from ..data.digits import digit_features
from ..errors import DataError, LZNError
from ..modality import PreviewWriter, Reconstructs, SampleJudge
from ..model import LZNModel
from . import protocol as p
from .features import CLEAN_FID, DIGIT_FEATURES, CleanFIDFeatures
from .metrics import (
    accuracy,
    auroc,
    expected_calibration_error,
    frechet_distance,
    kernel_inception_distance,
    reliability_diagram,
)

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

FID_CHOICES = ("auto", CLEAN_FID, "digits", "none")


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
    fid: str = "auto",
    fid_weights: str | None = None,
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
        samples: generated items for FID/KID (None: as many as the real training items; 0: none).
        recon: items scored for reconstruction (0: skip), the first ``recon`` of ``recon_split``
            ("train", the paper, or "test").
        draws, recon_batch, recon_clip: see :func:`~lzn_core.eval.protocol.reconstruction_error`.
        fid: "clean-fid" (needs ``lzn[fid]`` and the Inception weights), "digits" (a classifier
            fitted on the real training items), "none", or "auto" (clean-fid when its weights are
            found, else "digits"); the result names what was used (``fid_features``).
        fid_weights: clean-fid's ``inception-2015-12-05.pt`` (or its folder).

    Returns:
        ``{"n_test", "classification": {"S -> T": {...}}, "generation": {"T": {...}}}``.
    """
    if fid not in FID_CHOICES:
        raise ValueError(f"unknown FID implementation {fid!r}; choose one of {', '.join(FID_CHOICES)}")
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
                model, target, test, train, samples, per_class, recon_kw, steps, fid, fid_weights, out, seed
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


def _image_like(batch: Any) -> bool:
    return isinstance(batch, torch.Tensor) and batch.is_floating_point() and batch.dim() == 4


def _fid_extractor(
    fid: str, weights: str | None, real: torch.Tensor, labels: Any, seed: int
) -> tuple[Any, str, str | None]:
    """(extractor, its name, why there is none) for the ``fid`` choice of :func:`evaluate`."""
    if fid in (CLEAN_FID, "auto"):
        try:
            return CleanFIDFeatures(weights), CLEAN_FID, None
        except LZNError as exc:
            if fid == CLEAN_FID:
                raise
            why = str(exc)
    else:
        why = "fid: none" if fid == "none" else "no labels to fit the classifier features on"
    if fid in ("digits", "auto") and labels is not None:
        return digit_features(real, labels, seed=seed), DIGIT_FEATURES, None
    return None, "", why


def _generation(
    model: LZNModel,
    target: str,
    test: dict[str, Any],
    train: dict[str, Any],
    samples: int | None,
    per_class: int,
    recon: dict[str, Any],
    steps: int | None,
    fid: str,
    fid_weights: str | None,
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
            res.update(decoder.judge_samples(items, classes, real, labels))
        if isinstance(decoder, PreviewWriter) and out is not None:
            decoder.save_preview(items, out / f"samples-{target}.png", nrow=per_class)
    n_fake = len(real) if samples is None else samples
    if n_fake and fid != "none" and _image_like(real):
        extractor, name, why = _fid_extractor(fid, fid_weights, real, labels, seed)
        if extractor is None:
            res["fid_skipped"] = why
        else:
            fake = p.unconditional_samples(model, target, n_fake, steps=steps, seed=seed)
            f_real, f_fake, f_test = extractor(real), extractor(fake), extractor(test[target])
            kid, kid_std = kernel_inception_distance(
                f_real, f_fake, subsets=20, subset_size=min(1000, n_fake, len(real))
            )
            res.update(
                fid=frechet_distance(f_real, f_fake),
                kid=kid,
                kid_std=kid_std,
                fid_features=name,
                fid_real_test_vs_train=frechet_distance(f_real, f_test),
                fid_samples=n_fake,
                fid_real=len(real),
            )
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
        if "fid_features" in g:
            lines.append(
                f"  FID/KID implementation: {g['fid_features']} ({g['fid_samples']} samples vs "
                f"{g['fid_real']} real training items)"
            )
        elif "fid_skipped" in g:
            lines.append(f"  FID/KID not computed: {g['fid_skipped']}")
        for key, val in g.items():
            if key in ("fid_features", "fid_samples", "fid_real", "fid_skipped", "recon_setting"):
                continue
            if key in ("fid", "kid", "fid_real_test_vs_train"):
                key += f" [{g['fid_features']}]"
            elif key == "recon_error":
                s = g["recon_setting"]
                clipped = "clipped" if s["clipped"] else "unclipped"
                key += f" ({s['items']} {s['split']} items, {s['draws']} draws, batch {s['batch_size']}, {clipped})"
            row(key, val)
    for what, r in res.get("probe", {}).items():
        lines.append(f"{what}:")
        for key, val in r.items():
            row(key, val)
    return "\n".join(lines)
