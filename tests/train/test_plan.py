"""The memory plan of a step (lzn_core/train/plan.py): ``train.micro_batch_size: auto`` and ``lzn plan``.

The prediction is checked against a measured step on the CPU: the plan measures one real step's
networks at micro-batches of 2 and 4 rows, chooses the micro-batch for a given device memory, and
a fresh model + DeepSpeed engine + evaluation copy then run two real steps at that size; their
peak resident memory must be the predicted peak within 15%.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

from lzn_core.errors import LZNError
from lzn_core.train.plan import HEADROOM, StepMemory, parse_bytes

SMALL = [
    "modalities.image.config.preset=small32",
    "latent.dim=16",
    "deepspeed=ds/cpu.json",
    "data.num_workers=0",
]


def test_parse_bytes() -> None:
    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("40 GB") == 40 * 10**9
    assert parse_bytes("512MiB") == 2**29 and parse_bytes("1.5gib") == 3 * 2**29 and parse_bytes(7) == 7
    with pytest.raises(ValueError, match="not a memory size: '80 parsecs'"):
        parse_bytes("80 parsecs")


def _step(rows: int = 1000) -> StepMemory:
    mib = 2**20
    net = {"weights": 100 * mib, "EMA": 100 * mib, "Adam moments": 200 * mib}
    return StepMemory(
        rows=rows,
        precision="fp32",
        head=50 * mib,
        per_row={"encode image": 2 * mib, "loss image": 3 * mib},
        fixed={"encode image": 10 * mib, "loss image": 20 * mib},
        one_pass=(net, net | {"gradients": 100 * mib}),
        two_pass=(net | {"two-pass gradients": 100 * mib}, net | {"gradients": 100 * mib}),
        measured_on="test",
    )


def test_the_plan_takes_the_largest_micro_batch_that_fits_and_fills_its_passes_evenly() -> None:
    mib, step = 2**20, _step()
    # one pass: 400 MiB state + 50 head + 10 + 20 + 5 MiB x 1000 rows = 5480 MiB
    assert step.peak(None) == (400 + 50 + 30 + 5000) * mib
    one = step.choose(int(5480 * mib / (1 - HEADROOM)) + 1)
    assert (one.micro_batch, one.passes, one.fits_one_pass) == (None, 1, True)
    # two passes: 500 MiB state + max(50 + 20 + 3m, 10 + 2m); 2000 MiB usable -> m <= 476 -> 3 passes of 334
    plan = step.choose(2000 * mib, headroom=0.0)
    assert (plan.micro_batch, plan.passes) == (334, 3)
    assert plan.predicted_peak == (500 + 50 + 20 + 3 * 334) * mib <= plan.budget
    assert step.peak(335) > step.peak(334)
    assert "1000 rows a rank in 3 passes of 334 rows (fp32)" in plan.describe()
    with pytest.raises(
        LZNError, match=r"even micro-batches of one row need 0\.5\d GiB, more than the 0\.49 GiB"
    ):
        step.choose(500 * mib, headroom=0.0)


_MEASURE = """
import gc, json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1] + "/recipes")
import torch, deepspeed, train as script
from lzn_core.data import loader
from lzn_core.model import LZNModel
from lzn_core.recipe import load_recipe
from lzn_core.train.engine import Engine, setup_distributed
from lzn_core.train.passes import network_passes
from lzn_core.train.plan import HEADROOM, _Peak, step_memory

