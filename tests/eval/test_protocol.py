"""The evaluation protocol on a tiny random model (lzn_core/eval/protocol.py and report.evaluate): label
flow accuracy with an oracle encoder, reconstruction error, samples, OOD confidences, the zone vote,
probe features, the RF baseline's decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import plain_model

from lzn_core.eval import metrics as ev
from lzn_core.eval import protocol as em


class _OracleEncoder(torch.nn.Module):
    """Reads the class from the image's mean pixel and returns that class's label anchor."""

    def __init__(self, label_encoder: torch.nn.Module, scramble: bool = False) -> None:
        super().__init__()
        self.lab = label_encoder
        self.scramble = scramble

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        k = ((images.mean(dim=(1, 2, 3)) + 1) * 5).round().long().clamp(0, 9)
        a = self.lab.bank()[k]
        return torch.randn(a.shape, generator=torch.Generator().manual_seed(1)) * 3 if self.scramble else a


def _class_images(per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(10).repeat_interleave(per_class)
    return (y.float() / 5 - 1).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone(), y


def test_batches_cover_everything_in_full_batches() -> None:
    g = torch.Generator().manual_seed(0)
    batches = em._batches(10, 4, g)
    kept = torch.cat([rows[-k:] for rows, k in batches])
    assert sorted(kept.tolist()) == list(range(10))
    assert all(len(rows) == 4 for rows, _ in batches)
    assert [len(r) for r, _ in em._batches(3, 8, g)] == [3]
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        em._batches(3, 0, g)


def test_label_flow_accuracy_with_an_oracle_encoder() -> None:
    model = plain_model()
    with torch.no_grad():
        model.encoders["label"].anchors.mul_(3.0)  # well separated class anchors
    model.encoders["image"] = _OracleEncoder(model.encoders["label"])
    x, y = _class_images()
    rows = em.alpha_batch_sweep(model, "image", "label", x, y, alphas=(0.0,), batch_sizes=(100,))
    assert rows == [{"alpha": 0.0, "batch_size": 100, "accuracy": pytest.approx(1.0, abs=0.03)}]
    pred, conf = em.zonal_predict(model, "image", "label", x, alpha=0.0, batch_size=100, draws=4)
    assert conf.shape == (100,) and float(conf.min()) >= 0 and float(conf.max()) <= 1 + 1e-6
    assert em.classification_edges(model) == [("image", "label")] and em.generation_targets(model) == [
        "image"
    ]
    model.encoders["image"] = _OracleEncoder(model.encoders["label"], scramble=True)
    assert (
        em.alpha_batch_sweep(model, "image", "label", x, y, alphas=(0.0,), batch_sizes=(100,))[0]["accuracy"]
        < 0.4
    )


def test_label_flow_predict_deterministic_and_errors() -> None:
    model = plain_model()
    x = torch.rand(12, 1, 8, 8) * 2 - 1
    p1, c1 = em.zonal_predict(model, "image", "label", x, alpha=1.0, batch_size=5, seed=3, steps=10, draws=2)
    p2, c2 = em.zonal_predict(model, "image", "label", x, alpha=1.0, batch_size=5, seed=3, steps=10, draws=2)
    assert torch.equal(p1, p2) and torch.equal(c1, c2) and p1.shape == (12,)
    assert (
        em.zonal_predict(model, "image", "label", x, batch_size=5)[1].isnan().all()
    )  # no draws: no confidence
    with pytest.raises(ValueError, match="evaluation batch is empty"):
        em.zonal_predict(model, "image", "label", torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match=r"labels must have shape \(12,\)"):
        em.alpha_batch_sweep(model, "image", "label", x, torch.zeros(3, dtype=torch.long))


def test_reconstruction_error_value_and_draws(monkeypatch) -> None:
    model = plain_model()
    x, y = _class_images(2)
    dec = model.decoders["image"]
    calls = []

    def fake(images, z, cond, **kw):
        calls.append((z.clone(), cond, kw))
        return images + 0.1

    monkeypatch.setattr(dec, "reconstruct", fake)
    err = em.reconstruction_error(model, "image", x, y, draws=3)
    assert err == pytest.approx(0.1 * 8, rel=1e-5)  # ‖0.1·1‖₂ over 64 pixels
    assert len(calls) == 3 and not torch.equal(calls[0][0], calls[1][0])  # fresh ε per draw
    assert torch.equal(calls[0][1], torch.nn.functional.one_hot(y, 10).float())  # true-label one-hot
    assert calls[0][2]["clip"] is False  # the paper scores the unclipped regeneration
    calls.clear()
    zoned = []
    real_latents = model.latents
    monkeypatch.setattr(model, "latents", lambda a, **kw: zoned.append(len(a)) or real_latents(a, **kw))
    em.reconstruction_error(model, "image", x, y, draws=2, batch_size=8, chunk=6, clip=True)
    assert zoned == [8, 8, 4, 8, 8, 4]  # latents over inference batches of 8 (20 items), per draw
    assert [len(c[0]) for c in calls] == [6, 6, 6, 2] * 2 and calls[0][2]["clip"] is True
    with pytest.raises(ValueError, match="conditioned on 'label': pass its items"):
        em.reconstruction_error(model, "image", x, None, draws=1)
    with pytest.raises(ValueError, match="draws, batch_size and chunk must be >= 1"):
        em.reconstruction_error(model, "image", x, y, draws=0)


def test_reconstruction_error_real_decoder_runs() -> None:
    from lzn_image.unet import variance_scaling_

    model = plain_model(cond=False)
    variance_scaling_(model.decoders["image"].up.conv_out.weight, 0.01)  # NCSN++ starts it at ~0: x̂ = x
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    err = em.reconstruction_error(model, "image", x, draws=2, steps=3)
    assert np.isfinite(err) and 0 < err < 2 * 8  # bounded by the [-1, 1] range


def test_samples_shapes_and_conditioning() -> None:
    model = plain_model()
    imgs = em.class_samples(model, "label", "image", torch.tensor([0, 3, 3]), steps=2, seed=1)
    assert imgs.shape == (3, 1, 8, 8) and float(imgs.abs().max()) <= 1
    assert torch.equal(
        imgs, em.class_samples(model, "label", "image", torch.tensor([0, 3, 3]), steps=2, seed=1)
    )
    assert em.unconditional_samples(model, "image", 4, steps=2).shape == (4, 1, 8, 8)
    assert em.unconditional_samples(plain_model(cond=False), "image", 2, steps=2).shape == (2, 1, 8, 8)


def test_ood_confidences_modes_and_errors() -> None:
    model = plain_model()
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    for mode in ("mixed", "separate"):
        c_in, c_out = em.ood_confidences(
            model, "image", "label", x, "inverted", mode=mode, batch_size=8, draws=2
        )
        assert c_in.shape == c_out.shape == (10,)
    assert torch.equal(em.ood_inputs(x, "inverted"), -x)
    noise = em.ood_inputs(x, "noise")
    assert noise.shape == x.shape and float(noise.abs().max()) <= 1
    with pytest.raises(ValueError, match="unknown OOD kind"):
        em.ood_inputs(x, "blur")
    with pytest.raises(ValueError, match="unknown OOD mode"):
        em.ood_confidences(model, "image", "label", x, "noise", mode="both")


def test_zone_vote_confidence() -> None:
    """The confidence of a prediction is the share of draws from the item's zone classified the same."""
    model = plain_model()
    with torch.no_grad():
        model.encoders["label"].anchors.mul_(3.0)
    model.encoders["image"] = _OracleEncoder(model.encoders["label"])
    x, y = _class_images(4)
    pred, conf = em.zonal_predict(
        model, "image", "label", x, alpha=0.0, draws=3, vote_alpha=0.0, batch_size=40
    )
    assert torch.equal(conf, torch.ones(40))  # α = 0: every draw is the zone centre
    assert ev.accuracy(pred, y) > 0.9
    pred, conf = em.zonal_predict(model, "image", "label", x, draws=8, vote_alpha=1.0, batch_size=40)
    assert float(conf.min()) >= 0 and float(conf.max()) <= 1 and conf.shape == (40,)
    assert ((conf * 8) - (conf * 8).round()).abs().max() < 1e-6  # vote shares are multiples of 1/draws


