"""How LZN behaves as the training batch grows (digits, CPU): what the latent carries, what it costs.

    python benchmarks/batch_scaling.py --reuse        # the grid in priority order, 2 jobs at a time;
                                                      # writes benchmarks/results/batch_scaling.md
    python benchmarks/batch_scaling.py --quick        # tiny settings: a smoke run of the pipeline
    python benchmarks/batch_scaling.py --report-only  # the page from the finished jobs

Zones are computed per batch: a latent says "which of the B anchors of this batch" (the paper's
minibatch approximation), so with B anchors it can carry at most log2(B) bits about its sample.
The paper trains at B = 2000 (CIFAR-10) and 8192 (ImageNet); every other page of ours is at
B = 128. This benchmark trains digits_joint at B in {64, 128, 256, 512, 1024} for the same number
of iterations (the paper's regime: a fixed number of steps; the samples seen grow with B), with
three seeds, in three variants:

* ``joint``: digits_joint as shipped (the image decoder reads z and the label one-hot);
* ``zonly``: the same, but the image decoder reads z alone (the generate task has no condition),
  so whatever class its samples show came through z;
* ``rf``: digits_rf_baseline (the same decoder fed zeros instead of z; no alignment): the floor.

Per job (one variant, one B, one seed) the evaluation measures, with the trained model's EMA
weights, latents at the training B and at a fixed large inference batch (``large_batch``: test
items zoned together with training images as context, so every item sees exactly b anchors):

* ``accuracy``: label-flow test accuracy (α 0, 100 Euler steps, nearest class anchor);
* ``recon``: the paper's reconstruction error (Table 1 "Recon"): z = C(x) at the recipe's α,
  invert the decoder's ODE conditioned on z, regenerate; ℓ2 in [-1, 1] pixels, test split;
* ``retrieval`` / ``retrieval_class``: image -> latent -> image. Training images' latents (α 0)
  are decoded from fresh noise; a hit when the nearest training image (ℓ2) of the decoded image
  is its source (chance 1/1497) / has its class; ``decode_error``: ℓ2 of the decoded image to
  its source;
* ``class_consistency``: class-zone latents (the label bank, α 1) decoded, judged by an SVC
  fitted on real training digits (the one-hot conditions joint and rf; zonly reads z alone);
  ``zone_agreement``: z ~ N(0, I) decoded, the judge's class against the class the label flow
  reads from the same z (joint gets that class as its one-hot);
* a profile of the training step at B (``benchmarks/step_profile.py``, a fresh model, same
  recipe, one process, timed in the thread's CPU seconds so that other processes on a shared
  machine do not inflate it): median step time, the zoning solver's share of it (forward +
  backward) and the peak resident memory above the process's baseline; the 1-minute load average
  during training and profile. The training's own mean wall time per step is kept too.

Jobs run in priority order (``job_order``): the two LZN variants at B in {64, 256, 1024} for
every seed, then B in {128, 512}, then the RF baseline; a run stopped early keeps the most
important answers, and ``--reuse`` continues it. Results: ``benchmarks/results/
batch_scaling_runs/<variant>/seed<k>.json``; the page ``benchmarks/results/batch_scaling.md``
(``benchmarks/_scaling_report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _runs import Job, Variant, collect, run_all, run_dir, sha1, write_recipe, write_result  # noqa: E402

EVAL_VERSION = 2  # bump when an evaluation changes: every job is evaluated again
KINDS = ("joint", "zonly", "rf", "zonly_a0")
FULL = dict(
    iterations=400,  # the iterations of every other digits page (benchmarks/digits.py)
    batch_size=None,  # each variant sets its own
    batches=(64, 128, 256, 512, 1024),
    first=(64, 256, 1024),  # the reduced grid: run first (the issue's minimum)
    fix=(64, 256),  # the attempt to let the z-only decoder carry the class (zonly_a0)
    seeds=(0, 1, 2),
    large_batch=1024,
    label_steps=100,
    recon_images=256,
    draws=10,
    recon_steps=10,
    retrieval_items=500,
    sample_steps=None,  # the decoder's default (50 Euler steps)
    per_class=20,
    zone_samples=200,
    profile_steps=6,
    profile_warmup=2,
)
QUICK = dict(
    iterations=3,
    batch_size=None,
    batches=(16, 32),
    first=(16, 32),
    fix=(16,),
    seeds=(0, 1),
    large_batch=64,
    label_steps=10,
    recon_images=16,
    draws=1,
    recon_steps=2,
    retrieval_items=20,
    sample_steps=2,
    per_class=2,
    zone_samples=20,
    profile_steps=1,
    profile_warmup=1,
)
DESCRIPTION = {
    "joint": "digits_joint as shipped: the decoder reads z and the label one-hot",
    "zonly": "digits_joint, the decoder reads z alone (no condition)",
    "rf": "digits_rf_baseline: the same decoder fed zeros instead of z, no alignment",
    "zonly_a0": "z only, the decoder trained on zone centres (latent α 0; the alignment keeps α 1)",
}


def name_of(kind: str, batch: int) -> str:
    return f"{kind}_b{batch}"


def variants(cfg: dict[str, Any]) -> dict[str, Variant]:
    """``{kind}_b{B}`` -> :class:`Variant` for every kind and training batch B."""
    gen = {"kind": "generate", "target": "image", "weight": 1.0, "condition": "label"}
    changes = {
        "joint": {},
        "zonly": {"tasks.0.condition": None},
        "rf": {"tasks": [gen], "modalities.image.config.use_latent": False},
        "zonly_a0": {"tasks.0.condition": None, "latent.alpha": 0.0},
    }
    out = {}
    for b in cfg["batches"]:
        for kind in KINDS:
            v = Variant(
                name_of(kind, b),
                "digits_joint",
                {"train.batch_size": b, **changes[kind]},
                f"{DESCRIPTION[kind]}; batch {b}",
                kind,
                group=kind,
                extra={"batch": b},
            )
            out[v.name] = v
    return out


def job_order(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    """(variant, seed) in priority order: joint and zonly at the ``first`` batches, seed by seed;
    the attempt to let the z-only decoder carry the class (``zonly_a0`` at the ``fix`` batches);
    joint and zonly at the other batches; then the RF baseline (first batches first)."""
    first = [b for b in cfg["first"] if b in cfg["batches"]]
    rest = [b for b in cfg["batches"] if b not in first]
    order = []
    tiers = (
        (first, ("joint", "zonly")),
        ([b for b in cfg["fix"] if b in cfg["batches"]], ("zonly_a0",)),
        (rest, ("joint", "zonly")),
        (first + rest, ("rf",)),
    )
    for batches, kinds in tiers:
        for seed in cfg["seeds"]:
            for b in batches:
                order += [(name_of(k, b), seed) for k in kinds]
    return order


def make_jobs(
    cfg: dict[str, Any], paths: dict[str, Any], argv: list[str], *, write: bool = True
) -> list[Job]:
    """Every (variant, seed) job in priority order; ``write``: write the recipes first."""
    out, runs = paths["out"], paths["runs"]
    vs = variants(cfg)
    settings = {k: v for k, v in cfg.items() if k not in ("seeds", "first", "batches", "fix", "cut_batches")}
    jobs = []
    for name, seed in job_order(cfg):
        v = vs[name]
        recipe = runs / "recipes" / f"{name}-seed{seed}.yaml"
        if write:
            write_recipe(v, seed, cfg, {"digits": paths["data"]}, runs, recipe)
        key = sha1(json.dumps([EVAL_VERSION, v.measure, settings], sort_keys=True, default=list))
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--eval-job", name, str(seed)]
        jobs.append(
            Job(
                v,
                seed,
                recipe,
                run_dir(runs, name, seed),
                out / "batch_scaling_runs" / name / f"seed{seed}.json",
                key,
                cmd,
            )
        )
    return jobs


# ----------------------------------------------------------------------------- evaluation (one job)
def zoned(
    model: Any,
    items: Any,
    context: Any,
    batch: int,
    *,
    alpha: float,
    generator: Any,
) -> Any:
    """Latents (n, q) of anchors ``items`` (n, q), each zoned in an inference batch of exactly
    ``batch`` anchors: consecutive chunks of ``min(batch, n)`` items, completed with the next rows of
    ``context`` (M, q) (anchors of other items: the rest of the batch a request would bring)."""
    import torch

    n = items.shape[0]
    size = min(batch, n)
    parts, offset = [], 0
    for start in range(0, n, size):
        chunk = items[start : start + size]
        need = batch - chunk.shape[0]
        if need > context.shape[0]:
            raise ValueError(f"inference batch {batch} needs {need} context anchors, have {context.shape[0]}")
        rows = torch.arange(offset, offset + need) % context.shape[0]
        offset += need
        every = torch.cat([chunk, context[rows]])
        noise = torch.randn(chunk.shape, generator=generator, dtype=chunk.dtype)
        index = torch.arange(chunk.shape[0])
        parts.append(model.latents(every, alpha=alpha, noise=noise, index=index))
    return torch.cat(parts)


def profile_step(recipe: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Median training-step time of ``recipe`` (a fresh model) in CPU seconds of this thread (other
    processes on a shared machine do not inflate it), the solver's share of it and the peak resident
    memory above the baseline (``benchmarks/step_profile.py``; call it first in a fresh process,
    before anything else allocates)."""
    import deepspeed  # noqa: F401  (imported before the baseline: memory of the step, not of imports)
    from step_profile import profile

    sys.path.insert(0, str(ROOT / "recipes"))
    import train  # noqa: F401  (recipes/train.py, which the profile imports)

    def rss_mib() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    base, load0 = rss_mib(), os.getloadavg()[0]
    res = profile(str(recipe), cfg["profile_steps"], cfg["profile_warmup"], [], clock="cpu")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    s = res["seconds"]
    solver = s["solver forward"] + s["solver backward"]
    return {
        "step_seconds": s["total"],
        "solver_seconds": solver,
        "solver_share": solver / s["total"],
        "parts": s,
        "peak_rss_mib": peak - base,
        "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def training_step_seconds(run: Path) -> float | None:
    """Mean seconds per step of the training run, from its metrics.jsonl (first to last logged
    step: start-up excluded)."""
    f = run / "metrics.jsonl"
    if not f.is_file():
        return None
    rows = [json.loads(s) for s in f.read_text().splitlines() if s.strip()]
    rows = [r for r in rows if "loss" in r and "time" in r]
    if len(rows) < 2 or rows[-1]["step"] == rows[0]["step"]:
        return None
    return (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["step"] - rows[0]["step"])


def evaluate_model(
    model: Any, kind: str, train_b: int, cfg: dict[str, Any], data: Path, seed: int
) -> dict[str, Any]:
    """The metrics of one trained model (see the module docstring)."""
    import torch

    from lzn_core import compose
    from lzn_core.eval import protocol as em
    from lzn_core.eval.report import load_split

    torch.manual_seed(seed)
    test, train = (load_split(model, str(data / f"{s}-*.tar"), ["image", "label"]) for s in ("test", "train"))
    xte, yte, xtr, ytr = test["image"], test["label"], train["image"], train["label"]
    dec, label = model.decoders["image"], model.decoders["label"]
    conditioned = model.condition_source("image") is not None  # joint and rf: the one-hot; z-only kinds: none
    cond = (lambda y: model.condition("label", y)) if conditioned else (lambda y: None)
    perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(1000 + seed))
    ret_idx, ctx_idx = perm[: cfg["retrieval_items"]], perm[cfg["retrieval_items"] :]
    res: dict[str, Any] = {"at": {}}
    with torch.no_grad():
        a_te, a_tr = model.encode("image", xte), model.encode("image", xtr)
        sizes = {"train": train_b, "large": cfg["large_batch"]}
        done: dict[int, dict[str, float]] = {}
        for where, b in sizes.items():
            if b in done:
                res["at"][where] = {**done[b], "batch": b}
                continue
            m: dict[str, float] = {}
            gen = torch.Generator().manual_seed(seed)
            if kind != "rf":  # label-flow classifier (rf has no alignment: untrained class anchors)
                for key, alpha in (
                    ("accuracy", 0.0),
                    ("accuracy_alpha1", 1.0),
                ):  # α 1: what the decoder is fed
                    z = zoned(model, a_te, a_tr, b, alpha=alpha, generator=gen)
                    pred = label.sample(z, steps=cfg["label_steps"]).cpu()
                    m[key] = float((pred == yte).float().mean())
            # the paper's reconstruction error: z at the recipe's α, invert, regenerate (test split)
            n = min(cfg["recon_images"], xte.shape[0])
            draws = cfg["draws"] if kind != "rf" else 1  # rf ignores z: one draw is all of it
            total = 0.0
            for _ in range(draws):
                z = zoned(model, a_te[:n], a_tr, b, alpha=model.recipe.latent.alpha, generator=gen)
                rec = dec.reconstruct(xte[:n], z, cond(yte[:n]), steps=cfg["recon_steps"], clip=False)
                total += float((rec - xte[:n]).flatten(1).norm(dim=1).sum())
            m["recon"] = total / (n * draws)
            # image -> latent -> image: decode the zone centre from fresh noise, nearest training image
            z = zoned(model, a_tr[ret_idx], a_tr[ctx_idx], b, alpha=0.0, generator=gen)
            out = dec.sample(z, cond(ytr[ret_idx]), steps=cfg["sample_steps"], generator=gen)
            near = torch.cdist(out.flatten(1), xtr.flatten(1)).argmin(dim=1)
            m["retrieval"] = float((near == ret_idx).float().mean())
            m["retrieval_class"] = float((ytr[near] == ytr[ret_idx]).float().mean())
            m["decode_error"] = float((out - xtr[ret_idx]).flatten(1).norm(dim=1).mean())
            done[b] = m
            res["at"][where] = {**m, "batch": b}
        # class-zone samples (independent of the inference batch: the bank is the 10 class anchors)
        classes = torch.arange(10).repeat_interleave(cfg["per_class"])
        imgs = em.class_samples(model, "label", "image", classes, steps=cfg["sample_steps"], seed=seed)
        res["class_consistency"] = dec.judge_samples(imgs, classes, xtr, ytr)["class_consistency"]
        res["_samples"] = imgs
        centre: Any = compose("label -> image", model=model)  # the class zones' centres (α 0)
        imgs = centre(
            classes, alpha=0.0, steps=cfg["sample_steps"], generator=torch.Generator().manual_seed(seed)
        )
        res["class_consistency_alpha0"] = dec.judge_samples(imgs, classes, xtr, ytr)["class_consistency"]
        if kind != "rf":
            gen = torch.Generator().manual_seed(2000 + seed)
            z = torch.randn((cfg["zone_samples"], model.latent_dim), generator=gen)
            c = label.sample(z, steps=cfg["label_steps"]).cpu()
            imgs = dec.sample(z, cond(c), steps=cfg["sample_steps"], generator=gen)
            res["zone_agreement"] = dec.judge_samples(imgs, c, xtr, ytr)["class_consistency"]
            res["class_accuracy_alpha1_train"] = float(  # class the label flow reads from training-time z
                (
                    label.sample(
                        zoned(model, a_tr, a_tr, train_b, alpha=1.0, generator=gen), steps=cfg["label_steps"]
                    ).cpu()
                    == ytr
                )
                .float()
                .mean()
            )
    return res


