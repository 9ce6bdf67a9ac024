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


# ----------------------------------------------------------------------------- seeds of the benchmarks
def test_the_longest_iteration_run_has_five_seeds_and_more_seeds_reevaluate_nothing(bench, tmp_path) -> None:
    _, digits, _, _ = bench
    cfg = {**digits.FULL, "iterations": 400}
    paths = {
        "out": tmp_path / "out",
        "runs": tmp_path / "runs",
        "data": {"digits": tmp_path, "digits-attributes": tmp_path},
    }
    jobs = digits.make_jobs(cfg, paths, [], write=False)
    seeds: dict[str, list[int]] = {}
    for j in jobs:
        seeds.setdefault(j.variant.name, []).append(j.seed)
    assert seeds["its2000"] == seeds["ce_its2000"] == [0, 1, 2, 3, 4]
    assert seeds["its800"] == seeds["joint"] == seeds["text_templates"] == [0, 1, 2]
    # the seed lists are no evaluation setting: the jobs finished before keep their results
    fewer = digits.make_jobs({**cfg, "long_seeds": (0, 1, 2)}, paths, [], write=False)
    assert {j.eval_key for j in jobs} == {j.eval_key for j in fewer}


def test_two_seeds_give_different_initial_weights_and_data_order(bench, tmp_path) -> None:
    """The recipes digits.py writes for seeds 0 and 1 of its2000 differ in their seed only, and that seed
    changes the initial weights and the data order (built as recipes/train.py builds them:
    ``torch.manual_seed(recipe.seed)`` before ``LZNModel(recipe)``, ``loader(seed=recipe.seed)``);
    the same seed twice gives the same both."""
    import torch

    from lzn_core.data import loader
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe

    _, digits, _, _ = bench
    import _runs

    dd.write_digits(tmp_path / "d", progress=False)
    cfg = {**digits.FULL, "iterations": 400}
    v = digits.variants(cfg)["its2000"]
    paths = [
        _runs.write_recipe(
            v, s, cfg, {"digits": tmp_path / "d"}, tmp_path / "runs", tmp_path / f"{s}-{k}.yaml"
        )
        for k, s in enumerate((0, 1, 0))
    ]
    texts = [p.read_text().replace("seed1", "seed0").replace("seed: 1", "seed: 0") for p in paths]
    assert texts[0] == texts[1] == texts[2]  # nothing but the seed differs
    recipes = [load_recipe(p) for p in paths]
    assert [r.seed for r in recipes] == [0, 1, 0] and recipes[0].train.iterations == 2000

    def start(r):
        torch.manual_seed(r.seed)
        model = LZNModel(r)
        ld = loader(
            r.data.train, model.specs, configs=model.configs, batch_size=r.train.batch_size, seed=r.seed
        )
        return model.state_dict(), next(iter(ld))["label"]

    (w0, d0), (w1, d1), (w0b, d0b) = (start(r) for r in recipes)
    weights = [k for k, t in w0.items() if t.is_floating_point() and t.numel() > 1 and t.std() > 0]
    assert weights and all(not torch.equal(w0[k], w1[k]) for k in weights)
    assert not torch.equal(d0, d1)
    assert all(torch.equal(w0[k], w0b[k]) for k in w0) and torch.equal(d0, d0b)


