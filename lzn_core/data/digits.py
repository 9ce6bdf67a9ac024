"""The embedded data set: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

Everything the framework knows about the digits is here:

* :func:`write_digits`: the shards of ``lzn shards digits`` (png + cls + a caption: a template
  naming the digit, or with ``captions="attributes"`` what the pixels show beyond the class);
* :class:`DigitAttributes`, :func:`pixel_statistics`, :func:`attribute_caption`,
  :func:`caption_attributes`: those attributes (stroke weight, slant, width, horizontal
  position) computed from an image, written into a caption and read back from one;
* :func:`real_digits`: the images and labels as tensors in the shards' [-1, 1] convention.

The FID/KID features for 8x8 images (a small classifier fitted on real images) are the image
plugin's: :class:`lzn_image.features.DigitFeatures`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .shards import make_sample, png_bytes, stage_split, write_meta

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_TEMPLATES = (
    "a handwritten {word}",
    "the digit {num}, written by hand",
    "a scanned image of the number {word}",
    "a small blurry {num}",
    "the number {word} ({num}) in handwriting",
    "an 8x8 picture of a handwritten {word}",
)


CAPTION_SETS = ("templates", "attributes")
"""Caption sets of :func:`write_digits` (``lzn shards digits --captions``)."""

ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    "stroke": ("thin", "medium-weight", "thick"),
    "slant": ("left-leaning", "upright", "right-leaning"),
    "width": ("narrow", "medium-width", "wide"),
    "position": ("left of centre", "centred", "right of centre"),
}
"""The words of each attribute's three levels (low, middle, high tercile of its statistic)."""

_ATTRIBUTE_TEMPLATES = (
    "a {stroke}, {slant}, {width} {num}, {position}",
    "a handwritten {word}: {stroke}, {slant}, {width}, {position}",
)
_PHRASES = {
    name: [re.compile(r"(?<![a-z-])" + re.escape(w) + r"(?![a-z-])") for w in words]
    for name, words in ATTRIBUTES.items()
}


def digit_caption(label: int, choice: int) -> str:
    """Caption ``choice`` (any int, taken modulo the template count) for digit ``label``."""
    template = _DIGIT_TEMPLATES[choice % len(_DIGIT_TEMPLATES)]
    return template.format(word=DIGIT_NAMES[label], num=label)


def ink_of(images: Any) -> np.ndarray:
    """Images in the shards' [-1, 1] convention, ``(N, 1, H, W)`` or ``(N, H, W)`` -> ink ``(N, H, W)`` in [0, 1]."""
    x = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = x.astype(np.float64)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"ink_of: expected one channel, got images of shape {x.shape}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"ink_of: expected images (N, 1, H, W) or (N, H, W), got shape {x.shape}")
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def pixel_statistics(ink: np.ndarray) -> dict[str, np.ndarray]:
    """The statistic behind each attribute of :data:`ATTRIBUTES`, per image.

    With ink I(x, y) >= 0 (x: column, y: row, pixel centres; mass m = Σ I; centroid (x̄, ȳ);
    second moments σ_xx, σ_yy, σ_xy weighted by I):

    * ``stroke``: the ink amount m / (H·W) (more ink: thicker strokes at a normalised size);
    * ``slant``: −σ_xy / σ_yy, the shear that makes the ink's principal axis vertical; > 0 when
      the top leans right (rows grow downwards);
    * ``width``: √σ_xx, the horizontal spread in pixels;
    * ``position``: x̄ − W/2, the horizontal offset of the centroid in pixels (> 0: right).

    Args:
        ink: (N, H, W) non-negative ink, e.g. :func:`ink_of` of images in [-1, 1].

    Returns:
        ``{attribute: (N,) float64}``; NaN for an image without ink (except ``stroke``: 0).
    """
    ink = np.asarray(ink, dtype=np.float64)
    if ink.ndim != 3:
        raise ValueError(f"pixel_statistics: expected ink of shape (N, H, W), got {ink.shape}")
    _, h, w = ink.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    m = ink.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (ink * xs).sum(axis=(1, 2)) / m
        cy = (ink * ys).sum(axis=(1, 2)) / m
        dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
        sxx = (ink * dx**2).sum(axis=(1, 2)) / m
        syy = (ink * dy**2).sum(axis=(1, 2)) / m
        sxy = (ink * dx * dy).sum(axis=(1, 2)) / m
        slant = -sxy / syy
    return {"stroke": m / (h * w), "slant": slant, "width": np.sqrt(sxx), "position": cx - w / 2}


