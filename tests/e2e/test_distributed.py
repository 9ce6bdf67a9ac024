"""Two CPU processes (gloo, DeepSpeed engine) give the loss and gradients of one process.

The same global batch of 8 digits-shaped images is split over 2 ranks (4 rows each). Each
rank encodes its rows, all-gathers the anchors with gradients, computes its rows' latents
against all 8 anchors (noise drawn for the global batch and sliced), the label alignment with
class weights of the global batch (all-reduced) and the rectified-flow decoder loss; DeepSpeed
averages the gradients. Tolerance (float32; the summation order differs and the flow's
τ = 1e-4 start scales logits by 1/τ²): loss terms within 1e-5 relative; the whole gradient
within 5e-4 relative L2 (measured 5.7e-5), every entry within 1e-3·max|grad| (measured 6.6e-5),
and each tensor whose gradient is not ~0 within 1e-3 of its own max-abs value. (Gradients that
are analytically ~0, e.g. a common shift of all image anchors, are rounding noise ~1e-5.)

This file is also the worker: ``python tests/e2e/test_distributed.py RANK WORLD PORT OUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from paths import ROOT, with_support
from rank_launch import free_port, logged, start_ranks, wait_ranks
from tiny_runs import TWO_RANKS, load_train_script

OVERRIDES = [
    "modalities.image.config.preset=tiny",
    "latent.dim=8",
    "train.batch_size=8",
    "train.warmup=0",
    "tasks.1.steps=10",
]
STEP = 3


def _global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand((8, 1, 8, 8), generator=g) * 2 - 1,
        "label": torch.tensor([0, 1, 1, 2, 3, 3, 3, 9]),
    }


def _worker(rank: int, world: int, port: int, out: Path, mode: str = "", micro: int = 0) -> None:
    """One rank's step of the global batch. ``mode`` "": one pass, DeepSpeed's backward (ZeRO 0).
    Else :func:`_passes_worker` (``micro`` rows per micro-batch, 0: one pass)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import Engine, setup_distributed

    train = load_train_script()
    setup_distributed()
    if mode:
        return _passes_worker(train, rank, world, out, mode, micro)
    recipe = load_recipe("digits_joint.yaml", OVERRIDES)
    torch.manual_seed(0)
    engine = Engine(LZNModel(recipe), recipe, out / f"ckpt{world}", world_size=world)
    b = 8 // world
    batch = {k: v[rank * b : (rank + 1) * b] for k, v in _global_batch().items()}
    losses = train.task_losses(engine.model, recipe, batch, STEP, rank, world)
    total = sum(t.weight * v for t, v in zip(recipe.tasks, losses.values(), strict=True))
    engine.ds.backward(total)  # all-reduces (averages) the gradients over ranks
    terms = torch.stack([total.detach(), *[v.detach() for v in losses.values()]])
    torch.distributed.all_reduce(terms)
    grads = {n: p.grad.detach().clone() for n, p in engine.model.named_parameters() if p.grad is not None}
    if rank == 0:
        torch.save({"terms": terms / world, "names": list(losses), "grads": grads}, out / f"world{world}.pt")
    torch.distributed.barrier()


def _passes_worker(train, rank: int, world: int, out: Path, mode: str, micro: int) -> None:
    """``mode`` "zero0" / "zero1": the engine's own backward and reduction with that ZeRO stage, the
    reduced gradients read back with DeepSpeed's ``safe_get_full_grad`` (ZeRO 0 in float32, whose
    reduction refuses float64; ZeRO 1 on a float64 model, whose gradient buffers are float32);
    "float64": no DeepSpeed, float64 throughout, the gradients all-reduced (averaged) here."""
    from deepspeed.utils import safe_get_full_grad

    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import Engine
    from lzn_core.train.passes import network_passes

    stage = 1 if mode == "zero1" else 0
    ds = f"deepspeed={{zero_optimization: {{stage: {stage}}}}}"
    recipe = load_recipe("digits_joint.yaml", [*OVERRIDES, ds, f"train.micro_batch_size={micro or 'null'}"])
    dtype = torch.float32 if mode == "zero0" else torch.float64
    torch.manual_seed(0)
    model = LZNModel(recipe).to(dtype)
    engine = (
        None
        if mode == "float64"
        else Engine(model, recipe, out / f"ckpt-{mode}-{world}-{micro}", world_size=world)
    )
    model = model if engine is None else engine.model
    nets = network_passes(model, recipe.train, world)
    b = 8 // world
    batch = {k: v[rank * b : (rank + 1) * b] for k, v in _global_batch().items()}
    batch["image"] = batch["image"].to(dtype)
    losses = train.task_losses(model, recipe, batch, STEP, rank, world, nets)
    total = sum(t.weight * v for t, v in zip(recipe.tasks, losses.values(), strict=True))
    if engine is not None:
        engine.ds.backward(nets.loss_for_backward(total))
        grads = {n: safe_get_full_grad(p) for n, p in model.named_parameters()}  # a collective under ZeRO
    else:
        nets.loss_for_backward(total).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        for g in grads.values():
            if g is not None:
                torch.distributed.all_reduce(g)
                g /= world
    mean = total.detach().clone()
    torch.distributed.all_reduce(mean)
    if rank == 0:
        torch.save(
            {
                "kind": type(nets).__name__,
                "total": mean / world,
                "grads": {n: g.detach().clone() for n, g in grads.items() if g is not None},
            },
            out / f"{mode}-{world}-{micro}.pt",
        )
    torch.distributed.barrier()


