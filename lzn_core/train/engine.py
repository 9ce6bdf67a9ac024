"""DeepSpeed plumbing for ``recipes/train.py``: init, optimiser step, EMA, freeze, checkpoints.

The math of a training step lives in the recipe script; this module hides what a
reader does not need to see there:

* ``setup_distributed()`` reads the launcher's environment (deepspeed, torchrun, ``srun``, MPI or
  none: :mod:`~lzn_core.train.launcher`) and starts ``torch.distributed`` (gloo on CPU, nccl on
  GPU) with the recipe's collective timeout.
* ``Engine(model, recipe)`` builds per-module parameter groups from ``train.lr``
  (keys ``default | <mod> | <mod>.encoder | <mod>.decoder``), a linear warm-up from
  lr/5000 (docs/method.md §7), a freeze schedule (lr 0 and no gradients from iteration k),
  gradient clipping, and ``deepspeed.initialize`` around them (fp32, torch Adam); the
  DeepSpeed config's monitor sections write into the run directory (``train/monitor.py``).
* ``Engine.step(loss, nets)`` skips the step on every rank when the loss is non-finite on any;
  otherwise one DeepSpeed backward (of ``nets.loss_for_backward(loss)``: the loss, or a two-pass
  step's surrogate, :mod:`lzn_core.train.passes`) and the optimiser step.
* A frozen module (``train.freeze``: from iteration k) stops: no gradient, lr 0, its Adam
  state is not stepped (its group is skipped, under ZeRO too) and its EMA stays where it was
  after iteration k - 1.
* An EMA of every parameter with warm-up decay ``min(d, (1+k)/(10+k))`` kept outside
  DeepSpeed and saved in the checkpoints' client state.
* ``Engine.save(step, client_state)`` writes DeepSpeed's files and each rank's own generator
  states into the staging folder and commits it (:mod:`~lzn_core.train.checkpoint`: renamed
  to ``ckpt/step-<step>`` when complete, then ``ckpt/latest`` replaced atomically): a crash
  mid-write leaves the previous checkpoint usable. ``Engine.load`` restores all of it, this rank's generators last.
* A checkpoint resumes on another number of ranks: under ZeRO 1/2 through DeepSpeed's universal
  checkpoint (``ds_to_universal`` once, kept in ``step-<k>/universal``, then ``load_universal``;
  :func:`~lzn_core.train.checkpoint.universal_checkpoint`); under stage 0 every rank holds the
  whole optimizer state and loads it as it is. One line on rank 0 says which, and a warning that
  the per-rank generator streams (dropout) cannot continue as on the old number of ranks.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LZNError, LZNWarning
from ..recipe.files import read_deepspeed
from . import _deepspeed
from .checkpoint import (
    commit,
    rank,
    ranks,
    resolve_checkpoint,
    rng_file,
    staging,
    universal_checkpoint,
    universal_info,
    zero_partitions,
)
from .launcher import apply as apply_launch
from .launcher import from_environment
from .monitor import configure as configure_monitor
from .rng import rng_state, set_rng_state

WARMUP_START = 1.0 / 5000.0  # warm-up starts at lr/5000 (docs/method.md §7)


def setup_distributed(timeout_minutes: float = 30.0) -> tuple[int, int, int]:
    """Start ``torch.distributed`` for this process; returns ``(rank, world_size, local_rank)``.

    The rank, world size and local rank come from the launcher's environment (deepspeed,
    torchrun, ``srun``, MPI: :mod:`lzn_core.train.launcher`); plain ``python recipes/train.py``
    gets a one-process group. ``timeout_minutes`` bounds every collective (``train.timeout_minutes``).
    On CPU the backend is gloo and DeepSpeed's shared-memory comm op is not built
    (it would compile C++ for minutes and is not needed for gloo).
    """

    import deepspeed

    apply_launch(from_environment())
    cpu = not torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR") == "cpu"
    if cpu:  # no public switch: lzn_core.train._deepspeed lists it
        _deepspeed.replace("deepspeed.comm.torch", "build_shm_op", lambda: None)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(
            dist_backend="gloo" if cpu else "nccl", verbose=False, timeout=timedelta(minutes=timeout_minutes)
        )
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if not cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def teardown_distributed() -> None:
    """End this process's group so that a later run in the same process (a notebook, a test
    session) starts a fresh one. ``deepspeed.comm.destroy_process_group`` also drops the groups
    DeepSpeed caches (a stale clone of the world group fails the next engine's broadcast), and
    the next ``deepspeed.init_distributed`` starts a new backend."""
    import deepspeed.comm as ds_comm

    if ds_comm.is_initialized():
        ds_comm.destroy_process_group()
    elif torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _module_key(param_name: str) -> tuple[str, str]:
    """``encoders.image.blocks.0.w`` -> ("image", "encoder")."""
    side, mod = param_name.split(".")[:2]
    return mod, {"encoders": "encoder", "decoders": "decoder"}.get(side, side)


def _lookup(table: dict[str, Any], mod: str, side: str, default: Any) -> Any:
    for key in (f"{mod}.{side}", mod, "default"):
        if key in table:
            return table[key]
    return default


def param_groups(model: nn.Module, lr: dict[str, float], freeze: dict[str, int]) -> list[dict[str, Any]]:
    """One optimiser group per (modality, encoder|decoder) with its lr and freeze iteration.

    Args:
        model: an ``LZNModel`` (parameters named ``encoders.<mod>.*`` / ``decoders.<mod>.*``).
        lr: ``train.lr`` (``default | <mod> | <mod>.encoder | <mod>.decoder`` -> lr).
        freeze: ``train.freeze`` (same keys -> iteration from which the module is frozen).
    """
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        mod, side = _module_key(name)
        key = f"{mod}.{side}"
        if key not in groups:
            base = _lookup(lr, mod, side, None)
            if base is None:
                raise LZNError(f"train.lr has no entry for {key!r} and no 'default'")
            groups[key] = {
                "params": [],
                "lr": float(base),
                "name": key,
                "base_lr": float(base),
                "freeze_at": _lookup(freeze, mod, side, None),
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def _skip_frozen_groups(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Optimiser step pre-hook: a group marked ``frozen`` is left alone (no update, no state change).

    A frozen module's parameters get no gradient, but under ZeRO the optimiser steps a flat fp32
    partition per group whose gradient DeepSpeed zero-fills; Adam would still decay its moments.
    A parameter without ``.grad`` is skipped by torch's optimisers.
    """
    for group in optimizer.param_groups:
        if group.get("frozen"):
            for p in group["params"]:
                p.grad = None


def lr_factor(iteration: int, warmup: int, freeze_at: int | None) -> float:
    """lr multiplier at ``iteration``: linear from 1/5000 to 1 over ``warmup``; 0 once frozen."""
    if freeze_at is not None and iteration >= freeze_at:
        return 0.0
    if warmup <= 0 or iteration >= warmup:
        return 1.0
    return WARMUP_START + (1.0 - WARMUP_START) * iteration / warmup


def deepspeed_config(recipe: Any, world_size: int, base_dir: Path | None = None) -> dict[str, Any]:
    """The DeepSpeed config: the recipe's ``deepspeed`` (path or dict) with batch sizes and clipping set.

    The optimiser and scheduler are built here (torch Adam, warm-up/freeze lambdas), so an
    ``optimizer`` section only contributes its ``betas``/``eps``/``weight_decay``.
    """
    src = getattr(recipe, "deepspeed", None)  # load_recipe has read a file into a dict already
    cfg: dict[str, Any] = {}
    if src:
        data, problems = read_deepspeed(src, base_dir)  # a recipe built in Python may name a file
        if not isinstance(data, dict):
            raise LZNError(
                "; ".join(problems) or f"deepspeed: expected a file name or a mapping, got {src!r}"
            )
        cfg = json.loads(json.dumps(data))
    batch = int(recipe.train.batch_size)
    if batch % world_size:
        raise LZNError(f"train.batch_size={batch} is not divisible by the world size {world_size}")
    cfg.update(
        train_batch_size=batch,
        train_micro_batch_size_per_gpu=batch // world_size,
        gradient_accumulation_steps=1,
        gradient_clipping=float(recipe.train.grad_clip or 0.0),
    )
    cfg.setdefault("steps_per_print", 10**12)
    cfg.setdefault("zero_optimization", {"stage": 0})
    cfg.pop("scheduler", None)
    return cfg


def _fill_missing_adam_state(zero_optimizer: Any) -> None:
    """Zero Adam state for a flat ZeRO partition that has none, as torch's Adam would create it.

    Only a group frozen since iteration 0 has none (it never stepped, and stays frozen, so the
    state is never read); DeepSpeed's ``ds_to_universal`` fails on a group without ``exp_avg``.
    """
    base = getattr(zero_optimizer, "optimizer", None)
    if not isinstance(base, torch.optim.Adam):
        return
    for group in base.param_groups:
        for p in group["params"]:
            if not base.state.get(p):
                base.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
                if group.get("amsgrad"):
                    base.state[p]["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _no_mpu_warning(record: logging.LogRecord) -> bool:
    """Drops DeepSpeed's "MPU is not provided" warning of a universal load (no model parallelism here)."""
    return "MPU is not provided" not in record.getMessage()


class Engine:
    """DeepSpeed engine + EMA + freeze schedule + atomic checkpoints for an ``LZNModel``.

    Args:
        model: the ``LZNModel`` to train.
        recipe: its ``Recipe`` (``train`` section: lr, warmup, grad_clip, ema, freeze, keep_checkpoints).
        ckpt_dir: where checkpoints go (``<run>/ckpt``).
        world_size: number of ranks.
        base_dir: directory a relative ``deepspeed:`` config path is resolved against.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Any,
        ckpt_dir: Path,
        *,
        world_size: int = 1,
        base_dir: Path | None = None,
    ) -> None:
        import deepspeed

        tr = recipe.train
        self.warmup = int(tr.warmup)
        self.ema_decay = float(tr.ema or 0.0)
        self.keep = int(getattr(tr, "keep_checkpoints", 2) or 1)
        self.ckpt_dir = Path(ckpt_dir)
        cfg = deepspeed_config(recipe, world_size, base_dir)
        configure_monitor(cfg, self.ckpt_dir.parent, recipe.name)  # the run directory holds ckpt/
        opt_params = cfg.pop("optimizer", {}).get("params", {})
        groups = param_groups(model, dict(tr.lr), dict(tr.freeze or {}))
        optimizer = torch.optim.Adam(
            groups,
            betas=tuple(opt_params.get("betas", (0.9, 0.999))),
            eps=float(opt_params.get("eps", 1e-8)),
            weight_decay=float(opt_params.get("weight_decay", 0.0)),
            foreach=True,  # one kernel per group, not per tensor (CPU defaults to the per-tensor loop)
        )
        optimizer.register_step_pre_hook(_skip_frozen_groups)
        # the modules' own parameters (ZeRO replaces each group's list by its flat partition)
        self.freezes = [(g["freeze_at"], list(g["params"])) for g in groups if g["freeze_at"] is not None]
        lambdas = [self._lambda(g["freeze_at"]) for g in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        self.zero_stage = int(cfg["zero_optimization"].get("stage", 0))
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg
        )
        self.model = self.ds.module
        key, info = universal_info()  # saved with every checkpoint: ds_to_universal requires it
        if getattr(self.model, key, None) is None:
            setattr(self.model, key, info)
        self.device = self.ds.device
        self.groups = groups
        self.iteration = 0  # optimiser iterations taken or skipped
        self.skipped = 0
        self.ema_updates = 0
        self.ema: dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in self.model.state_dict().items()
        }
        freeze = dict(tr.freeze or {})
        self.ema_freeze = {  # EMA entry -> iteration from which its module is frozen
            k: _lookup(freeze, *_module_key(k), None) for k in self.ema if k.count(".") >= 1
        }
        self.world_size = world_size
        self._freeze_due(self.iteration)

    def _lambda(self, freeze_at: int | None):  # noqa: ANN202 - a closure for LambdaLR
        warmup = self.warmup
        return lambda k: lr_factor(k, warmup, freeze_at)

    def lrs(self) -> dict[str, float]:
        """Current lr per group name (``image.encoder`` -> lr)."""
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def step(self, loss: torch.Tensor, nets: Any = None) -> bool:
        """Backward + clipped optimiser step + EMA; ``False`` (skipped on all ranks) for a non-finite loss.

        Args:
            loss: the step's total loss.
            nets: the step's :class:`~lzn_core.train.passes.OnePass` / ``TwoPass``: what DeepSpeed
                differentiates is ``nets.loss_for_backward(loss)`` (a two-pass step's gradients,
                taken micro-batch by micro-batch, go through one DeepSpeed backward). None: ``loss``.

        The skip decision is the step's one host sync: the finite flag is read once, after the
        forward (all ranks' flags reduced first), before anything is reduced.
        """
        i = self.iteration  # 0-based index of this iteration (its freezing was done when it began)
        bad = (~torch.isfinite(loss.detach()).all()).to(torch.float32).reshape(1)  # on the device
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        self.iteration += 1
        if bad.item() > 0:
            self.skipped += 1
            if nets is not None:
                nets.discard()
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()  # keep the lr schedule on the iteration count
            self._freeze_due(self.iteration)
            return False
        self.ds.backward(loss if nets is None else nets.loss_for_backward(loss))
        self.ds.step()
        self._update_ema(i)
        self._freeze_due(self.iteration)  # before the next step's forward
        return True

    def _freeze_due(self, iteration: int) -> None:
        """Modules whose ``train.freeze`` iteration has come stop requiring gradients.

        Called before iteration ``iteration``'s forward (at start, after a load, at the end of each
        step), never between a forward and its backward: a graph built with a parameter that then
        stops requiring gradients breaks a two-pass step (its decoder terms' gradients were taken
        for the parameters of the forward) and ZeRO 2's gradient hooks (they meet a parameter
        without ``.grad``).

        Their lr is 0 from then on (the schedule), and with no gradient they also take no
        share of the clipping norm; under ZeRO the gradients live in DeepSpeed's partitioned
        buffers, so zeroing ``p.grad`` after backward would not reach them. Their optimiser
        group is marked ``frozen`` (:func:`_skip_frozen_groups` skips it). Gradients still flow *through* a
        frozen module (a frozen decoder keeps training the encoder via z).
        """
        for freeze_at, params in self.freezes:
            if iteration >= freeze_at:
                for p in params:
                    p.requires_grad_(False)
        for group in self.optimizer.param_groups:
            freeze_at = group.get("freeze_at")
            group["frozen"] = freeze_at is not None and iteration >= freeze_at

    @torch.no_grad()
    def _update_ema(self, iteration: int) -> None:
        """EMA after iteration ``iteration``; entries of a module frozen by then keep their value."""
        if self.ema_decay <= 0:
            return
        k = self.ema_updates
        decay = min(self.ema_decay, (1.0 + k) / (10.0 + k))
        for name, value in self.model.state_dict().items():
            freeze_at = self.ema_freeze.get(name)
            if freeze_at is not None and iteration >= freeze_at and name in self.ema:
                continue
            if name not in self.ema or self.ema[name].shape != value.shape:
                self.ema[name] = value.detach().clone()
            elif value.is_floating_point():
                self.ema[name].lerp_(value.detach(), 1.0 - decay)
            else:
                self.ema[name].copy_(value)
        self.ema_updates += 1

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """EMA weights (the raw weights when EMA is off), with the model's current buffers."""
        own = self.model.state_dict()
        if self.ema_decay <= 0:
            return {k: v.detach().clone() for k, v in own.items()}
        out = {k: v.detach().clone() for k, v in own.items()}
        out.update({k: v.clone() for k, v in self.ema.items() if k in own and v.shape == own[k].shape})
        return out

    # ------------------------------------------------------------ checkpoints
    def save(self, step: int, client_state: dict[str, Any]) -> Path:
        """Write ``ckpt/step-<step>`` atomically and keep the last ``keep_checkpoints``
        (the directory layout: :mod:`~lzn_core.train.checkpoint`)."""
        root, tmp = staging(self.ckpt_dir, step)
        state = dict(client_state, engine=self._state())
        root.mkdir(parents=True, exist_ok=True)
        if self.zero_stage:
            _fill_missing_adam_state(self.optimizer)
        self.ds.save_checkpoint(str(root), tag=tmp, client_state=state, save_latest=False)
        (root / tmp).mkdir(exist_ok=True)
        torch.save(rng_state(), rng_file(root / tmp, rank()))  # each rank its own
        return commit(self.ckpt_dir, step, self.keep)

    def _state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "skipped": self.skipped,
            "ema_updates": self.ema_updates,
            "ema": {k: v.cpu() for k, v in self.ema.items()},
            "world_size": self.world_size,
        }

    def load(self, which: str | Path = "latest") -> dict[str, Any]:
        """Restore model, optimiser, scheduler, EMA, counters and this rank's generator states
        (the last thing done: build every module before calling it); returns the client state.

        A checkpoint written on another number of ranks is loaded too: ZeRO 1/2 partitions through
        DeepSpeed's universal checkpoint (converted once, beside the checkpoint), stage 0 as it is.

        Args:
            which: ``"latest"``, a tag (``step-500``) or a checkpoint directory path.
        """
        root, tag = resolve_checkpoint(self.ckpt_dir, which)
        src = root / tag
        saved = zero_partitions(src)  # ranks that wrote ZeRO partitions; 0: stage 0
        if bool(saved) != bool(self.zero_stage):
            was = f"ZeRO optimizer partitions of {ranks(saved)}" if saved else "no ZeRO partitions (stage 0)"
            raise LZNError(
                f"{src} holds {was}, but this run uses ZeRO stage {self.zero_stage}: resume it with the "
                "zero_optimization.stage it was written with (the recipe's deepspeed config)"
            )
        if saved and saved != self.world_size:
            load_root, seconds = universal_checkpoint(src)
            how = "reused" if seconds is None else f"converted in {seconds:.1f} s"
            self._say(
                f"resuming {src} (written by {ranks(saved)}) on {ranks(self.world_size)}: its ZeRO stage "
                f"{self.zero_stage} optimizer partitions are re-split by DeepSpeed's universal checkpoint "
                f"{load_root} ({how})"
            )
            path, client = self._load_universal(load_root, tag)
        else:
            path, client = self.ds.load_checkpoint(str(root), tag=tag)
        if path is None or client is None:
            raise LZNError(f"could not load checkpoint {src}")
        st = client.pop("engine")
        self.iteration, self.skipped, self.ema_updates = st["iteration"], st["skipped"], st["ema_updates"]
        self._freeze_due(self.iteration)
        self.ema = {k: v.to(self.device) for k, v in st["ema"].items()}
        written_by = st.get("world_size")
        if not saved and written_by is not None and written_by != self.world_size:
            self._say(
                f"resuming {src} (written by {ranks(written_by)}) on {ranks(self.world_size)}: ZeRO stage 0 keeps "
                "the whole optimizer state on every rank, loaded as it is"
            )
        rng = rng_file(src, rank())
        if written_by is not None and written_by != self.world_size:
            if rank() == 0:
                warnings.warn(
                    f"{src} was written by {ranks(written_by)}, now {self.world_size}: the global batch, the "
                    "data stream, the lr schedule, the optimizer and the EMA continue, but dropout and other "
                    "per-rank generator draws differ from an uninterrupted run",
                    LZNWarning,
                    stacklevel=2,
                )
            if rng.is_file():  # a rank that had a stream continues it; the others keep their seed_rank
                set_rng_state(torch.load(rng, weights_only=True))
        elif rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
        else:
            by = f"{written_by} ranks" if written_by is not None else "a version without per-rank states"
            warnings.warn(
                f"{src} has no generator state for rank {rank()} (written by {by}, now "
                f"{self.world_size} ranks): the run continues from it, but dropout and other global-RNG "
                "draws differ from an uninterrupted run",
                LZNWarning,
                stacklevel=2,
            )
        return client

    def _load_universal(self, load_root: Path, tag: str) -> tuple[Any, Any]:
        """DeepSpeed's ``load_checkpoint`` with ``load_universal`` on for this one load.

        A universal load restores the parameters from their fp32 copies and skips the module's
        state dict, so the module's buffers are restored here from the checkpoint's model file.
        """
        from deepspeed.utils import logger as ds_logger

        config = self.ds._config  # DeepSpeedConfig: load_universal is read at load time only
        before = config.load_universal_checkpoint
        config.load_universal_checkpoint = True
        ds_logger.addFilter(_no_mpu_warning)
        try:
            path, client = self.ds.load_checkpoint(str(load_root), tag=tag)
        finally:
            config.load_universal_checkpoint = before
            ds_logger.removeFilter(_no_mpu_warning)
        buffers = {name: b for name, b in self.model.named_buffers()}
        if path is not None and buffers:
            saved = torch.load(path, map_location="cpu", weights_only=False)["module"]
            with torch.no_grad():
                for name, buffer in buffers.items():
                    if name in saved:
                        buffer.copy_(saved[name])
        return path, client

    @staticmethod
    def _say(line: str) -> None:
        if rank() == 0:
            print(line, flush=True)
