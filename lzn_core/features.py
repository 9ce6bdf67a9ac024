"""Feature extractors for FID/KID and judges of generated digits.

Two kinds, both callables ``images (B, C, H, W) in [-1, 1] -> features (B, d)``:

* :class:`DigitFeatures`: the penultimate layer of a small MLP classifier fitted
  on real digits pixels (seeded, fast on CPU, cached per process and optionally
  on disk). It is the default for the embedded 8x8 digits, where an ImageNet
  network would be meaningless.
* :class:`InceptionFeatures`: torchvision's Inception-v3 pool features (2048-d),
  only from weights the user has on disk (never downloaded).

:func:`real_digits` gives scikit-learn's bundled digits as tensors in the same
[-1, 1] pixel convention as the shards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LZNError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_CACHE: dict[str, DigitFeatures] = {}


def real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (no download).

    Returns:
        images: (1797, 1, 8, 8) float32 in [-1, 1] (pixel value v in 0..16 -> v / 8 - 1);
        labels: (1797,) int64.
    """
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return x, torch.tensor(d.target, dtype=torch.int64)


def _check_images(images: Any, what: str) -> None:
    import torch

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
        import warnings

        import torch
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from torch import nn

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
        import torch

        self._check(images)
        with torch.no_grad():
            return self.net[:5](images.float())

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> predicted classes (B,)."""
        import torch

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
    import torch

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


class InceptionFeatures:
    """Inception-v3 pool features (B, 2048) from a local weights file (never downloaded).

    Args:
        weights: path to a torchvision ``inception_v3`` state dict (``.pt``/``.pth``
            loaded with ``weights_only``, or ``.safetensors``).
        batch_size: images per forward pass.

    Grayscale inputs are repeated to 3 channels; images are resized to 299x299
    (bilinear) and fed in [-1, 1], the range the network was trained on.
    """

    def __init__(self, weights: str | Path, *, batch_size: int = 64) -> None:
        import torch
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise LZNError(
                f"Inception weights not found: {path}; give a local torchvision inception_v3 state dict "
                "(nothing is downloaded), or use the digits features for 8x8 data"
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("AuxLogits.")]
        if missing or unexpected:
            raise LZNError(
                f"{path} is not an inception_v3 state dict: {len(missing)} missing keys "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        net.fc = torch.nn.Identity()
        self.net = net.eval()
        self.batch_size = batch_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1], C in {1, 3} -> features (B, 2048)."""
        import torch
        import torch.nn.functional as F

        _check_images(images, "InceptionFeatures")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures: expected 1 or 3 channels, got {images.shape[1]}")
        out = []
        with torch.no_grad():
            for chunk in images.float().split(self.batch_size):
                if chunk.shape[1] == 1:
                    chunk = chunk.repeat(1, 3, 1, 1)
                chunk = F.interpolate(chunk, size=(299, 299), mode="bilinear", align_corners=False)
                out.append(self.net(chunk))
        return torch.cat(out)
