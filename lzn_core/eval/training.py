"""The evaluation ``recipes/train.py`` runs periodically (rank 0, EMA weights), from capabilities.

* every classification edge ``S -> T`` of the recipe (an align task into a zonal T) gets its
  test accuracy (:func:`~lzn_core.eval.protocol.zonal_predict` at the recipe's ``eval``
  setting: batches of ``eval.batch_size`` zoned by themselves, α = ``eval.alpha``), logged as
  ``accuracy/S->T``;
* every trained decoder that is a :class:`~lzn_core.modality.PreviewWriter` gets a sample
  grid: class-conditional (``eval.samples_per_class`` per class) when it is conditioned on a
  zonal modality, else unconditional; logged as ``grid/T``. A decoder that is also a
  :class:`~lzn_core.modality.SampleJudge` scores those samples against the real test items
  (e.g. ``class_consistency/T``).

Nothing here knows a modality by name: a third-party modality aligned to a label gets its own
accuracy, an image-like one its grids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..modality import PreviewWriter, SampleJudge
from ..model import LZNModel
from ..recipe import Recipe
from . import metrics
from . import protocol as p
from .report import load_split, needed_modalities


class TrainingEvaluator:
    """Periodic evaluation of a run: built once (reads ``data.eval``), called at evaluation steps.

    Args:
        model: the model being trained (only its recipe and specs are read here).
        run_dir: where sample grids go (``<run>/samples/<modality>-step-<k>.png``).
    """

    def __init__(self, model: LZNModel, run_dir: Path) -> None:
        self.recipe: Recipe = model.recipe
        self.run_dir = Path(run_dir)
        names = needed_modalities(model)
        pattern = self.recipe.data.eval
        self.test: dict[str, Any] = load_split(model, pattern, names) if pattern and names else {}

    @torch.no_grad()
    def __call__(
        self, model: LZNModel, step: int, *, accuracy: bool = True, samples: bool = True
    ) -> dict[str, Any]:
        """Metrics of ``model`` (the EMA weights) at ``step``; grid paths as strings."""
        was = model.training
        model.eval()
        out: dict[str, Any] = {}
        ecfg, seed = self.recipe.eval, self.recipe.seed
        try:
            if accuracy:
                for source, target in p.classification_edges(model):
                    if source in self.test and target in self.test:
                        pred, _ = p.zonal_predict(
                            model,
                            source,
                            target,
                            self.test[source],
                            alpha=ecfg.alpha,
                            batch_size=ecfg.batch_size,
                            steps=ecfg.steps,
                            seed=seed,
                        )
                        out[f"accuracy/{source}->{target}"] = metrics.accuracy(pred, self.test[target])
            if samples and ecfg.samples_per_class > 0:
                for target in p.generation_targets(model):
                    out.update(self._samples(model, target, step))
        finally:
            model.train(was)
        return out

    def _samples(self, model: LZNModel, target: str, step: int) -> dict[str, Any]:
        decoder = model.decoders[target]
        if not isinstance(decoder, PreviewWriter):
            return {}
        spc, seed = self.recipe.eval.samples_per_class, self.recipe.seed
        zonal = model.condition_source(target)
        out: dict[str, Any] = {}
        path = self.run_dir / "samples" / f"{target}-step-{step:06d}.png"
        if zonal is not None and model.decoder_kind(zonal) == "zonal":
            classes = torch.arange(int(model.bank(zonal).shape[0])).repeat_interleave(spc)
            items = p.class_samples(model, zonal, target, classes, seed=seed)
            if isinstance(decoder, SampleJudge) and target in self.test and zonal in self.test:
                scores = decoder.judge_samples(items, classes, self.test[target], self.test[zonal])
                out.update({f"{k}/{target}": float(v) for k, v in scores.items()})
        else:
            items = p.unconditional_samples(model, target, 10 * spc, seed=seed)
        out[f"grid/{target}"] = str(decoder.save_preview(items, path, nrow=spc))
        return out
