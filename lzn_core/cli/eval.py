"""``lzn eval RUN_OR_MODEL``: every metric that applies to a trained model, as a table or JSON.

lzn eval runs/digits_joint                 # the run's final/ export
lzn eval model/ --data "data/digits/test-*.tar" --json --out eval/
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import LZNError
from ..eval.report import evaluate, format_table, load_split
from ..hub.pretrained import model_dir
from ..weights import load

HELP = "evaluate a run or model: accuracy, calibration, OOD, FID/KID, reconstruction"


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
    parser.add_argument("--train-data", help="real training shards for the judges (default: data.train)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    parser.add_argument("--out", help="write metrics.json, reliability and sample pictures here")
    parser.add_argument("--alphas", default="0,0.2,0.4,0.6,0.8,1.0,1.2", help="α values of the sweep")
    parser.add_argument("--batch-sizes", default="32,128,300", help="inference batch sizes of the sweep")
    parser.add_argument("--samples", type=int, default=500, help="generated items for FID/KID (0: skip)")
    parser.add_argument("--per-class", type=int, default=20, help="class-conditional samples per class")
    parser.add_argument("--recon", type=int, default=0, help="items scored for reconstruction (0: skip)")
    parser.add_argument("--draws", type=int, default=4, help="draws of ε per item for reconstruction")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps of the decoders")
    parser.add_argument("--inception", help="local inception_v3 weights: FID/KID on Inception features")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many evaluation samples")
    parser.add_argument("--vote-draws", type=int, default=16, help="ε draws of the zone-vote confidence")
    parser.add_argument("--vote-alpha", type=float, default=1.0, help="α of the zone-vote confidence")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, print, write."""
    alphas = _numbers(args.alphas, "--alphas")
    batch_sizes = _numbers(args.batch_sizes, "--batch-sizes", int)
    folder = model_dir(args.model)
    model = load(folder).eval()
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
    res.update(model=str(folder), data=eval_pattern, seconds=round(time.time() - t0, 1))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0
