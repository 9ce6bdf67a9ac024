"""Converters to webdataset shards (``lzn shards digits|cifar10|folder|captions|map``).

Layout of an output directory ``OUT/``::

    OUT/train-000000.tar  OUT/train-000001.tar  ...  OUT/test-000000.tar
    OUT/sizes.json   {"train-000000.tar": 1000, ...}   samples per shard
    OUT/meta.json    {"version", "source", "classes", "splits", "seed", "shard_size", ...}

Each sample is ``__key__`` plus the image, ``png`` (uint8 PNG bytes) or, for ``folder`` and
``captions``, the source file's own bytes where it is a JPEG (``jpg``) or PNG that needs no
resize, ``cls`` (ASCII int; not in ``captions`` shards) and ``txt`` (UTF-8 caption). Shards are deterministic (fixed member
order, mtime 0, uid/gid 0, no user names), so two runs give identical bytes, and every
conversion is all or nothing: the splits are staged inside ``OUT`` and moved over the old
shards only when the whole conversion succeeded (:func:`~lzn_core.data.shards.stage_split`);
a failed run, or one that finds no usable sample, leaves ``OUT`` as it was.

``cifar10`` reads the official python-pickle tarball. Pickle can run code, so the
batches are read with an unpickler that only accepts numpy arrays and builtins.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import importlib.util
import io
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError, LZNWarning
from . import _remote
from ._shardset import iter_shard_samples, resolve
from .shards import Sample, make_sample, png_bytes, read_json, stage_split, write_meta

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
            f"{prefix}_{i:05d}",
            {"png": png_bytes(np.ascontiguousarray(images[i])), "txt": f"a photo of a {names[y]}", "cls": y},
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
    with tar, contextlib.ExitStack() as stack:  # both splits staged, then both committed
        names = [n.decode() for n in _cifar_member(tar, source, "batches.meta")[b"label_names"]]
        staged = []
        for split, members in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
            parts = [_cifar_samples(_cifar_member(tar, source, m), names, m) for m in members]
            total = sum(n for n, _ in parts)
            gen = itertools.chain.from_iterable(g for _, g in parts)
            staged.append(
                stack.enter_context(
                    stage_split(out, split, gen, total=total, shard_size=shard_size, progress=progress)
                )
            )
        splits = {s.split: sum(s.commit().values()) for s in staged}
    return write_meta(
        Path(out), source=f"cifar10:{source.name}", classes=names, splits=splits, shard_size=shard_size
    )


# ----------------------------------------------------------------------------- folder / captions


_KEPT_MODES = ("L", "RGB")  # what the converter would write anyway: such files are stored as they are
_JPEG_QUALITY = 95  # a JPEG that had to be resized is written again as JPEG at this quality


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _encode_image(
    path: Path, size: tuple[int, int] | None = None, short_side: int | None = None
) -> tuple[str, bytes, str]:
    """One image file -> ``(shard extension, bytes, how)``, ``how`` one of ``"kept"`` (the file's
    own bytes), ``"converted"``, ``"resized"``; PIL's error when it cannot be read.

    The file is decoded in full (a truncated or corrupt file raises here, not in training). A JPEG
    or PNG in mode L or RGB that needs no resize is stored as it is: its bytes, unchanged, as
    ``jpg`` or ``png`` (what the file holds decides, not its name), so the loader decodes exactly
    the pixels a re-encoded PNG would give, at a fraction of the bytes and time. Anything else is
    converted (mode L kept, every other mode to RGB) and encoded again: a resized JPEG as JPEG
    (quality 95), everything else as PNG.

    With ``size`` (W, H), an image of another size is resized to it (bicubic; the aspect ratio is
    not kept). With ``short_side``, it is resized (bicubic, aspect kept) so that its shorter side
    has that many pixels (ImageNet: >= 256, so the random crops and the Resize(256) +
    CenterCrop(224) evaluation view have their source).
    """
    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as img:
        img.load()
        fmt, mode = img.format, img.mode
        if short_side is not None:
            w, h = img.size
            scale = short_side / min(w, h)
            size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
        resized = size is not None and img.size != size
        if not resized and fmt in ("JPEG", "PNG") and mode in _KEPT_MODES:
            return ("jpg" if fmt == "JPEG" else "png"), raw, "kept"
        out = img if mode == "L" else img.convert("RGB")
        if not resized:
            return "png", png_bytes(out), "converted"
        assert size is not None
        out = out.resize(size, Image.Resampling.BICUBIC)
        return ("jpg", _jpeg_bytes(out), "resized") if fmt == "JPEG" else ("png", png_bytes(out), "resized")


def _warn_skipped(what: str, skipped: list[str]) -> None:
    if skipped:
        shown = "; ".join(skipped[:10]) + ("; ..." if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} {what}: {shown}", LZNWarning, stacklevel=3)


# Work done by the worker processes of ``lzn shards folder`` (module level: they are pickled by name).
# Each returns ``(True, value)`` or ``(False, "ExceptionType")`` for an image PIL cannot read.


def _header(path: Path) -> tuple[bool, Any]:
    try:
        with Image.open(path) as img:
            return True, img.size
    except Exception as exc:  # PIL raises many types for corrupt files
        return False, type(exc).__name__


def _converted(job: tuple[Path, tuple[int, int] | None, int | None]) -> tuple[bool, Any]:
    try:
        return True, _encode_image(*job)
    except Exception as exc:  # PIL raises many types for corrupt files
        return False, type(exc).__name__


def _in_chunks(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [fn(x) for x in items]


def default_workers() -> int:
    """Worker processes of ``lzn shards folder`` by default: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _ordered(pool: Any, fn: Callable[[Any], Any], items: Sequence[Any], chunk: int = 16) -> Iterator[Any]:
    """``fn(item)`` for each item, in order; in the processes of ``pool`` (a ``(Pool, size)`` pair)
    when given: chunks of ``chunk`` items, at most 4 chunks per process in flight, so that finished
    results never pile up in memory while the shards are written."""
    if pool is None:
        yield from map(fn, items)
        return
    pool, window = pool[0], 4 * pool[1]
    pending: collections.deque[Any] = collections.deque()
    for lo in range(0, len(items), chunk):
        pending.append(pool.apply_async(_in_chunks, (fn, items[lo : lo + chunk])))
        if len(pending) >= window:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Any]:
    """``(process pool, workers)``, or None for 1 worker. Forked where the OS allows, so a worker
    starts at once with this process's imports (a spawned one would import torch again)."""
    if workers <= 1:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    with multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(workers) as pool:
        yield pool, workers


