"""``lzn eval RUN_OR_MODEL``: every metric that applies to a trained model, as a table and JSON.

    lzn eval runs/digits_joint                 # the run's final/ export
    lzn eval model/ --data "data/digits/test-*.tar" --json --out eval/

Accuracy (label flow, α x inference-batch sweep), calibration (ECE + reliability
diagram), OOD rejection (AUROC of the confidence, digits vs uniform noise / inverted
digits), class consistency of class-conditional samples (an SVC fitted on real
training images), FID/KID of unconditional samples (digit-classifier features, or
Inception features from ``--inception WEIGHTS``) and, with ``--recon N``, the
reconstruction error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError, LZNError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import LZNModel


def resolve_model_dir(path: str | Path) -> Path:
    """An exported model directory: ``path`` itself or ``path/final`` (a run directory).

    Raises:
        FileNotFoundError: neither holds ``model.safetensors``; the message says what to run.
    """
    p = Path(path)
    for cand in (p, p / "final"):
        if (cand / "model.safetensors").is_file():
            return cand
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; give a run directory (runs/NAME) or an exported model")
    raise FileNotFoundError(
        f"no model.safetensors in {p} or {p / 'final'}; finish training or run `lzn export {p} OUT` first"
    )


def load_split(model: LZNModel, pattern: str, *, limit: int | None = None) -> dict[str, Any]:
    """All samples of the shards matching ``pattern`` (shard order), decoded by the model's modalities.

    Returns:
        ``{modality name: batch}`` holding every sample (at most ``limit``).
    """
    import torch

    from .data import loader

    specs = {name: model.specs[name] for name in model.names if model.specs[name].name in ("image", "label")}
    ld = loader(pattern, specs, batch_size=512, shuffle=False, drop_last=False, infinite=False)
    parts: dict[str, list[Any]] = {name: [] for name in specs}
    for batch in ld:
        for name in specs:
            parts[name].append(batch[name])
    if not parts or not next(iter(parts.values())):
        raise DataError(f"no samples in {pattern}")
    out = {name: torch.cat(v) for name, v in parts.items()}
    return {k: v[:limit] for k, v in out.items()} if limit else out


def _floats(text: str, what: str, cast: type = float) -> tuple[Any, ...]:
    try:
        vals = tuple(cast(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from exc
    if not vals:
        raise ValueError(f"{what}: give at least one value")
    return vals


def cli_eval_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lzn eval``."""
    parser.add_argument("model", metavar="RUN_OR_MODEL", help="run directory (uses final/) or exported model")
    parser.add_argument("--data", help="evaluation shards (default: the recipe's data.eval)")
    parser.add_argument("--train-data", help="real training shards for the judges (default: data.train)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    parser.add_argument("--out", help="write metrics.json, reliability.png and samples.png here")
    parser.add_argument("--alphas", default="0,0.2,0.4,0.6,0.8,1.0,1.2", help="α values of the sweep")
    parser.add_argument("--batch-sizes", default="32,128,300", help="inference batch sizes of the sweep")
    parser.add_argument("--samples", type=int, default=500, help="generated images for FID/KID (0: skip)")
    parser.add_argument("--per-class", type=int, default=20, help="class-conditional samples per class")
    parser.add_argument("--recon", type=int, default=0, help="images scored for reconstruction (0: skip)")
    parser.add_argument("--draws", type=int, default=4, help="draws of ε per image for reconstruction")
    parser.add_argument("--steps", type=int, default=None, help="ODE steps of the image decoder")
    parser.add_argument("--inception", help="local inception_v3 weights: FID/KID on Inception features")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many evaluation samples")
    parser.add_argument("--vote-draws", type=int, default=16, help="ε draws of the zone-vote confidence")
    parser.add_argument("--vote-alpha", type=float, default=1.0, help="α of the zone-vote confidence")
    parser.add_argument("--seed", type=int, default=0)


def cli_eval(args: argparse.Namespace) -> int:
    """Run ``lzn eval``: load, evaluate, print, write."""
    from .export import load

    alphas = _floats(args.alphas, "--alphas")
    batch_sizes = _floats(args.batch_sizes, "--batch-sizes", int)
    model_dir = resolve_model_dir(args.model)
    model = load(model_dir).eval()
    eval_pattern = args.data or model.recipe.data.eval
    if not eval_pattern:
        raise LZNError("the recipe has no data.eval; pass --data PATTERN")
    t0 = time.time()
    res = evaluate(
        model,
        load_split(model, eval_pattern, limit=args.limit),
        load_split(model, args.train_data or model.recipe.data.train),
        alphas=alphas,
        batch_sizes=batch_sizes,
        samples=args.samples,
        per_class=args.per_class,
        recon=args.recon,
        draws=args.draws,
        steps=args.steps,
        inception=args.inception,
        out=Path(args.out) if args.out else None,
        seed=args.seed,
        vote_alpha=args.vote_alpha,
        vote_draws=args.vote_draws,
    )
    res.update(model=str(model_dir), data=eval_pattern, seconds=round(time.time() - t0, 1))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0


def evaluate(
    model: LZNModel,
    test: dict[str, torch.Tensor],
    train: dict[str, torch.Tensor],
    *,
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0),
    batch_sizes: tuple[int, ...] = (32, 300),
    samples: int = 500,
    per_class: int = 20,
    recon: int = 0,
    draws: int = 4,
    steps: int | None = None,
    inception: str | None = None,
    out: Path | None = None,
    seed: int = 0,
    vote_alpha: float = 1.0,
    vote_draws: int = 16,
    classify: bool = True,
) -> dict[str, Any]:
    """Every metric that applies to ``model``, on test/train tensors ``{modality name: batch}``.

    ``classify=False`` skips the label-flow metrics (e.g. for the RF baseline, whose label
    anchors are never trained).

    Returns:
        a JSON-able dict; keys present depend on the model's modalities.
    """
    from . import evalmodel as em

    img = em.find_modality(model, "image", required=False)
    lab = em.find_modality(model, "label", required=False)
    if img is None:
        raise LZNError(f"lzn eval needs an image modality; this model has {', '.join(model.names)}")
    res: dict[str, Any] = {"n_test": int(test[img].shape[0])}
    if lab is not None and classify:
        res.update(
            _classification(
                model, test[img], test[lab], alphas, batch_sizes, out, seed, vote_alpha, vote_draws
            )
        )
    if getattr(model.decoders[img], "kind", None) == "generative":
        res.update(_generation(model, test, train, img, lab, samples, per_class, steps, inception, out, seed))
        if recon:
            labels = test[lab][:recon] if lab is not None and model.generate_condition(img) else None
            res["recon_error"] = em.reconstruction_error(
                model, test[img][:recon], labels, draws=draws, steps=steps, seed=seed
            )
    return res


