"""The recipe schema: shipped recipes validate; every error path reports a precise, complete message."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

import lzn_core.recipe.problems as checks
from lzn_core.cli import main as lzn_main
from lzn_core.errors import PluginLoadError, RecipeError, UnknownModalityError
from lzn_core.recipe import (
    RECIPES_DIR,
    AlignTask,
    GenerateTask,
    Recipe,
    load_recipe,
    resolve_recipe_path,
    validate_recipe,
)

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))


_SHIPPED_PARAMS = [pytest.param(p, id=p.stem) for p in SHIPPED]


# ------------------------------------------------------------------ fake plugins (error paths)


class FakeImageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(8, gt=0)
    nf: int = 4
    mode: Literal["rgb", "gray"] = "gray"

    @model_validator(mode="after")
    def _even(self) -> FakeImageConfig:
        if self.nf % 2:
            raise ValueError(f"nf must be even, got {self.nf}")
        return self


class FakeLabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_classes: int = Field(10, ge=2)


class _Spec:
    def __init__(
        self, name: str, config: type[BaseModel], *, condition_dim=None, accepts_condition=False
    ) -> None:
        self.name, self.config = name, config
        self.condition_dim, self.accepts_condition = condition_dim, accepts_condition


_FAKES = {
    "image": _Spec("image", FakeImageConfig, accepts_condition=True),
    "label": _Spec("label", FakeLabelConfig, condition_dim=lambda c: c.num_classes),
}


def _fake_get_modality(name: str) -> _Spec:
    if name == "broken":
        raise PluginLoadError(
            "plugin 'broken' (lzn-broken 0.1) failed: ImportError: no module named torchaudio"
        )
    if name not in _FAKES:  # the message format of lzn_core.plugins
        raise UnknownModalityError(f"unknown modality {name!r}; available: {', '.join(sorted(_FAKES))}")
    return _FAKES[name]


@pytest.fixture
def fake_plugins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fake image/label plugins; the cwd is a fresh tmp dir."""
    monkeypatch.setattr(checks, "get_modality", _fake_get_modality)
    monkeypatch.chdir(tmp_path)
    return tmp_path


GOOD = """\
seed: 1
latent: {dim: 16, solver: euler, steps: 5}
modalities:
  image: {plugin: image, config: {width: 4}}
  label: {plugin: label, config: {num_classes: 10}}
tasks:
  - {kind: generate, target: image, condition: label}
  - {kind: align, source: image, target: label, loss: prob, class_weights: true, steps: 30}
data: {train: "data/x-*.tar"}
train:
  batch_size: 32
  iterations: 100
  lr: {default: 1.0e-3, image.decoder: 2.0e-3, label: 1.0e-4}
  freeze: {image.decoder: 50}
"""


def _write(tmp: Path, text: str, name: str = "toy.yaml") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def _problems(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("recipe ") and f"has {len(lines) - 1} problem" in lines[0], lines
    return [line.removeprefix("  - ") for line in lines[1:]]


# ------------------------------------------------------------------ shipped recipes (real plugins)


@pytest.mark.parametrize("path", _SHIPPED_PARAMS)
def test_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.output_dir == f"runs/{path.stem}"
    assert isinstance(recipe.deepspeed, dict) and "zero_optimization" in recipe.deepspeed
    lines = path.read_text().splitlines()
    head = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]  # the header comment
    assert any("Launch:" in line and f"--recipe {path.name}" in line for line in head), (
        "header needs a launch line"
    )
    assert any("Data:" in line for line in head), "header needs the data prerequisites"
    header = " ".join(" ".join(line.lstrip("#").split()) for line in head)
    assert recipe.data.make, "data.make says which command writes the shards"
    for command in recipe.data.make.split(";"):  # the same commands as the header's Data: lines
        assert " ".join(command.split()) in header, command
    again = Recipe.model_validate(recipe.model_dump(mode="json"))
    assert again == recipe


