"""Image bytes in, image grids out; batch checks shared by the encoder and decoder.

Channel convention: ``decode_sample`` receives only the shard bytes, so it returns the
image in its *own* channel count (grayscale -> (1, H, W), colour -> (3, H, W)).
``collate`` promotes a mixed list to 3 channels, and the encoder and decoder convert a
batch to the configured ``channels`` (1 -> 3 by repetition, 3 -> 1 by ITU-R 601 luma)
with :func:`to_config_channels`.

Sizes: a batch is a tensor (B, C, H, W) when its images share H×W and a *ragged batch*, a list
of (C, H, W) tensors, when they do not (shards of full-size images, ``eval_resize`` set).
:func:`fit_batch` turns either into (B, C, resolution, resolution): images of the configured
side pass unchanged; with ``eval_resize`` every other image gets the evaluation view
(:func:`eval_view`: Resize + CenterCrop, as torchvision's ``Resize(256), CenterCrop(224)``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .config import ImageConfig

_LUMA = (0.299, 0.587, 0.114)
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "La"}


def decode_sample(data: bytes) -> torch.Tensor:
    """Decode PNG/JPEG bytes to a float tensor (C, H, W) in [-1, 1], C = 1 (gray) or 3 (colour).

    Raises:
        ValueError: ``not a valid PNG/JPEG image: ...`` for empty, truncated or non-image bytes.
    """
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"not a valid PNG/JPEG image: expected bytes, got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            img.load()
            mode = "L" if img.mode in _GRAY_MODES else "RGB"
            arr = np.asarray(img.convert(mode), dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"not a valid PNG/JPEG image: {exc} ({len(data)} bytes)") from exc
    x = torch.from_numpy(arr.copy())
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return x / 127.5 - 1.0


def collate(items: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Stack decoded images (C, H, W) into (B, C, H, W); gray items are repeated to RGB if any item is RGB.

    Items of different H×W give a ragged batch: the list of (C, H, W) items (channels promoted
    the same way). Only a config with ``eval_resize`` lets such items through ``validate_item``;
    the encoders, decoder and ``augment`` accept both forms (:func:`fit_batch`).
    """
    import torch

    if not items:
        raise ValueError("cannot collate an empty list of images")
    c = max(x.shape[0] for x in items)
    same = [x.expand(c, -1, -1) if x.shape[0] != c else x for x in items]
    if len({tuple(x.shape[-2:]) for x in items}) > 1:
        return same
    return torch.stack(same)


def as_batch(request: Any) -> Any:
    """``ModalitySpec.as_batch``: one image ``(C, H, W)`` becomes ``(1, C, H, W)``; a batch
    ``(B, C, H, W)`` or a ragged list of images passes unchanged."""
    import torch

    if isinstance(request, torch.Tensor) and request.dim() == 3:
        return request[None]
    return request


def eval_view(image: torch.Tensor, side: int, resize: int) -> torch.Tensor:
    """The evaluation view of an image (C, H, W) -> (C, side, side), or of a batch (B, C, H, W).

    Resize the short edge to ``resize`` (the long edge to ``int(resize · long / short)``,
    bilinear with antialiasing, as torchvision's ``Resize(resize)``), then cut the centre
    ``side`` × ``side`` (``CenterCrop(side)``: offsets ``round((size − side) / 2)``).
    """
    import torch.nn.functional as F

    h, w = (int(v) for v in image.shape[-2:])
    short, long = min(h, w), max(h, w)
    new_long = int(resize * long / short)
    nh, nw = (resize, new_long) if h <= w else (new_long, resize)
    if (nh, nw) != (h, w):
        x = image.float() if image.ndim == 4 else image[None].float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        image = (x if image.ndim == 4 else x[0]).to(image.dtype)
    top, left = int(round((nh - side) / 2.0)), int(round((nw - side) / 2.0))
    return image[..., top : top + side, left : left + side]


def fit_batch(images: Any, config: ImageConfig, channels: int | None = None) -> torch.Tensor:
    """A tensor or ragged batch -> (B, channels, resolution, resolution) (``channels``: the config's).

    Images of the configured side pass unchanged; other sizes need ``config.eval_resize``
    and get :func:`eval_view`.

    Raises:
        ValueError: a size other than ``resolution`` without ``eval_resize``, a batch that is
            neither a 4-D tensor nor a list of 3-D tensors, or an unsupported channel count.
    """
    import torch

    side, resize = config.resolution, config.eval_resize
    channels = channels or config.channels
    if isinstance(images, (list, tuple)):
        if not images or not all(isinstance(x, torch.Tensor) and x.ndim == 3 for x in images):
            raise ValueError("a ragged image batch must be a non-empty list of (C, H, W) tensors")
        if resize is None:
            sizes = sorted({tuple(x.shape[-2:]) for x in images})
            raise ValueError(
                f"images of sizes {sizes[:4]} in one batch, the config expects {side}x{side}; resize "
                "them in the shards or set eval_resize (images of any size, evaluated at Resize + CenterCrop)"
            )
        c = max(x.shape[0] for x in images)
        images = torch.stack(
            [
                eval_view(x.expand(c, -1, -1), side, resize)
                if x.shape[-2:] != (side, side)
                else x.expand(c, -1, -1)
                for x in images
            ]
        )
    elif (
        resize is not None
        and isinstance(images, torch.Tensor)
        and images.ndim == 4
        and tuple(images.shape[-2:]) != (side, side)
    ):
        images = eval_view(images, side, resize)  # one size for the whole batch: one interpolation
    return to_config_channels(images, channels, side)


def to_config_channels(x: torch.Tensor, channels: int, resolution: int) -> torch.Tensor:
    """Check an image batch and convert its channels: x (B, C', H, W) -> (B, channels, H, W).

    Raises:
        ValueError: when x is not 4-D, has a channel count other than 1 or 3, or a side other than
            ``resolution``.
    """
    if x.ndim != 4:
        raise ValueError(f"image batch must be (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        raise ValueError(
            f"image batch has H×W = {x.shape[-2]}×{x.shape[-1]}, the config expects {resolution}×{resolution}"
        )
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    raise ValueError(f"image batch has {x.shape[1]} channels, expected 1 or 3 (config: {channels})")


def save_grid(
    images: torch.Tensor,
    path: str | Path,
    *,
    nrow: int | None = None,
    upscale: int | None = None,
    padding: int = 2,
) -> Path:
    """Write a PNG grid of images (B, C, H, W) in [-1, 1] (values outside are clipped).

    Args:
        images: the batch, C = 1 or 3.
        path: output file; parent folders are created.
        nrow: images per row (default ⌈√B⌉).
        upscale: integer nearest-neighbour magnification (default: enough to make tiles >= 64 px,
            so 8×8 digits are visible).
        padding: pixels between tiles (before upscaling), filled with white.

    Returns:
        The path written.
    """
    import numpy as np
    import torch
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"save_grid expects a non-empty (B, 1|3, H, W) batch, got shape {tuple(images.shape)}"
        )
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    upscale = upscale or max(1, math.ceil(64 / max(h, w)))
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.full(
        (c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), 255, dtype=torch.uint8
    )
    for i in range(b):
        r, q = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    grid = grid.repeat_interleave(upscale, dim=1).repeat_interleave(upscale, dim=2)
    arr = grid[0].numpy() if c == 1 else np.ascontiguousarray(grid.permute(1, 2, 0).numpy())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L" if c == 1 else "RGB").save(path, format="PNG")
    return path