def evaluate_job(name: str, seed: int, cfg: dict[str, Any], paths: dict[str, Any]) -> dict[str, Any]:
    """Profile the step, then evaluate the trained model of one job."""
    import torch

    from lzn_core.io import load

    torch.set_num_threads(1)
    v = variants(cfg)[name]
    recipe = paths["runs"] / "recipes" / f"{name}-seed{seed}.yaml"
    prof = profile_step(recipe, cfg)
    run = run_dir(paths["runs"], name, seed)
    model = load(run / "final").eval()
    t0 = time.time()
    res = evaluate_model(model, v.measure, v.extra["batch"], cfg, paths["data"], seed)
    samples = res.pop("_samples")
    if seed == 0:  # the page shows seed 0's class-zone samples
        from _digits_report import sample_grid_png

        sample_grid_png(samples[:: cfg["per_class"]], 10, paths["out"] / "batch_scaling" / f"{name}.png")
    trained = json.loads((run / "bench-train.json").read_text())
    return {
        **res,
        "profile": prof,
        "batch": v.extra["batch"],
        "iterations": model.recipe.train.iterations,
        "samples_seen": model.recipe.train.iterations * v.extra["batch"],
        "train_step_seconds": training_step_seconds(run),
        "train_load": trained.get("load"),
        "metrics_seconds": time.time() - t0,
    }


