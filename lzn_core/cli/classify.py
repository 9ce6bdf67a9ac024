"""``lzn classify MODEL FILES``: items -> a zonal modality (the label flow), with a confidence."""

from __future__ import annotations

import argparse
import json

from ..io import load
from .inputs import (
    add_input_arguments,
    add_model_arguments,
    compose_over_inputs,
    read_inputs,
    zonal_modality,
)

HELP = "classify files with the label flow (nearest class zone, zone-vote confidence)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(
        parser,
        "  lzn classify model/ images/                     # table: path, label, confidence\n"
        "  lzn classify model/ a.png b.png --json          # one JSON object per line\n"
        "  lzn classify model/ images/ --alpha 0 --bank-size 0 --batch-size 2000   # paper's evaluation\n",
    )
    add_input_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--target", default=None, help="zonal modality to classify into (default: the first)")
    parser.add_argument(
        "--alpha", type=float, default=0.0, help="noise scale α of the latents (default 0: zone centre)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Euler steps of the zonal flow (default: the zonal decoder's, e.g. the label config's flow_steps)",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=16,
        help="latents drawn from each input's zone for the confidence: the share of them the label flow "
        "sends to the predicted class (default 16; 0: no confidence)",
    )


def run(args: argparse.Namespace) -> int:
    """A table (or JSON lines) of path, class and confidence on stdout."""
    model = load(args.model, device=args.device)
    files, src, batch = read_inputs(model, args.source, args.inputs)
    dst = zonal_modality(model, args.target)
    graph = compose_over_inputs(
        args, model, f"{src} -> {dst}", alpha=args.alpha, steps=args.steps, draws=args.draws
    )
    pred = graph(batch, seed=args.seed)
    rows = [
        (str(f), int(k), float(c))
        for f, k, c in zip(files, pred.labels.tolist(), pred.confidence.tolist(), strict=True)
    ]
    if args.json:
        for path, label, conf in rows:
            print(
                json.dumps({"path": path, dst: label, "confidence": None if conf != conf else round(conf, 6)})
            )
        return 0
    width = max(len("path"), *(len(r[0]) for r in rows))
    print(f"{'path':<{width}}  {dst:>6}  confidence")
    for path, label, conf in rows:
        print(f"{path:<{width}}  {label:>6}  {conf:10.4f}")
    return 0
