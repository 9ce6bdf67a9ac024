"""The embedded digits benchmark: the paper's small-scale claims with seed error bars, measured on CPU.

    python benchmarks/digits.py --iterations 400 --reuse   # every variant × 3 seeds, 2 jobs at a time;
                                           # writes docs/results.md (the page says how long it took)
    python benchmarks/digits.py --reuse    # resume: finished jobs are kept, missing ones run
    python benchmarks/digits.py --quick    # tiny settings: a smoke run of the whole pipeline
    python benchmarks/digits.py --iterations 400 --report-only   # the pages from the finished jobs

Every variant is trained with every seed (the recipe's ``seed``: initialisation, data order and
noise) by ``recipes/train.py`` in a subprocess, evaluated in a second subprocess, and its result
kept in ``benchmarks/results/digits_runs/<variant>/seed<k>.json`` (``benchmarks/_runs.py``).
The report (``benchmarks/_digits_report.py``) gives mean ± standard deviation over the seeds and
judges each claim with a test at 5% (``benchmarks/_stats.py``).

Variants (digits shards, digits_joint's batch and iterations unless noted):

* claims: ``joint`` (digits_joint: RF generation + label alignment), ``align_only`` (no
  generation loss; claim 8), ``cutoff05`` (cutoff 0.05; claim 10), ``rf_baseline`` (the same
  decoder without the latent; claims 6/9), ``cw_on`` / ``cw_off`` (alignment only at a small
  batch with / without class weights; claim 11), ``ce`` (the same image encoder + a linear head
  trained with cross-entropy, in the evaluation job);
* text: ``digits_text`` trained on the template captions and on the attribute captions
  (``lzn shards digits --captions attributes``), measured by ``benchmarks/text.py``;
* the LZN-vs-CE gap: one change of joint each (training α, label-flow steps, cutoff, loss kind,
  the encoder size), then the iterations × 2 and × 5, each with its CE head at the same encoder
  size and iterations.

Jobs run in that order (priority), so a run stopped early has the claims first; the report marks
what did not finish as not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _runs import Job, Variant, collect, run_all, run_dir, sha1, write_recipe, write_result  # noqa: E402

EVAL_VERSION = 1  # bump when an evaluation changes: every job is evaluated again
FULL = dict(
    iterations=None,  # None: the recipe's own (digits_joint, as `make run` trains it)
    batch_size=None,
    small_batch=16,
    seeds=(0, 1, 2),
    text_seeds=(0, 1, 2),
    long_seeds=(0, 1, 2, 3, 4),  # the longest iteration run and its CE head: the "gap closed" verdict
    text_context=24,  # tokens: the attribute captions need up to 20 (the recipe's 16 cuts them)
    draws=10,
    samples=1000,
    per_class=20,
    recon_images=256,
    recon_steps=10,
    alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2),
    batch_sizes=(10, 30, 100, 300),
)
QUICK = dict(
    iterations=4,
    batch_size=32,
    small_batch=16,
    seeds=(0, 1),
    text_seeds=(0,),
    long_seeds=(0, 1),
    text_context=24,
    draws=1,
    samples=100,
    per_class=2,
    recon_images=16,
    recon_steps=4,
    alphas=(0.0, 1.0),
    batch_sizes=(30, 300),
)
ITERATION_FACTORS = (2, 5)  # iteration ablation: × the base iterations (400 -> 800 and 2000)
SEED_KEYS = ("seeds", "text_seeds", "long_seeds")  # not evaluation settings: more seeds re-evaluate nothing
CAPTION_DATA = {"templates": "digits", "attributes": "digits-attributes"}


def base_iterations(cfg: dict[str, Any]) -> int:
    import yaml

    if cfg["iterations"] is not None:
        return int(cfg["iterations"])
    return int(yaml.safe_load((ROOT / "recipes" / "digits_joint.yaml").read_text())["train"]["iterations"])


def variants(cfg: dict[str, Any]) -> dict[str, Variant]:
    """name -> :class:`Variant` (see the module docstring), in the order the jobs run: when the
    time runs out, the variants at the end are the ones left out (the page says which)."""
    align = {
        "kind": "align",
        "source": "image",
        "target": "label",
        "weight": 1.0,
        "loss": "prob",
        "class_weights": True,
        "steps": 50,
        "cutoff": 0.2,
        "alpha": 1.0,
    }
    gen = {"kind": "generate", "target": "image", "weight": 1.0, "condition": "label"}
    no_gen = {"tasks": [align], "eval.samples_per_class": 0}
    small = {**no_gen, "train.batch_size": cfg["small_batch"]}
    wide = {"modalities.image.config": {"preset": "digits"}}
    joint = "digits_joint"
    small_batch = cfg["small_batch"]
    v = [
        # 1. the claims
        Variant("joint", joint, {}, "RF generation + label alignment (digits_joint)", "full"),
        Variant("ce", joint, {}, "joint's image encoder + Linear(q→10), cross-entropy", "ce", trains=False),
        Variant("align_only", joint, no_gen, "label alignment only, no generation loss", "accuracy"),
        Variant(
            "cutoff05", joint, {"tasks.1.cutoff": 0.05}, "joint, cutoff 0.05 (paper: u = 5 of 100)", "recon"
        ),
        Variant(
            "rf_baseline",
            joint,
            {"tasks": [gen], "modalities.image.config.use_latent": False},
            "same decoder, no latent (use_latent: false; recipes/digits_rf_baseline.yaml)",
            "generation",
        ),
        Variant("cw_on", joint, small, f"alignment only, batch {small_batch}, class weights on", "accuracy"),
        Variant(
            "cw_off",
            joint,
            {**small, "tasks": [{**align, "class_weights": False}]},
            f"alignment only, batch {small_batch}, class weights off",
            "accuracy",
        ),
    ]
    # 2. text on the template and on the attribute captions
    ctx = {"modalities.text.config.context_length": cfg["text_context"]}
    for captions, data in CAPTION_DATA.items():
        what = f"digits_text, {captions} captions"
        v.append(Variant(f"text_{captions}", "digits_text", ctx, what, "text", data=data, group="text"))
    # 3. the LZN-vs-CE gap at the base iterations: one change of joint each
    gap = [
        ("alpha05", {"tasks.1.alpha": 0.5}, "joint, training α 0.5"),
        ("alpha0", {"tasks.1.alpha": 0.0}, "joint, training α 0"),
        ("steps100", {"tasks.1.steps": 100}, "joint, 100 label-flow steps"),
        ("cutoff50", {"tasks.1.cutoff": 0.5}, "joint, cutoff 0.5"),
        ("loss_log", {"tasks.1.loss": "log"}, "joint, log loss (Eq. 5)"),
        ("wide", wide, "joint, image preset digits (nf 32, 2 blocks)"),
    ]
    v += [Variant(name, joint, changes, what, "accuracy", group="gap") for name, changes, what in gap]
    v.append(
        Variant(
            "ce_wide", joint, wide, "CE head on the preset-digits encoder", "ce", trains=False, group="gap"
        )
    )
    # 4. more iterations, each with its CE head at the same iterations
    for its in iteration_ablation(cfg):
        longer = {"train.iterations": its}
        v.append(Variant(f"its{its}", joint, longer, f"joint, {its} iterations", "accuracy", group="gap"))
        v.append(
            Variant(f"ce_its{its}", joint, longer, f"CE, {its} iterations", "ce", trains=False, group="gap")
        )
    return {x.name: x for x in v}


def iteration_ablation(cfg: dict[str, Any]) -> list[int]:
    """The iterations of the iteration ablation: :data:`ITERATION_FACTORS` × the base."""
    return [f * base_iterations(cfg) for f in ITERATION_FACTORS]


def seeds_of(v: Variant, cfg: dict[str, Any], longest: int) -> tuple[int, ...]:
    """The seeds a variant is trained with: the caption sets' own count; 5 for the longest iteration
    run and its CE head (the one "gap closed" verdict rests on them); else ``cfg["seeds"]``."""
    if v.measure == "text":
        return tuple(cfg["text_seeds"])
    if v.name in (f"its{longest}", f"ce_its{longest}"):
        return tuple(cfg["long_seeds"])
    return tuple(cfg["seeds"])


def gap_rows(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what changes, LZN variant, CE variant at the same encoder size and iterations) per row."""
    its = base_iterations(cfg)
    return [
        ("none (digits_joint)", "joint", "ce"),
        ("training α 1 -> 0.5", "alpha05", "ce"),
        ("training α 1 -> 0", "alpha0", "ce"),
        ("label-flow steps 50 -> 100", "steps100", "ce"),
        ("cutoff 0.2 -> 0.05", "cutoff05", "ce"),
        ("cutoff 0.2 -> 0.5", "cutoff50", "ce"),
        ("loss prob -> log", "loss_log", "ce"),
        ("generation loss off", "align_only", "ce"),
        ("encoder tiny -> digits preset", "wide", "ce_wide"),
        *((f"iterations {its} -> {n}", f"its{n}", f"ce_its{n}") for n in iteration_ablation(cfg)),
    ]