rows = int(sys.argv[3])
recipe = load_recipe("cifar_joint", sys.argv[4:])
setup_distributed()
torch.manual_seed(0)
model = LZNModel(recipe)
batch = next(iter(loader(recipe.data.train, model.specs, configs=model.configs, batch_size=rows, seed=1)))
losses = lambda b, n: script.task_losses(model, recipe, b, 0, 0, 1, n)
measured = step_memory(model, recipe, dict(batch), losses)
memory = int(measured.peak(rows // 3) / (1 - HEADROOM)) + 1  # a device on which 3 passes fit
plan = measured.choose(memory)
Engine(model, recipe, Path(tempfile.mkdtemp()) / "ckpt")  # DeepSpeed's one-time host memory (no GPU memory)
del model, losses
gc.collect()
peak = _Peak(torch.device("cpu"))
got = []
with peak.measure(got):  # what training holds: model, engine (EMA, Adam), rank 0's evaluation copy
    model = LZNModel(recipe)
    engine = Engine(model, recipe, Path(tempfile.mkdtemp()) / "ckpt")
    evaluation = LZNModel(recipe)
    nets = network_passes(engine.model, recipe.train.model_copy(update={"micro_batch_size": plan.micro_batch}))
    for step in range(2):
        engine.step(sum(script.task_losses(engine.model, recipe, dict(batch), step, 0, 1, nets).values()), nets)
print(json.dumps({"plan": plan.to_dict(), "measured": got[0]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_predicted_peak_is_the_measured_peak_within_15_percent_on_cpu(
    tmp_path: Path, precision: str
) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import make_data

    make_data(tmp_path / "cifar", 300)
    rows = 192
    overrides = [
        *SMALL,
        f"data.train={tmp_path}/cifar/train-*.tar",
        f"train.batch_size={rows}",
        f"train.precision={precision}",
    ]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(ROOT), "unused", str(rows), *overrides],
        env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    plan, measured = out["plan"], out["measured"]
    assert plan["passes"] == 3 and plan["micro_batch"] == 64, plan
    ratio = plan["predicted_peak"] / measured
    print(
        f"{precision}: predicted {plan['predicted_peak'] / 2**30:.3f} GiB, measured {measured / 2**30:.3f} GiB, ratio {ratio:.3f}"
    )
    assert 0.85 <= ratio <= 1.15, (plan["predicted_peak"], measured)


@pytest.mark.slow
def test_lzn_plan_prints_a_plan_for_each_device_memory(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import make_data

    make_data(tmp_path / "cifar", 100)
    args = ["plan", "cifar_gen", *SMALL, f"data.train={tmp_path}/cifar/train-*.tar", "train.batch_size=64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "lzn_core", *args, "--device-memory", "200MiB", "80GiB", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    small, big = json.loads(done.stdout)["plans"]
    assert small["passes"] > 1 and small["micro_batch"] < 64 and small["predicted_peak"] <= small["budget"]
    assert big["passes"] == 1 and big["micro_batch"] is None and big["fits_one_pass"]
    assert big["per_row"]["loss image"] > 0 and big["per_row"]["encode image"] > 0
    done = subprocess.run(
        [sys.executable, "-m", "lzn_core", *args, "--device-memory", "1MiB"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (
        done.returncode == 1
        and "lzn plan: error: memory plan: even micro-batches of one row need" in done.stderr
    )


@pytest.mark.slow
def test_auto_plans_before_training_and_the_run_trains(tmp_path: Path) -> None:
    """recipes/train.py with cifar_gen's micro_batch_size: auto on a device of LZN_DEVICE_MEMORY:
    the plan is printed before the first step, and the run trains in those passes."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import make_data

    make_data(tmp_path / "cifar", 100)
    args = [*SMALL, f"data.train={tmp_path}/cifar/train-*.tar", f"data.eval={tmp_path}/cifar/test-*.tar"]
    args += ["train.batch_size=32", "train.iterations=2", "train.eval_every=0", "train.sample_every=0"]
    args += ["train.ckpt_every=0", "eval.batch_size=8", "eval.samples_per_class=1"]
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "train.py"),
            "--recipe",
            "cifar_gen",
            "--output",
            str(tmp_path / "run"),
            *args,
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "LZN_DEVICE_MEMORY": "250MiB"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("memory plan:"))
    assert "32 rows a rank in" in line and "passes of" in line and "(250.00 MiB" not in line, line
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