def _image_sizes(
    files: Sequence[tuple[Path, int]], skipped: list[str], pool: Any = None
) -> tuple[list[tuple[Path, int, tuple[int, int]]], Counter[tuple[int, int]]]:
    """Pass 1 (headers only): ``(path, class, (W, H))`` of each file PIL can open, and the size counts."""
    readable: list[tuple[Path, int, tuple[int, int]]] = []
    counts: Counter[tuple[int, int]] = Counter()
    for (path, cls), (ok, value) in zip(files, _ordered(pool, _header, [p for p, _ in files]), strict=True):
        if not ok:
            _log.warning("skipping corrupt image %s: %s", path, value)
            skipped.append(f"{path} ({value})")
            continue
        readable.append((path, cls, value))
        counts[value] += 1
    return readable, counts


def _folder_samples(
    files: Sequence[tuple[Path, int, tuple[int, int]]],
    classes: Sequence[str],
    size: tuple[int, int] | None,
    skipped: list[str],
    resized: list[str],
    short_side: int | None = None,
    pool: Any = None,
    kept: list[str] | None = None,
) -> Iterator[Sample]:
    jobs = [(path, size, short_side) for path, _, _ in files]
    for i, ((path, cls, own), (ok, value)) in enumerate(
        zip(files, _ordered(pool, _converted, jobs), strict=True)
    ):
        if not ok:
            _log.warning("skipping corrupt image %s: %s", path, value)
            skipped.append(f"{path} ({value})")
            continue
        ext, data, how = value
        if how == "resized":
            resized.append(f"{path} {own[0]}x{own[1]}")
        elif how == "kept" and kept is not None:
            kept.append(str(path))
        yield make_sample(f"img{i:07d}", {ext: data, "txt": f"a photo of a {classes[cls]}", "cls": cls})


