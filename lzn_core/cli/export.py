"""``lzn export RUN_DIR OUT``: a run's EMA weights (safetensors) + its resolved recipe."""

from __future__ import annotations

import argparse

from ..io import RECIPE, WEIGHTS, export_run

HELP = "write a run's weights (safetensors) + resolved recipe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run directory (runs/<name>)")
    parser.add_argument("out", help="output directory for model.safetensors + recipe.yaml")


def run(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out)
    print(f"exported {args.run_dir} -> {out}/{WEIGHTS} + {RECIPE}; load it with lzn_core.load({str(out)!r})")
    return 0
