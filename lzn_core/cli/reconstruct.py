"""``lzn reconstruct MODEL FILES``: item -> latent -> item through the model (what the latent keeps)."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..io import load
from .inputs import (
    add_input_arguments,
    add_model_arguments,
    compose_over_inputs,
    read_inputs,
    write_output,
)

HELP = "reconstruct files through their latent"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(
        parser,
        "  lzn reconstruct model/ img.png -o out.png             # decode the image's latent (α = 0)\n"
        "  lzn reconstruct model/ images/ --side-by-side         # rows of (original, reconstruction)\n"
        "  lzn reconstruct model/ img.png --mode invert          # the paper's metric: invert the ODE\n",
    )
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", default=None, help="output file (default: <first input>_recon.png)")
    parser.add_argument(
        "--mode",
        choices=("latent", "invert"),
        default="latent",
        help="latent: decode z with fresh noise (what the latent keeps); invert: invert the decoder's "
        "sampler to noise given z, then regenerate (the paper's reconstruction error); default: latent",
    )
    parser.add_argument("--alpha", type=float, default=0.0, help="noise scale α of the latent (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="decoder sampler steps (default: its config)")
    parser.add_argument(
        "--side-by-side", action="store_true", help="put each original next to its reconstruction"
    )


def _interleave(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            raise ValueError(
                f"--side-by-side: inputs {tuple(a.shape)} and reconstructions {tuple(b.shape)} differ in shape"
            )
        return torch.stack([a.to(b), b], dim=1).flatten(0, 1)
    return [x for pair in zip(a, b, strict=True) for x in pair]


def run(args: argparse.Namespace) -> int:
    """Write the reconstructions (a grid for several inputs) with the modality's preview writer."""
    model = load(args.model, device=args.device)
    files, src, batch = read_inputs(model, args.source, args.inputs)
    graph = compose_over_inputs(args, model, f"{src} -> {src}", alpha=args.alpha, mode=args.mode)
    rec = graph(batch, steps=args.steps, seed=args.seed)
    nrow = None
    if args.side_by_side:
        rec, nrow = _interleave(batch, rec), 2
    write_output(model, src, rec, args.output or f"{files[0].stem}_recon.png", "reconstruction", nrow=nrow)
    return 0
