"""The label modality (plugins/lzn_label): config, decode_sample, encoder, label flow, class latents."""

from __future__ import annotations

import pytest
import torch
from lzn_label.config import LabelConfig, decode_label
from lzn_label.model import LabelEncoder
from lzn_label.plugin import SPEC
from pydantic import ValidationError

from lzn_core.errors import ContractError
from lzn_core.model import ZonalDecoder
from lzn_core.plugins import PluginRegistry
from lzn_core.testing import check_modality, run_trial


@pytest.fixture
def label_spec():
    return PluginRegistry(environ={"LZN_PLUGINS": "label", "LZN_STRICT_PLUGINS": "1"}).get_modality("label")


def build(num_classes: int = 4, q: int = 8, **kw) -> tuple[LabelEncoder, ZonalDecoder]:
    cfg = LabelConfig(num_classes=num_classes, **kw)
    enc, dec = SPEC.build_encoder(cfg, q), SPEC.build_decoder(cfg, q)
    dec.bind(enc)
    return enc, dec


def test_registered_spec_is_the_plugin_spec(label_spec):
    assert label_spec is SPEC and label_spec.shard_keys == ("cls",)


def test_conformance(label_spec):
    rep = check_modality(label_spec, latent_dim=8)
    assert rep.decoder_kind == "zonal" and any("condition" in c for c in rep.checks)


def test_trains_and_serves_beside_a_generative_modality(label_spec):
    rep = run_trial(label_spec, latent_dim=8)  # the kit's trial, in this process
    assert rep.partner == "image" and "align image -> label" in rep.tasks
    assert {"image -> label", "label -> image", "image -> label -> image"} <= set(rep.edges)


def test_conformance_by_name(monkeypatch):
    from lzn_core.plugins import reset_plugins

    monkeypatch.setenv("LZN_PLUGINS", "label")
    reset_plugins()
    try:
        assert check_modality("label", latent_dim=4).modality == "label"
    finally:
        reset_plugins()


def test_config_defaults_and_errors():
    cfg = LabelConfig(num_classes=10)
    assert (cfg.flow_steps, cfg.init_scale) == (100, 1.0)
    with pytest.raises(ValidationError, match="num_classes"):
        LabelConfig()
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LabelConfig(num_classes=10, num_clases=3)
    with pytest.raises(ValidationError, match="greater than or equal to 2"):
        LabelConfig(num_classes=1)


@pytest.mark.parametrize("raw", [b"7", b" 7\n", b"007"])
def test_decode_sample(raw):
    assert decode_label(raw) == 7


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"-1", "not a non-negative integer"),
        (b"3.5", "not a non-negative integer"),
        (b"cat", "not a non-negative integer"),
        (b"", "not a non-negative integer"),
        (b"\xff\xfe", "not ASCII text"),
        ("7", "must be bytes, got str"),
    ],
)
def test_decode_sample_rejects(raw, message):
    with pytest.raises(ValueError, match=f"label: 'cls' .*{message}"):
        decode_label(raw)


def test_encoder_rows_bank_condition():
    enc, _ = build(num_classes=5, q=3)
    labels = torch.tensor([4, 0, 4])
    assert torch.equal(enc(labels), enc.anchors[[4, 0, 4]])
    assert enc.bank() is enc.anchors and enc.bank().shape == (5, 3)
    onehot = enc.condition(labels)
    assert onehot.dtype == torch.float32 and SPEC.condition_dim(LabelConfig(num_classes=5)) == 5
    assert torch.equal(onehot.argmax(1), labels) and torch.equal(onehot.sum(1), torch.ones(3))
    enc(labels).sum().backward()
    assert torch.equal(enc.anchors.grad.sum(1) != 0, torch.tensor([True, False, False, False, True]))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            torch.tensor([0, 5]),
            r"class indices must be in \[0, 4\] \(num_classes=5\), got values in \[0, 5\]",
        ),
        (torch.tensor([-1]), r"got values in \[-1, -1\]"),
        (torch.tensor([0.0, 1.0]), "expected an integer tensor of shape"),
        (torch.tensor([[0, 1]]), r"of shape \(B,\), got torch.int64 \(1, 2\)"),
    ],
)
def test_encoder_rejects_bad_labels(labels, message):
    enc, _ = build(num_classes=5)
    with pytest.raises(ValueError, match=message):
        enc(labels)


