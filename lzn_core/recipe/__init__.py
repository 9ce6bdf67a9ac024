"""Recipes: one pydantic schema for YAML files and ``compose`` (``extra="forbid"`` everywhere).

* :mod:`~lzn_core.recipe.schema`: the models (:class:`Recipe`, tasks, ...), :func:`load_recipe`,
  :func:`validate_recipe`;
* :mod:`~lzn_core.recipe.problems`: pydantic errors and cross-field checks as problem lines
  with field paths and suggestions, all reported together;
* :mod:`~lzn_core.recipe.files`: where a bare name resolves, YAML, ``key=value`` overrides and
  the DeepSpeed JSON.
"""

from __future__ import annotations

from .files import RECIPES_DIR, resolve_recipe_path
from .schema import (
    AlignTask,
    DataConfig,
    EvalConfig,
    GenerateTask,
    LatentConfig,
    ModalityEntry,
    Recipe,
    Task,
    TrainConfig,
    load_recipe,
    validate_recipe,
)

__all__ = [
    "RECIPES_DIR",
    "AlignTask",
    "DataConfig",
    "EvalConfig",
    "GenerateTask",
    "LatentConfig",
    "ModalityEntry",
    "Recipe",
    "Task",
    "TrainConfig",
    "load_recipe",
    "resolve_recipe_path",
    "validate_recipe",
]
