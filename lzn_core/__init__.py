"""Latent Zoning Networks: one shared Gaussian latent space for every modality.

The public API is imported lazily, so ``import lzn_core`` stays fast (no torch,
no plugin discovery): each name below is loaded from its module on first use.

    import lzn_core
    model = lzn_core.load("runs/digits_joint/final")      # or a hub id: lzn_core.load("user/lzn-digits")
    classify = lzn_core.compose("image -> label", model=model)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (``load``, also ``from_pretrained``: a directory, a run or a hub id)
_LAZY: dict[str, str] = {
    "compose": "lzn_core.graphs",
    "possible_edges": "lzn_core.graphs",
    "load": "lzn_core.io",
    "from_pretrained": "lzn_core.io",
    "save_pretrained": "lzn_core.io",
    "push_to_hub": "lzn_core.io",
    "export_run": "lzn_core.io",
    "Recipe": "lzn_core.recipe",
    "load_recipe": "lzn_core.recipe",
    "LZNModel": "lzn_core.model",
    "ModalitySpec": "lzn_core.modality",
    "Encoder": "lzn_core.modality",
    "Decoder": "lzn_core.modality",
    "get_modality": "lzn_core.plugins",
    "list_modalities": "lzn_core.plugins",
    "list_plugins": "lzn_core.plugins",
    "PluginInfo": "lzn_core.plugins",
    "hookimpl": "lzn_core.hookspecs",
    "LZNError": "lzn_core.errors",
}
_SUBMODULES = (
    "alignment",
    "cli",
    "data",
    "errors",
    "eval",
    "graphs",
    "io",
    "latent",
    "modality",
    "model",
    "plugins",
    "recipe",
    "testing",
    "train",
    "zoning",
)

__all__ = [
    "Decoder",
    "Encoder",
    "LZNError",
    "LZNModel",
    "ModalitySpec",
    "PluginInfo",
    "Recipe",
    "alignment",
    "cli",
    "compose",
    "data",
    "errors",
    "eval",
    "export_run",
    "from_pretrained",
    "get_modality",
    "graphs",
    "hookimpl",
    "io",
    "latent",
    "list_modalities",
    "list_plugins",
    "load",
    "load_recipe",
    "modality",
    "model",
    "plugins",
    "possible_edges",
    "push_to_hub",
    "recipe",
    "save_pretrained",
    "testing",
    "train",
    "zoning",
]

if TYPE_CHECKING:  # pragma: no cover
    from .errors import LZNError
    from .graphs.compose import compose, possible_edges
    from .hookspecs import hookimpl
    from .io import export_run, from_pretrained, load, push_to_hub, save_pretrained
    from .modality import Decoder, Encoder, ModalitySpec
    from .model import LZNModel
    from .plugins import PluginInfo, get_modality, list_modalities, list_plugins
    from .recipe import Recipe, load_recipe


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lzn_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
