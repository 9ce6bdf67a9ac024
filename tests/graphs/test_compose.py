"""compose(): task graphs on a tiny random model (shapes, determinism, conditioning, errors)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import Q, images, tiny_model

import lzn_core
from lzn_core.errors import ComposeError, LZNError
from lzn_core.graphs import (
    Chain,
    Classify,
    Decode,
    Edge,
    FanOut,
    Generate,
    Prediction,
    Represent,
    compose,
    parse_graph,
    possible_edges,
)
from lzn_core.recipe import AlignTask, GenerateTask


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ----------------------------------------------------------------------------- parsing


def test_parse_graph_forms() -> None:
    assert parse_graph("image -> label") == [Edge("image", "label")]
    assert parse_graph(" text->image -> label ") == [Edge("text", "image"), Edge("image", "label")]
    assert parse_graph(["image -> label", Edge("image", "latent")]) == [
        Edge("image", "label"),
        Edge("image", "latent"),
    ]
    assert parse_graph(AlignTask(source="image", target="label")) == [Edge("image", "label")]
    assert parse_graph(GenerateTask(target="image")) == [Edge("latent", "image")]
    assert parse_graph(GenerateTask(target="image", condition="label")) == [Edge("label", "image")]
    assert parse_graph({"kind": "align", "source": "text", "target": "image"}) == [Edge("text", "image")]
    assert str(Edge("image", "label")) == "image -> label"


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ("image", "expected 'source -> target'"),
        ("image -> ", "expected 'source -> target'"),
        ("-> label", "expected 'source -> target'"),
        ([], "empty task graph"),
        (42, "cannot compose a int"),
        ({"kind": "train", "target": "image"}, "invalid task"),
        ({"kind": "align", "source": "image"}, "invalid task"),
    ],
)
def test_parse_graph_errors(graph, message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        parse_graph(graph)


# ----------------------------------------------------------------------------- planning and errors


def test_possible_edges_of_the_joint_model(model) -> None:
    assert set(possible_edges(model)) == {
        "image -> image",
        "image -> label",
        "image -> latent",
        "label -> image",
        "label -> latent",
        "latent -> image",
        "latent -> label",
    }
    kinds = {e: type(compose(e, model=model)) for e in possible_edges(model)}
    assert kinds["image -> label"] is Classify and kinds["latent -> label"] is Classify
    assert kinds["image -> latent"] is Represent and kinds["latent -> image"] is Generate
    assert kinds["label -> image"] is Decode and kinds["image -> image"] is Decode


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ("audio -> label", "modality 'audio' is not in this model"),
        ("imgae -> label", "did you mean 'image'"),
        ("latent -> latent", "does nothing"),
        ("label -> label", "zonal: 'label -> label' is the identity"),
        ("image -> text", "'text' is not in this model"),
    ],
)
def test_impossible_edges_list_what_is_possible(model, graph: str, message: str) -> None:
    with pytest.raises(ComposeError, match=message) as info:
        compose(graph, model=model)
    assert "possible edges: image -> image, image -> label" in str(info.value)
    assert isinstance(info.value, LZNError)


def test_untrained_decoder_is_not_a_possible_target() -> None:
    align_only = tiny_model(cond=False, tasks=[{"kind": "align", "source": "image", "target": "label"}])
    assert "latent -> image" not in possible_edges(align_only)
    assert "image -> label" in possible_edges(align_only)
    with pytest.raises(ComposeError, match="decoder is not trained by this model's recipe"):
        compose("latent -> image", model=align_only)


def test_bad_options_and_shapes_of_multi_edge_graphs(model) -> None:
    with pytest.raises(ComposeError, match=r"unknown option\(s\) alpah .*options: alpha"):
        compose("image -> label", model=model, alpah=0.0)
    with pytest.raises(ComposeError, match="apply to single-edge graphs"):
        compose("label -> image -> label", model=model, alpha=0.0)
    with pytest.raises(ComposeError, match="neither a chain"):
        compose(["image -> label", "label -> image", "latent -> label"], model=model)
    with pytest.raises(ComposeError, match="unknown representation what='pixels'"):
        compose("image -> latent", model=model)(images(2), what="pixels")
    with pytest.raises(ComposeError, match="batch_size must be >= 1"):
        compose("image -> label", model=model)(images(2), batch_size=0)
    with pytest.raises(ComposeError, match="empty"):
        compose("image -> label", model=model)(images(0))
    with pytest.raises(ValueError, match="class indices must be in"):
        compose("label -> image", model=model)(torch.tensor([12]))


def test_public_compose_is_the_function(model) -> None:
    from lzn_core.graphs import compose as graphs_compose

    assert lzn_core.compose is graphs_compose
    graph = lzn_core.compose("image -> label", model=model)
    assert isinstance(graph, Classify) and "image -> label" in repr(graph) and "alpha=0.0" in repr(graph)
    assert graph.__call__.__doc__ and Classify.__doc__ and "nearest anchor" in Classify.__doc__


# ----------------------------------------------------------------------------- representation


def test_represent_latent_anchor_backbone(model) -> None:
    rep = compose("image -> latent", model=model)
    x = images(5)
    assert rep(x).shape == (5, Q)
    assert torch.allclose(rep(x, what="anchor"), model.encode("image", x))
    feats = rep(x, what="backbone")
    assert feats.shape[0] == 5 and feats.dim() == 2 and torch.isfinite(feats).all()
    # α = 0 is deterministic; α = 1 depends on the seed only
    assert torch.equal(rep(x), rep(x))
    a, b, c = rep(x, alpha=1.0, seed=3), rep(x, alpha=1.0, seed=3), rep(x, alpha=1.0, seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # a single (C, H, W) image is a batch of one
    assert rep(x[0]).shape == (1, Q)


def test_request_is_zoned_with_the_bank(model) -> None:
    """Latent of one image zoned with the bank == row of the bank+image forward flow."""
    from lzn_core import zoning

    x = images(1, seed=5)
    bank = model.bank("image")
    every = torch.cat([bank, model.encode("image", x)])
    with torch.no_grad():
        want = zoning.latents(every, torch.zeros(1, Q), alpha=0.0, g=1e-4, steps=10, index=torch.tensor([32]))
    got = compose("image -> latent", model=model)(x)
    assert torch.allclose(got, want, atol=1e-5)
    # bank_size limits the context; bank_size=0 zones the request alone
    assert not torch.allclose(compose("image -> latent", model=model, bank_size=4)(x), want, atol=1e-3)
    alone = compose("image -> latent", model=model, bank_size=0)(x)
    assert torch.allclose(alone, torch.zeros(1, Q), atol=1e-3)  # one anchor alone: its zone is all of R^q


def test_independent_items_are_zoned_against_the_bank_alone(model) -> None:
    """``independent=True``: an item's latent is its own row of the bank + item flow, whatever else
    the request holds (the same as a request of one); zoned together the items move each other."""
    from lzn_core import zoning

    x = images(6, seed=11)
    bank = model.bank("image")
    every = torch.cat([bank, model.encode("image", x[2:3])])
    with torch.no_grad():
        want = zoning.latents(every, torch.zeros(1, Q), alpha=0.0, g=1e-4, steps=10, index=torch.tensor([32]))
    rep = compose("image -> latent", model=model)
    alone = rep(x, independent=True)
    assert torch.allclose(alone[2:3], want, atol=1e-5)
    assert torch.allclose(alone[2:3], rep(x[2:3], independent=True), atol=1e-5)
    assert torch.allclose(alone[:3], rep(x[:3], independent=True), atol=1e-5)
    assert not torch.allclose(rep(x, independent=False)[2:3], want, atol=1e-3)  # the request's 5 others
    clf = compose("image -> label", model=model, independent=True, draws=0)
    labels = clf(x).labels
    assert torch.equal(labels, torch.cat([clf(x[i]).labels for i in range(6)]))
    with pytest.raises(ComposeError, match="independent=True .* needs the bank"):
        clf(x, bank_size=0)


def test_missing_bank_says_how_to_fix() -> None:
    no_bank = tiny_model(bank=False)
    with pytest.raises(ComposeError, match="no anchor bank yet.*bank_size=0"):
        compose("image -> label", model=no_bank)(images(2))
    assert compose("image -> label", model=no_bank, bank_size=0)(images(3)).labels.shape == (3,)
    with pytest.raises(ComposeError, match="bank_size must be >= 0"):
        compose("image -> label", model=no_bank, bank_size=-1)(images(3))


# ----------------------------------------------------------------------------- classification


def test_classify_shapes_and_determinism(model) -> None:
    clf = compose("image -> label", model=model)
    out = clf(images(6))
    assert isinstance(out, Prediction) and out.labels.shape == (6,) and out.labels.dtype == torch.int64
    assert out.confidence.shape == (6,) and ((out.confidence >= 0) & (out.confidence <= 1 + 1e-6)).all()
    assert int(out.labels.min()) >= 0 and int(out.labels.max()) < 10
    a, b = clf(images(6), alpha=1.0, seed=1, steps=20), clf(images(6), alpha=1.0, seed=1, steps=20)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.confidence, b.confidence)
    z = torch.randn(4, Q, generator=torch.Generator().manual_seed(0))
    lat = compose("latent -> label", model=model)(z)
    assert torch.equal(lat.labels, model.decoders["label"].sample(z))


def test_class_zone_latents_decode_to_their_class(model) -> None:
    """label -> latent -> label is the identity (zones are disjoint), at α = 0 and α = 1."""
    classes = torch.arange(10).repeat(3)
    chain = compose(["label -> latent", "latent -> label"], model=model)
    assert isinstance(chain, Chain) and chain.edge == "label -> latent -> label"
    assert torch.equal(chain(classes, seed=0), classes)
    rep = compose("label -> latent", model=model, alpha=1.0)
    z = rep(classes, seed=0)
    assert torch.equal(compose("latent -> label", model=model)(z).labels, classes)


class _Oracle(torch.nn.Module):
    """A 'trained' image encoder: the class is written in the mean pixel; anchor = label anchor of
    that class + a small image-dependent offset (distinct anchors within a class)."""

    def __init__(self, label_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.lab = label_encoder
        self.proj = torch.randn(64, Q, generator=torch.Generator().manual_seed(7)) * 0.05

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = ((x.mean(dim=(1, 2, 3)) + 1) * 5).round().long().clamp(0, 9)
        return self.lab.bank()[k] + x.flatten(1) @ self.proj


def _class_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (y.float() / 5 - 1).view(-1, 1, 1, 1) + 0.08 * torch.randn(n, 1, 8, 8, generator=g)
    return x - x.mean(dim=(1, 2, 3), keepdim=True) + (y.float() / 5 - 1).view(-1, 1, 1, 1), y


@pytest.mark.slow  # 40 lone images each zoned with a bank of 200: 26 s (load 3)
def test_one_image_vs_batch_consistency() -> None:
    """Classifying an image alone (zoned with the bank) agrees with classifying it in a batch."""
    m = tiny_model()
    with torch.no_grad():
        m.encoders["label"].anchors.mul_(3.0)
    m.encoders["image"] = _Oracle(m.encoders["label"])
    train, _ = _class_images(200, seed=1)
    with torch.no_grad():
        m.set_bank("image", m.encode("image", train))
    x, y = _class_images(40, seed=2)
    clf = compose("image -> label", model=m, draws=0)
    batch = clf(x).labels
    single = torch.cat([clf(x[i]).labels for i in range(len(x))])
    assert torch.equal(single, batch)  # independent (the default): each image is zoned with the bank alone
    together = clf(x, independent=False).labels
    assert (single == together).float().mean() >= 0.95
    assert (batch == y).float().mean() >= 0.9
    # without the bank a lone image has no context: its latent is the zone of a single anchor
    lone = torch.cat([clf(x[i], bank_size=0).labels for i in range(len(x))])
    assert (lone == y).float().mean() <= 0.3
    # ... while the paper's minibatch evaluation (a large inference batch, no bank) works
    assert (clf(x, bank_size=0, batch_size=40).labels == y).float().mean() >= 0.9


# ----------------------------------------------------------------------------- generation


def test_generate_from_prior_is_seeded_and_conditioned_by_the_label_flow(model) -> None:
    gen = compose("latent -> image", model=model)
    a, b, c = gen(3, seed=1), gen(3, seed=1), gen(3, seed=2)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) <= 1.0
    z = torch.randn(3, Q, generator=torch.Generator().manual_seed(5))
    labels = model.decoders["label"].sample(z)
    derived = gen(z, seed=0)
    assert torch.equal(derived, gen(z, condition=labels, seed=0))
    assert not torch.equal(derived, gen(z, condition=(labels + 1) % 10, seed=0))
    with pytest.raises(ComposeError, match=r"z must be \(B, 8\)"):
        gen(torch.randn(2, 3))
    with pytest.raises(ComposeError, match="number of samples must be >= 1"):
        gen(0)


def test_unconditioned_decoder_rejects_a_condition() -> None:
    m = tiny_model(cond=False)
    gen = compose("latent -> image", model=m)
    assert gen(2, seed=0).shape == (2, 1, 8, 8)
    with pytest.raises(ComposeError, match="takes no condition"):
        gen(2, condition=torch.tensor([1, 2]))


def test_label_to_image_uses_class_zone_and_one_hot(model) -> None:
    dec = compose("label -> image", model=model)
    classes = torch.tensor([3, 7])
    out = dec(classes, seed=0)
    assert out.shape == (2, 1, 8, 8) and torch.equal(out, dec([3, 7], seed=0))
    assert torch.equal(out, dec(classes, condition=classes, seed=0))
    assert not torch.equal(out, dec(classes, condition=torch.tensor([4, 1]), seed=0))
    assert dec.options["alpha"] is None and "alpha=None" in repr(dec)  # α = 1 for generation
    assert not torch.equal(dec(classes, seed=0), dec(classes, seed=1))


def test_reconstruction(model) -> None:
    rec = compose("image -> image", model=model)
    x = images(2)
    assert rec(x, seed=0).shape == (2, 1, 8, 8) and torch.equal(rec(x, seed=0), rec(x, seed=0))
    inv = rec(x, mode="invert", steps=4)
    assert inv.shape == (2, 1, 8, 8) and torch.isfinite(inv).all()
    with pytest.raises(ComposeError, match="unknown mode 'pixels'"):
        rec(x, mode="pixels")
    with pytest.raises(ComposeError, match="mode='invert' needs 'X -> X'"):
        compose("label -> image", model=model)([1], mode="invert")


def test_fan_out_and_chain(model) -> None:
    fan = compose(["image -> label", "image -> latent"], model=model)
    assert isinstance(fan, FanOut)
    out = fan(images(3), seed=0)
    assert set(out) == {"image -> label", "image -> latent"} and out["image -> latent"].shape == (3, Q)
    chain = compose("label -> image -> label", model=model)
    assert chain(torch.tensor([1, 2]), seed=0).shape == (2,)
    assert "label -> image -> label" in repr(chain)


def test_training_mode_is_restored() -> None:
    m = tiny_model()
    m.train()
    compose("image -> label", model=m)(images(2))
    assert m.training and m.decoders["image"].training


# ----------------------------------------------------------------------------- text edges


def test_text_edges() -> None:
    m = tiny_model(
        cond=False,
        text=True,
        tasks=[
            {"kind": "generate", "target": "image"},
            {"kind": "generate", "target": "text"},
            {"kind": "align", "source": "image", "target": "label"},
            {"kind": "align", "source": "text", "target": "image"},
        ],
    )
    edges = set(possible_edges(m))
    assert {"text -> image", "image -> text", "text -> label", "text -> latent", "latent -> text"} <= edges
    caps = ["a handwritten one", "the digit 2, written by hand"]
    assert compose("text -> image", model=m)(caps, seed=0).shape == (2, 1, 8, 8)
    out = compose("image -> text", model=m)(images(2), seed=0, max_len=4)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out)
    found = compose("image -> text", model=m)(images(2), method="retrieve", steps=10)
    from lzn_text.plugin import EXAMPLE_CAPTIONS

    assert all(s in EXAMPLE_CAPTIONS for s in found)
    assert compose("text -> label", model=m)("a handwritten one").labels.shape == (1,)
    assert compose("text -> latent", model=m)(caps).shape == (2, Q)


def test_third_modality_condition_is_read_at_the_zone_centre(monkeypatch) -> None:
    """text -> image with a label-conditioned image decoder: z is sampled in the caption's zone
    (α = 1), the one-hot is the label flow of the caption's zone centre (α = 0)."""
    m = tiny_model(
        text=True,
        tasks=[
            {"kind": "generate", "target": "image", "condition": "label"},
            {"kind": "generate", "target": "text"},
            {"kind": "align", "source": "image", "target": "label"},
            {"kind": "align", "source": "text", "target": "label"},
        ],
    )
    caps = ["a handwritten one", "the digit 2, written by hand", "a handwritten one"]
    centre = compose("text -> latent", model=m)(caps, alpha=0.0)
    seen: dict[str, torch.Tensor] = {}
    label_sample, image_sample = m.decoders["label"].sample, m.decoders["image"].sample

    def spy_label(z, *a, **k):
        seen["label"] = z.clone()
        return label_sample(z, *a, **k)

    def spy_image(z, *a, **k):
        seen["image"] = z.clone()
        return image_sample(z, *a, **k)

    monkeypatch.setattr(m.decoders["label"], "sample", spy_label)
    monkeypatch.setattr(m.decoders["image"], "sample", spy_image)
    compose("text -> image", model=m)(caps, alpha=1.0, seed=0)
    torch.testing.assert_close(seen["label"], centre)
    assert not torch.allclose(seen["image"], centre)  # the decoder's z is a sample of the zone
    compose("text -> image", model=m)(caps, alpha=0.0, seed=0)
    torch.testing.assert_close(seen["label"], seen["image"])  # at α = 0 they are one z
    seen.clear()
    compose("text -> image", model=m)(caps, alpha=1.0, seed=0, condition=torch.tensor([1, 2, 1]))
    assert "label" not in seen  # a given condition is used as is


