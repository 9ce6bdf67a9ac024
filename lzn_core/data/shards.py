"""Writing webdataset tar shards: deterministic bytes, atomic files, ``sizes.json`` / ``meta.json``.

Used by the converters in :mod:`lzn_core.shards` (see there for the layout). A shard is
written under a temporary name in its directory and renamed with ``os.replace`` when
complete; members are in a fixed order with mtime 0, uid/gid 0 and no user names, so
the same samples always give the same bytes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ..errors import DataError

FORMAT_VERSION = 1
_log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, bytes]]
"""``(key, {ext: bytes})``: one shard sample; the key has no dots."""


def png_bytes(array: Any) -> bytes:
    """Encode a uint8 array ``(H, W)`` or ``(H, W, 3)`` (or a PIL image) as PNG bytes."""

    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as sorted, indented JSON atomically (temp file + ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_shard(path: Path, samples: Sequence[Sample]) -> None:
    """Write one tar atomically: temp file in the same directory, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, fields in samples:
                for ext in sorted(fields):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(fields[ext]), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(fields[ext]))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_split(
    out: str | Path,
    split: str,
    samples: Iterable[Sample],
    *,
    total: int | None = None,
    shard_size: int = 1000,
    progress: bool | None = None,
) -> dict[str, int]:
    """Write ``samples`` as ``OUT/{split}-{index:06d}.tar`` shards of ``shard_size`` samples.

    Stale shards of the same split from an earlier run (higher indices) are removed, and
    ``OUT/sizes.json`` is updated (other splits' entries are kept).

    Returns:
        ``{shard file name: sample count}`` for this split.
    """

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split name must be letters, digits or '_', got {split!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    bar = tqdm(
        total=total,
        desc=f"{out.name}/{split}",
        unit="img",
        file=sys.stderr,
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
    )
    buf: list[Sample] = []

    def flush() -> None:
        name = f"{split}-{len(sizes):06d}.tar"
        _write_shard(out / name, buf)
        sizes[name] = len(buf)
        buf.clear()

    with bar:
        for sample in samples:
            buf.append(sample)
            bar.update(1)
            if len(buf) == shard_size:
                flush()
        if buf:
            flush()
    for stale in out.glob(f"{split}-*.tar"):
        if re.fullmatch(rf"{split}-\d{{6}}\.tar", stale.name) and stale.name not in sizes:
            _log.info("removing stale shard %s", stale)
            stale.unlink()
    all_sizes = read_json(out / "sizes.json")
    all_sizes = {k: v for k, v in all_sizes.items() if not re.fullmatch(rf"{split}-\d{{6}}\.tar", k)}
    write_json(out / "sizes.json", {**all_sizes, **sizes})
    return sizes


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` ({} when absent); DataError when it is not valid JSON."""
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it and convert again") from exc


def write_meta(
    out: Path, *, source: str, classes: Sequence[str] | None, splits: dict[str, int], **extra: Any
) -> dict[str, Any]:
    """Update ``OUT/meta.json`` (other splits' counts are kept) and return its content."""
    meta = read_json(out / "meta.json")
    meta.update(
        {
            "version": FORMAT_VERSION,
            "source": source,
            "classes": list(classes) if classes else None,
            "splits": {**meta.get("splits", {}), **splits},
            **extra,
        }
    )
    write_json(out / "meta.json", meta)
    return meta


def make_sample(key: str, png: bytes, caption: str, cls: int | None = None) -> Sample:
    """``(key, {"png", "txt"[, "cls"]})``: the caption UTF-8, the class as ASCII digits."""
    fields = {"png": png, "txt": caption.encode("utf-8")}
    if cls is not None:
        fields["cls"] = str(int(cls)).encode("ascii")
    return key, fields
