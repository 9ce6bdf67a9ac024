"""The image decoder's :class:`~lzn_core.modality.SampleJudge`: what generated images are worth.

* class-conditional samples (``classes`` given): ``class_consistency``, the share of the samples
  generated for class k that an RBF SVC fitted on the real images' pixels (at most 2000 of them)
  calls k;
* samples drawn from the prior (``classes`` None): FID and KID against the real training images,
  on the features the ``fid`` option names (:mod:`lzn_image.features`): ``clean-fid`` (the paper's
  clean-fid column; needs ``lzn[fid]`` and the Inception weights), ``digits`` (a small
  classifier fitted on the real images, for images too small for Inception), ``none``, or
  ``auto`` (clean-fid when its weights are found, else ``digits``). The result names the features
  (``fid_features``), the counts, and the FID of the held-out real images against the training
  ones (``fid_real_test_vs_train``: what "as good as real" reads).

Options (``lzn eval --judge MODALITY.KEY=VALUE``): ``fid`` (one of :data:`FID_CHOICES`) and
``fid_weights`` (clean-fid's ``inception-2015-12-05.pt`` or its folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lzn_core.errors import LZNError
from lzn_core.eval.metrics import frechet_distance, kernel_inception_distance

from .config import ImageConfig
from .features import CLEAN_FID, DIGIT_FEATURES, CleanFIDFeatures, digit_features
from .io import to_config_channels

FID_CHOICES = ("auto", CLEAN_FID, "digits", "none")
"""Values of the ``fid`` option."""
OPTIONS = ("fid", "fid_weights")
"""The options this judge reads."""
SVC_ITEMS = 2000
"""Real images the class-consistency classifier is fitted on (at most)."""


def judge_images(
    config: ImageConfig,
    samples: torch.Tensor,
    classes: torch.Tensor | None,
    real: torch.Tensor,
    real_classes: torch.Tensor | None,
    *,
    held_out: torch.Tensor | None = None,
    options: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``SampleJudge.judge_samples`` of the image decoder (see the module doc).

    Raises:
        ValueError: an option this judge does not read, or an unknown ``fid`` value.
        LZNError: ``fid=clean-fid`` without clean-fid or its weights.
    """
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"image judge: unknown option(s) {', '.join(unknown)}; it reads {', '.join(OPTIONS)}"
        )
    fid = opts.get("fid", "auto")
    if fid not in FID_CHOICES:
        raise ValueError(f"image judge: unknown fid {fid!r}; choose one of {', '.join(FID_CHOICES)}")
    if classes is not None:
        if real_classes is None:
            return {}
        return {"class_consistency": class_consistency(config, samples, classes, real, real_classes)}
    return fid_kid(samples, real, real_classes, held_out, fid=fid, weights=opts.get("fid_weights"))


def class_consistency(
    config: ImageConfig,
    samples: torch.Tensor,
    classes: torch.Tensor,
    real: torch.Tensor,
    real_classes: torch.Tensor,
) -> float:
    """Share of ``samples`` generated for ``classes`` that an RBF SVC fitted on the real images'
    pixels (the first :data:`SVC_ITEMS`) assigns to their class."""
    from sklearn.svm import SVC  # scikit-learn only when samples are judged

    x = to_config_channels(real.float(), config.channels, config.resolution)[:SVC_ITEMS]
    svc = SVC(gamma="scale", C=10.0).fit(x.flatten(1).cpu().numpy(), real_classes[:SVC_ITEMS].cpu().numpy())
    pred = svc.predict(samples.float().flatten(1).cpu().numpy())
    return float((torch.as_tensor(pred) == classes.cpu()).float().mean())


def _extractor(fid: str, weights: str | None, real: torch.Tensor, labels: Any) -> tuple[Any, str, str | None]:
    """(extractor, its name, why there is none) for the ``fid`` option."""
    if fid in (CLEAN_FID, "auto"):
        try:
            return CleanFIDFeatures(weights), CLEAN_FID, None
        except LZNError as exc:
            if fid == CLEAN_FID:
                raise
            why = str(exc)
    else:
        why = "fid: none" if fid == "none" else "no labels to fit the classifier features on"
    if fid in ("digits", "auto") and labels is not None:
        try:
            return digit_features(real, labels, seed=0), DIGIT_FEATURES, None
        except ValueError as exc:  # too few classes or images to fit the classifier on
            if fid == "digits":
                raise
            why = f"{why}; and the classifier features: {exc}"
    return None, "", why


def fid_kid(
    samples: torch.Tensor,
    real: torch.Tensor,
    real_classes: torch.Tensor | None,
    held_out: torch.Tensor | None,
    *,
    fid: str = "auto",
    weights: str | None = None,
) -> dict[str, Any]:
    """FID / KID of ``samples`` against ``real`` (and of ``held_out`` against ``real``), or
    ``{"fid_skipped": why}`` when there are no features to compute them on."""
    if fid == "none":
        return {}
    extractor, name, why = _extractor(fid, weights, real, real_classes)
    if extractor is None:
        return {"fid_skipped": why}
    f_real, f_fake = extractor(real), extractor(samples)
    kid, kid_std = kernel_inception_distance(
        f_real, f_fake, subsets=20, subset_size=min(1000, len(samples), len(real))
    )
    out: dict[str, Any] = {
        "fid": frechet_distance(f_real, f_fake),
        "kid": kid,
        "kid_std": kid_std,
        "fid_features": name,
    }
    if held_out is not None:
        out["fid_real_test_vs_train"] = frechet_distance(f_real, extractor(held_out))
    out.update(fid_samples=len(samples), fid_real=len(real))
    return out