@pytest.mark.slow  # 7 s (load 3)
def test_alpha_and_inference_batch_are_levers() -> None:
    """docs/method.md §5: without a bank, accuracy grows with the inference batch and as α -> 0."""
    m = tiny_model()
    with torch.no_grad():
        m.encoders["label"].anchors.mul_(3.0)
    m.encoders["image"] = _Oracle(m.encoders["label"])
    x, y = _class_images(80, seed=3)
    clf = compose("image -> label", model=m, bank_size=0)

    def acc(**kw) -> float:
        return float((clf(x, seed=0, **kw).labels == y).float().mean())

    small, large = acc(batch_size=4, alpha=0.0), acc(batch_size=80, alpha=0.0)
    assert large >= 0.85 and large > small + 0.2
    assert acc(batch_size=80, alpha=1.0) < large - 0.1


class _PlainEncoder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :Q]


class _FeatureEncoder(_PlainEncoder):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * 2


def test_backbone_is_the_declared_capability_and_explains_when_missing() -> None:
    m = tiny_model()
    x = images(3)
    m.encoders["image"] = _FeatureEncoder()
    assert torch.equal(compose("image -> latent", model=m, what="backbone")(x), x.flatten(1) * 2)
    m.encoders["image"] = _PlainEncoder()
    with pytest.raises(
        ComposeError, match=r"exposes no backbone features \(lzn_core.modality.BackboneFeatures\)"
    ):
        compose("image -> latent", model=m, what="backbone")(x)


