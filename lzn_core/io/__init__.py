"""Model files: where a model is, how it is read, written, exported and shared.

* :mod:`~lzn_core.io.files`: the exported format (``model.safetensors`` + ``recipe.yaml`` +
  ``info.json``): writing, reading, ``info.json``;
* :mod:`~lzn_core.io.export`: a training run's checkpoint (or ``final/``) -> the format;
* :mod:`~lzn_core.io.hub`: the Hugging Face hub (download, ``save_pretrained``, ``push_to_hub``,
  the model card).

:func:`locate` is the one place that turns what a user gives (an exported directory, a run
directory, a hub id) into a local folder (and :func:`run_metrics` that folder into its run's
``metrics.jsonl``), and :func:`load` the one way a model is read (``lzn_core.load``; every
command that takes MODEL calls it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .export import export_run
from .files import (
    FINAL,
    INFO,
    METRICS,
    RECIPE,
    WEIGHTS,
    read_info,
    read_model,
    resolve_model_dir,
    run_metrics,
    write_model,
)
from .hub import MODEL_FILES, download, is_hub_id, push_to_hub, save_pretrained

if TYPE_CHECKING:  # pragma: no cover
    from ..model import LZNModel

__all__ = [
    "FINAL",
    "INFO",
    "METRICS",
    "MODEL_FILES",
    "RECIPE",
    "WEIGHTS",
    "export_run",
    "from_pretrained",
    "load",
    "locate",
    "push_to_hub",
    "read_info",
    "run_metrics",
    "save_pretrained",
    "write_model",
]


def locate(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    files: Sequence[str] = MODEL_FILES,
) -> Path:
    """The local folder of a model: an exported directory, a run directory's ``final/``, or a hub
    id's copy in the Hugging Face cache (a string ``user/name`` that is no existing path).

    Args:
        name_or_path: an exported model directory, a run directory, or a hub id ``user/name``.
        revision, cache_dir, token, local_files_only, files: hub ids only; see
            :func:`lzn_core.io.hub.download`.

    Raises:
        FileNotFoundError: a local path without a model (the message says what to run).
        LZNError: a hub id that cannot be had (see :func:`lzn_core.io.hub.download`).
    """
    if is_hub_id(name_or_path):
        return download(
            str(name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            files=files,
        )
    return resolve_model_dir(name_or_path)


def load(
    name_or_path: str | Path,
    *,
    device: str = "cpu",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> LZNModel:
    """Load a model (``lzn_core.load``): an exported directory, a run directory (its ``final/``) or
    a hub id ``user/name``; eval mode, on ``device``.

    Args:
        name_or_path: see :func:`locate`.
        device: where the weights go.
        revision, cache_dir, token, local_files_only: hub ids only; see :func:`lzn_core.io.hub.download`.

    Raises:
        FileNotFoundError: a local path without a model.
        UnknownModalityError: a modality's plugin is not installed here (the message names the
            distribution and version that exported it).
        LZNError: a hub id that cannot be had; corrupt files or weights that do not fit the recipe.
    """
    folder = locate(
        name_or_path, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
    )
    return read_model(folder, device=device)


from_pretrained = load
"""``lzn_core.from_pretrained``: :func:`load` under the name Hugging Face users know."""
