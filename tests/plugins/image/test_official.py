"""Importing the authors' checkpoints (plugins/lzn_image/official.py) against their own outputs.

tests/support/data/official/ holds tiny checkpoints written in the layout of the official trainers and
the official networks' outputs for fixed inputs (EMA weights); its README says how they were
made. After the import, this framework's encoder anchors, decoder velocity and label flow must
give the same numbers (float32).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from lzn_image.official import (
    OfficialCheckpointError,
    import_official,
    official_model,
    read_checkpoint,
)
from paths import SUPPORT
from safetensors.torch import load_file

import lzn_core
from lzn_core import zoning
from lzn_core.errors import LZNWarning

DATA = SUPPORT / "data" / "official"
TOL = 1e-5


def _outputs(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(DATA / f"{name}.outputs.safetensors"))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.detach() - b).abs().max())


def _imported(name: str, case: int, out: Path, **kw) -> lzn_core.LZNModel:
    """import_official -> out/ -> lzn_core.load (the exported format, read back)."""
    if kw.get("bank") is None:
        with pytest.warns(LZNWarning, match="without an image anchor bank"):
            import_official(DATA / f"{name}.pt", case, out, **kw)
    else:
        import_official(DATA / f"{name}.pt", case, out, **kw)
    return lzn_core.load(out)


def _check_image(model: lzn_core.LZNModel, ref: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        anchors = model.encode("image", ref["x"])
        velocity = model.decoders["image"].velocity(ref["xt"], ref["t"], ref["z"], ref.get("onehot"))
    assert _max_diff(anchors, ref["anchors"]) < TOL
    assert _max_diff(velocity, ref["velocity"]) < TOL
    assert float(ref["velocity"].abs().max()) > 0.1  # not a trivially zero network


# ------------------------------------------------------------------ equal to the official networks
def test_case1_cifar_anchors_and_velocity_equal_official(tmp_path: Path) -> None:
    model = _imported("case1", 1, tmp_path / "m")
    cfg = model.configs["image"]
    assert (cfg.nf, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions) == (4, (1, 2), 1, (4,))
    assert (cfg.resolution, cfg.channels, cfg.time_embedding, cfg.progressive) == (8, 3, "positional", False)
    assert model.latent_dim == 8 and model.names == ("image",)
    _check_image(model, _outputs("case1"))


def test_positional_time_embedding_equals_official_at_released_width() -> None:
    from lzn_image.unet import timestep_embedding

    ref = _outputs("case1")
    assert _max_diff(timestep_embedding(ref["temb_sigma"], 128), ref["temb_128"]) < 1e-6


def test_case1_256_fir_progressive_fourier_equal_official(tmp_path: Path) -> None:
    """The 256² models' options: FIR, progressive input/output skips, Fourier log σ, output / σ."""
    model = _imported("case1_256", 1, tmp_path / "m")
    cfg = model.configs["image"]
    assert (cfg.fir, cfg.progressive, cfg.scale_by_sigma, cfg.time_embedding) == (True, True, True, "fourier")
    assert cfg.latent_resolutions == (8, 4) and cfg.resolution == 16
    _check_image(model, _outputs("case1_256"))


def test_case3_velocity_with_onehot_and_label_flow_equal_official(tmp_path: Path) -> None:
    from lzn_core.data.digits import write_digits

    write_digits(tmp_path / "digits", test_size=50, progress=False)
    model = _imported("case3", 3, tmp_path / "m", bank=str(tmp_path / "digits" / "train-*.tar"), bank_size=32)
    ref = _outputs("case3")
    assert model.decoders["image"].condition_dim == 10 and model.condition_source("image") == "label"
    _check_image(model, ref)
    anchors = model.bank("label")
    assert torch.equal(anchors, ref["label_anchors"])
    final = zoning.assign(ref["label_latents"], anchors, steps=100).final  # their 100-step Euler flow
    assert _max_diff(final, ref["label_final"]) < TOL
    labels = model.decoders["label"].sample(ref["label_latents"])
    assert torch.equal(labels, ref["label_pred"])
    assert model.bank("image").shape == (32, 8)  # filled from the shards by the exported model's encoder
    assert lzn_core.compose("image -> label", model=model)(ref["x"]).labels.shape == (4,)


