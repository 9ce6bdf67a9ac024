"""``lzn plan RECIPE [key=value ...] [--device-memory 80GiB]``: the memory plan of a training step.

What ``train.micro_batch_size: auto`` would choose (:mod:`lzn_core.train.plan`): one real step's
networks measured at two small micro-batch sizes on this machine's device (CUDA when there is
one, else the CPU), the state counted from the parameters, and the largest micro-batch that fits
the device's memory less the headroom. ``--device-memory`` plans for another device (the
measurement stays here: plan an 80 GiB GPU from a laptop). Reads one batch of the recipe's
training shards; trains nothing.
"""

from __future__ import annotations

import argparse
import json

import torch

from ..data import loader
from ..modality import move_batch
from ..model import LZNModel
from ..recipe import load_recipe, resolve_recipe_path
from ..train.plan import HEADROOM, SIZES, device_budget, parse_bytes, step_memory
from .inputs import add_recipe_arguments

HELP = "the memory plan of a training step: rows per micro-batch, passes, predicted peak (train.micro_batch_size: auto)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, "train.precision=bf16")
    parser.add_argument(
        "--device-memory",
        type=parse_bytes,
        nargs="+",
        default=None,
        metavar="SIZE",
        help="plan for devices of this much memory, e.g. 40GiB 80GiB 140GiB (default: the device measured on)",
    )
    parser.add_argument(
        "--headroom", type=float, default=HEADROOM, help=f"share left free (default {HEADROOM})"
    )
    parser.add_argument("--world", type=int, default=1, help="ranks the batch is split over (default 1)")
    parser.add_argument(
        "--device", default=None, help="where to measure: cuda or cpu (default: cuda if present)"
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs=2,
        default=list(SIZES),
        metavar=("M1", "M2"),
        help="measured micro-batch sizes",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the plan (one line, or JSON)."""
    from lzn_recipes.train import task_losses  # the step that is planned: the training script's

    if args.world < 1 or not 0 <= args.headroom < 1:
        raise ValueError("--world must be >= 1 and --headroom in [0, 1)")
    path = resolve_recipe_path(args.recipe)
    recipe = load_recipe(path, args.overrides)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(recipe.seed)
    model = LZNModel(recipe).to(device)
    rows = recipe.train.batch_size // args.world
    data = loader(
        recipe.data.train, model.specs, configs=model.configs, batch_size=rows, seed=recipe.seed + 1
    )
    batch = {k: move_batch(v, device) for k, v in next(iter(data)).items()}
    measured = step_memory(
        model,
        recipe,
        batch,
        lambda b, n: task_losses(model, recipe, b, 0, 0, args.world, n),
        world=args.world,
        sizes=tuple(args.sizes),
    )
    memories = args.device_memory or [device_budget(device)]
    plans = [measured.choose(m, args.headroom) for m in memories]
    if args.json:
        print(json.dumps({"recipe": str(path), "plans": [p.to_dict() for p in plans]}, indent=2))
    else:
        for plan in plans:
            print(f"{recipe.name} ({path}): {plan.describe()}")
    return 0
