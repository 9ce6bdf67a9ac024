"""The DeepSpeed JSON of a recipe (lzn_core/recipe/ds_config.py): every problem with its field path,
half precision and accumulation refused with the recipe key to use, and `lzn validate` listing them
with the recipe's own problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paths import ROOT


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


def test_lzn_validate_reports_deepspeed_problems_with_the_rest(digits_workdir, monkeypatch, capsys) -> None:
    """A DeepSpeed file with a typo and an invalid type, an inline config with a bad stage, and a recipe
    typo: `lzn validate` lists them all at once (and load_recipe raises with the same lines)."""
    from lzn_core.cli import main as lzn
    from lzn_core.errors import RecipeError
    from lzn_core.recipe import load_recipe

    monkeypatch.chdir(digits_workdir)
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
