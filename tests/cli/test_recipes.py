"""``lzn recipes``: list the shipped recipes and copy one with its DeepSpeed config."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from lzn_main import run_lzn
from paths import ROOT


def _shipped() -> list[Path]:
    return sorted((ROOT / "recipes").glob("*.yaml"))


def test_lzn_recipes_lists_every_recipe_with_its_header_line_and_the_script(capsys) -> None:
    rc, out, _ = run_lzn(capsys, "recipes")
    assert rc == 0
    lines = out.splitlines()
    for path in _shipped():
        first = next(line for line in path.read_text().splitlines() if line.strip()).lstrip("# ")
        first = first.removeprefix(f"{path.stem}:").strip()
        (row,) = [line for line in lines if line.split()[:1] == [path.name]]
        assert row.split(None, 2)[1:] == ["recipe", first]
    assert any(line.split()[:2] == ["train.py", "script"] for line in lines)
    assert any(line.split()[:2] == ["ds/cpu.json", "deepspeed"] for line in lines)
    rc, again, _ = run_lzn(capsys, "recipes", "ls")
    assert again == out


def test_lzn_recipes_cp_copies_a_recipe_with_its_deepspeed_config(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from lzn_core.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    rc, out, err = run_lzn(capsys, "recipes", "cp", "digits_joint", "mine")
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

    rc, _, err = run_lzn(capsys, "recipes", "cp", "digits_joint.yaml", "mine")  # its JSON was edited
    assert rc == 1 and "cpu.json exists; pass --force" in err
    assert run_lzn(capsys, "recipes", "cp", "digits_joint.yaml", "mine", "--force")[0] == 0
    assert json.loads(ds.read_text()) == json.loads((ROOT / "recipes" / "ds" / "cpu.json").read_text())
    rc, _, err = run_lzn(capsys, "recipes", "cp", "mine/digits_joint.yaml", "mine")
    assert rc == 1 and "is the file itself" in err

    (tmp_path / "local.yaml").write_text(yaml.safe_dump({"name": "local", "deepspeed": "ds/cpu.json"}))
    assert (
        run_lzn(capsys, "recipes", "cp", "local", "other/renamed.yaml")[0] == 0
    )  # cwd first, to a file path
    assert (tmp_path / "other" / "renamed.yaml").is_file() and (
        tmp_path / "other" / "ds" / "cpu.json"
    ).is_file()


def test_lzn_recipes_cp_the_script_and_a_config_and_unknown_names(tmp_path: Path, capsys) -> None:
    assert run_lzn(capsys, "recipes", "cp", "train.py", str(tmp_path))[0] == 0
    assert (tmp_path / "train.py").read_bytes() == (ROOT / "recipes" / "train.py").read_bytes()
    assert run_lzn(capsys, "recipes", "cp", "ds/zero1.json", str(tmp_path / "z.json"))[0] == 0
    assert json.loads((tmp_path / "z.json").read_text())["zero_optimization"]["stage"] == 1
    rc, _, err = run_lzn(capsys, "recipes", "cp", "digits_jiont", str(tmp_path))
    assert rc == 1 and "did you mean" in err and "digits_joint.yaml" in err
    rc, _, err = run_lzn(capsys, "recipes", "cp", "ds/nope.json", str(tmp_path))
    assert rc == 1 and "shipped: ds/cpu.json, ds/zero1.json" in err
