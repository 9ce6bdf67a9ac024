"""U-Net building blocks shared by the image encoder and the rectified-flow decoder.

An NCSN++-style U-Net (BigGAN ResNet blocks, GroupNorm, SiLU, skip connections,
self-attention at configured resolutions, skip sums rescaled by 1/√2), written
from the architecture description of Song et al. / Liu et al. (rectified flow):

* down path: conv3x3(C → nf); per level ``num_res_blocks`` ResNet blocks (+ attention),
  then a down-sampling ResNet block (all levels but the last);
* middle: ResNet, attention, ResNet;
* up path (decoder only): per level ``num_res_blocks + 1`` ResNet blocks reading the
  concatenated skip, attention, then an up-sampling ResNet block; GroupNorm, SiLU,
  conv3x3(→ C).

The 256² NCSN++ options (``fir``, ``progressive`` in :class:`ImageConfig`):

* ``fir``: resampling (in the up/down ResNet blocks and the progressive paths) filters with the
  separable FIR kernel (1, 3, 3, 1)/8 instead of nearest-neighbour / 2×2 averaging;
* ``progressive``: an input pyramid (the image, resampled down once per level; after each
  down-sampling block a 1×1 conv of it is added to the feature map) and an output pyramid
  (after each up level GroupNorm, SiLU, conv3x3(→ C) of the feature map is added to the
  up-sampled pyramid; the pyramid is the output).

Every ResNet block optionally receives ``temb: (B, 4nf)``. Feature maps: ``(B, ch, s, s)``.

Initialisation as NCSN++ (their ``default_init``, :func:`variance_scaling_`): every conv and
dense weight U(±√(3·scale/fan_avg)) with a zero bias, scale 1, except the attention's q/k/v
maps (scale 0.1, NCSN++'s ``NIN`` default) and the last layer of every residual branch (the
ResNet blocks' second conv, the attention output, the output conv / pyramid convs), whose
scale is "0" = 1e-10; GroupNorm weight 1, bias 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ImageConfig

_SQRT2 = math.sqrt(2.0)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(channels // 4, 32) groups (NCSN++)."""
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


def _fan_avg(weight: torch.Tensor) -> float:
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    return (weight.shape[0] + weight.shape[1]) * receptive / 2


def variance_scaling_(
    weight: torch.Tensor, scale: float = 1.0, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """NCSN++'s ``default_init``, drawn anew in place: U(−√(3v), √(3v)) with v = scale / fan_avg.

    fan_avg = (fan_in + fan_out) / 2 with fan_in = in · k·k and fan_out = out · k·k for a weight
    (out, in, k, k) (k = 1 for a Linear (out, in)); ``scale = 0`` means 1e-10 (their "zero" init
    of the residual branches' last layers and of the output convolution).
    """
    scale = 1e-10 if scale == 0 else scale
    bound = math.sqrt(3.0 * scale / _fan_avg(weight))
    with torch.no_grad():
        return weight.uniform_(-bound, bound, generator=generator)


def ncsnpp_init(module: nn.Conv2d | nn.Linear, scale: float = 1.0, *, parts: int = 1) -> nn.Module:
    """NCSN++'s conv1x1 / conv3x3 / Dense initialisation of a freshly built layer: the weight
    ~ U(±√(3s/fan_avg)) (:func:`variance_scaling_`; ``parts``: of each of that many equal row
    blocks, e.g. 3 for a fused q/k/v map), the bias 0.

    The weight is torch's default draw U(±1/√fan_in) rescaled to that bound (a uniform variable
    times a constant: the same distribution as a fresh draw), so building the U-Net consumes the
    global RNG exactly as torch's defaults do and the other modules' initial weights (e.g. a label
    modality's anchors built after it) do not move.
    """
    scale = 1e-10 if scale == 0 else scale
    w = module.weight
    fan_in = w[0].numel()  # torch's default bound: kaiming_uniform_(a=√5) -> 1/√fan_in
    with torch.no_grad():
        for block in w.chunk(parts):
            block.mul_(math.sqrt(3.0 * scale / _fan_avg(block)) * math.sqrt(fan_in))
        if module.bias is not None:
            module.bias.zero_()
    return module


_FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def _fir(x: torch.Tensor, direction: str) -> torch.Tensor:
    """Resample (B, C, s, s) by 2 with the FIR kernel k = outer(taps, taps) / Σ (StyleGAN2 / NCSN++).

    "down": pad 1 on every side, convolve with k, keep every second pixel -> (B, C, s/2, s/2).
    "up": put x on the even pixels of a zero (2s, 2s) map, pad (2, 1), convolve with 4k -> (B, C, 2s, 2s).
    """
    taps = x.new_tensor(_FIR_TAPS)
    k = torch.outer(taps, taps)
    k = k / k.sum()
    b, c, hh, ww = x.shape
    if direction == "down":
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), k.expand(c, 1, 4, 4), stride=2, groups=c)
    z = x.new_zeros(b, c, 2 * hh, 2 * ww)
    z[:, :, ::2, ::2] = x
    return F.conv2d(F.pad(z, (2, 1, 2, 1)), (4 * k).expand(c, 1, 4, 4), groups=c)


