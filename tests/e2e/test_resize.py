"""A checkpoint written on W ranks resumes on W' ranks (issue 23, item 2): ZeRO 1 and 2 through
DeepSpeed's universal checkpoint, stage 0 as it is (the control).

Each stage trains ``recipes/train.py`` uninterrupted on 1 and on 2 gloo ranks for 6 steps
(checkpoint at 3; global batch 16), then resumes step-3 of the 2-rank run on 1 and 4 ranks and
step-3 of the 1-rank run on 2 ranks (stage 0: 2 -> 1 and 1 -> 2). Stages 0 and 2 take micro-batches
of 4 rows (two passes on 1 and 2 ranks, one pass on 4); the ZeRO 1 runs take one pass and have a
buffer (Fourier time embedding) and the label module frozen from iteration 0 (a parameter group
without Adam state). Each resumed run is compared with the uninterrupted run on the ranks that
wrote its checkpoint: the lr of every step exactly, the losses of steps 4-6, the weights and the
EMA of step 6, the counters, the loader's position, and the sample keys of global batches 3-5.

Tolerances. Without dropout every draw of a step is seeded by (seed, step) for the global batch,
so a resumed run computes the uninterrupted run's steps in another summation order (2 vs 1 process:
loss terms ~1e-7 relative, gradients ~6e-5 relative L2, tests/e2e/test_distributed.py) and with another
micro-batch split. Adam divides by sqrt(v), so gradient components that are rounding noise (~1e-5,
directions the loss does not depend on) take lr-sized steps of arbitrary sign on either side, which
is what separates the weights. Measured (ZeRO 0, 1, 2; 2 -> 1, 1 -> 2, 2 -> 4; 2026-12-07): losses of
steps 4-6 within 6e-6 relative, step-6 weights 3-6e-3 of their change over steps 4-6, the EMA
0.9-1.9e-2 of its lag behind the weights. Bounds: LOSS_RTOL = 1e-4 and MOVE_RTOL = 0.1 (>= 5x
room). What they catch, measured by hand (ZeRO 0, 2 -> 1): Adam moments zeroed at the resume move
the losses of steps 5-6 by 2e-3 and 8e-3 and the weights by 0.91; an EMA restarted at the resume
is 0.44 of its lag away.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from rank_launch import logged, start_ranks, wait_ranks

from lzn_core.train.checkpoint import ranks

RUN = [
    "--recipe",
    "digits_joint",
    "modalities.image.config.preset=tiny",
    "modalities.image.config.sample_steps=2",
    "latent.dim=8",
    "latent.bank_size=8",
    "tasks.1.steps=10",
    "train.batch_size=16",
    "train.micro_batch_size=4",
    "train.iterations=6",
    "train.ckpt_every=3",
    "train.warmup=5",  # the lr still ramps at the resume
    "train.log_every=1",
    "train.eval_every=0",
    "train.sample_every=0",
    "eval.batch_size=16",
    "eval.steps=4",
    "eval.samples_per_class=1",
]
CASES = {  # stage -> [(ranks that wrote step-3, ranks that resume it)]
    0: [(2, 1), (1, 2)],
    1: [(2, 1), (1, 2), (2, 4)],
    2: [(2, 1), (1, 2), (2, 4)],
}
LOSS_RTOL = 1e-4
MOVE_RTOL = 0.1  # resumed vs uninterrupted, relative to the change over steps 4-6 (or the EMA's lag)


def _outputs(procs: list, timeout: int = 300) -> list[str]:
    """Wait for the ranks (a hang becomes a failure after ``timeout`` s); each rank's output."""
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


def _stage(stage: int) -> list[str]:
    """The overrides of a stage's runs. ZeRO 1 adds the image decoder's Fourier time embedding (a
    buffer, which a universal load does not restore: the engine does) and freezes the label module
    from iteration 0 (a parameter group without Adam state, which the engine fills in for
    DeepSpeed's conversion), in one pass (freezing with micro-batches and under ZeRO 2 is
    tests/train/test_train.py's)."""
    frozen = [
        "modalities.image.config.time_embedding=fourier",
        "train.freeze={label: 0}",
        "train.micro_batch_size=null",
    ]
    return [f"deepspeed={{zero_optimization: {{stage: {stage}}}}}", *(frozen if stage == 1 else [])]


def _ckpt_state(run: Path, step: int) -> dict:
    path = run / "ckpt" / f"step-{step}" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], scale: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||scale|| over all floating-point entries."""
    keys = [k for k in a if a[k].is_floating_point()]
    diff = torch.cat([(a[k] - b[k]).flatten().double() for k in keys]).norm()
    return float(diff / torch.cat([scale[k].flatten().double() for k in keys]).norm())


def _keys(root: Path, world: int, steps: int, state: dict | None = None) -> list[list[str]]:
    """Sample keys of the next ``steps`` global batches as ``world`` ranks read them (rank order)."""
    from lzn_core.data import loader
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe

    recipe = load_recipe("digits_joint", RUN[2:])
    model = LZNModel(recipe)
    per_rank = []
    for rank in range(world):
        data = loader(
            str(root / "data" / "digits" / "train-*.tar"),
            model.specs,
            configs=model.configs,
            batch_size=16 // world,
            rank=rank,
            world_size=world,
            seed=recipe.seed,
            with_keys=True,
            resume_from=state,
        )
        batches = iter(data)
        per_rank.append([next(batches)["__key__"] for _ in range(steps)])
    return [[key for rank in range(world) for key in per_rank[rank][i]] for i in range(steps)]


@pytest.fixture(scope="module")
def digits_dir(digits_workdir: Path) -> Path:
    """This module's working directory with data/digits (tests/conftest.py)."""
    return digits_workdir