@pytest.mark.slow
def test_case2_resnet50_anchors_and_features_equal_official(tmp_path: Path) -> None:
    """Their ResNet-50-GN (full size): the checkpoint is rebuilt from the key list (see README)."""
    keys = json.loads((DATA / "case2_keys.json").read_text())
    raw = OrderedDict((k, torch.zeros(()).expand(shape)) for k, shape in keys)  # stride 0: no bytes
    ema = [_resnet_fill(i, k.removeprefix("model.module."), tuple(s)) for i, (k, s) in enumerate(keys)]
    ckpt = {
        "encoder": raw,
        "optimizer": {"state": {}, "param_groups": []},
        "lr_scheduler": {"base_lrs": [8e-4], "last_epoch": 5_000_000},
        "epoch": 32051,
        "iteration": 5_000_000,
        "encoder_ema": {"decay": 0.9999, "num_updates": 5_000_000, "shadow_params": ema},
        "grad_scalar": {},
    }
    torch.save(ckpt, tmp_path / "case2.pt")
    del ckpt, ema
    model = official_model(tmp_path / "case2.pt", 2, image_config={"resolution": 32})
    cfg = model.configs["image"]
    assert (cfg.encoder, cfg.proj_hidden, cfg.decoder, model.latent_dim) == ("resnet50", 2048, False, 256)
    ref = _outputs("case2")
    with torch.no_grad():
        assert _max_diff(model.encode("image", ref["x"]), ref["anchors"]) < TOL
        assert _max_diff(model.encoders["image"].features(ref["x"]), ref["features"]) < TOL


