"""Portable weights: LZNModel -> safetensors + recipe.yaml -> lzn_core.load (CPU, no DeepSpeed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_digits_joint

from lzn_core.errors import LZNError, RecipeError


@pytest.fixture(scope="module")
def model():
    return tiny_digits_joint()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    from lzn_core.io.files import write_model

    return write_model(model, tmp_path_factory.mktemp("export") / "m")


def _outputs(m) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, noise = torch.rand((6, 1, 8, 8), generator=g) * 2 - 1, torch.randn((6, 8), generator=g)
    with torch.no_grad():
        a = m.encode("image", x)
        z = m.latents(a, noise=noise)
        labels = m.decoders["label"].sample(z, steps=10)
        img = m.decoders["image"].sample(
            z[:2], m.condition("label", labels[:2]), steps=2, noise=torch.zeros(2, 1, 8, 8)
        )
    return [a, z, labels, img, m.bank("image"), m.bank("label")]


def test_round_trip_same_outputs(model, exported: Path) -> None:
    import lzn_core

    assert {p.name for p in exported.iterdir()} == {"model.safetensors", "recipe.yaml", "info.json"}
    loaded = lzn_core.load(exported)
    assert isinstance(loaded, lzn_core.LZNModel) and not loaded.training
    assert loaded.names == model.names and loaded.latent_dim == 8
    assert loaded.recipe.model_dump(mode="json") == model.recipe.model_dump(mode="json")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for a, b in zip(_outputs(model), _outputs(loaded), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_load_errors(exported: Path, tmp_path: Path) -> None:
    import shutil

    from lzn_core.io import load

    with pytest.raises(FileNotFoundError, match="does not exist; give a run directory"):
        load(tmp_path / "nowhere")
    for missing in ("model.safetensors", "recipe.yaml"):
        d = tmp_path / f"no-{missing}"
        shutil.copytree(exported, d)
        (d / missing).unlink()
        with pytest.raises(
            FileNotFoundError, match=f"{missing} is missing .*; export a run with `lzn export"
        ):
            load(d)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(exported, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LZNError, match="is not a readable safetensors file"):
        load(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle is never unpickled
    with pytest.raises(LZNError, match="is not a readable safetensors file"):
        load(corrupt)
    bad_yaml = tmp_path / "bad-yaml"
    shutil.copytree(exported, bad_yaml)
    (bad_yaml / "recipe.yaml").write_text("latent: [unclosed\n")
    with pytest.raises(LZNError, match="is not valid YAML"):
        load(bad_yaml)
    (bad_yaml / "recipe.yaml").write_text("- a list\n")
    with pytest.raises(LZNError, match="must hold a recipe mapping, got list"):
        load(bad_yaml)


def test_load_rejects_weights_of_another_recipe(exported: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    from lzn_core.io import load

    other = tmp_path / "other"
    shutil.copytree(exported, other)
    recipe = yaml.safe_load((other / "recipe.yaml").read_text())
    recipe["latent"]["dim"] = 16
    (other / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match=r"weights do not match the recipe's model:\n  shape mismatch"):
        load(other)


def test_a_missing_plugin_names_the_distribution_that_exported_the_model(
    exported: Path, tmp_path: Path
) -> None:
    """A model whose modality's plugin is not installed: the error names the distribution and
    version from info.json (what to pip install), not only the modalities that are available."""
    import json
    import shutil

    import yaml

    from lzn_core.errors import UnknownModalityError
    from lzn_core.io import load

    other = tmp_path / "points"
    shutil.copytree(exported, other)
    recipe = yaml.safe_load((other / "recipe.yaml").read_text())
    recipe["modalities"]["label"]["plugin"] = "points"
    (other / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    info = json.loads((other / "info.json").read_text())
    info["modalities"]["label"].update(plugin="points", distribution="lzn-points", version="0.3.1")
    (other / "info.json").write_text(json.dumps(info))
    with pytest.raises(UnknownModalityError) as err:
        load(other)
    message = str(err.value)
    assert "modality 'label' needs plugin 'points', which is not installed here" in message
    assert (
        "exported with lzn-points 0.3.1 (info.json)" in message
        and "pip install 'lzn-points==0.3.1'" in message
    )
    assert "available: " in message and "image" in message.split("available: ")[1]
    (other / "info.json").unlink()  # an export older than info.json: says so instead
    with pytest.raises(UnknownModalityError, match="info.json does not say which distribution provides it"):
        load(other)


def test_cli_export(exported: Path, tmp_path: Path, capsys) -> None:
    from lzn_core.cli import main

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    for name in ("model.safetensors", "recipe.yaml"):
        (run / "final" / name).write_bytes((exported / name).read_bytes())
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    assert "exported" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        exported / "model.safetensors"
    ).read_bytes()
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 1
    assert "has no final/ and no recipe.yaml" in capsys.readouterr().err
