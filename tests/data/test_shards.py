"""Converters to webdataset shards: round trips, determinism, atomic writes, bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lzn_core.cli import main
from lzn_core.data import convert, digits
from lzn_core.data import shards as writer
from lzn_core.errors import DataError, LZNWarning


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
    samples: dict[str, dict[str, bytes]] = {}
    for p in sorted(out.glob(f"{split}-*.tar")):
        samples.update(read_tar(p))
    return samples


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    assert main(["shards", "digits", str(out), "--shard-size", "600", "--no-progress"]) == 0
    return out


# ----------------------------------------------------------------------------- digits


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


def test_digits_layout_split_and_meta(digits_dir: Path) -> None:
    sizes = json.loads((digits_dir / "sizes.json").read_text())
    assert sizes == {
        "train-000000.tar": 600,
        "train-000001.tar": 600,
        "train-000002.tar": 297,
        "test-000000.tar": 300,
    }
    meta = json.loads((digits_dir / "meta.json").read_text())
    assert meta["splits"] == {"train": 1497, "test": 300}
    assert meta["classes"][7] == "seven" and len(meta["classes"]) == 10
    assert meta["source"] == "sklearn.datasets.load_digits" and meta["seed"] == 0 and meta["version"] == 1
    train, test = read_dir(digits_dir, "train"), read_dir(digits_dir, "test")
    assert len(train) == 1497 and len(test) == 300 and not set(train) & set(test)
    counts = np.bincount([int(s["cls"]) for s in test.values()], minlength=10)
    assert counts.min() >= 29 and counts.max() <= 31  # stratified: ~30 per class
    assert not list(digits_dir.glob(".*"))  # no temp files left


def test_digits_pixels_labels_and_captions(digits_dir: Path) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    samples = {**read_dir(digits_dir, "train"), **read_dir(digits_dir, "test")}
    for key in ("digits00000", "digits00007", "digits01796"):
        i = int(key[len("digits") :])
        img = pixels(samples[key]["png"])
        assert img.shape == (8, 8) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, np.rint(data.images[i] * 255 / 16).astype(np.uint8))
        assert int(samples[key]["cls"]) == data.target[i]
    captions = [(int(s["cls"]), s["txt"].decode()) for s in samples.values()]
    assert len({c for _, c in captions}) > 30  # several templates
    for label, caption in captions:
        assert digits.DIGIT_NAMES[label] in caption.split() or str(label) in caption
    assert any(str(y) in c for y, c in captions) and any(digits.DIGIT_NAMES[y] in c for y, c in captions)


def test_digits_is_deterministic(digits_dir: Path, tmp_path: Path) -> None:
    digits.write_digits(tmp_path, shard_size=600, progress=False)
    assert digest(tmp_path) == digest(digits_dir)


def test_digits_shards_read_by_webdataset(digits_dir: Path) -> None:
    import webdataset as wds

    url = str(digits_dir / "test-000000.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False, empty_check=False))
    assert len(samples) == 300 and {"__key__", "png", "cls", "txt"} <= set(samples[0])
    assert samples[0]["__key__"].startswith("digits") and int(samples[0]["cls"]) in range(10)


def test_digits_bad_test_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--test-size must be between 1 and 1796"):
        digits.write_digits(tmp_path, test_size=0)


# ----------------------------------------------------------------------------- writer


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


# ----------------------------------------------------------------------------- cifar10


def make_cifar(
    path: Path, per_batch: int = 3, extra: dict | None = None
) -> dict[str, tuple[np.ndarray, list]]:
    """A tiny tarball in the official cifar-10-python format; returns {member: (data, labels)}."""
    rng = np.random.default_rng(0)
    names = [
        n.encode()
        for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    ]
    members = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": per_batch + 1}
    made = {}
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, obj: object) -> None:
            data = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
        for name, n in members.items():
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, size=n).tolist()
            made[name] = (data, labels)
            add(name, {b"data": data, b"labels": labels, b"batch_label": name.encode()})
        for name, obj in (extra or {}).items():
            add(name, obj)
    return made


def test_cifar10_round_trip(tmp_path: Path) -> None:
    made = make_cifar(tmp_path / "cifar-10-python.tar.gz")
    out = tmp_path / "out"
    assert (
        main(["shards", "cifar10", str(tmp_path / "cifar-10-python.tar.gz"), str(out), "--no-progress"]) == 0
    )
    train, test = read_dir(out, "train"), read_dir(out, "test")
    assert len(train) == 15 and len(test) == 4
    data, labels = made["data_batch_4"]
    s = train["data_batch_4_00002"]
    img = pixels(s["png"])
    assert img.shape == (32, 32, 3)
    np.testing.assert_array_equal(img, data[2].reshape(3, 32, 32).transpose(1, 2, 0))
    assert int(s["cls"]) == labels[2]
    names = json.loads((out / "meta.json").read_text())["classes"]
    assert s["txt"].decode() == f"a photo of a {names[labels[2]]}" and names[1] == "automobile"
    assert json.loads((out / "meta.json").read_text())["splits"] == {"train": 15, "test": 4}


def test_cifar10_refuses_foreign_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    tarball = tmp_path / "c.tar.gz"
    make_cifar(tarball)
    with tarfile.open(tarball, "r:gz") as tar:  # rebuild with an evil test_batch
        members = {m.name: tar.extractfile(m).read() for m in tar}
    members["cifar-10-batches-py/test_batch"] = pickle.dumps(Evil())
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"test_batch: refusing to unpickle (posix|os)\.system"):
        convert.write_cifar10(tarball, tmp_path / "out", progress=False)


def test_cifar10_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match="CIFAR-10 tarball not found"):
        convert.write_cifar10(tmp_path / "nope.tar.gz", tmp_path / "out")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="is not a tar archive"):
        convert.write_cifar10(tmp_path / "junk.tar.gz", tmp_path / "out")
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    with pytest.raises(
        DataError, match="no cifar-10-batches-py/batches.meta; is this cifar-10-python.tar.gz"
    ):
        convert.write_cifar10(tmp_path / "empty.tar.gz", tmp_path / "out")
    assert main(["shards", "cifar10", str(tmp_path / "nope.tar.gz"), str(tmp_path / "o")]) == 1
    assert "lzn shards: error: CIFAR-10 tarball not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- folder


def make_folder(root: Path) -> None:
    rng = np.random.default_rng(1)
    for cls in ("dog", "cat"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(root / "cat" / "gray.jpg", quality=100)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_folder_round_trip_with_corrupt_file_and_another_size(tmp_path: Path) -> None:
    make_folder(tmp_path / "tree")
    with pytest.warns(LZNWarning) as record:
        meta = convert.write_folder(tmp_path / "tree", tmp_path / "out", progress=False)
    msgs = [str(w.message) for w in record if issubclass(w.category, LZNWarning)]
    assert len(msgs) == 2
    assert re.search(r"skipped 1 unreadable images: .*broken\.png \(UnidentifiedImageError\)", msgs[0])
    assert re.search(
        r"resized 1 images to 5x6 \(the most common size under .*tree\): .*gray\.jpg 4x4", msgs[1]
    )
    assert meta["classes"] == ["cat", "dog"] and meta["splits"] == {"train": 5}
    assert (
        meta["skipped"] == {"train": 1}
        and meta["resized"] == {"train": 1}
        and meta["image_size"] == {"train": [5, 6]}
    )
    samples = list(read_dir(tmp_path / "out", "train").values())
    assert [int(s["cls"]) for s in samples] == [0, 0, 0, 1, 1]
    assert [s["txt"].decode() for s in samples][-1] == "a photo of a dog"
    original = np.asarray(Image.open(tmp_path / "tree" / "dog" / "1.png"))
    np.testing.assert_array_equal(pixels(samples[-1]["png"]), original)
    gray = pixels(samples[2]["jpg"])  # a resized JPEG is written again as JPEG
    assert (
        gray.shape == (6, 5) and (gray == 7).all()
    )  # grayscale kept as L, resized (bicubic) to the common size
    assert meta["kept"] == {"train": 4}  # the four PNGs of the common size, byte for byte
    # a second split into the same OUT gets the first split's size, even if its own most common one differs
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "dog").mkdir(parents=True)
    for i, side in enumerate((3, 3, 5)):
        Image.fromarray(np.full((side, side), 9, np.uint8)).save(
            tmp_path / "test" / ("cat", "dog")[i % 2] / f"{i}.png"
        )
    with pytest.warns(
        LZNWarning, match=r"resized 3 images to 5x6 \(the size of the 'train' split in .*out\)"
    ):
        meta = convert.write_folder(tmp_path / "test", tmp_path / "out", split="test", progress=False)
    assert meta["image_size"] == {"train": [5, 6], "test": [5, 6]} and meta["splits"] == {
        "train": 5,
        "test": 3,
    }
    assert {pixels(s["png"]).shape for s in read_dir(tmp_path / "out", "test").values()} == {(6, 5)}


def _mixed_folder(root: Path) -> dict[str, str]:
    """Images of 20x15 in every kind the converter meets, and one of another size; name -> what
    the converter should do with it ("kept", "converted", "resized")."""
    rng = np.random.default_rng(2)

    def photo(mode: str, size: tuple[int, int] = (20, 15)) -> Image.Image:
        y, x = np.mgrid[0 : size[1], 0 : size[0]]
        rgb = np.stack([x * 12, y * 16, (x + y) * 7], -1) + rng.integers(0, 40, (size[1], size[0], 3))
        return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).convert(mode)

    plan = {
        "a/rgb.jpg": ("RGB", "JPEG", "kept"),
        "a/gray.jpeg": ("L", "JPEG", "kept"),
        "a/cmyk.jpg": ("CMYK", "JPEG", "converted"),
        "a/png_named.jpg": ("RGB", "PNG", "kept"),  # what the file holds decides, not its name
        "b/rgb.png": ("RGB", "PNG", "kept"),
        "b/gray.png": ("L", "PNG", "kept"),
        "b/rgba.png": ("RGBA", "PNG", "converted"),
        "b/pal.png": ("P", "PNG", "converted"),
        "b/rgb.bmp": ("RGB", "BMP", "converted"),
        "b/small.jpg": ("RGB", "JPEG", "resized"),
    }
    for name, (mode, fmt, _) in plan.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img = photo(mode, (10, 10) if "small" in name else (20, 15))
        img.save(root / name, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return {name: how for name, (_, _, how) in plan.items()}


def test_folder_keeps_jpeg_and_png_bytes_and_gives_the_same_shards_for_any_worker_count(
    tmp_path: Path,
) -> None:
    from lzn_image.io import decode_sample

    plan = _mixed_folder(tmp_path / "tree")
    outs = {}
    for workers in (1, 3):
        with pytest.warns(LZNWarning, match=r"resized 1 images to 20x15"):
            meta = convert.write_folder(
                tmp_path / "tree", tmp_path / f"w{workers}", progress=False, workers=workers, shard_size=4
            )
        outs[workers] = digest(tmp_path / f"w{workers}")
    assert outs[1] == outs[3] and len([n for n in outs[1] if n.endswith(".tar")]) == 3  # same bytes
    assert (
        meta["kept"] == {"train": 5} and meta["resized"] == {"train": 1} and meta["splits"] == {"train": 10}
    )
    samples = list(read_dir(tmp_path / "w3", "train").values())
    names = sorted(plan)  # the converter's order: class folders sorted, files sorted within
    for name, fields in zip(names, samples, strict=True):
        source = (tmp_path / "tree" / name).read_bytes()
        ext = next(e for e in ("jpg", "png") if e in fields)
        with Image.open(tmp_path / "tree" / name) as img:
            fmt = img.format
            reference = img.convert("L" if img.mode == "L" else "RGB")  # what the converter wrote before
        if plan[name] == "kept":
            assert fields[ext] == source and ext == ("jpg" if fmt == "JPEG" else "png"), name
        else:
            assert fields[ext] != source and ext == ("jpg" if plan[name] == "resized" else "png"), name
        if plan[name] != "resized":  # the loader decodes the same pixels as from the old PNG
            old = decode_sample(writer.png_bytes(reference))
            assert decode_sample(fields[ext]).equal(old), name
        else:
            assert decode_sample(fields[ext]).shape == (3, 15, 20)
    with pytest.warns(LZNWarning, match="resized 1 images"):
        assert main(["shards", "folder", str(tmp_path / "tree"), str(tmp_path / "cli"), "--workers", "2",
                     "--no-progress", "--shard-size", "4"]) == 0  # fmt: skip
    assert digest(tmp_path / "cli") == {k: v for k, v in outs[1].items() if k != "meta.json"} | {
        "meta.json": digest(tmp_path / "cli")["meta.json"]
    }
    with pytest.raises(ValueError, match="workers must be >= 1"):
        convert.write_folder(tmp_path / "tree", tmp_path / "x", workers=0)


def test_a_failed_conversion_keeps_the_existing_shards(tmp_path: Path) -> None:
    make_folder(tmp_path / "tree")
    with pytest.warns(LZNWarning):
        convert.write_folder(tmp_path / "tree", tmp_path / "out", progress=False)
    before = digest(tmp_path / "out")
    broken = tmp_path / "broken"
    for cls in ("cat", "dog"):
        (broken / cls).mkdir(parents=True)
        (broken / cls / "x.png").write_bytes(b"\x89PNG garbage")
        (broken / cls / "y.jpg").write_bytes(b"")
    with pytest.warns(LZNWarning, match="skipped 4 unreadable images"):
        with pytest.raises(
            DataError, match=r"every image under .*broken failed to load; .*out was left unchanged"
        ):
            convert.write_folder(broken, tmp_path / "out", progress=False)
    assert digest(tmp_path / "out") == before  # shards, sizes.json and meta.json as they were
    (tmp_path / "bad.jsonl").write_text('{"image": "nowhere.png", "caption": "x"}\n')
    with pytest.warns(LZNWarning), pytest.raises(DataError, match="was left unchanged"):
        convert.write_captions(tmp_path / "bad.jsonl", tmp_path / "out", progress=False)
    assert digest(tmp_path / "out") == before
    assert main(["shards", "folder", str(broken), str(tmp_path / "out"), "--no-progress"]) == 1
    assert digest(tmp_path / "out") == before


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        convert.write_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        convert.write_folder(tmp_path / "flat", tmp_path / "out")
    (tmp_path / "flat" / "a").mkdir()
    with pytest.raises(DataError, match="no image files"):
        convert.write_folder(tmp_path / "flat", tmp_path / "out")
    make_folder(tmp_path / "tree")
    with pytest.warns(LZNWarning):
        convert.write_folder(tmp_path / "tree", tmp_path / "out", progress=False)
    (tmp_path / "tree" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"differ from .*meta\.json"):
        convert.write_folder(tmp_path / "tree", tmp_path / "out", split="test")


# ----------------------------------------------------------------------------- captions


def test_captions_round_trip_and_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    absolute = tmp_path / "b.png"
    Image.fromarray(np.full((2, 2, 3), 200, np.uint8)).save(absolute)
    lines = [
        json.dumps({"image": "imgs/a.png", "caption": "a black square"}),
        "{not json",
        "",
        json.dumps({"image": "imgs/a.png"}),
        json.dumps({"image": str(absolute), "caption": "a grey square ☃"}),
        json.dumps({"image": "imgs/missing.png", "caption": "x"}),
    ]
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(
        LZNWarning, match=r"skipped 3 bad lines .*line 2: JSONDecodeError.*line 4: .*caption.*line 6"
    ):
        meta = convert.write_captions(tmp_path / "caps.jsonl", tmp_path / "out", progress=False)
    assert meta["splits"] == {"train": 2} and meta["classes"] is None
    samples = list(read_dir(tmp_path / "out", "train").values())
    assert [sorted(s) for s in samples] == [["png", "txt"], ["png", "txt"]]
    assert samples[1]["txt"].decode() == "a grey square ☃" and pixels(samples[1]["png"])[0, 0, 0] == 200


def test_captions_with_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "caption": "fine"}).encode()
    latin1 = json.dumps({"image": "a.png", "caption": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    (tmp_path / "caps.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + latin1 + b"\n" + good + b"\n")
    with pytest.warns(
        LZNWarning,
        match=r"skipped 1 bad lines of .*caps\.jsonl: line 2: UnicodeDecodeError: not UTF-8 \(byte 0xe9 at column 35\)",
    ):
        meta = convert.write_captions(tmp_path / "caps.jsonl", tmp_path / "out", progress=False)
    assert meta["splits"] == {"train": 2} and meta["skipped"] == {"train": 1}
    assert sorted(read_dir(tmp_path / "out", "train")) == ["cap00000001", "cap00000003"]


def test_captions_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="captions file not found"):
        convert.write_captions(tmp_path / "none.jsonl", tmp_path / "out")
    (tmp_path / "bad.jsonl").write_text('["a list"]\n')
    with pytest.warns(LZNWarning, match="line 1: ValueError: not a JSON object"):
        with pytest.raises(DataError, match=r"no usable lines \(1 bad, 1 non-empty\)"):
            convert.write_captions(tmp_path / "bad.jsonl", tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------- map (a plugin's own key)


def test_map_adds_a_key_in_place(digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from pydantic import BaseModel, ConfigDict

    from lzn_core.data import loader
    from lzn_core.modality import ModalitySpec

    data = tmp_path / "digits"
    shutil.copytree(digits_dir, data)
    (tmp_path / "feats.py").write_text(
        "import io\nimport numpy as np\nfrom PIL import Image\n\n"
        "def brightness(key, fields):\n"
        "    px = np.asarray(Image.open(io.BytesIO(fields['png'])), dtype=np.float32)\n"
        "    return {'mean.txt': f'{px.mean():.3f}'.encode()}\n\n"
        "def broken(key, fields):\n"
        "    return 'not a dict'\n"
    )
    before = read_dir(data, "test")
    pattern = str(data / "test-*.tar")
    argv = [
        "shards",
        "map",
        pattern,
        str(data),
        "--fn",
        f"{tmp_path / 'feats.py'}:brightness",
        "--split",
        "test",
    ]
    assert main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("test 300 samples (" + str(data / "test-*.tar") + ")")
    after = read_dir(data, "test")
    assert after.keys() == before.keys()
    for key, fields in before.items():  # the old members unchanged, the new one added
        assert {k: v for k, v in after[key].items() if k != "mean.txt"} == fields
        assert float(after[key]["mean.txt"]) == pytest.approx(
            pixels(fields["png"]).astype(np.float32).mean(), abs=1e-3
        )
    assert json.loads((data / "sizes.json").read_text())["test-000000.tar"] == 300
    meta = json.loads((data / "meta.json").read_text())
    assert meta["classes"][7] == "seven" and meta["splits"] == {"train": 1497, "test": 300}

    class _Cfg(BaseModel):
        model_config = ConfigDict(extra="forbid")

    spec = ModalitySpec("brightness", _Cfg, lambda c, q: None, lambda c, q: None, ("mean.txt",), float)
    batch = next(iter(loader(pattern, {"brightness": spec}, batch_size=300, shuffle=False)))
    assert batch["brightness"][0] == float(next(iter(after.values()))["mean.txt"])  # read by its own plugin
    done = digest(data)
    with pytest.raises(DataError, match=r"returned str for 'digits\d+'; expected \{ext: bytes\}"):
        convert.map_split(
            pattern, data, convert.load_function(f"{tmp_path / 'feats.py'}:broken"), split="test"
        )
    assert digest(data) == done  # nothing written
    with pytest.raises(DataError, match="has no function 'nope'"):
        convert.load_function(f"{tmp_path / 'feats.py'}:nope")
    with pytest.raises(DataError, match="expected MODULE:FUNCTION"):
        convert.load_function("nocolon")
