"""Training-time randomness of image batches, in torch, all drawn from a given generator.

:func:`flip` (``spec.transform``, every training batch of cases 1 and 3): with ``config.flip``
each image is mirrored left-right with probability ½, as the authors' CIFAR-10 pipeline
(``RandomHorizontalFlip``); the coins are drawn for the whole global batch and sliced to this
rank's rows, so W ranks and a resumed run flip exactly what one process flips.

:func:`augment` (``spec.augment``, the two views of case 2), per-sample parameters:

``simclr`` (SimCLR v2 style, for >= 32 px; the authors' ImageNet views): ``RandomResizedCrop``
of the *full* image to ``resolution`` (torchvision's sampler: scale 0.08–1, aspect 3/4–4/3,
10 tries, else the centre crop of the clamped aspect; bilinear resize with antialiasing),
horizontal flip, colour jitter (0.8, 0.8, 0.8, 0.2) with p = 0.8 (RGB; brightness/contrast only
for grayscale), grayscale p = 0.2 (RGB), Gaussian blur on every view (σ in [0.1, 2], kernel
≈ 10% of the side: 23 at 224 px), as docs/method.md §7 case 2. Jitter order is fixed (brightness,
contrast, saturation, hue); torchvision shuffles it. Images of any size (a ragged batch) are
cropped from their own full extent (on the CPU, where the training loop leaves a ragged batch);
the crops then move to the current CUDA device when there is one, for the rest of the view.
``small`` (tiny images such as the 8×8 digits): crop scale 0.7–1 with shifts of up to ~1 px
per 8 px, no flip, brightness/contrast jitter 0.3 with p = 0.8, no blur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import ImageConfig
from .io import fit_batch


def _u(n: int, g: torch.Generator | None, dev: torch.device) -> torch.Tensor:
    """n uniforms from ``g`` (drawn on the generator's device, e.g. training's CPU generators), on ``dev``."""
    return torch.rand(n, generator=g, device=g.device if g is not None else dev).to(dev)


def _rand(n: int, lo: float, hi: float, g: torch.Generator | None, dev: torch.device) -> torch.Tensor:
    return _u(n, g, dev) * (hi - lo) + lo


def _crop_flip(
    x: torch.Tensor, scale: tuple[float, float], flip: bool, g: torch.Generator | None
) -> torch.Tensor:
    """Per-sample random resized crop (+ horizontal flip) with an affine grid. x: (B, C, H, W)."""
    b, dev = x.shape[0], x.device
    area = _rand(b, *scale, g, dev)
    log_r = _rand(b, math.log(3 / 4), math.log(4 / 3), g, dev)
    ratio = torch.exp(log_r)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (_u(b, g, dev) * 2 - 1) * (1 - sw)
    cy = (_u(b, g, dev) * 2 - 1) * (1 - sh)
    sx = sw
    if flip:
        sx = torch.where(_u(b, g, dev) < 0.5, -sw, sw)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _jitter(
    x: torch.Tensor, s: tuple[float, float, float, float], p: float, g: torch.Generator | None
) -> torch.Tensor:
    """Colour jitter on images in [0, 1]: brightness, contrast, saturation, hue (fixed order)."""
    b, dev = x.shape[0], x.device
    on = (_u(b, g, dev) < p).view(b, 1, 1, 1)
    bright = _rand(b, 1 - s[0], 1 + s[0], g, dev).view(b, 1, 1, 1)
    contr = _rand(b, 1 - s[1], 1 + s[1], g, dev).view(b, 1, 1, 1)
    satur = _rand(b, 1 - s[2], 1 + s[2], g, dev).view(b, 1, 1, 1)
    hue = _rand(b, -s[3], s[3], g, dev)
    y = (x * bright).clamp(0, 1)
    lum = (_gray(y) if x.shape[1] == 3 else y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - lum) * contr + lum).clamp(0, 1)
    if x.shape[1] == 3:
        y = ((y - _gray(y)) * satur + _gray(y)).clamp(0, 1)
        y = _hue_rotate(y, hue * 2 * math.pi)
    return torch.where(on, y, x)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB images (B, 3, H, W) by angle (B,) in YIQ space."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)


def blur_kernel_size(side: int) -> int:
    """Odd Gaussian-blur kernel ≈ 10% of the image side, at least 3 (SimCLR: 23 at 224 px)."""
    return max(3, (int(0.1 * side) // 2) * 2 + 1)


def _blur(x: torch.Tensor, p: float, g: torch.Generator | None) -> torch.Tensor:
    """Gaussian blur with per-sample σ ~ U[0.1, 2] (kernel ≈ 10% of the side, odd), applied with prob p."""
    b, c, h, w = x.shape
    dev = x.device
    k = blur_kernel_size(h)
    sigma = _rand(b, 0.1, 2.0, g, dev)
    on = (_u(b, g, dev) < p).view(b, 1, 1, 1)
    r = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    ker = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    ker = (ker / ker.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (B·C, k)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), ker.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), ker.view(b * c, 1, k, 1), groups=b * c)
    return torch.where(on, y.view(b, c, h, w), x)


def flip(
    images: torch.Tensor | list[torch.Tensor],
    config: ImageConfig,
    *,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """``spec.transform``: mirror each image left-right with probability ½ when ``config.flip``.

    Args:
        images: (B, C, H, W), or a ragged batch (list of (C, H, W)).
        generator: source of the coins (global RNG when None).
        rows: ``(start, total)``: these B images are rows [start, start + B) of a global batch of
            ``total``; ``total`` coins are drawn and rows [start, start + B) used.

    Returns:
        the batch in the same form; unchanged (the same object) when ``config.flip`` is False.
    """
    if not config.flip:
        return images
    b = len(images)
    start, total = rows if rows is not None else (0, b)
    if not (0 <= start and start + b <= total):
        raise ValueError(f"rows=(start, total)={rows} does not contain a batch of {b} images")
    if isinstance(images, torch.Tensor):  # coins drawn on the generator's device, used on the batch's
        coins = (_u(total, generator, images.device) < 0.5)[start : start + b]
        return torch.where(coins.view(-1, *([1] * (images.ndim - 1))), images.flip(-1), images)
    coins = (_u(total, generator, torch.device("cpu")) < 0.5)[
        start : start + b
    ]  # a ragged batch is on the CPU
    return [x.flip(-1) if c else x for x, c in zip(images, coins.tolist(), strict=True)]


def resized_crop_box(
    h: int, w: int, scale: tuple[float, float], g: torch.Generator | None
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` from ``g``: (top, left, height, width).

    Up to 10 tries of area ∈ scale·h·w and log-uniform aspect in [3/4, 4/3]; a crop that fits is
    placed uniformly. When none fits: the centre crop of the whole image with its aspect clamped
    to [3/4, 4/3]. The same number of numbers (40) is drawn whatever happens.
    """
    u = torch.rand(10, 4, generator=g, device=g.device if g is not None else None).double().cpu()
    return _crop_box(h, w, scale, u.tolist())