def test_missing_shards_of_a_shipped_recipe_say_which_command_makes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """lzn validate, and the model's bank filling (export, end of training), name data.make."""
    from lzn_core.cli import main
    from lzn_core.errors import MissingShardsError
    from lzn_core.model import LZNModel

    monkeypatch.chdir(tmp_path)  # no data/ here
    assert main(["validate", "cifar_gen.yaml"]) == 1
    err = capsys.readouterr().err
    assert (
        "data.train: no shards match 'data/cifar10/train-*.tar'; directory 'data/cifar10' does not exist; "
        "make them with: lzn shards cifar10 PATH/cifar-10-python.tar.gz data/cifar10"
    ) in err
    recipe = load_recipe("digits_joint.yaml", ["modalities.image.config.preset=tiny", "latent.dim=4"])
    with pytest.raises(MissingShardsError, match=r"make them with: lzn shards digits data/digits$"):
        LZNModel(recipe).fill_banks()
    with pytest.raises(MissingShardsError) as err_other:  # another pattern: no hint that would not fit
        LZNModel(recipe).fill_banks("elsewhere/train-*.tar")
    assert "make them with" not in str(err_other.value)


def test_shipped_recipes_exist() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"digits_joint", "cifar_gen", "cifar_joint", "imagenet_repr"} <= names


@pytest.mark.parametrize("name", ["cpu", "zero1"])
def test_deepspeed_configs_are_fp32_torch_adam(name: str) -> None:
    config = json.loads((RECIPES_DIR / "ds" / f"{name}.json").read_text())
    assert config["optimizer"]["params"]["torch_adam"] is True
    assert config["optimizer"]["params"]["adam_w_mode"] is False
    assert not config["fp16"]["enabled"] and not config["bf16"]["enabled"]


def test_rf_baseline_recipe_is_digits_joint_without_the_latent() -> None:
    from lzn_core.recipe import load_recipe

    joint, rf = load_recipe("digits_joint.yaml"), load_recipe("digits_rf_baseline.yaml")
    assert rf.modalities["image"].config == joint.modalities["image"].config.model_copy(
        update={"use_latent": False}
    )
    assert [t.kind for t in rf.tasks] == ["generate"] and rf.tasks[0] == joint.tasks[0]
    same = ("latent", "data", "train", "eval", "deepspeed", "seed")
    assert {k: getattr(rf, k) for k in same} == {k: getattr(joint, k) for k in same}


# ------------------------------------------------------------------ valid recipes


def test_defaults_name_and_plugin_config_instances(fake_plugins: Path) -> None:
    recipe = load_recipe(_write(fake_plugins, GOOD))
    assert recipe.name == "toy" and recipe.output_dir == "runs/toy"
    assert isinstance(recipe.modalities["image"].config, FakeImageConfig)
    assert recipe.modalities["image"].config.width == 4
    assert isinstance(recipe.tasks[0], GenerateTask) and isinstance(recipe.tasks[1], AlignTask)
    assert recipe.tasks[1].cutoff == 0.2 and recipe.tasks[1].alpha == 1.0
    assert recipe.deepspeed is None and recipe.eval.alpha == 0.0
    assert recipe.train.lr_for("image", "decoder") == 2e-3
    assert recipe.train.lr_for("image", "encoder") == 1e-3
    assert recipe.train.lr_for("label", "encoder") == 1e-4
    assert recipe.summary() == "modalities: image, label; tasks: 2; iterations: 100"


def test_round_trip_through_json(fake_plugins: Path) -> None:
    recipe = load_recipe(_write(fake_plugins, GOOD))
    dumped = recipe.model_dump(mode="json")
    json.dumps(dumped)  # plain JSON
    assert dumped["modalities"]["image"]["config"]["width"] == 4
    again = Recipe.model_validate(dumped)
    assert again == recipe and again.model_dump(mode="json") == dumped


def test_bare_name_resolves_in_cwd_then_recipes(fake_plugins: Path) -> None:
    _write(fake_plugins, GOOD)
    assert resolve_recipe_path("toy") == fake_plugins / "toy.yaml"
    assert resolve_recipe_path("toy.yaml") == fake_plugins / "toy.yaml"
    assert resolve_recipe_path("digits_joint.yaml") == RECIPES_DIR / "digits_joint.yaml"
    (fake_plugins / "digits_joint.yaml").write_text(GOOD)
    assert resolve_recipe_path("digits_joint.yaml") == fake_plugins / "digits_joint.yaml"