def _classification(
    model: LZNModel,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: tuple[float, ...],
    batch_sizes: tuple[int, ...],
    out: Path | None,
    seed: int,
    vote_alpha: float = 1.0,
    vote_draws: int = 16,
) -> dict[str, Any]:
    from . import evalmodel as em
    from .evaluation import accuracy, auroc, expected_calibration_error, reliability_diagram

    ecfg = model.recipe.eval
    pred, conf = em.label_flow_predict(
        model, x, alpha=ecfg.alpha, batch_size=ecfg.batch_size, steps=ecfg.steps, seed=seed
    )
    vpred, vconf = em.zone_vote(
        model, x, alpha=vote_alpha, draws=vote_draws, batch_size=ecfg.batch_size, steps=ecfg.steps, seed=seed
    )
    ece_final = expected_calibration_error(conf, pred == y)
    ece = expected_calibration_error(vconf, vpred == y)
    if out is not None:
        reliability_diagram(
            ece,
            out / "reliability.png",
            title=f"zone-vote confidence ({vote_draws} draws, α={vote_alpha}), ECE {ece['ece']:.3f}",
        )
    ood: dict[str, float] = {}
    for kind in ("noise", "inverted"):
        for mode in ("mixed", "separate"):
            c_in, c_out = em.ood_confidences(
                model,
                x,
                kind,
                mode=mode,
                alpha=vote_alpha,
                draws=vote_draws,
                batch_size=ecfg.batch_size,
                seed=seed,
            )
            ood[f"{kind}_{mode}"] = auroc(c_in, c_out)
    sweep = em.alpha_batch_sweep(
        model, x, y, alphas=alphas, batch_sizes=batch_sizes, steps=ecfg.steps, seed=seed
    )
    return {
        "accuracy": accuracy(pred, y),
        "accuracy_setting": {
            "alpha": ecfg.alpha,
            "batch_size": min(ecfg.batch_size, len(y)),
            "steps": ecfg.steps,
        },
        "mean_confidence_final": float(conf.mean()),
        "ece_final": ece_final["ece"],
        "vote_accuracy": accuracy(vpred, y),
        "vote_setting": {"alpha": vote_alpha, "draws": vote_draws},
        "mean_confidence": float(vconf.mean()),
        "ece": ece["ece"],
        "ood_auroc": ood,
        "sweep": sweep,
    }


