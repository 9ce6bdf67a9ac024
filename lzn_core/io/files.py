"""The exported model format: ``model.safetensors`` + ``recipe.yaml`` + ``info.json``, loadable without DeepSpeed.

    lzn export runs/digits_joint model/          # lzn_core.io.export: EMA weights of the latest checkpoint (or final/)
    model = lzn_core.load("model/")              # lzn_core.io.load: LZNModel on CPU, eval mode
    lzn info model/                              # what info.json says about it

``info.json`` describes the model for people and tools that do not build it (``lzn info``, a
hub's model card): the plugin (entry point, distribution, version) behind each modality, the
latent dimension, the compose edges it serves, parameter counts, and when it was trained from
a run, the training length and the final metrics (from the run's ``metrics.jsonl``).

Nothing here unpickles arbitrary code: weights are safetensors.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import LZNError, UnknownModalityError
from ..graphs import possible_edges
from ..model import LZNModel
from ..plugins import get_modality, list_plugins
from ..recipe import validate_recipe

WEIGHTS = "model.safetensors"
RECIPE = "recipe.yaml"
INFO = "info.json"
INFO_FORMAT = 1
FINAL = "final"
"""A training run directory's exported model (``runs/<name>/final``)."""
METRICS = "metrics.jsonl"
"""A training run directory's metrics rows (``runs/<name>/metrics.jsonl``)."""

Metrics = str | Path | Iterable[Mapping[str, Any]] | None
"""A run's metrics: the path of its ``metrics.jsonl``, its rows, or None."""