def _run_worlds(runs: list[tuple[int, list[str]]], tmp_path: Path, timeout: int) -> None:
    """Start every (world size, extra worker arguments) run, each rank a process of this file with
    its own port, all at once; wait for all and fail with the output of one that failed."""
    env = with_support({**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0"})
    procs = []
    for world, extra in runs:
        port = free_port()
        for rank in range(world):
            cmd = [sys.executable, __file__, str(rank), str(world), str(port), str(tmp_path), *extra]
            procs.append(
                subprocess.Popen(
                    cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            )
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path) -> None:
    _run_worlds([(1, []), (2, [])], tmp_path, timeout=300)
    one, two = (torch.load(tmp_path / f"world{w}.pt", weights_only=True) for w in (1, 2))
    assert one["names"] == two["names"] == ["gen_image", "align_image_label"]
    torch.testing.assert_close(two["terms"], one["terms"], rtol=1e-5, atol=1e-7)
    assert one["grads"].keys() == two["grads"].keys()
    assert any(k.startswith("encoders.image") for k in one["grads"])  # through the gathered anchors
    assert one["grads"]["encoders.label.anchors"].abs().max() > 0  # through the class-weighted label flow
    g1 = torch.cat([g.flatten() for g in one["grads"].values()])
    g2 = torch.cat([two["grads"][k].flatten() for k in one["grads"]])
    rel_l2 = float((g2 - g1).norm() / g1.norm())
    top = float(g1.abs().max())
    worst = max(float((two["grads"][k] - g).abs().max()) for k, g in one["grads"].items()) / top
    print(
        f"2 vs 1 process: gradient rel. L2 difference {rel_l2:.1e}, max abs difference {worst:.1e} x max|grad|"
    )
    assert rel_l2 < 5e-4 and worst < 1e-3
    for k, g in one["grads"].items():  # tensors with a real gradient agree on their own scale too
        if g.abs().max() > 1e-2 * top:
            torch.testing.assert_close(two["grads"][k], g, rtol=0, atol=1e-3 * float(g.abs().max()), msg=k)


# (mode, ranks, micro-batch rows; 0: one pass): each mode's reference is its one pass on 1 rank
PASS_RUNS = [
    ("float64", 1, 0),
    ("float64", 2, 2),
    ("float64", 2, 3),
    ("zero0", 1, 0),
    ("zero0", 2, 2),
    ("zero1", 1, 0),
    ("zero1", 2, 3),
]


@pytest.mark.slow
def test_two_ranks_of_micro_batches_equal_one_rank_of_the_whole_batch(tmp_path: Path) -> None:
    """The two-pass step (train.micro_batch_size) on 2 gloo ranks of 4 rows, in micro-batches of 2
    and of 3 (3 + 1), gives the gradient of one rank's one-pass step on all 8 rows:

    * float64, gradients averaged over the ranks by hand: to 1e-10 relative (measured ~1e-14);
    * through the engine's own backward and DeepSpeed's reduction: ZeRO 1 on a float64 model (its
      gradient buffers are float32): to float32 rounding of the gradient, 1e-6 (measured ~4e-8);
      ZeRO 0 in float32 (its reduction refuses float64): to the float32 tolerance of the one-pass
      2-vs-1 comparison above (measured ~3e-5; the flow's τ = 1e-4 start amplifies rounding).
    """
    _run_worlds([(world, [mode, str(micro)]) for mode, world, micro in PASS_RUNS], tmp_path, timeout=600)
    got = {(m, w, k): torch.load(tmp_path / f"{m}-{w}-{k}.pt", weights_only=True) for m, w, k in PASS_RUNS}
    tolerance = {"float64": (1e-10, 1e-12), "zero1": (1e-6, 1e-12), "zero0": (5e-4, 1e-5)}
    for (mode, _, micro), run in got.items():
        ref = got[(mode, 1, 0)]
        assert run["kind"] == ("TwoPass" if micro else "OnePass")
        if not micro:
            continue
        grads = ref["grads"]
        assert any(k.startswith("encoders.image") for k in grads) and "encoders.label.anchors" in grads
        assert any(k.startswith("decoders.image") for k in grads) and run["grads"].keys() == grads.keys()
        g1 = torch.cat([g.flatten() for g in grads.values()])
        g2 = torch.cat([run["grads"][k].flatten() for k in grads])
        rel = float((g2 - g1).norm() / g1.norm())
        print(f"{mode}: 2 ranks x micro-batches of {micro} vs 1 rank x 8 rows: gradient rel. L2 {rel:.1e}")
        grad_tol, loss_tol = tolerance[mode]
        assert rel < grad_tol
        torch.testing.assert_close(run["total"], ref["total"], rtol=loss_tol, atol=0)
    assert got[("float64", 1, 0)]["grads"]["encoders.label.anchors"].dtype == torch.float64


# ----------------------------------------------------------------------------- bad data on 2 ranks

FAULT_RUN = [*TWO_RANKS, "data.num_workers=0", "eval.steps=4", "eval.samples_per_class=1"]


def _digit_shards(out: Path, bad: bool) -> None:
    """48 digits in 2 shards (40 + 8); with ``bad``, one sample of each kind of fault.

    Faults: garbage PNG bytes, no .cls, a 16x16 PNG among 8x8, class index 99, and shard 1 cut
    inside the PNG member of its last sample (wids lists it, its bytes run past the end).
    """
    import tarfile

    import numpy as np
    from sklearn.datasets import load_digits

    from lzn_core.data.shards import make_sample, png_bytes, write_split

    d = load_digits()
    images = np.rint(d.images[:48] * 255 / 16).astype(np.uint8)
    samples = [
        make_sample(f"d{i:03d}", {"png": png_bytes(images[i]), "txt": "a digit", "cls": int(d.target[i])})
        for i in range(48)
    ]
    if bad:
        samples[3][1]["png"] = b"\x89PNG\r\n\x1a\n garbage"
        del samples[11][1]["cls"]
        samples[19][1]["png"] = png_bytes(np.kron(images[19], np.ones((2, 2), np.uint8)))
        samples[27][1]["cls"] = b"99"
    write_split(out, "train", samples, shard_size=40, progress=False)
    if bad:
        cut = out / "train-000001.tar"
        with tarfile.open(cut) as tar:
            png = tar.getmember("d047.png")
        cut.write_bytes(cut.read_bytes()[: png.offset_data + png.size // 2])


def _train_two_ranks(workdir: Path, data: str, out: str) -> tuple[list[str], list[dict]]:

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "DS_BUILD_OPS": "0",
        "PYTHONWARNINGS": "",
    }
    port = free_port()
    overrides = [*FAULT_RUN, f"data.train={data}/train-*.tar", "data.eval=data/clean/train-*.tar"]
    procs = []
    for rank in range(2):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        rank_env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        cmd = [
            sys.executable,
            str(ROOT / "recipes" / "train.py"),
            "--recipe",
            "digits_joint",
            "--output",
            out,
        ]
        procs.append(
            subprocess.Popen(
                cmd + overrides,
                env=rank_env,
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=420)
        except subprocess.TimeoutExpired:  # a rank stuck in a collective: stop both
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, text[-3000:]
        outputs.append(text)
    rows = [json.loads(line) for line in (workdir / out / "metrics.jsonl").read_text().splitlines()]
    return outputs, [r for r in rows if "loss" in r]


@pytest.mark.slow
def test_bad_samples_on_two_ranks_keep_every_step(tmp_path: Path) -> None:
    """recipes/train.py on 2 gloo ranks over shards holding each kind of bad sample: the same optimiser
    steps as on clean data, the skips counted in metrics.jsonl and the summary. (Before the loader
    replaced bad samples, the first one made a rank's batch shorter and the anchor all-gather failed.)"""
    _digit_shards(tmp_path / "data" / "clean", bad=False)
    _digit_shards(tmp_path / "data" / "bad", bad=True)
    _, clean = _train_two_ranks(tmp_path, "data/clean", "runs/clean")
    outputs, bad = _train_two_ranks(tmp_path, "data/bad", "runs/bad")
    steps = [r["step"] for r in clean]
    assert steps == [1, 2, 3, 4, 5, 6] and [r["step"] for r in bad] == steps
    assert all(r["skipped"] == 0 for r in clean + bad)  # no step skipped (non-finite) on either
    assert all(r["skipped_samples"] == 0 for r in clean)
    # 48 samples, global batch 16: 3 steps cover every sample once, so 6 steps skip the 5 bad ones twice
    assert [r["skipped_samples"] for r in bad] == _cumulative_skips()
    assert bad[-1]["skipped_samples"] == 10
    assert "(0 skipped steps, 10 corrupt or unfit samples skipped)" in outputs[0]
    warned = "".join(outputs)  # the first skip is warned (then every 100th), naming shard, key and reason
    assert (
        "CorruptSampleWarning: skipped corrupt or unfit sample 'd0" in warned
        and "replaced by 'train-00000" in warned
    )
    assert "train-000001.tar: truncated shard (member 'd047.png'" in warned


def _cumulative_skips() -> list[int]:
    """Skips after each of the 6 steps, from the loader's plan (seed 0, 48 samples, global batch 16)."""
    import numpy as np

    bad_ids = {3, 11, 19, 27, 47}
    counts, total = [], 0
    for step in range(6):
        order = np.random.default_rng([0, step // 3]).permutation(48)
        total += len(bad_ids & set(order[(step % 3) * 16 : (step % 3 + 1) * 16].tolist()))
        counts.append(total)
    return counts


if __name__ == "__main__":
    mode, micro = (sys.argv[5], int(sys.argv[6])) if len(sys.argv) > 5 else ("", 0)
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), mode, micro)


# ----------------------------------------------------------------------------- exact resume after kill -9
KILL_RUN = [
    "train.batch_size=8",
    "train.iterations=4",
    "train.ckpt_every=2",
    "train.log_every=1",
    "train.eval_every=0",
    "train.sample_every=0",
    "train.warmup=0",
    "modalities.image.config.preset=tiny",
    "modalities.image.config.dropout=0.1",  # global-RNG draws in every step
    "modalities.image.config.sample_steps=2",
    "latent.dim=8",
    "latent.bank_size=8",
    "tasks.1.steps=10",
    "eval.batch_size=16",
    "eval.steps=4",
    "eval.samples_per_class=1",
]


@pytest.fixture(scope="module")
def digits_dir(digits_workdir: Path) -> Path:
    """This module's working directory with data/digits (tests/conftest.py)."""
    return digits_workdir


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_kill_9_after_a_checkpoint_and_resume_equals_the_uninterrupted_run(
    digits_dir: Path, world: int
) -> None:
    """Dropout 0.1 (the global RNG in every step), kill -9 of every rank after step 3 (checkpoint at 2),
    ``--resume``: the step-4 weights, the exported EMA model and the logged losses are those of the
    uninterrupted run, exactly; each rank restored its own generators; no metrics row is duplicated."""
    from safetensors.torch import load_file

    common = ["--recipe", "digits_joint", *KILL_RUN]
    straight_run = start_ranks(digits_dir, world, [*common, "--output", f"straight{world}"])
    killed_run = start_ranks(digits_dir, world, [*common, "--output", f"killed{world}"], wrap="kill:3")
    assert wait_ranks(straight_run) == [0] * world
    # a rank whose peer was killed in the middle of a collective may fail (exit 1) before its own kill
    killed = wait_ranks(killed_run, allowed=(-9, 1))
    assert killed[0] == -9
    run, straight = digits_dir / f"killed{world}", digits_dir / f"straight{world}"
    assert (run / "ckpt" / "latest").read_text() == "step-2" and not (run / "final").exists()
    assert [r["step"] for r in logged(run)] == [1, 2, 3]
    assert (
        wait_ranks(start_ranks(digits_dir, world, [*common, "--output", f"killed{world}", "--resume"]))
        == [0] * world
    )

    def weights(root: Path) -> dict[str, torch.Tensor]:
        path = root / "ckpt" / "step-4" / "mp_rank_00_model_states.pt"
        return torch.load(path, map_location="cpu", weights_only=False)["module"]

    a, b = weights(straight), weights(run)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a if a[k].numel()) == 0.0
    ea, eb = (
        load_file(straight / "final" / "model.safetensors"),
        load_file(run / "final" / "model.safetensors"),
    )
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    logged_a, logged_b = (logged(d) for d in (straight, run))
    assert [r["step"] for r in logged_b] == [1, 2, 3, 4]
    assert [r["loss"] for r in logged_b] == [r["loss"] for r in logged_a]
    states = [
        torch.load(run / "ckpt" / "step-4" / f"rng-rank{r}.pt", weights_only=True) for r in range(world)
    ]
    assert len({bytes(s["torch"].numpy()) for s in states}) == world  # every rank its own generator
