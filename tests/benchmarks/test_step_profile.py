"""benchmarks/step_profile.py (issue 15): the parts of a real digits_joint step add up to the step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from paths import ROOT


@pytest.mark.slow  # the benchmark in a subprocess: 5 s (load 3)
def test_step_profile_splits_a_real_step(digits_workdir, tmp_path) -> None:
    """benchmarks/step_profile.py (issue 15): the parts of a real digits_joint step add up to the step."""

    out = tmp_path / "profile.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "step_profile.py"),
        "--recipe",
        "digits_joint.yaml",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--out",
        str(out),
        "train.batch_size=16",
        "latent.dim=8",
        "tasks.1.steps=5",
    ]
    done = subprocess.run(cmd, cwd=digits_workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    (res,) = json.loads(out.read_text())
    parts = {k: v for k, v in res["seconds"].items() if k != "total"}
    assert (
        all(v >= 0 for v in parts.values()) and parts["solver forward"] > 0 and parts["decoder forward"] > 0
    )
    assert parts["solver backward"] > 0 and parts["optimiser step"] > 0
    assert abs(sum(parts.values()) - res["seconds"]["total"]) < 0.2 * res["seconds"]["total"]
    assert "| solver backward |" in out.with_suffix(".md").read_text()
