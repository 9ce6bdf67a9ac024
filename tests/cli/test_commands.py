"""The `lzn` command end to end on a tiny exported random model (in-process via cli.main, and a
few subprocess runs for --help and error formatting)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lzn_main import run_lzn
from paths import ROOT
from tiny_models import images, tiny_model

from lzn_core.cli import COMMANDS, main


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lzn_core", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def _png(x: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    arr = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """tmp/model (exported tiny model with an image bank), tmp/run/final (a run dir), tmp/imgs/*.png (5 8x8 PNGs)."""
    from lzn_core.io.files import write_model

    tmp = tmp_path_factory.mktemp("cli")
    model = tiny_model()
    write_model(model, tmp / "model")
    write_model(model, tmp / "run" / "final")
    x = images(5, seed=11)
    for i in range(5):
        _png(x[i], tmp / "imgs" / ("sub" if i >= 3 else "") / f"{i}.png")
    return tmp


# ----------------------------------------------------------------------------- help and existing commands


def test_top_help_and_subcommand_help() -> None:
    top = _run("--help")
    assert top.returncode == 0
    for cmd in ("sample", "classify", "embed", "reconstruct", "plugins", "validate", "shards", "export"):
        assert cmd in top.stdout
    assert "quick start" in top.stdout
    sub = _run("classify", "--help")
    assert sub.returncode == 0 and "examples:" in sub.stdout and "--bank-size" in sub.stdout
    assert "lzn classify model/ images/" in sub.stdout


@pytest.mark.parametrize("cmd", ["sample", "embed", "reconstruct"])
def test_inference_help_has_examples(capsys, cmd: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([cmd, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"lzn {cmd} model/" in out and "MODEL" in out


def test_plugins_validate_shards_export(capsys, workdir: Path) -> None:
    rc, out, _ = run_lzn(capsys, "plugins")
    assert rc == 0 and "image" in out and "label" in out and "ok" in out
    rc, out, _ = run_lzn(capsys, "validate", "digits_joint.yaml", "train.iterations=3", "--skip-data")
    assert rc == 0 and "digits_joint" in out
    rc, _, err = run_lzn(capsys, "validate", "digits_joint.yaml", f"data.train={workdir}/none-*.tar")
    assert rc == 1 and "data.train: no shards match" in err
    rc, _, err = run_lzn(capsys, "validate", "digits_joint.yaml", "train.iterations=-1")
    assert rc == 1 and "train.iterations" in err
    folder = workdir / "folder"
    for i, cls in enumerate(["a", "a", "b"]):
        _png(images(1, seed=i)[0], folder / cls / f"{i}.png")
    rc, out, _ = run_lzn(capsys, "shards", "folder", str(folder), str(workdir / "shards"), "--no-progress")
    assert rc == 0 and (workdir / "shards" / "train-000000.tar").is_file()
    rc, out, _ = run_lzn(capsys, "export", str(workdir / "run"), str(workdir / "exported"))
    assert rc == 0 and (workdir / "exported" / "model.safetensors").is_file()
    rc, _, err = run_lzn(capsys, "export", str(workdir / "nowhere"), str(workdir / "x"))
    assert rc == 1 and err.count("\n") <= 2 and "Traceback" not in err


# ----------------------------------------------------------------------------- inference commands


def test_classify_table_and_json(capsys, workdir: Path) -> None:
    rc, out, _ = run_lzn(capsys, "classify", str(workdir / "model"), str(workdir / "imgs"))
    lines = out.strip().splitlines()
    assert rc == 0 and lines[0].split() == ["path", "label", "confidence"] and len(lines) == 6
    assert any("sub" in line for line in lines)  # directories are searched recursively
    rc, out, _ = run_lzn(capsys, "classify", str(workdir / "run"), str(workdir / "imgs" / "0.png"), "--json")
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert rc == 0 and len(rows) == 1 and set(rows[0]) == {"path", "label", "confidence"}
    assert 0 <= rows[0]["label"] < 10 and 0.0 <= rows[0]["confidence"] <= 1.0 + 1e-6
    # the same image gives the same label alone (zoned with the bank) as in the table
    table = {Path(line.split()[0]).name: int(line.split()[1]) for line in lines[1:]}
    assert table["0.png"] == rows[0]["label"]
    # --independent: each image zoned against the bank alone, whatever the other inputs (by construction)
    for flag in ("--independent", "--no-independent"):
        rc, out, _ = run_lzn(
            capsys, "classify", str(workdir / "model"), str(workdir / "imgs"), "--draws", "0", flag
        )
        assert rc == 0 and len(out.strip().splitlines()) == 6
    got = {Path(ln.split()[0]).name: int(ln.split()[1]) for ln in out.strip().splitlines()[1:]}
    rc, one, _ = run_lzn(
        capsys, "classify", str(workdir / "model"), str(workdir / "imgs" / "0.png"), "--independent"
    )
    rc2, batch, _ = run_lzn(
        capsys, "classify", str(workdir / "model"), str(workdir / "imgs"), "--independent"
    )
    alone = {Path(ln.split()[0]).name: int(ln.split()[1]) for ln in batch.strip().splitlines()[1:]}
    assert (
        rc == rc2 == 0
        and int(one.strip().splitlines()[1].split()[1]) == alone["0.png"]
        and set(got) == set(alone)
    )
    rc, out, _ = run_lzn(
        capsys,
        "classify",
        str(workdir / "model"),
        str(workdir / "imgs"),
        "--json",
        "--bank-size",
        "0",
        "--batch-size",
        "2",
        "--alpha",
        "1",
        "--steps",
        "10",
    )
    assert rc == 0 and len(out.strip().splitlines()) == 5


def test_embed_writes_safetensors(capsys, workdir: Path) -> None:
    from safetensors import safe_open

    for what, dim in (("latent", 8), ("anchor", 8), ("backbone", None)):
        out = workdir / f"feats_{what}.safetensors"
        rc, text, _ = run_lzn(
            capsys, "embed", str(workdir / "model"), str(workdir / "imgs"), "-o", str(out), "--what", what
        )
        assert rc == 0 and f"wrote {what} features" in text
        with safe_open(str(out), "pt") as f:
            feats, meta = f.get_tensor("features"), f.metadata()
        assert feats.shape[0] == 5 and (dim is None or feats.shape[1] == dim)
        assert len(json.loads(meta["paths"])) == 5 and meta["what"] == what


def test_sample_grids(capsys, workdir: Path) -> None:
    from PIL import Image

    rc, out, _ = run_lzn(
        capsys,
        "sample",
        str(workdir / "model"),
        "--label",
        "3",
        "-n",
        "4",
        "-o",
        str(workdir / "g.png"),
        "--steps",
        "2",
    )
    assert rc == 0 and "wrote 4 sample(s)" in out
    w, h = Image.open(workdir / "g.png").size
    assert w > 3 * h and h >= 64  # one row of 4 upscaled 8x8 tiles (a row per class)
    rc, out, _ = run_lzn(
        capsys,
        "sample",
        str(workdir / "model"),
        "--label",
        "0",
        "1",
        "-n",
        "3",
        "-o",
        str(workdir / "rows.png"),
        "--steps",
        "2",
    )
    w, h = Image.open(workdir / "rows.png").size
    assert rc == 0 and "wrote 6 sample(s)" in out and w > h  # one row of 3 per class
    rc, out, _ = run_lzn(
        capsys, "sample", str(workdir / "model"), "-n", "2", "-o", str(workdir / "u.png"), "--steps", "2"
    )
    assert rc == 0 and (workdir / "u.png").is_file()
    a = (workdir / "u.png").read_bytes()
    run_lzn(capsys, "sample", str(workdir / "model"), "-n", "2", "-o", str(workdir / "u.png"), "--steps", "2")
    assert (workdir / "u.png").read_bytes() == a  # seeded (--seed 0 by default)
    rc, _, err = run_lzn(capsys, "sample", str(workdir / "model"), "-n", "0")
    assert rc == 1 and "-n must be >= 1" in err
    rc, _, err = run_lzn(capsys, "sample", str(workdir / "model"), "--label", "42", "-n", "1")
    assert rc == 1 and "class indices must be in [0, 9]" in err


def test_reconstruct(capsys, workdir: Path, monkeypatch) -> None:
    from PIL import Image

    monkeypatch.chdir(workdir)
    rc, out, _ = run_lzn(capsys, "reconstruct", "model", "imgs/0.png", "--steps", "2")
    assert rc == 0 and (workdir / "0_recon.png").is_file()
    rc, out, _ = run_lzn(
        capsys,
        "reconstruct",
        "model",
        "imgs",
        "--side-by-side",
        "--mode",
        "invert",
        "--steps",
        "2",
        "-o",
        "pairs.png",
    )
    w, h = Image.open(workdir / "pairs.png").size
    assert rc == 0 and "wrote 10" in out and h > 2 * w  # 5 rows of (original, reconstruction)


# ----------------------------------------------------------------------------- errors: one line, --debug traceback


def test_bad_paths_and_models_give_one_line_errors(capsys, workdir: Path) -> None:
    cases = [
        (["classify", str(workdir / "missing"), str(workdir / "imgs")], "does not exist"),
        (["classify", str(workdir / "model"), str(workdir / "nope.png")], "input"),
        (["classify", str(workdir / "imgs"), str(workdir / "imgs")], "model.safetensors is missing"),
        (
            ["embed", str(workdir / "model"), str(workdir / "folder" / "a" / "none"), "-o", "x.safetensors"],
            "does not exist",
        ),
    ]
    empty = workdir / "empty"
    empty.mkdir(exist_ok=True)
    cases.append((["classify", str(workdir / "model"), str(empty)], "no files in directory"))
    bad = workdir / "bad.png"
    bad.write_bytes(b"not an image")
    cases.append((["classify", str(workdir / "model"), str(bad)], "bad.png: not a valid PNG/JPEG image"))
    big = _png(torch.zeros(1, 16, 16), workdir / "big16.png")  # decodes, but the model's images are 8x8
    cases.append(
        (
            ["classify", str(workdir / "model"), str(big)],
            "big16.png: image: 16x16 image, the config expects 8x8",
        )
    )
    broken = workdir / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "model.safetensors").write_bytes(b"garbage")
    (broken / "recipe.yaml").write_text((workdir / "model" / "recipe.yaml").read_text())
    cases.append((["sample", str(broken)], "not a readable safetensors file"))
    run_only = workdir / "run_only"
    run_only.mkdir(exist_ok=True)
    (run_only / "recipe.yaml").write_text("name: x\n")
    cases.append((["sample", str(run_only)], "lzn export RUN_DIR OUT"))
    for argv, message in cases:
        rc, out, err = run_lzn(capsys, *argv)
        assert rc == 1, argv
        assert message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_debug_shows_the_traceback(workdir: Path) -> None:
    missing = str(workdir / "no-model")
    plain = _run("classify", missing, str(workdir / "imgs"))
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1
    assert plain.stderr.startswith(f"lzn classify: error: model {missing!r} does not exist")
    debug = _run("classify", missing, str(workdir / "imgs"), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_has_the_listed_help(name: str) -> None:
    module = importlib.import_module(f"lzn_core.cli.{name.replace('-', '_')}")
    assert module.HELP == COMMANDS[name]
    assert callable(module.add_arguments) and callable(module.run)
