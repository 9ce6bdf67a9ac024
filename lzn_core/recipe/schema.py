"""The recipe schema: modalities + tasks + data + optimisation, one model for YAML and ``compose``.

A recipe is YAML validated by :class:`Recipe` (pydantic v2, ``extra="forbid"`` at
every level). Each ``modalities.<m>.config`` is validated by the plugin's own
config model (``get_modality(entry.plugin).config``); after validation it holds
that model's instance. Every problem is reported at once, one line each, with
its field path and a did-you-mean suggestion (:class:`~lzn_core.errors.RecipeError`).

    recipe = load_recipe("digits_joint.yaml", ["train.batch_size=64"])
    recipe.latent.dim, recipe.modalities["image"].config.nf, recipe.tasks[0].kind

``recipe.model_dump(mode="json")`` is the resolved recipe (what ``lzn export``
writes); ``Recipe.model_validate`` reads it back to an equal recipe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import MissingShardsError, RecipeError
from .files import apply_override, read_deepspeed, read_yaml, resolve_recipe_path
from .problems import (
    condition_problems,
    recipe_error,
    reference_problems,
    resolve_plugins,
    translate_errors,
)

_STRICT = ConfigDict(extra="forbid")
StopSignal = Literal["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP"]


class LatentConfig(BaseModel):
    """The shared latent space and its zoning flow (docs/method.md §2).

    Attributes:
        dim: q, the latent dimension.
        solver: ODE solver of the forward (data -> latent) flow: "euler" or "dpm" (DPM-Solver++ 3M).
        steps: solver steps of the forward flow.
        g: start time of the forward flow (τ = g; paper 1e-4 for Euler, 1e-3 for DPM).
        alpha: α, scale of the noise mixed into the anchors at τ = g during training.
        bank_size: M, training anchors kept per modality without a fixed bank (inference context).
        chunk: rows of x per chunk of the attention-form solver (None: no chunking).
    """

    model_config = _STRICT

    dim: int = Field(default=64, gt=0)
    solver: Literal["euler", "dpm"] = "euler"
    steps: int = Field(default=20, gt=0)
    g: float = Field(default=1e-4, gt=0.0, lt=1.0)
    alpha: float = Field(default=1.0, ge=0.0)
    bank_size: int = Field(default=512, gt=0)
    chunk: int | None = Field(default=None, gt=0)


class ModalityEntry(BaseModel):
    """One modality of the recipe: the plugin that provides it and the plugin's config.

    Attributes:
        plugin: the registered modality name of the plugin ("image", "label", "text", ...).
        config: a mapping validated by the plugin's config model; after :class:`Recipe`
            validation, that model's instance.
    """

    model_config = _STRICT

    plugin: str = Field(min_length=1)
    config: Any = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, (dict, BaseModel)):
            raise ValueError(f"must be a mapping of the plugin's settings, got {type(value).__name__}")
        return value


class GenerateTask(BaseModel):
    """Decoder loss of ``target`` on its own latents (paper case 1), optionally conditioned.

    Attributes:
        target: modality whose decoder is trained on the latents of its encoder's anchors.
        weight: coefficient of this loss term.
        condition: modality whose ``condition(batch)`` vector conditions the decoder
            (case 3: the label one-hot on the image decoder).
    """

    model_config = _STRICT

    kind: Literal["generate"] = "generate"
    target: str
    weight: float = Field(default=1.0, ge=0.0)
    condition: str | None = None


class AlignTask(BaseModel):
    """Latent alignment Align(target, source) (docs/method.md §3).

    The source's latents (from its encoder and anchors, noise scale ``alpha``) are run
    through the reverse flow over the target's anchors; the loss wants the paired anchor.
    ``source == target`` is case 2: two augmented views of one modality, the pair of a
    row is the same sample.

    Attributes:
        source: modality whose latents are flowed (image in case 3).
        target: modality whose anchors define the zones (label in case 3).
        weight: coefficient of this loss term.
        loss: "log" (−mean log max_t P, Eq. 5) or "prob" (−mean max_t P, Eq. 2).
        class_weights: weight the target's anchors by their share of the global batch
            (label alignment during training).
        steps: Euler steps of the reverse flow.
        cutoff: the max over time runs over steps ≥ ⌊cutoff·steps⌋.
        alpha: α, noise scale of the source latents.
    """

    model_config = _STRICT

    kind: Literal["align"] = "align"
    source: str
    target: str
    weight: float = Field(default=1.0, ge=0.0)
    loss: Literal["log", "prob"] = "log"
    class_weights: bool = False
    steps: int = Field(default=20, gt=0)
    cutoff: float = Field(default=0.2, ge=0.0, lt=1.0)
    alpha: float = Field(default=1.0, ge=0.0)


Task = Annotated[GenerateTask | AlignTask, Field(discriminator="kind")]
"""A recipe task: :class:`GenerateTask` or :class:`AlignTask`, told apart by ``kind``."""


class DataConfig(BaseModel):
    """Webdataset shards: brace or glob patterns relative to the cwd, or URLs with brace ranges
    (``https://host/data/train-{000000..000099}.tar``, ``s3://bucket/...``), downloaded into the
    shard cache (docs/data.md, "Remote shards").

    Attributes:
        train: pattern of the training shards.
        eval: pattern of the evaluation shards (None: no periodic evaluation data).
        num_workers: loader worker processes per rank.
        make: the command(s) that write these shards (``lzn shards ...``); an error about
            missing shards of ``train`` or ``eval`` says it (:meth:`explain`).
    """

    model_config = _STRICT

    train: str = Field(min_length=1)
    eval: str | None = None
    num_workers: int = Field(default=0, ge=0)
    make: str | None = None

    def explain(self, exc: BaseException) -> str:
        """The message of ``exc``, with :attr:`make` when it is about missing shards of this recipe."""
        if isinstance(exc, MissingShardsError) and self.make and exc.pattern in (self.train, self.eval):
            return f"{exc}; make them with: {self.make}"
        return str(exc)

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Around reading this recipe's shards: a :class:`~lzn_core.errors.MissingShardsError`
        comes out with :meth:`explain`'s message (the ``data.make`` command)."""
        try:
            yield
        except MissingShardsError as exc:
            raise MissingShardsError(self.explain(exc), exc.pattern) from None

    @field_validator("train", "eval")
    @classmethod
    def _url_pattern(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            from ..data._remote import url_pattern_problem  # lazy: the data package imports torch

            problem = url_pattern_problem(value)
            if problem:
                raise ValueError(problem)
        return value


class TrainConfig(BaseModel):
    """Optimisation (docs/method.md §7): Adam, per-module lr, linear warm-up, clipping, EMA, freezing.

    Attributes:
        batch_size: global batch (split across ranks).
        iterations: optimiser steps.
        lr: learning rates keyed by ``default``, ``<mod>``, ``<mod>.encoder`` or ``<mod>.decoder``
            (the most specific key wins).
        warmup: iterations of linear warm-up from lr/5000 to lr.
        grad_clip: global gradient-norm clip (None: off).
        ema: EMA decay d, with warm-up min(d, (1+k)/(10+k)) (None: no EMA).
        freeze: module -> iteration from which it is frozen (case 3: image.decoder at 60k).
        log_every, eval_every, sample_every, ckpt_every: periods in iterations (0: never).
        keep_checkpoints: checkpoints kept on disk (older ones are removed).
        micro_batch_size: rows per micro-batch on each rank (None: all of the rank's rows at
            once). A rank holding more rows runs the step in two passes over micro-batches
            (:mod:`lzn_core.train.passes`): the gradient of the whole global batch, exactly,
            with the activation memory of one micro-batch. ``"auto"``: the largest that fits the
            device's memory, measured before training (:mod:`lzn_core.train.plan`, ``lzn plan``).
        precision: "fp32", or "bf16": the encoders and decoders run under bf16 autocast; the
            weights, the anchors, the zoning solver, the alignment and the EMA stay float32.
        ckpt_every_minutes: also checkpoint when this many minutes of wall time (rank 0's clock)
            have passed since the last checkpoint (None: by steps only).
        stop_signals: signals that stop the run at the next step boundary with a checkpoint of
            that step (:mod:`lzn_core.train.preemption`; exit status 75).
        stop_deadline: seconds after the first stop signal after which every rank exits at once
            (status 76; resume continues from the last complete checkpoint). None: no deadline.
        timeout_minutes: how long a collective of a training step waits for the other ranks.
        eval_timeout_minutes: how long the other ranks wait for rank 0's evaluation and export.
    """

    model_config = _STRICT

    batch_size: int = Field(gt=0)
    iterations: int = Field(gt=0)
    lr: dict[str, Annotated[float, Field(gt=0.0)]] = Field(default_factory=lambda: {"default": 1e-3})
    warmup: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    ema: float | None = Field(default=0.999, ge=0.0, lt=1.0)
    freeze: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=500, ge=0)
    sample_every: int = Field(default=500, ge=0)
    ckpt_every: int = Field(default=500, ge=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    micro_batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    ckpt_every_minutes: float | None = Field(default=None, gt=0.0)
    stop_signals: list[StopSignal] = Field(default_factory=lambda: list[StopSignal](["SIGTERM", "SIGUSR1"]))
    stop_deadline: float | None = Field(default=None, gt=0.0)
    timeout_minutes: float = Field(default=30.0, gt=0.0)
    eval_timeout_minutes: float = Field(default=360.0, gt=0.0)

    def lr_for(self, modality: str, part: str) -> float:
        """Learning rate of ``<modality>.<part>`` (part "encoder" | "decoder"): most specific key wins.

        Raises:
            KeyError: when neither the module, its modality nor ``default`` has a rate.
        """
        for key in (f"{modality}.{part}", modality, "default"):
            if key in self.lr:
                return self.lr[key]
        raise KeyError(f"train.lr has no rate for {modality}.{part} and no 'default'")


class FeatureProbe(BaseModel):
    """What a probe of frozen backbone features reads (case 2): which modality, which labels.

    Attributes:
        features: modality whose encoder's backbone features are probed
            (:class:`~lzn_core.modality.BackboneFeatures`).
        labels: modality whose items are the class indices (e.g. a label modality reading ``cls``).
        every: iterations between runs during training (0: at every evaluation,
            ``train.eval_every``); a multiple of ``train.eval_every``. Always at the last step.
        train_limit: training items whose features train the probe (None: the whole split;
            ``data.train`` read at the evaluation view, no augmentation).
        test_limit: evaluation items scored (None: all of ``data.eval``).
        batch_size: items per feature-extraction batch.
    """

    model_config = _STRICT

    features: str = Field(min_length=1)
    labels: str = Field(min_length=1)
    every: int = Field(default=0, ge=0)
    train_limit: int | None = Field(default=None, gt=0)
    test_limit: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, gt=0)


class ProbeConfig(FeatureProbe):
    """The paper's linear probe (the authors' ``LinearProbing``, docs/method.md §7 case 2): a linear
    layer on the frozen features, top-1/top-5 (:func:`~lzn_core.eval.metrics.linear_probe_topk`).

    Attributes:
        epochs: passes over the training features (paper: 300).
        lr: AdamW learning rate (paper: 3e-4).
        weight_decay: AdamW weight decay (paper: 0).
        probe_batch_size: batch of the linear layer's training (paper: 8192).
    """

    epochs: int = Field(default=300, gt=0)
    lr: float = Field(default=3e-4, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    probe_batch_size: int = Field(default=8192, gt=0)


class KnnConfig(FeatureProbe):
    """A cheap weighted kNN accuracy of the frozen features for frequent checks during training
    (:func:`~lzn_core.eval.metrics.knn_accuracy`).

    Attributes:
        k: neighbours (20).
        temperature: τ of the vote weights exp(cos / τ) (0.07).
    """

    k: int = Field(default=20, gt=0)
    temperature: float = Field(default=0.07, gt=0.0)


class EvalConfig(BaseModel):
    """Periodic and final evaluation.

    Attributes:
        batch_size: test batch (latents depend on the batch: the minibatch approximation).
        alpha: α of the test latents (0: the zone centre, best for classification).
        steps: Euler steps of the label flow.
        samples_per_class: class-conditional samples per class in the sample grid.
        probe: a linear probe of a modality's frozen backbone features (None: none).
        knn: a kNN accuracy of a modality's frozen backbone features (None: none).
    """

    model_config = _STRICT

    batch_size: int = Field(default=300, gt=0)
    alpha: float = Field(default=0.0, ge=0.0)
    steps: int = Field(default=100, gt=0)
    samples_per_class: int = Field(default=10, ge=0)
    probe: ProbeConfig | None = None
    knn: KnnConfig | None = None


class Recipe(BaseModel):
    """A whole recipe; see ``recipes/digits_joint.yaml`` for an annotated example.

    After validation ``modalities[m].config`` is the plugin's config instance,
    ``output_dir`` is filled (``runs/<name>``) and ``deepspeed`` is the DeepSpeed
    config dict (a path is read: relative to the recipe file when loaded with
    :func:`load_recipe`, else to the cwd, then ``recipes/``) or None.
    """

    model_config = _STRICT

    name: str = Field(default="recipe", min_length=1)
    output_dir: str | None = None
    seed: int = 0
    latent: LatentConfig = Field(default_factory=lambda: LatentConfig())
    modalities: dict[str, ModalityEntry] = Field(min_length=1)
    tasks: list[Task] = Field(min_length=1)
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig())
    deepspeed: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _resolve(self) -> Recipe:
        raw = {
            "modalities": {k: {"plugin": e.plugin, "config": e.config} for k, e in self.modalities.items()},
            "tasks": [t.model_dump() for t in self.tasks],
            "train": {
                "lr": dict(self.train.lr),
                "freeze": dict(self.train.freeze),
                "eval_every": self.train.eval_every,
            },
            "eval": self.eval.model_dump(),
        }
        specs, configs, problems = resolve_plugins(raw["modalities"])
        problems += reference_problems(raw) + condition_problems(specs, raw["tasks"])
        ds, ds_problems = read_deepspeed(self.deepspeed, None, self.train)
        problems += ds_problems
        if problems:
            raise recipe_error(None, problems)
        for key, config in configs.items():
            self.modalities[key].config = config
        self.deepspeed = ds
        self.output_dir = self.output_dir or f"runs/{self.name}"
        return self

    def summary(self) -> str:
        """One line: modalities, task count, iterations."""
        mods = ", ".join(self.modalities)
        return f"modalities: {mods}; tasks: {len(self.tasks)}; iterations: {self.train.iterations}"


def load_recipe(path_or_name: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe.

    Args:
        path_or_name: a YAML path or a bare name (resolved by :func:`resolve_recipe_path`).
        overrides: ``key=value`` strings with dotted keys (``train.batch_size=64``,
            ``tasks.1.steps=10``); values are parsed as YAML scalars.

    Returns:
        The validated :class:`Recipe` (``name`` defaults to the file stem).

    Raises:
        RecipeError: every problem of the file and the overrides, one per line.
    """
    path = resolve_recipe_path(path_or_name)
    data = read_yaml(path)
    problems = [p for item in overrides if (p := apply_override(data, item, Recipe))]
    data.setdefault("name", path.stem)
    if isinstance(data.get("deepspeed"), str):
        resolved, ds_problems = read_deepspeed(data["deepspeed"], path.parent)
        data["deepspeed"] = resolved if isinstance(resolved, dict) else None
        problems += ds_problems
    return validate_recipe(data, path, problems)


def validate_recipe(
    data: dict[str, Any], source: Path | str | None = None, problems: Sequence[str] = ()
) -> Recipe:
    """Validate a recipe mapping, reporting every problem together (``compose`` uses it too).

    Args:
        data: the recipe as plain data (parsed YAML, ``Recipe.model_dump(mode="json")``).
        source: where it came from, named in the error message.
        problems: problem lines found earlier (overrides), reported with the rest.

    Raises:
        RecipeError: one line per problem (``.problems`` holds the list).
    """
    found = list(problems)
    recipe = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        found += translate_errors(exc, Recipe)
        specs, _, config_problems = resolve_plugins(data.get("modalities"))
        found += config_problems + reference_problems(data) + condition_problems(specs, data.get("tasks"))
        if isinstance(data.get("deepspeed"), dict):
            found += read_deepspeed(data["deepspeed"], None, data.get("train"))[1]
    except RecipeError as exc:
        found += getattr(exc, "problems", [str(exc)])
    if found or recipe is None:
        raise recipe_error(source, _unique(found))
    return recipe


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))