def test_decoder_is_zonal_without_loss():
    enc, dec = build()
    assert dec.kind == "zonal" and list(dec.parameters()) == []
    assert "_encoder" not in dict(dec.named_modules()) and not dec.state_dict()
    with pytest.raises(
        ContractError, match="zonal decoder .* no loss of its own; train the anchors with an align task"
    ):
        dec.loss(torch.zeros(2, 8), torch.tensor([0, 1]))
    with pytest.raises(NotImplementedError):
        dec.loss(torch.zeros(2, 8), torch.tensor([0, 1]))


def test_decoder_errors():
    with pytest.raises(ContractError, match=r"not bound to its encoder; call decoder.bind\(encoder\)"):
        ZonalDecoder().sample(torch.zeros(1, 4))
    with pytest.raises(ContractError, match=r"the encoder \(Linear\) must define bank\(\)"):
        ZonalDecoder().bind(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ZonalDecoder(steps=0)
    assert SPEC.build_decoder(LabelConfig(num_classes=3, flow_steps=7), 4).steps == 7  # the one default
    _, dec = build(num_classes=3, q=4)
    with pytest.raises(ValueError, match=r"z must be \(B, 4\), got \(2, 5\)"):
        dec.sample(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="takes no conditioning"):
        dec.sample(torch.zeros(2, 4), torch.zeros(2, 3))


def test_decoder_classifies_separated_latents():
    """Latents of well-separated anchors (computed by the forward flow) decode to their class."""
    torch.manual_seed(0)
    enc, dec = build(num_classes=6, q=8, init_scale=4.0)
    anchors = enc.bank().detach()
    classes = torch.arange(6).repeat(5)  # 30 latents, 5 per class
    from lzn_core import zoning

    z = zoning.latents(anchors, torch.randn(30, 8), alpha=0.0, steps=100, index=classes)
    labels = dec.sample(z)
    assert labels.dtype == torch.int64 and labels.shape == (30,)
    assert torch.equal(labels, classes)


def _label_model(num_classes: int, q: int):
    """A model of one label modality: class zones are LZNModel.zone over the fixed bank."""
    from lzn_core.model import LZNModel
    from lzn_core.recipe import Recipe

    recipe = Recipe.model_validate(
        {
            "latent": {"dim": q},
            "modalities": {"label": {"plugin": "label", "config": {"num_classes": num_classes}}},
            "tasks": [{"kind": "align", "source": "label", "target": "label"}],
            "data": {"train": "unused-*.tar"},
            "train": {"batch_size": 8, "iterations": 1},
        }
    )
    return LZNModel(recipe)


def test_class_zone_latents_decode_to_their_class():
    torch.manual_seed(1)
    model = _label_model(10, 16)
    classes = torch.tensor([3, 7, 7, 0, 9, 1, 3, 5])
    z = model.zone("label", classes, alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert z.shape == (8, 16) and z.dtype == torch.float32
    assert torch.equal(model.decoders["label"].sample(z), classes)
    centre = model.zone("label", classes, alpha=0.0)
    assert torch.allclose(centre[1], centre[2], atol=1e-5)  # α = 0: the zone centre, one point per class
    (model.zone("label", classes, alpha=1.0) ** 2).sum().backward()
    anchors = model.encoders["label"].anchors
    assert anchors.grad is not None and bool((anchors.grad != 0).any())


def test_class_zone_latents_look_gaussian():
    torch.manual_seed(0)
    model = _label_model(8, 6)
    with torch.no_grad():
        model.encoders["label"].anchors.mul_(3.0).add_(5.0)  # far from the origin
        z = model.zone("label", torch.arange(8).repeat(250), alpha=1.0)
    assert z.mean(0).abs().max() < 0.15 and (z.std(0) - 1).abs().max() < 0.15


def test_class_zone_rejects_bad_classes():
    model = _label_model(3, 4)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\]"):
        model.zone("label", torch.tensor([3]), alpha=1.0)
