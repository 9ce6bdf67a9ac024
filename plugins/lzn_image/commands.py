"""The image plugin's ``lzn`` commands (hook ``lzn_register_commands`` in :mod:`lzn_image.plugin`).

``lzn import-official CHECKPOINT.pt --case {1,2,3} OUT/``: an authors' checkpoint as an exported
model (:mod:`lzn_image.official`, imported when the command runs: torch is not needed for
``lzn --help``).
"""

from __future__ import annotations

import argparse

CASES = (1, 2, 3)
"""The paper's case studies an official checkpoint can be imported as (see :mod:`lzn_image.official`)."""

HELP = "convert a checkpoint of the paper's official code into an exported model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lzn import-official CHECKPOINT.pt --case {1,2,3} OUT/``."""
    parser.add_argument("checkpoint", help="a .pt checkpoint of github.com/microsoft/latent-zoning-networks")
    parser.add_argument("out", help="output directory for model.safetensors + recipe.yaml")
    parser.add_argument("--case", type=int, choices=CASES, required=True,
                        help="1: generation (CIFAR-10 or 256²), 2: ImageNet ResNet-50, 3: CIFAR-10 joint")  # fmt: skip
    parser.add_argument("--bank", metavar="SHARDS", help="shard pattern whose images fill the anchor bank")
    parser.add_argument("--bank-size", type=int, help="anchors in the bank (default: the case's eval batch)")
    parser.add_argument("--raw", action="store_true", help="import the raw weights instead of the EMA ones")


def run(args: argparse.Namespace) -> int:
    """Run ``lzn import-official``: print what was written; 0 on success."""
    from .official import import_official

    out = import_official(
        args.checkpoint, args.case, args.out, bank=args.bank, ema=not args.raw, bank_size=args.bank_size
    )
    weights = "raw" if args.raw else "EMA"
    print(
        f"imported {args.checkpoint} (case {args.case}, {weights} weights) -> {out}/; load it with lzn_core.load({str(out)!r})"
    )
    return 0
