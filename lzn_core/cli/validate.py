"""``lzn validate RECIPE [key=value ...]``: check a recipe without training.

Resolves the plugins, validates every section (all problems at once, with field paths), and
checks what would otherwise fail only at train time: data patterns that match nothing (for a
URL pattern: a HEAD request for its first and last shard) and the DeepSpeed config.
"""

from __future__ import annotations

import argparse
import sys

from ..data import expand_pattern
from ..data._remote import head, is_url
from ..errors import DataError, RecipeError
from ..recipe import Recipe, load_recipe, resolve_recipe_path
from ..recipe.problems import format_problems
from .inputs import add_recipe_arguments

HELP = "check a recipe (and key=value overrides) without training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, "train.iterations=10")
    parser.add_argument(
        "--skip-data",
        action="store_true",
        help="do not check that the data patterns match shards (e.g. before copying data)",
    )


def data_problems(recipe: Recipe) -> list[str]:
    """``data.train`` / ``data.eval`` patterns that match no shard, as problem lines.

    A URL pattern is not globbed: its first and last shard are asked for with one HEAD request
    each (10 s timeout), which finds a wrong host, bucket, path or range end without downloading.
    """
    problems = []
    for field in ("train", "eval"):
        pattern = getattr(recipe.data, field)
        if pattern is None:
            continue
        try:
            names = expand_pattern(pattern)
        except DataError as exc:
            problems.append(f"data.{field}: {recipe.data.explain(exc)}")
            continue
        if is_url(pattern):
            for url in dict.fromkeys([names[0], names[-1]]):
                why = head(url)
                if why is not None:
                    problems.append(
                        f"data.{field}: {url}: {why} ({len(names)} shards in the pattern; "
                        "--skip-data skips this check)"
                    )
    return problems


def run(args: argparse.Namespace) -> int:
    """Print ``ok: PATH (summary)`` and return 0, or every problem and return 1."""
    try:
        path = resolve_recipe_path(args.recipe)
        recipe = load_recipe(path, args.overrides)
    except RecipeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    problems = [] if args.skip_data else data_problems(recipe)
    if problems:
        print(format_problems(path, problems), file=sys.stderr)
        return 1
    print(f"ok: {path} ({recipe.summary()})")
    return 0
