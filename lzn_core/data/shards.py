"""Writing webdataset tar shards: deterministic bytes, all-or-nothing splits, ``sizes.json`` / ``meta.json``.

The public writer for converters and plugin authors alike (a plugin that reads its own shard key
writes it with :func:`write_split`; see docs/data.md). Shards are written by webdataset's
``ShardWriter`` / ``TarWriter``: members of a sample in sorted extension order, mtime 0,
uid/gid 0, no user or group names, so the same samples always give the same bytes.

A split is written all or nothing: its shards go to a staging directory inside ``OUT`` first
(:func:`stage_split`); only when every sample is written are they moved over the split's old
shards (stale higher-numbered ones removed) and ``sizes.json`` updated. A failed or empty
conversion leaves ``OUT`` as it was.
"""

from __future__ import annotations

import io
import json
import logging
import numbers
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm
from webdataset import ShardWriter

from ..errors import DataError

FORMAT_VERSION = 1
_log = logging.getLogger(__name__)
_MAX_NAME = 100  # a ustar header's name field; wids reads no longer (pax) names

Sample = tuple[str, dict[str, bytes]]
"""``(key, {ext: bytes})``: one shard sample; the key has no dots, each ext names a tar member ``key.ext``."""


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


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` ({} when absent); DataError when it is not valid JSON."""
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it and convert again") from exc


def _check_sample(sample: Any) -> dict[str, Any]:
    """The webdataset dict of ``(key, {ext: bytes})``; ValueError naming the sample when it is malformed."""
    try:
        key, fields = sample
    except (TypeError, ValueError):
        raise ValueError(f"a sample must be (key, {{ext: bytes}}), got {type(sample).__name__}") from None
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_\-/]+", key) or key.startswith("/"):
        raise ValueError(f"sample key {key!r}: use letters, digits, '_', '-' and '/' (no dots)")
    if not isinstance(fields, dict) or not fields:
        raise ValueError(f"sample {key!r}: fields must be a non-empty {{ext: bytes}} dict")
    for ext, value in fields.items():
        if not isinstance(ext, str) or not re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)*", ext):
            raise ValueError(
                f"sample {key!r}: extension {ext!r} must be lower-case letters, digits, '_', '.'"
            )
        if len(f"{key}.{ext}") > _MAX_NAME:
            raise ValueError(f"sample {key!r}: member name {key}.{ext} is longer than {_MAX_NAME} characters")
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"sample {key!r}: value of {ext!r} must be bytes, got {type(value).__name__}")
    return {"__key__": key, **fields}


class StagedSplit:
    """A split written to a staging directory inside ``OUT``; :meth:`commit` moves it in.

    Use as a context manager: leaving the block without :meth:`commit` (an exception, a check
    that failed) removes the staging directory and leaves ``OUT`` unchanged.

    Attributes:
        out: the output directory.
        split: the split name.
        sizes: ``{shard file name: sample count}`` written.
        num_samples: their sum.
    """

    def __init__(self, out: Path, split: str, staging: Path, sizes: dict[str, int], created: bool) -> None:
        self.out, self.split, self.staging, self.sizes, self._created = out, split, staging, sizes, created
        self.committed = False

    @property
    def num_samples(self) -> int:
        return sum(self.sizes.values())

    def commit(self) -> dict[str, int]:
        """Replace the split's shards in ``OUT`` with the staged ones and update ``sizes.json``.

        Raises:
            DataError: nothing was staged (the split's old shards are kept).
        """
        if not self.sizes:
            raise DataError(f"no samples to write for split {self.split!r}; {self.out} was left unchanged")
        old = read_json(self.out / "sizes.json")  # read first: a broken sizes.json stops before any move
        mine = re.compile(rf"{self.split}-\d{{6}}\.tar")
        for name in sorted(self.sizes):
            os.replace(self.staging / name, self.out / name)
        for stale in self.out.glob(f"{self.split}-*.tar"):
            if mine.fullmatch(stale.name) and stale.name not in self.sizes:
                _log.info("removing stale shard %s", stale)
                stale.unlink()
        kept = {k: v for k, v in old.items() if not mine.fullmatch(k)}
        write_json(self.out / "sizes.json", {**kept, **self.sizes})
        self.committed = True
        self.discard()
        return dict(self.sizes)

    def discard(self) -> None:
        """Remove the staging directory (and ``OUT`` itself when this run created it and it is empty)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._created and not self.committed and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def __enter__(self) -> StagedSplit:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.discard()


def _remove_abandoned(out: Path, split: str) -> None:
    """Staging directories of ``split`` left by a killed run (their process is gone)."""
    for d in out.glob(f".{split}-staging-*"):
        m = re.fullmatch(rf"\.{split}-staging-(\d+)-.*", d.name)
        if m is None or not d.is_dir():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def stage_split(
    out: str | Path,
    split: str,
    samples: Iterable[Sample],
    *,
    total: int | None = None,
    shard_size: int = 1000,
    progress: bool | None = None,
) -> StagedSplit:
    """Write ``samples`` as ``{split}-{index:06d}.tar`` shards into a staging directory of ``OUT``.

    Nothing in ``OUT`` changes until :meth:`StagedSplit.commit`; if writing fails, the staging
    directory is removed and the exception propagates.

    Args:
        out: output directory (created if missing).
        split: split name (letters, digits, ``_``).
        samples: ``(key, {ext: bytes})`` pairs (:data:`Sample`), written in this order.
        total: number of samples, for the progress bar only.
        shard_size: samples per shard.
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        ValueError: a bad ``split`` / ``shard_size`` or a malformed sample (named).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split name must be letters, digits or '_', got {split!r}")
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out, split)
    staging = Path(tempfile.mkdtemp(prefix=f".{split}-staging-{os.getpid()}-", dir=out))
    bar = tqdm(
        total=total,
        desc=f"{out.name}/{split}",
        unit="sample",
        file=sys.stderr,
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
    )
    n = 0
    staged = StagedSplit(out, split, staging, {}, created)
    try:
        with bar, _writer(staging, split, shard_size) as sink:
            for sample in samples:
                sink.write(_check_sample(sample))
                n += 1
                bar.update(1)
    except BaseException:
        staged.discard()
        raise
    staged.sizes = {
        f"{split}-{i:06d}.tar": min(shard_size, n - i * shard_size) for i in range(-(-n // shard_size))
    }
    for extra in set(os.listdir(staging)) - set(staged.sizes):  # the writer's empty first shard when n == 0
        os.unlink(staging / extra)
    return staged


def _writer(directory: Path, split: str, shard_size: int) -> ShardWriter:
    """webdataset's ShardWriter with deterministic headers: bytes in, sorted members, mtime 0, uid/gid 0."""
    return ShardWriter(
        str(directory / f"{split}-%06d.tar"),
        maxcount=shard_size,
        maxsize=float("inf"),
        verbose=0,
        encoder=False,
        user="",
        group="",
        mode=0o644,
        mtime=0,
    )


def write_split(
    out: str | Path,
    split: str,
    samples: Iterable[Sample],
    *,
    total: int | None = None,
    shard_size: int = 1000,
    progress: bool | None = None,
) -> dict[str, int]:
    """Write ``samples`` as ``OUT/{split}-{index:06d}.tar`` shards of ``shard_size`` samples, all or nothing.

    On success the split's old shards are replaced (stale higher-numbered ones removed) and
    ``OUT/sizes.json`` is updated (other splits' entries are kept). If ``samples`` raises, holds
    a malformed sample, or is empty, ``OUT`` is left as it was.

    Args:
        out: output directory (created if missing).
        split: split name (letters, digits, ``_``).
        samples: ``(key, {ext: bytes})`` pairs (:data:`Sample`): the key names the sample
            (letters, digits, ``_-/``, no dots), each ext one tar member ``key.ext``.
        total: number of samples, for the progress bar only.
        shard_size: samples per shard.
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        ``{shard file name: sample count}`` for this split.

    Raises:
        DataError: ``samples`` was empty.
        ValueError: a bad argument or a malformed sample (named).
    """
    with stage_split(out, split, samples, total=total, shard_size=shard_size, progress=progress) as staged:
        return staged.commit()


def write_meta(
    out: Path, *, source: str, classes: Sequence[str] | None, splits: dict[str, int], **extra: Any
) -> dict[str, Any]:
    """Update ``OUT/meta.json`` (other splits' counts are kept) and return its content.

    A value of ``extra`` that is a ``{split: value}`` dict is merged the same way (``skipped``).
    """
    meta = read_json(out / "meta.json")
    merged = {k: {**meta.get(k, {}), **v} if isinstance(v, dict) else v for k, v in extra.items()}
    meta.update(
        {
            "version": FORMAT_VERSION,
            "source": source,
            "classes": list(classes) if classes else None,
            "splits": {**meta.get("splits", {}), **splits},
            **merged,
        }
    )
    write_json(out / "meta.json", meta)
    return meta


def make_sample(key: str, fields: Mapping[str, bytes | str | int | None]) -> Sample:
    """One shard sample ``(key, {shard key: bytes})`` from values of any shard keys.

    Bytes are stored as they are, a ``str`` as UTF-8, an ``int`` as ASCII digits (webdataset's
    convention for class indices); a ``None`` value leaves the key out.

        make_sample("s00001", {"png": png, "txt": "a photo of a cat", "cls": 3})
    """
    out: dict[str, bytes] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (bytes, bytearray)):
            out[name] = bytes(value)
        elif isinstance(value, str):
            out[name] = value.encode("utf-8")
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            out[name] = str(int(value)).encode("ascii")
        else:
            raise ValueError(
                f"sample {key!r}: value of {name!r} must be bytes, str or int, got {type(value).__name__}"
            )
    return key, out
