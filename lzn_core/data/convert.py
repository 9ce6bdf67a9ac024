"""Converters to webdataset shards (``lzn shards digits|cifar10|folder|captions``).

Layout of an output directory ``OUT/``::

    OUT/train-000000.tar  OUT/train-000001.tar  ...  OUT/test-000000.tar
    OUT/sizes.json   {"train-000000.tar": 1000, ...}   samples per shard
    OUT/meta.json    {"version", "source", "classes", "splits", "seed", "shard_size"}

Each sample is ``__key__`` plus ``png`` (uint8 PNG bytes), ``cls`` (ASCII int; not in
``captions`` shards) and ``txt`` (UTF-8 caption). Shards are deterministic (fixed
member order, mtime 0, uid/gid 0, no user names), so two runs give identical bytes,
and atomic: each file is written under a temporary name in ``OUT/`` and renamed with
``os.replace`` only when complete.

``cifar10`` reads the official python-pickle tarball. Pickle can run code, so the
batches are read with an unpickler that only accepts numpy arrays and builtins.
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError, LZNWarning
from .shards import Sample, make_sample, png_bytes, read_json, write_meta, write_split

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- cifar10


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, bytes, numpy arrays) and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (not a CIFAR-10 batch)")
        return super().find_class(module, name)


def _cifar_member(tar: tarfile.TarFile, source: Path, name: str) -> dict[Any, Any]:
    try:
        fh = tar.extractfile(f"cifar-10-batches-py/{name}")
    except KeyError:
        raise DataError(f"{source}: no cifar-10-batches-py/{name}; is this cifar-10-python.tar.gz?") from None
    assert fh is not None
    try:
        return dict(_NumpyOnlyUnpickler(fh, encoding="bytes").load())
    except Exception as exc:
        raise DataError(f"{source}: cannot read cifar-10-batches-py/{name}: {exc}") from exc


def _cifar_samples(batch: dict[Any, Any], names: Sequence[str], prefix: str) -> tuple[int, Iterator[Sample]]:

    data = np.asarray(batch[b"data"], dtype=np.uint8)  # (N, 3072), channel-major (R then G then B)
    labels = [int(v) for v in batch[b"labels"]]
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"CIFAR batch {prefix}: data {data.shape} / {len(labels)} labels, expected (N, 3072)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    gen = (
        make_sample(
            f"{prefix}_{i:05d}", png_bytes(np.ascontiguousarray(images[i])), f"a photo of a {names[y]}", y
        )
        for i, y in enumerate(labels)
    )
    return len(labels), gen


def write_cifar10(
    tarball: str | Path, out: str | Path, *, shard_size: int = 5000, progress: bool | None = None
) -> dict[str, Any]:
    """The official ``cifar-10-python.tar.gz`` -> ``train`` (data_batch_1..5) / ``test`` shards.

    Images ``(32, 32, 3)`` RGB PNG, ``cls`` the label, caption ``"a photo of a {class}"``.

    Returns:
        the written ``meta.json`` content.
    """

    source = Path(tarball)
    if not source.is_file():
        raise FileNotFoundError(f"CIFAR-10 tarball not found: {source}")
    try:
        tar = tarfile.open(source, "r:*")
    except tarfile.TarError as exc:
        raise DataError(f"{source} is not a tar archive ({exc})") from exc
    with tar:
        names = [n.decode() for n in _cifar_member(tar, source, "batches.meta")[b"label_names"]]
        splits = {}
        for split, members in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
            parts = [_cifar_samples(_cifar_member(tar, source, m), names, m) for m in members]
            total = sum(n for n, _ in parts)
            gen = itertools.chain.from_iterable(g for _, g in parts)
            splits[split] = sum(
                write_split(out, split, gen, total=total, shard_size=shard_size, progress=progress).values()
            )
    return write_meta(
        Path(out), source=f"cifar10:{source.name}", classes=names, splits=splits, shard_size=shard_size
    )


# ----------------------------------------------------------------------------- folder / captions


def _load_image(path: Path) -> bytes:
    """Read any PIL-readable image and re-encode it as PNG (mode L kept, everything else RGB)."""

    with Image.open(path) as img:
        img.load()
        return png_bytes(img if img.mode == "L" else img.convert("RGB"))


def _warn_skipped(what: str, skipped: list[str]) -> None:
    if skipped:
        shown = "; ".join(skipped[:10]) + ("; ..." if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} {what}: {shown}", LZNWarning, stacklevel=3)


def _folder_image(path: Path, short_side: int | None) -> bytes:
    """PNG bytes of one folder image: the full image, or with ``short_side`` resized (bicubic,
    aspect kept) so that its shorter side is ``short_side`` pixels (ImageNet: >= 256, so the
    random crops and the Resize(256) + CenterCrop(224) evaluation view have their source)."""
    if short_side is None:
        return _load_image(path)
    with Image.open(path) as src:
        src.load()
        img = src if src.mode == "L" else src.convert("RGB")
        w, h = img.size
        scale = short_side / min(w, h)
        size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
        return png_bytes(img if size == (w, h) else img.resize(size, Image.Resampling.BICUBIC))


def _folder_samples(
    files: Sequence[tuple[Path, int]],
    classes: Sequence[str],
    skipped: list[str],
    short_side: int | None = None,
) -> Iterator[Sample]:
    for i, (path, cls) in enumerate(files):
        try:
            png = _folder_image(path, short_side)
        except Exception as exc:  # PIL raises many types for corrupt files
            _log.warning("skipping corrupt image %s: %s", path, exc)
            skipped.append(f"{path} ({type(exc).__name__})")
            continue
        yield make_sample(f"img{i:07d}", png, f"a photo of a {classes[cls]}", cls)


def write_folder(
    root: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    shard_size: int = 1000,
    progress: bool | None = None,
    short_side: int | None = None,
) -> dict[str, Any]:
    """An ImageFolder tree ``ROOT/<class>/<image>`` -> ``{split}`` shards.

    Class index = position of the class folder name in sorted order (names saved in
    ``meta.json``; converting a second split into the same ``OUT`` must give the same
    classes). Images are re-encoded as PNG at their full size, or with ``short_side`` resized
    to that shorter side (:func:`_folder_image`); unreadable files are skipped, counted and
    reported in one ``LZNWarning``.

    Returns:
        the written ``meta.json`` content.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected ROOT/<class>/<image files>)")
    old = read_json(out / "meta.json").get("classes")
    if old is not None and list(old) != classes:
        raise DataError(f"classes of {root} {classes} differ from {out / 'meta.json'} {old}; use another OUT")
    files = [
        (p, c)
        for c, name in enumerate(classes)
        for p in sorted((root / name).rglob("*"))
        if p.is_file() and p.suffix.lower() in _IMAGE_EXTS
    ]
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(_IMAGE_EXTS))}) under {root}/<class>/")
    skipped: list[str] = []
    n = sum(
        write_split(
            out,
            split,
            _folder_samples(files, classes, skipped, short_side),
            total=len(files),
            shard_size=shard_size,
            progress=progress,
        ).values()
    )
    _warn_skipped("unreadable images", skipped)
    if n == 0:
        raise DataError(f"every image under {root} failed to load")
    return write_meta(
        out,
        source=f"folder:{root}",
        classes=classes,
        splits={split: n},
        shard_size=shard_size,
        skipped={**read_json(out / "meta.json").get("skipped", {}), split: len(skipped)},
    )


