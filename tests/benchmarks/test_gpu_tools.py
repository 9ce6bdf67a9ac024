"""The GPU check's tools (benchmarks/gpu_check.py, _carry.py, gpu_install.sh): the synthetic CIFAR
tarball, the pinned versions that travel to the GPU machine, and the install guard. (The check's
CPU rehearsal end to end: tests/e2e/test_gpu_check.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paths import ROOT


def test_synthetic_cifar_tarball_has_the_official_layout(tmp_path: Path) -> None:
    """The check's data: a cifar-10-python tarball (5 training batches, a test batch, 3072 bytes an
    image, 10 classes) that the project's own converter reads."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import make_data

    make_data(tmp_path / "shards", 50)
    from lzn_core.data import loader
    from lzn_core.plugins import get_modality

    specs = {"image": get_modality("image"), "label": get_modality("label")}
    batch = next(iter(loader(str(tmp_path / "shards" / "train-*.tar"), specs, batch_size=50, seed=0)))
    assert batch["image"].shape == (50, 3, 32, 32)
    assert set(batch["label"].tolist()) <= set(range(10)) and len(set(batch["label"].tolist())) > 3


def test_carry_pins_are_the_versions_the_project_is_tested_with() -> None:
    """benchmarks/gpu_carry.txt (what travels to the GPU machine) names the versions this
    environment runs, and setuptools >= 77 for the build (pyproject.toml's [build-system])."""
    from importlib import metadata

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _carry

    for section in ("wheels", "source"):
        for name, version in _carry.pins(section):
            assert metadata.version(name) == version, (name, version, metadata.version(name))
    ((name, version),) = _carry.pins("build")
    assert name == "setuptools" and int(version.split(".")[0]) >= 77
    assert 'requires = ["setuptools>=77"]' in (ROOT / "pyproject.toml").read_text()


def test_the_carry_check_refuses_two_versions_of_one_wheel(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _carry

    (tmp_path / "build").mkdir()
    for f in ("pydantic-2.14.4-py3-none-any.whl", "pydantic-2.13.0-py3-none-any.whl"):
        (tmp_path / f).write_bytes(b"")
    assert _carry.check(tmp_path) == 1


def test_the_install_guard_asks_the_installed_distribution_not_the_current_directory(tmp_path: Path) -> None:
    """Found failure 1 of issue 24: `python -c "import lzn_core"` from the repository root succeeds
    through the current directory in an interpreter that has nothing installed, so the install was
    skipped. The guard (`_carry.py editable`, run outside the checkout) reads lzn's direct_url.json."""
    guard = [str(ROOT / "benchmarks" / "_carry.py"), "editable", str(ROOT)]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")
    old_guard = subprocess.run([bare, "-c", "import lzn_core"], cwd=ROOT, capture_output=True)
    assert old_guard.returncode == 0  # what fooled the old script: nothing is installed here
    assert subprocess.run([bare, *guard], cwd="/").returncode == 1  # the guard sees it
    assert subprocess.run([sys.executable, *guard], cwd="/").returncode == 0  # this venv: editable from here
    other = subprocess.run([sys.executable, guard[0], "editable", str(tmp_path)], cwd="/")
    assert other.returncode == 1  # installed, but from another checkout
    text = (ROOT / "benchmarks" / "gpu_install.sh").read_text()
    assert 'outside "$repo/benchmarks/_carry.py" editable "$repo"' in text
    assert "bash benchmarks/gpu_install.sh carry" in (ROOT / "benchmarks" / "gpu_check.sh").read_text()
