"""The image modality (plugins/lzn_image): config, encoder, rectified-flow decoder, sampling, I/O."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
import torch
from lzn_image.augment import augment
from lzn_image.config import ImageConfig
from lzn_image.decoder import ImageDecoder
from lzn_image.encoder import ImageEncoder
from lzn_image.io import collate, decode_sample, save_grid
from lzn_image.sampling import dopri5, euler
from PIL import Image
from pydantic import ValidationError

Q = 8


def _tiny(**kw: object) -> ImageConfig:
    return ImageConfig(preset="tiny", **kw)


def _images(b: int = 4, c: int = 1, side: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, side, side, generator=g) * 2 - 1


def _png(arr: list[int], mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    img = Image.new(mode, size)
    img.putdata(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_decoder() -> ImageDecoder:
    """An untrained tiny decoder whose velocity field is clearly nonlinear in x but smooth in t.

    The residual branches' last layers start at NCSN++'s "zero" (1e-10 scale) init, which makes
    the velocity nearly constant in x; they are re-drawn here at variance scale 0.01, and the
    time features are low-frequency Fourier features of log σ (frequency scale 0.25; the
    positional embedding of 999·t of an untrained net oscillates in t and would need hundreds of
    RK45 steps).
    """
    from lzn_image.unet import AttnBlock, ResBlock, variance_scaling_

    torch.manual_seed(0)
    dec = ImageDecoder(_tiny(time_embedding="fourier", fourier_scale=0.25), Q).eval()
    for m in dec.modules():
        if isinstance(m, ResBlock):
            variance_scaling_(m.conv1.weight, 0.01)
        elif isinstance(m, AttnBlock):
            variance_scaling_(m.out.weight, 0.01)
    variance_scaling_(dec.up.conv_out.weight, 0.01)
    return dec


# ------------------------------------------------------------------ plugin / contract
def test_conformance_kit_passes() -> None:
    from lzn_core.testing import check_modality

    rep = check_modality("image", latent_dim=Q)
    assert rep.decoder_kind == "generative"
    assert any("decoder.loss" in c for c in rep.checks)


def test_trains_and_serves_beside_label() -> None:
    from lzn_core.testing import run_trial

    rep = run_trial("image", latent_dim=Q)  # the kit's trial, in this process
    assert rep.partner == "label" and "label -> image -> label" in rep.edges


def test_registered_through_entry_point_and_plugin_import_is_light() -> None:
    import lzn_image.plugin

    from lzn_core import get_modality

    assert get_modality("image") is lzn_image.plugin.SPEC
    code = "import sys, lzn_image.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- config
def test_preset_fills_fields_and_explicit_values_win() -> None:
    cfg = ImageConfig(preset="cifar", dropout=0.0)
    assert (cfg.nf, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions) == (128, (1, 2, 2, 2), 4, (16,))
    assert cfg.dropout == 0.0 and cfg.latent_channels == 20 and cfg.latent_hidden == 200
    assert ImageConfig().resolution == 8  # no preset: digits-sized defaults


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"widht": 3}, "Extra inputs are not permitted"),
        ({"preset": "imagenet"}, "preset"),
        ({"resolution": 10, "ch_mult": (1, 2, 2)}, "divisible by 2**(len(ch_mult)-1) = 4"),
        ({"attn_resolutions": (3,)}, "attn_resolutions [3] are not among the U-Net resolutions [8, 4]"),
        ({"latent_resolutions": (2,)}, "latent_resolutions [2] must be a non-empty subset"),
        ({"nf": 18}, "nf must be a multiple of 4"),
        ({"ch_mult": ()}, "ch_mult must be a non-empty tuple"),
        ({"channels": 2}, "channels"),
    ],
)
def test_config_rejects_bad_values(kw: dict, msg: str) -> None:
    with pytest.raises(ValidationError) as err:
        ImageConfig(**kw)
    assert msg in str(err.value)


def test_cifar_parameter_counts_match_the_paper() -> None:
    cfg = ImageConfig(preset="cifar")
    with torch.device("meta"):
        enc, dec = ImageEncoder(cfg, 200), ImageDecoder(cfg, 200)
        dec_cond = ImageDecoder(cfg, 200, condition_dim=10)
    n_enc = sum(p.numel() for p in enc.parameters())
    n_dec = sum(p.numel() for p in dec.parameters())
    assert abs(n_enc / 49_790_260 - 1) < 0.05, n_enc
    assert abs(n_dec / 61_906_819 - 1) < 0.05, n_dec
    # the conditioning adds exactly condition_dim × 4nf weights (paper: 10 × 512 = 5,120)
    assert sum(p.numel() for p in dec_cond.parameters()) - n_dec == 5120


# -------------------------------------------------------------------------- encoder
def test_encoder_shapes_channels_and_errors() -> None:
    torch.manual_seed(0)
    enc = ImageEncoder(_tiny(), Q)
    a = enc(_images(3))
    assert a.shape == (3, Q) and a.dtype == torch.float32
    assert enc(_images(3, c=3)).shape == (3, Q)  # RGB batch into a grayscale model: luma
    rgb = ImageEncoder(ImageConfig(preset="tiny", channels=3), Q)
    assert rgb(_images(2, c=1)).shape == (2, Q)  # gray batch into an RGB model: repeated
    with pytest.raises(ValueError, match="config expects 8×8"):
        enc(_images(2, side=16))
    with pytest.raises(ValueError, match=r"must be \(B, C, H, W\)"):
        enc(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="2 channels, expected 1 or 3"):
        enc(torch.zeros(1, 2, 8, 8))


def test_encoder_latent_blocks_sum_over_every_feature_map() -> None:
    cfg = _tiny()
    enc = ImageEncoder(cfg, Q)
    # conv_in, 1 block at 8, down block, 1 block at 4, middle
    assert len(enc.latent_blocks) == 5
    only4 = ImageEncoder(ImageConfig(preset="tiny", latent_resolutions=(4,)), Q)
    assert len(only4.latent_blocks) == 3


def test_encoder_gradient_flows_from_a_solver_loss() -> None:
    zoning = pytest.importorskip("lzn_core.zoning")
    torch.manual_seed(0)
    enc = ImageEncoder(_tiny(), Q)
    x = _images(6)
    view1, view2 = enc(x), enc(augment(x, _tiny(), generator=torch.Generator().manual_seed(1)))
    z = zoning.latents(view1, steps=5, g=1e-3)
    out = zoning.assign(z, view2, steps=5, targets=torch.arange(6))
    loss = -torch.log(out.target_probs[1:].amax(dim=0).clamp_min(1e-12)).mean()
    loss.backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(bool(torch.isfinite(g).all()) for g in grads)


# -------------------------------------------------------------------------- decoder
def test_decoder_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    enc, dec = ImageEncoder(_tiny(), Q), ImageDecoder(_tiny(), Q)
    x = _images(8)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=2e-3)
    losses = []
    for _ in range(30):
        loss = dec.loss(enc(x), x, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_loss_rows_split_equals_the_whole_batch(tiny_decoder: ImageDecoder) -> None:
    x, z = _images(6), torch.randn(6, Q)
    whole = tiny_decoder.loss(z, x, generator=torch.Generator().manual_seed(3))
    halves = [
        tiny_decoder.loss(z[s : s + 3], x[s : s + 3], generator=torch.Generator().manual_seed(3), rows=(s, 6))
        for s in (0, 3)
    ]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole, rtol=1e-5, atol=1e-7)
    other = tiny_decoder.loss(z, x, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(other, whole)
    with pytest.raises(ValueError, match="does not contain a batch of 3 rows"):
        tiny_decoder.loss(z[:3], x[:3], rows=(4, 6))


def test_decoder_conditioning_and_input_errors(tiny_decoder: ImageDecoder) -> None:
    x, z = _images(2), torch.randn(2, Q)
    with pytest.raises(ValueError, match=r"z must be \(B, q\) = \(2, 8\), got \(2, 5\)"):
        tiny_decoder.loss(torch.randn(2, 5), x)
    with pytest.raises(ValueError, match="a condition was given but the decoder was built without one"):
        tiny_decoder.loss(z, x, torch.zeros(2, 3))
    cond_dec = ImageDecoder(_tiny(), Q, condition_dim=3)
    with pytest.raises(ValueError, match=r"needs cond \(B, 3\)"):
        cond_dec.loss(z, x)
    with pytest.raises(ValueError, match=r"cond must be \(B, 3\) = \(2, 3\), got \(2, 4\)"):
        cond_dec.loss(z, x, torch.zeros(2, 4))
    onehot = torch.eye(3)[[0, 2]]
    assert cond_dec.loss(z, x, onehot).dim() == 0
    assert cond_dec.sample(z, onehot, steps=2).shape == (2, 1, 8, 8)


def test_unet_checkpointing_gives_the_same_anchors_loss_and_gradients_with_dropout() -> None:
    """checkpoint: true recomputes every U-Net block in backward (encoder and decoder): the same
    values and gradients, dropout 0.3 included (the recompute redraws the forward's masks)."""
    cfg = dict(resolution=8, channels=1, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    x, z = _images(3), torch.randn(3, Q, generator=torch.Generator().manual_seed(2))
    outs = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        enc = ImageEncoder(ImageConfig(**cfg, dropout=0.3, checkpoint=checkpoint), Q)
        dec = ImageDecoder(ImageConfig(**cfg, dropout=0.3, checkpoint=checkpoint), Q)
        assert enc.down.recompute is checkpoint and dec.up.recompute is checkpoint
        torch.manual_seed(1)
        a = enc(x)
        loss = dec.loss(z, x, generator=torch.Generator().manual_seed(3)) + a.square().mean()
        loss.backward()
        outs.append((a.detach(), loss.detach(), [p.grad for m in (enc, dec) for p in m.parameters()]))
    (a0, l0, g0), (a1, l1, g1) = outs
    assert torch.equal(a0, a1) and torch.equal(l0, l1)
    assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-7) for u, v in zip(g0, g1, strict=True))


