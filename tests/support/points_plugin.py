"""The test plugin with its own batch type, ``lzn-points`` (``PointBatch``), registered in this process
beside label without installing it, and a recipe of points + label for one step of the real script."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from paths import THIRDPARTY

sys.path.insert(0, str(THIRDPARTY / "lzn-points"))
import lzn_points  # noqa: E402


@contextlib.contextmanager
def points_registered() -> Iterator[Any]:
    """The process's plugin registry with label and points only while the block runs; yields the
    ``lzn_points`` module."""
    from lzn_core.plugins import PluginRegistry, discover_entry_points, registry, reset_plugins

    ep = SimpleNamespace(name="points", value="lzn_points", group="lzn", dist=None, load=lambda: lzn_points)
    previous = registry()
    reset_plugins(PluginRegistry([*discover_entry_points(), ep], environ={"LZN_PLUGINS": "label,points"}))
    try:
        yield lzn_points
    finally:
        reset_plugins(previous)


def points_recipe(latent_dim: int, train: dict[str, Any], **sections: Any) -> Any:
    """A recipe that generates points conditioned on the label and aligns points to label (3 classes)."""
    from lzn_core.recipe import Recipe

    return Recipe.model_validate(
        {
            "name": "points",
            "latent": {"dim": latent_dim, "steps": 4, "g": 1e-3},
            "modalities": {
                "points": {"plugin": "points"},
                "label": {"plugin": "label", "config": {"num_classes": 3}},
            },
            "tasks": [
                {"kind": "generate", "target": "points", "condition": "label"},
                {"kind": "align", "source": "points", "target": "label", "steps": 4},
            ],
            "data": {"train": "unused-*.tar"},
            "train": train,
            **sections,
        }
    )
