"""``info.json`` (lzn_core/io): what an export of the session's monitored run says about the model and
its training, from final/ and from a checkpoint; the training summary of a resumed run."""

from __future__ import annotations

import types
from importlib.metadata import version
from pathlib import Path

import pytest
from monitored_run import BATCH, metric_rows

import lzn_core
from lzn_core.io import export_run, load, read_info
from lzn_core.io.files import training_summary


@pytest.fixture
def run(monitored_run: Path) -> Path:
    """The session's monitored run (tests/support/monitored_run.py)."""
    return monitored_run


def test_info_json_of_the_run(run: Path) -> None:
    info = read_info(run / "final")
    train_rows, eval_rows = metric_rows(run)
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
