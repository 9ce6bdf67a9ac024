"""Reading recipes from files: where a bare name resolves, YAML, ``key=value`` overrides,
and the DeepSpeed JSON a recipe names (checked by :mod:`~lzn_core.recipe.ds_config`).

Bare names resolve in the current directory, then in the shipped recipes
(:data:`RECIPES_DIR`: the ``recipes/`` folder of a clone, installed as the package
``lzn_recipes``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import RecipeError, did_you_mean
from .ds_config import deepspeed_problems
from .problems import field_names, flat_dict, step


def _shipped_recipes() -> Path:
    spec = importlib.util.find_spec("lzn_recipes")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "recipes"


RECIPES_DIR = _shipped_recipes()
"""The repository's shipped recipes (``recipes/*.yaml``); bare names resolve here after the cwd."""


def read_deepspeed(value: Any, base: Path | None, train: Any = None) -> tuple[Any, list[str]]:
    """The recipe's ``deepspeed`` value -> (the config dict, its problem lines).

    A path (relative: to ``base``, the cwd, then the shipped recipes) is read as JSON; a dict
    is taken as given; anything else passes through (the schema reports it). The dict is
    checked by :func:`~lzn_core.recipe.ds_config.deepspeed_problems` (with ``train``: also
    against the recipe's ``train`` section). A file that cannot be read returns ``value``.
    """
    if isinstance(value, dict):
        return value, deepspeed_problems(value, train)
    if not isinstance(value, str):
        return value, []
    path = Path(value)
    candidates = [path] if path.is_absolute() else [c / path for c in ([base] if base else []) + [Path.cwd()]]
    candidates += [] if path.is_absolute() else [RECIPES_DIR / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        tried = ", ".join(str(c) for c in candidates)
        return value, [f"deepspeed: file {value!r} not found (looked at {tried})"]
    try:
        data = json.loads(found.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return value, [f"deepspeed: cannot read {found} as JSON: {exc}"]
    if not isinstance(data, dict):
        return value, [f"deepspeed: {found} must hold a JSON object, got {type(data).__name__}"]
    return data, deepspeed_problems(data, train)


def _available_recipes() -> list[str]:
    names = {p.name for d in (Path.cwd(), RECIPES_DIR) for ext in ("*.yaml", "*.yml") for p in d.glob(ext)}
    return sorted(names)


def resolve_recipe_path(name: str | Path) -> Path:
    """Find a recipe file: ``name`` as a path (relative to the cwd), then in the repo's ``recipes/``.

    A missing ``.yaml`` suffix is added. Raises :class:`RecipeError` listing the
    recipes available in the cwd and in ``recipes/`` when nothing matches.
    """
    path = Path(name)
    variants = [path] if path.suffix in (".yaml", ".yml") else [path, path.with_name(path.name + ".yaml")]
    for base in (Path.cwd(), RECIPES_DIR):
        for variant in variants:
            candidate = variant if variant.is_absolute() else base / variant
            if candidate.is_file():
                return candidate
    available = _available_recipes()
    hint = did_you_mean(path.name, available) or did_you_mean(path.name + ".yaml", available)
    raise RecipeError(
        f"recipe {str(name)!r} not found in the current directory ({Path.cwd()}) or in {RECIPES_DIR}{hint}\n"
        f"  available: {', '.join(available) or '(none)'}"
    )


def read_yaml(path: Path) -> dict[str, Any]:

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"recipe {path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"recipe {path}: the top level must be a mapping of keys, got {type(data).__name__}"
        )
    return data


def apply_override(data: dict[str, Any], item: str, root: Any) -> str | None:
    """Apply one ``dotted.key=value`` override to ``data`` in place; a problem line or None.

    The value is parsed as a YAML scalar (``64``, ``1.0e-3``, ``dpm``, ``null``, ``[1, 2]``).
    List elements are addressed by index (``tasks.1.steps``). A missing intermediate key
    is created only where the schema has that field; the last key is set as given
    (validation then reports an unknown one as an extra field).
    """

    key, sep, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or "" in parts:
        return f"override {item!r}: expected key=value with a dotted key, e.g. train.batch_size=64"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return f"override {key}: cannot parse value {text!r} as YAML: {getattr(exc, 'problem', exc)}"
    node: Any = data
    tp = root
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth]) or "the recipe"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"override {key}: {here} is a list of {len(node)}; {part!r} is not an index 0..{len(node) - 1}"
            index = int(part)
            if last:
                node[index] = value
                return None
            node, tp = node[index], step(tp, index)
            continue
        if not isinstance(node, dict):
            return f"override {key}: {here} is a {type(node).__name__}, not a mapping"
        if flat_dict(tp):  # keys may hold dots: train.lr.image.decoder=1e-3
            part, last = ".".join(parts[depth:]), True
        if last:
            node[part] = value
            return None
        if part not in node:
            fields = field_names(tp)
            if part not in fields:
                choices = list(dict.fromkeys([*map(str, node), *fields]))
                return f"override {key}: unknown key {'.'.join(parts[: depth + 1])!r}{did_you_mean(part, choices)}"
            node[part] = {}
        node, tp = node[part], step(tp, part)
    return None
