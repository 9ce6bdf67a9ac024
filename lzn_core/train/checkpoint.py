"""Checkpoint directories of a run: ``<run>/ckpt/step-<k>`` written whole, ``latest`` naming one.

The one module that knows the layout: the engine writes a checkpoint's files into
:func:`staging` (DeepSpeed's, plus :func:`rng_file` per rank), :func:`commit` renames it to
``step-<k>`` only when every rank is done, then replaces ``latest`` atomically and prunes;
``tmp-*`` leftovers of a crash are never read. Reading (:func:`resolve_checkpoint`,
:func:`list_checkpoints`) and pruning (the newest ``keep``, never the one ``latest`` names) are
here too; what a run directory does with them (resume, ``--fresh``, the lock) is
:mod:`~lzn_core.train.rundir`'s policy.

A ZeRO (stage 1, 2) checkpoint holds one optimizer partition per rank, and DeepSpeed loads it
only on as many ranks as wrote it. :func:`universal_checkpoint` converts it, once, with
DeepSpeed's own ``ds_to_universal`` into ``step-<k>/universal/`` (DeepSpeed's universal layout:
every parameter's fp32 weights and Adam moments whole, re-split at load by ``load_universal``
on any number of ranks). The conversion writes ``step-<k>/universal.partial-<id>/`` and renames
it to ``universal`` only when complete: the checkpoint's own files are only read (DeepSpeed reads
every file under its input folder, so it is given a folder of links to the checkpoint's files,
not the checkpoint with what lies in it), a failed conversion removes its partial folder, and a
``universal.partial-*`` left by a killed one is never read (it goes when the checkpoint is
pruned). Living inside the checkpoint, the universal form is pruned, moved aside and replaced
with it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from ..errors import LZNError

STEP_DIR = re.compile(r"^step-(\d+)$")
ZERO_PARTITION = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")
UNIVERSAL = "universal"
"""The folder, inside a checkpoint, holding its universal form (DeepSpeed's load root)."""
CONVERSION_TIMEOUT = timedelta(hours=6)
"""How long the other ranks wait for rank 0's conversion."""


def staging(ckpt_dir: Path, step: int) -> tuple[Path, str]:
    """``(root, tag)`` where every rank writes checkpoint ``step`` before :func:`commit`: ``tmp-<step>``."""
    return Path(ckpt_dir), f"tmp-{step}"


def rng_file(ckpt: Path, rank_: int) -> Path:
    """Rank ``rank_``'s generator states inside checkpoint folder ``ckpt``."""
    return Path(ckpt) / f"rng-rank{rank_}.pt"


def commit(ckpt_dir: Path, step: int, keep: int) -> Path:
    """Make the staged checkpoint ``step`` the run's: after every rank wrote its part (a
    collective), rank 0 renames ``tmp-<step>`` to ``step-<step>``, points ``latest`` at it
    atomically and keeps the newest ``keep``; the other ranks wait for that. Returns the folder."""
    root, tmp = staging(ckpt_dir, step)
    final = root / f"step-{step}"
    barrier()
    if rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(root / tmp, final)
        write_atomic(root / "latest", final.name)
        prune(root, keep)
    barrier()
    return final


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


def ranks(n: int) -> str:
    """``1 rank``, ``2 ranks``: for messages."""
    return f"{n} rank" if n == 1 else f"{n} ranks"


def zero_partitions(ckpt: Path) -> int:
    """Ranks whose ZeRO optimizer partitions checkpoint ``ckpt`` holds (0: no ZeRO files, stage 0)."""
    if not Path(ckpt).is_dir():
        return 0
    return len({m.group(1) for p in Path(ckpt).iterdir() if (m := ZERO_PARTITION.match(p.name))})


def universal_info() -> tuple[str, dict[str, Any]]:
    """``(attribute, value)``: what a module must carry for ``ds_to_universal`` to accept its
    checkpoints (DeepSpeed's ``UNIVERSAL_CHECKPOINT_INFO``, saved by ``save_checkpoint``)."""
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    return UNIVERSAL_CHECKPOINT_INFO, {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}


def universal_checkpoint(ckpt: Path) -> tuple[Path, float | None]:
    """The universal form of ZeRO checkpoint ``ckpt``: ``(load root, seconds the conversion took)``.

    Rank 0 converts when ``ckpt/universal`` does not exist yet (seconds None: reused), the
    others wait in a collective; DeepSpeed loads ``load root / ckpt.name`` with ``load_universal``.

    Raises:
        LZNError: on every rank, when the conversion failed (the checkpoint itself is untouched).
    """
    ckpt = Path(ckpt)
    out = ckpt / UNIVERSAL
    seconds: float | None = None
    error: str | None = None
    # the other ranks wait for rank 0 in a gloo group of their own, made before the conversion, whose
    # timeout is CONVERSION_TIMEOUT, not the training group's (DeepSpeed's default is 10 minutes, which
    # a large checkpoint's conversion can exceed); a rank that dies still fails the wait at once
    group: Any = None
    if torch.distributed.is_initialized():
        group = torch.distributed.new_group(backend="gloo", timeout=CONVERSION_TIMEOUT)
    if rank() == 0 and not out.is_dir():
        try:
            seconds = _convert(ckpt, out)
        except Exception as exc:  # reported on every rank below, as one line
            last = str(exc).strip().splitlines()
            error = (
                f"converting {ckpt} to DeepSpeed's universal checkpoint failed ({type(exc).__name__}: "
                f"{last[-1] if last else 'no message'}); the checkpoint is untouched: resume it on "
                f"{ranks(zero_partitions(ckpt))}, or fix the cause and resume again"
            )
    if group is not None:
        box = [(error, seconds)]
        try:
            torch.distributed.broadcast_object_list(box, src=0, group=group)
        finally:
            torch.distributed.destroy_process_group(group)
        error, seconds = box[0]
    if error is not None:
        raise LZNError(error)
    return out, seconds


def _convert(ckpt: Path, out: Path) -> float:
    """``ds_to_universal`` of ``ckpt`` into a partial folder, renamed to ``out`` when complete."""
    from deepspeed.checkpoint import ds_to_universal

    start = time.perf_counter()
    partial = ckpt / f"{UNIVERSAL}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    view = partial / "input"  # the checkpoint's own files: DeepSpeed reads every file under its input
    args = argparse.Namespace(
        input_folder=str(view),
        output_folder=str(partial / ckpt.name),  # DeepSpeed writes partial/latest_universal beside it
        num_extract_workers=1,  # in this process: no worker pool forked from a rank
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # only for checkpoints written before the engine saved the info
    )
    log = io.StringIO()
    try:
        view.mkdir(parents=True)
        for path in ckpt.iterdir():  # not the folders in it (an earlier attempt's partial one)
            if path.is_file():
                (view / path.name).symlink_to(path.resolve())
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            ds_to_universal.main(args)
        shutil.rmtree(view)
        try:
            partial.rename(out)
        except OSError:
            if not out.is_dir():  # not "another job converted it first"
                raise
            shutil.rmtree(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return time.perf_counter() - start
