"""docs/writing-a-plugin.md: the example package is discoverable, listed and conforming."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

from lzn_core.plugins import PluginRegistry, discover_entry_points
from lzn_core.testing import check_modality

EXAMPLE = ROOT / "docs/examples/lzn-example-modality"
TUTORIAL = ROOT / "docs/writing-a-plugin.md"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """What `pip install lzn-example-modality` would leave: a dist-info with the entry point."""
    info = tmp_path / "lzn_example_modality-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lzn-example-modality\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lzn]\nvector = lzn_example_modality\n")
    return tmp_path


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LZN_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=f"{site}{os.pathsep}{EXAMPLE}", OMP_NUM_THREADS="1", **extra)
    return env


def _lzn_plugins(site: Path, **extra: str) -> dict[str, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "lzn_core", "plugins", "--json"],
        cwd=ROOT,
        env=_env(site, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return {d["name"]: d for d in json.loads(out.stdout)}


def test_lzn_plugins_lists_the_example(site):
    data = _lzn_plugins(site)
    vector = data["vector"]
    assert (vector["distribution"], vector["version"], vector["status"]) == (
        "lzn-example-modality",
        "0.1",
        "ok",
    )
    assert vector["modalities"] == ["vector"]
    assert data["label"]["status"] == "ok"  # the built-ins come through the same group


def test_lzn_plugins_with_env_controls(site):
    only = _lzn_plugins(site, LZN_PLUGINS="vector")
    assert only["vector"]["status"] == "ok"
    assert {d["status"] for n, d in only.items() if n != "vector"} == {"disabled"}
    blocked = _lzn_plugins(site, LZN_DISABLE_PLUGINS="vector")
    assert blocked["vector"]["status"] == "disabled" and blocked["vector"]["modalities"] == []


def test_example_passes_the_conformance_kit(site, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    reg = PluginRegistry(discover_entry_points([str(site)]), environ={"LZN_STRICT_PLUGINS": "1"})
    spec = reg.get_modality("vector")
    report = check_modality(spec, latent_dim=8)  # the contract (the package's own tests run the trial)
    assert report.decoder_kind == "generative" and len(report.checks) >= 6


def test_example_package_own_tests_use_the_pytest_plugin(site):
    """The package's tests get the `lzn_check_modality` and `lzn_trial` fixtures from lzn's pytest11
    entry point."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=EXAMPLE,
        env=_env(site, LZN_STRICT_PLUGINS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout  # contract, trial (vector trains beside label and serves), decode


def test_tutorial_quotes_the_real_files():
    """Every block preceded by `<!-- file: PATH -->` in the tutorial is the file under docs/examples/."""
    text = TUTORIAL.read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\s*```\w*\n(.*?)```", text, flags=re.S)
    assert {p for p, _ in blocks} >= {
        "pyproject.toml",
        "lzn_example_modality/__init__.py",
        "lzn_example_modality/model.py",
        "tests/test_vector.py",
    }
    for path, body in blocks:
        assert body == (EXAMPLE / path).read_text(), f"{TUTORIAL.name} is out of date with {path}"
