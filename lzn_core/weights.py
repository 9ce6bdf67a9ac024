"""Portable weights: ``model.safetensors`` + ``recipe.yaml``, loadable without DeepSpeed.

    lzn export runs/digits_joint model/          # EMA weights of the latest checkpoint (or final/)
    model = lzn_core.load("model/")              # LZNModel on CPU, eval mode

Nothing here unpickles arbitrary code: weights are safetensors, and the only
``torch.load`` (of a DeepSpeed checkpoint's client state) uses ``weights_only=True``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data import loader
from .errors import DataError, LZNError, LZNWarning
from .model import LZNModel
from .recipe import validate_recipe
from .train.checkpoint import resolve_checkpoint

WEIGHTS = "model.safetensors"
RECIPE = "recipe.yaml"


def write_model(model: LZNModel, out: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``out/model.safetensors`` (``state`` or the model's state dict) and ``out/recipe.yaml``.

    Files are written under temporary names and renamed, so ``out`` never holds a half-written file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    os.replace(out / (WEIGHTS + ".tmp"), out / WEIGHTS)
    os.replace(out / (RECIPE + ".tmp"), out / RECIPE)
    return out


def resolve_model_dir(path: str | Path) -> Path:
    """An exported model directory: ``path`` itself, or ``path/final`` of a run directory.

    Raises:
        FileNotFoundError: neither holds ``model.safetensors`` + ``recipe.yaml``; the message says what to run.
    """
    p = Path(path)
    for candidate in (p, p / "final"):
        if (candidate / WEIGHTS).is_file() and (candidate / RECIPE).is_file():
            return candidate
    if not p.exists():
        raise FileNotFoundError(
            f"model {str(p)!r} does not exist; give a run directory (runs/NAME) or an exported model"
        )
    missing = WEIGHTS if not (p / WEIGHTS).is_file() else RECIPE
    raise FileNotFoundError(
        f"{p / missing} is missing (and {p / 'final'} holds no model); export a run with `lzn export RUN_DIR OUT`"
    )


def load(path: str | Path, *, device: str = "cpu") -> LZNModel:
    """Rebuild an ``LZNModel`` from ``model.safetensors`` + ``recipe.yaml`` (eval mode).

    Args:
        path: a directory written by :func:`export_run` / training's ``final/``, or a run
            directory (its ``final/`` is used).
        device: where the weights go (default CPU).

    Raises:
        FileNotFoundError: no model there (the message says what to run).
        LZNError: a file is corrupt or the weights do not match the recipe.
    """
    path = resolve_model_dir(path)
    try:
        data = yaml.safe_load((path / RECIPE).read_text())
    except yaml.YAMLError as exc:
        raise LZNError(f"{path / RECIPE} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LZNError(f"{path / RECIPE} must hold a recipe mapping, got {type(data).__name__}")
    recipe = validate_recipe(data, path / RECIPE)
    state = _read_safetensors(path / WEIGHTS, device)
    model = LZNModel(recipe)
    model.load_weights(state)
    return model.to(device).eval()


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LZNError(f"{path} is not a readable safetensors file ({exc}); re-export the run") from exc


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Export a training run's weights: EMA weights of its latest checkpoint, else its ``final/``.

    Args:
        run_dir: the run directory (``runs/<name>``, holding ``ckpt/`` and/or ``final/``).
        out: output directory (``model.safetensors`` + ``recipe.yaml``).

    Raises:
        FileNotFoundError: ``run_dir`` has neither a checkpoint nor ``final/``.
    """
    run_dir, out = Path(run_dir), Path(out)
    final = run_dir / "final"
    if (final / WEIGHTS).is_file() and (final / RECIPE).is_file():
        if final.resolve() != out.resolve():
            out.mkdir(parents=True, exist_ok=True)
            for name in (WEIGHTS, RECIPE):
                shutil.copyfile(final / name, out / (name + ".tmp"))
                os.replace(out / (name + ".tmp"), out / name)
        return out
    return _export_checkpoint(run_dir, out)


def _export_checkpoint(run_dir: Path, out: Path) -> Path:
    if not (run_dir / RECIPE).is_file():
        raise FileNotFoundError(f"{run_dir} has no final/ and no {RECIPE}: is it a training run directory?")
    try:
        root, tag = resolve_checkpoint(run_dir / "ckpt", "latest")
    except LZNError as exc:
        raise FileNotFoundError(f"{run_dir} has no final/ export and no checkpoint ({exc})") from exc
    files = sorted((root / tag).glob("mp_rank_*_model_states.pt"))
    if not files:
        raise LZNError(f"checkpoint {root / tag} has no model states file")
    try:
        ckpt = torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise LZNError(f"cannot read {files[0]} with weights_only=True: {exc}") from exc
    recipe = validate_recipe(yaml.safe_load((run_dir / RECIPE).read_text()), run_dir / RECIPE)
    model = LZNModel(recipe)
    state = dict(ckpt["module"])
    ema = (ckpt.get("engine") or {}).get("ema") or {}
    state.update({k: v for k, v in ema.items() if k in state})
    model.load_weights(state)
    _fill_banks_if_possible(model, recipe)
    return write_model(model, out)


def _fill_banks_if_possible(model: LZNModel, recipe: Any) -> None:
    """A checkpoint has no anchor bank yet (training fills it at the end): fill it from ``data.train``.

    Without the training shards the export still succeeds; compose then zones each request batch
    alone (``bank_size=0``), and a warning says so.
    """
    try:
        fill_banks(model, recipe, seed=recipe.seed)
    except DataError as exc:
        warnings.warn(
            f"exported without an anchor bank ({exc.__class__.__name__}: training data not found); "
            "small requests will be zoned without the bank",
            LZNWarning,
            stacklevel=3,
        )


def fill_banks(model: LZNModel, recipe: Any, *, seed: int = 0) -> None:
    """Store a fixed sample of ``latent.bank_size`` training anchors for modalities without a bank.

    Runs ``model``'s encoders (no gradients) over shuffled batches of ``data.train``.
    """
    names = [n for n in model.names if not model.has_fixed_bank(n)]
    if not names:
        return
    size = recipe.latent.bank_size
    ld = loader(
        recipe.data.train,
        {n: model.specs[n] for n in names},
        batch_size=min(size, 256),
        seed=seed + 1,
        drop_last=False,
    )
    device = next(model.parameters()).device
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in ld:
            for n in names:
                b = batch[n].to(device) if isinstance(batch[n], torch.Tensor) else batch[n]
                rows[n].append(model.encode(n, b).cpu())
            if sum(r.shape[0] for r in rows[names[0]]) >= size:
                break
    for n in names:
        model.set_bank(n, torch.cat(rows[n])[:size].to(device))
    model.train(was_training)
