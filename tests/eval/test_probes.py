"""Probes of frozen backbone features (case 2): the paper's linear probe, the kNN check, their
declaration in a recipe's ``eval:`` section and ``lzn eval`` running them (the ImageNet-style folder
converter: data/test_convert.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lzn_core.errors import LZNError, RecipeError
from lzn_core.eval import metrics as ev


def _clusters(classes: int, per_class: int, d: int = 32, *, seed: int = 0, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.arange(classes).repeat_interleave(per_class)
    return means[y] + spread * torch.randn(len(y), d, generator=g), y


# ------------------------------------------------------------------------------ metrics
def test_linear_probe_with_the_papers_settings_separates_separable_features() -> None:
    xtr, ytr = _clusters(10, 40)
    xte, yte = _clusters(10, 20, seed=1)
    res = ev.linear_probe_topk(xtr, ytr, xte, yte)  # AdamW, lr 3e-4, wd 0, 300 epochs, batch 8192
    assert res["top1"] > 0.99 and res["top5"] == 1.0 and res["train_loss"] < 0.3
    noise = ev.linear_probe_topk(torch.randn(400, 32), ytr, torch.randn(200, 32), yte, epochs=50)
    assert noise["top1"] < 0.25 and noise["top5"] < 0.7  # chance: 0.1 / 0.5
    again = ev.linear_probe_topk(xtr, ytr, xte, yte, epochs=3, batch_size=64, seed=4)
    assert again == ev.linear_probe_topk(xtr, ytr, xte, yte, epochs=3, batch_size=64, seed=4)


def test_linear_probe_input_errors() -> None:
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    with pytest.raises(ValueError, match="labels must be non-negative class indices"):
        ev.linear_probe_topk(x, y.float(), x, y)
    with pytest.raises(ValueError, match=r"features must be \(n, d\) with labels \(n,\)"):
        ev.linear_probe_topk(x, y[:3], x, y)
    with pytest.raises(ValueError, match="feature sizes differ: 4 vs 3"):
        ev.linear_probe_topk(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="a label is >= num_classes = 1"):
        ev.linear_probe_topk(x, y, x, y, num_classes=1)


def test_topk_and_knn_by_hand() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    assert ev.topk_accuracy(scores, torch.tensor([1, 2, 0]), (1, 2)) == pytest.approx(
        {"top1": 1 / 3, "top2": 2 / 3}
    )
    # three class-0 points slightly off the query's direction, one class-1 point right on it:
    # majority says 0, the exp(cos / T) weights say 1 at T = 0.01 and 0 at T = 10
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [0.85, 0.5]])
    labels = torch.tensor([1, 0, 0, 0])
    q, qy = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    assert ev.knn_accuracy(train, labels, q, qy, k=4, temperature=0.01)["top1"] == 1.0
    assert ev.knn_accuracy(train, labels, q, qy, k=4, temperature=10.0)["top1"] == 0.0
    assert ev.knn_accuracy(train, labels, q, qy, k=1, temperature=10.0)["top1"] == 1.0
    xtr, ytr = _clusters(10, 30)
    xte, yte = _clusters(10, 10, seed=1)
    assert ev.knn_accuracy(xtr, ytr, xte, yte)["top1"] > 0.99
    with pytest.raises(ValueError, match="k must be >= 1 and temperature > 0"):
        ev.knn_accuracy(xtr, ytr, xte, yte, k=0)


# ------------------------------------------------------------------ shards of full images
def _colour_png(cls: int, w: int, h: int) -> bytes:
    colours = [(230, 30, 30), (30, 200, 40), (20, 40, 220), (240, 240, 30)]
    img = Image.new("RGB", (w, h), colours[cls])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_full_image_shards(out: Path, n_train: int = 24, n_test: int = 12) -> None:
    """Shards of RGB images of varying size (35..60 px sides), one flat colour per class (4
    classes), keys png + cls: a stand-in for ImageNet's full-size images."""
    from lzn_core.data.shards import make_sample, write_split

    for split, count in (("train", n_train), ("val", n_test)):
        samples = (
            make_sample(
                f"s{i:05d}",
                {"png": _colour_png(i % 4, 35 + (7 * i) % 26, 36 + (11 * i) % 25), "txt": "x", "cls": i % 4},
            )
            for i in range(count)
        )
        write_split(out, split, samples, total=count, shard_size=max(1, count // 2), progress=False)


def _repr_recipe(tmp: Path, **eval_: object):
    from lzn_core.recipe import Recipe

    return Recipe.model_validate(
        {
            "latent": {"dim": 8, "solver": "euler", "steps": 4, "alpha": 0.45},
            "modalities": {
                "image": {
                    "plugin": "image",
                    "config": {
                        "encoder": "resnet18",
                        "proj_hidden": 16,
                        "decoder": False,
                        "resolution": 32,
                        "channels": 3,
                        "eval_resize": 36,
                    },
                },
                "label": {"plugin": "label", "config": {"num_classes": 4}},
            },
            "tasks": [{"kind": "align", "source": "image", "target": "image", "steps": 4}],
            "data": {"train": str(tmp / "train-*.tar"), "eval": str(tmp / "val-*.tar")},
            "train": {"batch_size": 8, "iterations": 4, "eval_every": 2},
            "eval": {"samples_per_class": 0, **eval_},
        }
    )


def test_backbone_probes_read_ragged_shards_at_the_evaluation_view(tmp_path) -> None:
    from lzn_core.eval.protocol import backbone_features, probe_eval
    from lzn_core.model import LZNModel

    write_full_image_shards(tmp_path)
    knn = {"features": "image", "labels": "label", "train_limit": 20, "batch_size": 5}
    probe = {"features": "image", "labels": "label", "epochs": 300, "batch_size": 7}
    torch.manual_seed(0)
    model = LZNModel(_repr_recipe(tmp_path, knn=knn, probe=probe)).eval()
    feats, labels = backbone_features(
        model, "image", "label", str(tmp_path / "train-*.tar"), limit=10, batch_size=4
    )
    assert feats.shape == (10, 512) and labels.tolist() == [i % 4 for i in range(10)]
    ecfg = model.recipe.eval
    res = probe_eval(model, model.recipe.data.train, model.recipe.data.eval, probe=ecfg.probe, knn=ecfg.knn)
    # a flat colour per class: every image of a class has the same evaluation view, so the same features
    assert res["knn"]["top1"] == 1.0 and res["knn"]["train_items"] == 20 and res["knn"]["test_items"] == 12
    lp = res["linear_probe"]
    assert lp["top5"] == 1.0 and 0.0 <= lp["top1"] <= 1.0 and lp["train_items"] == 24
    assert {lp[k] for k in ("optimizer", "epochs", "lr", "weight_decay", "batch_size")} == {
        "AdamW",
        300,
        3e-4,
        0.0,
        8192,
    }
    with pytest.raises(LZNError, match="the items of 'image' are not class indices"):
        backbone_features(model, "image", "image", model.recipe.data.eval)


def test_backbone_probe_needs_backbone_features(tmp_path) -> None:
    from lzn_core.eval.protocol import backbone_features
    from lzn_core.model import LZNModel

    write_full_image_shards(tmp_path)
    model = LZNModel(_repr_recipe(tmp_path))
    with pytest.raises(LZNError, match="the 'label' encoder exposes no backbone features"):
        backbone_features(model, "label", "label", model.recipe.data.eval)


def test_training_evaluator_runs_the_declared_probes_when_due(tmp_path) -> None:
    from lzn_core.eval.training import TrainingEvaluator, describe_metric
    from lzn_core.model import LZNModel

    write_full_image_shards(tmp_path)
    knn = {"features": "image", "labels": "label"}
    probe = {"features": "image", "labels": "label", "every": 4, "epochs": 20}
    recipe = _repr_recipe(tmp_path, knn=knn, probe=probe)
    torch.manual_seed(0)
    model = LZNModel(recipe)
    evaluator = TrainingEvaluator(model, tmp_path / "run")
    at2 = evaluator(model, 2)
    assert set(at2) == {"knn_top1/image", "knn_top5/image"} and at2["knn_top1/image"] == 1.0
    at4 = evaluator(model, 4)  # the probe's period and the last step
    assert set(at4) == {
        "knn_top1/image",
        "knn_top5/image",
        "linear_probe_top1/image",
        "linear_probe_top5/image",
    }
    assert model.training  # the evaluator restores the mode
    line = describe_metric(recipe, "linear_probe_top1/image", 0.5)
    assert (
        line
        == "linear probe top1 of the image backbone -> label (AdamW lr 0.0003, wd 0, 20 epochs, batch 8192): 0.5000"
    )
    assert (
        describe_metric(recipe, "knn_top5/image", 0.25)
        == "kNN top5 of the image backbone -> label (k=20, T=0.07): 0.2500"
    )
    assert (
        describe_metric(recipe, "class_consistency/image", 0.5)
        == "class_consistency of the image samples: 0.5000"
    )


def test_probe_declarations_are_checked_with_the_recipe(tmp_path) -> None:
    with pytest.raises(RecipeError) as err:
        _repr_recipe(
            tmp_path,
            probe={"features": "imgae", "labels": "label", "every": 3},
            knn={"features": "image", "labels": "lbl"},
        )
    text = str(err.value)
    assert "eval.probe.features: unknown modality 'imgae'; did you mean 'image'?" in text
    assert "eval.probe.every: 3 is not a multiple of train.eval_every = 2" in text
    assert "eval.knn.labels: unknown modality 'lbl'" in text


def test_imagenet_recipe_declares_the_papers_probe() -> None:
    from lzn_core.recipe import load_recipe

    r = load_recipe("imagenet_repr.yaml")
    p, k, img = r.eval.probe, r.eval.knn, r.modalities["image"].config
    assert (p.features, p.labels, p.epochs, p.lr, p.weight_decay, p.probe_batch_size) == (
        "image",
        "label",
        300,
        3e-4,
        0.0,
        8192,
    )
    assert p.every % r.train.eval_every == 0 and (k.features, k.labels, k.k, k.temperature) == (
        "image",
        "label",
        20,
        0.07,
    )
    assert (img.resolution, img.eval_resize, img.augment_kind) == (224, 256, "simclr")
    assert r.modalities["label"].config.num_classes == 1000


def test_lzn_eval_runs_the_recipes_probes(tmp_path, capsys) -> None:
    from lzn_core.cli import main
    from lzn_core.io.files import write_model
    from lzn_core.model import LZNModel

    write_full_image_shards(tmp_path)
    knn = {"features": "image", "labels": "label", "train_limit": 8}
    probe = {"features": "image", "labels": "label", "train_limit": 8}
    torch.manual_seed(0)
    write_model(LZNModel(_repr_recipe(tmp_path, knn=knn, probe=probe)), tmp_path / "model")
    assert (
        main(["eval", str(tmp_path / "model"), "--json", "--probe-epochs", "5", "--probe-train-limit", "0"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    lp, kn = res["probe"]["linear_probe image backbone -> label"], res["probe"]["knn image backbone -> label"]
    assert (lp["epochs"], lp["train_items"], kn["train_items"], kn["test_items"]) == (5, 24, 24, 12)
    assert kn["top1"] == 1.0 and res["preset"] == "paper"
    assert main(["eval", str(tmp_path / "model"), "--probe-epochs", "2"]) == 0
    table = capsys.readouterr().out
    assert "linear_probe image backbone -> label:" in table and "knn image backbone -> label:" in table