def test_attention_runs_4d_one_head_and_equals_softmax_attention() -> None:
    """The attention block hands scaled_dot_product_attention (B, 1 head, L, ch), the layout of the
    fused CUDA kernels, and computes softmax(q·kᵀ/√ch)·v over the s·s positions (float64); its
    state-dict keys are the fused qkv and out maps (what the official importer fills)."""
    from lzn_image.unet import AttnBlock

    torch.manual_seed(0)
    block = AttnBlock(16).double()
    for w in (block.qkv.weight, block.out.weight):
        torch.nn.init.normal_(w, std=0.3)
    assert sorted(block.state_dict()) == [
        "norm.bias", "norm.weight", "out.bias", "out.weight", "qkv.bias", "qkv.weight"
    ]  # fmt: skip
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append((tuple(q.shape), q.stride(-1)))
        return real(q, k, v, *a, **kw)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        out = block(x)
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    assert seen == [((2, 1, 16, 16), 1)]
    h = block.norm(x).flatten(2).transpose(1, 2)
    q, k, v = block.qkv(h).chunk(3, dim=-1)
    ref = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1) @ v
    ref = x + block.out(ref).transpose(1, 2).reshape(2, 16, 4, 4)
    torch.testing.assert_close(out, ref / math.sqrt(2.0), rtol=1e-12, atol=1e-12)


