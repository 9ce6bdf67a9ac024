"""Third-party modalities installed as real distributions train beside image + label under the
deepspeed launcher, and the exported model answers ``compose("<name> -> label")``.

Three packages, written independently: the tutorial's ``lzn-example-modality`` (vector, ``.npy``),
``tests/support/thirdparty/lzn-rowsum`` (rowsum, ``.json``: conditioned decoder, validate_item, backbone
features, a loss that draws noise) and ``tests/support/thirdparty/lzn-points`` (points, ``.pts``: a
variable number of points per item in its own batch type, ``PointBatch``: a padded tensor + mask
with ``len``, ``[lo:hi]``, pickling and ``to(device)``). Each passes the kit's trial, then trains under the launcher.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from paths import ROOT, THIRDPARTY

VENV_BIN = Path(sys.executable).parent


def _vector(img: np.ndarray) -> tuple[str, bytes]:
    a = img.astype(np.float32) / 255.0
    v = np.array([a[:4, :4].mean(), a[:4, 4:].mean(), a[4:, :4].mean(), a[4:, 4:].mean()], np.float32)
    buf = io.BytesIO()
    np.save(buf, v)
    return "npy", buf.getvalue()


def _rowsum(img: np.ndarray) -> tuple[str, bytes]:
    return "json", json.dumps([int(r) for r in (img.astype(int).sum(1) * 100 // (255 * 8))]).encode()


def _points(img: np.ndarray) -> tuple[str, bytes]:
    """The inked pixels (> 1/4 of full ink) as [x, y, ink] with x, y in [-1, 1]: 16 to 34 points."""
    ys, xs = np.nonzero(img > 64)
    points = [
        [round(x / 3.5 - 1, 4), round(y / 3.5 - 1, 4), round(img[y, x] / 255, 4)]
        for y, x in zip(ys, xs, strict=True)
    ]
    return "pts", json.dumps(points).encode()


PACKAGES = {
    "vector": (
        ROOT / "docs/examples/lzn-example-modality",
        "lzn-example-modality",
        _vector,
        {"dim": 4, "hidden": 32},
    ),
    "rowsum": (THIRDPARTY / "lzn-rowsum", "lzn-rowsum", _rowsum, {"rows": 8, "hidden": 48}),
    "points": (
        THIRDPARTY / "lzn-points",
        "lzn-points",
        _points,
        {"dim": 3, "max_points": 64, "hidden": 48},
    ),
}


def _shards(out: Path, key_of) -> None:
    """The digits with their png and cls, plus the modality's own key, through the public writer."""
    from sklearn.datasets import load_digits

    from lzn_core.data.shards import png_bytes, write_split

    d = load_digits()
    images = np.rint(d.images * (255 / 16)).astype(np.uint8)

    def samples(rows):
        for i in rows:
            ext, raw = key_of(images[i])
            yield f"d{i:05d}", {"png": png_bytes(images[i]), "cls": str(int(d.target[i])).encode(), ext: raw}

    write_split(out, "train", samples(range(0, 1500)), total=1500, progress=False)
    write_split(out, "test", samples(range(1500, 1797)), total=297, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_third_party_modality_trains_beside_image_and_label_and_serves(name: str, tmp_path: Path) -> None:
    package, dist, key_of, config = PACKAGES[name]
    site = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(site),
    ]
    # built from a copy: a build in place leaves egg-info that plugin discovery takes for an installed
    # distribution wherever the folder is on sys.path (tests/core/test_batch_types.py puts lzn-points there)
    source = tmp_path / "src"
    shutil.copytree(package, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([*pip, str(source)], check=True, capture_output=True, timeout=300)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}")
    listed = subprocess.run(
        [sys.executable, "-m", "lzn_core", "plugins", "--json", "--check"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    info = {p["name"]: p for p in json.loads(listed.stdout)}[name]
    assert (info["distribution"], info["status"], info["modalities"]) == (dist, "ok", [name])

    kit = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from lzn_core.testing import run_trial; print(run_trial({name!r}).edges)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert kit.returncode == 0, kit.stderr[-2000:]
    # the kit's trial trained and served it, the chain through it too
    assert all(f"'{e}'" in kit.stdout for e in (f"{name} -> label", f"label -> {name} -> label")), kit.stdout

    data = tmp_path / "data"
    _shards(data, key_of)
    recipe = yaml.safe_load((ROOT / "recipes" / "digits_joint.yaml").read_text())
    recipe.update(name=f"third_party_{name}", output_dir=str(tmp_path / "run"))
    recipe["modalities"][name] = {"plugin": name, "config": config}
    generate = {"kind": "generate", "target": name, "weight": 1.0}
    if name == "rowsum":
        generate["condition"] = "label"  # the framework builds its decoder with the one-hot's size
    recipe["tasks"] += [
        generate,
        {"kind": "align", "source": name, "target": "label", "weight": 1.0, "steps": 20},
    ]
    recipe["data"] = {"train": str(data / "train-*.tar"), "eval": str(data / "test-*.tar"), "num_workers": 0}
    recipe["train"].update(
        iterations=30, batch_size=64, warmup=5, log_every=10, eval_every=30, sample_every=30, ckpt_every=30
    )
    recipe["train"]["lr"][name] = 1e-3
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    checked = subprocess.run(
        [sys.executable, "-m", "lzn_core", "validate", str(path)], env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr

    with socket.socket() as s:  # a free port for the launcher's rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    launch = [
        str(VENV_BIN / "deepspeed"),
        "--master_port",
        port,
        "--num_gpus",
        "1",
        str(ROOT / "recipes" / "train.py"),
    ]
    run = subprocess.run(
        [*launch, "--recipe", str(path)], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert f"test accuracy {name}->label" in run.stdout  # its own accuracy, from the declared tasks
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(f"eval/accuracy/{name}->label" in r for r in rows)

    serve = (
        "import sys, torch, lzn_core\n"
        f"m = lzn_core.load({str(tmp_path / 'run' / 'final')!r})\n"
        f"assert '{name} -> label' in lzn_core.possible_edges(m)\n"
        "from lzn_core.eval.report import load_split\n"
        f"t = load_split(m, {str(data / 'test-*.tar')!r}, [{name!r}, 'label'])\n"
        f"p = lzn_core.compose('{name} -> label', model=m)(t[{name!r}][:64], seed=0)\n"
        "print(len(p.labels), float((p.labels == t['label'][:64]).float().mean()))\n"
    )
    served = subprocess.run(
        [sys.executable, "-c", serve], env=env, capture_output=True, text=True, timeout=300
    )
    assert served.returncode == 0, served.stderr[-2000:]
    n, acc = served.stdout.split()
    assert int(n) == 64 and 0.0 <= float(acc) <= 1.0
