"""benchmarks/digits.py and its helpers (_stats, _digits_report, _runs): the seed statistics and verdicts,
the report, the variants, the CE baseline, a quick run (the attribute captions: data/test_digits.py)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from paths import ROOT

from lzn_core.data import digits as dd


@pytest.fixture(scope="module")
def bench():
    """The benchmark modules (benchmarks/ is not a package): ``(_stats, digits, _digits_report, text)``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield tuple(importlib.import_module(m) for m in ("_stats", "digits", "_digits_report", "text"))
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


# ----------------------------------------------------------------------------- the verdict rule
def test_a_difference_inside_the_seed_spread_does_not_reproduce(bench) -> None:
    stats = bench[0]
    a, b = [0.90, 0.95, 0.86], [0.91, 0.85, 0.89]  # a is higher on average, by less than the spread
    t = stats.welch(a, b)
    assert t.diff > 0 and not t.significant and t.low < 0 < t.high
    assert stats.directional(t, 1) == "within the spread (leans the claimed way)"


def test_a_difference_beyond_the_seed_spread_reproduces_in_its_direction_only(bench) -> None:
    stats = bench[0]
    a, b = [0.950, 0.955, 0.948], [0.900, 0.905, 0.898]
    t = stats.welch(a, b)
    assert t.significant and t.low > 0
    assert stats.directional(t, 1) == "reproduces"
    assert stats.directional(t, -1) == "does not reproduce (significant, the other way)"
    assert stats.directional(stats.welch(a[:1], b), 1).startswith("n/a")  # one seed: no spread, no test


def test_paired_test_uses_the_per_seed_differences(bench) -> None:
    stats = bench[0]
    # a large spread between seeds, but every seed gains the same 1 point: paired, that is beyond the spread
    a, b = [0.80, 0.90, 0.70], [0.79, 0.89, 0.69]
    assert not stats.welch(a, b).significant
    t = stats.paired(a, b)
    assert t.significant and stats.directional(t, 1) == "reproduces"


def test_equivalence_needs_the_interval_inside_the_margin(bench) -> None:
    stats = bench[0]
    close = stats.welch([0.961, 0.963, 0.962], [0.965, 0.964, 0.966])  # 0.3 pt lower, tight
    assert stats.equivalent(close, 0.01, one_sided=True).startswith("reproduces")
    far = stats.welch([0.93, 0.931, 0.929], [0.98, 0.981, 0.979])  # 5 pt lower
    assert stats.equivalent(far, 0.01, one_sided=True) == "does not reproduce (significant difference)"
    noisy = stats.welch([0.90, 0.99, 0.95], [0.96, 0.95, 0.97])
    assert stats.equivalent(noisy, 0.01, one_sided=True).startswith("within the spread")


def test_summary_text_is_mean_and_sample_std(bench) -> None:
    s = bench[0].summary([0.95, 0.96, 0.97, float("nan")])
    assert s.n == 3 and s.mean == pytest.approx(0.96) and s.std == pytest.approx(0.01)
    assert s.text(".1f", 100, "%") == "96.0 ± 1.0%"
    assert bench[0].summary([]).text() == "–"


# ----------------------------------------------------------------------------- the digits report
def _runs(metric_values: dict[str, list[float]]) -> list[dict]:
    n = len(next(iter(metric_values.values())))
    return [
        {
            "seed": i,
            "train_seconds": 60.0,
            "train_start": 1000.0 + 100 * i,
            "eval_seconds": 10.0,
            "eval_end": 1070.0 + 100 * i,
            "metrics": {k: v[i] for k, v in metric_values.items()},
        }
        for i in range(n)
    ]


def _fake_results(digits, skip: tuple[str, ...]) -> dict:
    cfg = dict(digits.QUICK)
    acc = {
        "joint": [0.950, 0.955, 0.948],
        "ce": [0.980, 0.982, 0.979],
        "align_only": [0.900, 0.905, 0.898],
        "cutoff05": [0.951, 0.947, 0.953],
        "cw_on": [0.80, 0.85, 0.75],
        "cw_off": [0.78, 0.83, 0.76],  # lower on average, by less than the spread
    }
    variants = {}
    for v in digits.variants(cfg).values():
        seeds = list(cfg["text_seeds"] if v.measure == "text" else (0, 1, 2))
        values = {
            "accuracy": acc.get(v.name, [0.95, 0.95, 0.95]),
            "train_accuracy": [1.0] * 3,
            "recon_error": [0.5, 0.52, 0.51] if v.name == "rf_baseline" else [0.3, 0.31, 0.29],
        }
        runs = [] if v.name in skip else _runs(values)
        variants[v.name] = {
            "description": v.description,
            "group": v.group,
            "measure": v.measure,
            "planned": seeds,
            "seeds": [r["seed"] for r in runs],
            "runs": runs,
        }
    return {
        "settings": {k: list(x) if isinstance(x, tuple) else x for k, x in cfg.items()},
        "iterations": cfg["iterations"],
        "variants": variants,
        "gap_rows": digits.gap_rows(cfg),
        "not_run": {k: v["planned"] for k, v in variants.items() if not v["runs"]},
        "figures": {},
        "command": "python benchmarks/digits.py --quick",
    }


def _claim_rows(page: str) -> dict[str, str]:
    return {ln.split(" | ")[0].lstrip("| "): ln for ln in page.splitlines() if ln.startswith("| ")}


