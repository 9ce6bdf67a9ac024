"""Checkpoint directories of a run: ``<run>/ckpt/step-<k>`` written whole, ``latest`` naming one.

A checkpoint is written as ``tmp-<k>`` and renamed to ``step-<k>`` only when complete, then
``latest`` is replaced atomically; ``tmp-*`` leftovers of a crash are never read. Pruning keeps
the newest ``keep`` checkpoints and never the one ``latest`` names.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from ..errors import LZNError

STEP_DIR = re.compile(r"^step-(\d+)$")


def step_of(tag: str | Path) -> int | None:
    """The step of a checkpoint named ``step-<k>`` (a tag or a path), else None."""
    match = STEP_DIR.match(Path(tag).name)
    return int(match.group(1)) if match else None


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints ``step-<k>`` under ``ckpt_dir``, by step (``tmp-*`` leftovers are ignored)."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [p for p in Path(ckpt_dir).iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: step_of(p) or 0)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``ckpt/latest`` names (it may name a missing checkpoint), or None without one."""
    latest = Path(ckpt_dir) / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def resolve_checkpoint(ckpt_dir: Path, which: str | Path = "latest") -> tuple[Path, str]:
    """``(root, tag)`` of a checkpoint: ``latest``, a tag under ``ckpt_dir`` or a directory path."""
    ckpt_dir = Path(ckpt_dir)
    if str(which) == "latest":
        tag = latest_tag(ckpt_dir)
        if tag is None:
            raise LZNError(f"no checkpoint to resume from: {ckpt_dir / 'latest'} does not exist")
        if not (ckpt_dir / tag).is_dir():
            found = ", ".join(p.name for p in list_checkpoints(ckpt_dir)) or "none"
            raise LZNError(
                f"{ckpt_dir / 'latest'} names {tag!r}, which is missing under {ckpt_dir} "
                f"(checkpoints there: {found}); pass --from TAG to resume one of them"
            )
        return ckpt_dir, tag
    if (ckpt_dir / str(which)).is_dir() and not Path(which).is_absolute():
        return ckpt_dir, str(which)
    path = Path(which)
    if path.is_dir():
        return path.parent, path.name
    found = ", ".join(p.name for p in list_checkpoints(ckpt_dir)) or "none"
    raise LZNError(f"checkpoint {str(which)!r} not found (checkpoints under {ckpt_dir}: {found})")


def prune(ckpt_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` checkpoints, sparing the one ``latest`` names, and
    ``tmp-*`` leftovers of a crash mid-write; returns what was removed."""
    protected = latest_tag(ckpt_dir)
    old = [p for p in list_checkpoints(ckpt_dir)[: -max(keep, 1)] if p.name != protected]
    old += sorted(Path(ckpt_dir).glob("tmp-*"))
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
