"""benchmarks/loader.py at tiny sizes: every reader is measured and the JSON and the page are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paths import ROOT


@pytest.mark.slow  # the benchmark in a subprocess: 4 s (load 3)
def test_loader_benchmark_writes_what_it_measured(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--steps", "2", "--repeats", "1"]
    cmd += ["--rgb-samples", "300", "--index-samples", "500", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "loader.json").read_text())
    readers = {(r["data"], r["reader"], r["num_workers"]) for r in results["rows"]}
    assert ("digits 8x8 gray", "wids permutation", 0) in readers and len(readers) == 6
    assert all(r["samples_per_s"] > 0 and r["samples_per_run"] == 256 for r in results["rows"])
    assert results["open_shard_set"]["samples"] == 500
    assert "| digits 8x8 gray | lzn loader | 0 |" in (tmp_path / "loader.md").read_text()
