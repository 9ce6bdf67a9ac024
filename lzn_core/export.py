"""Portable weights: ``model.safetensors`` + ``recipe.yaml``, loadable without DeepSpeed.

    lzn export runs/digits_joint model/          # EMA weights of the latest checkpoint (or final/)
    model = lzn_core.load("model/")              # LZNModel on CPU, eval mode

Nothing here unpickles arbitrary code: weights are safetensors, and the only
``torch.load`` (of a DeepSpeed checkpoint's client state) uses ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LZNError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import LZNModel

WEIGHTS = "model.safetensors"
RECIPE = "recipe.yaml"


def write_model(model: LZNModel, out: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``out/model.safetensors`` (``state`` or the model's state dict) and ``out/recipe.yaml``.

    Files are written under temporary names and renamed, so ``out`` never holds a half-written file.
    """
    import yaml
    from safetensors.torch import save_file

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


def load(path: str | Path, *, device: str = "cpu") -> LZNModel:
    """Rebuild an ``LZNModel`` from ``path/model.safetensors`` + ``path/recipe.yaml`` (eval mode).

    Args:
        path: a directory written by :func:`export_run` / training's ``final/``.
        device: where the weights go (default CPU).

    Raises:
        FileNotFoundError: the directory or one of its two files is missing.
        LZNError: a file is corrupt or the weights do not match the recipe.
    """
    import yaml

    from .model import LZNModel
    from .recipe import validate_recipe

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a directory (expected {WEIGHTS} + {RECIPE} from `lzn export`)"
        )
    for name in (WEIGHTS, RECIPE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} is missing; export a run with `lzn export RUN_DIR {path}`"
            )
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
    import torch
    import yaml

    from .engine import resolve_checkpoint
    from .model import LZNModel
    from .recipe import validate_recipe

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
    import warnings

    from .errors import DataError, LZNWarning

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
    import torch

    from .data import loader

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


def cli_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run directory (runs/<name>)")
    parser.add_argument("out", help="output directory for model.safetensors + recipe.yaml")


def cli_export(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out)
    print(f"exported {args.run_dir} -> {out}/{WEIGHTS} + {RECIPE}; load it with lzn_core.load({str(out)!r})")
    return 0