def test_report_judges_claims_by_the_spread_and_marks_missing_variants_not_run(bench, tmp_path) -> None:
    _, digits, report, _ = bench
    missing = ("cw_off", "text_templates", "text_attributes", "its20", "ce_its20")
    res = _fake_results(digits, missing)
    out, docs = tmp_path / "results", tmp_path / "docs" / "results.md"
    report.write_report(res, tmp_path / "runs", out, docs)
    page = docs.read_text()
    rows = _claim_rows(page)
    assert rows["8: joint beats alignment only"].endswith("| reproduces |")  # 5 pt, spread 0.4 pt
    assert "does not reproduce" in rows["case 3: the LZN classifier matches the same encoder + CE head"]
    assert rows["6/9: the latent cuts reconstruction error"].endswith("| reproduces |")
    assert rows["11: class weights help at a small batch"].endswith("| not run (`cw_off` not run) |")
    not_run = page.split("## Not run", 1)[1].split("\n## ", 1)[0]
    assert all(f"* `{name}`" in not_run for name in missing) and "`joint`" not in not_run
    assert "| iterations 4 -> 20 (`its20`) |" in page and "not run (`its20`, `ce_its20`)" in page
    gap = {r["lzn"]: r for r in json.loads((out / "digits.json").read_text())["gap"]}
    assert gap["joint"]["gap"] == "open" and gap["its20"]["gap"].startswith("not run")
    assert (out / "digits_claims.png").is_file() and (out / "digits_gap.png").is_file()
    assert "LZN 95.1 ± 0.4% vs CE 98.0 ± 0.2%" in page


def test_report_with_every_variant_has_no_not_run_section(bench, tmp_path) -> None:
    _, digits, report, _ = bench
    res = _fake_results(digits, ())
    docs = tmp_path / "results.md"
    report.write_report(res, tmp_path / "runs", tmp_path / "out", docs)
    page = docs.read_text()
    assert "## Not run" not in page and "not run" not in page
    assert _claim_rows(page)["11: class weights help at a small batch"].endswith(
        "| within the spread (leans the claimed way) |"
    )


def test_variants_are_valid_recipes_in_priority_order(bench, tmp_path) -> None:
    from lzn_core.recipe import load_recipe

    _, digits, _, _ = bench
    import _runs

    cfg = {**digits.QUICK, "iterations": 400}
    vs = digits.variants(cfg)
    names = list(vs)
    assert names[:7] == ["joint", "ce", "align_only", "cutoff05", "rf_baseline", "cw_on", "cw_off"]
    assert names[7:9] == ["text_templates", "text_attributes"]
    assert names[-4:] == ["its800", "ce_its800", "its2000", "ce_its2000"]
    data = {"digits": tmp_path / "d", "digits-attributes": tmp_path / "a"}
    got = {}
    for name, v in vs.items():
        path = _runs.write_recipe(v, 1, cfg, data, tmp_path / "runs", tmp_path / f"{name}.yaml")
        got[name] = load_recipe(path)
    assert got["joint"].train.iterations == 400 and got["joint"].seed == 1
    assert got["its2000"].train.iterations == 2000 and got["ce_its800"].train.iterations == 800
    assert [t.kind for t in got["align_only"].tasks] == ["align"]
    assert got["cutoff05"].tasks[1].cutoff == 0.05 and got["joint"].tasks[1].cutoff == 0.2
    assert got["rf_baseline"].modalities["image"].config.use_latent is False
    assert got["cw_on"].tasks[0].class_weights and not got["cw_off"].tasks[0].class_weights
    assert got["cw_on"].train.batch_size == cfg["small_batch"]
    assert got["loss_log"].tasks[1].loss == "log" and got["alpha0"].tasks[1].alpha == 0.0
    assert got["text_attributes"].data.train.startswith(str(tmp_path / "a"))


def test_ce_baseline_trains_the_recipe_encoder(bench, tmp_path) -> None:
    _, digits, _, _ = bench
    import _runs

    cfg = {**digits.QUICK, "iterations": 2, "batch_size": 8}
    v = digits.variants(cfg)["ce"]
    path = _runs.write_recipe(v, 0, cfg, {"digits": tmp_path}, tmp_path / "runs", tmp_path / "ce.yaml")
    x, y = dd.real_digits()
    out = digits.ce_baseline(path, (x[:50], y[:50]), (x[50:80], y[50:80]))
    assert (
        all(0 <= out[k] <= 1 for k in ("accuracy", "accuracy_ema", "train_accuracy")) and out["seconds"] >= 0
    )


@pytest.mark.slow
def test_digits_benchmark_quick_smoke_run(tmp_path) -> None:
    """``benchmarks/digits.py --quick`` on two variants end to end (train, evaluate, page); the rest is
    reported as not run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH", "")])
    docs = tmp_path / "results.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "digits.py"), "--quick", "--only", "cw_on", "ce"]
    cmd += ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--docs", str(docs)]
    cmd += ["--data", str(tmp_path / "data")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = {p.parent.name + "/" + p.stem for p in (tmp_path / "out" / "digits_runs").glob("*/seed*.json")}
    assert runs == {"cw_on/seed0", "cw_on/seed1", "ce/seed0", "ce/seed1"}
    page = docs.read_text()
    assert "## Not run" in page and "* `joint`" in page and "* `ce`" not in page
    assert _claim_rows(page)["11: class weights help at a small batch"].endswith(
        "| not run (`cw_off` not run) |"
    )
