"""Experiment tooling (issue 18, section 2): DeepSpeed's monitor backends fed by a real training run,
``info.json`` + ``lzn info``, sharing through the Hugging Face hub (a local directory and the offline
cache only: no network), and ``lzn recipes`` (list / cp)."""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from paths import ROOT

import lzn_core
from lzn_core.cli import COMMANDS, main
from lzn_core.errors import LZNError
from lzn_core.io import INFO, export_run, load, read_info
from lzn_core.io.files import training_summary
from lzn_core.train.monitor import TrainingMonitor, configure

BATCH = 8
SHORT = [
    f"train.batch_size={BATCH}",
    "train.iterations=3",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.eval_every=0",
    "train.sample_every=0",
    "latent.bank_size=8",
    "latent.dim=8",
    "data.num_workers=0",
    "eval.steps=4",
    "eval.samples_per_class=1",
    "modalities.image.config.preset=tiny",
    "modalities.image.config.sample_steps=2",
]


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------- a short monitored run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-iteration digits_joint run of recipes/train.py whose DeepSpeed config switches on
    TensorBoard and CSV; a checkpoint at step 2, the final export at step 3. In a subprocess:
    DeepSpeed keeps process groups in module globals, which an in-process run would leave stale
    for the in-process runs of tests/train/test_train.py."""
    pytest.importorskip(
        "tensorboard", reason="the TensorBoard backend needs `pip install 'lzn[tensorboard]'`"
    )
    from lzn_core.data.digits import write_digits

    root = tmp_path_factory.mktemp("monitored")
    write_digits(root / "data" / "digits", test_size=50, progress=False)
    ds = json.loads((ROOT / "recipes" / "ds" / "cpu.json").read_text())
    ds.update(tensorboard={"enabled": True}, csv_monitor={"enabled": True})
    (root / "monitor.json").write_text(json.dumps(ds))
    args = ["--recipe", "digits_joint", "--output", "runs/mon", *SHORT, f"deepspeed={root / 'monitor.json'}"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train.py"), *args],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs" / "mon"


def _rows(run: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if any(k.startswith("eval/") for k in r)]


def test_csv_and_tensorboard_get_the_loss_terms_at_the_sample_steps(run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_rows, eval_rows = _rows(run)
    terms = [k for k in train_rows[-1] if k == "loss" or k.startswith(("gen_", "align_"))]
    assert len(terms) == 3  # loss, gen_image, align_image_label
    steps = [r["step"] * BATCH for r in train_rows]  # DeepSpeed's x-axis: samples in optimiser steps
    assert steps == [8, 16, 24]

    for term in terms:  # CSV: one file per tag, written by DeepSpeed's csvMonitor
        with open(run / "csv" / f"Train_Samples_{term}.csv", newline="") as f:
            table = list(csv.reader(f))
        assert table[0] == ["step", term]
        assert [int(s) for s, _ in table[1:]] == steps
        assert [float(v) for _, v in table[1:]] == pytest.approx([r[term] for r in train_rows], rel=1e-6)
    lr_groups = {p.name for p in (run / "csv").glob("Train_Samples_lr_*.csv")}
    assert lr_groups == {f"Train_Samples_lr_{g}.csv" for g in train_rows[-1]["lr"]}
    assert (run / "csv" / "Train_Samples_lr.csv").is_file()  # DeepSpeed's own event, same axis
    (accuracy,) = [k for k in eval_rows[-1] if k.startswith("eval/accuracy/")]
    with open(run / "csv" / ("Eval_Samples_" + accuracy[5:].replace("/", "_") + ".csv"), newline="") as f:
        assert list(csv.reader(f))[1:] == [[str(24), str(eval_rows[-1][accuracy])]]
    assert not list((run / "csv").glob("*grid*"))  # CSV takes no images

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    for term in terms:
        events = acc.Scalars(f"Train/Samples/{term}")
        assert [e.step for e in events] == steps
        assert [e.value for e in events] == pytest.approx([r[term] for r in train_rows], rel=1e-6)
    assert [e.step for e in acc.Scalars("Train/Samples/lr")] == steps  # DeepSpeed's own, every step
    (grid,) = [k for k in eval_rows[-1] if k.startswith("eval/grid/")]
    (image,) = acc.Images("Eval/Samples/" + grid[5:])
    from PIL import Image

    with Image.open(run.parents[1] / eval_rows[-1][grid]) as png:  # relative to the run's cwd
        assert (image.step, image.width, image.height) == (24, png.width, png.height)


def test_monitor_configuration_fills_the_run_dir_and_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {
        "tensorboard": {"enabled": True},
        "csv_monitor": {"enabled": True, "output_path": "/elsewhere"},
        "wandb": {"enabled": False},
    }
    configure(cfg, tmp_path, "digits_joint")
    assert cfg["tensorboard"] == {"enabled": True, "output_path": str(tmp_path), "job_name": "tensorboard"}
    assert cfg["csv_monitor"]["job_name"] == "digits_joint"
    assert cfg["wandb"] == {"enabled": False}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(LZNError, match=r"pip install 'lzn\[wandb\]'.*wandb.enabled to false"):
        configure({"wandb": {"enabled": True}}, tmp_path, "x")


def test_weights_and_biases_gets_scalars_and_grids_as_images(tmp_path: Path, monkeypatch) -> None:
    """The W&B path of TrainingMonitor (wandb is not installed in CI: a recording stand-in)."""
    from PIL import Image

    Image.new("RGB", (4, 6)).save(tmp_path / "grid.png")
    logged, events = [], []
    fake = types.ModuleType("wandb")
    fake.Image = lambda path: ("wandb.Image", path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    wb = types.SimpleNamespace(log=lambda data, step=None: logged.append((data, step)))
    monitor = types.SimpleNamespace(
        enabled=True,
        tb_monitor=None,
        csv_monitor=None,
        comet_monitor=None,
        wandb_monitor=wb,
        write_events=events.extend,
    )
    engine = types.SimpleNamespace(ds=types.SimpleNamespace(monitor=monitor, global_samples=40))
    mon = TrainingMonitor(engine)
    assert mon.enabled
    mon.write({"step": 5, "loss": 0.5, "lr": {"image.encoder": 1e-3}, "note": "x"})
    mon.write({"eval/accuracy/image->label": 0.9, "eval/grid/image": str(tmp_path / "grid.png")})
    assert events == [
        ("Train/Samples/loss", 0.5, 40),
        ("Train/Samples/lr/image.encoder", 1e-3, 40),
        ("Eval/Samples/accuracy/image->label", 0.9, 40),
    ]
    assert logged == [({"Eval/Samples/grid/image": ("wandb.Image", str(tmp_path / "grid.png"))}, 40)]
    off = types.SimpleNamespace(ds=types.SimpleNamespace(monitor=types.SimpleNamespace(enabled=False)))
    assert not TrainingMonitor(off).enabled


# ----------------------------------------------------------------------------- info.json and lzn info


def test_info_json_of_the_run(run: Path) -> None:
    info = read_info(run / "final")
    train_rows, eval_rows = _rows(run)
    model = load(run / "final")
    assert info["name"] == "digits_joint" and info["latent_dim"] == model.latent_dim == 8
    assert info["edges"] == lzn_core.possible_edges(model)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    for name in model.names:
        m = info["modalities"][name]
        assert (m["distribution"], m["version"]) == ("lzn", version("lzn"))
        assert m["spec_version"] == model.specs[name].version and m["decoder"] == model.decoder_kind(name)
        assert m["bank"] == model.bank(name).shape[0]
    t = info["training"]
    assert (t["steps"], t["iterations"], t["batch_size"], t["samples"]) == (3, 3, BATCH, 3 * BATCH)
    last = train_rows[-1]
    assert t["final"] == {
        "step": 3,
        **{k: last[k] for k in last if k not in ("step", "time", "it_s", "lr", "skipped")},
    }
    ev = {
        k[5:]: v for k, v in eval_rows[-1].items() if k.startswith("eval/") and not k.startswith("eval/grid/")
    }
    assert t["eval"] == {"step": 3, **ev}
    assert 0 < t["wall_time_s"] <= last["time"] + 0.1


def test_export_from_a_checkpoint_summarises_the_rows_up_to_its_step(
    run: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(run.parents[1])  # the recipe's data.train (the bank) is relative to the run's cwd
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("recipe.yaml", "metrics.jsonl"):
        (copy / name).write_bytes((run / name).read_bytes())
    (copy / "ckpt").mkdir()
    (copy / "ckpt" / "step-2").symlink_to(run / "ckpt" / "step-2")
    (copy / "ckpt" / "latest").write_text("step-2")  # as if the run had stopped after step 2
    out = export_run(copy, tmp_path / "exported")  # no final/: the latest checkpoint
    info = read_info(out)
    assert info["training"]["steps"] == 2 and info["training"]["final"]["step"] == 2
    assert "eval" not in info["training"]  # the run evaluated at step 3 only
    again = export_run(run, tmp_path / "from_final")  # final/ is copied with its info.json
    assert read_info(again) == read_info(run / "final")


def test_training_summary_of_a_resumed_run() -> None:
    recipe = types.SimpleNamespace(train=types.SimpleNamespace(iterations=10, batch_size=4))
    rows = [
        {"step": 1, "loss": 3.0, "time": 1.0, "skipped": 0},
        {"step": 2, "loss": 2.0, "time": 2.0, "skipped": 0},
        {
            "step": 3,
            "loss": 9.0,
            "time": 3.0,
            "skipped": 0,
        },  # written before a crash, redone after the resume
        {"step": 3, "loss": 1.5, "time": 0.5, "skipped": 1},
        {"step": 4, "loss": float("nan"), "time": 1.0, "skipped": 1},
        {"step": 4, "eval/accuracy/a->b": 0.5, "eval/grid/a": "x.png"},
    ]
    s = training_summary(rows, recipe)
    assert (s["steps"], s["samples"], s["skipped_steps"], s["wall_time_s"]) == (4, 16, 1, 4.0)
    assert s["final"] == {"step": 4, "loss": "nan"}
    assert s["eval"] == {"step": 4, "accuracy/a->b": 0.5}
    assert training_summary(rows[-1:], recipe) is None
    assert training_summary(rows[:4], recipe)["final"]["loss"] == 1.5  # the row written last wins


def test_lzn_info_prints_what_the_model_is(run: Path, capsys) -> None:
    rc, out, err = _main(capsys, "info", str(run / "final"))
    assert rc == 0, err
    info = read_info(run / "final")
    lines = out.splitlines()
    assert lines[0] == f"digits_joint  ({run / 'final'})"
    assert any(line.startswith("latent       q = 8; solver euler") for line in lines)
    for name, m in info["modalities"].items():
        row = next(line for line in lines if f" {name}  " in line and m["decoder"] in line)
        assert re.search(rf" lzn +{re.escape(version('lzn'))} ", row), row
    assert "generate image conditioned on label (weight 1.0)" in out
    edges = " ".join(line[13:] for line in lines if line.startswith(("edges", " " * 13)))
    assert all(e in edges for e in info["edges"])
    assert "training     3 of 3 iterations, batch 8 (24 samples)" in out
    assert f"step 3: loss {info['training']['final']['loss']:.4g}" in out
    assert "eval at step 3: accuracy/image->label" in out
    rc, js, _ = _main(capsys, "info", str(run), "--json")  # a run directory: its final/
    assert rc == 0 and {k: v for k, v in json.loads(js).items() if k not in ("path", "recipe")} == info


def test_lzn_info_of_an_export_without_info_json(run: Path, tmp_path: Path, capsys) -> None:
    old = tmp_path / "old" / "final"
    old.mkdir(parents=True)
    for name in ("model.safetensors", "recipe.yaml"):
        (old / name).write_bytes((run / "final" / name).read_bytes())
    (old.parent / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes())
    rc, out, err = _main(capsys, "info", str(old))
    assert rc == 0, err
    assert "no info.json" in out and "training     3 of 3 iterations" in out
    rc, out, err = _main(
        capsys, "info", str(old.parent)
    )  # the run directory: the same (lzn_core.io.run_metrics)
    assert rc == 0 and "training     3 of 3 iterations" in out, err
    (old.parent / "metrics.jsonl").rename(old.parent / "elsewhere.jsonl")  # an export outside a run
    rc, out, err = _main(capsys, "info", str(old))
    assert rc == 0 and "no training metrics stored" in out, err


# ----------------------------------------------------------------------------- the hub


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import tiny_model

    return tiny_model()


def _same(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0)


def _fake_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """The Hugging Face cache layout for one model repository: blobs named by their hash, a
    snapshot of symlinks to them and refs/main naming the commit (what snapshot_download writes)."""
    from huggingface_hub.file_download import repo_folder_name

    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_save_and_load_pretrained_from_a_local_directory(tiny, tmp_path: Path) -> None:
    out = lzn_core.save_pretrained(tiny, tmp_path / "lzn-digits")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "recipe.yaml", INFO, "README.md"}
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: lzn" in card and 'lzn_core.load("lzn-digits")' in card
    _same(tiny, lzn_core.from_pretrained(out))
    _same(tiny, lzn_core.load(str(out)))


def test_a_hub_id_loads_from_the_offline_cache(tiny, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py: nothing here reaches the network
    folder = lzn_core.save_pretrained(tiny, tmp_path / "saved")
    cache = tmp_path / "cache"
    _fake_cache(cache, "user/lzn-digits", folder)
    (repo,) = huggingface_hub.scan_cache_dir(cache).repos  # huggingface_hub reads the layout as its own
    assert repo.repo_id == "user/lzn-digits" and repo.nb_files == 4
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # "user/lzn-digits" is no path here
    model = lzn_core.load("user/lzn-digits")
    _same(tiny, model)
    assert not model.training


def test_a_hub_id_missing_from_the_offline_cache_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        LZNError,
        match=r"'user/nothing-here' is no local directory and is not \(completely\) in the Hugging Face cache",
    ):
        lzn_core.load("user/nothing-here")
    rc, _, err = _main(capsys, "info", "user/nothing-here")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE=1" in err and "hf download user/nothing-here" in err


def test_a_cached_repository_without_an_lzn_model_is_named(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("not a model\n")
    _fake_cache(tmp_path / "cache", "user/other", other)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        LZNError, match=r"cached copy of 'user/other' .* lacks model.safetensors and recipe.yaml"
    ):
        lzn_core.load("user/other")
    # what `lzn info` fetches of a hub model (no weights) is enough for it, not for loading
    partial = tmp_path / "partial"
    saved = lzn_core.save_pretrained(tiny, tmp_path / "saved")
    partial.mkdir()
    for name in ("recipe.yaml", INFO, "README.md"):
        (partial / name).write_bytes((saved / name).read_bytes())
    _fake_cache(tmp_path / "cache", "user/partial", partial)
    rc, out, err = _main(capsys, "info", "user/partial")
    assert rc == 0, err
    assert out.startswith("recipe  (user/partial)") and "latent       q = 8" in out
    with pytest.raises(LZNError, match=r"cached copy of 'user/partial' .* lacks model.safetensors and"):
        lzn_core.load("user/partial")


def test_what_counts_as_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    from lzn_core.io.hub import is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "here").mkdir(parents=True)
    assert is_hub_id("user/lzn-digits") and is_hub_id("org.x/model_1.0")
    assert not is_hub_id("runs/here")  # an existing path is a path
    assert not any(is_hub_id(s) for s in ("lzn-digits", "a/b/c", "../x", "user/x.", "/abs/x", "user/-x"))
    assert not is_hub_id(Path("user/lzn-digits"))


def test_push_to_hub_uploads_the_model_files_and_a_card_in_one_commit(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    """The upload path with a recording stand-in for huggingface_hub.HfApi (no network in tests)."""
    import huggingface_hub

    calls: dict = {}

    class FakeApi:
        def __init__(self, token=None, library_name=None):
            calls["init"] = (token, library_name)

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            calls["repo"] = (repo_id, private, exist_ok, repo_type)
            return types.SimpleNamespace(repo_id=repo_id)

        def create_commit(self, repo_id, operations, commit_message, repo_type):
            calls["commit"] = (
                repo_id,
                [(op.path_in_repo, op.path_or_fileobj) for op in operations],
                commit_message,
            )
            return types.SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/1")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = lzn_core.save_pretrained(tiny, tmp_path / "m")
    (folder / "README.md").unlink()  # a plain export: push_to_hub writes the card
    url = lzn_core.push_to_hub(folder, "user/lzn-digits", private=True, token="t")
    assert url == "https://hub.invalid/user/lzn-digits/commit/1"
    assert calls["init"] == ("t", "lzn") and calls["repo"] == ("user/lzn-digits", True, True, "model")
    repo_id, ops, message = calls["commit"]
    assert [p for p, _ in ops] == ["model.safetensors", "recipe.yaml", INFO, "README.md"]
    assert dict(ops)["model.safetensors"] == str(folder / "model.safetensors")
    assert (
        b"library_name: lzn" in dict(ops)["README.md"]
        and b'load("user/lzn-digits")' in dict(ops)["README.md"]
    )
    assert message == "Upload LZN model recipe"  # the recipe's name
    url = lzn_core.push_to_hub(tiny, "user/from-model")  # a model object: saved to a temporary directory
    assert calls["commit"][0] == "user/from-model" and len(calls["commit"][1]) == 4


# ----------------------------------------------------------------------------- lzn recipes


def _shipped() -> list[Path]:
    return sorted((ROOT / "recipes").glob("*.yaml"))


def test_lzn_recipes_lists_every_recipe_with_its_header_line_and_the_script(capsys) -> None:
    rc, out, _ = _main(capsys, "recipes")
    assert rc == 0
    lines = out.splitlines()
    for path in _shipped():
        first = next(line for line in path.read_text().splitlines() if line.strip()).lstrip("# ")
        first = first.removeprefix(f"{path.stem}:").strip()
        (row,) = [line for line in lines if line.split()[:1] == [path.name]]
        assert row.split(None, 2)[1:] == ["recipe", first]
    assert any(line.split()[:2] == ["train.py", "script"] for line in lines)
    assert any(line.split()[:2] == ["ds/cpu.json", "deepspeed"] for line in lines)
    rc, again, _ = _main(capsys, "recipes", "ls")
    assert again == out


def test_lzn_recipes_cp_copies_a_recipe_with_its_deepspeed_config(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from lzn_core.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    rc, out, err = _main(capsys, "recipes", "cp", "digits_joint", "mine")
    assert rc == 0, err
    assert (tmp_path / "mine" / "digits_joint.yaml").read_bytes() == (
        ROOT / "recipes" / "digits_joint.yaml"
    ).read_bytes()
    ds = tmp_path / "mine" / "ds" / "cpu.json"
    assert ds.read_bytes() == (ROOT / "recipes" / "ds" / "cpu.json").read_bytes()
    assert "python -m lzn_recipes.train --recipe mine/digits_joint.yaml" in out
    edited = json.loads(ds.read_text()) | {"csv_monitor": {"enabled": True}}
    ds.write_text(json.dumps(edited))  # the copy reads its own DeepSpeed config
    assert load_recipe("mine/digits_joint.yaml").deepspeed["csv_monitor"] == {"enabled": True}

    rc, _, err = _main(capsys, "recipes", "cp", "digits_joint.yaml", "mine")  # its JSON was edited
    assert rc == 1 and "cpu.json exists; pass --force" in err
    assert _main(capsys, "recipes", "cp", "digits_joint.yaml", "mine", "--force")[0] == 0
    assert json.loads(ds.read_text()) == json.loads((ROOT / "recipes" / "ds" / "cpu.json").read_text())
    rc, _, err = _main(capsys, "recipes", "cp", "mine/digits_joint.yaml", "mine")
    assert rc == 1 and "is the file itself" in err

    (tmp_path / "local.yaml").write_text(yaml.safe_dump({"name": "local", "deepspeed": "ds/cpu.json"}))
    assert _main(capsys, "recipes", "cp", "local", "other/renamed.yaml")[0] == 0  # cwd first, to a file path
    assert (tmp_path / "other" / "renamed.yaml").is_file() and (
        tmp_path / "other" / "ds" / "cpu.json"
    ).is_file()


def test_lzn_recipes_cp_the_script_and_a_config_and_unknown_names(tmp_path: Path, capsys) -> None:
    assert _main(capsys, "recipes", "cp", "train.py", str(tmp_path))[0] == 0
    assert (tmp_path / "train.py").read_bytes() == (ROOT / "recipes" / "train.py").read_bytes()
    assert _main(capsys, "recipes", "cp", "ds/zero1.json", str(tmp_path / "z.json"))[0] == 0
    assert json.loads((tmp_path / "z.json").read_text())["zero_optimization"]["stage"] == 1
    rc, _, err = _main(capsys, "recipes", "cp", "digits_jiont", str(tmp_path))
    assert rc == 1 and "did you mean" in err and "digits_joint.yaml" in err
    rc, _, err = _main(capsys, "recipes", "cp", "ds/nope.json", str(tmp_path))
    assert rc == 1 and "shipped: ds/cpu.json, ds/zero1.json" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_has_the_listed_help(name: str) -> None:
    module = importlib.import_module(f"lzn_core.cli.{name.replace('-', '_')}")
    assert module.HELP == COMMANDS[name]
    assert callable(module.add_arguments) and callable(module.run)
