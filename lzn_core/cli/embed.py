"""``lzn embed MODEL FILES -o OUT.safetensors``: representations (latents, anchors or backbone features)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

from ..io import load
from .inputs import add_input_arguments, add_model_arguments, compose_over_inputs, read_inputs

HELP = "write representations of files (backbone features, anchors or latents)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(
        parser,
        "  lzn embed model/ images/ -o feats.safetensors                  # latents at α = 0\n"
        "  lzn embed model/ images/ -o feats.safetensors --what backbone  # for linear probes\n"
        "  python -c \"from safetensors.torch import load_file; print(load_file('feats.safetensors'))\"\n",
    )
    add_input_arguments(parser)
    parser.add_argument(
        "-o", "--output", required=True, help="output .safetensors file (key 'features': (n, d))"
    )
    parser.add_argument(
        "--what",
        choices=("latent", "anchor", "backbone"),
        default="latent",
        help="latent (zoned with the bank, α), anchor (encoder output) or backbone (pooled features "
        "before the latent blocks); default: latent",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.0, help="noise scale α of latents (default 0: zone centre)"
    )


def run(args: argparse.Namespace) -> int:
    """Write ``features`` (n, d) with the input paths in the file's metadata."""
    model = load(args.model, device=args.device)
    files, src, batch = read_inputs(model, args.source, args.inputs)
    graph = compose_over_inputs(args, model, f"{src} -> latent", what=args.what, alpha=args.alpha)
    feats = graph(batch, seed=args.seed).float().cpu().contiguous()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "paths": json.dumps([str(f) for f in files]),
        "what": args.what,
        "modality": src,
        "alpha": str(args.alpha),
    }
    save_file({"features": feats}, str(out), metadata=meta)
    print(f"wrote {args.what} features {tuple(feats.shape)} of {len(files)} file(s) to {out}")
    return 0
