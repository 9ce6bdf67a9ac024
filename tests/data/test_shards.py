"""The shard writer (lzn_core/data/shards.py): make_sample takes any keys; write_split is all or nothing,
writes deterministic webdataset tars, cleans up after itself and refuses bad arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from shard_files import digest

from lzn_core.data import shards as writer
from lzn_core.errors import DataError


def test_make_sample_takes_any_shard_keys() -> None:
    """The public writer names no modality's keys: bytes as they are, str as UTF-8, ints (numpy's
    too) as ASCII digits, None left out."""
    key, fields = writer.make_sample(
        "s01", {"pts": b"\x00\x01", "txt": "caf\u00e9", "cls": np.int64(7), "npy": None, "idx": 12}
    )
    assert key == "s01" and fields == {
        "pts": b"\x00\x01",
        "txt": "caf\u00e9".encode(),
        "cls": b"7",
        "idx": b"12",
    }
    with pytest.raises(ValueError, match=r"sample 's02': value of 'w' must be bytes, str or int, got float"):
        writer.make_sample("s02", {"w": 0.5})


def test_write_split_is_all_or_nothing(tmp_path: Path) -> None:
    writer.write_split(
        tmp_path,
        "train",
        (writer.make_sample(f"old{i}", {"png": b"x", "txt": "c", "cls": 0}) for i in range(4)),
        shard_size=3,
    )
    before = digest(tmp_path)

    def samples():
        for i in range(5):
            yield writer.make_sample(f"s{i}", {"png": b"png", "txt": "caption", "cls": i})
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        writer.write_split(tmp_path, "train", samples(), shard_size=3, progress=False)
    assert digest(tmp_path) == before  # the old shards and sizes.json, nothing staged left behind
    with pytest.raises(DataError, match=r"no samples to write for split 'train'; .* was left unchanged"):
        writer.write_split(tmp_path, "train", iter([]), progress=False)
    with pytest.raises(ValueError, match=r"sample key 'a\.b': .*no dots"):
        writer.write_split(tmp_path, "train", iter([("a.b", {"png": b"x"})]), progress=False)
    with pytest.raises(ValueError, match="value of 'png' must be bytes, got str"):
        writer.write_split(tmp_path, "train", iter([("a", {"png": "x"})]), progress=False)
    with pytest.raises(ValueError, match="longer than 100 characters"):
        writer.write_split(tmp_path, "train", iter([("k" * 97, {"png": b"x"})]), progress=False)
    assert digest(tmp_path) == before
    with pytest.raises(DataError):
        writer.write_split(tmp_path / "new", "train", iter([]), progress=False)
    assert not (tmp_path / "new").exists()  # a directory this run created is removed again


def test_write_split_members_are_deterministic_webdataset_tars(tmp_path: Path) -> None:
    import webdataset as wds

    fields = {"txt": b"caption", "cls": b"3", "vec.npy": b"\x93NUMPY", "png": b"\x89PNG"}
    writer.write_split(tmp_path / "a", "train", iter([("k0", fields), ("dir/k1", fields)]), progress=False)
    writer.write_split(tmp_path / "b", "train", iter([("k0", fields), ("dir/k1", fields)]), progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members][:4] == ["k0.cls", "k0.png", "k0.txt", "k0.vec.npy"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    (sample, _) = wds.WebDataset(
        str(tmp_path / "a" / "train-000000.tar"), shardshuffle=False, empty_check=False
    )
    assert sample["__key__"] == "k0" and sample["vec.npy"] == b"\x93NUMPY" and sample["cls"] == b"3"


def test_an_abandoned_staging_directory_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / f".train-staging-{int(dead.stdout)}-x").mkdir()
    (tmp_path / f".train-staging-{os.getpid()}-y").mkdir()  # a live process's: kept
    writer.write_split(
        tmp_path,
        "train",
        iter([writer.make_sample("a", {"png": b"x", "txt": "c", "cls": 0})]),
        progress=False,
    )
    assert sorted(p.name for p in tmp_path.glob(".*")) == [f".train-staging-{os.getpid()}-y"]


def test_write_split_removes_stale_shards_and_merges_sizes(tmp_path: Path) -> None:
    gen = (writer.make_sample(f"s{i}", {"png": b"x", "txt": "c", "cls": 0}) for i in range(5))
    writer.write_split(tmp_path, "train", gen, shard_size=2, progress=False)
    writer.write_split(
        tmp_path, "test", iter([writer.make_sample("t", {"png": b"x", "txt": "c", "cls": 0})]), progress=False
    )
    writer.write_split(
        tmp_path,
        "train",
        iter([writer.make_sample("a", {"png": b"x", "txt": "c", "cls": 0})]),
        progress=False,
    )
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["test-000000.tar", "train-000000.tar"]
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"train-000000.tar": 1, "test-000000.tar": 1}


@pytest.mark.parametrize(
    ("kw", "msg"), [({"shard_size": 0}, "shard_size must be >= 1"), ({"split": "a-b"}, "split name must be")]
)
def test_write_split_rejects_bad_arguments(tmp_path: Path, kw: dict, msg: str) -> None:
    args = {"split": "train", **kw}
    with pytest.raises(ValueError, match=msg):
        writer.write_split(tmp_path, args.pop("split"), iter([]), **args)
