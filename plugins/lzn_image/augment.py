"""Random views of an image batch for two-view alignment (case 2), in torch, per-sample parameters.

``simclr`` (SimCLR v2 style, for >= 32 px): random resized crop (scale 0.08–1, aspect 3/4–4/3),
horizontal flip, colour jitter (0.8, 0.8, 0.8, 0.2) with p = 0.8 (RGB; brightness/contrast only
for grayscale), grayscale p = 0.2 (RGB), Gaussian blur on every view (σ in [0.1, 2], kernel
≈ 10% of the side: 23 at 224 px), as PAPER.md §4 case 2. Jitter order is fixed (brightness,
contrast, saturation, hue); torchvision shuffles it.
``small`` (tiny images such as the 8×8 digits): crop scale 0.7–1 with shifts of up to ~1 px
per 8 px, no flip, brightness/contrast jitter 0.3 with p = 0.8, no blur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import ImageConfig


def _rand(n: int, lo: float, hi: float, g: torch.Generator | None, dev: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=dev) * (hi - lo) + lo


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
    cx = (torch.rand(b, generator=g, device=dev) * 2 - 1) * (1 - sw)
    cy = (torch.rand(b, generator=g, device=dev) * 2 - 1) * (1 - sh)
    sx = sw
    if flip:
        sx = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -sw, sw)
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
    on = (torch.rand(b, generator=g, device=dev) < p).view(b, 1, 1, 1)
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
    on = (torch.rand(b, generator=g, device=dev) < p).view(b, 1, 1, 1)
    r = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    ker = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    ker = (ker / ker.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (B·C, k)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), ker.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), ker.view(b * c, 1, k, 1), groups=b * c)
    return torch.where(on, y.view(b, c, h, w), x)


def augment(
    images: torch.Tensor, config: ImageConfig, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random view of every image: (B, C, H, W) in [-1, 1] -> (B, C, H, W) in [-1, 1].

    The kind comes from ``config.augment_kind`` ("simclr", "small" or "none"; see the module doc).
    Randomness is drawn from ``generator`` (global RNG when None).
    """
    if images.ndim != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {tuple(images.shape)}")
    kind = config.augment_kind
    if kind == "none":
        return images
    x = (images.float() + 1) / 2
    if kind == "small":
        x = _crop_flip(x, (0.7, 1.0), flip=False, g=generator)
        x = _jitter(x, (0.3, 0.3, 0.0, 0.0), 0.8, generator)
    else:
        x = _crop_flip(x, (0.08, 1.0), flip=True, g=generator)
        x = _jitter(x, (0.8, 0.8, 0.8, 0.2), 0.8, generator)
        if x.shape[1] == 3:
            gray = (torch.rand(x.shape[0], generator=generator, device=x.device) < 0.2).view(-1, 1, 1, 1)
            x = torch.where(gray, _gray(x).expand_as(x), x)
        x = _blur(x, 1.0, generator)  # case 2 blurs every view
    return (x * 2 - 1).clamp(-1, 1).to(images.dtype)
