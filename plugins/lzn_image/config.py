"""Configuration of the image modality (encoder U-Net, rectified-flow decoder, augmentation).

Sizes come from a named ``preset`` whose values fill every field the user did not
set explicitly, so ``{preset: cifar, dropout: 0.1}`` is the paper's CIFAR-10 model
with a different dropout. Without a preset the field defaults are the "digits" size.

Presets:

* ``tiny``: 8×8 grayscale, nf 16, one level pair, for unit tests (a few seconds on CPU).
* ``digits``: 8×8 grayscale (scikit-learn's bundled digits), nf 32, ch_mult (1, 2),
  trains on 2 CPU cores in minutes.
* ``small32``: 32×32 RGB, nf 32, ch_mult (1, 2, 2), attention at 8: smoke runs of CIFAR recipes.
* ``cifar``: the paper's CIFAR-10 NCSN++ size (nf 128, ch_mult (1, 2, 2, 2), 4 res blocks,
  attention at 16, dropout 0.15, latent blocks 20 channels / 200 hidden): ~61.9M decoder
  and ~49.8M encoder parameters at q = 200.

Encoders: ``encoder: unet`` (the default, cases 1/3) or ``resnet50`` / ``resnet18``
(case 2: ResNet with GroupNorm + projection head, :mod:`lzn_image.resnet`; the U-Net size
fields then only shape the decoder). ``decoder: false`` builds no rectified-flow decoder
(a representation-only recipe with no ``generate`` task for this modality).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PresetName = Literal["tiny", "digits", "small32", "cifar"]
EncoderName = Literal["unet", "resnet50", "resnet18"]

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        resolution=8,
        channels=1,
        nf=16,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        latent_channels=4,
        latent_hidden=32,
    ),
    "digits": dict(
        resolution=8,
        channels=1,
        nf=32,
        ch_mult=(1, 2),
        num_res_blocks=2,
        attn_resolutions=(),
        dropout=0.0,
        latent_channels=8,
        latent_hidden=128,
    ),
    "small32": dict(
        resolution=32,
        channels=3,
        nf=32,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        dropout=0.1,
        latent_channels=8,
        latent_hidden=128,
    ),
    "cifar": dict(
        resolution=32,
        channels=3,
        nf=128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=4,
        attn_resolutions=(16,),
        dropout=0.15,
        latent_channels=20,
        latent_hidden=200,
    ),
}


class ImageConfig(BaseModel):
    """The image plugin's config (``modalities.<name>.config`` in a recipe).

    Attributes:
        preset: named size whose values fill the fields not given explicitly.
        resolution: image side H = W (a multiple of 2**(len(ch_mult) - 1)).
        channels: C, 1 (grayscale) or 3 (RGB); batches with the other count are converted.
        nf: base width of the U-Nets.
        ch_mult: width multiplier per resolution level (one level per entry).
        num_res_blocks: ResNet blocks per level on the down path (the up path has one more).
        attn_resolutions: resolutions (sides) that get self-attention.
        dropout: dropout inside the ResNet blocks.
        latent_channels: channels of the encoder's 1×1 conv in every latent block (paper: 20).
        latent_hidden: hidden width of the latent block MLP (paper: 200).
        latent_resolutions: sides whose feature maps get a latent block (None: all; the
            paper's 256² models use (64, 32, 16, 8, 4)).
        time_embedding: "positional" (sinusoidal of σ = 999·t, dim nf) or "fourier" (random
            features of log σ, dim 2nf; the official 256² models).
        fourier_scale: scale of the random Fourier frequencies.
        skip_rescale: divide residual sums by √2 (NCSN++).
        fir: resample with the FIR kernel (1, 3, 3, 1) instead of nearest / 2×2 average (NCSN++ 256²).
        progressive: NCSN++ progressive input skip (the resampled image, 1×1-conv'ed, added after
            each down-sampling block) and output skip (per up level GroupNorm, SiLU, conv3x3 to C,
            summed over levels: the output); the official 256² models.
        scale_by_sigma: divide the decoder's output by σ = 999·t (the official 256² configurations).
        rf_t_min: smallest rectified-flow time; training draws t ~ U[rf_t_min, 1].
        sample_steps: default number of Euler steps for sample/invert.
        sample_method: default ODE solver of ``sample`` ("euler" or "rk45").
        rtol: relative tolerance of the RK45 (Dormand–Prince) sampler (paper: 1e-5).
        atol: absolute tolerance of the RK45 sampler (paper: 1e-5).
        use_latent: False makes the decoder ignore z (it sees zeros): the plain rectified-flow
            baseline with the same network (recipes/digits_rf_baseline.yaml).
        augment: view augmentation for two-view alignment; "auto" picks "simclr" at
            resolution >= 32 and "small" (small shifts and crops, no flip) below.
        flip: mirror every training image left-right with probability ½ (``spec.transform``,
            seeded per global row; the authors' CIFAR-10 pipeline). Off by default: the digits
            are not mirror-symmetric.
        eval_resize: accept images of any size (shards of full-size images, e.g. ImageNet):
            two-view training views are random resized crops of the full image (``augment``)
            and every other batch is encoded as Resize(eval_resize) + CenterCrop(resolution)
            (the standard evaluation view, 256 -> 224 on ImageNet). None: every image must be
            ``resolution`` × ``resolution``.
        encoder: "unet" (U-Net down path + latent blocks) or "resnet50" / "resnet18"
            (GroupNorm ResNet + projection head, paper case 2).
        proj_hidden: hidden width of the ResNet encoders' projection head (paper: 2048).
        checkpoint: activation checkpointing: recompute in backward the ResNet encoders' 4 stages,
            or every ResNet and attention block of the U-Nets (encoder and decoder), keeping only
            their inputs (memory for about one more forward pass).
        decoder: False builds no decoder (its ``loss``/``sample`` raise ``ContractError``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: PresetName | None = None
    resolution: int = Field(8, ge=4)
    channels: Literal[1, 3] = 1
    nf: int = Field(32, ge=4)
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = Field(2, ge=1)
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    latent_channels: int = Field(8, ge=1)
    latent_hidden: int = Field(128, ge=1)
    latent_resolutions: tuple[int, ...] | None = None
    time_embedding: Literal["positional", "fourier"] = "positional"
    fourier_scale: float = Field(16.0, gt=0.0)
    skip_rescale: bool = True
    fir: bool = False
    progressive: bool = False
    scale_by_sigma: bool = False
    rf_t_min: float = Field(1e-3, ge=0.0, lt=1.0)
    sample_steps: int = Field(50, ge=1)
    sample_method: Literal["euler", "rk45"] = "euler"
    rtol: float = Field(1e-5, gt=0.0)
    atol: float = Field(1e-5, gt=0.0)
    augment: Literal["auto", "simclr", "small", "none"] = "auto"
    flip: bool = False
    eval_resize: int | None = Field(None, ge=1)
    use_latent: bool = True
    encoder: EncoderName = "unet"
    proj_hidden: int = Field(2048, ge=1)
    checkpoint: bool = False
    decoder: bool = True

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name in PRESETS:  # an unknown name is reported by the Literal check
                return {**PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _check_sizes(self) -> ImageConfig:
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        levels = len(self.ch_mult)
        if self.resolution % 2 ** (levels - 1):
            raise ValueError(
                f"resolution {self.resolution} must be divisible by 2**(len(ch_mult)-1) = {2 ** (levels - 1)}"
            )
        sides = self.sides
        bad = [r for r in self.attn_resolutions if r not in sides]
        if bad:
            raise ValueError(f"attn_resolutions {bad} are not among the U-Net resolutions {sides}")
        bad = [r for r in self.latent_resolutions or () if r not in sides]
        if bad or self.latent_resolutions == ():
            raise ValueError(
                f"latent_resolutions {list(self.latent_resolutions or ())} must be a non-empty "
                f"subset of the U-Net resolutions {sides}"
            )
        if self.nf % 4:
            raise ValueError(f"nf must be a multiple of 4 (GroupNorm groups), got {self.nf}")
        if self.eval_resize is not None and self.eval_resize < self.resolution:
            raise ValueError(
                f"eval_resize {self.eval_resize} must be >= resolution {self.resolution} "
                "(the short side is resized to it, then the centre resolution x resolution is cropped)"
            )
        return self

    @property
    def sides(self) -> list[int]:
        """Feature-map sides of the levels: [resolution, resolution/2, ...]."""
        return [self.resolution // 2**i for i in range(len(self.ch_mult))]

    @property
    def augment_kind(self) -> str:
        """The augmentation actually used ("simclr", "small" or "none")."""
        if self.augment == "auto":
            return "simclr" if self.resolution >= 32 else "small"
        return self.augment