def _generation(
    model: LZNModel,
    test: dict[str, Any],
    train: dict[str, Any],
    img: str,
    lab: str | None,
    samples: int,
    per_class: int,
    steps: int | None,
    inception: str | None,
    out: Path | None,
    seed: int,
) -> dict[str, Any]:
    import torch

    from . import evalmodel as em
    from .evaluation import frechet_distance, kernel_inception_distance
    from .features import InceptionFeatures, digit_features

    res: dict[str, Any] = {}
    real = train[img]
    if lab is not None and per_class:
        classes = torch.arange(int(model.bank(lab).shape[0])).repeat_interleave(per_class)
        imgs = em.class_samples(model, classes, steps=steps, seed=seed)
        judge = _svc_judge(real, train[lab])
        res["class_consistency"] = float((torch.as_tensor(judge(imgs)) == classes).float().mean())
        res["judge_test_accuracy"] = float((torch.as_tensor(judge(test[img])) == test[lab]).float().mean())
        if out is not None:
            _save_grid(
                imgs.view(-1, per_class, *imgs.shape[1:])[:, :10].flatten(0, 1),
                out / "samples.png",
                min(per_class, 10),
            )
    if samples:
        fake = em.unconditional_samples(model, samples, steps=steps, seed=seed)
        extractor: Any
        if inception:
            extractor, name = InceptionFeatures(inception), "inception"
        elif lab is not None:
            extractor, name = digit_features(real, train[lab], seed=seed), "digit-classifier"
        else:
            raise LZNError(
                "FID/KID without labels needs --inception WEIGHTS (a local inception_v3 state dict)"
            )
        f_real, f_fake, f_test = extractor(real), extractor(fake), extractor(test[img])
        kid, kid_std = kernel_inception_distance(f_real, f_fake, subsets=20, subset_size=min(500, samples))
        res.update(
            fid=frechet_distance(f_real, f_fake),
            kid=kid,
            kid_std=kid_std,
            fid_features=name,
            fid_real_test_vs_train=frechet_distance(f_real, f_test),
            fid_samples=samples,
        )
    return res


def _svc_judge(images: torch.Tensor, labels: torch.Tensor) -> Any:
    """An SVC (RBF) fitted on real images' pixels: images (n, C, H, W) -> predicted labels (n,)."""
    from sklearn.svm import SVC

    svc = SVC(gamma="scale", C=10.0).fit(images.flatten(1).numpy(), labels.numpy())
    return lambda x: svc.predict(x.flatten(1).float().numpy())


def _save_grid(images: torch.Tensor, path: Path, ncol: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 0.6, nrow * 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            x = images[i].float().clamp(-1, 1) * 0.5 + 0.5
            ax.imshow((x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0, right=1, top=1, bottom=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(res: dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate` result."""
    lines = [f"model: {res.get('model', '?')}   data: {res.get('data', '?')}   n_test: {res['n_test']}"]

    def row(name: str, value: Any) -> None:
        lines.append(f"  {name:<34} {value:.4f}" if isinstance(value, float) else f"  {name:<34} {value}")

    if "accuracy" in res:
        s = res["accuracy_setting"]
        row(f"accuracy (α={s['alpha']}, batch {s['batch_size']})", res["accuracy"])
        row("ECE, last-step probability", res["ece_final"])
        v = res["vote_setting"]
        row(f"accuracy, zone vote (α={v['alpha']}, {v['draws']} draws)", res["vote_accuracy"])
        row("mean zone-vote confidence", res["mean_confidence"])
        row("ECE, zone-vote confidence", res["ece"])
        for k, v in res["ood_auroc"].items():
            row(f"OOD AUROC {k} (zone vote)", v)
    for key in (
        "class_consistency",
        "judge_test_accuracy",
        "fid",
        "kid",
        "fid_real_test_vs_train",
        "recon_error",
    ):
        if key in res:
            row(key + (f" ({res['fid_features']})" if key in ("fid", "kid") else ""), res[key])
    if "sweep" in res:
        alphas = sorted({r["alpha"] for r in res["sweep"]})
        sizes = sorted({r["batch_size"] for r in res["sweep"]})
        acc = {(r["alpha"], r["batch_size"]): r["accuracy"] for r in res["sweep"]}
        lines.append("  accuracy by α (rows) and inference batch (columns):")
        lines.append("    α     " + "".join(f"{b:>8}" for b in sizes))
        for a in alphas:
            lines.append(f"    {a:<5} " + "".join(f"{acc[(a, b)]:>8.4f}" for b in sizes))
    return "\n".join(lines)
