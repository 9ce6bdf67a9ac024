"""DeepSpeed's monitor backends (lzn_core/train/monitor.py): TensorBoard and CSV fed by a real training run
(the session's monitored run), the configuration they get, Weights & Biases through a stand-in."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
from monitored_run import BATCH, metric_rows

from lzn_core.errors import LZNError
from lzn_core.train.monitor import TrainingMonitor, configure


@pytest.fixture
def run(monitored_run: Path) -> Path:
    """The session's monitored run (tests/support/monitored_run.py)."""
    return monitored_run


def test_csv_and_tensorboard_get_the_loss_terms_at_the_sample_steps(run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_rows, eval_rows = metric_rows(run)
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
