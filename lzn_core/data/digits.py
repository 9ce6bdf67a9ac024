"""The embedded data set: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

Everything the framework knows about the digits is here:

* :func:`write_digits`: the shards of ``lzn shards digits`` (png + cls + a caption: a template
  naming the digit, or with ``captions="attributes"`` what the pixels show beyond the class);
* :class:`DigitAttributes`, :func:`pixel_statistics`, :func:`attribute_caption`,
  :func:`caption_attributes`: those attributes (stroke weight, slant, width, horizontal
  position) computed from an image, written into a caption and read back from one;
* :func:`real_digits`: the images and labels as tensors in the shards' [-1, 1] convention;
* :class:`DigitFeatures` / :func:`digit_features`: a small MLP classifier fitted on real
  digits, whose penultimate layer gives the FID/KID features of the embedded data (an
  ImageNet network would be meaningless on 8x8 images).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .shards import make_sample, png_bytes, stage_split, write_meta

_CACHE: dict[str, DigitFeatures] = {}

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
            gen = (make_sample(f"digits{i:05d}", png_bytes(images[i]), texts[i], labels[i]) for i in idx)
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


def _check_images(images: Any, what: str) -> None:

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"{what}: expected images of shape (B, C, H, W), got {shape}")


class DigitFeatures:
    """Penultimate features of an MLP ``C*H*W -> 128 -> 64 -> classes`` fitted on real images.

    Build with :meth:`fit` (or :func:`digit_features`, which caches). Calling the
    object maps ``images (B, C, H, W)`` to ``(B, 64)`` features; :meth:`predict`
    gives class labels ``(B,)``.
    """

    def __init__(self, net: Any, shape: tuple[int, ...], train_accuracy: float) -> None:
        self.net = net
        self.shape = shape
        self.train_accuracy = train_accuracy

    @classmethod
    def fit(
        cls, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, epochs: int = 200
    ) -> DigitFeatures:
        """Fit the classifier (scikit-learn's ``MLPClassifier``, Adam, deterministic for a seed).

        Args:
            images: (N, C, H, W) real images in [-1, 1].
            labels: (N,) int64 class indices.
            seed: ``random_state`` of the initialisation and batches.
            epochs: maximum Adam epochs (0: an unfitted network, e.g. to load weights into).
        """

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        _check_images(images, "DigitFeatures.fit")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"DigitFeatures.fit: labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        classes = int(labels.max()) + 1
        if classes < 3:
            raise ValueError(f"DigitFeatures.fit: needs at least 3 classes, got {classes}")
        dim = images[0].numel()
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(dim, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, classes),
        ).eval()
        x, y = images.float().flatten(1).numpy(), labels.long().numpy()
        if epochs > 0:
            clf = MLPClassifier((128, 64), max_iter=epochs, random_state=seed, alpha=1e-3)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(x, y)
            if len(clf.classes_) != classes:  # a class absent from the data: keep the output layer full size
                raise ValueError(
                    f"DigitFeatures.fit: labels must cover 0..{classes - 1}, got {list(clf.classes_)}"
                )
            with torch.no_grad():
                layers: list[Any] = list(net[1::2])
                for layer, w, b in zip(layers, clf.coefs_, clf.intercepts_, strict=True):
                    layer.weight.copy_(torch.from_numpy(w.T.copy()))
                    layer.bias.copy_(torch.from_numpy(b.copy()))
        with torch.no_grad():
            acc = float((net(images.float()).argmax(1) == labels).float().mean())
        return cls(net, tuple(images.shape[1:]), acc)

    def _check(self, images: torch.Tensor) -> None:
        _check_images(images, "DigitFeatures")
        if tuple(images.shape[1:]) != self.shape:
            raise ValueError(
                f"DigitFeatures was fitted on images of shape {self.shape}, got {tuple(images.shape[1:])}"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> features (B, 64) (after the second ReLU)."""

        self._check(images)
        with torch.no_grad():
            return self.net[:5](images.float())

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> predicted classes (B,)."""

        self._check(images)
        with torch.no_grad():
            return self.net(images.float()).argmax(1)


def digit_features(
    images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, cache_dir: str | Path | None = None
) -> DigitFeatures:
    """:meth:`DigitFeatures.fit`, cached by a hash of (images, labels, seed).

    The cache lives in the process and, when ``cache_dir`` is given, on disk as
    ``digit_features-<hash>.pt`` (a plain state dict, loaded with ``weights_only``).
    """

    h = hashlib.sha1()
    h.update(images.float().contiguous().numpy().tobytes())
    h.update(labels.long().contiguous().numpy().tobytes())
    h.update(str(seed).encode())
    key = h.hexdigest()[:16]
    if key in _CACHE:
        return _CACHE[key]
    path = Path(cache_dir) / f"digit_features-{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        feats = DigitFeatures.fit(images, labels, seed=seed, epochs=0)
        state = torch.load(path, weights_only=True, map_location="cpu")
        feats.net.load_state_dict(state["net"])
        feats.train_accuracy = float(state["train_accuracy"])
    else:
        feats = DigitFeatures.fit(images, labels, seed=seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"net": feats.net.state_dict(), "train_accuracy": feats.train_accuracy}, tmp)
            tmp.replace(path)
    _CACHE[key] = feats
    return feats