@dataclass(frozen=True)
class DigitAttributes:
    """Per-class tercile cut points of every :func:`pixel_statistics` statistic.

    A level is 0, 1 or 2 (the words of :data:`ATTRIBUTES`): which third of the class's
    training images the statistic falls in. Cut points per class make the attributes say
    something the class does not: each level holds about a third of every digit's images.

    Attributes:
        cuts: ``{attribute: (classes, 2)}`` the 1/3 and 2/3 quantiles per class.
    """

    cuts: dict[str, np.ndarray]

    @classmethod
    def fit(cls, ink: np.ndarray, labels: Any) -> DigitAttributes:
        """Cut points from ink ``(N, H, W)`` and labels ``(N,)`` (every class 0..max present)."""
        y = np.asarray(labels, dtype=np.int64)
        stats = pixel_statistics(ink)
        classes = int(y.max()) + 1
        missing = [k for k in range(classes) if not (y == k).any()]
        if missing:
            raise ValueError(f"DigitAttributes.fit: no images of class(es) {missing}")
        cuts = {
            name: np.stack([np.nanquantile(v[y == k], [1 / 3, 2 / 3]) for k in range(classes)])
            for name, v in stats.items()
        }
        return cls(cuts)

    def levels(self, ink: np.ndarray, labels: Any) -> np.ndarray:
        """Levels ``(N, len(ATTRIBUTES))`` int64 in {0, 1, 2} of each image for its class; −1 when
        undefined (no ink)."""
        y = np.asarray(labels, dtype=np.int64)
        stats = pixel_statistics(ink)
        out = np.empty((len(y), len(ATTRIBUTES)), dtype=np.int64)
        for j, name in enumerate(ATTRIBUTES):
            v, c = stats[name], self.cuts[name][y]
            out[:, j] = np.where(np.isnan(v), -1, (v > c[:, 0]).astype(int) + (v > c[:, 1]).astype(int))
        return out

    def to_json(self) -> dict[str, list[list[float]]]:
        """The cut points as plain lists (``meta.json``)."""
        return {k: np.round(v, 6).tolist() for k, v in self.cuts.items()}

    @classmethod
    def from_json(cls, data: dict[str, list[list[float]]]) -> DigitAttributes:
        """Inverse of :meth:`to_json`."""
        return cls({k: np.asarray(v, dtype=np.float64) for k, v in data.items()})


def attribute_caption(label: int, levels: Any, choice: int = 0) -> str:
    """A caption of digit ``label`` with attribute ``levels`` (one per :data:`ATTRIBUTES` entry),
    in phrasing ``choice`` (taken modulo the phrasings), e.g. "a thin, upright, narrow 7, left of centre"."""
    words = {name: ATTRIBUTES[name][int(level)] for name, level in zip(ATTRIBUTES, levels, strict=True)}
    template = _ATTRIBUTE_TEMPLATES[choice % len(_ATTRIBUTE_TEMPLATES)]
    return template.format(word=DIGIT_NAMES[label], num=label, **words)


def caption_attributes(caption: str) -> dict[str, int]:
    """The attribute levels a caption states: ``{attribute: level}`` for every attribute it names
    exactly one level of (a template caption states none)."""
    text = caption.lower()
    out = {}
    for name, patterns in _PHRASES.items():
        found = [level for level, pat in enumerate(patterns) if pat.search(text)]
        if len(found) == 1:
            out[name] = found[0]
    return out


def write_digits(
    out: str | Path,
    *,
    test_size: int = 300,
    seed: int = 0,
    shard_size: int = 1000,
    progress: bool | None = None,
    captions: str = "templates",
) -> dict[str, Any]:
    """scikit-learn's bundled 8×8 digits (1797 images, no download) -> ``train``/``test`` shards.

    Pixels 0..16 become uint8 ``round(x * 255 / 16)`` (grayscale PNG, 8×8). The split is
    stratified by class (``train_test_split(..., stratify=y, random_state=seed)``), each
    split kept in the original order; every image gets one caption, in a phrasing chosen by
    a ``seed``-ed generator:

    * ``captions="templates"``: a template naming the digit as a word and/or a numeral
      ("a handwritten seven");
    * ``captions="attributes"``: the digit and its :data:`ATTRIBUTES`, computed from its pixels
      (:class:`DigitAttributes` fitted on the training split; "a thin, upright, narrow 7, left
      of centre"). The cut points are saved in ``meta.json`` (``attribute_cuts``).

    Returns:
        the written ``meta.json`` content.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (1797, 8, 8)
    labels = data.target.astype(int)
    if not 0 < test_size < len(labels):
        raise ValueError(f"--test-size must be between 1 and {len(labels) - 1}, got {test_size}")
    if captions not in CAPTION_SETS:
        raise ValueError(f"unknown caption set {captions!r}; choose one of {', '.join(CAPTION_SETS)}")
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    choices = np.random.default_rng(seed).integers(0, len(_DIGIT_TEMPLATES), size=len(labels))
    extra: dict[str, Any] = {"captions": captions}
    if captions == "attributes":
        ink = images / 255.0
        attrs = DigitAttributes.fit(ink[idx_train], labels[idx_train])
        levels = attrs.levels(ink, labels)
        texts = [attribute_caption(labels[i], levels[i], int(choices[i])) for i in range(len(labels))]
        extra["attribute_cuts"] = attrs.to_json()
    else:
        texts = [digit_caption(labels[i], int(choices[i])) for i in range(len(labels))]
        extra["attribute_cuts"] = None  # a directory rewritten with templates keeps no stale cut points
    with contextlib.ExitStack() as stack:  # both splits staged, then both committed: all or nothing
        staged = []
        for split, idx in (("train", np.sort(idx_train)), ("test", np.sort(idx_test))):
            gen = (
                make_sample(
                    f"digits{i:05d}", {"png": png_bytes(images[i]), "txt": texts[i], "cls": int(labels[i])}
                )
                for i in idx
            )
            staged.append(
                stack.enter_context(
                    stage_split(out, split, gen, total=len(idx), shard_size=shard_size, progress=progress)
                )
            )
        splits = {s.split: sum(s.commit().values()) for s in staged}
    return write_meta(
        Path(out),
        source="sklearn.datasets.load_digits",
        classes=DIGIT_NAMES,
        splits=splits,
        seed=seed,
        shard_size=shard_size,
        **extra,
    )


def real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (no download).

    Returns:
        images: (1797, 1, 8, 8) float32 in [-1, 1] (pixel value v in 0..16 -> v / 8 - 1);
        labels: (1797,) int64.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return x, torch.tensor(d.target, dtype=torch.int64)
