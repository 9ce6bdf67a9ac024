"""The GPU check (issue 16): cifar_joint and cifar_gen at full model size and the paper's batch
on one GPU, fp32 and bf16; writes ``gpu.md``. Driven by ``benchmarks/gpu_check.sh``.

    python benchmarks/gpu_check.py data DIR --images 2400      # synthetic CIFAR-shaped shards
    python benchmarks/gpu_check.py run --data DIR --out benchmarks/results/gpu.md
    python benchmarks/gpu_check.py run --data DIR --out /tmp/gpu.md --rehearse   # CPU, tiny sizes

``data`` writes a tarball in the official cifar-10-python format (32x32x3, 10 classes; each
class a coloured blob on noise, so the images are not pure noise) and converts it with the
project's own ``lzn shards cifar10``: nothing is downloaded.

``run`` measures every configuration in a fresh process (``one``), so each peak memory is its
own, and rewrites the page after each one (a run cut short still leaves what it measured). A
configuration is the real training step: ``recipes/train.py``'s ``task_losses`` through
``lzn_core.train.passes`` (two passes over micro-batches when ``train.micro_batch_size`` is
below the batch) and the DeepSpeed ``Engine``'s step, with checkpoints, sampling, evaluation
and export switched off. Per configuration:

* images/s: batch x steps / their wall time, the first ``--warmup`` steps excluded, the device
  synchronised at each step's end;
* solver ms per iteration: the step's solver calls (the flow of all N anchors of the batch)
  recorded and replayed forward and backward (``benchmarks/step_profile.py``), and its share
  of the step;
* peak memory: ``torch.cuda.max_memory_allocated`` (on CPU, the process's peak RSS).
"""

from __future__ import annotations

