"""Reading shards back in the tests of the shard writers and converters (tests/data/)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of one shard, checking webdataset naming and deterministic headers."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            assert m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == ""
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def read_dir(out: Path, split: str) -> dict[str, dict[str, bytes]]:
    """Every sample of a split's shards in ``out``: {key: {ext: bytes}}."""
    samples: dict[str, dict[str, bytes]] = {}
    for p in sorted(out.glob(f"{split}-*.tar")):
        samples.update(read_tar(p))
    return samples


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def digest(directory: Path) -> dict[str, str]:
    """{file name: sha256} of a directory's files."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}
