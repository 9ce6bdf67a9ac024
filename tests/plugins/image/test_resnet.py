"""The image plugin's ResNet-GN encoder (paper case 2): sizes, shapes, gradients, config, the case-2 loss."""

from __future__ import annotations

import math

import pytest
import torch
from lzn_image.augment import augment, blur_kernel_size
from lzn_image.config import ImageConfig
from lzn_image.encoder import ImageEncoder
from lzn_image.plugin import build_decoder, build_encoder
from lzn_image.resnet import (
    ProjectionHead,
    ResNetBackbone,
    ResNetEncoder,
    _torchvision_resnet,
    norm_groups,
    parameter_counts,
)
from pydantic import ValidationError
from torch import nn

from lzn_core import zoning
from lzn_core.alignment import alignment_loss
from lzn_core.errors import ContractError
from lzn_core.recipe import RECIPES_DIR, load_recipe

Q = 16


def _cfg(**kw: object) -> ImageConfig:
    base: dict[str, object] = dict(encoder="resnet18", resolution=32, channels=3, proj_hidden=64)
    return ImageConfig(**{**base, **kw})


def _images(b: int, c: int = 3, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _encoder(seed: int = 0, **kw: object) -> ResNetEncoder:
    torch.manual_seed(seed)
    return build_encoder(_cfg(**kw), Q)


# -------------------------------------------------------------------------- sizes
def test_resnet50_parameter_counts_against_the_paper() -> None:
    with torch.device("meta"):
        enc = ResNetEncoder(ImageConfig(encoder="resnet50", resolution=224, channels=3), 256)
    counts = parameter_counts(enc)
    assert counts["backbone"] == 23_508_032  # torchvision ResNet-50 (25,557,032) minus fc (2,049,000)
    assert counts["head_hidden"] == 2048 * 2048 + 2 * 2048  # Linear(2048->2048, no bias) + GN(2048)
    assert counts["head_out"] == 2048 * 256 + 2 * 256  # Linear(2048->256, no bias) + GN(256)
    assert counts["total"] == 28_231_232
    # the paper's 24,032,832 = the encoder without the head's hidden layer
    assert counts["total"] - counts["head_hidden"] == 24_032_832
    assert enc.feature_dim == 2048


def test_backbone_has_groupnorm_32_everywhere_and_no_batchnorm_or_fc() -> None:
    with torch.device("meta"):
        bb = ResNetBackbone("resnet50")
    mods = list(bb.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
    gns = [m for m in mods if isinstance(m, nn.GroupNorm)]
    assert len(gns) == 53 and all(m.num_groups == 32 for m in gns)  # 1 stem + 16·3 blocks + 4 downsample
    assert not any(isinstance(m, nn.Linear) for m in mods)
    with torch.device("meta"):
        assert sum(p.numel() for p in ResNetBackbone("resnet18").parameters()) == 11_176_512


def test_head_layout_and_group_counts() -> None:
    head = ProjectionHead(512, 64, 12)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "GroupNorm", "ReLU", "Linear", "GroupNorm"]
    assert head[0].bias is None and head[3].bias is None
    assert (head[1].num_groups, head[4].num_groups) == (8, 1)
    assert [norm_groups(w) for w in (2048, 256, 200, 64, 16, 12, 7, 1)] == [32, 32, 25, 8, 2, 1, 1, 1]
    with pytest.raises(ValueError, match="GroupNorm width must be positive, got 0"):
        norm_groups(0)


# -------------------------------------------------------------------------- forward / backward
@pytest.mark.parametrize(("channels", "side"), [(3, 32), (1, 8)])
def test_resnet18_forward_shapes_and_gradients(channels: int, side: int) -> None:
    enc = _encoder(resolution=side, channels=channels)
    x = _images(4, c=channels, side=side)
    feats, anchors = enc.features(x), enc(x)
    assert feats.shape == (4, 512) and anchors.shape == (4, Q)
    assert torch.allclose(anchors, enc.head(feats), atol=1e-6)  # features() is the head-free backbone
    # the last GN normalises each row's groups: zero mean per group at initialisation
    groups = enc.head[4].num_groups
    assert groups == 2 and float(anchors.detach().std()) > 0.5
    assert torch.allclose(anchors.view(4, groups, -1).mean(-1), torch.zeros(4, groups), atol=1e-5)
    anchors.pow(2).mul(torch.arange(Q)).sum().backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values())
    for name in ("backbone.stem.0.weight", "head.0.weight", "head.3.weight", "head.4.weight"):
        assert float(grads[name].abs().sum()) > 0, name


def test_resnet50_features_on_a_small_image() -> None:
    torch.manual_seed(0)
    enc = build_encoder(ImageConfig(encoder="resnet50", resolution=32, channels=3), 256).eval()
    with torch.no_grad():
        feats, anchors = enc.features(_images(2)), enc(_images(2))
    assert feats.shape == (2, 2048) and anchors.shape == (2, 256)
    assert bool(torch.isfinite(feats).all()) and float(feats.std()) > 0