def write_model(
    model: LZNModel,
    out: str | Path,
    state: dict[str, torch.Tensor] | None = None,
    *,
    metrics: Metrics = None,
) -> Path:
    """Write ``out/model.safetensors`` (``state`` or the model's state dict), ``out/recipe.yaml`` and
    ``out/info.json`` (:func:`model_info`; with the training summary of ``metrics`` when given).

    Files are written under temporary names and renamed, so ``out`` never holds a half-written file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = model_info(model, metrics)
    state = model.state_dict() if state is None else state
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(
        tensors,
        str(out / (WEIGHTS + ".tmp")),
        metadata={"format": "lzn", "latent_dim": str(model.latent_dim)},
    )
    (out / (RECIPE + ".tmp")).write_text(
        yaml.safe_dump(model.recipe.model_dump(mode="json"), sort_keys=False)
    )
    (out / (INFO + ".tmp")).write_text(json.dumps(info, indent=2) + "\n")
    for name in (WEIGHTS, RECIPE, INFO):
        os.replace(out / (name + ".tmp"), out / name)
    return out


def model_info(model: LZNModel, metrics: Metrics = None) -> dict[str, Any]:
    """What ``info.json`` holds about ``model`` (plain JSON data).

    Args:
        model: the model being exported.
        metrics: its run's ``metrics.jsonl`` (path or rows); adds the ``training`` section
            (:func:`training_summary`).
    """
    plugins = {m: p for p in list_plugins() if p.status == "ok" for m in p.modalities}
    modalities: dict[str, Any] = {}
    for name in model.names:
        spec, entry = model.specs[name], model.recipe.modalities[name]
        plugin = plugins.get(entry.plugin)
        bank = None
        if model.has_fixed_bank(name) or getattr(model.banks, name, None) is not None:
            bank = int(model.bank(name).shape[0])
        modalities[name] = {
            "plugin": entry.plugin,
            "entry_point": plugin.name if plugin else None,
            "distribution": plugin.distribution if plugin else None,
            "version": plugin.version if plugin else None,
            "spec_version": spec.version,
            "decoder": model.decoder_kind(name),
            "parameters": {
                side: sum(p.numel() for p in part[name].parameters())
                for side, part in (("encoder", model.encoders), ("decoder", model.decoders))
                if name in part
            },
            "bank": bank,
        }
    info: dict[str, Any] = {
        "format": "lzn-model",
        "format_version": INFO_FORMAT,
        "name": model.recipe.name,
        "lzn_version": _lzn_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "latent_dim": model.latent_dim,
        "parameters": sum(p.numel() for p in model.parameters()),
        "modalities": modalities,
        "edges": possible_edges(model),
    }
    rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics or [])
    summary = training_summary(rows, model.recipe)
    if summary is not None:
        info["training"] = summary
    return info


def _lzn_version() -> str:
    """The installed ``lzn`` distribution's version (what ``lzn --version`` prints)."""
    try:
        return version("lzn")
    except PackageNotFoundError:  # a source tree on sys.path without an install
        return "unknown"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` ([] when the file does not exist; unreadable lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash mid-write
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def training_summary(rows: Iterable[Mapping[str, Any]], recipe: Any) -> dict[str, Any] | None:
    """Training length and final metrics from a run's metrics rows (None without training rows).

    A resumed run appends to ``metrics.jsonl``, so a step may appear twice: the row written last
    wins. The wall time adds up the clocks of the processes that wrote the rows (each resume
    starts its own).

    Returns:
        ``{"steps", "iterations", "batch_size", "samples", "skipped_steps", "wall_time_s",
        "final": {"step", "loss", <terms>...}, "eval": {"step", <metric>...}}`` (``eval`` only
        when the run evaluated; the metrics of its last evaluation, sample grids left out).
    """
    rows = list(rows)
    train = [r for r in rows if "loss" in r]
    if not train:
        return None
    last = max(reversed(train), key=lambda r: r["step"])  # the latest row of the highest step
    wall, segment = 0.0, 0.0
    for r in train:
        t = float(r.get("time", 0.0))
        if t < segment:  # the clock restarted: a resumed process
            wall += segment
        segment = t
    wall += segment
    skip = {"step", "time", "it_s", "lr", "skipped"}
    out: dict[str, Any] = {
        "steps": int(last["step"]),
        "iterations": int(recipe.train.iterations),
        "batch_size": int(recipe.train.batch_size),
        "samples": int(last["step"]) * int(recipe.train.batch_size),
        "skipped_steps": int(last.get("skipped", 0)),
        "wall_time_s": round(wall, 1),
        "final": {"step": int(last["step"]), **{k: _number(v) for k, v in last.items() if k not in skip}},
    }
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    if evals:
        latest = max(reversed(evals), key=lambda r: r["step"])
        values = {
            k[len("eval/") :]: _number(v)
            for k, v in latest.items()
            if k.startswith("eval/") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        out["eval"] = {"step": int(latest["step"]), **values}
    return out


def _number(value: Any) -> Any:
    """JSON has no NaN: a non-finite float is stored as its string ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_info(path: str | Path) -> dict[str, Any] | None:
    """``info.json`` of an exported model directory, or None when it has none (an older export)."""
    file = Path(path) / INFO
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise LZNError(f"{file} is not valid JSON ({exc}); re-export the model with `lzn export`") from exc
    if not isinstance(data, dict):
        raise LZNError(f"{file} must hold a JSON object; re-export the model with `lzn export`")
    return data


def resolve_model_dir(path: str | Path) -> Path:
    """An exported model directory: ``path`` itself, or ``path/final`` of a run directory.

    Raises:
        FileNotFoundError: neither holds ``model.safetensors`` + ``recipe.yaml``; the message says what to run.
    """
    p = Path(path)
    for candidate in (p, p / FINAL):
        if (candidate / WEIGHTS).is_file() and (candidate / RECIPE).is_file():
            return candidate
    if not p.exists():
        raise FileNotFoundError(
            f"model {str(p)!r} does not exist; give a run directory (runs/NAME) or an exported model"
        )
    missing = WEIGHTS if not (p / WEIGHTS).is_file() else RECIPE
    raise FileNotFoundError(
        f"{p / missing} is missing (and {p / FINAL} holds no model); export a run with `lzn export RUN_DIR OUT`"
    )


def run_metrics(model_dir: str | Path) -> Path | None:
    """The ``metrics.jsonl`` of the training run whose model ``model_dir`` is (a folder
    :func:`resolve_model_dir` returned: a run's ``final/``), or None (an export outside a run)."""
    folder = Path(model_dir)
    metrics = folder.parent / METRICS
    return metrics if folder.name == FINAL and metrics.is_file() else None


def read_recipe_mapping(folder: Path) -> dict[str, Any]:
    """The recipe YAML of an exported model folder as a mapping (not yet validated).

    Raises:
        LZNError: the file is not YAML, or holds something other than a mapping.
    """
    try:
        data = yaml.safe_load((folder / RECIPE).read_text())
    except yaml.YAMLError as exc:
        raise LZNError(f"{folder / RECIPE} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LZNError(
            f"{folder / RECIPE} must hold a recipe mapping, got {type(data).__name__}; re-export the model"
        )
    return data


def read_model(folder: str | Path, *, device: str = "cpu") -> LZNModel:
    """Rebuild an ``LZNModel`` from an exported folder (eval mode); :func:`lzn_core.io.load` finds the folder.

    Args:
        folder: a directory holding ``model.safetensors`` + ``recipe.yaml`` (``info.json`` optional).
        device: where the weights go (default CPU).

    Raises:
        UnknownModalityError: a modality's plugin is not installed here; names the distribution
            and version that exported it (from ``info.json``).
        LZNError: a file is corrupt or the weights do not match the recipe.
    """
    folder = Path(folder)
    mapping = read_recipe_mapping(folder)
    _check_plugins(folder, mapping)
    recipe = validate_recipe(mapping, folder / RECIPE)
    state = _read_safetensors(folder / WEIGHTS, device)
    model = LZNModel(recipe)
    model.load_weights(state)
    return model.to(device).eval()


def _check_plugins(folder: Path, recipe: Mapping[str, Any]) -> None:
    """Every modality's plugin is installed; else one line naming what exported it (``info.json``)."""
    modalities = recipe.get("modalities")
    if not isinstance(modalities, Mapping):
        return  # the recipe's validation reports it
    info = read_info(folder) or {}
    for name, entry in modalities.items():
        plugin = entry.get("plugin") if isinstance(entry, Mapping) else None
        if not isinstance(plugin, str):
            continue
        try:
            get_modality(plugin)
        except UnknownModalityError as exc:
            if "unavailable" in str(exc):  # installed but failed or disabled: that message says why
                raise
            made = (info.get("modalities") or {}).get(name) or {}
            dist, ver = made.get("distribution"), made.get("version")
            need = (
                f"it was exported with {dist} {ver} (info.json): install it, e.g. pip install '{dist}=={ver}'"
                if dist and ver
                else "info.json does not say which distribution provides it"
            )
            raise UnknownModalityError(
                f"{folder}: modality {name!r} needs plugin {plugin!r}, which is not installed here; {need} ({exc})"
            ) from None


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LZNError(f"{path} is not a readable safetensors file ({exc}); re-export the run") from exc
