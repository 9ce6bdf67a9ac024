"""Exporting a training run: the EMA weights of its latest checkpoint, or its ``final/``.

    lzn export runs/digits_joint model/
    lzn_core.export_run("runs/digits_joint", "model/")

The only ``torch.load`` (of a DeepSpeed checkpoint's client state) uses ``weights_only=True``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
import yaml

from ..errors import DataError, LZNError, LZNWarning
from ..model import LZNModel
from ..recipe import validate_recipe
from ..train.checkpoint import resolve_checkpoint
from .files import FINAL, INFO, METRICS, RECIPE, WEIGHTS, read_metrics, write_model


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Export a training run's weights: EMA weights of its latest checkpoint, else its ``final/``.

    Args:
        run_dir: the run directory (``runs/<name>``, holding ``ckpt/`` and/or ``final/``).
        out: output directory (``model.safetensors`` + ``recipe.yaml`` + ``info.json``; from a
            checkpoint, the training summary covers the rows of ``metrics.jsonl`` up to its step).

    Raises:
        FileNotFoundError: ``run_dir`` has neither a checkpoint nor ``final/``.
    """
    run_dir, out = Path(run_dir), Path(out)
    final = run_dir / FINAL
    if (final / WEIGHTS).is_file() and (final / RECIPE).is_file():
        if final.resolve() != out.resolve():
            out.mkdir(parents=True, exist_ok=True)
            for name in (WEIGHTS, RECIPE, INFO):
                if not (final / name).is_file():  # an export older than info.json
                    continue
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
    _fill_banks_if_possible(model)
    step = ckpt.get("step")
    rows = [r for r in read_metrics(run_dir / METRICS) if step is None or r["step"] <= int(step)]
    return write_model(model, out, metrics=rows)


def _fill_banks_if_possible(model: LZNModel) -> None:
    """A checkpoint has no anchor bank yet (training fills it at the end): fill it from ``data.train``.

    Without the training shards the export still succeeds; compose then zones each request batch
    alone (``bank_size=0``), and a warning says so.
    """
    try:
        model.fill_banks(seed=model.recipe.seed)
    except DataError as exc:
        warnings.warn(
            f"exported without an anchor bank ({exc.__class__.__name__}: training data not found); "
            "small requests will be zoned without the bank",
            LZNWarning,
            stacklevel=3,
        )