@pytest.mark.slow
def test_confidence_is_lower_for_noise_than_for_digits(trained_digits) -> None:
    """Issue 14: the reported confidence means something. The last-step flow probability was ≈ 1 for
    every input; the zone vote gives uniform noise a lower confidence than real test digits."""
    import lzn_core
    from lzn_core.eval.metrics import auroc
    from lzn_core.eval.report import load_split

    model_dir, test_pattern = trained_digits
    model = lzn_core.load(model_dir)
    test = load_split(model, test_pattern, ["image", "label"])
    clf = compose("image -> label", model=model)
    real = clf(test["image"][:100], seed=0)
    noise = clf(torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1, seed=0)
    assert float((real.labels == test["label"][:100]).float().mean()) > 0.8  # the model has learnt digits
    assert float(real.confidence.mean()) > float(noise.confidence.mean()) + 0.15
    assert auroc(real.confidence, noise.confidence) > 0.7
    no_vote = clf(test["image"][:4], draws=0)
    assert bool(no_vote.confidence.isnan().all())  # draws=0: no confidence rather than a false one


# ----------------------------------------------------------------------------- a non-image generative modality
POINTS_PLUGIN = '''
"""points: K 3-D points per item ((B, K, 3) batches), a mean-pooled encoder, an MLP decoder."""
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

import lzn_core
from lzn_core.modality import ModalitySpec


class Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = 5


def decode(raw):
    try:
        return torch.tensor([float(v) for v in raw.decode().split(",")]).view(-1, 3)
    except (UnicodeDecodeError, ValueError, RuntimeError):
        raise ValueError(f"points: cannot parse {raw[:20]!r}") from None


class Encoder(nn.Module):
    def __init__(self, cfg, q):
        super().__init__()
        self.lin = nn.Linear(3, q)

    def forward(self, x):  # (B, K, 3) -> (B, q)
        return self.lin(x).mean(1)


class Decoder(nn.Module):
    kind = "generative"

    def __init__(self, cfg, q, condition_dim=0):
        super().__init__()
        self.k = cfg.k
        self.lin = nn.Linear(q + condition_dim, cfg.k * 3)

    def _out(self, z, cond):
        return self.lin(z if cond is None else torch.cat([z, cond.to(z)], 1)).view(-1, self.k, 3)

    def loss(self, z, x, cond=None, *, generator=None, rows=None):
        return ((self._out(z, cond) - x) ** 2).mean()

    def sample(self, z, cond=None, *, steps=None, generator=None):
        return self._out(z, cond)


@lzn_core.hookimpl
def lzn_register_modalities(register):
    register(ModalitySpec(name="points", config=Cfg, build_encoder=Encoder, build_decoder=Decoder,
                          shard_keys=("pts",), decode_sample=decode, accepts_condition=True,
                          example_items=lambda n: [",".join(["0.5"] * 15).encode()] * n))
'''