def test_fourier_time_embedding_builds_and_trains() -> None:
    dec = ImageDecoder(_tiny(time_embedding="fourier"), Q)
    loss = dec.loss(torch.randn(2, Q), _images(2))
    loss.backward()
    assert dec.temb[0].in_features == 2 * 16 + Q


def test_fir_resampling_keeps_constants_and_sizes() -> None:
    from lzn_image.unet import resample

    x = torch.full((1, 2, 8, 8), 3.0)
    down, up = resample(x, "down", fir=True), resample(x, "up", fir=True)
    assert down.shape == (1, 2, 4, 4) and up.shape == (1, 2, 16, 16)
    # the filter is normalised: a constant stays constant away from the zero-padded border
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))
    assert not torch.equal(resample(x.cumsum(-1), "up", fir=True), resample(x.cumsum(-1), "up"))


def test_ncsnpp256_options_build_and_train() -> None:
    """FIR resampling, progressive input/output skips and output / σ (the official 256² models)."""
    cfg = _tiny(time_embedding="fourier", fir=True, progressive=True, scale_by_sigma=True)
    dec, enc = ImageDecoder(cfg, Q), ImageEncoder(cfg, Q)
    assert not hasattr(dec.up, "conv_out") and len(dec.up.pyramid) == 2 and len(dec.down.combine) == 1
    loss = dec.loss(enc(_images(2)), _images(2))
    loss.backward()
    assert enc.down.combine[0].weight.grad is not None and dec.up.pyramid[1][2].weight.grad is not None
    x, z = _images(2), torch.randn(2, Q)
    v1, v2 = dec.velocity(x, torch.tensor([0.5, 0.5]), z), dec.velocity(x, torch.tensor([1.0, 1.0]), z)
    plain = ImageDecoder(cfg.model_copy(update={"scale_by_sigma": False}), Q)
    plain.load_state_dict(dec.state_dict())
    torch.testing.assert_close(plain.velocity(x, torch.tensor([1.0, 1.0]), z) / 999.0, v2)
    assert v1.shape == (2, 1, 8, 8)