@pytest.fixture(scope="module")
def uninterrupted(digits_dir: Path):
    """``run(stage, world)``: the uninterrupted 6-step run of that ZeRO stage (both worlds of a stage
    are trained at once, the first time one is asked for)."""
    done: set[int] = set()

    def run(stage: int, world: int) -> Path:
        if stage not in done:
            procs = [
                start_ranks(digits_dir, w, [*RUN, *_stage(stage), "--output", f"z{stage}-w{w}"])
                for w in (1, 2)
            ]
            for p in procs:
                wait_ranks(p)
            done.add(stage)
        return digits_dir / f"z{stage}-w{world}"

    return run


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_resume_on_another_number_of_ranks_continues_the_run(
    digits_dir: Path, uninterrupted, stage: int
) -> None:
    """The resumed runs of CASES[stage] (all at once) from step-3 of the uninterrupted runs: the one
    line (universal checkpoint or stage 0) and the generator warning, then the run continues."""
    straight = {w: uninterrupted(stage, w) for w in (1, 2)}
    sources = {w: straight[w] / "ckpt" / "step-3" for w in (1, 2)}
    before = {w: _hashes(src) for w, src in sources.items()}
    if stage:  # the engine saves DeepSpeed's universal-checkpoint info with every checkpoint
        assert "universal_checkpoint_info" in _ckpt_state(straight[2], 3)
    procs = {
        (old, new): start_ranks(
            digits_dir,
            new,
            [*RUN, *_stage(stage), "--output", f"z{stage}-{old}to{new}", "--from", str(sources[old])],
        )
        for old, new in CASES[stage]
    }
    printed = {case: _outputs(p)[0] for case, p in procs.items()}  # rank 0's
    for old, new in CASES[stage]:
        run, ref = digits_dir / f"z{stage}-{old}to{new}", straight[old]
        got, want = logged(run), logged(ref)
        assert [r["step"] for r in got] == [4, 5, 6]
        line = f"resuming {sources[old]} (written by {ranks(old)}) on {ranks(new)}: "
        line += (
            f"its ZeRO stage {stage} optimizer partitions are re-split by DeepSpeed's universal checkpoint "
            f"{sources[old] / 'universal'} ("
            if stage
            else "ZeRO stage 0 keeps the whole optimizer state on every rank, loaded as it is\n"
        )
        assert printed[(old, new)].count(line) == 1, printed[(old, new)][-3000:]
        print(next(x for x in printed[(old, new)].splitlines() if x.startswith(line[:40])))
        assert f"written by {ranks(old)}, now {new}: the global batch, the data stream" in printed[(old, new)]
        assert [r["lr"] for r in got] == [r["lr"] for r in want[3:]]  # the schedule continues, exactly
        rel = [abs(g["loss"] - w["loss"]) / abs(w["loss"]) for g, w in zip(got, want[3:], strict=True)]
        end, ref_end, ref_mid = _ckpt_state(run, 6), _ckpt_state(ref, 6), _ckpt_state(ref, 3)
        weights = _rel(
            end["module"],
            ref_end["module"],
            {k: ref_end["module"][k] - ref_mid["module"][k] for k in ref_end["module"]},
        )
        lag = {k: ref_end["engine"]["ema"][k] - ref_end["module"][k] for k in ref_end["engine"]["ema"]}
        ema = _rel(end["engine"]["ema"], ref_end["engine"]["ema"], lag)
        print(
            f"ZeRO {stage}, {old} -> {new} ranks: loss rel. diff at steps 4-6 "
            + ", ".join(f"{x:.1e}" for x in rel)
            + f" (step 4: {got[0]['loss']:.6f} vs {want[3]['loss']:.6f}); step-6 weights {weights:.1e} of "
            f"their change over steps 4-6, EMA {ema:.1e} of its lag"
        )
        assert max(rel) < LOSS_RTOL
        assert weights < MOVE_RTOL and ema < MOVE_RTOL
        for key in ("iteration", "skipped", "ema_updates"):
            assert end["engine"][key] == ref_end["engine"][key] == 6 * (key != "skipped")
        assert end["engine"]["world_size"] == new
        if stage == 1:  # frozen from iteration 0, on any number of ranks
            assert torch.equal(
                end["module"]["encoders.label.anchors"], ref_mid["module"]["encoders.label.anchors"]
            )
        assert end["loader"] == ref_end["loader"]  # the same samples consumed, as one stream
        state = _ckpt_state(ref, 3)["loader"]
        assert _keys(digits_dir, new, 3, state) == _keys(digits_dir, old, 6)[3:]
    for w, src in sources.items():  # the checkpoints themselves are only read
        assert _hashes(src) == before[w]
        assert (src / "universal").is_dir() == bool(stage) and not list(src.glob("universal.partial-*"))