def resample(x: torch.Tensor, direction: str | None, *, fir: bool = False) -> torch.Tensor:
    """x: (B, C, s, s) -> (B, C, 2s, 2s) ("up") or (B, C, s/2, s/2) ("down"); None: x unchanged.

    Without ``fir``: nearest-neighbour up-sampling and 2×2 average pooling.
    """
    if direction is None:
        return x
    if fir:
        return _fir(x, direction)
    if direction == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """BigGAN-style ResNet block: GN, act, (resample), conv, +Dense(temb), GN, act, dropout, conv.

    Args:
        in_ch: input channels.
        out_ch: output channels (default ``in_ch``).
        temb_dim: size of the time/condition embedding, or None for a block without it (encoder).
        dropout: dropout probability before the second conv.
        resample: "up" (nearest ×2), "down" (average pool /2) or None.
        skip_rescale: divide the residual sum by √2.
        fir: resample with the FIR kernel (:func:`resample`).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        temb_dim: int | None = None,
        dropout: float = 0.0,
        resample: str | None = None,
        skip_rescale: bool = True,
        fir: bool = False,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.resample = resample
        self.fir = fir
        self.skip_rescale = skip_rescale
        self.norm0 = group_norm(in_ch)
        self.conv0 = ncsnpp_init(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.dense = ncsnpp_init(nn.Linear(temb_dim, out_ch)) if temb_dim else None
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = ncsnpp_init(nn.Conv2d(out_ch, out_ch, 3, padding=1), scale=0.0)
        needs_skip = in_ch != out_ch or resample is not None
        self.skip = ncsnpp_init(nn.Conv2d(in_ch, out_ch, 1)) if needs_skip else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return resample(x, self.resample, fir=self.fir)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, in_ch, s, s), temb: (B, temb_dim) or None -> (B, out_ch, s', s')."""
        h = F.silu(self.norm0(x))
        h = self.conv0(self._resample(h))
        x = self._resample(x)
        if self.dense is not None and temb is not None:
            h = h + self.dense(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        out = x + h
        return out / _SQRT2 if self.skip_rescale else out


class AttnBlock(nn.Module):
    """Single-head self-attention over the s·s positions of a (B, ch, s, s) map, residual."""

    def __init__(self, channels: int, *, skip_rescale: bool = True) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = ncsnpp_init(nn.Linear(channels, 3 * channels), 0.1, parts=3)  # NCSN++'s NIN_0..2
        self.out = ncsnpp_init(nn.Linear(channels, channels), scale=0.0)  # NIN_3
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ch, s, s) -> (B, ch, s, s)."""
        b, c, hh, ww = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, s·s, ch)
        q, k, v = self.qkv(h).unflatten(-1, (3, 1, c)).permute(2, 0, 3, 1, 4)  # each (B, 1 head, s·s, ch)
        # 4-D (B, heads, L, d): the layout CUDA's fused attention kernels take (3-D inputs fall
        # back to materialising the (B, L, L) scores)
        h = F.scaled_dot_product_attention(q, k, v)[:, 0]
        h = self.out(h).transpose(1, 2).reshape(b, c, hh, ww)
        out = x + h
        return out / _SQRT2 if self.skip_rescale else out


def _run(module: nn.Module, recompute: bool, *args: torch.Tensor | None) -> torch.Tensor:
    """``module(*args)``, recomputed in backward (activation checkpointing) when ``recompute``, the
    module trains and a graph is being built; dropout draws the same masks when recomputed."""
    if recompute and module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class DownPath(nn.Module):
    """conv_in, the down levels and the middle of the U-Net.

    ``forward(x, temb) -> (hs, h)``: ``hs`` are the skip feature maps (conv_in output,
    every ResNet(+attention) block, every down-sampling block, with the input pyramid's
    1×1 conv added when ``progressive``) and ``h`` the middle output. With ``cfg.checkpoint``
    every ResNet and attention block is recomputed in backward instead of keeping its
    activations (only the block inputs are kept).
    """

    def __init__(self, cfg: ImageConfig, temb_dim: int | None) -> None:
        super().__init__()
        self.recompute = cfg.checkpoint
        block = dict(temb_dim=temb_dim, dropout=cfg.dropout, skip_rescale=cfg.skip_rescale, fir=cfg.fir)
        self.fir = cfg.fir
        self.conv_in = ncsnpp_init(nn.Conv2d(cfg.channels, cfg.nf, 3, padding=1))
        # progressive input: a 1×1 conv (C -> ch) of the resampled image after each down block
        self.combine = nn.ModuleList() if cfg.progressive else None
        self.layers = nn.ModuleList()  # (ResBlock, AttnBlock | None) per skip, in order
        self.skip_channels = [cfg.nf]
        self.skip_sides = [cfg.resolution]
        ch = cfg.nf
        for level, (mult, side) in enumerate(zip(cfg.ch_mult, cfg.sides, strict=True)):
            for _ in range(cfg.num_res_blocks):
                attn = (
                    AttnBlock(cfg.nf * mult, skip_rescale=cfg.skip_rescale)
                    if side in cfg.attn_resolutions
                    else None
                )
                self.layers.append(nn.ModuleList([ResBlock(ch, cfg.nf * mult, **block), attn]))
                ch = cfg.nf * mult
                self.skip_channels.append(ch)
                self.skip_sides.append(side)
            if level != len(cfg.ch_mult) - 1:
                self.layers.append(nn.ModuleList([ResBlock(ch, resample="down", **block), None]))
                if self.combine is not None:
                    self.combine.append(ncsnpp_init(nn.Conv2d(cfg.channels, ch, 1)))
                self.skip_channels.append(ch)
                self.skip_sides.append(side // 2)
        self.mid = nn.ModuleList(
            [ResBlock(ch, **block), AttnBlock(ch, skip_rescale=cfg.skip_rescale), ResBlock(ch, **block)]
        )
        self.out_channels = ch

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x: (B, C, H, W), temb: (B, 4nf) or None -> (skips, middle (B, ch, s_min, s_min))."""
        hs = [self.conv_in(x)]
        pyramid, level = x, 0
        for res, attn in self.layers:
            h = _run(res, self.recompute, hs[-1], temb)
            if attn is not None:
                h = _run(attn, self.recompute, h)
            if self.combine is not None and res.resample == "down":
                pyramid = resample(pyramid, "down", fir=self.fir)
                h = self.combine[level](pyramid) + h
                level += 1
            hs.append(h)
        h = _run(self.mid[0], self.recompute, hs[-1], temb)
        h = _run(self.mid[2], self.recompute, _run(self.mid[1], self.recompute, h), temb)
        return hs, h


