"""Feature extractors for FID/KID of generated images, each named by the implementation it is
(the image decoder's judge, :mod:`lzn_image.judge`, uses them).

:class:`CleanFIDFeatures` is **clean-fid** (Parmar et al.), the library behind the paper's
"clean" FID column (the paper's Table 5): images are quantised to uint8 as the authors' trainer does
(``to_uint8``), resized to 299×299 per channel with PIL's bicubic filter in float
(``build_resizer("clean")``) and fed, in [0, 255], to the torchscript Inception-v3 of
StyleGAN2-ADA (``inception-2015-12-05.pt``). The distance of two feature sets is the project's
:func:`lzn_core.eval.metrics.frechet_distance` (clean-fid's own calls ``scipy.linalg.sqrtm(...,
disp=False)``, which scipy 1.18 removed; the two agree to 1e-7 relative). clean-fid is an optional extra (``pip install
lzn[fid]``); its weights are read from a given file or folder, or from clean-fid's own cache
(``/tmp``), never downloaded here.

Images too small for Inception (the embedded 8×8 digits) use the features of a small
classifier fitted on real images (:class:`DigitFeatures` / :func:`digit_features`; an ImageNet
network would be meaningless on 8x8 images): comparable between runs of this project only.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lzn_core.errors import LZNError

CLEAN_FID = "clean-fid"
"""``fid_features`` name of :class:`CleanFIDFeatures` (the paper's clean-fid column)."""
DIGIT_FEATURES = "digit-classifier (this project only, not comparable with the paper)"
"""``fid_features`` name of the digits classifier's features."""

WEIGHTS_FILE = "inception-2015-12-05.pt"
_CLEANFID_CACHE = "/tmp"  # clean-fid's default folder for the weights on Linux (cleanfid.features)


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The torchscript Inception file clean-fid uses: ``path`` (the file, or a folder holding
    ``inception-2015-12-05.pt``), else clean-fid's cache folder.

    Raises:
        LZNError: the file is in neither place (offline machines: copy it there).
    """
    places = [Path(path)] if path else []
    places.append(Path(os.environ.get("LZN_CLEANFID_CACHE", _CLEANFID_CACHE)))
    for place in places:
        cand = place / WEIGHTS_FILE if place.is_dir() else place
        if cand.is_file():
            return cand
    looked = ", ".join(str(p) for p in places)
    raise LZNError(
        f"clean-fid's Inception weights {WEIGHTS_FILE} not found (looked in {looked}); nothing is "
        "downloaded here: fetch the file once where there is internet (clean-fid's "
        "cleanfid.downloads_helper.check_download_inception(FOLDER)) and pass it as the judge option "
        "fid_weights (lzn eval --judge MODALITY.fid_weights=FILE)"
    )


class CleanFIDFeatures:
    """clean-fid's Inception features (B, 2048) of images in [-1, 1] (the paper's clean-fid column).

    Args:
        weights: the torchscript ``inception-2015-12-05.pt`` or a folder holding it (None:
            clean-fid's cache, :func:`find_inception_weights`).
        network: instead of the Inception file, any callable (B, 3, 299, 299) float in [0, 255]
            -> (B, d) (tests use a stub; the preprocessing is clean-fid's either way).
        batch_size: images per forward pass.
        device: where the network runs (default: CPU).

    Raises:
        LZNError: clean-fid is not installed (``pip install lzn[fid]``), or the weights are missing.
    """

    name = CLEAN_FID

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        network: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 128,
        device: str | torch.device = "cpu",
    ) -> None:
        try:
            from cleanfid.resize import build_resizer
        except ImportError as exc:
            raise LZNError(
                "FID/KID through clean-fid needs the optional extra: pip install 'lzn[fid]'"
            ) from exc
        self.device = torch.device(device)
        if network is None:
            file = find_inception_weights(weights)
            from cleanfid.inception_torchscript import InceptionV3W

            net = InceptionV3W(str(file.parent), download=False, resize_inside=False).eval().to(self.device)
            network = net
        self.network = network
        self.resize = build_resizer("clean")
        self.batch_size = batch_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1], C in {1, 3} -> (B, 3, 299, 299) float in [0, 255]:
        uint8 quantisation (round of clip((x+1)/2·255)), then clean-fid's PIL bicubic resize."""
        _check_images(images, "CleanFIDFeatures")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"CleanFIDFeatures: expected 1 or 3 channels, got {images.shape[1]}")
        x = images.detach().float().cpu()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        u8 = np.around(np.clip((x.numpy() + 1) / 2 * 255, 0, 255)).astype(np.uint8)
        out = np.stack([self.resize(im.transpose(1, 2, 0)) for im in u8]).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(out))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> features (B, d) on the CPU."""
        _check_images(images, "CleanFIDFeatures")
        out = [
            self.network(self.preprocess(chunk).to(self.device)).float().cpu()
            for chunk in images.split(self.batch_size)
        ]
        return torch.cat(out)


_CACHE: dict[str, DigitFeatures] = {}


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