# ------------------------------------------------------------------------- sampling
def test_sample_shapes_range_and_determinism(tiny_decoder: ImageDecoder) -> None:
    z = torch.randn(3, Q)
    a = tiny_decoder.sample(z, steps=4, generator=torch.Generator().manual_seed(1))
    b = tiny_decoder.sample(z, steps=4, generator=torch.Generator().manual_seed(1))
    c = tiny_decoder.sample(z, steps=4, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 1, 8, 8) and float(a.abs().max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert tiny_decoder.last_stats.nfe == 4
    with pytest.raises(ValueError, match=r"noise must be \(3, 1, 8, 8\)"):
        tiny_decoder.sample(z, noise=torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match="unknown sampling method 'heun'; choose 'euler' or 'rk45'"):
        tiny_decoder.sample(z, method="heun")


def test_dopri5_solves_a_linear_ode_to_tolerance() -> None:
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    rate = torch.tensor([[-1.0, 2.0]], dtype=torch.float64)
    x1, stats = dopri5(lambda x, t: rate * x, x0, 0.0, 1.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x1, x0 * torch.exp(rate), rtol=1e-6, atol=1e-8)
    assert stats.accepted >= 3 and stats.nfe == 2 + 6 * (stats.accepted + stats.rejected)
    back, _ = dopri5(lambda x, t: rate * x, x1, 1.0, 0.0, rtol=1e-8, atol=1e-8)  # backwards in time
    torch.testing.assert_close(back, x0, rtol=1e-6, atol=1e-8)
    # time-dependent field: dx/dt = 2t x  ->  x(1) = e·x0
    x1t, _ = dopri5(lambda x, t: 2 * t * x, x0, 0.0, 1.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x1t, x0 * math.e, rtol=1e-6, atol=1e-8)
    with pytest.raises(RuntimeError, match="RK45 needed more than 3 steps"):
        dopri5(lambda x, t: rate * x, x0, 0.0, 10.0, rtol=1e-10, atol=1e-10, max_steps=3)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        euler(lambda x, t: x, x0, 0.0, 1.0, 0)


def test_rk45_agrees_with_many_step_euler(tiny_decoder: ImageDecoder) -> None:
    z = torch.randn(2, Q, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.5
    rk = tiny_decoder.sample(z, noise=noise, method="rk45", rtol=1e-5, atol=1e-5)
    nfe = tiny_decoder.last_stats.nfe
    err = {n: float((tiny_decoder.sample(z, noise=noise, steps=n) - rk).abs().max()) for n in (25, 100)}
    # Euler converges (first order) to the RK45 solution: 4× the steps, ~4× smaller gap
    assert err[100] < 0.4 * err[25] and err[100] < 2e-3, err
    assert 8 <= nfe < 100, nfe


def test_invert_then_sample_reconstructs(tiny_decoder: ImageDecoder) -> None:
    x, z = _images(2) * 0.8, torch.randn(2, Q, generator=torch.Generator().manual_seed(4))
    noise = tiny_decoder.invert(x, z, method="rk45")
    assert noise.shape == x.shape and float((noise - x).abs().max()) > 0.1  # it really moved
    rec_rk = tiny_decoder.sample(z, noise=noise, method="rk45")
    assert float((rec_rk - x).abs().max()) < 1e-3
    eps = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 0.3
    gen = tiny_decoder.sample(z, noise=eps, method="rk45")
    assert float(gen.abs().max()) < 1.0  # not clamped, so invert(sample(ε)) must give ε back
    assert float((tiny_decoder.invert(gen, z, method="rk45") - eps).abs().max()) < 1e-3
    err = {n: float((tiny_decoder.reconstruct(x, z, steps=n) - x).abs().max()) for n in (5, 20)}
    assert err[20] < 0.5 * err[5] and err[20] < 0.01, err


# ------------------------------------------------------------------------------ I/O
def test_decode_sample_gray_rgb_and_other_modes() -> None:
    gray = decode_sample(_png([0, 255, 51, 204], "L", (2, 2)))
    assert gray.shape == (1, 2, 2) and gray.dtype == torch.float32
    torch.testing.assert_close(gray.flatten(), torch.tensor([-1.0, 1.0, -0.6, 0.6]))
    rgb = decode_sample(_png([(255, 0, 0)] * 4, "RGB", (2, 2)))
    assert rgb.shape == (3, 2, 2) and torch.equal(rgb[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert decode_sample(_png([(0, 0, 0, 9)] * 4, "RGBA", (2, 2))).shape == (3, 2, 2)
    jpg = decode_sample(_png([(10, 200, 30)] * 64, "RGB", (8, 8), fmt="JPEG"))
    assert jpg.shape == (3, 8, 8) and float(jpg.abs().max()) <= 1.0


@pytest.mark.parametrize("bad", [b"", b"not an image at all", None])
def test_decode_sample_rejects_corrupt_bytes(bad: bytes | None) -> None:
    data = bad if bad is not None else _png([7] * 64, "L", (8, 8))[:40]  # truncated PNG
    with pytest.raises(ValueError, match="not a valid PNG/JPEG image: "):
        decode_sample(data)
    with pytest.raises(ValueError, match="expected bytes, got str"):
        decode_sample("x.png")  # type: ignore[arg-type]


def test_collate_promotes_gray_and_keeps_mixed_sizes_ragged() -> None:
    from lzn_image.io import fit_batch

    batch = collate([torch.zeros(1, 4, 4), torch.ones(3, 4, 4)])
    assert batch.shape == (2, 3, 4, 4)
    ragged = collate([torch.zeros(1, 4, 4), torch.ones(3, 8, 6)])
    assert isinstance(ragged, list) and [tuple(x.shape) for x in ragged] == [(3, 4, 4), (3, 8, 6)]
    with pytest.raises(ValueError, match=r"images of sizes \[\(4, 4\), \(8, 6\)\].*set eval_resize"):
        fit_batch(ragged, ImageConfig(resolution=4, channels=3))
    fitted = fit_batch(ragged, ImageConfig(resolution=4, channels=3, eval_resize=4))
    assert fitted.shape == (2, 3, 4, 4) and torch.equal(fitted[0], ragged[0])
    with pytest.raises(ValueError, match="empty list"):
        collate([])


def test_save_grid_writes_an_upscaled_png(tmp_path) -> None:
    imgs = _images(5)
    out = save_grid(imgs, tmp_path / "sub" / "grid.png", nrow=3)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "L"
        # 3 columns × 2 rows of 8 px tiles with 2 px padding, upscaled ×8 (tiles >= 64 px)
        assert img.size == ((3 * 10 + 2) * 8, (2 * 10 + 2) * 8)
    rgb = save_grid(_images(2, c=3), tmp_path / "rgb.png", upscale=1)
    with Image.open(rgb) as img:
        assert img.mode == "RGB" and img.size == (2 * 10 + 2, 10 + 2)
    with pytest.raises(ValueError, match=r"non-empty \(B, 1\|3, H, W\)"):
        save_grid(torch.zeros(2, 2, 8, 8), tmp_path / "bad.png")


# -------------------------------------------------------------------------- augment
def test_augment_small_views_are_random_but_reproducible() -> None:
    cfg, x = _tiny(), _images(4)
    a = augment(x, cfg, generator=torch.Generator().manual_seed(0))
    b = augment(x, cfg, generator=torch.Generator().manual_seed(0))
    c = augment(x, cfg, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.abs().max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert torch.equal(augment(x, _tiny(augment="none")), x)
    with pytest.raises(ValueError, match=r"augment expects \(B, C, H, W\)"):
        augment(x[0], cfg)


def test_augment_simclr_rgb_32() -> None:
    cfg = ImageConfig(preset="small32")
    assert cfg.augment_kind == "simclr"
    x = _images(3, c=3, side=32)
    v = augment(x, cfg, generator=torch.Generator().manual_seed(0))
    assert v.shape == x.shape and bool(torch.isfinite(v).all()) and float(v.abs().max()) <= 1.0
    assert float((v - x).abs().mean()) > 0.05


def test_simclr_views_crop_ragged_full_images_reproducibly() -> None:
    cfg = ImageConfig(encoder="resnet18", decoder=False, resolution=32, channels=3, eval_resize=36)
    assert cfg.augment_kind == "simclr"
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 40 + 7 * i, 64 - 5 * i, generator=g) * 2 - 1 for i in range(3)]
    v = augment(imgs, cfg, generator=torch.Generator().manual_seed(1))
    assert v.shape == (3, 3, 32, 32) and float(v.abs().max()) <= 1.0
    assert torch.equal(v, augment(imgs, cfg, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(v, augment(imgs, cfg, generator=torch.Generator().manual_seed(2)))


# ---------------------------------------------------------------------- training flips
def test_flip_mirrors_cifar_batches_and_leaves_digits_alone() -> None:
    """The CIFAR recipes flip (on by default there, off by override), the digits recipes do not;
    each row is either itself or its mirror image, about half of them mirrored."""
    from lzn_image.plugin import SPEC

    from lzn_core.recipe import load_recipe

    for name in ("cifar_gen", "cifar_joint"):
        assert load_recipe(name).modalities["image"].config.flip is True
        assert (
            load_recipe(name, ["modalities.image.config.flip=false"]).modalities["image"].config.flip is False
        )
    for name in ("digits_joint", "digits_rf_baseline", "digits_text"):
        assert load_recipe(name).modalities["image"].config.flip is False
    cifar, digits = ImageConfig(preset="cifar", flip=True), ImageConfig(preset="digits")
    x = _images(64, c=3, side=32)
    out = SPEC.transform(x, cifar, generator=torch.Generator().manual_seed(0), rows=(0, 64))
    mirrored = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((mirrored ^ kept).all()) and 20 <= int(mirrored.sum()) <= 44
    d = _images(8)
    assert SPEC.transform(d, digits, generator=torch.Generator().manual_seed(0), rows=(0, 8)) is d


def test_flip_same_seed_same_flips_and_two_ranks_see_one_ranks_rows() -> None:
    from lzn_image.augment import flip

    cfg, x = ImageConfig(preset="small32", flip=True), _images(8, c=3, side=32)

    def run(rows: slice, seed: int = 3) -> torch.Tensor:
        return flip(x[rows], cfg, generator=torch.Generator().manual_seed(seed), rows=(rows.start, 8))

    whole = run(slice(0, 8))
    assert torch.equal(whole, run(slice(0, 8)))  # a resumed step redraws the same coins
    assert not torch.equal(whole, run(slice(0, 8), seed=4))
    assert torch.equal(torch.cat([run(slice(0, 4)), run(slice(4, 8))]), whole)  # 2 ranks = 1 rank
    ragged = flip(list(x), cfg, generator=torch.Generator().manual_seed(3), rows=(0, 8))
    assert torch.equal(torch.stack(ragged), whole)
    with pytest.raises(ValueError, match="does not contain a batch of 8"):
        flip(x, cfg, generator=torch.Generator(), rows=(4, 8))


# ------------------------------------------------------------------ ImageNet views (case 2)
def test_eval_view_is_resize_256_centre_crop_224_of_a_large_image() -> None:
    """Resize(256) + CenterCrop(224) of a 300×400 image: torchvision's tensor transforms exactly,
    and PIL's uint8 pipeline (the authors' loader) up to rounding."""
    import numpy as np
    from lzn_image.io import eval_view
    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 30, 40, generator=g)
    img = torch.nn.functional.interpolate(base[None], size=(300, 400), mode="bicubic")[0].clamp(0, 1)
    img = (img * 255).round() / 127.5 - 1  # a decoded PNG: uint8 levels in [-1, 1]
    ours = eval_view(img, 224, 256)
    ref = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(img)
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    pil = Image.fromarray(((img + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    pil = pil.resize((341, 256), Image.BILINEAR).crop((58, 16, 58 + 224, 16 + 224))
    pil_t = torch.from_numpy(np.asarray(pil, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert float((ours - pil_t).abs().mean()) < 0.01  # PIL rounds to uint8 and filters slightly differently
    tall = eval_view(torch.zeros(1, 500, 300), 224, 256)
    assert tall.shape == (1, 224, 224)


def test_resized_crop_boxes_follow_torchvision_and_the_crop_is_of_the_full_image() -> None:
    import math

    from lzn_image.augment import random_resized_crop, resized_crop_box
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    boxes = [resized_crop_box(300, 400, (0.08, 1.0), g) for _ in range(400)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02 and 0.08 - 0.01 <= h * w / (300 * 400) <= 1.0
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    theirs = [
        RandomResizedCrop.get_params(torch.zeros(3, 300, 400), [0.08, 1.0], [3 / 4, 4 / 3])
        for _ in range(2000)
    ]
    ours = [resized_crop_box(300, 400, (0.08, 1.0), g) for _ in range(2000)]
    for stat in (lambda b: b[2] * b[3] / 120000, lambda b: math.log(b[3] / b[2]), lambda b: b[0] / 300):
        a, t = torch.tensor([stat(b) for b in ours]), torch.tensor([stat(b) for b in theirs])
        assert abs(float(a.mean()) - float(t.mean())) < 0.02 and abs(float(a.std()) - float(t.std())) < 0.02
    ratios = torch.tensor([math.log(w / h) for _, _, h, w in boxes])
    assert float(ratios.min()) < -0.2 and float(ratios.max()) > 0.2
    # a strip no crop of aspect 3/4..4/3 fits: torchvision's fallback, the centre with the clamped aspect
    assert resized_crop_box(20, 400, (0.9, 1.0), g) == (0, 186, 20, 27)
    img = torch.rand(3, 300, 400, generator=g) * 2 - 1
    box = resized_crop_box(300, 400, (0.08, 1.0), torch.Generator().manual_seed(5))
    crop = random_resized_crop([img], 224, (0.08, 1.0), torch.Generator().manual_seed(5))[0]
    ref = TF.resized_crop(img, *box, size=[224, 224], antialias=True)
    torch.testing.assert_close(crop, ref, rtol=0, atol=1e-5)


def test_full_size_images_pass_the_loader_checks_and_encode_at_their_eval_view() -> None:
    from lzn_image.io import eval_view
    from lzn_image.plugin import SPEC, build_encoder

    cfg = ImageConfig(encoder="resnet18", decoder=False, resolution=32, channels=3, eval_resize=36)
    imgs = [torch.rand(3, 40, 50) * 2 - 1, torch.rand(3, 64, 48) * 2 - 1]
    for x in imgs:
        SPEC.validate_item(x, cfg)  # any size is fine with eval_resize
    with pytest.raises(ValueError, match="40x50 image, the config expects 32x32"):
        SPEC.validate_item(imgs[0], ImageConfig(resolution=32, channels=3))
    torch.manual_seed(0)
    enc = build_encoder(cfg, Q).eval()
    batch = SPEC.collate(imgs)
    views = torch.stack([eval_view(x, 32, 36) for x in imgs])
    with torch.no_grad():
        torch.testing.assert_close(enc(batch), enc(views))
        torch.testing.assert_close(enc.features(batch), enc.features(views))
    with pytest.raises(ValueError, match="eval_resize 30 must be >= resolution 32"):
        ImageConfig(resolution=32, eval_resize=30)


# --------------------------------------------------------------------- NCSN++ initialisation
def _fans(w: torch.Tensor) -> float:
    receptive = w[0, 0].numel() if w.ndim > 2 else 1
    return (w.shape[0] + w.shape[1]) * receptive / 2


def test_initialisation_is_ncsnpp_variance_scaling_with_near_zero_output_layers() -> None:
    """Every conv/dense weight of the CIFAR-size encoder and decoder at init, per layer type,
    against NCSN++'s default_init: U(±√(3s/fan_avg)), variance s/fan_avg, zero bias, with
    s = 1e-10 for the residual branches' last layers and the output conv, s = 0.1 for the
    attention's q/k/v, and torch's default for the encoder's latent-block MLPs (the authors'
    nn.Linear)."""
    from lzn_image.unet import AttnBlock, ResBlock
    from torch import nn

    torch.manual_seed(0)
    cfg = ImageConfig(preset="cifar")
    dec, enc = ImageDecoder(cfg, 200, 10), ImageEncoder(cfg, 200)
    modules = {
        **{f"dec.{k}": m for k, m in dec.named_modules()},
        **{f"enc.{k}": m for k, m in enc.named_modules()},
    }
    seen: dict[str, int] = {}
    for name, m in modules.items():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.detach().double()
        if ".mlp." in name:  # torch's nn.Linear default: U(±1/√fan_in), bias U(±1/√fan_in)
            kind, var, bound = "latent_mlp", 1 / (3 * w.shape[1]), 1 / math.sqrt(w.shape[1])
            b = m.bias.detach().abs().max()
            assert 0 < float(b) <= bound
        else:
            last = name.endswith((".conv1", ".out", "conv_out")) or ".pyramid." in name
            scale = 1e-10 if last else 1.0
            kind = "near_zero" if last else "variance_scaling"
            parts = [w]
            if name.endswith(".qkv"):
                kind, scale, parts = "qkv", 0.1, list(w.chunk(3))
            for part in parts:
                var, bound = scale / _fans(part), math.sqrt(3 * scale / _fans(part))
                assert float(part.abs().max()) <= bound * (1 + 1e-6), name
                if kind != "near_zero":
                    assert abs(float(part.var()) / var - 1) < 0.15, (name, float(part.var()), var)
            assert m.bias is None or float(m.bias.detach().abs().max()) == 0.0, name
            seen[kind] = seen.get(kind, 0) + 1
            continue
        assert float(w.abs().max()) <= bound * (1 + 1e-6) and abs(float(w.var()) / var - 1) < 0.15, name
        seen[kind] = seen.get(kind, 0) + 1
    blocks = sum(isinstance(m, ResBlock) for m in modules.values())
    attns = sum(isinstance(m, AttnBlock) for m in modules.values())
    assert seen["near_zero"] == blocks + attns + 1  # conv1 of every block, every attention out, conv_out
    assert seen["qkv"] == attns and seen["latent_mlp"] == 2 * len(enc.latent_blocks)
    assert seen["variance_scaling"] > 2 * blocks
    assert float(dec.up.conv_out.weight.detach().abs().max()) < 1e-6  # the output layer starts at ~0
