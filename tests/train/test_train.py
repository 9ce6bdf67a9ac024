"""recipes/train.py end to end on tiny shards: one process, in this pytest process (CPU, gloo).

Covers: a smoke run of every shipped recipe (size overrides), atomic checkpoints (a crash
mid-write leaves the previous one usable), the non-finite skip, the engine's lr/freeze schedule
and param groups, export of a run; how a run starts in its directory (refused, --resume,
--fresh, --from an earlier checkpoint, pruning that spares ``latest``); one-line errors; the
DeepSpeed JSON checks; a frozen module's EMA and Adam state. (Exact resume after kill -9, one
and two ranks, is in test_distributed.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import fault_runner
import pytest
import torch
from paths import ROOT

# Size overrides per recipe: tiny networks, batch 8, 2 iterations, cheap evaluation.
_COMMON = [
    "train.batch_size=8",
    "train.iterations=2",
    "train.log_every=1",
    "train.ckpt_every=0",
    "train.eval_every=0",
    "train.sample_every=0",
    "latent.bank_size=8",
    "data.num_workers=0",
    "eval.batch_size=16",
    "eval.steps=4",
    "eval.samples_per_class=1",
]
_IMG8 = ["modalities.image.config.preset=tiny", "modalities.image.config.sample_steps=2", "latent.dim=8"]
_IMG32 = [
    "modalities.image.config.preset=small32",
    "modalities.image.config.sample_steps=2",
    "modalities.image.config.sample_method=euler",
    "latent.dim=8",
    "deepspeed=ds/cpu.json",
]
SMOKE = {
    "digits_joint": _IMG8,
    "digits_rf_baseline": _IMG8,
    "digits_text": _IMG8
    + [
        "modalities.text.config.width=16",
        "modalities.text.config.decoder_width=16",
        "modalities.text.config.layers=1",
        "modalities.text.config.decoder_layers=1",
        "modalities.text.config.retrieval_bank_size=8",
        "modalities.text.config.vocab_size=64",
    ],
    "cifar_gen": _IMG32,
    "cifar_joint": _IMG32,
    "imagenet_repr": [
        "modalities.image.config.resolution=32",
        "modalities.image.config.encoder=resnet18",
        "modalities.image.config.proj_hidden=32",
        "latent.dim=8",
        "latent.chunk=null",
        "deepspeed=ds/cpu.json",
    ],
}
DIGITS = _COMMON + _IMG8


@pytest.fixture(scope="module")
def train():
    """recipes/train.py as a module; the process group it starts is torn down afterwards."""
    spec = importlib.util.spec_from_file_location("lzn_train_script", ROOT / "recipes" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    from lzn_core.train.engine import teardown_distributed

    teardown_distributed()  # a later module's engine starts its own group


def _synthetic(out: Path, n: int, side: int, channels: int) -> None:
    import numpy as np

    from lzn_core.data.shards import make_sample, png_bytes, write_split

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", n // 2)):
        shape = (side, side) if channels == 1 else (side, side, channels)
        samples = (
            make_sample(
                f"s{i:05d}",
                {
                    "png": png_bytes(rng.integers(0, 256, shape, dtype=np.uint8)),
                    "txt": f"a picture of class {i % 10}",
                    "cls": i % 10,
                },
            )
            for i in range(count)
        )
        write_split(out, split, samples, total=count, shard_size=max(1, count // 2), progress=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cwd with data/digits (the real digits) and data/cifar10, data/imagenet (synthetic 32x32 RGB)."""
    from lzn_core.data.digits import write_digits

    root = tmp_path_factory.mktemp("train")
    write_digits(root / "data" / "digits", test_size=50, progress=False)
    _synthetic(root / "data" / "cifar10", 24, 32, 3)
    _synthetic(root / "data" / "imagenet", 24, 32, 3)
    for name in ("val-000000.tar",):  # imagenet_repr's eval split is called val
        src = root / "data" / "imagenet" / "test-000000.tar"
        (root / "data" / "imagenet" / name).write_bytes(src.read_bytes())
    return root


def _run(
    train,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    out: str,
    recipe: str = "digits_joint",
    extra: list[str] = (),
    flags: list[str] = (),
    status: int = 0,
) -> Path:
    monkeypatch.chdir(workdir)
    assert train.main(["--recipe", recipe, "--output", out, *flags, *DIGITS, *extra]) == status
    return workdir / out


def _states(run: Path, step: int) -> dict[str, torch.Tensor]:
    path = run / "ckpt" / f"step-{step}" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", sorted(SMOKE))