def make_jobs(
    cfg: dict[str, Any],
    paths: dict[str, Any],
    argv: list[str],
    names: list[str] | None = None,
    *,
    write: bool = True,
) -> list[Job]:
    """Every (variant, seed) job; ``write``: write the recipes first (seed 0's also into
    ``out/recipes`` for the page). An evaluation job only reads them (a training may be reading)."""
    out, runs = paths["out"], paths["runs"]
    jobs = []
    eval_settings = {k: v for k, v in cfg.items() if k not in SEED_KEYS}
    longest = max(iteration_ablation(cfg))
    for v in variants(cfg).values():
        if names and v.name not in names:
            continue
        for seed in seeds_of(v, cfg, longest):
            recipe = runs / "recipes" / f"{v.name}-seed{seed}.yaml"
            if write:
                write_recipe(v, seed, cfg, paths["data"], runs, recipe)
                if seed == 0:
                    write_recipe(v, 0, cfg, paths["data"], runs, out / "recipes" / f"{v.name}.yaml")
            key = sha1(json.dumps([EVAL_VERSION, v.measure, eval_settings], sort_keys=True, default=list))
            jobs.append(
                Job(
                    v,
                    seed,
                    recipe,
                    run_dir(runs, v.name, seed),
                    out / "digits_runs" / v.name / f"seed{seed}.json",
                    key,
                    [sys.executable, str(Path(__file__).resolve()), *argv, "--eval-job", v.name, str(seed)],
                )
            )
    return jobs


