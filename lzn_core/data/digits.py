"""The embedded data set: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

Everything the framework knows about the digits is here:

* :func:`write_digits`: the shards of ``lzn shards digits`` (png + cls + a template caption);
* :func:`real_digits`: the images and labels as tensors in the shards' [-1, 1] convention;
* :class:`DigitFeatures` / :func:`digit_features`: a small MLP classifier fitted on real
  digits, whose penultimate layer gives the FID/KID features of the embedded data (an
  ImageNet network would be meaningless on 8x8 images).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .shards import make_sample, png_bytes, write_meta, write_split

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


def digit_caption(label: int, choice: int) -> str:
    """Caption ``choice`` (any int, taken modulo the template count) for digit ``label``."""
    template = _DIGIT_TEMPLATES[choice % len(_DIGIT_TEMPLATES)]
    return template.format(word=DIGIT_NAMES[label], num=label)


def write_digits(
    out: str | Path,
    *,
    test_size: int = 300,
    seed: int = 0,
    shard_size: int = 1000,
    progress: bool | None = None,
) -> dict[str, Any]:
    """scikit-learn's bundled 8×8 digits (1797 images, no download) -> ``train``/``test`` shards.

    Pixels 0..16 become uint8 ``round(x * 255 / 16)`` (grayscale PNG, 8×8). The split is
    stratified by class (``train_test_split(..., stratify=y, random_state=seed)``), each
    split kept in the original order; every image gets one caption from a set of templates
    naming the digit as a word and/or a numeral, chosen by a ``seed``-ed generator.

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
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    choices = np.random.default_rng(seed).integers(0, len(_DIGIT_TEMPLATES), size=len(labels))
    splits = {}
    for split, idx in (("train", np.sort(idx_train)), ("test", np.sort(idx_test))):
        gen = (
            make_sample(
                f"digits{i:05d}", png_bytes(images[i]), digit_caption(labels[i], choices[i]), labels[i]
            )
            for i in idx
        )
        splits[split] = sum(
            write_split(out, split, gen, total=len(idx), shard_size=shard_size, progress=progress).values()
        )
    return write_meta(
        Path(out),
        source="sklearn.datasets.load_digits",
        classes=DIGIT_NAMES,
        splits=splits,
        seed=seed,
        shard_size=shard_size,
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