def test_smoke_every_recipe(
    train, workdir: Path, monkeypatch: pytest.MonkeyPatch, recipe: str, capsys
) -> None:
    assert (ROOT / "recipes" / f"{recipe}.yaml").is_file()
    monkeypatch.chdir(workdir)
    out = f"runs/smoke_{recipe}"
    assert train.main(["--recipe", recipe, "--output", out, *_COMMON, *SMOKE[recipe]]) == 0
    run = workdir / out
    rows = [r for r in _metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (run / "final" / "model.safetensors").is_file() and (run / "recipe.yaml").is_file()
    assert (run / "loss.png").is_file()
    printed = capsys.readouterr().out
    assert f"run {recipe}: 2 iterations" in printed and "run dir:" in printed
    if recipe in ("digits_joint", "cifar_joint"):
        assert "test accuracy image->label (zonal flow" in printed and "samples of image:" in printed
        grid = printed.split("samples of image: ")[1].split()[0]
        assert Path(grid).is_file()
    from lzn_core.io import load

    model = load(run / "final")
    import yaml

    assert set(model.names) == set(yaml.safe_load((run / "recipe.yaml").read_text())["modalities"])


def test_text_benchmark_measures_a_trained_run(train, workdir, monkeypatch, tmp_path) -> None:
    """benchmarks/text.py on a 2-iteration digits_text run: every metric is a rate in [0, 1], the
    JSON is written, and the digit a caption names is read the way the metrics need."""
    monkeypatch.chdir(workdir)
    run = workdir / "runs" / "smoke_digits_text"
    if not (run / "final" / "model.safetensors").is_file():
        assert (
            train.main(["--recipe", "digits_text", "--output", str(run), *_COMMON, *SMOKE["digits_text"]])
            == 0
        )
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import text as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert [
        bench.named_digit(c)
        for c in (
            "an 8x8 picture of a handwritten one",
            "the number one (1) in handwriting",
            "a small blurry 7",
            "digits 3 and 4",
            "a picture",
        )
    ] == [1, 1, 7, -1, -1]
    out = tmp_path / "text.json"
    assert bench.main(["--model", str(run / "final"), "--out", str(out), "--steps", "4"]) == 0
    got = json.loads(out.read_text())
    rates = ("retrieval_r1", "caption_generation", "caption_to_image", "label_flow_accuracy", "text_to_label")
    assert all(0.0 <= got[k] <= 1.0 for k in rates), got
    assert got["n_test"] == 50 and len(got["examples"]) == 10
    assert Path(got["grid"]).is_file() and len(got["grid_captions"]) == 10
    page = out.with_suffix(".md").read_text()
    assert "| `caption_to_image` |" in page and "![caption -> image](text.png)" in page
    assert all(
        isinstance(e["generated"], str) and bench.named_digit(e["retrieved"]) in range(10)
        for e in got["examples"]
    )


def test_crash_mid_checkpoint_keeps_previous_usable(train, workdir, monkeypatch) -> None:
    import lzn_core.train.engine as engine_mod
    from lzn_core.train.checkpoint import list_checkpoints

    real_replace = os.replace

    def failing_replace(src, dst):
        if str(src).endswith("tmp-4"):
            raise OSError("disk full (injected)")
        return real_replace(src, dst)

    extra = ["train.iterations=4", "train.ckpt_every=2"]
    monkeypatch.setattr(engine_mod.os, "replace", failing_replace)
    _run(train, workdir, monkeypatch, "runs/atomic", extra=extra, status=1)
    monkeypatch.setattr(engine_mod.os, "replace", real_replace)
    ckpt = workdir / "runs/atomic/ckpt"
    assert (ckpt / "tmp-4").is_dir()  # the half-written one, under its temporary name
    assert (ckpt / "latest").read_text() == "step-2"
    assert engine_mod.resolve_checkpoint(ckpt, "latest") == (ckpt, "step-2")
    assert [p.name for p in list_checkpoints(ckpt)] == ["step-2"]
    _run(train, workdir, monkeypatch, "runs/atomic", extra=extra, flags=["--resume"])
    assert (ckpt / "latest").read_text() == "step-4"
    assert not (ckpt / "tmp-4").exists()  # leftovers are pruned by the next save


def test_nonfinite_loss_skips_the_step(train, workdir, monkeypatch) -> None:
    fault_runner.wrap(train, "nan-loss:0", monkeypatch.setattr)  # the first step's loss is NaN
    run = _run(train, workdir, monkeypatch, "runs/nan", extra=["train.ckpt_every=2"])
    rows = [r for r in _metrics(run) if "loss" in r]
    assert rows[0]["skipped"] == 1 and rows[-1]["skipped"] == 1
    assert rows[0]["loss"] != rows[0]["loss"]  # the NaN is logged
    assert rows[-1]["loss"] == rows[-1]["loss"]
    assert all(torch.isfinite(v).all() for v in _states(run, 2).values() if v.is_floating_point())


def test_resume_errors(train, workdir, monkeypatch, capsys) -> None:
    _run(train, workdir, monkeypatch, "runs/none", flags=["--resume"], status=1)
    assert capsys.readouterr().err == (
        "train.py: error: nothing to resume in runs/none: no checkpoint (runs/none/ckpt/latest does not "
        "exist); run without --resume to start it\n"
    )
    _run(train, workdir, monkeypatch, "runs/none", flags=["--from", "step-99"], status=1)
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"train.py: error: checkpoint 'step-99' not found \(checkpoints under .*: none\)\n", err
    )
    with pytest.raises(SystemExit):  # argparse: --fresh and --resume / --from exclude each other
        train.parse_args(["--recipe", "x", "--fresh", "--resume"])
    with pytest.raises(SystemExit):
        train.parse_args(["--recipe", "x", "--fresh", "--from", "step-2"])
    args = train.parse_args(["--recipe", "x", "--resume", "train.iterations=100"])
    assert args.resume and args.checkpoint is None and args.overrides == ["train.iterations=100"]
    assert train.parse_args(["--recipe", "x", "--from", "step-2"]).resume  # --from implies --resume


