"""Does a digit's class depend on what else is in the request? (compose "image -> label", CPU)

    python benchmarks/batch_dependence.py --reuse     # train the demo model (3 seeds), measure, page
    python benchmarks/batch_dependence.py --quick     # tiny settings: a smoke run of the pipeline

Latents are zoned relative to other anchors. ``compose("image -> label")`` zones a request
together with the stored bank of training anchors, so an image's latent, and its class, also
depend on the other images of the same request. This measures it on the demo model
(``recipes/digits_joint.yaml`` as ``make run`` trains it: 800 iterations at batch 128), for
three seeds, on the 300 test digits (α 0, 100 label-flow steps, the whole bank):

* ``together``: each digit alone (a request of one), in requests of 10 and 30, and all 300 in one
  request; agreement of each with the request of 300, and their accuracy;
* ``independent``: each digit zoned against the bank alone (``independent=True``): the same
  answer whatever the request holds (checked: all 300 in one request = one at a time);
* ``minibatch``: the paper's evaluation (no bank, the 300 zoned by themselves);
* CPU time per digit of each mode (one thread; the machine's load is recorded).

Which mode is the default is decided by these numbers (rule on the page): ``lzn_core.model.INDEPENDENT``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _runs import Job, Variant, collect, run_all, run_dir, sha1, write_recipe, write_result  # noqa: E402

EVAL_VERSION = 2  # 2: times in CPU seconds
FULL = dict(iterations=None, batch_size=None, seeds=(0, 1, 2), requests=(1, 10, 30), label_steps=100)
QUICK = dict(iterations=4, batch_size=32, seeds=(0, 1), requests=(1, 10), label_steps=10)
MARGIN = 0.01  # accuracy: "matches" within 1 point (3 of the 300 test digits), as docs/results.md


def make_jobs(
    cfg: dict[str, Any], paths: dict[str, Any], argv: list[str], *, write: bool = True
) -> list[Job]:
    v = Variant("demo", "digits_joint", {}, "digits_joint as make run trains it", "dependence")
    key = sha1(json.dumps([EVAL_VERSION, {k: v for k, v in cfg.items() if k != "seeds"}], default=list))
    jobs = []
    for seed in cfg["seeds"]:
        recipe = paths["runs"] / "recipes" / f"demo-seed{seed}.yaml"
        if write:
            write_recipe(v, seed, cfg, {"digits": paths["data"]}, paths["runs"], recipe)
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--eval-job", "demo", str(seed)]
        result = paths["out"] / "batch_dependence_runs" / "demo" / f"seed{seed}.json"
        jobs.append(Job(v, seed, recipe, run_dir(paths["runs"], "demo", seed), result, key, cmd))
    return jobs


def measure(model: Any, x: Any, y: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Labels of the test digits in each mode, their agreement and accuracy, seconds per digit."""
    import torch

    import lzn_core

    classify: Any = lzn_core.compose("image -> label", model=model, draws=0, steps=cfg["label_steps"])
    n = x.shape[0]

    def run(size: int, **opts: Any) -> tuple[Any, float]:
        t0 = time.process_time()  # CPU seconds (one thread): a busy machine does not inflate them
        labels = torch.cat([classify(x[i : i + size], seed=0, **opts).labels for i in range(0, n, size)])
        return labels, (time.process_time() - t0) / n

    res: dict[str, Any] = {"load": [round(os.getloadavg()[0], 2)]}
    full, t_full = run(n, independent=False, batch_size=n)
    res["together"] = {
        str(n): {"accuracy": float((full == y).float().mean()), "agree": 1.0, "seconds": t_full}
    }
    for size in cfg["requests"]:
        got, t = run(size, independent=False, batch_size=n)
        res["together"][str(size)] = {
            "accuracy": float((got == y).float().mean()),
            "agree": float((got == full).float().mean()),
            "seconds": t,
        }
    ind, t_ind = run(n, independent=True, batch_size=n)
    alone, t_alone = run(1, independent=True, batch_size=n)
    res["independent"] = {
        "accuracy": float((ind == y).float().mean()),
        "agree_with_together": float((ind == full).float().mean()),
        "alone_equals_request": float((ind == alone).float().mean()),
        "seconds": t_ind,
        "seconds_alone": t_alone,
    }
    mini, t_mini = run(n, bank_size=0, independent=False, batch_size=n)
    res["minibatch"] = {"accuracy": float((mini == y).float().mean()), "seconds": t_mini}
    res["load"].append(round(os.getloadavg()[0], 2))
    return res


def eval_main(seed: int, cfg: dict[str, Any], paths: dict[str, Any]) -> int:
    import torch

    import lzn_core
    from lzn_core.eval.report import load_split

    torch.set_num_threads(1)
    job = next(j for j in make_jobs(cfg, paths, [], write=False) if j.seed == seed)
    t0 = time.time()
    model = lzn_core.load(job.run / "final")
    test = load_split(model, str(paths["data"] / "test-*.tar"), ["image", "label"])
    metrics = measure(model, test["image"], test["label"], cfg)
    trained = job.trained() or {}
    info = {
        "variant": "demo",
        "seed": seed,
        "recipe_sha1": job.recipe_sha1(),
        "eval_key": job.eval_key,
        "train_seconds": trained.get("seconds"),
        "train_start": trained.get("start"),
        "train_load": trained.get("load"),
        "eval_seconds": time.time() - t0,
        "eval_end": time.time(),
    }
    write_result(job.result, info, metrics)
    return 0


