"""The evaluation during training (lzn_core/eval/training.py): the framework makes run/samples/ before
a plugin's preview writer writes into it."""

from __future__ import annotations

from tiny_models import plain_model


def test_training_creates_the_samples_folder_before_a_preview_writer_writes(tmp_path, monkeypatch) -> None:
    """The framework makes run/samples/; the plugin only writes its file (the protocol says so)."""
    from pathlib import Path

    from lzn_core.eval.training import TrainingEvaluator

    model = plain_model()
    model.recipe.data.eval = None  # no test items: grids only
    decoder = model.decoders["image"]

    def bare_writer(items, path, *, nrow=None):  # no mkdir: what a minimal plugin does
        Path(path).write_bytes(b"grid")
        return Path(path)

    monkeypatch.setattr(decoder, "save_preview", bare_writer)
    run = tmp_path / "run"
    out = TrainingEvaluator(model, run)(model, 3, accuracy=False)
    assert out["grid/image"] == str(run / "samples" / "image-step-000003.png")
    assert (run / "samples" / "image-step-000003.png").read_bytes() == b"grid"