import argparse
import io
import json
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
FULL = dict(batch=2000, micro=500, iterations=12, warmup=4, workers=8, overrides=())
REHEARSAL = dict(  # CPU: the same pipeline at a size that runs in seconds
    batch=8,
    micro=4,
    iterations=2,
    warmup=1,
    workers=0,
    overrides=("modalities.image.config.preset=small32", "latent.dim=16", "deepspeed=ds/cpu.json"),
)
PAPER_IMAGES_PER_S = 217  # case 1: batch 2000, 50k iterations in 8 h on 16 A100s (PAPER §4)


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

    overrides = [
        f"data.train={data}/train-*.tar",
        f"data.eval={data}/test-*.tar",
        f"data.num_workers={size['workers']}",
        f"train.batch_size={size['batch']}",
        f"train.micro_batch_size={size['micro']}",
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
    nets = network_passes(model, recipe.train, world)
    batches = iter(
        loader(
            recipe.data.train,
            model.specs,
            configs=model.configs,
            batch_size=recipe.train.batch_size // world,
            seed=recipe.seed,
            num_workers=recipe.data.num_workers,
        )
    )
    calls: list[Any] = []
    wrapped = record_solver_calls(model, calls)
    model.latents, model.reverse = wrapped["latents"], wrapped["reverse"]  # type: ignore[method-assign]
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
    timed = seconds[size["warmup"] :]
    solver_fwd, solver_bwd = replay_solver(model, list(calls), reps=3, sync=sync)
    step_s = statistics.median(timed)
    if cuda:
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "GPU allocated"
    else:
        import resource

        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"
    return {
        "recipe": recipe_name,
        "precision": precision,
        "batch": recipe.train.batch_size,
        "micro_batch": recipe.train.micro_batch_size,
        "passes": type(nets).__name__,
        "iterations": recipe.train.iterations,
        "timed_steps": len(timed),
        "images_per_s": recipe.train.batch_size * len(timed) / sum(timed),
        "step_ms": 1000 * step_s,
        "solver_ms": 1000 * (solver_fwd + solver_bwd),
        "solver_share": (solver_fwd + solver_bwd) / step_s,
        "solver_rows": int(max((c[1][0].shape[0] for c in calls), default=0)),
        "peak_gib": peak / 2**30,
        "peak_kind": peak_kind,
        "skipped_steps": engine.skipped,
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- the page
def page(rows: list[dict[str, Any]], pending: list[str], meta: dict[str, Any]) -> str:
    lines = [
        "# GPU check: the paper's batch on one GPU (issue 16)",
        "",
        f"Generated by `bash benchmarks/gpu_check.sh{' --rehearse' if meta['rehearse'] else ''}` on "
        f"{meta['date']}; {meta['device']}, torch {meta['torch']}; {meta['seconds']:.0f} s in all.",
        f"Synthetic CIFAR-shaped shards (32x32x3, 10 classes, made on the machine); full model size "
        f"unless rehearsing; {meta['iterations']} iterations per configuration, the first "
        f"{meta['warmup']} excluded from the timings; checkpoints, sampling, evaluation, export off.",
        "",
        "| recipe | precision | batch (micro-batch) | images/s | step | solver (N rows) | solver share | peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        micro = r["micro_batch"] if r["passes"] == "TwoPass" else "one pass"
        lines.append(
            f"| {r['recipe']} | {r['precision']} | {r['batch']} ({micro}) | {r['images_per_s']:.0f} | "
            f"{r['step_ms']:.0f} ms | {r['solver_ms']:.1f} ms ({r['solver_rows']}) | "
            f"{100 * r['solver_share']:.1f}% | {r['peak_gib']:.1f} GiB ({r['peak_kind']}) |"
        )
    for name in pending:
        lines.append(f"| {name} | not run: the time budget was spent | | | | | | |")
    lines += [
        "",
        f"Reference: the paper trains case 1 at batch 2000 for 50k iterations in 8 h on 16 A100s, "
        f"~{PAPER_IMAGES_PER_S} images/s per A100. Raw rows: `gpu.json` beside this page.",
    ]
    return "\n".join(lines) + "\n"


def run_all(data: Path, out: Path, rehearse: bool, budget_s: float) -> int:
    size = REHEARSAL if rehearse else FULL
    t0, rows, failed = time.time(), [], []
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"rehearse": rehearse, "date": time.strftime("%Y-%m-%d"), "device": "?", "torch": "?"}
    meta |= {"iterations": size["iterations"], "warmup": size["warmup"]}
    for k, (recipe, precision) in enumerate(CONFIGS):
        if time.time() - t0 > budget_s:
            pending = [f"{r} {p}" for r, p in CONFIGS[k:]]
            break
        cmd = [sys.executable, __file__, "one", recipe, precision, "--data", str(data)]
        done = subprocess.run(cmd + (["--rehearse"] if rehearse else []), capture_output=True, text=True)
        if done.returncode != 0:
            failed.append(f"{recipe} {precision}: " + (done.stderr.strip().splitlines() or ["?"])[-1])
            print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        meta |= {"device": row["device"], "torch": row["torch"]}
        print(f"{recipe} {precision}: {row['images_per_s']:.0f} images/s, peak {row['peak_gib']:.1f} GiB")
        meta["seconds"] = time.time() - t0
        out.write_text(page(rows, [], meta))
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    else:
        pending = []
    meta["seconds"] = time.time() - t0
    out.write_text(page(rows, pending, meta))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    for line in failed:
        print(f"gpu_check: failed: {line}", file=sys.stderr)
    return 1 if failed or not rows else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="synthetic CIFAR-shaped shards")
    d.add_argument("out", type=Path)
    d.add_argument("--images", type=int, default=2400)
    r = sub.add_parser("run", help="every configuration, each in a fresh process; writes the page")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True, help="the page, e.g. benchmarks/results/gpu.md")
    r.add_argument("--rehearse", action="store_true", help="CPU, tiny sizes")
    r.add_argument("--budget", type=float, default=400.0, help="seconds; later configurations are skipped")
    o = sub.add_parser("one", help="one configuration in this process: a JSON line")
    o.add_argument("recipe")
    o.add_argument("precision", choices=["fp32", "bf16"])
    o.add_argument("--data", type=Path, required=True)
    o.add_argument("--rehearse", action="store_true")
    args = p.parse_args(argv)
    if args.command == "data":
        make_data(args.out, args.images)
        return 0
    if args.command == "run":
        return run_all(args.data, args.out, args.rehearse, args.budget)
    row = measure(args.recipe, args.precision, args.data, REHEARSAL if args.rehearse else FULL)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