def _resnet_fill(index: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The deterministic weights the test data's case-2 outputs were computed with (README)."""
    n = math.prod(shape)
    s = torch.sin(torch.arange(n, dtype=torch.float64) * 0.7 + 1.3 * index)
    if len(shape) >= 2:
        s = s * math.sqrt(3.0 / (n // shape[0]))
    elif name.endswith("weight"):
        s = 1.0 + 0.2 * s
    else:
        s = 0.1 * s
    return s.to(torch.float32).reshape(shape)


def test_ema_weights_by_default_raw_on_request() -> None:
    ckpt = read_checkpoint(DATA / "case1.pt")
    key = "model.module.all_modules.0.weight"  # conv_in, the encoder's first module
    trainable = [k for k in ckpt["encoder"] if not k.endswith("sigmas")]
    shadow = ckpt["encoder_ema"]["shadow_params"][trainable.index(key)]
    ema = official_model(DATA / "case1.pt", 1).state_dict()["encoders.image.down.conv_in.weight"]
    raw = official_model(DATA / "case1.pt", 1, ema=False).state_dict()["encoders.image.down.conv_in.weight"]
    assert torch.equal(ema, shadow) and torch.equal(raw, ckpt["encoder"][key])
    assert not torch.equal(ema, raw)


def test_the_recipe_is_the_shipped_one_with_the_sizes_of_the_tensors() -> None:
    """Hyperparameters come from recipes/*.yaml, the sizes from the checkpoint; nothing is restated."""
    from lzn_core.recipe import load_recipe

    for name, case, base in (
        ("case1", 1, "cifar_gen"),
        ("case1_256", 1, "afhq_gen"),
        ("case3", 3, "cifar_joint"),
    ):
        got, shipped = official_model(DATA / f"{name}.pt", case).recipe, load_recipe(f"{base}.yaml")
        assert got.name == f"official_case{case}" and got.latent.dim == 8 != shipped.latent.dim
        assert got.train == shipped.train and got.eval == shipped.eval and got.tasks == shipped.tasks
        assert got.latent.model_dump(exclude={"dim"}) == shipped.latent.model_dump(exclude={"dim"})
        image, theirs = got.modalities["image"].config, shipped.modalities["image"].config
        assert (image.nf, image.sample_method, image.flip, image.dropout, image.fir) == (
            4,
            theirs.sample_method,
            theirs.flip,
            theirs.dropout,  # not in the tensors: the file's (the cifar preset's 0.15; 0 at 256²)
            theirs.fir,
        )
    joint = official_model(DATA / "case3.pt", 3).recipe
    assert (
        joint.modalities["label"].config.num_classes == 10
        and joint.modalities["label"].config.flow_steps == 100
    )
    assert (
        official_model(DATA / "case1.pt", 1, data="x/train-*.tar", bank_size=5).recipe.latent.bank_size == 5
    )


def test_case2_keeps_only_what_the_checkpoint_has() -> None:
    """imagenet_repr's label modality (probe labels) has no tensors in a case-2 checkpoint: it is left
    out with the evaluations that read it; the rest is the shipped recipe."""
    from lzn_image.official import official_recipe

    from lzn_core.recipe import load_recipe, validate_recipe

    recipe = validate_recipe(official_recipe(2, {"proj_hidden": 64}, latent_dim=32))
    shipped = load_recipe("imagenet_repr.yaml")
    assert list(recipe.modalities) == ["image"] and "label" in shipped.modalities
    assert recipe.eval.knn is None and recipe.eval.probe is None and shipped.eval.knn is not None
    assert recipe.tasks == shipped.tasks and recipe.train == shipped.train
    image = recipe.modalities["image"].config
    assert (image.encoder, image.proj_hidden, image.eval_resize, recipe.latent.dim) == (
        "resnet50",
        64,
        256,
        32,
    )


# ---------------------------------------------------------------------------------- error paths
def _edited(tmp_path: Path, name: str, edit) -> Path:
    ckpt = torch.load(DATA / f"{name}.pt", weights_only=True)
    edit(ckpt)
    path = tmp_path / f"edited_{name}.pt"
    torch.save(ckpt, path)
    return path


def test_a_tensor_that_maps_nowhere_is_listed(tmp_path: Path) -> None:
    def extra_module(ckpt):  # a module the framework's decoder does not have (+ its EMA)
        ckpt["decoder"]["model.module.all_modules.99.weight"] = torch.zeros(3, 5)
        ckpt["decoder_ema"]["shadow_params"].append(torch.zeros(3, 5))

    with pytest.raises(OfficialCheckpointError, match=r"1 unmapped") as err:
        official_model(_edited(tmp_path, "case1", extra_module), 1)
    assert err.value.unmapped == ["decoder.all_modules.99.weight (3, 5)"]
    assert not err.value.misshaped and not err.value.missing
    assert "decoder.all_modules.99.weight (3, 5)" in str(err.value)


def test_a_misshaped_tensor_is_listed(tmp_path: Path) -> None:
    key = "model.module.latent_transformations.0.2.bias"  # (q,) of the first latent block

    def wrong_shape(ckpt):
        i = [k for k in ckpt["encoder"]].index(key)
        ckpt["encoder"][key] = torch.zeros(9)
        ckpt["encoder_ema"]["shadow_params"][i] = torch.zeros(9)

    with pytest.raises(OfficialCheckpointError, match="1 mis-shaped") as err:
        official_model(_edited(tmp_path, "case1", wrong_shape), 1)
    assert err.value.misshaped == [
        "encoder.latent_transformations.0.2.bias (9,) -> encoders.image.latent_blocks.0.mlp.2.bias (8,)"
    ]
    assert not err.value.unmapped


def test_a_missing_tensor_and_a_bad_ema_are_reported(tmp_path: Path) -> None:
    def drop_last(ckpt):  # the decoder's output conv bias (its last tensor, also last in the EMA)
        key = next(reversed(ckpt["decoder"]))
        del ckpt["decoder"][key]
        ckpt["decoder_ema"]["shadow_params"].pop()

    with pytest.raises(OfficialCheckpointError, match="1 left empty") as err:
        official_model(_edited(tmp_path, "case1", drop_last), 1)
    assert err.value.missing == ["decoders.image.up.conv_out.bias (3,)"]

    def short_ema(ckpt):
        ckpt["encoder_ema"]["shadow_params"].pop()

    with pytest.raises(
        OfficialCheckpointError, match=r"shadow_params for the \d+ trainable tensors.*ema=False"
    ):
        official_model(_edited(tmp_path, "case1", short_ema), 1)
    official_model(_edited(tmp_path, "case1", short_ema), 1, ema=False)  # the raw weights still fit


class _OpensAFile:
    """Unpickling this would run open(path, "w"): what weights_only must refuse."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_with_a_disallowed_global_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "written_by_the_pickle"
    ckpt = torch.load(DATA / "case1.pt", weights_only=True)
    ckpt["payload"] = _OpensAFile(marker)
    torch.save(ckpt, tmp_path / "evil.pt")
    # the global is named as torch's unpickler reports it: _io.open up to torch 2.11, io.open later
    with pytest.raises(OfficialCheckpointError, match=r"refused to unpickle: it references _?io\.open"):
        import_official(tmp_path / "evil.pt", 1, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.save({"encoder": {}, "config": argparse.Namespace(lr=1.0)}, tmp_path / "ns.pt")
    with pytest.raises(OfficialCheckpointError, match="argparse.Namespace"):
        read_checkpoint(tmp_path / "ns.pt")


def test_wrong_case_and_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(OfficialCheckpointError, match=r"label anchors: a case-3 checkpoint \(pass case=3\)"):
        official_model(DATA / "case3.pt", 1)
    with pytest.raises(OfficialCheckpointError, match=r"case 3 needs checkpoint\['label_anchor'\]"):
        official_model(DATA / "case1.pt", 3)
    with pytest.raises(OfficialCheckpointError, match="not the case-2 ResNet"):
        official_model(DATA / "case1.pt", 2)
    with pytest.raises(OfficialCheckpointError, match="case must be one of 1, 2, 3"):
        official_model(DATA / "case1.pt", 4)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(OfficialCheckpointError, match="not a checkpoint of the official trainers"):
        read_checkpoint(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(OfficialCheckpointError, match="not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pt")


def test_cli_command(tmp_path: Path, capsys) -> None:
    from lzn_image import commands as command

    from lzn_core.cli import main

    with pytest.warns(LZNWarning, match="without an image anchor bank"):
        assert main(["import-official", str(DATA / "case1.pt"), str(tmp_path / "m"), "--case", "1"]) == 0
    assert "case 1, EMA weights" in capsys.readouterr().out
    assert lzn_core.load(tmp_path / "m").recipe.name == "official_case1"
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([str(DATA / "case1.pt"), str(tmp_path / "m"), "--case", "4"])
