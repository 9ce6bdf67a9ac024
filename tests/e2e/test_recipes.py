"""A smoke run of every shipped recipe through recipes/train.py (one process, in this pytest process,
CPU, gloo) with size overrides (tests/support/tiny_runs.py): two iterations, a finite loss, the
export, the loss curve and the lines a full run prints.

The case studies run on synthetic shards made here with their own data pipeline and check what
their full runs show: CIFAR (cifar_gen, cifar_joint) flips every training batch, logs its sample
grid (and cifar_joint its accuracy at every evaluation and its class consistency), printed as
logged; ImageNet (imagenet_repr) trains on full-size images of 33..58 px sides and prints the kNN
check at every evaluation and the linear probe at its period.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from paths import ROOT
from PIL import Image
from tiny_runs import COMMON, IMG8, IMG32, TEXT

EVERY_STEP = ["train.eval_every=1"]  # the case studies evaluate at steps 1 and 2
SMOKE = {
    "digits_joint": IMG8,
    "digits_rf_baseline": IMG8,
    "digits_text": IMG8 + TEXT,
    "cifar_gen": IMG32 + EVERY_STEP,
    "cifar_joint": IMG32 + EVERY_STEP,
    "imagenet_repr": [
        "modalities.image.config.resolution=32",
        "modalities.image.config.eval_resize=36",
        "modalities.image.config.encoder=resnet18",
        "modalities.image.config.proj_hidden=32",
        "latent.dim=8",
        "latent.chunk=null",
        "deepspeed=ds/cpu.json",
        "eval.probe.every=2",
        *EVERY_STEP,
    ],
}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def workdir(digits_workdir: Path) -> Path:
    """data/digits (the real digits); data/cifar10: 32x32 RGB noise (train 24 / test 16); data/imagenet:
    RGB images of 33..58 px sides (train 24 / val 12), 4 classes of a flat colour plus noise."""
    from lzn_core.data.shards import make_sample, write_split

    root = digits_workdir
    rng = np.random.default_rng(0)
    colours = np.array([(230, 30, 30), (30, 200, 40), (20, 40, 220), (240, 240, 30)])
    for split, n in (("train", 24), ("test", 16)):
        samples = (
            make_sample(
                f"c{i:05d}",
                {"png": _png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "txt": "x", "cls": i % 10},
            )
            for i in range(n)
        )
        write_split(root / "data" / "cifar10", split, samples, total=n, shard_size=12, progress=False)
    for split, n in (("train", 24), ("val", 12)):
        samples = []
        for i in range(n):
            h, w = 33 + (7 * i) % 26, 34 + (11 * i) % 25
            arr = np.clip(colours[i % 4] + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
            samples.append(make_sample(f"i{i:05d}", {"png": _png(arr), "txt": "x", "cls": i % 4}))
        write_split(root / "data" / "imagenet", split, iter(samples), total=n, shard_size=12, progress=False)
    return root


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _evals(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in _metrics(run) if any(k.startswith("eval/") for k in r)}


def _count_flips(train, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """(config.flip, rows of the batch) of every call of the image plugin's flip in the training loop;
    the calls of the memory plan's measured steps (``micro_batch_size: auto``) are forgotten."""
    import lzn_image.augment

    flips: list[tuple[bool, int]] = []
    real_flip, real_plan = lzn_image.augment.flip, train.planned_train

    def counting(images, config, *, generator=None, rows=None):
        flips.append((config.flip, rows[1]))
        return real_flip(images, config, generator=generator, rows=rows)

    def plan_then_count(*args, **kwargs):
        planned = real_plan(*args, **kwargs)
        flips.clear()
        return planned

    monkeypatch.setattr(lzn_image.augment, "flip", counting)
    monkeypatch.setattr(train, "planned_train", plan_then_count)
    return flips


def _check_cifar(recipe: str, run: Path, printed: str, flips: list[tuple[bool, int]]) -> None:
    assert flips == [(True, 8), (True, 8)]  # the recipe's flips, on every training batch
    evals = _evals(run)  # case 1 logs its grid (at the end here); case 3 its accuracy at every evaluation
    assert sorted(evals) == ([2] if recipe == "cifar_gen" else [1, 2]) and "eval/grid/image" in evals[2]
    if recipe == "cifar_joint":
        acc = float(printed.split("test accuracy image->label (zonal flow, alpha=0.0): ")[1].split()[0])
        assert acc == pytest.approx(evals[2]["eval/accuracy/image->label"], abs=1e-4)  # what is logged
        assert 0.0 <= evals[1]["eval/accuracy/image->label"] <= 1.0  # and at every evaluation
        assert "class_consistency of the image samples: " in printed
        assert 0.0 <= evals[2]["eval/class_consistency/image"] <= 1.0


def _check_imagenet(run: Path, printed: str) -> None:
    knn = "kNN top1 of the image backbone -> label (k=20, T=0.07): "
    probe = (
        "linear probe top1 of the image backbone -> label (AdamW lr 0.0003, wd 0, 300 epochs, batch 8192): "
    )
    for line in (knn, probe, knn.replace("top1", "top5"), probe.replace("top1", "top5")):
        assert 0.0 <= float(printed.split(line)[1].split()[0]) <= 1.0, line
    evals = _evals(run)  # the kNN at every evaluation, the probe at its period (2) = the last step
    assert set(evals[1]) == {"step", "eval/knn_top1/image", "eval/knn_top5/image"}
    assert {"eval/linear_probe_top1/image", "eval/linear_probe_top5/image", "eval/knn_top1/image"} <= set(
        evals[2]
    )
    # flat colours per class: the evaluation views of one class are nearly the same image
    assert evals[2]["eval/knn_top1/image"] > 0.9


@pytest.mark.parametrize("recipe", sorted(SMOKE))
def test_smoke_every_recipe(
    train, workdir: Path, monkeypatch: pytest.MonkeyPatch, recipe: str, capsys
) -> None:
    assert (ROOT / "recipes" / f"{recipe}.yaml").is_file()
    monkeypatch.chdir(workdir)
    flips = _count_flips(train, monkeypatch)
    out = f"runs/smoke_{recipe}"
    assert train.main(["--recipe", recipe, "--output", out, *COMMON, *SMOKE[recipe]]) == 0
    run = workdir / out
    rows = [r for r in _metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (run / "final" / "model.safetensors").is_file() and (run / "recipe.yaml").is_file()
    assert (run / "loss.png").is_file()
    printed = capsys.readouterr().out
    assert f"run {recipe}: 2 iterations" in printed and "run dir:" in printed
    if recipe in ("digits_joint", "cifar_joint"):
        assert "test accuracy image->label (zonal flow" in printed and "samples of image:" in printed
    if recipe in ("digits_joint", "cifar_joint", "cifar_gen"):
        grid = printed.split("samples of image: ")[1].split()[0]
        assert Path(grid).is_file()
    if recipe.startswith("cifar_"):
        _check_cifar(recipe, run, printed, flips)
    if recipe == "imagenet_repr":
        _check_imagenet(run, printed)
    from lzn_core.io import load

    model = load(run / "final")
    assert set(model.names) == set(yaml.safe_load((run / "recipe.yaml").read_text())["modalities"])
