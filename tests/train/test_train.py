"""recipes/train.py end to end on tiny shards: one process, in this pytest process (CPU, gloo).

Covers: atomic checkpoints (a crash mid-write leaves the previous one usable), the non-finite skip,
the engine's lr/freeze schedule and param groups, export of a run; how a run starts in its directory
(refused, --resume, --fresh, --from an earlier checkpoint, pruning that spares ``latest``); one-line
errors; a frozen module's EMA and Adam state. (A smoke run of every shipped recipe:
tests/e2e/test_recipes.py; exact resume after kill -9, one and two ranks: tests/e2e/test_distributed.py;
the DeepSpeed JSON checks: tests/recipe/test_ds_config.py.)
"""

from __future__ import annotations

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
from tiny_runs import DIGITS, IMG8


@pytest.fixture(scope="module")
def workdir(digits_workdir: Path) -> Path:
    """A cwd with data/digits (the real digits)."""
    return digits_workdir


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


def test_crash_mid_checkpoint_keeps_previous_usable(train, workdir, monkeypatch) -> None:
    import lzn_core.train.checkpoint as checkpoint_mod
    from lzn_core.train.checkpoint import list_checkpoints

    real_replace = os.replace

    def failing_replace(src, dst):
        if str(src).endswith("tmp-4"):
            raise OSError("disk full (injected)")
        return real_replace(src, dst)

    extra = ["train.iterations=4", "train.ckpt_every=2"]
    monkeypatch.setattr(checkpoint_mod.os, "replace", failing_replace)
    _run(train, workdir, monkeypatch, "runs/atomic", extra=extra, status=1)
    monkeypatch.setattr(checkpoint_mod.os, "replace", real_replace)
    ckpt = workdir / "runs/atomic/ckpt"
    assert (ckpt / "tmp-4").is_dir()  # the half-written one, under its temporary name
    assert (ckpt / "latest").read_text() == "step-2"
    assert checkpoint_mod.resolve_checkpoint(ckpt, "latest") == (ckpt, "step-2")
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


@pytest.mark.slow  # 2 ranks in subprocesses: 9 s (load 3)
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


@pytest.mark.slow  # 2 ranks in subprocesses: 10 s (load 3)
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
    recipe = load_recipe("digits_joint.yaml", [*IMG8, "train.batch_size=4", "train.grad_clip=1.0", ds])
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


@pytest.mark.parametrize(
    "way",
    [
        pytest.param([], id="one-pass"),
        pytest.param(["train.micro_batch_size=3"], id="two-pass"),  # froze between forward and backward
        pytest.param(["deepspeed={zero_optimization: {stage: 2}}"], id="zero2"),  # DeepSpeed's grad hook
    ],
)
def test_a_frozen_decoder_exports_the_same_weights_at_and_after_its_freeze_step(
    train, workdir, monkeypatch, tmp_path, way, request
) -> None:
    """train.freeze {image.decoder: 2}: the exported (EMA) decoder after 2 steps and after 4 (resumed)
    are bit-identical, and so is its Adam state in the two checkpoints; the encoder keeps changing.
    In one pass, in two passes over micro-batches, and under ZeRO 2 (the freeze happens before the
    step's forward: a step that froze between its forward and its backward failed in both)."""
    from safetensors.torch import load_file

    extra = ["train.iterations=2", "train.ckpt_every=2", "train.freeze.image.decoder=2", *way]
    out = f"runs/freeze-{request.node.callspec.id}"
    run = _run(train, workdir, monkeypatch, out, extra=extra)
    shutil.copytree(run / "final", tmp_path / "at2")
    _run(train, workdir, monkeypatch, out, extra=[*extra, "train.iterations=4"], flags=["--resume"])
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

    if way and "zero" in way[0]:  # the moments live in ZeRO's flat partitions: the weights said it
        return
    m2, m4 = decoder_moments(2), decoder_moments(4)
    assert m2 and len(m2) == len(m4) and all(torch.equal(a, b) for a, b in zip(m2, m4, strict=True))


def test_param_groups_follow_lr_keys() -> None:
    from lzn_core.errors import LZNError
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe
    from lzn_core.train.engine import param_groups

    model = LZNModel(load_recipe("digits_joint.yaml", IMG8))
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
    with pytest.raises(
        LZNError, match=r"deepspeed: file 'nope.json' not found \(looked at .*/recipes/nope.json\)"
    ):
        deepspeed_config(
            recipe, 1, tmp_path
        )  # the recipe loader's lookup: given folder, cwd, shipped recipes
    recipe.deepspeed = 3  # neither a file name nor a mapping (a recipe built in Python)
    with pytest.raises(LZNError, match=r"^deepspeed: expected a file name or a mapping, got 3$"):
        deepspeed_config(recipe, 1)


def test_train_help() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--resume" in out.stdout and "key=value" in out.stdout
