"""``lzn sample MODEL``: generate items from z ~ N(0, I), or from the zones of given classes."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..errors import LZNError
from ..graphs import compose
from ..io import load
from ..model import LZNModel
from .inputs import add_model_arguments, write_output, zonal_modality

HELP = "generate items from a model (optionally from the zone of a class)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(
        parser,
        "  lzn sample model/ -n 16 -o grid.png              # unconditional: z ~ N(0, I) -> decoder\n"
        "  lzn sample model/ --label 3 -n 16 -o threes.png  # 16 samples from the zone of class 3\n"
        "  lzn sample model/ --label 0 1 2 -n 8             # 8 per class, one row per class\n",
        zoned=False,
    )
    parser.add_argument(
        "--label",
        type=int,
        nargs="+",
        default=None,
        help="class index(es) of the zonal modality to sample from",
    )
    parser.add_argument(
        "--zonal", default=None, help="the zonal modality --label refers to (default: the first)"
    )
    parser.add_argument(
        "-n", "--num", type=int, default=16, help="samples (per class with --label; default 16)"
    )
    parser.add_argument(
        "-o", "--output", default=None, help="output file (default: samples.png, or stdout for text)"
    )
    parser.add_argument(
        "--target", default=None, help="modality to generate (default: the first trained decoder)"
    )
    parser.add_argument("--steps", type=int, default=None, help="decoder sampler steps (default: its config)")
    parser.add_argument(
        "--alpha", type=float, default=1.0, help="noise scale α of class-zone latents (default 1)"
    )


def _target(model: LZNModel, wanted: str | None) -> str:
    trained = [n for n in model.names if model.decoder_kind(n) == "generative" and model.trains_decoder(n)]
    if wanted is not None:
        if wanted not in trained:
            raise LZNError(
                f"{wanted!r} has no trained decoder in this model (trained: {', '.join(trained) or 'none'})"
            )
        return wanted
    if not trained:
        raise LZNError(
            f"this model trains no decoder (modalities: {', '.join(model.names)}); nothing to sample"
        )
    return trained[0]


def run(args: argparse.Namespace) -> int:
    """Generate, then write a picture (or lines of text) with the target's preview writer."""
    if args.num < 1:
        raise ValueError(f"-n must be >= 1, got {args.num}")
    model = load(args.model, device=args.device)
    target = _target(model, args.target)
    opts: dict[str, Any] = dict(batch_size=args.batch_size, progress=True)
    if args.label is None:
        graph: Any = compose(f"latent -> {target}", model=model, **opts)
        out, nrow = graph(args.num, steps=args.steps, seed=args.seed), None
    else:
        zonal = zonal_modality(model, args.zonal)
        classes = torch.tensor(args.label, dtype=torch.int64).repeat_interleave(args.num)
        graph = compose(f"{zonal} -> {target}", model=model, alpha=args.alpha, **opts)
        out, nrow = graph(classes, steps=args.steps, seed=args.seed), args.num
    path = args.output if args.output is not None else None
    write_output(model, target, out, path, "sample", nrow=nrow)
    return 0