def test_overrides(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD)
    recipe = load_recipe(
        path,
        [
            "train.batch_size=64",
            "modalities.image.config.nf=16",
            "latent.solver=dpm",
            "tasks.1.steps=10",
            "eval.alpha=0.5",
            "train.lr.image.encoder=1e-5",
            "latent.chunk=null",
            "data.eval=data/y-*.tar",
        ],
    )
    assert recipe.train.batch_size == 64
    assert recipe.modalities["image"].config.nf == 16
    assert recipe.latent.solver == "dpm" and recipe.latent.chunk is None
    assert recipe.tasks[1].steps == 10
    assert recipe.eval.alpha == 0.5
    assert recipe.train.lr_for("image", "encoder") == 1e-5
    assert recipe.data.eval == "data/y-*.tar"


def test_deepspeed_path_relative_to_recipe_or_inline(fake_plugins: Path) -> None:
    (fake_plugins / "ds").mkdir()
    (fake_plugins / "ds" / "mine.json").write_text('{"zero_optimization": {"stage": 0}}')
    sub = fake_plugins / "sub"
    sub.mkdir()
    (sub / "ds").mkdir()
    (sub / "ds" / "mine.json").write_text('{"zero_optimization": {"stage": 1}}')
    recipe = load_recipe(_write(sub, GOOD + "deepspeed: ds/mine.json\n"))
    assert recipe.deepspeed == {"zero_optimization": {"stage": 1}}  # next to the recipe, not the cwd
    recipe = load_recipe(_write(fake_plugins, GOOD + "deepspeed: {zero_optimization: {stage: 2}}\n"))
    assert recipe.deepspeed == {"zero_optimization": {"stage": 2}}


# ------------------------------------------------------------------ error paths


def test_extra_field_with_suggestion(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD.replace("width: 4", "widht: 4"))
    assert _problems(path) == ["modalities.image.config.widht: extra field; did you mean 'width'?"]
    path = _write(fake_plugins, GOOD.replace("steps: 30", "stpes: 30"))
    assert _problems(path) == ["tasks.1.stpes: extra field; did you mean 'steps'?"]
    path = _write(fake_plugins, GOOD.replace("seed: 1", "sed: 1"))
    assert _problems(path) == ["sed: extra field; did you mean 'seed'?"]


def test_bad_literal_lists_choices(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD.replace("solver: euler", "solver: eular"))
    assert _problems(path) == ["latent.solver: 'eular' is not one of 'euler', 'dpm'; did you mean 'euler'?"]
    path = _write(fake_plugins, GOOD.replace("loss: prob", "loss: mse"))
    assert _problems(path) == ["tasks.1.loss: 'mse' is not one of 'log', 'prob'"]


def test_unknown_task_kind(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD.replace("kind: generate", "kind: generat"))
    (line,) = _problems(path)
    assert line.startswith("tasks.0: unknown kind 'generat'; did you mean 'generate'?")


def test_bad_task_reference(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD.replace("source: image", "source: imag"))
    assert _problems(path) == [
        "tasks.1.source: unknown modality 'imag'; did you mean 'image'? (the recipe has: image, label)"
    ]
    path = _write(fake_plugins, GOOD.replace("condition: label", "condition: image"))
    assert _problems(path) == [
        "tasks.0.condition: a decoder cannot be conditioned on its own modality 'image'"
    ]


def test_condition_needs_a_provider_and_a_decoder_that_takes_it(fake_plugins: Path, monkeypatch) -> None:
    monkeypatch.setitem(_FAKES, "image", _Spec("image", FakeImageConfig))  # a decoder without conditioning
    (line,) = _problems(_write(fake_plugins, GOOD))
    assert (
        line
        == "tasks.0.condition: the 'image' decoder (plugin 'image') takes no conditioning vector; remove condition: label"
    )
    monkeypatch.setitem(_FAKES, "image", _Spec("image", FakeImageConfig, accepts_condition=True))
    monkeypatch.setitem(_FAKES, "label", _Spec("label", FakeLabelConfig))  # no condition vector
    (line,) = _problems(_write(fake_plugins, GOOD))
    assert (
        line
        == "tasks.0.condition: modality 'label' (plugin 'label') cannot condition a decoder: it declares no condition vector"
    )


def test_one_generate_task_per_decoder(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD.replace("tasks:\n", "tasks:\n  - {kind: generate, target: image}\n"))
    assert any("already trained by tasks.0" in p for p in _problems(path))


