"""Converters to webdataset shards (lzn_core/data/convert.py): CIFAR-10, image folders, caption files and
``lzn shards map``: round trips, determinism, atomic writes, bad input."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shard_files import digest, pixels, read_dir

from lzn_core.cli import main
from lzn_core.data import convert
from lzn_core.data import shards as writer
from lzn_core.errors import DataError, LZNWarning


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


# ----------------------------------------------------------------------- folder converter
def test_folder_converter_keeps_full_images_or_a_fixed_short_side(tmp_path) -> None:
    from lzn_image.config import ImageConfig
    from lzn_image.plugin import SPEC

    from lzn_core.cli import main
    from lzn_core.data import loader
    from lzn_core.data.convert import write_folder

    for cls, size in (("cat", (300, 200)), ("dog", (120, 260))):
        (tmp_path / "src" / cls).mkdir(parents=True)
        Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "src" / cls / "a.jpg", quality=95)

    def sizes(out: Path) -> list[tuple[int, int]]:
        cfg = ImageConfig(resolution=32, channels=3, eval_resize=36)
        ld = loader(
            str(out / "train-*.tar"),
            {"image": SPEC},
            configs={"image": cfg},
            batch_size=2,
            shuffle=False,
            drop_last=False,
            infinite=False,
        )
        batch = next(iter(ld))["image"]
        return [tuple(x.shape[-2:]) for x in batch]

    write_folder(tmp_path / "src", tmp_path / "full", progress=False, keep_sizes=True)
    assert sizes(tmp_path / "full") == [(200, 300), (260, 120)]
    write_folder(tmp_path / "src", tmp_path / "short", progress=False, short_side=64)
    assert sizes(tmp_path / "short") == [(64, 96), (139, 64)]
    assert (
        main(
            [
                "shards",
                "folder",
                str(tmp_path / "src"),
                str(tmp_path / "cli"),
                "--short-side",
                "40",
                "--no-progress",
            ]
        )
        == 0
    )
    assert sizes(tmp_path / "cli") == [(40, 60), (87, 40)]
    with pytest.raises(ValueError, match="short_side must be a positive number of pixels"):
        write_folder(tmp_path / "src", tmp_path / "bad", short_side=0)
