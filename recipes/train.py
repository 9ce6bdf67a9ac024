"""Train a Latent Zoning Network from a recipe. One script, top to bottom (nanoGPT-style).

    deepspeed recipes/train.py --recipe cifar_joint.yaml                        # GPUs
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 recipes/train.py --recipe digits_joint.yaml  # CPU
    python recipes/train.py --recipe digits_joint.yaml train.iterations=200    # one process
    python recipes/train.py --recipe digits_joint.yaml --resume                 # continue from ckpt/latest
    python recipes/train.py --recipe digits_joint.yaml --resume --from step-400 train.iterations=1200
    python recipes/train.py --recipe digits_joint.yaml --fresh                  # old run -> previous-<n>/
    python recipes/train.py --recipe digits_joint.yaml --resume auto            # resume if there is a run, else start
    torchrun --nproc_per_node 2 recipes/train.py --recipe digits_joint.yaml     # or srun, mpirun (docs/cluster.md)

A step, for the global batch k split across ranks (rank r holds rows [r·b, (r+1)·b)):
  * every modality a task needs is encoded to anchors a: (b, q) and all-gathered *with
    gradients* to A: (B, q); each rank computes the latents of its own rows against all B
    anchors, z = IFM(a_i, α ε_i) (docs/method.md §2), with ε for the *global* batch drawn from a
    (seed, k)-seeded generator and sliced, so W processes compute what one process would;
  * ``generate`` T: the decoder loss of T on z_T (optionally conditioned, e.g. one-hot labels);
  * ``align`` S -> T: z_S flows back through T's anchors (reverse flow, docs/method.md §3); the loss
    wants the paired anchor (max over late steps of P(a_k | s_t)); T's anchors are its bank
    (label classes, with class weights of the global batch) or T's anchors of the same rows
    (a second augmented view when S == T).
Total loss = Σ weight · term; the engine (lzn_core.train.engine) does the clipped Adam step,
EMA, freezing, non-finite skipping and atomic checkpoints. The networks are called through
``nets`` (lzn_core.train.passes): all rows at once, or, with train.micro_batch_size, in two
passes over micro-batches that give the same gradient (the paper's batch on fewer GPUs);
train.precision: bf16 autocasts the networks, never the zoning. Every random draw of the step
comes from a (seed, step)-seeded generator on the model's device. A run directory that holds a run is
resumed (--resume) or started over (--fresh, the old files moved aside), never silently
restarted (lzn_core.train.rundir), and locked while a run writes it. Resume is exact: each rank's
generators are restored last, and draws that must not move them (data workers' seeds,
evaluation) run ``untouched()``. SIGTERM or SIGUSR1 on any rank stops every rank after the same
step with a checkpoint of it (lzn_core.train.preemption, exit status 75; docs/cluster.md).
Errors print as one line on rank 0 (lzn_core.train.failures); --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch
import yaml
from tqdm import tqdm

from lzn_core.alignment import alignment_loss, class_weights, gather_anchors
from lzn_core.data import loader
from lzn_core.eval.training import TrainingEvaluator, describe_metric
from lzn_core.io.files import write_model
from lzn_core.modality import MovesToDevice, move_batch
from lzn_core.model import LZNModel
from lzn_core.recipe import load_recipe
from lzn_core.train.engine import Engine, setup_distributed
from lzn_core.train.failures import reported
from lzn_core.train.monitor import TrainingMonitor
from lzn_core.train.passes import OnePass, network_passes
from lzn_core.train.plan import planned_train
from lzn_core.train.preemption import Preemption
from lzn_core.train.rng import seed_rank, seeded, untouched
from lzn_core.train.rundir import RunDir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a Latent Zoning Network recipe (DeepSpeed or one process)."
    )
    p.add_argument("--recipe", required=True, help="recipe YAML path or bare name (cwd, then recipes/)")
    p.add_argument("--output", default=None, help="run directory (default: the recipe's output_dir)")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run directory (--resume auto: if "
        "it holds a checkpoint, else start it: one command line for a job that is requeued)",
    )
    start.add_argument("--resume-auto", action="store_true", help=argparse.SUPPRESS)  # `--resume auto`
    start.add_argument(
        "--fresh", action="store_true", help="start over; the run directory's old files go to previous-<n>/"
    )
    p.add_argument("--from", dest="checkpoint", default=None, help="resume this checkpoint (tag or dir)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher"
    )
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides (train.batch_size=64)")
    quiet = os.environ.get("RANK", "0") != "0"  # a usage error is printed by rank 0 only
    argv = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(argv)):  # `--resume auto` (a value of --resume would swallow `--resume k=v`)
        if argv[i : i + 2] == ["--resume", "auto"] or argv[i] == "--resume=auto":
            argv[i : i + (1 if argv[i] == "--resume=auto" else 2)] = ["--resume-auto"]
            break
    with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
        args = p.parse_intermixed_args(argv)  # overrides may come before and after the options
    args.resume = "auto" if args.resume_auto else args.resume
    if args.checkpoint and args.fresh:
        p.error("--from resumes a checkpoint; it cannot be combined with --fresh")
    if args.checkpoint and args.resume == "auto":
        p.error("--from names the checkpoint to resume; it cannot be combined with --resume auto")
    args.resume = args.resume or bool(args.checkpoint)
    return args


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Each modality's batch on ``device``: tensors and custom batch types (``to``); lists stay."""
    return {k: move_batch(v, device) for k, v in batch.items()}