def _crop_box(
    h: int, w: int, scale: tuple[float, float], tries: list[list[float]]
) -> tuple[int, int, int, int]:
    """:func:`resized_crop_box` from its 10 drawn tries (area, ratio, top, left uniforms)."""
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    for area_u, ratio_u, top_u, left_u in tries:
        area = h * w * (scale[0] + (scale[1] - scale[0]) * area_u)
        ratio = math.exp(lo + (hi - lo) * ratio_u)
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(top_u * (h - ch + 1)), int(left_u * (w - cw + 1)), ch, cw
    if w / h < 3 / 4:
        cw, ch = w, int(round(w / (3 / 4)))
    elif w / h > 4 / 3:
        ch, cw = h, int(round(h * 4 / 3))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(
    images: torch.Tensor | list[torch.Tensor],
    side: int,
    scale: tuple[float, float],
    g: torch.Generator | None,
) -> torch.Tensor:
    """Per-image :func:`resized_crop_box` of each image's full extent, resized to side × side
    (bilinear, antialiased): a tensor or ragged batch -> (B, C, side, side) (channels promoted)."""
    items = list(images)
    c = max(x.shape[0] for x in items)
    # every image's 10 tries in one draw (the same numbers as one draw per image on a CPU generator),
    # read back once: on a device generator a draw per image would wait for the device B times
    tries = torch.rand(len(items), 10, 4, generator=g, device=g.device if g is not None else None)
    out = []
    for x, u in zip(items, tries.double().cpu().tolist(), strict=True):
        top, left, ch, cw = _crop_box(int(x.shape[-2]), int(x.shape[-1]), scale, u)
        crop = x.expand(c, -1, -1)[None, :, top : top + ch, left : left + cw].float()
        out.append(
            F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        )
    return torch.cat(out)


def augment(
    images: torch.Tensor | list[torch.Tensor],
    config: ImageConfig,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One random view of every image: (B, C, H, W) or a ragged batch in [-1, 1] -> (B, C, res, res).

    The kind comes from ``config.augment_kind`` ("simclr", "small" or "none"; see the module doc).
    "simclr" crops each image from its full extent; "small" and "none" work on the batch fitted
    to the configured side (:func:`lzn_image.io.fit_batch`). Randomness is drawn from
    ``generator`` (global RNG when None).
    """
    if isinstance(images, torch.Tensor) and images.ndim != 4:
        raise ValueError(
            f"augment expects (B, C, H, W) or a list of (C, H, W), got shape {tuple(images.shape)}"
        )
    kind = config.augment_kind
    dtype = images.dtype if isinstance(images, torch.Tensor) else images[0].dtype
    if kind == "simclr":
        x = (random_resized_crop(images, config.resolution, (0.08, 1.0), generator) + 1) / 2
        if not isinstance(images, torch.Tensor) and torch.cuda.is_available():
            x = x.to(torch.cuda.current_device())  # a ragged batch stays on the CPU in the loop
        flipped = _u(x.shape[0], generator, x.device) < 0.5
        x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x)
        x = _jitter(x, (0.8, 0.8, 0.8, 0.2), 0.8, generator)
        if x.shape[1] == 3:
            gray = _u(x.shape[0], generator, x.device) < 0.2
            x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        x = _blur(x, 1.0, generator)  # case 2 blurs every view
        return (x * 2 - 1).clamp(-1, 1).to(dtype)
    fitted = fit_batch(images, config, channels=max(int(x.shape[0]) for x in images))
    if kind == "none":
        return fitted
    x = (fitted.float() + 1) / 2
    x = _crop_flip(x, (0.7, 1.0), flip=False, g=generator)
    x = _jitter(x, (0.3, 0.3, 0.0, 0.0), 0.8, generator)
    return (x * 2 - 1).clamp(-1, 1).to(dtype)
