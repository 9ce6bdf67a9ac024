"""benchmarks/text.py on a 2-iteration digits_text run: every metric is a rate in [0, 1], the JSON and
the page are written, and the digit a caption names is read the way the metrics need."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from paths import ROOT
from tiny_runs import COMMON, IMG8, TEXT


@pytest.mark.slow  # a digits_text run and the benchmark: 4 s (load 3)
def test_text_benchmark_measures_a_trained_run(train, digits_workdir, monkeypatch, tmp_path) -> None:
    """benchmarks/text.py on a 2-iteration digits_text run: every metric is a rate in [0, 1], the
    JSON is written, and the digit a caption names is read the way the metrics need."""
    monkeypatch.chdir(digits_workdir)
    run = digits_workdir / "runs" / "digits_text"
    assert train.main(["--recipe", "digits_text", "--output", str(run), *COMMON, *IMG8, *TEXT]) == 0
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import text as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert [
        bench.named_digit(c)
        for c in (
            "an 8x8 picture of a handwritten one",
            "the number one (1) in handwriting",
            "a small blurry 7",
            "digits 3 and 4",
            "a picture",
        )
    ] == [1, 1, 7, -1, -1]
    out = tmp_path / "text.json"
    assert bench.main(["--model", str(run / "final"), "--out", str(out), "--steps", "4"]) == 0
    got = json.loads(out.read_text())
    rates = ("retrieval_r1", "caption_generation", "caption_to_image", "label_flow_accuracy", "text_to_label")
    assert all(0.0 <= got[k] <= 1.0 for k in rates), got
    assert got["n_test"] == 50 and len(got["examples"]) == 10
    assert Path(got["grid"]).is_file() and len(got["grid_captions"]) == 10
    page = out.with_suffix(".md").read_text()
    assert "| `caption_to_image` |" in page and "![caption -> image](text.png)" in page
    assert all(
        isinstance(e["generated"], str) and bench.named_digit(e["retrieved"]) in range(10)
        for e in got["examples"]
    )