def _caption_record(line: str, base: Path) -> tuple[Path, str]:
    """Parse one JSONL line ``{"image": path, "caption": text}``; ValueError says what is wrong."""
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    image, caption = rec.get("image"), rec.get("caption")
    if not isinstance(image, str) or not image:
        raise ValueError('"image" must be a non-empty string path')
    if not isinstance(caption, str):
        raise ValueError('"caption" must be a string')
    path = Path(image)
    return (path if path.is_absolute() else base / path), caption


def _caption_samples(lines: Sequence[str], base: Path, skipped: list[str]) -> Iterator[Sample]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            path, caption = _caption_record(line, base)
            png = _load_image(path)
        except Exception as exc:
            _log.warning("skipping line %d: %s", lineno, exc)
            skipped.append(f"line {lineno}: {type(exc).__name__}: {exc}")
            continue
        yield make_sample(f"cap{lineno:08d}", png, caption)


def write_captions(
    jsonl: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    shard_size: int = 1000,
    progress: bool | None = None,
) -> dict[str, Any]:
    """JSONL lines ``{"image": path, "caption": text}`` -> ``{split}`` shards of ``png`` + ``txt``.

    Relative image paths are relative to the JSONL file's directory. Bad lines (invalid
    JSON, missing fields, unreadable image) are skipped and reported with line numbers.

    Returns:
        the written ``meta.json`` content.
    """
    jsonl, out = Path(jsonl), Path(out)
    if not jsonl.is_file():
        raise FileNotFoundError(f"captions file not found: {jsonl}")
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    skipped: list[str] = []
    total = sum(1 for ln in lines if ln.strip())
    n = sum(
        write_split(
            out,
            split,
            _caption_samples(lines, jsonl.parent, skipped),
            total=total,
            shard_size=shard_size,
            progress=progress,
        ).values()
    )
    _warn_skipped(f"bad lines of {jsonl}", skipped)
    if n == 0:
        raise DataError(f"{jsonl}: no usable lines ({len(skipped)} bad, {total} non-empty)")
    return write_meta(out, source=f"captions:{jsonl}", classes=None, splits={split: n}, shard_size=shard_size)
