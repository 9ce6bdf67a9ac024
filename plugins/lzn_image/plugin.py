"""The ``lzn_register_modalities`` hook of the image modality (entry point ``image``).

Importing this module imports neither torch nor the networks: the builders import
them on first use, so ``lzn plugins`` stays fast.
"""

from __future__ import annotations

import io as _io
from collections.abc import Callable
from typing import Any

from lzn_core.hookspecs import hookimpl
from lzn_core.modality import ModalitySpec

from .config import ImageConfig
from .io import as_batch, collate, decode_sample


def build_encoder(config: ImageConfig, latent_dim: int) -> Any:
    """``ModalitySpec.build_encoder``: images -> (B, q) anchors, chosen by ``config.encoder``.

    "unet": :class:`lzn_image.encoder.ImageEncoder`; "resnet50" / "resnet18":
    :class:`lzn_image.resnet.ResNetEncoder` (GroupNorm ResNet + projection head, case 2).
    """
    if config.encoder == "unet":
        from .encoder import ImageEncoder

        return ImageEncoder(config, latent_dim)
    from .resnet import ResNetEncoder

    return ResNetEncoder(config, latent_dim)


def build_decoder(config: ImageConfig, latent_dim: int, condition_dim: int = 0) -> Any:
    """``ModalitySpec.build_decoder``: an :class:`lzn_image.decoder.ImageDecoder` (rectified flow,
    conditioned on a vector of ``condition_dim`` when a generate task says so), or a
    parameter-free :class:`lzn_image.absent.AbsentDecoder` when ``config.decoder`` is False."""
    if not config.decoder:
        from .absent import AbsentDecoder

        return AbsentDecoder()
    from .decoder import ImageDecoder

    return ImageDecoder(config, latent_dim, condition_dim)


def validate_image(image: Any, config: ImageConfig) -> None:
    """``ModalitySpec.validate_item``: a decoded image must have the configured side, unless the
    config takes images of any size (``eval_resize``: full-size shards such as ImageNet).

    Raises:
        ValueError: an image of another H×W (the loader skips and counts it; resize when
            writing the shards, or set ``eval_resize``).
    """
    side = config.resolution
    if config.eval_resize is None and tuple(image.shape[-2:]) != (side, side):
        raise ValueError(
            f"image: {image.shape[-2]}x{image.shape[-1]} image, the config expects {side}x{side}"
        )


def _augment(batch: Any, config: ImageConfig, *, generator: Any = None) -> Any:
    from .augment import augment

    return augment(batch, config, generator=generator)


def _transform(batch: Any, config: ImageConfig, *, generator: Any = None, rows: Any = None) -> Any:
    from .augment import flip

    return flip(batch, config, generator=generator, rows=rows)


def example_items(n: int) -> list[bytes]:
    """``n`` small 8×8 grayscale PNGs (a diagonal stripe pattern per index) for the conformance kit."""
    from PIL import Image

    out = []
    for i in range(n):
        img = Image.new("L", (8, 8))
        img.putdata([255 if (x + y + i) % 4 == 0 else (16 * i) % 256 for y in range(8) for x in range(8)])
        buf = _io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


SPEC = ModalitySpec(
    name="image",
    config=ImageConfig,
    build_encoder=build_encoder,
    build_decoder=build_decoder,
    shard_keys=("png", "jpg", "jpeg"),
    decode_sample=decode_sample,
    validate_item=validate_image,
    collate=collate,
    transform=_transform,
    augment=_augment,
    accepts_condition=True,
    description="images: U-Net encoder + latent blocks, rectified-flow U-Net decoder",
    example_config={"preset": "tiny"},
    example_items=example_items,
    as_batch=as_batch,
)


@hookimpl
def lzn_register_modalities(register: Callable[[ModalitySpec], None]) -> None:
    """Register the ``image`` modality."""
    register(SPEC)


@hookimpl
def lzn_register_commands(register: Callable[..., None]) -> None:
    """Register ``lzn import-official`` (the authors' checkpoints as exported models)."""
    from . import commands

    register("import-official", help=commands.HELP, add_arguments=commands.add_arguments, run=commands.run)
