"""Installed, not only cloned (issue 18, section 3): the wheel built from the repository holds the core,
the plugins and the recipes, and, installed into a fresh virtual environment outside the source
tree, lists the recipes, writes the digits shards and trains a copied recipe for a few iterations.

The environment reuses this interpreter's packages (torch, deepspeed, ...) through a ``.pth`` line,
so nothing is downloaded; ``lzn`` itself comes from the wheel only (PYTHONPATH is cleared and the
cwd is a temporary directory), which the test checks through ``lzn_core.__file__``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from paths import ROOT

# where each source folder goes in the wheel (pyproject's [tool.setuptools.package-dir])
LAYOUT = {
    "lzn_core/": "lzn_core/",
    "plugins/lzn_image/": "lzn_image/",
    "plugins/lzn_label/": "lzn_label/",
    "plugins/lzn_text/": "lzn_text/",
    "recipes/": "lzn_recipes/",
}
DATA_SUFFIXES = (".py", ".yaml", ".json", ".model", ".typed", ".sbatch")


def _source_files() -> list[str]:
    """What a clone holds: tracked files plus new files git does not ignore (not build outputs)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout of the repository (the wheel is built from its files)")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


def _sh(args: list, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps --no-build-isolation -w DIR .`` in a copy of the clone's files."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        tmp / "dist",
        ".",
    ]
    _sh(pip, src)
    (built,) = (tmp / "dist").glob("lzn-*.whl")
    return built


def test_the_wheel_holds_the_core_the_plugins_and_the_recipes(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        dst + rel[len(src) :]
        for rel in _source_files()
        for src, dst in LAYOUT.items()
        if rel.startswith(src) and rel.endswith(DATA_SUFFIXES)
    }
    assert {"lzn_recipes/train.py", "lzn_recipes/digits_joint.yaml", "lzn_recipes/ds/cpu.json"} <= expected
    assert "lzn_recipes/slurm/train.sbatch" in expected
    assert "lzn_text/example_tokenizer.model" in expected and "lzn_core/py.typed" in expected
    assert sorted(expected - names) == []  # e.g. a new subpackage missing from pyproject's packages
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(meta).decode()
    assert "[lzn]" in entry_points and "lzn = lzn_core.cli:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_lists_recipes_writes_shards_and_trains_a_copied_recipe(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "env"
    _sh([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(
        _sh([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip()
    )
    # this interpreter's packages (torch, deepspeed, pip, ...) after the env's own: no download
    (purelib / "_lzn_test_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _sh(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel],
        tmp_path,
    )

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        DS_ACCELERATOR="cpu",
        LZN_STRICT_PLUGINS="1",
    )
    where = json.loads(
        _sh(
            [
                python,
                "-c",
                "import json, lzn_core, lzn_recipes, lzn_image, lzn_label, lzn_text;"
                "print(json.dumps([m.__file__ for m in (lzn_core, lzn_recipes, lzn_image, lzn_label, lzn_text)]))",
            ],
            work,
            env,
        )
    )
    assert all(Path(f).resolve().is_relative_to(venv.resolve()) for f in where), where

    lzn = venv / "bin" / "lzn"
    listing = _sh([lzn, "recipes"], work, env)
    assert (
        "digits_joint.yaml" in listing and "train.py" in listing and str(purelib / "lzn_recipes") in listing
    )
    plugins = _sh([lzn, "plugins"], work, env)
    rows = {line.split()[0]: line.split()[1:] for line in plugins.splitlines()[1:] if line.strip()}
    assert all(rows[name][0] == "lzn" and rows[name][-1] == "ok" for name in ("image", "label", "text")), (
        plugins
    )
    _sh([lzn, "shards", "digits", "data/digits"], work, env)
    _sh([lzn, "recipes", "cp", "digits_joint.yaml", "."], work, env)
    assert (work / "digits_joint.yaml").is_file() and (work / "ds" / "cpu.json").is_file()
    overrides = [
        "train.iterations=3",
        "train.batch_size=16",
        "train.log_every=1",
        "train.ckpt_every=0",
        "latent.bank_size=16",
        "latent.dim=8",
        "eval.steps=4",
        "eval.samples_per_class=1",
        "modalities.image.config.sample_steps=2",
    ]
    out = _sh([python, "-m", "lzn_recipes.train", "--recipe", "digits_joint.yaml", *overrides], work, env)
    assert "run digits_joint: 3 iterations" in out
    info = json.loads((work / "runs" / "digits_joint" / "final" / "info.json").read_text())
    assert info["training"]["steps"] == 3
    assert {m["distribution"] for m in info["modalities"].values()} == {"lzn"}
    described = _sh([lzn, "info", "runs/digits_joint"], work, env)
    assert "3 of 3 iterations" in described