# ----------------------------------------------------------------------------- the page
def report(cfg: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """The table, the agreement figures and the default this data chooses."""
    from _digits_report import metric, test_text
    from _stats import equivalent, paired, summary

    def vals(key: str) -> list[float]:
        return [v for v in (metric(r, key) for r in runs) if v is not None]

    def pct(key: str) -> str:
        return summary(vals(key)).text(".1f", 100, "%")

    def ms(key: str) -> str:
        return summary(vals(key)).text(".1f", 1000, " ms")

    n = "300"
    rows = [
        (
            f"together, all {n} in one request",
            pct(f"together/{n}/accuracy"),
            "100% (itself)",
            ms(f"together/{n}/seconds"),
        ),
        *(
            (
                f"together, requests of {s}" + (" (each digit alone)" if s == 1 else ""),
                pct(f"together/{s}/accuracy"),
                pct(f"together/{s}/agree"),
                ms(f"together/{s}/seconds"),
            )
            for s in cfg["requests"]
        ),
        (
            "independent (bank only), any request",
            pct("independent/accuracy"),
            pct("independent/agree_with_together"),
            ms("independent/seconds"),
        ),
        (
            "minibatch (no bank, the paper's evaluation)",
            pct("minibatch/accuracy"),
            "–",
            ms("minibatch/seconds"),
        ),
    ]
    t = paired(vals("independent/accuracy"), vals(f"together/{n}/accuracy"))
    verdict = equivalent(t, MARGIN, one_sided=True)
    t1 = paired(vals("independent/accuracy"), vals("together/1/accuracy"))
    choose = verdict.startswith("reproduces")
    same = summary(vals("independent/alone_equals_request"))
    loads = [x for r in runs for x in (r["metrics"].get("load") or []) + (r.get("train_load") or [])]
    lines = [
        "# Does a digit's class depend on the rest of the request?",
        "",
        f"Generated by `python benchmarks/batch_dependence.py --reuse` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores, one torch thread; 1-minute load average during the jobs "
        + (f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded")
        + "; times per digit are CPU seconds of the one thread, which other processes do not inflate. Per job: "
        "`benchmarks/results/batch_dependence_runs/`.",
        "",
        "The demo model (`recipes/digits_joint.yaml` as `make run` trains it, "
        f'{len(runs)} seeds), the 300 test digits, `compose("image -> label")` with α 0, '
        f"{cfg['label_steps']} label-flow steps and the whole stored bank (512 training anchors). "
        "*Together*: the request's images are zoned with the bank and with each other (what "
        "`compose` did before this page), so a digit's latent depends on the other digits of its "
        "request. *Independent*: each digit is zoned with the bank and its own anchor only "
        "(`independent=True`). Agreement: share of the digits whose class equals the one they get "
        "inside the request of all 300 (mean ± std over the seeds).",
        "",
        "| mode | accuracy | agrees with the request of 300 | CPU time per digit |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        f"Independent mode gives each digit the same class in a request of 300 as alone: {same.text('.1f', 100, '%')}.",
        "",
        "**Default.** Rule: `independent=True` becomes the default when its accuracy matches or beats "
        f"the together mode's in the request of 300 (paired t-test over the seeds; 95% interval of the "
        f"difference above −{100 * MARGIN:.0f} point). Independent − together(300): {test_text(t)}: "
        f"{verdict}. Independent − together(alone): {test_text(t1)}. "
        + (
            "So the default is **independent** (`lzn_core.model.INDEPENDENT = True`): an answer no longer "
            "depends on the rest of the request; `independent=False` (`--no-independent` on the command line) "
            "zones a request together as before."
            if choose
            else "So the default stays **together** (`lzn_core.model.INDEPENDENT = False`); "
            "`independent=True` (`--independent`) gives answers that do not depend on the request."
        ),
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    page = out / "batch_dependence.md"
    page.write_text("\n".join(lines))
    res = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "runs": runs}
    res.update(choose_independent=choose, verdict=verdict, test=t.as_dict())
    (out / "batch_dependence.json").write_text(json.dumps(res, indent=1) + "\n")
    return {"page": str(page), "choose_independent": choose}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the pipeline only")
    p.add_argument("--reuse", action="store_true", help="resume: keep finished jobs, run the missing ones")
    p.add_argument("--jobs", type=int, default=1, help="jobs at a time (default 1)")
    p.add_argument("--report-only", action="store_true", help="no training: the page from the finished jobs")
    p.add_argument(
        "--data", default=str(ROOT / "data" / "digits"), help="digits shards (written when missing)"
    )
    p.add_argument("--runs", default=None, help="run directories (default runs/batch-dependence[-quick])")
    p.add_argument("--out", default=None, help="results (default benchmarks/results[/quick])")
    p.add_argument("--eval-job", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    paths = {
        "out": Path(args.out or ROOT / "benchmarks" / "results" / ("quick" if args.quick else "")),
        "runs": Path(
            args.runs or ROOT / ("runs/batch-dependence-quick" if args.quick else "runs/batch-dependence")
        ),
        "data": Path(args.data),
    }
    if args.eval_job:
        return eval_main(int(args.eval_job[1]), cfg, paths)
    if not args.report_only:
        if not list(paths["data"].glob("train-*.tar")):
            from lzn_core.data.digits import write_digits

            write_digits(paths["data"], progress=False)
        failed = run_all(
            make_jobs(cfg, paths, argv), paths["out"] / "logs", reuse=args.reuse, parallel=args.jobs
        )
        if failed:
            raise SystemExit("[bench] failed jobs:\n  " + "\n  ".join(failed))
    done = collect(make_jobs(cfg, paths, argv, write=False))["demo"]["runs"]
    res = report(cfg, done, paths["out"])
    print(
        f"[bench] {len(done)} jobs; page {res['page']}; independent by default: {res['choose_independent']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
