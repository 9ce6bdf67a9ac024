"""The GPU check (benchmarks/gpu_check.sh, issue 16) end to end: its CPU rehearsal here, the real check on CUDA when present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from paths import ROOT


def _check(tmp_path: Path, *args: str, timeout: int) -> tuple[str, dict, str]:
    env = {**os.environ, "PY": sys.executable, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    if "--rehearse" in args:
        env["BUDGET"] = "5000"  # the CPU is slow: every configuration runs (the device's budget is 390 s)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    page = (tmp_path / "out" / "gpu.md").read_text()
    return page, json.loads((tmp_path / "out" / "gpu.json").read_text()), done.stdout


def _table_rows(page: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in page.splitlines()
        if line.startswith("| cifar_")
    ]


@pytest.mark.slow
def test_gpu_check_rehearses_on_cpu_end_to_end(tmp_path: Path) -> None:
    """The script's CPU rehearsal in this environment (--installed: no install): the versions as its
    first lines, the device checks of tests/e2e/test_gpu.py on the CPU with their numbers, synthetic
    CIFAR shards made by `lzn shards cifar10`, and the four configurations (cifar_joint / cifar_gen x
    fp32 / bf16), each through the real two-pass step with the memory plan's micro-batch."""
    page, report, stdout = _check(tmp_path, "--rehearse", "--installed", timeout=1500)
    first = stdout.splitlines()[:8]
    names = ["python", "torch", "numpy", "setuptools", "typing_extensions", "pydantic", "deepspeed", "lzn"]
    assert [line.split()[1] for line in first] == names, first
    assert all(line.startswith("gpu_check: ") and "MISSING" not in line for line in first)
    checks = report["checks"]
    assert checks["returncode"] == 0, checks
    by_test = {r["test"]: r for r in checks["records"]}
    assert by_test["test_bf16_autocast_leaves_the_zoning_unchanged"]["latents_max_abs_difference"] == 0.0
    assert by_test["test_two_passes_give_the_one_pass_gradient_on_the_device"]["relative_difference"] < 1e-4
    assert by_test["test_a_ragged_batch_steps_with_every_tensor_on_the_device"]["batch_tensors_checked"] > 0
    assert "test_the_plan_predicts_the_peak_on_the_device" in by_test
    rows = report["rows"]
    assert [(r["recipe"], r["precision"]) for r in rows] == [
        ("cifar_joint", "fp32"),
        ("cifar_joint", "bf16"),
        ("cifar_gen", "fp32"),
        ("cifar_gen", "bf16"),
    ]
    for row, cells in zip(rows, _table_rows(page), strict=True):
        assert row["nets"] == "TwoPass" and row["passes"] == 2 and row["micro_batch"] == row["batch"] // 2
        assert row["skipped_steps"] == 0 and row["timed_steps"] >= 1
        assert row["images_per_s"] > 0 and 0 < row["solver_share"] < 1
        assert row["solver_rows"] == row["batch"]  # the flow runs over every anchor of the batch
        assert cells[3] == f"{row['images_per_s']:.0f}" and cells[4] == f"{row['step_ms']:.0f} ms"
        assert row["plan"].startswith("memory plan: 8 rows a rank in 2 passes of 4 rows")
    assert "--rehearse" in page and "CPU" in page and "Device checks" in page
    assert (tmp_path / "work" / "cifar").is_dir() and list((tmp_path / "work" / "cifar").glob("train-*.tar"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_runs_on_cuda(tmp_path: Path) -> None:
    """On a CUDA machine with the project installed: the full check (batch 2000, full model size)."""
    page, report, _ = _check(tmp_path, "--installed", timeout=900)
    rows = report["rows"]
    assert rows and all(r["batch"] == 2000 and r["peak_kind"] == "GPU allocated" for r in rows)
    assert report["checks"]["returncode"] == 0
