"""benchmarks/solver.py at tiny sizes: it runs and writes what it measured."""

from __future__ import annotations

from paths import ROOT


def test_solver_benchmark_quick(tmp_path):
    """benchmarks/solver.py --quick: both formulations give the same loss, the bare GEMMs are timed; JSON, table, plot."""
    import importlib.util
    import json

    path = ROOT / "benchmarks" / "solver.py"
    spec = importlib.util.spec_from_file_location("bench_solver", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--inprocess", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "solver.json").read_text())
    by = {(r["impl"], r["n"]): r for r in results["train"]}
    for n in results["config"]["naive_sizes"]:
        ours, naive = by["ours", n], by["naive", n]
        assert abs(ours["loss"] - naive["loss"]) <= 1e-3 * abs(naive["loss"])
        assert abs(ours["grad_norm_a0"] - naive["grad_norm_a0"]) <= 1e-3 * naive["grad_norm_a0"]
        assert ours["time_s"] > 0 and ours["peak_bytes"] >= 0
        assert ours["bare_s"] > 0 and ours["ratio"] == ours["time_s"] / ours["bare_s"]
    assert [r["n"] for r in results["inference"]] == results["config"]["sizes"]
    assert all(r["time_s"] > 0 and r["bare_s"] > 0 for r in results["inference"])
    assert [r["steps"] for r in results["round_trip"]["rows"]] == [5, 20]
    assert set(results["subnormal_penalty"]) == {"n", "gemm", "exp"} and results["wall_s"] > 0
    assert "| N | train ours | bare GEMMs | ratio | naive |" in (tmp_path / "solver.md").read_text()
    assert (tmp_path / "solver.png").stat().st_size > 1000
