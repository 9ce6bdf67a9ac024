"""The digits data set (lzn_core/data/digits.py): its shards (layout, pixels, labels, captions,
determinism) and the attribute captions computed from the ink."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shard_files import digest, pixels, read_dir

from lzn_core.cli import main as cli
from lzn_core.data import digits


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


# ----------------------------------------------------------------------------- attribute captions
@pytest.fixture(scope="module")
def digit_attributes() -> digits.DigitAttributes:
    x, y = digits.real_digits()
    return digits.DigitAttributes.fit(digits.ink_of(x), y.numpy())


def _image(columns_per_row: list[list[int]]) -> np.ndarray:
    """An 8×8 image in [-1, 1]: full ink at the given columns of each row, no ink elsewhere."""
    img = -np.ones((8, 8))
    for r, cols in enumerate(columns_per_row):
        img[r, cols] = 1.0
    return img


def _words(attrs: digits.DigitAttributes, img: np.ndarray, label: int = 1) -> dict[str, str]:
    levels = attrs.levels(digits.ink_of(img[None]), [label])[0]
    caption = digits.attribute_caption(label, levels)
    return {k: digits.ATTRIBUTES[k][v] for k, v in digits.caption_attributes(caption).items()}


def test_stroke_weight_comes_from_the_ink(digit_attributes) -> None:
    thin = _image([[3, 4]] * 8)  # a 2-pixel bar through the centre
    thick = _image([[2, 3, 4, 5]] * 8)  # a 4-pixel bar through the centre
    assert _words(digit_attributes, thin)["stroke"] == "thin"
    assert _words(digit_attributes, thick)["stroke"] == "thick"
    assert (
        _words(digit_attributes, thin)["position"] == _words(digit_attributes, thick)["position"] == "centred"
    )


def test_slant_comes_from_the_ink_axis(digit_attributes) -> None:
    top_right = _image([[7 - r, 6 - r] if r < 7 else [0] for r in range(8)])  # "/" (rows grow downwards)
    top_left = _image([[r, r + 1] if r < 7 else [7] for r in range(8)])  # "\"
    upright = _image([[3, 4]] * 8)
    assert _words(digit_attributes, top_right)["slant"] == "right-leaning"
    assert _words(digit_attributes, top_left)["slant"] == "left-leaning"
    assert _words(digit_attributes, upright)["slant"] == "upright"


def test_position_and_width_come_from_the_ink(digit_attributes) -> None:
    assert _words(digit_attributes, _image([[0, 1]] * 8))["position"] == "left of centre"
    assert _words(digit_attributes, _image([[6, 7]] * 8))["position"] == "right of centre"
    narrow, wide = _image([[3, 4]] * 8), _image([[1, 6]] * 8)  # same ink, spread 0.5 vs 2.5 px
    assert _words(digit_attributes, narrow)["width"] == "narrow"
    assert _words(digit_attributes, wide)["width"] == "wide"


def test_an_image_without_ink_has_no_attribute_levels(digit_attributes) -> None:
    levels = digit_attributes.levels(digits.ink_of(-np.ones((1, 8, 8))), [3])
    assert (levels[0, 1:] == -1).all()  # slant, width, position undefined (stroke: the least ink)


def test_caption_attributes_reads_back_what_attribute_caption_wrote() -> None:
    for choice in (0, 1):
        for levels in ([0, 1, 2, 0], [2, 0, 1, 2], [1, 2, 0, 1]):
            caption = digits.attribute_caption(7, levels, choice)
            assert digits.caption_attributes(caption) == dict(zip(digits.ATTRIBUTES, levels, strict=True)), (
                caption
            )
    assert digits.caption_attributes("a handwritten seven") == {}
    assert digits.attribute_caption(7, [0, 1, 0, 2]) == "a thin, upright, narrow 7, right of centre"


def _samples(out: Path, split: str) -> list[dict[str, bytes]]:
    got = []
    for shard in sorted(out.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            per: dict[str, dict[str, bytes]] = {}
            for m in tar:
                key, ext = m.name.split(".", 1)
                per.setdefault(key, {})[ext] = tar.extractfile(m).read()
            got += list(per.values())
    return got


def test_shards_cli_writes_attribute_captions_computed_from_the_pixels(tmp_path: Path) -> None:
    out = tmp_path / "digits-attributes"
    assert cli(["shards", "digits", str(out), "--captions", "attributes", "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["captions"] == "attributes"
    split = {s: _samples(out, s) for s in ("train", "test")}
    ink = {
        s: np.stack([np.asarray(Image.open(io.BytesIO(r["png"]))) / 255.0 for r in v])
        for s, v in split.items()
    }
    labels = {s: np.array([int(r["cls"]) for r in v]) for s, v in split.items()}
    fitted = digits.DigitAttributes.fit(ink["train"], labels["train"])  # from the shards' own training pixels
    for name, cuts in digits.DigitAttributes.from_json(meta["attribute_cuts"]).cuts.items():
        np.testing.assert_allclose(cuts, fitted.cuts[name], atol=1e-6)
    for s in ("train", "test"):
        levels = fitted.levels(ink[s], labels[s])
        stated = [digits.caption_attributes(r["txt"].decode()) for r in split[s]]
        assert all(len(st) == 4 for st in stated)
        assert np.array_equal(np.array([[st[k] for k in digits.ATTRIBUTES] for st in stated]), levels)
        assert all(
            str(y) in r["txt"].decode() or digits.DIGIT_NAMES[y] in r["txt"].decode()
            for y, r in zip(labels[s], split[s], strict=True)
        )
    # per-class terciles: every level holds about a third of the training images of each attribute
    shares = np.stack([(fitted.levels(ink["train"], labels["train"]) == k).mean(0) for k in range(3)])
    assert (abs(shares - 1 / 3) < 0.05).all(), shares


def test_template_captions_state_no_attributes(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    digits.write_digits(out, progress=False)
    assert json.loads((out / "meta.json").read_text())["attribute_cuts"] is None
    assert all(digits.caption_attributes(r["txt"].decode()) == {} for r in _samples(out, "test"))