def test_unknown_and_broken_plugin(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD.replace("{plugin: image", "{plugin: imgae"))
    assert _problems(path) == [
        "modalities.image.plugin: unknown plugin 'imgae'; did you mean 'image'? (available: image, label)"
    ]
    path = _write(fake_plugins, GOOD.replace("{plugin: label", "{plugin: broken"))
    (line,) = _problems(path)
    assert (
        line.startswith("modalities.label.plugin: plugin 'broken' failed to load: ") and "torchaudio" in line
    )


def test_plugin_config_errors(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD.replace("width: 4", "width: 0, nf: 3, mode: rgba"))
    assert _problems(path) == [
        "modalities.image.config.width: Input should be greater than 0 (got 0)",
        "modalities.image.config.mode: 'rgba' is not one of 'rgb', 'gray'; did you mean 'rgb'?",
    ]
    path = _write(fake_plugins, GOOD.replace("width: 4", "nf: 3"))
    assert _problems(path) == ["modalities.image.config: nf must be even, got 3"]
    path = _write(fake_plugins, GOOD.replace("config: {num_classes: 10}", "config: 10"))
    assert _problems(path) == ["modalities.label.config: must be a mapping of the plugin's settings, got int"]


def test_module_keys_of_lr_and_freeze(fake_plugins: Path) -> None:
    text = GOOD.replace("image.decoder: 2.0e-3", "image.decodr: 2.0e-3").replace(
        "{image.decoder: 50}", "{imag: 50}"
    )
    lines = _problems(_write(fake_plugins, text))
    assert lines[0].startswith(
        "train.lr.image.decodr: no module 'image.decodr'; did you mean 'image.decoder'?"
    )
    assert lines[1].startswith("train.freeze.imag: no module 'imag'; did you mean 'image'?")
    assert len(lines) == 2
    text = GOOD.replace("default: 1.0e-3, ", "")
    assert _problems(_write(fake_plugins, text)) == [
        "train.lr: no learning rate for image.encoder (add 'default', 'image' or 'image.encoder')"
    ]


def test_sizes_and_cutoff_checked(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD)
    assert _problems(path, ["train.batch_size=0", "tasks.1.cutoff=1.0", "latent.g=0"]) == [
        "latent.g: Input should be greater than 0 (got 0)",
        "tasks.1.cutoff: Input should be less than 1 (got 1.0)",
        "train.batch_size: Input should be greater than 0 (got 0)",
    ]


def test_all_errors_reported_together(fake_plugins: Path) -> None:
    text = (
        GOOD.replace("width: 4", "widht: 4")
        .replace("solver: euler", "solver: rk4")
        .replace("target: label, loss", "target: lable, loss")
        .replace("batch_size: 32", "batch_size: -1")
    )
    lines = _problems(_write(fake_plugins, text))
    assert len(lines) == 4, lines
    assert "latent.solver: 'rk4' is not one of 'euler', 'dpm'" in lines
    assert "train.batch_size: Input should be greater than 0 (got -1)" in lines
    assert "modalities.image.config.widht: extra field; did you mean 'width'?" in lines
    assert any(
        line.startswith("tasks.1.target: unknown modality 'lable'; did you mean 'label'?") for line in lines
    )


def test_missing_sections(fake_plugins: Path) -> None:
    lines = _problems(_write(fake_plugins, "modalities: {}\ntasks: []\n"))
    assert lines == [
        "modalities: Dictionary should have at least 1 item after validation, not 0",
        "tasks: List should have at least 1 item after validation, not 0",
        "data: missing required field",
        "train: missing required field",
    ]


def test_bad_override_paths(fake_plugins: Path) -> None:
    path = _write(fake_plugins, GOOD)
    assert _problems(path, ["modalities.imgae.config.nf=16"]) == [
        "override modalities.imgae.config.nf: unknown key 'modalities.imgae'; did you mean 'image'?"
    ]
    assert _problems(path, ["trian.batch_size=16"]) == [
        "override trian.batch_size: unknown key 'trian'; did you mean 'train'?"
    ]
    assert _problems(path, ["train.batch_sise=16"]) == [
        "train.batch_sise: extra field; did you mean 'batch_size'?"
    ]
    assert _problems(path, ["tasks.5.steps=3"]) == [
        "override tasks.5.steps: tasks is a list of 2; '5' is not an index 0..1"
    ]
    assert _problems(path, ["train.batch_size"]) == [
        "override 'train.batch_size': expected key=value with a dotted key, e.g. train.batch_size=64"
    ]
    assert _problems(path, ["seed.x=1"]) == ["override seed.x: seed is a int, not a mapping"]
    lines = _problems(path, ["train.iterations=[1"])
    assert lines[0].startswith("override train.iterations: cannot parse value '[1' as YAML")


