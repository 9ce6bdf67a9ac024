"""Feature extractors for FID/KID of generated images, each named by the implementation it is.

:class:`CleanFIDFeatures` is **clean-fid** (Parmar et al.), the library behind the paper's
"clean" FID column (the paper's Table 5): images are quantised to uint8 as the authors' trainer does
(``to_uint8``), resized to 299×299 per channel with PIL's bicubic filter in float
(``build_resizer("clean")``) and fed, in [0, 255], to the torchscript Inception-v3 of
StyleGAN2-ADA (``inception-2015-12-05.pt``); the FID is clean-fid's ``frechet_distance`` of the
two feature sets' means and covariances. clean-fid is an optional extra (``pip install
lzn[fid]``); its weights are read from a given file or folder, or from clean-fid's own cache
(``/tmp``), never downloaded here.

The embedded 8×8 digits use the features of a small classifier fitted on real digits
(:func:`lzn_core.data.digits.digit_features`): comparable between runs of this project only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LZNError

CLEAN_FID = "clean-fid"
"""``fid_features`` name of :class:`CleanFIDFeatures` (the paper's clean-fid column)."""
DIGIT_FEATURES = "digit-classifier (this project only, not comparable with the paper)"
"""``fid_features`` name of the digits classifier's features."""

WEIGHTS_FILE = "inception-2015-12-05.pt"
_CACHE = "/tmp"  # clean-fid's default folder for the weights on Linux (cleanfid.features)


def _check_images(images: Any, what: str) -> None:

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"{what}: expected images of shape (B, C, H, W), got {shape}")


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The torchscript Inception file clean-fid uses: ``path`` (the file, or a folder holding
    ``inception-2015-12-05.pt``), else clean-fid's cache folder.

    Raises:
        LZNError: the file is in neither place (offline machines: copy it there).
    """
    places = [Path(path)] if path else []
    places.append(Path(os.environ.get("LZN_CLEANFID_CACHE", _CACHE)))
    for place in places:
        cand = place / WEIGHTS_FILE if place.is_dir() else place
        if cand.is_file():
            return cand
    looked = ", ".join(str(p) for p in places)
    raise LZNError(
        f"clean-fid's Inception weights {WEIGHTS_FILE} not found (looked in {looked}); nothing is "
        "downloaded here: fetch the file once where there is internet (clean-fid's "
        "cleanfid.downloads_helper.check_download_inception(FOLDER)) and pass --fid-weights FILE"
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


def clean_fid(feats_a: Any, feats_b: Any) -> float:
    """clean-fid's own ``frechet_distance`` of two feature sets (n, d), (m, d) (float64 means and
    ``np.cov`` covariances, as ``cleanfid.fid.fid_from_feats``)."""
    from cleanfid.fid import frechet_distance

    a = np.asarray(torch.as_tensor(feats_a).double())
    b = np.asarray(torch.as_tensor(feats_b).double())
    return float(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