def write_folder(
    root: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    shard_size: int = 1000,
    progress: bool | None = None,
    short_side: int | None = None,
    keep_sizes: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """An ImageFolder tree ``ROOT/<class>/<image>`` -> ``{split}`` shards, all or nothing.

    Class index = position of the class folder name in sorted order (names saved in
    ``meta.json``; converting a second split into the same ``OUT`` must give the same
    classes). A JPEG or PNG (mode L or RGB) that needs no resize is stored byte for byte (``jpg``
    or ``png``); other images are converted to PNG, and a resized JPEG is written again as JPEG
    (quality 95) (:func:`_encode_image`). Unreadable files are skipped, counted and
    reported in one ``LZNWarning``. Every image gets one size (W, H): the size of the split
    already converted into ``OUT`` (``meta.json``'s ``image_size``) if there is one, otherwise
    the most common size under ``ROOT`` (ties: the first met in file order); images of another
    size are resized to it (bicubic, aspect ratio not kept), counted in ``meta.json``
    (``resized``) and reported in one ``LZNWarning``. With ``short_side`` (ImageNet-style data
    whose models crop views from the full image) every image keeps its own aspect and is
    resized to that shorter side instead, and with ``keep_sizes`` every image keeps its full
    size; sizes then differ by design and nothing is warned (the image config's
    ``eval_resize`` crops them to one size).

    Images are read and encoded by ``workers`` processes (default :func:`default_workers`); the
    shards are the same bytes whatever their number (the samples are written in file order).

    Returns:
        the written ``meta.json`` content (``kept``: images stored byte for byte).

    Raises:
        DataError: no class folders, no image files, classes that differ from ``OUT``'s, or no
            image could be read (``OUT`` is left unchanged).
    """
    root, out = Path(root), Path(out)
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected ROOT/<class>/<image files>)")
    meta = read_json(out / "meta.json")
    old = meta.get("classes")
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
    if short_side is not None and keep_sizes:
        raise ValueError("give short_side or keep_sizes, not both")
    skipped: list[str] = []
    resized: list[str] = []
    kept: list[str] = []
    with _pool(min(workers, len(files))) as pool:
        readable, counts = _image_sizes(files, skipped, pool)
        others = {k: v for k, v in (meta.get("image_size") or {}).items() if k != split and v}
        size: tuple[int, int] | None
        if short_side is not None or keep_sizes:
            size, why = None, "each image's own size"
        elif others:
            first = sorted(others)[0]
            size, why = (
                (int(others[first][0]), int(others[first][1])),
                f"the size of the {first!r} split in {out}",
            )
        else:
            size, why = (
                (counts.most_common(1)[0][0] if counts else (0, 0)),
                f"the most common size under {root}",
            )
        samples = _folder_samples(readable, classes, size, skipped, resized, short_side, pool, kept)
        with stage_split(
            out, split, samples, total=len(readable), shard_size=shard_size, progress=progress
        ) as st:
            _warn_skipped("unreadable images", skipped)
            if resized and size is not None:
                shown = "; ".join(resized[:10]) + ("; ..." if len(resized) > 10 else "")
                warnings.warn(
                    f"resized {len(resized)} images to {size[0]}x{size[1]} ({why}): {shown}",
                    LZNWarning,
                    stacklevel=2,
                )
            if st.num_samples == 0:
                raise DataError(f"every image under {root} failed to load; {out} was left unchanged")
            n = sum(st.commit().values())
    return write_meta(
        out,
        source=f"folder:{root}",
        classes=classes,
        splits={split: n},
        shard_size=shard_size,
        skipped={split: len(skipped)},
        resized={split: len(resized)},
        kept={split: len(kept)},
        image_size={split: list(size) if size is not None else None},
        short_side={split: short_side},
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


def _jsonl_lines(path: Path) -> list[tuple[int, str | None, str]]:
    """``(line number, text or None, why it is unreadable)`` of each non-empty line of ``path``.

    Lines are split on ``\\n`` and decoded one by one, so a line that is not UTF-8 is reported
    (named by its number and the first bad byte) instead of stopping the file.
    """
    lines: list[tuple[int, str | None, str]] = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            lines.append((lineno, raw.decode("utf-8"), ""))
        except UnicodeDecodeError as exc:
            lines.append((lineno, None, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"))
    return lines


def _caption_samples(
    lines: Sequence[tuple[int, str | None, str]], base: Path, skipped: list[str]
) -> Iterator[Sample]:
    for lineno, text, why in lines:
        if text is None:
            _log.warning("skipping line %d: %s", lineno, why)
            skipped.append(f"line {lineno}: UnicodeDecodeError: {why}")
            continue
        try:
            path, caption = _caption_record(text, base)
            ext, data, _ = _encode_image(path)
        except Exception as exc:
            _log.warning("skipping line %d: %s", lineno, exc)
            skipped.append(f"line {lineno}: {type(exc).__name__}: {exc}")
            continue
        yield make_sample(f"cap{lineno:08d}", {ext: data, "txt": caption})


def write_captions(
    jsonl: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    shard_size: int = 1000,
    progress: bool | None = None,
) -> dict[str, Any]:
    """JSONL lines ``{"image": path, "caption": text}`` -> ``{split}`` shards of ``png`` (or ``jpg``:
    a JPEG or PNG is stored as it is, see :func:`_encode_image`) + ``txt``, all or nothing.

    Relative image paths are relative to the JSONL file's directory. Bad lines (not UTF-8,
    invalid JSON, missing fields, unreadable image) are skipped, counted in ``meta.json``
    (``skipped``) and reported in one ``LZNWarning`` naming the file and each line number.

    Returns:
        the written ``meta.json`` content.

    Raises:
        DataError: no line is usable (``OUT`` is left unchanged).
    """
    jsonl, out = Path(jsonl), Path(out)
    if not jsonl.is_file():
        raise FileNotFoundError(f"captions file not found: {jsonl}")
    lines = _jsonl_lines(jsonl)
    skipped: list[str] = []
    samples = _caption_samples(lines, jsonl.parent, skipped)
    with stage_split(out, split, samples, total=len(lines), shard_size=shard_size, progress=progress) as st:
        _warn_skipped(f"bad lines of {jsonl}", skipped)
        if st.num_samples == 0:
            raise DataError(
                f"{jsonl}: no usable lines ({len(skipped)} bad, {len(lines)} non-empty); {out} was left unchanged"
            )
        n = sum(st.commit().values())
    return write_meta(
        out,
        source=f"captions:{jsonl}",
        classes=None,
        splits={split: n},
        shard_size=shard_size,
        skipped={split: len(skipped)},
    )


# ----------------------------------------------------------------------------- map (add a key)


def load_function(ref: str) -> Callable[..., Any]:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` -> the function.

    Raises:
        DataError: the reference is malformed, the module cannot be imported or has no such function.
    """
    module, _, name = ref.rpartition(":")
    if not module or not name.isidentifier():
        raise DataError(f"--fn {ref!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        if module.endswith(".py"):
            spec = importlib.util.spec_from_file_location(f"lzn_map_{Path(module).stem}", module)
            if spec is None or spec.loader is None or not Path(module).is_file():
                raise ImportError(f"no such file {module}")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except ImportError as exc:
        raise DataError(f"--fn {ref!r}: cannot import {module} ({exc})") from exc
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise DataError(f"--fn {ref!r}: {module} has no function {name!r}")
    return fn


def map_split(
    pattern: str,
    out: str | Path,
    fn: Callable[[str, dict[str, bytes]], dict[str, bytes]],
    *,
    split: str = "train",
    shard_size: int = 1000,
    progress: bool | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Run ``fn(key, {ext: bytes}) -> {ext: bytes}`` over every sample of the shards matching ``pattern``
    (local, or a URL pattern read through the shard cache) and write the samples with the returned
    keys added (or replaced) as ``OUT/{split}-*.tar``.

    The shards are read in order with webdataset's streaming stages; the output is staged and
    committed all or nothing, so ``OUT`` may be the shards' own directory. ``meta.json`` keeps
    the source directory's ``classes``.

    Returns:
        the written ``meta.json`` content.

    Raises:
        DataError: a shard cannot be read to its end, or ``fn`` returns something that is not
            ``{ext: bytes}`` (named by the sample's key).
    """
    found = resolve(pattern)  # a URL pattern is fetched into the shard cache (every shard, or an error)
    paths = [f for f in found.files if f is not None]

    def stop(exc: Exception) -> bool:
        raise DataError(f"{pattern!r}: cannot read a shard to its end ({exc}); nothing was written") from exc

    def samples() -> Iterator[Sample]:
        for s in iter_shard_samples(paths, stop, found.names):
            key = s["__key__"]
            fields = {k: v for k, v in s.items() if not k.startswith("__")}
            extra = fn(key, dict(fields))
            if not isinstance(extra, dict) or not all(
                isinstance(v, (bytes, bytearray)) for v in extra.values()
            ):
                raise DataError(
                    f"{source or 'fn'} returned {type(extra).__name__} for {key!r}; expected {{ext: bytes}}"
                )
            yield key, {**fields, **extra}

    out = Path(out)
    if _remote.is_url(pattern):
        meta, _ = _remote.read_optional_json(
            _remote.dir_url(found.names[0]) + "meta.json", _remote.cache_dir()
        )
        classes = (meta or {}).get("classes") if isinstance(meta, dict) else None
    else:
        classes = read_json(Path(paths[0]).parent / "meta.json").get("classes")
    with stage_split(out, split, samples(), shard_size=shard_size, progress=progress) as st:
        n = sum(st.commit().values())
    return write_meta(
        out,
        source=f"map:{source or getattr(fn, '__name__', 'fn')} of {pattern}",
        classes=classes,
        splits={split: n},
    )
