"""DeepSpeed plumbing for ``recipes/train.py``: init, optimiser step, EMA, freeze, checkpoints.

The math of a training step lives in the recipe script; this module hides what a
reader does not need to see there:

* ``setup_distributed()`` fills the launcher's environment variables when the script
  runs as plain ``python`` and starts ``torch.distributed`` (gloo on CPU, nccl on GPU).
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
* ``Engine.save(step, client_state)`` writes ``ckpt/tmp-<step>`` (DeepSpeed's files plus
  ``rng-rank<r>.pt``, each rank's own generator states), renames it to ``ckpt/step-<step>``
  and then replaces ``ckpt/latest`` atomically: a crash mid-write leaves the previous
  checkpoint usable. ``Engine.load`` restores all of it, this rank's generators last.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LZNError, LZNWarning
from .checkpoint import barrier, prune, rank, resolve_checkpoint, write_atomic
from .monitor import configure as configure_monitor
from .rng import rng_state, set_rng_state

WARMUP_START = 1.0 / 5000.0  # warm-up starts at lr/5000 (docs/method.md §7)


def setup_distributed() -> tuple[int, int, int]:
    """Start ``torch.distributed`` for this process; returns ``(rank, world_size, local_rank)``.

    Plain ``python recipes/train.py`` gets a one-process group (RANK=0, WORLD_SIZE=1).
    On CPU the backend is gloo and DeepSpeed's shared-memory comm op is not built
    (it would compile C++ for minutes and is not needed for gloo).
    """

    import deepspeed
    import deepspeed.comm.torch  # noqa: F401 - patched below (the attribute path is shadowed by torch)

    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:  # one process without a launcher: any free port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    cpu = not torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR") == "cpu"
    if cpu:
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # type: ignore[attr-defined]
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl", verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if not cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def teardown_distributed() -> None:
    """End this process's group so that a later run in the same process (a notebook, a test
    session) starts a fresh one: the torch group, DeepSpeed's communication backend and the clone
    of the world group DeepSpeed caches (a stale clone fails the next engine's broadcast)."""
    import deepspeed.comm.comm as ds_comm
    import deepspeed.utils.groups as ds_groups

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    ds_comm.cdb = None
    ds_groups._WORLD_GROUP = None


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
    src = getattr(recipe, "deepspeed", None)
    cfg: dict[str, Any] = {}
    if isinstance(src, dict):
        cfg = json.loads(json.dumps(src))
    elif src:
        path = Path(src)
        candidates = [path] if path.is_absolute() else [(base_dir or Path.cwd()) / path, Path.cwd() / path]
        candidates.append(Path(__file__).resolve().parent.parent / "recipes" / path)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise LZNError(
                f"deepspeed config {src!r} not found (looked in {', '.join(map(str, candidates))})"
            )
        cfg = json.loads(found.read_text())
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
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg
        )
        self.model = self.ds.module
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
        i = self.iteration  # 0-based index of this iteration
        self._freeze_due(i)
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
            return False
        self.ds.backward(loss if nets is None else nets.loss_for_backward(loss))
        self.ds.step()
        self._update_ema(i)
        return True

    def _freeze_due(self, iteration: int) -> None:
        """Modules whose ``train.freeze`` iteration has come stop requiring gradients.

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
        """Write ``ckpt/step-<step>`` atomically and keep the last ``keep_checkpoints``."""
        tmp_tag, tag = f"tmp-{step}", f"step-{step}"
        state = dict(client_state, engine=self._state())
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.ds.save_checkpoint(str(self.ckpt_dir), tag=tmp_tag, client_state=state, save_latest=False)
        (self.ckpt_dir / tmp_tag).mkdir(exist_ok=True)
        torch.save(rng_state(), self.ckpt_dir / tmp_tag / f"rng-rank{rank()}.pt")  # each rank its own
        barrier()
        if rank() == 0:
            final = self.ckpt_dir / tag
            if final.exists():
                shutil.rmtree(final)
            os.replace(self.ckpt_dir / tmp_tag, final)
            write_atomic(self.ckpt_dir / "latest", tag)
            prune(self.ckpt_dir, self.keep)
        barrier()
        return self.ckpt_dir / tag

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

        Args:
            which: ``"latest"``, a tag (``step-500``) or a checkpoint directory path.
        """
        root, tag = resolve_checkpoint(self.ckpt_dir, which)
        path, client = self.ds.load_checkpoint(str(root), tag=tag)
        if path is None or client is None:
            raise LZNError(f"could not load checkpoint {root / tag}")
        st = client.pop("engine")
        self.iteration, self.skipped, self.ema_updates = st["iteration"], st["skipped"], st["ema_updates"]
        self.ema = {k: v.to(self.device) for k, v in st["ema"].items()}
        rng = root / tag / f"rng-rank{rank()}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
        else:
            by = f"{st['world_size']} ranks" if "world_size" in st else "a version without per-rank states"
            warnings.warn(
                f"{root / tag} has no generator state for rank {rank()} (written by {by}, now "
                f"{self.world_size} ranks): the run continues from it, but dropout and other global-RNG "
                "draws differ from an uninterrupted run",
                LZNWarning,
                stacklevel=2,
            )
        return client