def test_yaml_syntax_error_names_file_and_line(fake_plugins: Path) -> None:
    path = _write(fake_plugins, "seed: 1\nlatent: {dim: 16\ntrain: {}\n")
    with pytest.raises(RecipeError, match=r"toy.yaml: YAML syntax error at line 3, column \d+"):
        load_recipe(path)
    path = _write(fake_plugins, "- a\n- b\n")
    with pytest.raises(RecipeError, match="toy.yaml: the top level must be a mapping of keys, got list"):
        load_recipe(path)


def test_missing_file_lists_available(fake_plugins: Path) -> None:
    _write(fake_plugins, GOOD, "mine.yaml")
    with pytest.raises(RecipeError) as info:
        load_recipe("digits_joitn.yaml")
    message = str(info.value)
    assert (
        "recipe 'digits_joitn.yaml' not found" in message and "did you mean 'digits_joint.yaml'?" in message
    )
    assert "mine.yaml" in message and "digits_joint.yaml" in message.splitlines()[1]


def test_deepspeed_problems(fake_plugins: Path) -> None:
    lines = _problems(_write(fake_plugins, GOOD + "deepspeed: ds/nope.json\n"))
    assert len(lines) == 1 and lines[0].startswith("deepspeed: file 'ds/nope.json' not found (looked at ")
    (fake_plugins / "list.json").write_text("[1, 2]")
    lines = _problems(_write(fake_plugins, GOOD + "deepspeed: list.json\n"))
    assert len(lines) == 1 and lines[0].endswith("list.json must hold a JSON object, got list")
    lines = _problems(_write(fake_plugins, GOOD + "deepspeed: 3\n"))
    assert lines == [
        "deepspeed: Input should be a valid string or Input should be a valid dictionary (got 3)"
    ]


def test_modality_names_must_be_identifiers(fake_plugins: Path) -> None:
    text = GOOD.replace("  label: {plugin: label", "  my-label: {plugin: label").replace(
        "target: label", "target: x"
    )
    lines = _problems(_write(fake_plugins, text))
    assert (
        lines[0]
        == "modalities.my-label: a modality name must be an identifier (letters, digits, _), got 'my-label'"
    )


def test_model_validate_accepts_config_instances_and_raises_recipe_error(fake_plugins: Path) -> None:
    data = load_recipe(_write(fake_plugins, GOOD)).model_dump(mode="json")
    data["modalities"]["image"]["config"] = FakeImageConfig(width=6)
    recipe = Recipe.model_validate(data)
    assert recipe.modalities["image"].config.width == 6
    data["modalities"]["image"]["config"] = {"widht": 6}
    with pytest.raises(
        RecipeError, match=r"modalities.image.config.widht: extra field; did you mean 'width'\?"
    ):
        Recipe.model_validate(data)
    data["train"]["batch_size"] = 0
    with pytest.raises(RecipeError) as info:
        validate_recipe(data, "compose")
    assert str(info.value).startswith("recipe compose has 2 problems:")


# ------------------------------------------------------------------ lzn validate


def test_cli_validate_ok_and_errors(fake_plugins: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(fake_plugins, GOOD)
    assert lzn_main(["validate", str(path), "train.iterations=7", "--skip-data"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"ok: {path} (modalities: image, label; tasks: 2; iterations: 7)"
    assert lzn_main(["validate", "toy", "latent.solver=rk4", "train.batch_size=0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"recipe {path} has 2 problems:"
    assert err[1:] == [
        "  - latent.solver: 'rk4' is not one of 'euler', 'dpm'",
        "  - train.batch_size: Input should be greater than 0 (got 0)",
    ]
    assert lzn_main(["validate", "nope.yaml"]) == 1
    assert "recipe 'nope.yaml' not found" in capsys.readouterr().err