@pytest.fixture
def points_model(tmp_path, monkeypatch, lzn_plugins):
    """label + points (a registered test plugin whose sample is (B, K, 3), no as_batch hook)."""
    from lzn_core.model import LZNModel
    from lzn_core.plugins import PluginRegistry, discover_entry_points
    from lzn_core.recipe import validate_recipe

    info = tmp_path / "lzn_points-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lzn-points\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lzn]\npoints = _lzn_points_test_plugin\n")
    (tmp_path / "_lzn_points_test_plugin.py").write_text(POINTS_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    label = [ep for ep in discover_entry_points() if ep.name == "label"]
    lzn_plugins(PluginRegistry(label + discover_entry_points([str(tmp_path)]), environ={}))
    torch.manual_seed(0)
    recipe = validate_recipe(
        {
            "latent": {"dim": Q, "solver": "euler", "steps": 4},
            "modalities": {
                "points": {"plugin": "points"},
                "label": {"plugin": "label", "config": {"num_classes": 4}},
            },
            "tasks": [
                {"kind": "generate", "target": "points", "condition": "label"},
                {"kind": "align", "source": "points", "target": "label"},
            ],
            "data": {"train": "unused-*.tar"},
            "train": {"batch_size": 8, "iterations": 1},
        }
    )
    model = LZNModel(recipe).eval()
    model.set_bank("points", torch.randn(16, Q))
    return model


def test_compose_chains_through_a_non_image_generative_modality(points_model) -> None:
    """`label -> points -> label`: the points decoder's (B, K, 3) output is a batch of B items for the
    next edge (the core guesses nothing from a float 3-D tensor)."""
    assert points_model.specs["points"].as_batch is None
    labels = torch.tensor([0, 3, 1])
    points = compose("label -> points", model=points_model)(labels, seed=0)
    assert points.shape == (3, 5, 3)
    chain = compose("label -> points -> label", model=points_model)
    out = chain(labels, seed=0)
    assert out.shape == (3,) and out.dtype == torch.int64
    direct = compose("points -> label", model=points_model)(points, seed=0)
    assert torch.equal(out, direct.labels)
    assert compose("label -> points", model=points_model)(3, seed=0).shape == (
        1,
        5,
        3,
    )  # the label's as_batch
    with pytest.raises(ComposeError, match="empty or unsized request"):
        compose("points -> label", model=points_model)(torch.tensor(1.0))


def test_both_inference_paths_use_the_zonal_decoders_one_step_default(monkeypatch) -> None:
    """Classification (`image -> label`) and the condition read from z (`latent -> image`, a decoder
    conditioned on the label) flow with the zonal decoder's own default (the label's flow_steps)."""
    import lzn_core.model

    model = tiny_model()
    model.decoders["label"].steps = 7
    seen: list[int] = []
    assign = lzn_core.model.zoning.assign

    def spy(*args, **kwargs):
        seen.append(kwargs["steps"])
        return assign(*args, **kwargs)

    monkeypatch.setattr(lzn_core.model.zoning, "assign", spy)
    compose("image -> label", model=model, draws=0)(images(3), seed=0)
    assert seen == [7]
    compose("latent -> image", model=model)(2, seed=0)
    assert seen == [7, 7]
    compose("image -> label", model=model, draws=0, steps=3)(images(3), seed=0)  # a call's own steps win
    assert seen == [7, 7, 3]