# ----------------------------------------------------------------------------- evaluation (one job)
def ce_baseline(
    recipe_path: Path, train_xy: tuple[Any, Any], test_xy: tuple[Any, Any], *, seed: int = 0
) -> dict[str, float]:
    """The image encoder of a recipe + Linear(q -> classes), trained with cross-entropy.

    Same architecture, batch, iterations, encoder learning rate, warm-up (linear from lr/5000)
    and gradient clip as the recipe, torch Adam; batches are epochs of a ``seed``-ed permutation
    (like the loader), the initialisation is ``torch.manual_seed(seed)``. Test accuracy of the
    plain weights (``accuracy``) and of their EMA with the recipe's decay and warm-up
    (``accuracy_ema``: the weights the LZN classifier is evaluated with), training-split accuracy,
    a linear probe on the encoder's q-dim output (``probe_anchor``) and the wall time.
    """
    import torch

    from lzn_core.eval.metrics import linear_probe
    from lzn_core.plugins import get_modality
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import lr_factor

    recipe = load_recipe(recipe_path)
    spec = get_modality("image")
    torch.manual_seed(seed)
    q, tr = recipe.latent.dim, recipe.train
    net = torch.nn.Sequential(
        spec.build_encoder(recipe.modalities["image"].config, q), torch.nn.Linear(q, 10)
    )
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=tr.lr_for("image", "encoder"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, tr.warmup, None))
    (x, y), gen, t0 = train_xy, torch.Generator().manual_seed(seed), time.time()
    order: list[Any] = []
    for k in range(tr.iterations):
        if len(order) < tr.batch_size:
            order = list(torch.randperm(x.shape[0], generator=gen).split(tr.batch_size))
            order = [b for b in order if len(b) == tr.batch_size][::-1]  # drop_last, popped from the end
        idx = order.pop()
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tr.grad_clip or float("inf"))
        opt.step()
        sched.step()
        decay = min(float(tr.ema or 0.0), (1.0 + k) / (10.0 + k))
        with torch.no_grad():
            for name, value in net.state_dict().items():
                ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
    seconds = time.time() - t0
    net.eval()
    with torch.no_grad():
        res = {
            "accuracy": float((net(test_xy[0]).argmax(1) == test_xy[1]).float().mean()),
            "train_accuracy": float((net(x).argmax(1) == y).float().mean()),
        }
        feats = [net[0](t).float() for t in (x, test_xy[0])]
        net.load_state_dict(ema)
        res["accuracy_ema"] = float((net(test_xy[0]).argmax(1) == test_xy[1]).float().mean())
    res["probe_anchor"] = linear_probe(feats[0], y, feats[1], test_xy[1])
    return {**res, "seconds": seconds}