class UpPath(nn.Module):
    """The decoder half: reads the middle output and the skips of :class:`DownPath`, returns (B, C, H, W).

    ``cfg.checkpoint`` recomputes its ResNet and attention blocks in backward, as in :class:`DownPath`.
    """

    def __init__(self, cfg: ImageConfig, down: DownPath, temb_dim: int) -> None:
        super().__init__()
        self.recompute = cfg.checkpoint
        block = dict(temb_dim=temb_dim, dropout=cfg.dropout, skip_rescale=cfg.skip_rescale, fir=cfg.fir)
        self.fir = cfg.fir
        skips = list(down.skip_channels)
        ch = down.out_channels
        self.levels = nn.ModuleList()
        # progressive output: per level GroupNorm, SiLU, conv3x3 (ch -> C), summed into the pyramid
        self.pyramid = nn.ModuleList() if cfg.progressive else None
        for level in reversed(range(len(cfg.ch_mult))):
            out_ch = cfg.nf * cfg.ch_mult[level]
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), out_ch, **block))
                ch = out_ch
            side = cfg.sides[level]
            attn = AttnBlock(ch, skip_rescale=cfg.skip_rescale) if side in cfg.attn_resolutions else None
            up = ResBlock(ch, resample="up", **block) if level != 0 else None
            self.levels.append(nn.ModuleList([blocks, attn, up]))
            if self.pyramid is not None:
                conv = ncsnpp_init(nn.Conv2d(ch, cfg.channels, 3, padding=1), scale=0.0)
                self.pyramid.append(nn.Sequential(group_norm(ch), nn.SiLU(), conv))
        assert not skips, "U-Net skip bookkeeping is inconsistent"
        if self.pyramid is None:
            self.norm_out = group_norm(ch)
            self.conv_out = ncsnpp_init(nn.Conv2d(ch, cfg.channels, 3, padding=1), scale=0.0)

    def forward(self, h: torch.Tensor, hs: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        """h: middle (B, ch, s, s); hs: skips (consumed from the end); temb: (B, 4nf) -> (B, C, H, W)."""
        hs = list(hs)
        pyramid: torch.Tensor | None = None
        for i, (blocks, attn, up) in enumerate(self.levels):
            for res in blocks:
                h = _run(res, self.recompute, torch.cat([h, hs.pop()], dim=1), temb)
            if attn is not None:
                h = _run(attn, self.recompute, h)
            if self.pyramid is not None:
                out = self.pyramid[i](h)
                pyramid = out if pyramid is None else resample(pyramid, "up", fir=self.fir) + out
            if up is not None:
                h = _run(up, self.recompute, h, temb)
        if pyramid is not None:
            return pyramid
        return self.conv_out(F.silu(self.norm_out(h)))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t: (B,) -> (B, dim) (sin half, cos half), in float32.

    Frequencies exp(−k·log(max_period)/(half − 1)), k = 0..half−1, rounded as the NCSN++ code
    does (one float32 product per k): at t ≈ 999 another rounding order moves the embedding by ~1e-4.
    """
    half = dim // 2
    step = math.log(max_period) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -step)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
