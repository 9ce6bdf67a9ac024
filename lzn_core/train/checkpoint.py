"""Checkpoint directories of a run: ``<run>/ckpt/step-<k>`` written whole, ``latest`` naming one.

A checkpoint is written as ``tmp-<k>`` and renamed to ``step-<k>`` only when complete, then
``latest`` is replaced atomically; ``tmp-*`` leftovers of a crash are never read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import LZNError

STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints ``step-<k>`` under ``ckpt_dir`` (``tmp-*`` leftovers are ignored)."""
    if not Path(ckpt_dir).is_dir():
        return []
    return [p for p in Path(ckpt_dir).iterdir() if p.is_dir() and STEP_DIR.match(p.name)]


def resolve_checkpoint(ckpt_dir: Path, which: str | Path = "latest") -> tuple[Path, str]:
    """``(root, tag)`` of a checkpoint: ``latest``, a tag under ``ckpt_dir`` or a directory path."""
    ckpt_dir = Path(ckpt_dir)
    if str(which) == "latest":
        latest = ckpt_dir / "latest"
        if not latest.is_file():
            raise LZNError(f"no checkpoint to resume from: {latest} does not exist")
        tag = latest.read_text().strip()
        if not (ckpt_dir / tag).is_dir():
            raise LZNError(f"{latest} names {tag!r}, which is missing under {ckpt_dir}")
        return ckpt_dir, tag
    path = Path(which)
    if path.is_dir():
        return path.parent, path.name
    if (ckpt_dir / str(which)).is_dir():
        return ckpt_dir, str(which)
    found = ", ".join(sorted(p.name for p in list_checkpoints(ckpt_dir))) or "none"
    raise LZNError(f"checkpoint {which!r} not found (checkpoints under {ckpt_dir}: {found})")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
