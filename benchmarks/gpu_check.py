"""The GPU check (issues 16, 24, 27): cifar_joint and cifar_gen at full model size and the paper's
batch 2000 on one GPU, fp32 and bf16, and the device checks of ``tests/e2e/test_gpu.py``; writes
``gpu.md`` and ``gpu.json``. Driven by ``benchmarks/gpu_check.sh`` (which installs first).

    python benchmarks/gpu_check.py versions                    # what the interpreter ended up with
    python benchmarks/gpu_check.py data DIR --images 2400      # synthetic CIFAR-shaped shards
    python benchmarks/gpu_check.py run --data DIR --out benchmarks/results/gpu.md
    python benchmarks/gpu_check.py run --data DIR --out /tmp/gpu.md --rehearse   # CPU, tiny sizes

``data`` writes a tarball in the official cifar-10-python format (32x32x3, 10 classes; each
class a coloured blob on noise, so the images are not pure noise) and converts it with the
project's own ``lzn shards cifar10``: nothing is downloaded.

``run`` first runs the device checks (``pytest -m gpu tests/e2e/test_gpu.py``: two passes = one
pass, bf16 leaves the zoning unchanged, a ragged batch's step on the device, the memory plan
against measured steps; each test records its numbers), then every configuration in a fresh
process (``one``), so each peak memory is its own, and rewrites the page after each step (a run
cut short still leaves what it measured); a configuration starts only while its estimated time
fits the budget (counted from ``--started``: the installs are in it). A configuration is the real
training step: ``recipes/train.py``'s ``task_losses`` through ``lzn_core.train.passes`` with the
micro-batch of the memory plan (``train.micro_batch_size: auto``, :mod:`lzn_core.train.plan`:
measured on the device, its free memory less 15%) and the DeepSpeed ``Engine``'s step,
checkpoints, sampling, evaluation and export off. Per configuration:

* images/s: batch x steps / their wall time, the first ``--warmup`` steps excluded, the device
  synchronised at each step's end;
* solver ms per iteration: the step's solver calls (the flow of all N anchors of the batch)
  recorded and replayed forward and backward (``benchmarks/step_profile.py``), and its share
  of the step;
* peak memory: ``torch.cuda.max_memory_allocated`` over the training steps, against the plan's
  predicted peak (on the CPU, the process's peak RSS, not comparable: no prediction is shown).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIGS = (("cifar_joint", "fp32"), ("cifar_joint", "bf16"), ("cifar_gen", "fp32"), ("cifar_gen", "bf16"))
FULL = dict(batch=2000, iterations=8, warmup=3, workers=8, overrides=(), estimate_s=75.0, checks_s=120.0)
REHEARSAL = dict(  # CPU: the same pipeline at a size that runs in seconds
    batch=8,
    iterations=2,
    warmup=1,
    workers=0,
    overrides=("modalities.image.config.preset=small32", "latent.dim=16", "deepspeed=ds/cpu.json"),
    estimate_s=30.0,
    checks_s=600.0,
)
PAPER_IMAGES_PER_S = (
    217  # case 1: batch 2000, 50k iterations in 8 h on 16 A100s (the paper, docs/method.md §7)
)
TARGET_IMAGES_PER_S = 5 * PAPER_IMAGES_PER_S  # issue 27: >= 5x an A100 on one GPU, cifar_joint


# ----------------------------------------------------------------------------- versions
VERSIONED = ("torch", "numpy", "setuptools", "typing_extensions", "pydantic", "deepspeed", "lzn")


def versions() -> list[str]:
    """One line per package the check depends on: the versions this interpreter ended up with."""
    from importlib import metadata

    lines = [f"gpu_check: python {platform.python_version()} ({sys.executable})"]
    for name in VERSIONED:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "MISSING"
        extra = ""
        if name == "torch" and version != "MISSING":
            import torch

            cuda = torch.cuda.is_available()
            extra = f" (CUDA {torch.version.cuda}; " + (
                f"{torch.cuda.get_device_name()})" if cuda else "no CUDA device)"
            )
        if name == "lzn" and version != "MISSING":
            import lzn_core

            extra = f" ({Path(lzn_core.__file__).parent.parent})"
        lines.append(f"gpu_check: {name} {version}{extra}")
    return lines


# ----------------------------------------------------------------------------- synthetic data
def write_cifar_tarball(path: Path, images: int, seed: int = 0) -> None:
    """``images`` training images (+ a tenth for test) in the cifar-10-python tarball format."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    colours = rng.integers(40, 256, size=(10, 3))

    def batch(n: int) -> dict[bytes, Any]:
        labels = rng.integers(0, 10, size=n)
        img = rng.integers(0, 60, size=(n, 3, 32, 32)).astype(np.float32)
        cy, cx = rng.integers(8, 24, size=(2, n))
        blob = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) < 36
        img += blob[:, None] * colours[labels][:, :, None, None]
        data = np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072)
        return {b"data": data, b"labels": labels.tolist()}

    per = -(-images // 5)
    names = [f"class{k}".encode() for k in range(10)]
    with tarfile.open(path, "w:gz") as tar:
        members = {"batches.meta": {b"label_names": names, b"num_cases_per_batch": per}}
        members |= {f"data_batch_{i}": batch(per) for i in range(1, 6)}
        members["test_batch"] = batch(max(10, images // 10))
        for name, obj in members.items():
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def make_data(out: Path, images: int) -> None:
    """Synthetic CIFAR-shaped shards in ``out`` (train-*.tar, test-*.tar) via ``lzn shards cifar10``."""
    from lzn_core.cli import main as lzn

    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "cifar-10-python.tar.gz"
        write_cifar_tarball(tarball, images)
        code = lzn(["shards", "cifar10", str(tarball), str(out), "--no-progress"])
    if code != 0:
        raise SystemExit(f"gpu_check: lzn shards cifar10 failed (exit {code})")


# ----------------------------------------------------------------------------- one configuration
def measure(recipe_name: str, precision: str, data: Path, size: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this process (see the module doc); returns its row."""
    import torch

    sys.path.insert(0, str(ROOT / "recipes"))
    import train  # the training script itself: its task_losses is the step's math
    from step_profile import record_solver_calls, replay_solver

    from lzn_core.data import loader
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import Engine, setup_distributed
    from lzn_core.train.passes import network_passes
    from lzn_core.train.plan import HEADROOM, device_budget, step_memory

    overrides = [
        f"data.train={data}/train-*.tar",
        f"data.eval={data}/test-*.tar",
        f"data.num_workers={size['workers']}",
        f"train.batch_size={size['batch']}",
        "train.micro_batch_size=auto",
        f"train.precision={precision}",
        f"train.iterations={size['iterations']}",
        "train.ckpt_every=0",
        "train.sample_every=0",
        "train.eval_every=0",
        *size["overrides"],
    ]
    recipe = load_recipe(f"{recipe_name}.yaml", overrides)
    _, world, _ = setup_distributed()
    torch.manual_seed(recipe.seed)
    model = LZNModel(recipe)
    engine = Engine(model, recipe, Path(tempfile.mkdtemp(prefix="lzn-gpu-check-")), world_size=world)
    model, device = engine.model, engine.device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = recipe.train.batch_size // world

    def shards(seed: int) -> Any:
        return iter(
            loader(
                recipe.data.train,
                model.specs,
                configs=model.configs,
                batch_size=rows,
                seed=seed,
                num_workers=recipe.data.num_workers,
            )
        )

    # the memory plan, as train.micro_batch_size: auto makes it (no evaluation copy in this process)
    t_plan = time.perf_counter()
    planning = train.to_device(next(shards(recipe.seed + 1)), device)
    measured = step_memory(
        model, recipe, planning, lambda b, n: train.task_losses(model, recipe, b, 0, 0, world, n), rank0=False
    )
    del planning
    # on the CPU: a device on which two passes fit (the rehearsal must take the two-pass path)
    memory = device_budget(device) if cuda else int(measured.peak(rows // 2) / (1 - HEADROOM)) + 1
    plan = measured.choose(memory)
    plan_s = time.perf_counter() - t_plan
    print(plan.describe(), flush=True)
    nets = network_passes(
        model, recipe.train.model_copy(update={"micro_batch_size": plan.micro_batch}), world
    )
    batches = shards(recipe.seed)
    calls: list[Any] = []
    wrapped = record_solver_calls(model, calls)
    model.latents, model.reverse = wrapped["latents"], wrapped["reverse"]  # type: ignore[method-assign]
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for step in range(recipe.train.iterations):
        calls.clear()
        sync()
        t = time.perf_counter()
        batch = train.to_device(next(batches), device)
        losses = train.task_losses(model, recipe, batch, step, 0, world, nets)
        total = sum(task.weight * v for task, v in zip(recipe.tasks, losses.values(), strict=True))
        engine.step(total, nets)
        sync()
        seconds.append(time.perf_counter() - t)
        print(
            f"{recipe_name} {precision}: step {step + 1}/{recipe.train.iterations} {seconds[-1]:.2f} s",
            flush=True,
        )
    if cuda:
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "GPU allocated"
    else:
        import resource

        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"
    timed = seconds[size["warmup"] :]
    solver_fwd, solver_bwd = replay_solver(model, list(calls), reps=3, sync=sync)
    step_s = statistics.median(timed)
    return {
        "recipe": recipe_name,
        "precision": precision,
        "batch": recipe.train.batch_size,
        "micro_batch": plan.micro_batch,
        "passes": plan.passes,
        "nets": type(nets).__name__,
        "iterations": recipe.train.iterations,
        "timed_steps": len(timed),
        "images_per_s": recipe.train.batch_size * len(timed) / sum(timed),
        "step_ms": 1000 * step_s,
        "solver_ms": 1000 * (solver_fwd + solver_bwd),
        "solver_share": (solver_fwd + solver_bwd) / step_s,
        "solver_rows": int(max((c[1][0].shape[0] for c in calls), default=0)),
        "peak_gib": peak / 2**30,
        "peak_kind": peak_kind,
        "predicted_peak_gib": plan.predicted_peak / 2**30 if cuda else None,
        "plan_device_gib": plan.device_memory / 2**30,
        "plan_s": plan_s,
        "plan": plan.describe(),
        "skipped_steps": engine.skipped,
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- the device checks
def device_checks(work: Path, rehearse: bool, timeout: float) -> dict[str, Any]:
    """``pytest -m gpu tests/e2e/test_gpu.py`` in a subprocess; the numbers its tests record."""
    record = work / "checks.jsonl"
    record.unlink(missing_ok=True)
    env = {**os.environ, "LZN_GPU_RECORD": str(record)}
    if rehearse:
        env["LZN_GPU_TESTS_DEVICE"] = "cpu"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "gpu",
        "tests/e2e/test_gpu.py",
    ]
    t = time.time()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, tail = done.returncode, (done.stdout + done.stderr).strip().splitlines()[-15:]
    except subprocess.TimeoutExpired as exc:
        code, tail = -1, [f"timed out after {timeout:.0f} s", *str(exc.stdout or "").splitlines()[-10:]]
    rows = [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []
    summary = next(
        (line for line in reversed(tail) if " passed" in line or " failed" in line), tail[-1] if tail else ""
    )
    print("\n".join(tail), flush=True)
    return {"returncode": code, "summary": summary.strip("= "), "seconds": time.time() - t, "records": rows}


# ----------------------------------------------------------------------------- the page
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def page(
    rows: list[dict[str, Any]], checks: dict[str, Any] | None, pending: list[str], meta: dict[str, Any]
) -> str:
    lines = [
        "# GPU check: the paper's batch on one GPU (issues 24, 27)",
        "",
        f"Generated by `bash benchmarks/gpu_check.sh{' --rehearse' if meta['rehearse'] else ''}` on "
        f"{meta['date']}; {meta['device']}, torch {meta['torch']}; {meta['seconds']:.0f} s in all, the "
        "installs included.",
        "",
        "Versions: " + "; ".join(v.removeprefix("gpu_check: ") for v in meta["versions"]) + ".",
        "",
        "## Throughput and memory",
        "",
        f"Synthetic CIFAR-shaped shards (32x32x3, 10 classes, made on the machine); "
        f"{'small model (rehearsal)' if meta['rehearse'] else 'full model size'}; {meta['iterations']} "
        f"iterations per configuration, the first {meta['warmup']} excluded from the timings; checkpoints, "
        "sampling, evaluation, export off. The micro-batch is the memory plan's "
        "(`train.micro_batch_size: auto`, measured on the device, its free memory less 15%).",
        "",
        "| recipe | precision | batch (micro-batch x passes) | images/s | step | solver (N rows) | solver share "
        "| peak memory | predicted peak (plan) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        micro = f"{r['micro_batch']} x {r['passes']}" if r["micro_batch"] else "one pass"
        pred = (
            "n/a (CPU)"
            if r["predicted_peak_gib"] is None
            else (
                f"{r['predicted_peak_gib']:.1f} GiB ({r['predicted_peak_gib'] / r['peak_gib']:.2f}x measured)"
            )
        )
        lines.append(
            f"| {r['recipe']} | {r['precision']} | {r['batch']} ({micro}) | {r['images_per_s']:.0f} | "
            f"{r['step_ms']:.0f} ms | {r['solver_ms']:.1f} ms ({r['solver_rows']}) | "
            f"{100 * r['solver_share']:.1f}% | {r['peak_gib']:.1f} GiB ({r['peak_kind']}) | {pred} |"
        )
    for name in pending:
        lines.append(f"| {name} | not run: its estimated time did not fit the budget | | | | | | | |")
    joint = [r["images_per_s"] for r in rows if r["recipe"] == "cifar_joint"]
    verdict = (
        "not measured"
        if not joint
        else f"best {max(joint):.0f} images/s: {'met' if max(joint) >= TARGET_IMAGES_PER_S else 'not met'}"
    )
    lines += [
        "",
        f"Reference: the paper trains case 1 at batch 2000 for 50k iterations in 8 h on 16 A100s, "
        f"~{PAPER_IMAGES_PER_S} images/s per A100; the target of issue 27 is >= {TARGET_IMAGES_PER_S} images/s "
        f"for cifar_joint on one GPU ({'rehearsal: no GPU' if meta['rehearse'] else verdict}).",
        "",
        "## Device checks (`tests/e2e/test_gpu.py`, marked gpu)",
        "",
    ]
    if checks is None:
        lines.append("Not run.")
    else:
        lines += [
            f"`pytest -m gpu tests/e2e/test_gpu.py`: {checks['summary']} (exit {checks['returncode']}, "
            f"{checks['seconds']:.0f} s).",
            "",
            "| check | numbers |",
            "|---|---|",
        ]
        for rec in checks["records"]:
            nums = "; ".join(f"{k} {_fmt(v)}" for k, v in rec.items() if k != "test")
            lines.append(f"| {rec['test'].removeprefix('test_').replace('_', ' ')} | {nums} |")
    lines += ["", "Raw rows: `gpu.json` beside this page."]
    return "\n".join(lines) + "\n"


def run_all(data: Path, out: Path, rehearse: bool, budget_s: float, started: float | None) -> int:
    size = REHEARSAL if rehearse else FULL
    t0 = started or time.time()
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "rehearse": rehearse,
        "date": time.strftime("%Y-%m-%d"),
        "device": "?",
        "torch": "?",
    }
    meta |= {"iterations": size["iterations"], "warmup": size["warmup"], "versions": versions()}
    checks: dict[str, Any] | None = None

    def write(pending: list[str]) -> None:
        meta["seconds"] = time.time() - t0
        out.write_text(page(rows, checks, pending, meta))
        report = {"meta": meta, "checks": checks, "rows": rows, "pending": pending}
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")

    left = budget_s - (time.time() - t0)
    checks = device_checks(data.parent, rehearse, timeout=max(30.0, min(size["checks_s"], left - 60)))
    if checks["returncode"] != 0:
        failed.append(f"device checks: {checks['summary']}")
    write([f"{r} {p}" for r, p in CONFIGS])
    estimate, pending = size["estimate_s"], []
    for k, (recipe, precision) in enumerate(CONFIGS):
        if time.time() - t0 + estimate > budget_s:
            pending = [f"{r} {p}" for r, p in CONFIGS[k:]]
            break
        t = time.time()
        cmd = [sys.executable, __file__, "one", recipe, precision, "--data", str(data)]
        done = subprocess.run(cmd + (["--rehearse"] if rehearse else []), capture_output=True, text=True)
        estimate = max(estimate if not rows else 0.0, time.time() - t)
        if done.returncode != 0:
            failed.append(f"{recipe} {precision}: " + (done.stderr.strip().splitlines() or ["?"])[-1])
            print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        meta |= {"device": row["device"], "torch": row["torch"]}
        print(
            f"{recipe} {precision}: {row['images_per_s']:.0f} images/s, peak {row['peak_gib']:.1f} GiB "
            f"({row['plan']})",
            flush=True,
        )
        write([f"{r} {p}" for r, p in CONFIGS[k + 1 :]])
    write(pending)
    for line in failed:
        print(f"gpu_check: failed: {line}", file=sys.stderr)
    return 1 if failed or not rows else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="synthetic CIFAR-shaped shards")
    d.add_argument("out", type=Path)
    d.add_argument("--images", type=int, default=2400)
    r = sub.add_parser("run", help="the device checks, then every configuration in a fresh process; the page")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True, help="the page, e.g. benchmarks/results/gpu.md")
    r.add_argument("--rehearse", action="store_true", help="CPU, tiny sizes")
    r.add_argument(
        "--budget", type=float, default=390.0, help="seconds from --started; later steps are skipped"
    )
    r.add_argument(
        "--started", type=float, default=None, help="epoch seconds the budget counts from (default: now)"
    )
    sub.add_parser("versions", help="the versions of torch, numpy, ..., lzn this interpreter holds")
    o = sub.add_parser("one", help="one configuration in this process: a JSON line")
    o.add_argument("recipe")
    o.add_argument("precision", choices=["fp32", "bf16"])
    o.add_argument("--data", type=Path, required=True)
    o.add_argument("--rehearse", action="store_true")
    args = p.parse_args(argv)
    if args.command == "versions":
        print("\n".join(versions()), flush=True)
        return 0
    if args.command == "data":
        make_data(args.out, args.images)
        return 0
    if args.command == "run":
        return run_all(args.data, args.out, args.rehearse, args.budget, args.started)
    size = REHEARSAL if args.rehearse else FULL
    row = measure(args.recipe, args.precision, args.data, size)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