def home(batch: Any, device: torch.device) -> torch.device:
    """Where a batch is after ``to_device``: a tensor's device, ``device`` for a custom batch type
    (it moved itself), the CPU for a list (its tensors, if any, are placed by the encoder)."""
    if isinstance(batch, torch.Tensor):
        return batch.device
    return device if isinstance(batch, MovesToDevice) else torch.device("cpu")


# --------------------------------------------------------------------------- one step's losses
def task_losses(
    model, recipe, batch: dict[str, Any], step: int, rank: int, world: int, nets: OnePass | None = None
) -> dict[str, torch.Tensor]:
    """Loss term per task for this rank's rows of global batch ``step`` (means over own rows)."""
    nets = nets or OnePass(model)
    b = len(next(iter(batch.values())))
    total, start = b * world, rank * b
    device = next(model.parameters()).device
    own = torch.arange(start, start + b, device=device)
    for i, name in enumerate(model.names):  # training-time augmentation (e.g. CIFAR's random flips)
        spec = model.specs[name]
        if spec.transform is not None:
            gen = seeded(recipe.seed, step, 500 + i, home(batch[name], device))
            batch[name] = spec.transform(batch[name], model.configs[name], generator=gen, rows=(start, total))
    anchors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (own rows (b, q), all rows (B, q))
    noise: dict[str, torch.Tensor] = {}  # name -> ε of own rows (b, q), drawn for the global batch
    zs: dict[tuple[str, float], torch.Tensor] = {}  # (anchors key, α) -> z of own rows (b, q)

    def encoded(name: str, view: Any = None, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        key = key or name
        if key not in anchors:
            a = nets.encode(name, batch[name] if view is None else view)
            anchors[key] = (a, gather_anchors(a))
        return anchors[key]

    def latents(name: str, alpha: float, view: Any = None, key: str | None = None) -> torch.Tensor:
        if (key or name, alpha) in zs:  # e.g. cifar_joint's image latents: decoder and label alignment
            return zs[(key or name, alpha)]
        _, a_all = encoded(name, view, key)
        if name not in noise:
            gen = seeded(recipe.seed, step, model.names.index(name), device)
            noise[name] = torch.randn((total, model.latent_dim), generator=gen, device=device)[
                start : start + b
            ]
        z = model.latents(a_all, alpha=alpha, noise=noise[name].to(a_all.dtype), index=own)
        zs[(key or name, alpha)] = z
        return z

    def view(name: str, k: int) -> Any:  # augmented view k of own rows; seeded by (seed, step, rank, k)
        gen = seeded(recipe.seed, step, 1000 + 10 * rank + k, home(batch[name], device))
        return model.specs[name].augment(batch[name], model.configs[name], generator=gen)

    losses: dict[str, torch.Tensor] = {}
    for i, task in enumerate(recipe.tasks):
        if task.kind == "generate":
            z = latents(task.target, recipe.latent.alpha)
            cond = model.condition(task.condition, batch[task.condition]) if task.condition else None
            gen = seeded(recipe.seed, step, 100 + i, device)
            key = f"gen_{task.target}"
            losses[f"{key}_{i}" if key in losses else key] = nets.decoder_loss(
                task.target, z, batch[task.target], cond, generator=gen, rows=(start, total)
            )
            continue
        src, tgt = task.source, task.target
        if src == tgt:  # case 2: both sides are augmented views of the same rows (docs/method.md §7)
            z = latents(src, task.alpha, view(src, 1), key=f"{src}/view1")
        else:
            z = latents(src, task.alpha)
        weights = None
        if model.has_fixed_bank(tgt):  # case 3: the target's anchors are its classes
            bank, targets = model.bank(tgt), batch[tgt].to(device)
            if task.class_weights:
                weights = class_weights(targets, bank.shape[0])
        elif src == tgt:  # case 2: a second augmented view of the same rows
            _, bank = encoded(tgt, view(tgt, 2), key=f"{tgt}/view2")
            targets = own
        else:  # paired modalities (image <-> text): row i's pair is row i
            _, bank = encoded(tgt)
            targets = own
        out = model.reverse(z, bank, steps=task.steps, weights=weights, targets=targets)
        key = f"align_{src}_{tgt}"
        losses[f"{key}_{i}" if key in losses else key] = alignment_loss(
            out.target_probs, cutoff=task.cutoff, kind=task.loss
        )
    return losses


# --------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    """Train; an error prints as one line on rank 0 and exits 1 (``--debug``: the traceback)."""
    args = parse_args(argv)
    return reported(train, args, debug=args.debug)


def train(args: argparse.Namespace) -> int:
    t0 = time.time()
    recipe = load_recipe(args.recipe, args.overrides)
    rank, world, _ = setup_distributed(recipe.train.timeout_minutes)  # deepspeed, torchrun, srun, MPI
    run = RunDir(args.output or recipe.output_dir)  # locked; resumed, started over or refused: never silently
    start = run.begin(resume=args.resume, checkpoint=args.checkpoint, fresh=args.fresh)
    if rank == 0:
        print(start.message, flush=True)
    # Everything that initialises weights is built first: the weights come from the seed (the
    # same on every rank); only then are this rank's generators seeded, or restored on resume.
    torch.manual_seed(recipe.seed)
    model, tr = LZNModel(recipe), recipe.train
    with recipe.data.explained():  # missing shards: the error names the recipe's data.make command
        data = loader(
            recipe.data.train,
            model.specs,
            configs=model.configs,
            batch_size=tr.batch_size // world,
            rank=rank,
            world_size=world,
            seed=recipe.seed,
            num_workers=recipe.data.num_workers,
        )
    engine = Engine(model, recipe, run.ckpt, world_size=world)
    model, device = engine.model, engine.device
    step_losses = lambda b, n: task_losses(model, recipe, b, 0, rank, world, n)  # noqa: E731
    tr = planned_train(model, recipe, step_losses, rank=rank, world=world)  # micro_batch_size: auto -> rows
    nets = network_passes(model, tr, world)  # all rows at once, or two passes over micro-batches
    if rank == 0:
        write_recipe(recipe, run.path / "recipe.yaml")
        eval_model = LZNModel(recipe).to(device)
        evaluator = TrainingEvaluator(eval_model, run.path)
    seed_rank(recipe.seed, rank)  # dropout masks differ across ranks
    if start.checkpoint is not None:
        client = engine.load(start.checkpoint)  # model, optimiser, EMA, this rank's generators
        data.load_state(client["loader"])
    monitor = TrainingMonitor(engine)  # TensorBoard / W&B / CSV of the DeepSpeed config, one curve per run
    batches, results, t_last, skipped_samples = iter(data), {}, time.time(), 0

    with (
        Preemption(tr, rank=rank, world=world) as preempt,  # stop signals, deadline, wall-time checkpoints
        tqdm(
            total=tr.iterations, initial=start.step, disable=rank != 0, dynamic_ncols=True, desc=recipe.name
        ) as bar,
    ):
        for step in range(start.step, tr.iterations):
            with untouched():  # a DataLoader draws its workers' seed from the global generator
                batch = to_device(next(batches), device)
            losses = task_losses(model, recipe, batch, step, rank, world, nets)
            weights = {t: task.weight for t, task in zip(losses, recipe.tasks, strict=True)}
            total = sum(weights[k] * v for k, v in losses.items())
            engine.step(total, nets)
            it = step + 1
            if it % tr.log_every == 0 or it == tr.iterations:
                terms = torch.stack([total.detach(), *[v.detach() for v in losses.values()]])
                corrupt = torch.tensor([float(data.skipped)], device=terms.device)
                if world > 1:
                    torch.distributed.all_reduce(terms)
                    torch.distributed.all_reduce(corrupt)
                    terms /= world
                skipped_samples = int(corrupt.item())
                row = {
                    "step": it,
                    "loss": terms[0].item(),
                    **{k: terms[j + 1].item() for j, k in enumerate(losses)},
                    "skipped": engine.skipped,
                    "skipped_samples": skipped_samples,
                    "lr": engine.lrs(),
                    "it_s": tr.log_every / (time.time() - t_last),
                    "time": time.time() - t0,
                }
                t_last = time.time()
                if rank == 0:
                    run.log(row)
                    monitor.write(row)
                    bar.set_postfix(
                        {k: f"{v:.4g}" for k, v in row.items() if k in losses or k == "loss"}
                        | {"skip": engine.skipped, "bad": skipped_samples}
                    )
            bar.update(1)
            periodic = bool(tr.ckpt_every) and (it % tr.ckpt_every == 0 or it == tr.iterations)
            at = preempt.boundary(it, periodic)  # one all-reduce: a stop signal on any rank? minutes due?
            if at.save:
                saved = engine.save(it, {"step": it, "loader": data.state().model_dump()})
            if at.stop:  # every rank, after the same step: one line on rank 0, exit status 75
                return preempt.stopped(it, saved)
            do_eval = it == tr.iterations or bool(tr.eval_every and it % tr.eval_every == 0)
            do_samples = it == tr.iterations or bool(tr.sample_every and it % tr.sample_every == 0)
            if rank == 0 and (do_eval or do_samples):
                eval_model.load_weights(engine.ema_state_dict())
                with untouched():  # evaluation on rank 0 must not move the training stream
                    new = evaluator(eval_model, it, accuracy=do_eval, samples=do_samples)
                results.update(new)
                run.log({"step": it, **{f"eval/{k}": v for k, v in new.items()}})
                monitor.write({f"eval/{k}": v for k, v in new.items()})  # grids as images where it can
                for k, v in new.items():
                    if k.startswith("accuracy/"):
                        bar.write(f"step {it}: test {k} {v:.4f}")
            if do_eval or do_samples:
                preempt.barrier()  # the others wait for rank 0 here (train.eval_timeout_minutes)

        if rank == 0:
            eval_model.load_weights(engine.ema_state_dict())
            eval_model.fill_banks(seed=recipe.seed)
            final = write_model(eval_model, run.path / "final", metrics=run.metrics)
            plot_losses(run.metrics, run.path / "loss.png")
            print_summary(recipe, results, run.path, final, time.time() - t0, engine.skipped, skipped_samples)
        preempt.barrier()
    return 0


def write_recipe(recipe, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def plot_losses(metrics: Path, out: Path) -> None:
    """Loss terms against the step, from ``metrics.jsonl``."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [k for k in rows[-1] if k == "loss" or k.startswith(("gen_", "align_"))]:
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] == r[key]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def print_summary(
    recipe, results: dict[str, Any], run_dir: Path, final: Path, wall: float, skipped: int, bad: int
) -> None:
    lines = [
        f"run {recipe.name}: {recipe.train.iterations} iterations in {wall / 60:.1f} min "
        f"({skipped} skipped steps, {bad} corrupt or unfit samples skipped)"
    ]
    lines += [describe_metric(recipe, key, value) for key, value in results.items()]
    lines += [f"run dir: {run_dir}", f"exported model: {final}  (lzn_core.load({str(final)!r}))"]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
