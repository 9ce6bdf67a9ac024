"""What the inference commands share: MODEL and input-file arguments, reading files into a
batch of a modality, composing a graph over them, writing what comes out.

MODEL is an exported model directory (``model.safetensors`` + ``recipe.yaml``, from ``lzn
export`` or training's ``final/``), a training run directory (its ``final/`` is used) or a hub
id ``user/name``; commands read it with :func:`lzn_core.io.load`.
Input files are decoded by the modality's own ``decode_sample``; the modality that reads them
is the one whose shard keys include the files' suffix (``--source`` picks one explicitly).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import LZNError
from ..graphs import compose
from ..modality import PreviewWriter
from ..model import LZNModel

MODEL_HELP = (
    "an exported model directory (model.safetensors + recipe.yaml, from `lzn export`), "
    "a training run directory (runs/NAME, whose final/ is used) or a hub id user/name"
)


def add_recipe_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """A recipe and its ``key=value`` overrides (``example``: one override for the help)."""
    parser.add_argument("recipe", help="recipe file or bare name (cwd first, then the shipped recipes)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"dotted overrides, e.g. {example}")


def add_model_arguments(parser: argparse.ArgumentParser, examples: str, *, zoned: bool = True) -> None:
    """MODEL, --seed, --device, --batch-size (and --bank-size for commands that zone inputs)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:\n" + examples
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=256, help="inference batch size (default: 256)")
    if zoned:
        parser.add_argument(
            "--bank-size",
            type=int,
            default=None,
            help="stored training anchors each request is zoned with (default: the whole bank; "
            "0: zone each inference batch alone, the paper's minibatch evaluation)",
        )
        parser.add_argument(
            "--independent",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="zone each input against the bank alone, so its answer does not depend on the other "
            "inputs (--no-independent: the inputs of a batch are zoned together; default: "
            "lzn_core.model.INDEPENDENT)",
        )


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """PATH... and --source."""
    parser.add_argument(
        "inputs", nargs="+", metavar="PATH", help="input files or directories (searched recursively)"
    )
    parser.add_argument(
        "--source",
        default=None,
        help="modality that reads the files (default: the one whose shard keys match their suffix)",
    )


def _collect(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"no files in directory {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {raw!r} does not exist")
    return files


def input_modality(model: LZNModel, wanted: str | None, files: list[Path]) -> str:
    """``wanted``, else the modality whose shard keys include the suffix of every file."""
    if wanted is not None:
        if wanted not in model.names:
            raise LZNError(f"modality {wanted!r} is not in this model (modalities: {', '.join(model.names)})")
        return wanted
    suffixes = {f.suffix.lower().lstrip(".") for f in files}
    for name in model.names:
        if suffixes <= {k.lower() for k in model.specs[name].shard_keys}:
            return name
    keys = "; ".join(f"{n}: {', '.join(model.specs[n].shard_keys)}" for n in model.names)
    raise LZNError(
        f"no modality of this model reads {', '.join(sorted('.' + s for s in suffixes))} files "
        f"(shard keys: {keys}); give --source"
    )


def zonal_modality(model: LZNModel, wanted: str | None) -> str:
    """``wanted``, else the first modality with a zonal decoder (a classifier's target)."""
    if wanted is not None:
        if wanted not in model.names or model.decoder_kind(wanted) != "zonal":
            zonal = [n for n in model.names if model.decoder_kind(n) == "zonal"]
            raise LZNError(
                f"{wanted!r} is not a zonal modality of this model (zonal: {', '.join(zonal) or 'none'})"
            )
        return wanted
    for name in model.names:
        if model.decoder_kind(name) == "zonal":
            return name
    raise LZNError(
        f"this model has no zonal modality to classify into (modalities: {', '.join(model.names)}); "
        "train one with an align task to a label modality"
    )


def read_inputs(model: LZNModel, source: str | None, paths: list[str]) -> tuple[list[Path], str, Any]:
    """Files under ``paths`` (directories searched recursively) decoded by the modality's
    ``decode_sample`` and collated into one batch: ``(files, modality, batch)``.

    Raises:
        FileNotFoundError: a missing path or an empty directory.
        ValueError: a file the modality cannot decode, or items that do not fit its config
            (the message names the file).
    """
    files = _collect(paths)
    name = input_modality(model, source, files)
    spec, config = model.specs[name], model.configs[name]
    items = []
    for f in tqdm(files, desc="reading", unit="file", disable=None if len(files) > 256 else True):
        try:
            item = spec.decode_sample(f.read_bytes())
            if spec.validate_item is not None:
                spec.validate_item(item, config)
        except ValueError as exc:
            raise ValueError(f"{f}: {exc}") from None
        items.append(item)
    return files, name, spec.collate(items)


def compose_over_inputs(args: argparse.Namespace, model: LZNModel, edge: str, **options: Any) -> Any:
    """``compose(edge)`` with the options every file command shares (batch size, bank size, progress)."""
    if getattr(args, "independent", None) is not None:
        options["independent"] = args.independent
    return compose(
        edge, model=model, batch_size=args.batch_size, bank_size=args.bank_size, progress=True, **options
    )


def write_output(
    model: LZNModel, name: str, out: Any, path: str | None, what: str, nrow: int | None = None
) -> None:
    """Write decoded items of modality ``name``: a picture when its decoder is a
    :class:`~lzn_core.modality.PreviewWriter`, else one line per item (to ``path`` or stdout)."""
    decoder = model.decoders[name]
    if isinstance(decoder, PreviewWriter):
        target = Path(path or f"{what}.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        written = decoder.save_preview(out, target, nrow=nrow)
        print(f"wrote {len(out)} {what}(s) to {written}")
        return
    lines = [
        json.dumps(x) if not isinstance(x, str) else x
        for x in (out.tolist() if isinstance(out, torch.Tensor) else out)
    ]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} {what}(s) to {path}")
    else:
        print("\n".join(lines))