def eval_main(name: str, seed: int, cfg: dict[str, Any], paths: dict[str, Any]) -> int:
    """``--eval-job NAME SEED``: evaluate one job and write its result JSON."""
    job = next(j for j in make_jobs(cfg, paths, [], write=False) if (j.variant.name, j.seed) == (name, seed))
    t0 = time.time()
    metrics = evaluate_job(name, seed, cfg, paths)
    trained = job.trained() or {}
    info = {
        "variant": name,
        "seed": seed,
        "recipe_sha1": job.recipe_sha1(),
        "eval_key": job.eval_key,
        "train_seconds": trained.get("seconds"),
        "train_start": trained.get("start"),
        "eval_seconds": time.time() - t0,
        "eval_end": time.time(),
    }
    write_result(job.result, info, metrics)
    return 0


# ----------------------------------------------------------------------------- the whole benchmark
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings (minutes): checks the pipeline only")
    p.add_argument("--reuse", action="store_true", help="resume: keep finished jobs, run the missing ones")
    p.add_argument("--seeds", type=int, help="seeds per variant (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="jobs at a time (default 2: one per core)")
    p.add_argument("--only", nargs="*", help="run only these variants (the page marks the others not run)")
    p.add_argument(
        "--batches",
        nargs="+",
        type=int,
        help="training batches of the grid, a subset of the default (the page says which were cut)",
    )
    p.add_argument("--report-only", action="store_true", help="no training: the page from the finished jobs")
    p.add_argument(
        "--data", default=str(ROOT / "data" / "digits"), help="digits shards (written when missing)"
    )
    p.add_argument("--runs", default=None, help="run directories (default runs/batch-scaling[-quick])")
    p.add_argument("--out", default=None, help="results (default benchmarks/results[/quick])")
    p.add_argument("--eval-job", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds:
        cfg["seeds"] = tuple(range(args.seeds))
    if args.batches:
        bad = sorted(set(args.batches) - set(cfg["batches"]))
        if bad:
            raise SystemExit(
                f"--batches: {', '.join(map(str, bad))} not in the grid; choose from {', '.join(map(str, cfg['batches']))}"
            )
        cfg["cut_batches"] = tuple(b for b in cfg["batches"] if b not in args.batches)
        cfg["batches"] = tuple(b for b in cfg["batches"] if b in args.batches)
    paths = {
        "out": Path(args.out or ROOT / "benchmarks" / "results" / ("quick" if args.quick else "")),
        "runs": Path(
            args.runs or ROOT / ("runs/batch-scaling-quick" if args.quick else "runs/batch-scaling")
        ),
        "data": Path(args.data),
    }
    unknown = sorted(set(args.only or ()) - set(variants(cfg)))
    if unknown:
        raise SystemExit(
            f"--only: unknown variant(s) {', '.join(unknown)}; known: {', '.join(variants(cfg))}"
        )
    if args.eval_job:
        return eval_main(args.eval_job[0], int(args.eval_job[1]), cfg, paths)
    from _scaling_report import write_report

    if args.report_only:
        res = write_report(cfg, collect(make_jobs(cfg, paths, argv, write=False)), paths["out"], {})
        print(f"[bench] page written from {res['finished']} finished jobs: {res['page']}")
        return 0
    t0 = time.time()
    if not list(paths["data"].glob("train-*.tar")):
        from lzn_core.data.digits import write_digits

        write_digits(paths["data"], progress=False)
    jobs = make_jobs(cfg, paths, argv)  # an evaluation job parses the same arguments (same settings)
    chosen = [j for j in jobs if not args.only or j.variant.name in args.only]
    failed = run_all(chosen, paths["out"] / "logs", reuse=args.reuse, parallel=args.jobs)
    extra = {"invocation_minutes": round((time.time() - t0) / 60, 1), "reused": bool(args.reuse)}
    res = write_report(cfg, collect(jobs), paths["out"], extra)
    print(f"[bench] done in {extra['invocation_minutes']} min: {res['page']}")
    if failed:
        raise SystemExit("[bench] failed jobs:\n  " + "\n  ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
