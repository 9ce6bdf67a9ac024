"""CPU smoke runs of the three case-study recipes on synthetic shards made here, with tiny
overrides: each trains a few iterations through recipes/train.py (one process) with the recipe's
own data pipeline (CIFAR's random flips, ImageNet's full-size images) and prints the evaluation
the full run prints (and logs it to metrics.jsonl)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from paths import ROOT
from PIL import Image

TINY = [
    "train.batch_size=8",
    "train.iterations=2",
    "train.log_every=1",
    "train.ckpt_every=0",
    "train.eval_every=1",
    "train.sample_every=0",
    "latent.bank_size=8",
    "latent.dim=8",
    "data.num_workers=0",
    "deepspeed=ds/cpu.json",
]
CIFAR = [
    "modalities.image.config.preset=small32",
    "modalities.image.config.sample_steps=2",
    "modalities.image.config.sample_method=euler",
    "eval.batch_size=16",
    "eval.steps=4",
    "eval.samples_per_class=1",
]
IMAGENET = [
    "modalities.image.config.resolution=32",
    "modalities.image.config.eval_resize=36",
    "modalities.image.config.encoder=resnet18",
    "modalities.image.config.proj_hidden=32",
    "latent.chunk=null",
    "eval.probe.every=2",
]


@pytest.fixture(scope="module")
def train():
    """recipes/train.py as a module. The one-process group its first run starts is left up for the
    rest of the session (DeepSpeed keeps references to it; tests/train/test_train.py tears it down)."""
    spec = importlib.util.spec_from_file_location("lzn_train_case_studies", ROOT / "recipes" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/cifar10: 32x32 RGB (train/test); data/imagenet: RGB images of 33..58 px sides (train/val),
    4 classes of a flat colour plus noise."""
    from lzn_core.data.shards import make_sample, write_split

    root = tmp_path_factory.mktemp("cases")
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


def _run(train, workdir: Path, monkeypatch, recipe: str, extra: list[str]) -> Path:
    monkeypatch.chdir(workdir)
    out = f"runs/case_{recipe}"
    assert train.main(["--recipe", recipe, "--output", out, *TINY, *extra]) == 0
    return workdir / out


def _evals(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if any(k.startswith("eval/") for k in r)}


@pytest.mark.parametrize("recipe", ["cifar_gen", "cifar_joint"])
def test_cifar_case_studies_train_with_flips_and_print_their_evaluation(
    train, workdir, monkeypatch, capsys, recipe
) -> None:
    import lzn_image.augment

    flips: list[tuple[bool, int]] = []
    real_flip = lzn_image.augment.flip

    def counting(images, config, *, generator=None, rows=None):
        flips.append((config.flip, rows[1]))
        return real_flip(images, config, generator=generator, rows=rows)

    monkeypatch.setattr(lzn_image.augment, "flip", counting)
    run = _run(train, workdir, monkeypatch, recipe, CIFAR)
    assert flips == [(True, 8), (True, 8)]  # the recipe's flips, on every training batch
    printed = capsys.readouterr().out
    assert f"run {recipe}: 2 iterations" in printed
    grid = printed.split("samples of image: ")[1].split()[0]
    assert Path(grid).is_file()
    evals = _evals(run)  # case 1 logs its grid (at the end here); case 3 its accuracy at every evaluation
    assert sorted(evals) == ([2] if recipe == "cifar_gen" else [1, 2]) and "eval/grid/image" in evals[2]
    if recipe == "cifar_joint":
        acc = float(printed.split("test accuracy image->label (zonal flow, alpha=0.0): ")[1].split()[0])
        assert acc == pytest.approx(evals[2]["eval/accuracy/image->label"], abs=1e-4)  # what is logged
        assert 0.0 <= evals[1]["eval/accuracy/image->label"] <= 1.0  # and at every evaluation
        assert "class_consistency of the image samples: " in printed
        assert 0.0 <= evals[2]["eval/class_consistency/image"] <= 1.0


def test_imagenet_case_study_trains_on_full_images_and_prints_the_probes(
    train, workdir, monkeypatch, capsys
) -> None:
    run = _run(train, workdir, monkeypatch, "imagenet_repr", IMAGENET)
    printed = capsys.readouterr().out
    assert "run imagenet_repr: 2 iterations" in printed
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
