"""Where one training step of a recipe spends its time (issue 15): data, encoders, the zoning
solver, decoders, backward, the optimiser step, the EMA.

The step is the real one: ``recipes/train.py``'s ``task_losses`` and the ``Engine`` of
``lzn_core.train`` in one process (gloo, CPU). Forward parts are timed by wrapping the calls
the step makes (``LZNModel.encode/latents/reverse``, each decoder's ``loss``). The backward of
the solver is measured by replaying the solver calls of a step (same shapes and settings, leaf
inputs) forward and backward; the rest of the engine's backward is the networks' (encoders and
decoders). No profiler runs (its per-op overhead distorts a step of many small ops).

    python benchmarks/step_profile.py --recipe digits_joint.yaml --steps 30
    python benchmarks/step_profile.py --recipe digits_text.yaml --out benchmarks/results/step_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    "data",
    "encode",
    "solver forward",
    "decoder forward",
    "losses (other)",
    "solver backward",
    "backward (networks)",
    "optimiser step",
    "EMA",
    "step (other)",
)


def _timed(
    store: dict[str, float], key: str, fn: Callable[..., Any], clock: Callable[[], float] = time.perf_counter
) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            store[key] += clock() - t

    return wrapper


def replay_solver(
    model: Any,
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
    reps: int = 5,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:
    """Median (forward, backward) seconds of the recorded solver calls, replayed with leaf inputs.

    ``sync`` waits for the device (``torch.cuda.synchronize`` on a GPU) around each timed part.
    """
    import torch

    fwd, bwd = [], []
    for _ in range(reps):
        outs = []
        sync()
        t = clock()
        for name, args, kwargs in calls:
            leaf_args = tuple(a.detach().clone().requires_grad_(a.is_floating_point()) for a in args)
            out = getattr(model, name)(*leaf_args, **kwargs)
            outs.append(out if name == "latents" else out.target_probs)
        loss = sum((o * torch.randn_like(o)).sum() for o in outs if o is not None)
        sync()
        fwd.append(clock() - t)
        t = clock()
        loss.backward()
        sync()
        bwd.append(clock() - t)
    return statistics.median(fwd), statistics.median(bwd)


def record_solver_calls(
    model: Any, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> dict[str, Callable[..., Any]]:
    """``model.latents`` / ``model.reverse`` wrapped so that each call appends (name, args, kwargs)
    to ``calls`` (tensors detached) for :func:`replay_solver`; returns the wrappers by name."""
    import torch

    solver = {"latents": model.latents, "reverse": model.reverse}

    def recorded(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(
                (
                    name,
                    tuple(a.detach() for a in args),
                    {
                        k: v.detach() if isinstance(v, torch.Tensor) and k in ("weights", "targets") else v
                        for k, v in kwargs.items()
                    },
                )
            )
            return solver[name](*args, **kwargs)

        return call

    return {name: recorded(name) for name in solver}


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
"""``wall``: elapsed time; ``cpu``: this thread's CPU time, which other processes on a shared machine
do not inflate (one torch thread: ``OMP_NUM_THREADS=1``, data read in this thread)."""


def profile(
    recipe_name: str, steps: int, warmup: int, overrides: list[str], clock: str = "wall"
) -> dict[str, Any]:
    """Median seconds per part over ``steps`` training steps (after ``warmup`` steps), timed by
    ``clock`` (:data:`CLOCKS`)."""
    import torch

    sys.path.insert(0, str(ROOT / "recipes"))
    import train  # the training script itself: its task_losses is the step's math

    from lzn_core.data import loader
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import Engine, setup_distributed

    recipe = load_recipe(recipe_name, ["train.ema=0.999", *overrides])
    _, world, _ = setup_distributed()
    torch.manual_seed(recipe.seed)
    model = LZNModel(recipe)
    engine = Engine(model, recipe, Path("/tmp/lzn-step-profile/ckpt"), world_size=world)
    model = engine.model
    data = loader(
        recipe.data.train,
        model.specs,
        configs=model.configs,
        batch_size=recipe.train.batch_size,
        seed=recipe.seed,
    )
    batches = iter(data)
    now = CLOCKS[clock]
    t: dict[str, float] = defaultdict(float)
    model.encode = _timed(t, "encode", model.encode, now)  # type: ignore[method-assign]
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    wrapped = record_solver_calls(model, calls)
    model.latents = _timed(t, "solver forward", wrapped["latents"], now)  # type: ignore[method-assign]
    model.reverse = _timed(t, "solver forward", wrapped["reverse"], now)  # type: ignore[method-assign]
    for dec in model.decoders.values():
        if dec.kind == "generative":
            dec.loss = _timed(t, "decoder forward", dec.loss, now)  # type: ignore[method-assign]
    engine.ds.backward = _timed(t, "backward", engine.ds.backward, now)  # type: ignore[method-assign]
    engine.ds.step = _timed(t, "optimiser step", engine.ds.step, now)  # type: ignore[method-assign]
    engine._update_ema = _timed(t, "EMA", engine._update_ema, now)  # type: ignore[method-assign]
    rows: list[dict[str, float]] = []
    for k in range(warmup + steps):
        t.clear()
        calls.clear()
        t0 = now()
        batch = next(batches)
        t["data"] = now() - t0
        t1 = now()
        losses = train.task_losses(model, recipe, batch, k, 0, world)
        t["losses"] = now() - t1
        total = sum(task.weight * v for task, v in zip(recipe.tasks, losses.values(), strict=True))
        t2 = now()
        engine.step(total)
        t["step"] = now() - t2
        if k < warmup:
            continue
        row = {
            "data": t["data"],
            "encode": t["encode"],
            "solver forward": t["solver forward"],
            "decoder forward": t["decoder forward"],
            "losses (other)": t["losses"] - t["encode"] - t["solver forward"] - t["decoder forward"],
            "solver backward": 0.0,  # filled from the replay below
            "backward (networks)": t["backward"],
            "optimiser step": t["optimiser step"],
            "EMA": t["EMA"],
            "step (other)": t["step"] - t["backward"] - t["optimiser step"] - t["EMA"],
            "total": t["data"] + t["losses"] + t["step"],
        }
        rows.append(row)
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    replayed = [c for c in calls]  # the last step's solver calls
    _, solver_bwd = replay_solver(model, replayed, clock=now)
    med["solver backward"] = solver_bwd
    med["backward (networks)"] = max(0.0, med["backward (networks)"] - solver_bwd)
    return {
        "recipe": recipe.name,
        "batch_size": recipe.train.batch_size,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "clock": clock,
        "note": "median seconds per part over the steps; solver backward from a replay of one step's solver calls",
        "seconds": med,
    }


def markdown(results: list[dict[str, Any]]) -> str:
    head = "| part | " + " | ".join(f"{r['recipe']} (batch {r['batch_size']})" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for part in (*PARTS, "total"):
        cells = []
        for r in results:
            s, total = r["seconds"][part], r["seconds"]["total"]
            cells.append(
                f"{1000 * s:.1f} ms ({100 * s / total:.0f}%)" if part != "total" else f"{1000 * s:.1f} ms"
            )
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", action="append", required=True, help="recipe name (repeat for several)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON file (a .md table is written beside it)")
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: the thread's CPU time (a shared machine does not inflate it)",
    )
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides for every recipe")
    args = p.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    results = [profile(r, args.steps, args.warmup, args.overrides, args.clock) for r in args.recipe]
    for r in results:
        r["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    table = markdown(results)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