# ----------------------------------------------------------------------------- batch scaling (issue 26)
@pytest.fixture(scope="module")
def scaling():
    """``benchmarks/batch_scaling.py`` and ``benchmarks/batch_dependence.py`` as modules."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield tuple(importlib.import_module(m) for m in ("batch_scaling", "batch_dependence"))
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_batch_scaling_runs_the_reduced_grid_first_and_writes_valid_recipes(scaling, tmp_path) -> None:
    from lzn_core.recipe import load_recipe

    bs, _ = scaling
    import _runs

    cfg = bs.FULL
    order = bs.job_order(cfg)
    assert len(order) == 3 * 5 * 3 + 2 * 3 and len(set(order)) == len(order)
    first = {f"{k}_b{b}" for k in ("joint", "zonly") for b in (64, 256, 1024)}
    assert {n for n, _ in order[:18]} == first and {s for _, s in order[:18]} == {0, 1, 2}
    assert order[:2] == [("joint_b64", 0), ("zonly_b64", 0)]
    assert {n for n, _ in order[18:24]} == {"zonly_a0_b64", "zonly_a0_b256"}
    assert {n for n, _ in order[24:36]} == {f"{k}_b{b}" for k in ("joint", "zonly") for b in (128, 512)}
    assert all(n.startswith("rf_b") for n, _ in order[36:])
    got = {}
    for name in ("joint_b64", "zonly_b1024", "rf_b256", "zonly_a0_b64"):
        path = _runs.write_recipe(
            bs.variants(cfg)[name], 2, cfg, {"digits": tmp_path}, tmp_path / "runs", tmp_path / f"{name}.yaml"
        )
        got[name] = load_recipe(path)
    assert [r.train.batch_size for r in got.values()] == [64, 1024, 256, 64]
    assert got["zonly_a0_b64"].latent.alpha == 0.0 and got["zonly_a0_b64"].tasks[1].alpha == 1.0
    assert got["zonly_a0_b64"].tasks[0].condition is None and got["joint_b64"].latent.alpha == 1.0
    assert all(r.train.iterations == 400 and r.seed == 2 for r in got.values())
    assert got["joint_b64"].tasks[0].condition == "label" and got["zonly_b1024"].tasks[0].condition is None
    assert [t.kind for t in got["zonly_b1024"].tasks] == ["generate", "align"]
    assert got["rf_b256"].modalities["image"].config.use_latent is False
    assert [t.kind for t in got["rf_b256"].tasks] == ["generate"]


def test_batch_scaling_batches_option_cuts_the_grid_and_refuses_unknown_batches(scaling) -> None:
    bs, _ = scaling
    with pytest.raises(SystemExit, match="--batches: 100 not in the grid; choose from 64, 128"):
        bs.main(["--report-only", "--batches", "64", "100"])
    cfg = {**bs.FULL, "batches": (64, 1024)}
    want = {f"{k}_b{b}" for k in ("joint", "zonly", "rf") for b in (64, 1024)} | {"zonly_a0_b64"}
    assert {n for n, _ in bs.job_order(cfg)} == want


def test_scaling_page_compares_recon_with_the_rf_of_the_same_batch_else_the_digits_page(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        sr = importlib.import_module("_scaling_report")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert sr.rf_reference(tmp_path) is None
    for seed, err in enumerate((0.8, 0.7)):
        f = tmp_path / "digits_runs" / "rf_baseline" / f"seed{seed}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"metrics": {"recon_error": err}}))
    ref = sr.rf_reference(tmp_path)
    assert ref["values"] == [0.8, 0.7] and ref["batch"] == 128

    def runs(*recon: float) -> dict:
        return {"runs": [{"metrics": {"at": {"large": {"recon": r}}}} for r in recon]}

    variants = {"joint_b64": runs(0.6, 0.6), "joint_b256": runs(0.5, 0.5), "rf_b256": runs(1.0, 1.0)}
    assert sr.rf_floor(variants, 64, ref) == (
        [0.8, 0.7],
        "RF baseline at B 128 (digits page; RF at B 64 not run)",
    )
    assert sr.rf_floor(variants, 256, ref) == ([1.0, 1.0], "RF baseline at B 256")
    rows = {r.split(" | ")[0] + r.split(" | ")[1]: r for r in sr.summary_table(variants, [64, 256], ref)[4:7]}
    assert "| -20% † |" in rows["| 64joint (z + one-hot)"]  # 0.6 against 0.75, the digits page's
    assert "| -50% |" in rows["| 256joint (z + one-hot)"]  # 0.5 against its own RF's 1.0


def test_zoned_latents_see_exactly_the_inference_batch(scaling) -> None:
    """Every item is zoned among exactly b anchors: its chunk of the items + the next context rows."""
    import torch

    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe

    bs, _ = scaling
    model = LZNModel(load_recipe("digits_joint.yaml"))
    gen = torch.Generator().manual_seed(0)
    items, context = torch.randn(10, 64, generator=gen), 3 + torch.randn(30, 64, generator=gen)
    for b, chunks in ((10, [(0, 10, 0)]), (16, [(0, 10, 6)]), (4, [(0, 4, 0), (4, 8, 0), (8, 10, 2)])):
        got = bs.zoned(model, items, context, b, alpha=1.0, generator=torch.Generator().manual_seed(1))
        draw, want, offset = torch.Generator().manual_seed(1), [], 0
        for lo, hi, extra in chunks:
            every = torch.cat([items[lo:hi], context[offset : offset + extra]])
            offset += extra
            noise = torch.randn((hi - lo, 64), generator=draw)
            want.append(model.latents(every, alpha=1.0, noise=noise, index=torch.arange(hi - lo)))
        assert torch.allclose(got, torch.cat(want), atol=1e-6), b
    with pytest.raises(ValueError, match="needs 50 context anchors"):
        bs.zoned(model, items, context, 60, alpha=0.0, generator=gen)


def test_batch_dependence_measures_agreement_and_the_independent_mode(scaling) -> None:
    """On an untrained model with a bank: a request of one *is* the independent mode, and the
    independent mode gives every item the same class alone as in the whole request."""
    import torch

    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe

    _, bd = scaling
    torch.manual_seed(0)
    model = LZNModel(load_recipe("digits_joint.yaml")).eval()
    with torch.no_grad():
        model.set_bank("image", model.encode("image", torch.rand(64, 1, 8, 8) * 2 - 1))
    x, y = torch.rand(12, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (12,))
    res = bd.measure(model, x, y, {"requests": (1, 4), "label_steps": 10})
    assert res["independent"]["alone_equals_request"] == 1.0
    assert res["together"]["1"]["accuracy"] == res["independent"]["accuracy"]
    assert res["together"]["1"]["agree"] == res["independent"]["agree_with_together"]
    assert res["together"]["12"]["agree"] == 1.0 and 0 <= res["minibatch"]["accuracy"] <= 1


@pytest.mark.slow
def test_batch_scaling_quick_smoke_run_and_resume(tmp_path) -> None:
    """``benchmarks/batch_scaling.py --quick`` on one variant (2 seeds): train, profile, evaluate, page;
    a second invocation with ``--reuse`` runs nothing again."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "batch_scaling.py"),
        "--quick",
        "--reuse",
        "--only",
        "zonly_b16",
    ]
    cmd += [
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
        "--data",
        str(tmp_path / "data"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    res = [
        json.loads((out / "batch_scaling_runs" / "zonly_b16" / f"seed{s}.json").read_text()) for s in (0, 1)
    ]
    for r in res:
        m = r["metrics"]
        assert m["batch"] == 16 and m["samples_seen"] == 16 * 3
        assert set(m["at"]) == {"train", "large"} and m["at"]["large"]["batch"] == 64
        assert {"accuracy", "accuracy_alpha1", "recon", "retrieval", "retrieval_class"} <= set(
            m["at"]["train"]
        )
        assert 0 <= m["class_consistency"] <= 1 and 0 <= m["zone_agreement"] <= 1
        assert 0 < m["profile"]["solver_share"] < 1 and m["profile"]["step_seconds"] > 0
        assert r["train_cpu_seconds"] > 0 and r["eval_cpu_seconds"] > 0
    page = (out / "batch_scaling.md").read_text()
    assert "## Verdicts" in page and "## Not run" in page and "* `joint_b16`: seed(s) 0, 1" in page
    assert (out / "batch_scaling.png").is_file() and (out / "batch_scaling" / "zonly_b16.png").is_file()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("up to date") == 2 and "training" not in again.stdout


# ----------------------------------------------------------------------------- the solver against the authors' code
@pytest.fixture(scope="module")
def solver_bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("solver")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_solver_benchmark_skips_the_authors_code_when_no_copy_is_given(
    solver_bench, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv(solver_bench.OFFICIAL_ENV, raising=False)
    assert solver_bench.main(["--quick", "--inprocess", "--only", "official", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "solver.json").read_text())
    assert res["train"] == [] and solver_bench.OFFICIAL_ENV in res["official_skipped"]
    assert "skipped: LZN_OFFICIAL_SRC not set" in (tmp_path / "solver.md").read_text()
    monkeypatch.setenv(solver_bench.OFFICIAL_ENV, str(tmp_path))  # a directory without their code
    assert solver_bench.official_source() is None


@pytest.mark.skipif(
    not os.environ.get("LZN_OFFICIAL_SRC"),
    reason="LZN_OFFICIAL_SRC (a copy of the authors' repository) not set",
)
def test_authors_code_computes_the_same_iteration_as_ours(solver_bench) -> None:
    """Their EulerLatentFlow (imported from LZN_OFFICIAL_SRC) and our solver compute the same loss and
    anchor gradients of one training iteration, so the timings compare like with like. Their time
    variable is ``torch.ones(...) * eps``, float32 whatever the data: with float64 as torch's default
    dtype it is float64 too and the two agree to float64 rounding; as they run (float32 time) to
    ~1e-4 (measured 6e-5 on the loss, 3e-4 on the gradients)."""
    import torch

    assert solver_bench.official_source() is not None, "LZN_OFFICIAL_SRC does not hold lzn/latent_flow/"

    def both() -> list[tuple[torch.Tensor, ...]]:
        out = []
        for fn in (solver_bench._official_iteration, solver_bench._our_iteration):
            a0, a1, eps = (t.detach().double() for t in solver_bench._inputs(24, 6, seed=3))
            a0.requires_grad_(True), a1.requires_grad_(True)
            loss = fn(a0, a1, eps, 8)
            loss.backward()
            out.append((loss.detach(), a0.grad, a1.grad))
        return out

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        exact = both()
    finally:
        torch.set_default_dtype(default)
    for theirs, ours in zip(*exact, strict=True):
        assert torch.allclose(theirs, ours, rtol=1e-9, atol=1e-12)
    for theirs, ours in zip(*both(), strict=True):
        assert float((theirs - ours).norm() / ours.norm()) < 1e-3


def test_the_independent_default_is_the_one_the_committed_measurement_chose() -> None:
    """lzn_core.model.INDEPENDENT follows benchmarks/results/batch_dependence.json (rerun the benchmark
    and change the constant together)."""
    from lzn_core.model import INDEPENDENT

    res = json.loads((ROOT / "benchmarks" / "results" / "batch_dependence.json").read_text())
    assert len(res["runs"]) >= 2 and res["choose_independent"] is INDEPENDENT
