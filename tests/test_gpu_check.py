"""The GPU check (benchmarks/gpu_check.sh, issue 16): rehearsed on CPU here, run on CUDA when present."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _check(tmp_path: Path, *args: str, timeout: int) -> tuple[str, list[dict]]:
    env = {**os.environ, "PY": sys.executable, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    page = (tmp_path / "out" / "gpu.md").read_text()
    return page, json.loads((tmp_path / "out" / "gpu.json").read_text())


def _table_rows(page: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in page.splitlines()
        if line.startswith("| cifar_")
    ]


@pytest.mark.slow
def test_gpu_check_rehearses_on_cpu_end_to_end(tmp_path: Path) -> None:
    """The script's CPU rehearsal: synthetic CIFAR shards made by `lzn shards cifar10`, the four
    configurations (cifar_joint / cifar_gen x fp32 / bf16) each through the real two-pass step,
    and a page whose numbers come from the JSON rows it measured."""
    page, rows = _check(tmp_path, "--rehearse", timeout=900)
    assert [(r["recipe"], r["precision"]) for r in rows] == [
        ("cifar_joint", "fp32"),
        ("cifar_joint", "bf16"),
        ("cifar_gen", "fp32"),
        ("cifar_gen", "bf16"),
    ]
    for row, cells in zip(rows, _table_rows(page), strict=True):
        assert row["passes"] == "TwoPass" and row["micro_batch"] < row["batch"]
        assert row["skipped_steps"] == 0 and row["timed_steps"] >= 1
        assert row["images_per_s"] > 0 and 0 < row["solver_share"] < 1
        assert row["solver_rows"] == row["batch"]  # the flow runs over every anchor of the batch
        assert cells[3] == f"{row['images_per_s']:.0f}" and cells[4] == f"{row['step_ms']:.0f} ms"
    assert "--rehearse" in page and "CPU" in page
    assert (tmp_path / "work" / "cifar").is_dir() and list((tmp_path / "work" / "cifar").glob("train-*.tar"))


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


def test_make_leaves_the_accelerator_to_the_user() -> None:
    """No global DS_ACCELERATOR in the Makefile (a GPU run launched from make would silently use the
    CPU); `make run` defaults it to cpu only when unset, `make test` sets it for the tests."""
    text = (ROOT / "Makefile").read_text()
    assert not re.search(r"^export DS_ACCELERATOR", text, re.M)
    assert "DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu}" in text
    assert "DS_ACCELERATOR=cpu $(PY) -m pytest" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_runs_on_cuda(tmp_path: Path) -> None:
    """On a CUDA machine: the full check (batch 2000, full model size) within its time budget."""
    page, rows = _check(tmp_path, timeout=900)
    assert rows and all(r["batch"] == 2000 and r["peak_kind"] == "GPU allocated" for r in rows)
    assert "not run" not in page or len(rows) >= 2
