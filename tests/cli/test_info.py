"""``lzn info``: what a model is, printed from its info.json (the session's monitored run), and from
an export without one."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from lzn_main import run_lzn

from lzn_core.io import read_info


@pytest.fixture
def run(monitored_run: Path) -> Path:
    """The session's monitored run (tests/support/monitored_run.py)."""
    return monitored_run


def test_lzn_info_prints_what_the_model_is(run: Path, capsys) -> None:
    rc, out, err = run_lzn(capsys, "info", str(run / "final"))
    assert rc == 0, err
    info = read_info(run / "final")
    lines = out.splitlines()
    assert lines[0] == f"digits_joint  ({run / 'final'})"
    assert any(line.startswith("latent       q = 8; solver euler") for line in lines)
    for name, m in info["modalities"].items():
        row = next(line for line in lines if f" {name}  " in line and m["decoder"] in line)
        assert re.search(rf" lzn +{re.escape(version('lzn'))} ", row), row
    assert "generate image conditioned on label (weight 1.0)" in out
    edges = " ".join(line[13:] for line in lines if line.startswith(("edges", " " * 13)))
    assert all(e in edges for e in info["edges"])
    assert "training     3 of 3 iterations, batch 8 (24 samples)" in out
    assert f"step 3: loss {info['training']['final']['loss']:.4g}" in out
    assert "eval at step 3: accuracy/image->label" in out
    rc, js, _ = run_lzn(capsys, "info", str(run), "--json")  # a run directory: its final/
    assert rc == 0 and {k: v for k, v in json.loads(js).items() if k not in ("path", "recipe")} == info


def test_lzn_info_of_an_export_without_info_json(run: Path, tmp_path: Path, capsys) -> None:
    old = tmp_path / "old" / "final"
    old.mkdir(parents=True)
    for name in ("model.safetensors", "recipe.yaml"):
        (old / name).write_bytes((run / "final" / name).read_bytes())
    (old.parent / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes())
    rc, out, err = run_lzn(capsys, "info", str(old))
    assert rc == 0, err
    assert "no info.json" in out and "training     3 of 3 iterations" in out
    rc, out, err = run_lzn(
        capsys, "info", str(old.parent)
    )  # the run directory: the same (lzn_core.io.run_metrics)
    assert rc == 0 and "training     3 of 3 iterations" in out, err
    (old.parent / "metrics.jsonl").rename(old.parent / "elsewhere.jsonl")  # an export outside a run
    rc, out, err = run_lzn(capsys, "info", str(old))
    assert rc == 0 and "no training metrics stored" in out, err