def test_probe_features_kinds() -> None:
    model = plain_model()
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    shapes = {
        k: em.probe_features(model, "image", x, k, batch_size=4).shape
        for k in ("backbone", "anchor", "latent")
    }
    assert shapes["anchor"] == shapes["latent"] == (10, 8) and shapes["backbone"][0] == 10
    a0 = em.probe_features(model, "image", x, "latent0", seed=0)
    assert torch.allclose(a0, em.probe_features(model, "image", x, "latent0", seed=5))  # α = 0: no noise
    assert not torch.allclose(
        em.probe_features(model, "image", x, "latent", seed=0),
        em.probe_features(model, "image", x, "latent", seed=5),
    )
    with pytest.raises(ValueError, match="unknown probe feature"):
        em.probe_features(model, "image", x, "head")


def test_rf_baseline_decoder_ignores_the_latent(monkeypatch) -> None:
    model = plain_model(cond=False, use_latent=False)
    dec = model.decoders["image"]
    x, t = torch.rand(3, 1, 8, 8), torch.full((3,), 0.5)
    with torch.no_grad():
        assert torch.equal(dec.velocity(x, t, torch.randn(3, 8)), dec.velocity(x, t, torch.randn(3, 8)))
    lzn = plain_model(cond=False)
    with torch.no_grad():
        assert not torch.equal(
            lzn.decoders["image"].velocity(x, t, torch.randn(3, 8)),
            lzn.decoders["image"].velocity(x, t, torch.randn(3, 8)),
        )
    calls = []
    monkeypatch.setattr(dec, "reconstruct", lambda images, z, cond, **kw: calls.append(1) or images)
    assert em.reconstruction_error(model, "image", x, draws=5) == 0.0 and len(calls) == 5


def test_evaluate_without_classification_or_data(tmp_path) -> None:
    from lzn_core.eval.report import evaluate

    model = plain_model()
    x, y = _class_images(2)
    res = evaluate(
        model,
        {"image": x, "label": y},
        {"image": x, "label": y},
        samples=0,
        per_class=0,
        recon=0,
        classify=False,
    )
    assert res == {"n_test": 20, "classification": {}, "generation": {"image": {}}}
    assert evaluate(model, {}, {}) == {"n_test": 0, "classification": {}, "generation": {}}