def _tree(run: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(run)), p.stat().st_mtime_ns) for p in run.rglob("*"))


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in _metrics(run) if "loss" in r]


def test_a_run_directory_is_refused_resumed_or_moved_aside(train, workdir, monkeypatch, capsys) -> None:
    """Rerunning a finished run's command is refused and touches nothing; ``--resume`` followed by an
    override extends the run; ``--fresh`` moves the old run to previous-1/ and starts at step 0."""
    monkeypatch.chdir(workdir)
    out, keep = "runs/rerun", ["train.ckpt_every=1", "train.keep_checkpoints=1"]
    command = ["--recipe", "digits_joint", "--output", out, *DIGITS, *keep]  # DIGITS: 2 iterations
    assert train.main(command) == 0
    run = workdir / out
    before = _tree(run)
    capsys.readouterr()
    assert train.main(command) == 1  # the same command again
    assert capsys.readouterr().err == (
        f"train.py: error: run directory {out} already holds a run (checkpoints up to step-2, final/): pass "
        f"--resume to continue it, --fresh to start over (its files are moved to {out}/previous-<n>/), or "
        "choose another --output\n"
    )
    assert _tree(run) == before  # refused before anything was written

    assert (
        train.main(
            ["--recipe", "digits_joint", "--output", out, *DIGITS, *keep, "--resume", "train.iterations=3"]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith(f"resuming {out} at step 2 (ckpt/step-2)\n")
    assert (run / "ckpt" / "latest").read_text() == "step-3" and _steps(run) == [1, 2, 3]
    assert [p.name for p in (run / "ckpt").iterdir() if p.is_dir()] == ["step-3"]  # keep_checkpoints=1

    assert train.main([*command, "--fresh"]) == 0
    aside = run / "previous-1"
    assert capsys.readouterr().out.startswith(
        f"starting {out} at step 0; the previous run (checkpoints up to step-3, final/) is now in {aside.relative_to(workdir)}\n"
    )
    assert (aside / "ckpt" / "step-3").is_dir() and (aside / "final" / "model.safetensors").is_file()
    assert _steps(aside) == [1, 2, 3] and (aside / "recipe.yaml").is_file()
    assert _steps(run) == [1, 2] and (run / "ckpt" / "latest").read_text() == "step-2"


def test_resume_from_an_earlier_checkpoint_branches_and_prune_spares_latest(
    train, workdir, monkeypatch, capsys, tmp_path
) -> None:
    """``--from step-2`` in a run that reached step 4 moves step-3 and step-4 aside (nothing is deleted),
    points ``latest`` at step-2, drops the metrics rows after step 2, and retraining reproduces step 4."""
    from lzn_core.train.checkpoint import prune

    run = _run(
        train,
        workdir,
        monkeypatch,
        "runs/branch",
        extra=["train.iterations=4", "train.ckpt_every=1", "train.keep_checkpoints=3"],
    )
    original = _states(run, 4)
    capsys.readouterr()
    _run(
        train,
        workdir,
        monkeypatch,
        "runs/branch",
        extra=["train.iterations=4", "train.ckpt_every=1", "train.keep_checkpoints=3"],
        flags=["--from", "step-2"],
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "resuming runs/branch at step 2 (ckpt/step-2); the later checkpoints (step-3, step-4) are now in "
        "runs/branch/previous-1; dropped 3 metrics rows after step 2 (they are logged again)"
    )
    assert sorted(p.name for p in (run / "previous-1" / "ckpt").iterdir()) == ["step-3", "step-4"]
    assert _steps(run / "previous-1") == [1, 2, 3, 4] and _steps(run) == [1, 2, 3, 4]
    again = _states(run, 4)
    assert all(torch.equal(again[k], original[k]) for k in original)
    from lzn_core.errors import LZNWarning

    (run / "ckpt" / "step-4" / "rng-rank0.pt").unlink()  # e.g. written by more ranks than now resume
    with pytest.warns(
        LZNWarning, match="has no generator state for rank 0 .* draws differ from an uninterrupted"
    ):
        _run(train, workdir, monkeypatch, "runs/branch", extra=["train.iterations=5"], flags=["--resume"])

    ckpt = tmp_path / "ckpt"  # pruning: the newest `keep`, never the one `latest` names, and tmp-* leftovers
    for name in ("step-2", "step-4", "step-6", "tmp-8"):
        (ckpt / name).mkdir(parents=True)
    (ckpt / "latest").write_text("step-2")
    assert sorted(p.name for p in prune(ckpt, keep=1)) == ["step-4", "tmp-8"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-2", "step-6"]


# ----------------------------------------------------------------------------- errors: one line, rank 0
def _launch(
    workdir: Path, args: list[str], world: int, env: dict[str, str] | None = None
) -> list[tuple[int, str]]:
    """``python recipes/train.py ARGS`` as ``world`` ranks (gloo); (exit status, stderr) per rank."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WORLD_SIZE": str(world)}
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **(env or {}))
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "recipes" / "train.py"), *args],
            cwd=workdir,
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]
    finally:
        for p in procs:
            p.kill()


def _noise_free(err: str) -> str:
    """stderr without the lines of libraries we do not control (DeepSpeed's accelerator notice, torch's
    deprecation of the anchor all-gather, the progress bar)."""
    skip = ("[WARNING]", "FutureWarning", "return torch.cat(all_gather", "digits_joint:")
    return "".join(line for line in err.splitlines(keepends=True) if not line.lstrip().startswith(skip))


def test_a_bad_recipe_prints_what_lzn_validate_prints_on_rank_0_only(
    train, workdir, monkeypatch, capsys
) -> None:
    """Two ranks, a typo in an override: rank 0 prints exactly `lzn validate`'s text (no traceback), rank 1
    nothing; both exit 1. With --debug the error is raised (its traceback printed) instead."""
    from lzn_core.cli import main as lzn
    from lzn_core.errors import RecipeError

    bad = ["--recipe", "digits_joint", "train.iterations=20", "train.batchsize=8"]
    ranks = _launch(workdir, bad, world=2)
    monkeypatch.chdir(workdir)
    assert lzn(["validate", "digits_joint", "train.iterations=20", "train.batchsize=8"]) == 1
    validate = capsys.readouterr().err
    assert "  - train.batchsize: extra field; did you mean 'batch_size'?" in validate.splitlines()
    assert [code for code, _ in ranks] == [1, 1]
    assert _noise_free(ranks[0][1]) == validate
    assert _noise_free(ranks[1][1]) == ""
    with pytest.raises(RecipeError, match="batchsize"):
        train.main([*bad, "--debug"])


def test_missing_shards_print_one_line_on_rank_0_only(workdir, tmp_path) -> None:
    """Two ranks meet the same missing shard set after the process group is up: one line from rank 0,
    with the recipe's data.make command."""
    ranks = _launch(tmp_path, ["--recipe", "digits_joint", "--output", "run", *DIGITS], world=2)
    assert [code for code, _ in ranks] == [1, 1]
    assert _noise_free(ranks[0][1]) == (
        "train.py: error: no shards match 'data/digits/train-*.tar'; directory 'data/digits' does not exist; "
        "make them with: lzn shards digits data/digits\n"
    )
    assert _noise_free(ranks[1][1]) == ""


def test_an_unwritable_run_directory_is_one_line(train, workdir, monkeypatch, capsys) -> None:
    real_mkdir = Path.mkdir

    def denied(self, *args, **kwargs):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    _run(train, workdir, monkeypatch, "runs/locked", status=1)
    assert capsys.readouterr().err == (
        "train.py: error: cannot write the run directory runs/locked: Permission denied; choose another "
        "--output (or fix its permissions)\n"
    )


def test_error_lines_by_kind_and_rank() -> None:
    """Which rank reports what: user errors and a failed process group on rank 0 only; anything else on
    the rank it happened on, naming the type and the rank."""
    from lzn_core.errors import DataError
    from lzn_core.train.failures import error_line

    assert error_line(DataError("no shards"), "train.py") == "train.py: error: no shards"
    assert error_line(PermissionError(13, "Permission denied", "x"), "train.py", rank=1) is None
    oom = RuntimeError("CUDA out of memory")
    assert error_line(oom, "train.py", rank=1) == (
        "train.py: error (RuntimeError) on rank 1: CUDA out of memory (run again with --debug for the traceback)"
    )
    peer = torch.distributed.DistBackendError("Connection closed by peer")
    assert error_line(peer, "train.py", rank=1) is None
    assert "another rank" in error_line(peer, "train.py", rank=0)
    port = torch.distributed.DistNetworkError("address already in use")  # while starting the group
    assert error_line(port, "train.py", rank=1, group_up=False) == (
        "train.py: error (DistNetworkError) on rank 1: address already in use (run again with --debug for the "
        "traceback)"
    )


# ----------------------------------------------------------------------------- the DeepSpeed JSON
def test_deepspeed_json_problems_have_field_paths() -> None:
    from lzn_core.recipe.ds_config import deepspeed_problems

    good = json.loads((ROOT / "recipes" / "ds" / "cpu.json").read_text())
    assert deepspeed_problems(good) == []
    assert deepspeed_problems(json.loads((ROOT / "recipes" / "ds" / "zero1.json").read_text())) == []
    bad = {
        "optimzer": {"type": "Adam"},
        "zero_optimization": {"stage": "1", "overlap_com": True, "reduce_bucket_size": -5},
        "fp16": {"enabled": "yes"},
        "bf16": [],
        "gradient_clipping": "1.0",
        "steps_per_print": 0,
        "_comment": "comments are fine",
    }
    assert deepspeed_problems(bad) == [
        "deepspeed.optimzer: unknown key; did you mean 'optimizer'?",
        "deepspeed.steps_per_print: must be a positive integer, got 0",
        "deepspeed.zero_optimization.overlap_com: unknown key; did you mean 'overlap_comm'?",
        "deepspeed.zero_optimization.stage: must be an integer 0..3, got '1' (str)",
        "deepspeed.zero_optimization.reduce_bucket_size: must be a positive integer, got -5",
        "deepspeed.fp16.enabled: must be true or false, got 'yes' (str)",
        "deepspeed.bf16: must be an object (a JSON {...}), got []",
        "deepspeed.gradient_clipping: must be a number >= 0, got '1.0' (str)",
    ]
    ignored = {
        "optimizer": {"type": "SGD", "params": {"lr": 0.1, "beta": [0.9, 0.99], "adam_w_mode": True}},
        "scheduler": {"type": "WarmupLR"},
        "zero_optimization": {"stage": 4},
        "train_batch_size": 64,
        "gradient_clipping": 0.5,
    }
    assert deepspeed_problems(ignored, {"batch_size": 32, "grad_clip": 1.0}) == [
        "deepspeed.zero_optimization.stage: must be an integer 0..3, got 4",
        "deepspeed.optimizer.type: 'SGD' is not used: the engine always trains with torch Adam (one group per "
        "module, rates from train.lr); set 'Adam' or remove the optimizer section",
        "deepspeed.optimizer.params.lr: not used: learning rates come from train.lr; remove it",
        "deepspeed.optimizer.params.beta: not used by the engine; did you mean 'betas'?",
        "deepspeed.optimizer.params.adam_w_mode: true is not used: the engine's torch Adam applies "
        "weight_decay as L2 (Adam, not AdamW); set it to false",
        "deepspeed.scheduler: not used: the engine builds the lr schedule from train.warmup and train.freeze; "
        "remove it",
        "deepspeed.train_batch_size: 64 disagrees with train.batch_size=32 (the engine sets it from "
        "train.batch_size); remove it",
        "deepspeed.gradient_clipping: 0.5 disagrees with train.grad_clip=1.0 (the engine sets it from "
        "train.grad_clip); remove it",
    ]


def test_half_precision_is_train_precision_not_deepspeeds() -> None:
    """DeepSpeed's fp16/bf16 would cast the whole model (bf16 anchors, a bf16 EMA) and its
    torch_autocast wraps an engine forward the script never calls: each is refused with the
    recipe key to use; accumulation steps are refused with the key that micro-batches exactly."""
    from lzn_core.errors import RecipeError
    from lzn_core.recipe import load_recipe
    from lzn_core.recipe.ds_config import deepspeed_problems

    cfg = {"bf16": {"enabled": True}, "fp16": {"enabled": True}, "torch_autocast": {"enabled": True}}
    problems = deepspeed_problems(cfg)
    assert [p.split(":")[0] for p in problems] == [
        "deepspeed.fp16.enabled",
        "deepspeed.bf16.enabled",
        "deepspeed.torch_autocast.enabled",
    ]
    assert all("train.precision: bf16" in p for p in problems)
    assert "set train.micro_batch_size" in deepspeed_problems({"gradient_accumulation_steps": 4})[0]
    recipe = load_recipe("cifar_joint", ["train.precision=bf16", "train.micro_batch_size=250"])
    assert (recipe.train.precision, recipe.train.micro_batch_size) == ("bf16", 250)
    assert (
        load_recipe("digits_joint").train.precision,
        load_recipe("digits_joint").train.micro_batch_size,
    ) == (
        "fp32",
        None,
    )
    with pytest.raises(RecipeError) as info:
        load_recipe("cifar_joint", ["train.precision=fp16", "train.micro_batch_size=0"])
    assert sorted(info.value.problems) == [
        "train.micro_batch_size: Input should be greater than 0 or one of 'auto' (got 0)",
        "train.precision: 'fp16' is not one of 'fp32', 'bf16'; did you mean 'bf16'?",
    ]


def test_lzn_validate_reports_deepspeed_problems_with_the_rest(workdir, monkeypatch, capsys) -> None:
    """A DeepSpeed file with a typo and an invalid type, an inline config with a bad stage, and a recipe
    typo: `lzn validate` lists them all at once (and load_recipe raises with the same lines)."""
    from lzn_core.cli import main as lzn
    from lzn_core.errors import RecipeError
    from lzn_core.recipe import load_recipe

    monkeypatch.chdir(workdir)
    cfg = json.loads((ROOT / "recipes" / "ds" / "cpu.json").read_text())
    cfg["optimzer"] = cfg.pop("optimizer")
    cfg["fp16"] = {"enabled": "yes"}
    Path("ds_bad.json").write_text(json.dumps(cfg))
    assert lzn(["validate", "digits_joint", "deepspeed=ds_bad.json", "train.batchsize=8"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("digits_joint.yaml has 3 problems:")
    assert sorted(err[1:]) == [
        "  - deepspeed.fp16.enabled: must be true or false, got 'yes' (str)",
        "  - deepspeed.optimzer: unknown key; did you mean 'optimizer'?",
        "  - train.batchsize: extra field; did you mean 'batch_size'?",
    ]
    with pytest.raises(RecipeError) as info:
        load_recipe("digits_joint", ["deepspeed={zero_optimization: {stage: 4}}"])
    assert info.value.problems == ["deepspeed.zero_optimization.stage: must be an integer 0..3, got 4"]
    assert lzn(["validate", "digits_joint", "--skip-data"]) == 0  # the shipped recipe and ds/cpu.json pass


def test_export_run_from_checkpoint_and_final(train, workdir, monkeypatch, tmp_path) -> None:
    import shutil

    from lzn_core.io import export_run, load

    run = _run(train, workdir, monkeypatch, "runs/export", extra=["train.ckpt_every=2"])
    from_final = load(export_run(run, tmp_path / "a"))
    shutil.rmtree(run / "final")
    from_ckpt = load(export_run(run, tmp_path / "b"))  # EMA weights of ckpt/latest
    sa, sb = from_final.state_dict(), from_ckpt.state_dict()
    assert from_ckpt.bank("image").shape[0] > 0  # the checkpoint export fills the anchor bank too
    assert set(sa) == set(sb)
    for k in sb:
        torch.testing.assert_close(sb[k], sa[k], msg=k)
    with pytest.raises(FileNotFoundError, match="has no final/ and no recipe.yaml"):
        export_run(tmp_path / "empty", tmp_path / "c")

    from lzn_core.errors import DataError, LZNWarning
    from lzn_core.model import LZNModel

    def no_data(*args, **kwargs):
        raise DataError("no shards match 'data/train-*.tar'")

    monkeypatch.setattr(LZNModel, "fill_banks", no_data)
    with pytest.warns(LZNWarning, match="exported without an anchor bank"):
        export_run(run, tmp_path / "d")  # still exports: the weights do not need the data
    assert (tmp_path / "d" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- engine pieces (no run)
def test_lr_factor_warmup_and_freeze() -> None:
    from lzn_core.train.engine import lr_factor

    assert lr_factor(0, 100, None) == pytest.approx(1 / 5000)
    assert lr_factor(50, 100, None) == pytest.approx(1 / 5000 + (1 - 1 / 5000) * 0.5)
    assert lr_factor(100, 100, None) == 1.0 and lr_factor(7, 0, None) == 1.0
    assert lr_factor(60, 100, 60) == 0.0 and lr_factor(59, 0, 60) == 1.0


@pytest.mark.parametrize("stage", [0, 1])
def test_frozen_module_is_kept_out_of_the_update_and_the_clipping_norm(train, tmp_path, stage) -> None:
    """train.freeze {image.decoder: 1}: from iteration 1 the decoder neither changes nor adds to
    the gradient norm (ZeRO-1 included, whose gradients live in DeepSpeed's buffers), its EMA and
    Adam moments stay as they were after iteration 0, while gradients still flow through it to
    the encoder."""
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import Engine, setup_distributed

    ds = f"deepspeed={{zero_optimization: {{stage: {stage}}}}}"
    recipe = load_recipe("digits_joint.yaml", [*_IMG8, "train.batch_size=4", "train.grad_clip=1.0", ds])
    recipe.train.freeze = {"image.decoder": 1}
    setup_distributed()
    torch.manual_seed(0)
    engine = Engine(LZNModel(recipe), recipe, tmp_path / "ckpt")
    model = engine.model
    params = dict(model.named_parameters())
    decoder = [n for n in params if n.startswith("decoders.image.")]
    assert decoder

    def squares() -> torch.Tensor:  # gradient 2p for every parameter that still requires one
        return sum((p**2).sum() for p in model.parameters())

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in params.items()}

    def adam_state() -> dict[str, torch.Tensor]:
        """The decoder group's Adam moments (under ZeRO: of its flat partition)."""
        group = next(g for g in engine.optimizer.param_groups if g["name"] == "image.decoder")
        base = engine.optimizer.optimizer if stage else engine.optimizer
        return {
            f"{i}.{k}": v.clone() for i, p in enumerate(group["params"]) for k, v in base.state[p].items()
        }

    before = snapshot()
    engine.step(squares())
    after, ema, moments = snapshot(), engine.ema_state_dict(), adam_state()
    assert any(not torch.equal(before[n], after[n]) for n in decoder)  # iteration 0: not frozen yet
    assert moments and any(v.abs().sum() > 0 for k, v in moments.items() if "exp_avg" in k)
    engine.step(squares())
    mid = snapshot()
    engine.step(squares())
    final, ema_final, moments_final = snapshot(), engine.ema_state_dict(), adam_state()
    assert all(torch.equal(after[n], final[n]) for n in decoder)
    assert all(not params[n].requires_grad for n in decoder)
    assert all(torch.equal(ema[n], ema_final[n]) for n in decoder)  # the EMA stops at the freeze step
    assert moments.keys() == moments_final.keys()
    assert all(torch.equal(moments[k], moments_final[k]) for k in moments)  # and Adam's state is not stepped
    encoder = [n for n in params if n.startswith("encoders.image.")]
    assert any(not torch.equal(ema[n], ema_final[n]) for n in encoder)
    if stage == 1:  # DeepSpeed's own norm of the last step: the unfrozen parameters only
        expected = torch.sqrt(sum(((2 * mid[n]) ** 2).sum() for n in params if n not in decoder))
        torch.testing.assert_close(torch.as_tensor(engine.ds.get_global_grad_norm()).float(), expected)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    z = model.latents(model.encode("image", x))
    cond = model.condition("label", torch.arange(4))
    model.decoders["image"].loss(z, x, cond, generator=torch.Generator().manual_seed(0)).backward()
    assert all(params[n].grad is None for n in decoder)
    encoder = [p.grad for n, p in params.items() if n.startswith("encoders.image.")]
    assert any(g is not None and g.abs().sum() > 0 for g in encoder)


def test_a_frozen_decoder_exports_the_same_weights_at_and_after_its_freeze_step(
    train, workdir, monkeypatch, tmp_path
) -> None:
    """train.freeze {image.decoder: 2}: the exported (EMA) decoder after 2 steps and after 4 (resumed)
    are bit-identical, and so is its Adam state in the two checkpoints; the encoder keeps changing."""
    from safetensors.torch import load_file

    extra = ["train.iterations=2", "train.ckpt_every=2", "train.freeze.image.decoder=2"]
    run = _run(train, workdir, monkeypatch, "runs/freeze", extra=extra)
    shutil.copytree(run / "final", tmp_path / "at2")
    _run(train, workdir, monkeypatch, "runs/freeze", extra=[*extra, "train.iterations=4"], flags=["--resume"])
    at2, at4 = (
        load_file(tmp_path / "at2" / "model.safetensors"),
        load_file(run / "final" / "model.safetensors"),
    )
    decoder = [k for k in at2 if k.startswith("decoders.image.")]
    encoder = [k for k in at2 if k.startswith("encoders.image.")]
    assert decoder and encoder
    assert all(torch.equal(at2[k], at4[k]) for k in decoder)
    assert any(not torch.equal(at2[k], at4[k]) for k in encoder)

    def decoder_moments(step: int) -> list[torch.Tensor]:
        path = run / "ckpt" / f"step-{step}" / "mp_rank_00_model_states.pt"
        opt = torch.load(path, map_location="cpu", weights_only=False)["optimizer"]
        [group] = [g for g in opt["param_groups"] if g["name"] == "image.decoder"]
        return [v for i in group["params"] for v in opt["state"][i].values()]

    m2, m4 = decoder_moments(2), decoder_moments(4)
    assert m2 and len(m2) == len(m4) and all(torch.equal(a, b) for a, b in zip(m2, m4, strict=True))


def test_param_groups_follow_lr_keys() -> None:
    from lzn_core.errors import LZNError
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import param_groups

    model = LZNModel(load_recipe("digits_joint.yaml", _IMG8))
    lr = {"default": 1.0, "image.decoder": 2.0, "label": 3.0}
    groups = {g["name"]: g for g in param_groups(model, lr, {"image.decoder": 60})}
    assert {k: g["lr"] for k, g in groups.items()} == {
        "image.encoder": 1.0,
        "image.decoder": 2.0,
        "label.encoder": 3.0,
    }
    assert groups["image.decoder"]["freeze_at"] == 60 and groups["image.encoder"]["freeze_at"] is None
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    with pytest.raises(LZNError, match="train.lr has no entry for 'image.decoder' and no 'default'"):
        param_groups(model, {"image.encoder": 1.0, "label": 1.0}, {})


def test_deepspeed_config_errors(tmp_path) -> None:
    from lzn_core.errors import LZNError
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import deepspeed_config

    recipe = load_recipe("digits_joint.yaml", ["train.batch_size=10"])
    cfg = deepspeed_config(recipe, 2)
    assert cfg["train_batch_size"] == 10 and cfg["train_micro_batch_size_per_gpu"] == 5
    assert cfg["gradient_clipping"] == 1.0 and "optimizer" in cfg  # its params feed torch Adam
    with pytest.raises(LZNError, match="train.batch_size=10 is not divisible by the world size 3"):
        deepspeed_config(recipe, 3)
    recipe.deepspeed = "nope.json"
    with pytest.raises(LZNError, match="deepspeed config 'nope.json' not found"):
        deepspeed_config(recipe, 1, tmp_path)


def test_train_help() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--resume" in out.stdout and "key=value" in out.stdout


def test_step_profile_splits_a_real_step(workdir, monkeypatch, tmp_path) -> None:
    """benchmarks/step_profile.py (issue 15): the parts of a real digits_joint step add up to the step."""
    import subprocess
    import sys

    out = tmp_path / "profile.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "step_profile.py"),
        "--recipe",
        "digits_joint.yaml",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--out",
        str(out),
        "train.batch_size=16",
        "latent.dim=8",
        "tasks.1.steps=5",
    ]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    (res,) = json.loads(out.read_text())
    parts = {k: v for k, v in res["seconds"].items() if k != "total"}
    assert (
        all(v >= 0 for v in parts.values()) and parts["solver forward"] > 0 and parts["decoder forward"] > 0
    )
    assert parts["solver backward"] > 0 and parts["optimiser step"] > 0
    assert abs(sum(parts.values()) - res["seconds"]["total"]) < 0.2 * res["seconds"]["total"]
    assert "| solver backward |" in out.with_suffix(".md").read_text()
