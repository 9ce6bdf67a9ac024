"""The evaluation ``recipes/train.py`` runs periodically (rank 0, EMA weights), from capabilities.

* every classification edge ``S -> T`` of the recipe (an align task into a zonal T) gets its
  test accuracy (:func:`~lzn_core.eval.protocol.zonal_predict` at the recipe's ``eval``
  setting: batches of ``eval.batch_size`` zoned by themselves, α = ``eval.alpha``), logged as
  ``accuracy/S->T``;
* every trained decoder that is a :class:`~lzn_core.modality.PreviewWriter` gets a sample
  grid: class-conditional (``eval.samples_per_class`` per class) when it is conditioned on a
  zonal modality, else unconditional; logged as ``grid/T``. A decoder that is also a
  :class:`~lzn_core.modality.SampleJudge` scores those samples against the real test items
  (e.g. ``class_consistency/T``);
* the recipe's ``eval.knn`` and ``eval.probe`` (declarative: which modality's backbone, which
  modality holds the labels, how often, on how many items) run on the EMA backbone at their
  ``every`` (and at the last step): the kNN accuracy, logged as ``knn_top1/F`` and
  ``knn_top5/F``, and the paper's linear probe, ``linear_probe_top1/F`` and
  ``linear_probe_top5/F`` (F: the features' modality; :func:`~lzn_core.eval.protocol.probe_eval`).

:func:`describe_metric` is the line the training summary prints for each result.

Nothing here knows a modality by name: a third-party modality aligned to a label gets its own
accuracy, an image-like one its grids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import LZNError
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
        run_dir: where sample grids go (``<run>/samples/<modality>-step-<k>.png``; the folder is
            created here before a ``PreviewWriter`` is asked to write).
    """

    def __init__(self, model: LZNModel, run_dir: Path) -> None:
        self.recipe: Recipe = model.recipe
        self.run_dir = Path(run_dir)
        names = needed_modalities(model)
        pattern = self.recipe.data.eval
        self.test: dict[str, Any] = load_split(model, pattern, names) if pattern and names else {}
        ecfg = self.recipe.eval
        if (ecfg.probe is not None or ecfg.knn is not None) and not pattern:
            raise LZNError("eval.probe / eval.knn need evaluation shards: set data.eval")

    def _due(self, cfg: Any, step: int) -> bool:
        return cfg is not None and (
            step >= self.recipe.train.iterations or not cfg.every or step % cfg.every == 0
        )

    def _probes(self, model: LZNModel, step: int) -> dict[str, float]:
        ecfg, out = self.recipe.eval, dict[str, float]()
        knn = ecfg.knn if self._due(ecfg.knn, step) else None
        probe = ecfg.probe if self._due(ecfg.probe, step) else None
        if knn is None and probe is None:
            return out
        res = p.probe_eval(
            model,
            self.recipe.data.train,
            str(self.recipe.data.eval),
            probe=probe,
            knn=knn,
            num_workers=self.recipe.data.num_workers,
            seed=self.recipe.seed,
        )
        for what, r in res.items():
            out.update({f"{what}_{k}/{r['features']}": float(r[k]) for k in ("top1", "top5")})
        return out

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
                out.update(self._probes(model, step))
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
                out.update(
                    {
                        f"{k}/{target}": float(v)
                        for k, v in scores.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    }
                )
        else:
            items = p.unconditional_samples(model, target, 10 * spc, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)  # the framework's folder: a plugin writes a file
        out[f"grid/{target}"] = str(decoder.save_preview(items, path, nrow=spc))
        return out


def describe_metric(recipe: Recipe, key: str, value: Any) -> str:
    """The summary line of one result ``key`` (``what/modality``) of :class:`TrainingEvaluator`."""
    what, _, name = key.partition("/")
    ecfg = recipe.eval
    if what == "accuracy":
        return f"test accuracy {name} (zonal flow, alpha={ecfg.alpha}): {value:.4f}"
    if what == "grid":
        return f"samples of {name}: {value}"
    probe, _, k = what.rpartition("_")
    if probe == "linear_probe" and ecfg.probe is not None:
        lp = ecfg.probe
        return (
            f"linear probe {k} of the {name} backbone -> {lp.labels} (AdamW lr {lp.lr:g}, wd {lp.weight_decay:g}, "
            f"{lp.epochs} epochs, batch {lp.probe_batch_size}): {value:.4f}"
        )
    if probe == "knn" and ecfg.knn is not None:
        kn = ecfg.knn
        return f"kNN {k} of the {name} backbone -> {kn.labels} (k={kn.k}, T={kn.temperature:g}): {value:.4f}"
    return f"{what} of the {name} samples: {value:.4f}" if isinstance(value, float) else f"{key}: {value}"