FAIL_CONVERSION = """
import deepspeed.checkpoint.ds_to_universal as conversion


def _disk_full(*args, **kwargs):  # step 3 of ds_to_universal: after the fragments were written
    raise OSError(28, "No space left on device")


conversion._save_optimizer_state = _disk_full
"""


@pytest.mark.slow
def test_a_failed_conversion_leaves_the_checkpoint_usable(digits_dir: Path, uninterrupted, tmp_path) -> None:
    """A 1-rank ZeRO 1 checkpoint resumed on 2 ranks, with ``ds_to_universal`` failing late (injected
    through a sitecustomize on the ranks' path): both ranks exit 1, rank 0 says so in one line, no
    ``universal`` folder and no partial one of this attempt are left, the checkpoint's files are byte
    for byte as before. A partial folder of a conversion killed earlier is never read: the same
    command without the fault converts anew and continues the run. A ZeRO checkpoint resumed under
    stage 0 is refused in one line. The resumed run's buffer (the image decoder's Fourier frequencies,
    changed in the checkpoint by 1e-6 relative) is the checkpoint's."""
    ckpt = tmp_path / "src" / "step-3"
    src = uninterrupted(1, 1) / "ckpt" / "step-3"  # converted already if the 1 -> 2 case ran: not copied
    shutil.copytree(src, ckpt, ignore=shutil.ignore_patterns("universal*"))
    model_file = ckpt / "mp_rank_00_model_states.pt"  # a buffer that only the checkpoint can restore
    saved = torch.load(model_file, map_location="cpu", weights_only=False)
    fourier = saved["module"]["decoders.image.fourier_w"] * (1 + 1e-6)
    assert not torch.equal(fourier, saved["module"]["decoders.image.fourier_w"])
    saved["module"]["decoders.image.fourier_w"] = fourier
    torch.save(saved, model_file)
    killed = ckpt / "universal.partial-1-dead"  # as a conversion killed by SIGKILL leaves it
    (killed / "step-3" / "zero").mkdir(parents=True)
    (killed / "step-3" / "mp_rank_00_model_states.pt").write_bytes(b"torn")
    before = _hashes(ckpt)
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FAIL_CONVERSION)
    args = [*RUN, *_stage(1), "--output", str(tmp_path / "resumed"), "--from", str(ckpt)]
    failing = start_ranks(digits_dir, 2, args, env={"PYTHONPATH": str(tmp_path / "inject")})
    stage0 = start_ranks(
        digits_dir, 1, [*RUN, *_stage(0), "--output", str(tmp_path / "stage0"), "--from", str(ckpt)]
    )
    outs = [p.communicate(timeout=300)[0] for p in failing + stage0]
    assert [p.returncode for p in failing + stage0] == [1, 1, 1], outs
    errors = [line for line in outs[0].splitlines() if "error" in line]
    assert errors == [
        f"train.py: error: converting {ckpt} to DeepSpeed's universal checkpoint failed (OSError: [Errno 28] "
        "No space left on device); the checkpoint is untouched: resume it on 1 rank, or fix the cause "
        "and resume again"
    ]
    assert "error" not in outs[1]  # rank 1 waited for rank 0's word and exits quietly
    assert outs[2].splitlines()[-1] == (
        f"train.py: error: {ckpt} holds ZeRO optimizer partitions of 1 rank, but this run uses ZeRO stage 0: "
        "resume it with the zero_optimization.stage it was written with (the recipe's deepspeed config)"
    )
    assert _hashes(ckpt) == before and sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == [killed.name]
    assert sorted(p.name for p in killed.rglob("*")) == ["mp_rank_00_model_states.pt", "step-3", "zero"]

    out = _outputs(start_ranks(digits_dir, 2, args))[0]
    assert f"by DeepSpeed's universal checkpoint {ckpt / 'universal'} (converted in " in out
    got, want = logged(tmp_path / "resumed"), logged(uninterrupted(1, 1))
    assert [r["step"] for r in got] == [4, 5, 6]
    assert all(
        abs(g["loss"] - w["loss"]) < LOSS_RTOL * abs(w["loss"]) for g, w in zip(got, want[3:], strict=True)
    )
    assert torch.equal(_ckpt_state(tmp_path / "resumed", 6)["module"]["decoders.image.fourier_w"], fourier)
    assert _hashes(ckpt) == before and killed.is_dir()  # the leftover stays, unread
    from lzn_core.train.checkpoint import universal_checkpoint

    assert universal_checkpoint(ckpt) == (ckpt / "universal", None)  # converted once, then reused
