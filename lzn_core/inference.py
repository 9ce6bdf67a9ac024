"""The inference commands of ``lzn``: sample, classify, embed, reconstruct.

Each runs a :func:`lzn_core.compose` graph on a trained model:

    lzn sample MODEL --label 3 -n 16 -o grid.png      # label -> image (class zone); no --label: latent -> image
    lzn classify MODEL images/ --json                 # image -> label (label flow, nearest anchor)
    lzn embed MODEL images/ -o feats.safetensors      # image -> latent (--what backbone|anchor|latent)
    lzn reconstruct MODEL img.png -o out.png          # image -> image through the latent

MODEL is an exported model directory (``model.safetensors`` + ``recipe.yaml``, from
``lzn export`` or training's ``final/``) or a training run directory (its ``final/`` is used).
Input files are decoded by the modality's own ``decode_sample`` (PNG/JPEG for images).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LZNError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import LZNModel

__all__ = [
    "load_model",
    "read_inputs",
    "save_grid",
    "cli_sample",
    "cli_classify",
    "cli_embed",
    "cli_reconstruct",
]

_MODEL_HELP = (
    "an exported model directory (model.safetensors + recipe.yaml, from `lzn export`) "
    "or a training run directory (runs/NAME, whose final/ is used)"
)


# ----------------------------------------------------------------------------- model and inputs


def load_model(path: str | Path, *, device: str = "cpu") -> LZNModel:
    """Load MODEL: an exported directory, or a run directory's ``final/``.

    Raises:
        FileNotFoundError: the path does not exist or holds neither layout (says how to export).
        LZNError: the files are corrupt or do not match (from :func:`lzn_core.export.load`).
    """
    from .export import RECIPE, WEIGHTS, load

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model {str(p)!r} does not exist ({_MODEL_HELP})")
    if (p / WEIGHTS).is_file():
        return load(p, device=device)
    if (p / "final" / WEIGHTS).is_file():
        return load(p / "final", device=device)
    hint = (
        "a run without final/: export a checkpoint with `lzn export RUN_DIR OUT`"
        if (p / RECIPE).is_file()
        else ""
    )
    raise FileNotFoundError(
        f"{p} is not a model: no {WEIGHTS} in it or in {p / 'final'}"
        + (f" ({hint})" if hint else f"; MODEL is {_MODEL_HELP}")
    )


def _file_modality(
    model: LZNModel, wanted: str | None, keys: tuple[str, ...] = ("png", "jpg", "jpeg")
) -> str:
    """The modality that reads files: ``wanted``, else the first one whose shard keys include image keys."""
    if wanted is not None:
        if wanted not in model.names:
            raise LZNError(f"modality {wanted!r} is not in this model (modalities: {', '.join(model.names)})")
        return wanted
    for name in model.names:
        if set(model.specs[name].shard_keys) & set(keys):
            return name
    raise LZNError(f"this model has no image modality (modalities: {', '.join(model.names)}); use --source")


def _zonal_modality(model: LZNModel, wanted: str | None) -> str:
    if wanted is not None:
        return wanted
    for name in model.names:
        if getattr(model.decoders[name], "kind", None) == "zonal":
            return name
    raise LZNError(
        f"this model has no zonal modality to classify into (modalities: {', '.join(model.names)}); "
        "train it with an align task to a label modality"
    )


def _collect(paths: list[str], keys: tuple[str, ...]) -> list[Path]:
    suffixes = {"." + k.lower() for k in keys}
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise FileNotFoundError(f"no {'/'.join(sorted(suffixes))} files in directory {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {raw!r} does not exist")
    return files


def read_inputs(model: LZNModel, name: str, paths: list[str]) -> tuple[list[Path], Any]:
    """Files under ``paths`` (directories are searched recursively for the modality's file types),
    decoded by ``model.specs[name].decode_sample`` and collated into one batch.

    Raises:
        FileNotFoundError: a missing path or a directory without matching files.
        ValueError: a file the modality cannot decode (names the file), or items that do not collate.
    """
    from tqdm import tqdm

    spec = model.specs[name]
    files = _collect(paths, spec.shard_keys)
    items = []
    for f in tqdm(files, desc="reading", unit="file", disable=None if len(files) > 256 else True):
        try:
            items.append(spec.decode_sample(f.read_bytes()))
        except ValueError as exc:
            raise ValueError(f"{f}: {exc}") from None
    return files, spec.collate(items)


def _graph_over_inputs(
    args: argparse.Namespace, model: LZNModel, src: str, edge: str, **options: Any
) -> tuple:
    """Read the input files of modality ``src`` and compose ``edge`` with the options every file
    command shares (``--batch-size``, ``--bank-size``, a progress bar). Returns (files, batch, graph)."""
    from .compose import compose  # after the model check: bad paths fail before torch loads

    files, batch = read_inputs(model, src, args.inputs)
    graph: Any = compose(
        edge, model=model, batch_size=args.batch_size, bank_size=args.bank_size, progress=True, **options
    )
    return files, batch, graph


def save_grid(images: torch.Tensor, path: str | Path, *, nrow: int | None = None) -> Path:
    """Write images (B, C, H, W) in [-1, 1] (C = 1 or 3) as one PNG grid; small images are upscaled
    so each tile is at least 64 px."""
    import math

    import numpy as np
    import torch
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"cannot write a PNG grid of a batch of shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows, pad, up = math.ceil(b / nrow), 2, max(1, math.ceil(64 / max(h, w)))
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(b):
        r, k = divmod(i, nrow)
        grid[
            :, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w
        ] = x[i]
    grid = grid.repeat_interleave(up, 1).repeat_interleave(up, 2)
    arr = grid[0].numpy() if c == 1 else np.ascontiguousarray(grid.permute(1, 2, 0).numpy())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def _write_output(out: Any, path: str | None, what: str, nrow: int | None = None) -> None:
    import torch

    if isinstance(out, torch.Tensor) and out.dim() == 4:
        written = save_grid(out, path or f"{what}.png", nrow=nrow)
        print(f"wrote {out.shape[0]} {what}(s) to {written}")
        return
    lines = [str(x) for x in (out.tolist() if isinstance(out, torch.Tensor) else out)]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} {what}(s) to {path}")
    else:
        print("\n".join(lines))


# ----------------------------------------------------------------------------- shared arguments


def _common(parser: argparse.ArgumentParser, epilog: str, *, latent: bool = True) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:\n" + epilog
    parser.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=256, help="inference batch size (default: 256)")
    if latent:
        parser.add_argument(
            "--bank-size",
            type=int,
            default=None,
            help="stored training anchors each request is zoned with (default: the whole bank; "
            "0: zone each inference batch alone, the paper's minibatch evaluation)",
        )


def _inputs(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="PATH", help=f"{what} files or directories (searched recursively)"
    )
    parser.add_argument(
        "--source", default=None, help="modality that reads the files (default: the image modality)"
    )


# ----------------------------------------------------------------------------- sample


def cli_sample_args(parser: argparse.ArgumentParser) -> None:
    _common(
        parser,
        "  lzn sample model/ -n 16 -o grid.png              # unconditional: z ~ N(0, I) -> decoder\n"
        "  lzn sample model/ --label 3 -n 16 -o threes.png  # 16 samples from the zone of class 3\n"
        "  lzn sample model/ --label 0 1 2 -n 8             # 8 per class, one row per class\n",
        latent=False,
    )
    parser.add_argument("--label", type=int, nargs="+", default=None, help="class index(es) to sample from")
    parser.add_argument(
        "-n", "--num", type=int, default=16, help="samples (per label with --label; default 16)"
    )
    parser.add_argument(
        "-o", "--output", default="samples.png", help="output PNG grid (default: samples.png)"
    )
    parser.add_argument("--target", default=None, help="modality to generate (default: the image modality)")
    parser.add_argument("--steps", type=int, default=None, help="decoder sampler steps (default: its config)")
    parser.add_argument(
        "--alpha", type=float, default=1.0, help="noise scale α of class-zone latents (default 1)"
    )


def cli_sample(args: argparse.Namespace) -> int:
    """``lzn sample``: generate from z ~ N(0, I) or from class zones; write a PNG grid."""
    if args.num < 1:
        raise ValueError(f"-n must be >= 1, got {args.num}")
    model = load_model(args.model, device=args.device)
    import torch

    from .compose import compose  # after the model check: bad paths fail before torch loads

    target = _file_modality(model, args.target)
    opts = dict(batch_size=args.batch_size, progress=True)
    if args.label is None:
        gen: Any = compose(f"latent -> {target}", model=model, **opts)
        out = gen(args.num, steps=args.steps, seed=args.seed)
        nrow = None
    else:
        label = _zonal_modality(model, None)
        classes = torch.tensor(args.label, dtype=torch.int64).repeat_interleave(args.num)
        graph: Any = compose(f"{label} -> {target}", model=model, alpha=args.alpha, **opts)
        out, nrow = graph(classes, steps=args.steps, seed=args.seed), args.num
    _write_output(out, args.output, "sample", nrow=nrow)
    return 0


# ----------------------------------------------------------------------------- classify


def cli_classify_args(parser: argparse.ArgumentParser) -> None:
    _common(
        parser,
        "  lzn classify model/ images/                     # table: path, label, confidence\n"
        "  lzn classify model/ a.png b.png --json          # one JSON object per line\n"
        "  lzn classify model/ images/ --alpha 0 --bank-size 0 --batch-size 2000   # paper's evaluation\n",
    )
    _inputs(parser, "image")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument(
        "--target", default=None, help="zonal modality to classify into (default: the label one)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.0, help="noise scale α of the latents (default 0: zone centre)"
    )
    parser.add_argument("--steps", type=int, default=100, help="Euler steps of the label flow (default 100)")


def cli_classify(args: argparse.Namespace) -> int:
    """``lzn classify``: image -> label through the label flow; a table or JSON lines on stdout."""
    model = load_model(args.model, device=args.device)
    src, dst = _file_modality(model, args.source), _zonal_modality(model, args.target)
    files, batch, graph = _graph_over_inputs(
        args, model, src, f"{src} -> {dst}", alpha=args.alpha, steps=args.steps
    )
    pred = graph(batch, seed=args.seed)
    rows = [
        (str(f), int(k), float(c))
        for f, k, c in zip(files, pred.labels.tolist(), pred.confidence.tolist(), strict=True)
    ]
    if args.json:
        for path, label, conf in rows:
            print(json.dumps({"path": path, dst: label, "confidence": round(conf, 6)}))
        return 0
    width = max(len("path"), *(len(r[0]) for r in rows))
    print(f"{'path':<{width}}  {dst:>6}  confidence")
    for path, label, conf in rows:
        print(f"{path:<{width}}  {label:>6}  {conf:10.4f}")
    return 0


# ----------------------------------------------------------------------------- embed


def cli_embed_args(parser: argparse.ArgumentParser) -> None:
    _common(
        parser,
        "  lzn embed model/ images/ -o feats.safetensors                  # latents at α = 0\n"
        "  lzn embed model/ images/ -o feats.safetensors --what backbone  # for linear probes\n"
        "  python -c \"from safetensors.torch import load_file; print(load_file('feats.safetensors'))\"\n",
    )
    _inputs(parser, "image")
    parser.add_argument(
        "-o", "--output", required=True, help="output .safetensors file (key 'features': (n, d))"
    )
    parser.add_argument(
        "--what",
        choices=("latent", "anchor", "backbone"),
        default="latent",
        help="latent (zoned with the bank, α), anchor (encoder output) or backbone (pooled features "
        "before the latent blocks); default: latent",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.0, help="noise scale α of latents (default 0: zone centre)"
    )


def cli_embed(args: argparse.Namespace) -> int:
    """``lzn embed``: write representations of files to a safetensors file (paths in its metadata)."""
    from safetensors.torch import save_file

    model = load_model(args.model, device=args.device)
    src = _file_modality(model, args.source)
    files, batch, graph = _graph_over_inputs(
        args, model, src, f"{src} -> latent", what=args.what, alpha=args.alpha
    )
    feats = graph(batch, seed=args.seed).float().cpu().contiguous()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "paths": json.dumps([str(f) for f in files]),
        "what": args.what,
        "modality": src,
        "alpha": str(args.alpha),
    }
    save_file({"features": feats}, str(out), metadata=meta)
    print(f"wrote {args.what} features {tuple(feats.shape)} of {len(files)} file(s) to {out}")
    return 0


# ----------------------------------------------------------------------------- reconstruct


def cli_reconstruct_args(parser: argparse.ArgumentParser) -> None:
    _common(
        parser,
        "  lzn reconstruct model/ img.png -o out.png             # decode the image's latent (α = 0)\n"
        "  lzn reconstruct model/ images/ --side-by-side         # rows of (original, reconstruction)\n"
        "  lzn reconstruct model/ img.png --mode invert          # the paper's metric: invert the ODE\n",
    )
    _inputs(parser, "image")
    parser.add_argument("-o", "--output", default=None, help="output PNG (default: <first input>_recon.png)")
    parser.add_argument(
        "--mode",
        choices=("latent", "invert"),
        default="latent",
        help="latent: decode z with fresh noise (what the latent keeps); invert: invert the decoder's "
        "ODE to noise given z, then regenerate (PAPER's reconstruction error); default: latent",
    )
    parser.add_argument("--alpha", type=float, default=0.0, help="noise scale α of the latent (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="decoder sampler steps (default: its config)")
    parser.add_argument(
        "--side-by-side", action="store_true", help="put each original next to its reconstruction"
    )


def cli_reconstruct(args: argparse.Namespace) -> int:
    """``lzn reconstruct``: image -> latent -> image; write a PNG (grid for several inputs)."""
    model = load_model(args.model, device=args.device)
    import torch

    src = _file_modality(model, args.source)
    files, batch, graph = _graph_over_inputs(
        args, model, src, f"{src} -> {src}", alpha=args.alpha, mode=args.mode
    )
    rec = graph(batch, steps=args.steps, seed=args.seed)
    nrow = None
    if args.side_by_side:
        orig = batch.to(rec).expand(-1, rec.shape[1], -1, -1) if batch.shape[1] == 1 else batch.to(rec)
        rec, nrow = torch.stack([orig, rec], dim=1).flatten(0, 1), 2
    out = args.output or f"{files[0].stem}_recon.png"
    _write_output(rec, out, "reconstruction", nrow=nrow)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `lzn` command: lzn sample|classify|embed|reconstruct MODEL ...")