def test_checkpointing_gives_the_same_anchors_and_gradients() -> None:
    plain, ckpt = _encoder(), _encoder(checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.backbone.checkpoint and not plain.backbone.checkpoint
    x = _images(3)
    outs = []
    for enc in (plain, ckpt):
        a = enc(x)
        a.square().sum().backward()
        outs.append((a.detach(), [p.grad.clone() for p in enc.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    assert all(torch.allclose(g0, g1, atol=1e-5) for g0, g1 in zip(outs[0][1], outs[1][1], strict=True))


# -------------------------------------------------------------------------- config and errors
def test_config_rejects_an_unknown_encoder() -> None:
    with pytest.raises(ValidationError, match=r"encoder\n  Input should be 'unet', 'resnet50' or 'resnet18'"):
        ImageConfig(encoder="resnet34")
    assert ImageConfig().encoder == "unet" and ImageConfig().decoder is True
    assert ImageConfig(encoder="resnet50").proj_hidden == 2048


def test_encoders_refuse_the_other_kind_of_config() -> None:
    with pytest.raises(ValueError, match="ImageEncoder is the U-Net encoder; config.encoder is 'resnet18'"):
        ImageEncoder(_cfg(), Q)
    with pytest.raises(ValueError, match="ResNetEncoder needs encoder resnet50 or resnet18, got 'unet'"):
        ResNetEncoder(ImageConfig(), Q)
    with pytest.raises(ValueError, match="unknown ResNet architecture 'resnet34'; choose one of resnet50"):
        _torchvision_resnet("resnet34")
    assert isinstance(build_encoder(ImageConfig(preset="tiny"), Q), ImageEncoder)


def test_wrong_image_size_is_reported() -> None:
    with pytest.raises(ValueError, match="image batch has H×W = 8×8, the config expects 32×32"):
        _encoder()(_images(2, side=8))


def test_decoder_false_builds_a_parameter_free_absent_decoder() -> None:
    dec = build_decoder(_cfg(decoder=False), Q)
    assert dec.kind == "none" and not list(dec.parameters())
    with pytest.raises(ContractError, match=r"cannot compute a decoder loss: the image decoder is disabled"):
        dec.loss(torch.zeros(2, Q), _images(2))
    with pytest.raises(ContractError, match="cannot sample images: .*set decoder: true"):
        dec.sample(torch.zeros(2, Q))
    assert build_decoder(ImageConfig(preset="tiny"), Q).kind == "generative"


def test_simclr_blur_kernel_matches_the_paper() -> None:
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3 and blur_kernel_size(8) == 3


# -------------------------------------------------------------------------- the recipe
def test_imagenet_repr_recipe_builds_a_resnet50_model_without_decoder() -> None:
    from lzn_core.model import LZNModel

    recipe = load_recipe(RECIPES_DIR / "imagenet_repr.yaml")
    cfg = recipe.modalities["image"].config
    assert (cfg.encoder, cfg.proj_hidden, cfg.resolution, cfg.decoder) == ("resnet50", 2048, 224, False)
    assert recipe.latent.dim == 256 and recipe.tasks[0].alpha == 0.45 and recipe.tasks[0].loss == "log"
    small = load_recipe(
        RECIPES_DIR / "imagenet_repr.yaml", ["modalities.image.config.resolution=32", "latent.dim=16"]
    )
    torch.manual_seed(0)
    model = LZNModel(small)
    assert isinstance(model.encoders["image"], ResNetEncoder) and model.decoders["image"].kind == "none"
    # the image encoder, and the label anchors of the probes' label modality (no task trains them)
    assert all(n.startswith(("encoders.image.", "encoders.label.")) for n, _ in model.named_parameters())
    assert (
        sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoders.label."))
        == 1000 * model.latent_dim
    )
    assert model.encode("image", _images(2)).shape == (2, 16)


# -------------------------------------------------------------------------- case-2 loss smoke
def _case2_loss(enc: ResNetEncoder, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Two augmented views; view-1 latents (α = 0.45) flow back over view-2 anchors to their own row."""
    gen = torch.Generator().manual_seed(seed)
    view1, view2 = augment(x, enc.config, generator=gen), augment(x, enc.config, generator=gen)
    a1, a2 = enc(view1), enc(view2)
    noise = torch.randn(a1.shape, generator=gen)
    z = zoning.latents(a1, noise, g=1e-4, alpha=0.45, steps=20, solver="euler")
    out = zoning.assign(z, a2, steps=20, targets=torch.arange(x.shape[0]))
    return alignment_loss(out.target_probs, cutoff=0.2, kind="log")


def test_case2_alignment_loss_trains_the_resnet_encoder() -> None:
    enc = _encoder(proj_hidden=32)
    assert enc.config.augment_kind == "simclr"
    x = _images(8)
    loss = _case2_loss(enc, x, seed=0)
    assert bool(torch.isfinite(loss)) and 0.0 <= float(loss.detach()) < 5 * math.log(8)
    loss.backward()
    for name in ("backbone.stem.0.weight", "backbone.stages.3.1.bn2.weight", "head.0.weight"):
        grad = dict(enc.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    opt = torch.optim.Adam(enc.parameters(), lr=1e-4)
    before = float(_case2_loss(enc, x, seed=1).detach())
    for _ in range(4):  # the same two views every step: the encoder must learn to pair them
        opt.zero_grad()
        _case2_loss(enc, x, seed=1).backward()
        opt.step()
    assert float(_case2_loss(enc, x, seed=1).detach()) < 0.8 * before  # measured: 1.28 -> 0.51


def test_resnet_config_passes_the_conformance_kit() -> None:
    import dataclasses

    from lzn_image.plugin import SPEC

    from lzn_core.testing import check_modality

    small = {"encoder": "resnet18", "proj_hidden": 32, "resolution": 8, "channels": 1}
    report = check_modality(dataclasses.replace(SPEC, example_config=small))
    assert any("gradients reach its parameters" in c for c in report.checks)
