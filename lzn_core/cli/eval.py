"""``lzn eval RUN_OR_MODEL``: every metric that applies to a trained model, as a table or JSON.

lzn eval runs/digits_joint                 # the run's final/ export, the paper's protocols
lzn eval model/ --data "data/digits/test-*.tar" --json --out eval/
lzn eval runs/cifar_joint --preset quick   # cheap settings (test items, 4 clipped draws, small batches)
lzn eval runs/cifar_gen --judge image.fid=clean-fid --judge image.fid_weights=inception-2015-12-05.pt

``--judge MODALITY.KEY=VALUE`` passes options to the judge of a modality's decoder (its
``SampleJudge``; the image decoder reads ``fid`` and ``fid_weights``, see ``lzn_image.judge``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import LZNError
from ..eval.protocol import probe_eval
from ..eval.report import PRESETS, evaluate, format_table, load_split
from ..io import load, locate

HELP = "evaluate a run or model: accuracy, calibration, OOD, FID/KID, reconstruction, probes"


def _numbers(text: str, what: str, cast: type = float) -> tuple[Any, ...]:
    try:
        vals = tuple(cast(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from exc
    if not vals:
        raise ValueError(f"{what}: give at least one value")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="RUN_OR_MODEL", help="run directory (uses final/), exported model or hub id"
    )
    parser.add_argument("--data", help="evaluation shards (default: the recipe's data.eval)")
    parser.add_argument("--train-data", help="real training shards (default: data.train)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    parser.add_argument("--out", help="write metrics.json, reliability and sample pictures here")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="paper: the authors' protocols (default); quick: cheap settings, not comparable",
    )
    parser.add_argument("--alphas", help="α values of the sweep (paper: 0,0.2,...,1.2)")
    parser.add_argument(
        "--batch-sizes", help="inference batch sizes of the sweep (paper: 2000; quick: 32,128,300)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        help="items drawn from the prior for each decoder's judge, e.g. FID/KID of images "
        "(paper: as many as the training items; 0: skip)",
    )
    parser.add_argument("--per-class", type=int, default=20, help="class-conditional samples per class")
    parser.add_argument("--recon", type=int, help="items scored for reconstruction (paper: 2000; 0: skip)")
    parser.add_argument(
        "--recon-split", choices=("train", "test"), help="items to reconstruct (paper: train)"
    )
    parser.add_argument("--draws", type=int, help="draws of ε per item for reconstruction (paper: 20)")
    parser.add_argument(
        "--recon-batch", type=int, help="inference batch of the reconstruction latents (paper: 2000)"
    )
    parser.add_argument(
        "--recon-clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clip the regenerated items to the data range (paper: no)",
    )
    parser.add_argument("--steps", type=int, default=None, help="sampler steps of the decoders")
    parser.add_argument(
        "--judge",
        action="append",
        default=[],
        metavar="MODALITY.KEY=VALUE",
        help="an option of the judge of MODALITY's decoder, repeatable (its plugin documents the keys; "
        "an unknown key is an error)",
    )
    parser.add_argument(
        "--probe-train-limit",
        type=int,
        default=None,
        help="training items of the recipe's eval.probe / eval.knn (0: all; default: the recipe's)",
    )
    parser.add_argument(
        "--probe-epochs", type=int, default=None, help="epochs of the linear probe (paper: 300)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use at most this many evaluation samples")
    parser.add_argument("--vote-draws", type=int, default=16, help="ε draws of the zone-vote confidence")
    parser.add_argument("--vote-alpha", type=float, default=1.0, help="α of the zone-vote confidence")
    parser.add_argument("--seed", type=int, default=0)


def _judge_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``["image.fid=clean-fid", ...]`` -> ``{"image": {"fid": "clean-fid"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        modality, dot, name = key.partition(".")
        if not (sep and dot and modality and name):
            raise ValueError(
                f"--judge {item!r}: expected MODALITY.KEY=VALUE (a key the modality's judge reads)"
            )
        out.setdefault(modality, {})[name] = value
    return out


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The preset's settings, with every option given on the command line in their place."""
    out = dict(PRESETS[args.preset])
    given = {
        "alphas": _numbers(args.alphas, "--alphas") if args.alphas else None,
        "batch_sizes": _numbers(args.batch_sizes, "--batch-sizes", int) if args.batch_sizes else None,
        "samples": args.samples,
        "recon": args.recon,
        "recon_split": args.recon_split,
        "draws": args.draws,
        "recon_batch": args.recon_batch,
        "recon_clip": args.recon_clip,
    }
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def _probes(model: Any, args: argparse.Namespace, train: str, test: str) -> dict[str, Any]:
    ecfg = model.recipe.eval
    if ecfg.probe is None and ecfg.knn is None:
        return {}
    changes: dict[str, Any] = {}
    if args.probe_train_limit is not None:
        changes["train_limit"] = args.probe_train_limit or None
    probe = ecfg.probe.model_copy(update=changes) if ecfg.probe is not None else None
    if probe is not None and args.probe_epochs:
        probe = probe.model_copy(update={"epochs": args.probe_epochs})
    knn = ecfg.knn.model_copy(update=changes) if ecfg.knn is not None else None
    res = probe_eval(model, train, test, probe=probe, knn=knn, seed=args.seed)
    return {f"{what} {r['features']} backbone -> {r['labels']}": r for what, r in res.items()}


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, print, write."""
    settings = _settings(args)
    model_dir = locate(args.model)
    model = load(model_dir)
    eval_pattern = args.data or model.recipe.data.eval
    if not eval_pattern:
        raise LZNError("the recipe has no data.eval; pass --data PATTERN")
    train_pattern = args.train_data or model.recipe.data.train
    t0 = time.time()
    res = evaluate(
        model,
        load_split(model, eval_pattern, limit=args.limit),
        load_split(model, train_pattern),
        **settings,
        per_class=args.per_class,
        steps=args.steps,
        judge=_judge_options(args.judge),
        out=Path(args.out) if args.out else None,
        seed=args.seed,
        vote_alpha=args.vote_alpha,
        vote_draws=args.vote_draws,
    )
    probes = _probes(model, args, train_pattern, eval_pattern)
    if probes:
        res["probe"] = probes
    res.update(
        model=str(model_dir), data=eval_pattern, preset=args.preset, seconds=round(time.time() - t0, 1)
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0