def classifier_metrics(model: Any, test: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """LZN classifier (α, batch and steps of the recipe's ``eval``) on the test and training splits
    (``test_wrong``: the indices of the misclassified test images), and a linear probe on the
    anchors (train -> test)."""
    from lzn_core.eval import protocol as em
    from lzn_core.eval.metrics import linear_probe

    ecfg = model.recipe.eval
    out = {}
    for split, data in (("accuracy", test), ("train_accuracy", train)):
        pred, _ = em.zonal_predict(
            model,
            "image",
            "label",
            data["image"],
            alpha=ecfg.alpha,
            batch_size=ecfg.batch_size,
            steps=ecfg.steps,
        )
        out[split] = float((pred == data["label"]).float().mean())
        if split == "accuracy":  # which test images (shard order) it gets wrong: two seeds' errors differ
            out["test_wrong"] = (pred != data["label"]).nonzero().flatten().tolist()
    f_tr, f_te = (em.probe_features(model, "image", t["image"], "anchor") for t in (train, test))
    out["probe_anchor"] = linear_probe(f_tr, train["label"], f_te, test["label"])
    return out


def _generation_metrics(report: dict[str, Any]) -> dict[str, Any]:
    g = report["generation"].get("image", {})
    keys = ("fid", "kid", "kid_std", "fid_real_test_vs_train", "class_consistency", "judge_test_accuracy")
    return {k: g[k] for k in keys if k in g}


def evaluate_job(name: str, seed: int, cfg: dict[str, Any], paths: dict[str, Any]) -> dict[str, Any]:
    """The metrics of one trained job (what ``variant.measure`` asks for), as a flat-ish dict."""
    import torch

    from lzn_core.eval import protocol as em
    from lzn_core.eval.report import evaluate, load_split
    from lzn_core.io import load

    v = variants(cfg)[name]
    torch.set_num_threads(1)
    recipe = paths["runs"] / "recipes" / f"{name}-seed{seed}.yaml"
    if v.measure == "text":
        import text

        grid = paths["out"] / f"{name}.png" if seed == 0 else None  # caption -> images figure of the page
        return text.measure_run(
            run_dir(paths["runs"], name, seed) / "final", paths["data"][v.data], seed=seed, grid=grid
        )
    shards = paths["data"][v.data]
    if v.measure == "ce":
        from lzn_core.model import LZNModel
        from lzn_core.recipe import load_recipe

        reader = LZNModel(load_recipe(recipe))  # its modalities decode the shards
        tr, te = (
            load_split(reader, str(shards / f"{s}-*.tar"), ["image", "label"]) for s in ("train", "test")
        )
        return ce_baseline(recipe, (tr["image"], tr["label"]), (te["image"], te["label"]), seed=seed)
    model = load(run_dir(paths["runs"], name, seed) / "final")
    test, train = (
        load_split(model, str(shards / f"{s}-*.tar"), ["image", "label"]) for s in ("test", "train")
    )
    res: dict[str, Any] = {}
    if v.measure in ("full", "accuracy", "recon"):
        res.update(classifier_metrics(model, test, train))
    if v.measure in ("full", "generation"):
        figures = paths["out"] / name if seed == 0 else run_dir(paths["runs"], name, seed) / "eval"
        report = evaluate(
            model,
            test,
            train,
            alphas=cfg["alphas"],
            batch_sizes=cfg["batch_sizes"],
            samples=cfg["samples"],
            per_class=cfg["per_class"],
            recon=0,
            out=figures,
            classify=v.measure == "full",
        )
        res.update(_generation_metrics(report))
        cls = report["classification"].get("image -> label")
        if cls:
            res["sweep"] = {f"{r['alpha']}@{r['batch_size']}": r["accuracy"] for r in cls["sweep"]}
            res["ood_auroc"] = cls["ood_auroc"]
            res.update(
                vote_ece=cls["ece"],
                vote_mean_confidence=cls["mean_confidence"],
                vote_draws=cls["vote_setting"]["draws"],
                vote_alpha=cls["vote_setting"]["alpha"],
            )
    if v.measure in ("full", "recon", "generation"):
        x, y = test["image"][: cfg["recon_images"]], test["label"][: cfg["recon_images"]]
        res["recon_error"] = em.reconstruction_error(
            model,
            "image",
            x,
            y,
            draws=cfg["draws"] if v.measure != "generation" else 1,
            steps=cfg["recon_steps"],
        )
    if v.measure == "full":
        from lzn_core.eval.metrics import linear_probe

        res["probe"] = {}
        for kind in ("backbone", "anchor", "latent0", "latent"):
            f_tr, f_te = (em.probe_features(model, "image", t["image"], kind) for t in (train, test))
            res["probe"][kind] = linear_probe(f_tr, train["label"], f_te, test["label"])
    return res


def eval_main(name: str, seed: int, cfg: dict[str, Any], paths: dict[str, Any]) -> int:
    """``--eval-job NAME SEED``: evaluate one job and write its result JSON."""
    jobs = {(j.variant.name, j.seed): j for j in make_jobs(cfg, paths, [], [name], write=False)}
    job = jobs[(name, seed)]
    t0 = time.time()
    metrics = evaluate_job(name, seed, cfg, paths)
    trained = job.trained() or {}
    info = {
        "variant": name,
        "seed": seed,
        "recipe_sha1": job.recipe_sha1(),
        "eval_key": job.eval_key,
        "train_seconds": trained.get("seconds", metrics.get("seconds")),
        "train_start": trained.get("start"),
        "eval_seconds": time.time() - t0,
        "eval_end": time.time(),
    }
    write_result(job.result, info, metrics)
    return 0


# ----------------------------------------------------------------------------- the whole benchmark
def figures(cfg: dict[str, Any], paths: dict[str, Any], names: list[str]) -> dict[str, str]:
    """Reconstructions and class-conditional samples of seed 0's ``names`` (joint, rf_baseline)."""
    import torch
    from _digits_report import recon_rows_png, sample_grid_png

    from lzn_core.eval import protocol as em
    from lzn_core.eval.report import load_split
    from lzn_core.io import load

    models = {n: load(run_dir(paths["runs"], n, 0) / "final") for n in names}
    test = load_split(models[names[0]], str(paths["data"]["digits"] / "test-*.tar"), ["image", "label"])
    sub, ysub = test["image"][:256], test["label"][:256]  # zone the shown images within a test batch
    idx = torch.tensor([int((ysub == k).nonzero()[0]) for k in range(10) if bool((ysub == k).any())])
    recs = {}
    for name, m in models.items():
        anchors = m.encode("image", sub)
        z = m.latents(anchors, noise=torch.randn(anchors.shape, generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            recs[name] = m.decoders["image"].reconstruct(
                sub[idx], z[idx], m.condition("label", ysub[idx]), steps=cfg["recon_steps"]
            )
    out = paths["out"]
    figs = {"recon": str(recon_rows_png(sub[idx], recs, out / "digits_recon.png"))}
    n = min(10, cfg["per_class"])
    for name, m in models.items():
        imgs = em.class_samples(m, "label", "image", torch.arange(10).repeat_interleave(n), seed=1)
        figs[f"samples_{name}"] = str(sample_grid_png(imgs, n, out / f"digits_samples_{name}.png"))
    return figs


def trained_model(paths: dict[str, Any], name: str, seed: int = 0) -> Path | None:
    final = run_dir(paths["runs"], name, seed) / "final"
    return final if (final / "model.safetensors").is_file() else None


def build_report(
    cfg: dict[str, Any], paths: dict[str, Any], jobs: list[Job], docs: Path | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """Collect the finished jobs, draw the figures of seed 0's models and write the pages."""
    from _digits_report import write_report

    res = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "iterations": base_iterations(cfg),
        "variants": collect(jobs),
        "gap_rows": gap_rows(cfg),
        **extra,
    }
    res["not_run"] = {
        k: [s for s in v["planned"] if s not in v["seeds"]]
        for k, v in res["variants"].items()
        if len(v["seeds"]) < len(v["planned"])
    }
    have = [n for n in ("joint", "rf_baseline") if trained_model(paths, n)]
    res["figures"] = figures(cfg, paths, have) if have else {}
    out = paths["out"]
    for key in ("recon", "samples_joint", "samples_rf_baseline"):
        drawn = out / f"digits_{key}.png"  # by an earlier invocation whose seed-0 models are gone
        if key not in res["figures"] and drawn.is_file():
            res["figures"][key] = str(drawn)
    for v in variants(cfg).values():
        if v.measure == "text" and (out / f"{v.name}.png").is_file() and v.name in res["variants"]:
            if res["variants"][v.name]["seeds"][:1] == [0]:
                res["figures"][v.name] = str(out / f"{v.name}.png")
    write_report(res, paths["runs"], out, docs)
    return res


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings (minutes): checks the pipeline only")
    p.add_argument("--reuse", action="store_true", help="resume: keep finished jobs, run the missing ones")
    p.add_argument(
        "--iterations", type=int, help="base training iterations of every variant (default: the recipe's)"
    )
    p.add_argument("--seeds", type=int, help="seeds per digits variant (default 3)")
    p.add_argument("--text-seeds", type=int, help="seeds per caption set (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="jobs at a time (default 2: one per core)")
    p.add_argument("--only", nargs="*", help="run only these variants (the page marks the others not run)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="no training: write the pages from the finished jobs' results (same settings as the run)",
    )
    p.add_argument(
        "--data", default=str(ROOT / "data"), help="folder of the digits shard folders (written when missing)"
    )
    p.add_argument("--runs", default=None, help="run directories (default runs/bench[-quick])")
    p.add_argument("--out", default=None, help="results (default benchmarks/results[/quick])")
    p.add_argument("--docs", default=None, help="markdown page (default docs/results.md; not in --quick)")
    p.add_argument("--eval-job", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.iterations:
        cfg["iterations"] = args.iterations
    if args.seeds:
        cfg["seeds"] = tuple(range(args.seeds))
    if args.text_seeds:
        cfg["text_seeds"] = tuple(range(args.text_seeds))
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("quick" if args.quick else ""))
    paths = {
        "out": out,
        "runs": Path(args.runs or ROOT / ("runs/bench-quick" if args.quick else "runs/bench")),
        "data": {key: Path(args.data) / key for key in CAPTION_DATA.values()},
    }
    docs = Path(args.docs) if args.docs else (None if args.quick else ROOT / "docs" / "results.md")
    unknown = sorted(set(args.only or ()) - set(variants(cfg)))
    if unknown:
        raise SystemExit(
            f"--only: unknown variant(s) {', '.join(unknown)}; known: {', '.join(variants(cfg))}"
        )
    if args.eval_job:
        return eval_main(args.eval_job[0], int(args.eval_job[1]), cfg, paths)
    if args.report_only:
        res = build_report(cfg, paths, make_jobs(cfg, paths, argv, write=False), docs, {})
        print(
            f"[bench] pages written from {sum(len(v['runs']) for v in res['variants'].values())} finished jobs"
        )
        return 0
    t0 = time.time()
    from lzn_core.data.digits import write_digits

    for captions, key in CAPTION_DATA.items():
        if not list(paths["data"][key].glob("train-*.tar")):
            write_digits(paths["data"][key], captions=captions, progress=False)
    jobs = make_jobs(cfg, paths, argv)  # an evaluation job parses the same arguments (same settings)
    chosen = [j for j in jobs if not args.only or j.variant.name in args.only]
    failed = run_all(chosen, out / "logs", reuse=args.reuse, parallel=args.jobs)
    extra = {"invocation_minutes": round((time.time() - t0) / 60, 1), "reused": bool(args.reuse)}
    build_report(cfg, paths, jobs, docs, extra)
    print(
        f"[bench] done in {round((time.time() - t0) / 60, 1)} min: {out / 'digits.json'}"
        + (f", {docs}" if docs else "")
    )
    if failed:
        raise SystemExit("[bench] failed jobs:\n  " + "\n  ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
