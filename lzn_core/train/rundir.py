"""A run directory, and how a run starts in one: resumed, started over or refused, never silently.

::

    <run>/ckpt/step-<k>, ckpt/latest   checkpoints (lzn_core.train.checkpoint)
    <run>/metrics.jsonl               one JSON row per logged or evaluated step ("step" in each)
    <run>/recipe.yaml                 the resolved recipe
    <run>/samples/, final/, loss.png  sample grids, the exported model, the loss plot
    <run>/previous-<n>/               an earlier run's files, moved aside (never deleted)

:meth:`RunDir.begin` decides, from the directory and the flags, on every rank alike:

* the directory holds no run (no checkpoint, no ``final/``): start at step 0; rows left in
  ``metrics.jsonl`` by an attempt that saved no checkpoint are dropped;
* it holds a run and neither ``--resume`` nor ``--fresh`` is given: refuse, saying both;
* ``--resume``: continue from ``ckpt/latest`` (``--from CKPT``: a tag of this run or a checkpoint
  directory). Resuming from an earlier checkpoint of this run moves the later checkpoints (and a
  copy of ``metrics.jsonl``) to ``previous-<n>/``: the run branches, nothing is lost;
* ``--fresh``: move every file the training script writes to ``previous-<n>/``, start at 0.

On resume the rows of ``metrics.jsonl`` after the resumed step (logged between the checkpoint
and a crash; they are logged again) are dropped, atomically, before new rows are appended.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LZNError
from .checkpoint import barrier, latest_tag, list_checkpoints, rank, resolve_checkpoint, step_of, write_atomic

OUTPUTS = ("ckpt", "metrics.jsonl", "recipe.yaml", "samples", "final", "loss.png")
"""What ``recipes/train.py`` writes into a run directory (what ``--fresh`` moves aside)."""


@dataclass(frozen=True)
class Start:
    """How a run starts: the checkpoint to resume (None: step 0) and the line that says so."""

    checkpoint: Path | None
    step: int
    message: str


class RunDir:
    """The run directory ``path`` (``--output`` or the recipe's ``output_dir``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt = self.path / "ckpt"
        self.metrics = self.path / "metrics.jsonl"

    def holds_run(self) -> bool:
        """True when a run has left results here: a checkpoint (or ``latest``) or ``final/``."""
        return (
            bool(list_checkpoints(self.ckpt))
            or (self.ckpt / "latest").exists()
            or (self.path / "final").exists()
        )

    def describe(self) -> str:
        """``checkpoints up to step-20, final/`` -- what a run left here, for messages."""
        found, latest = list_checkpoints(self.ckpt), latest_tag(self.ckpt)
        parts = [f"checkpoints up to {found[-1].name}"] if found else []
        parts += [f"ckpt/latest naming a missing {latest!r}"] if latest and not found else []
        return ", ".join(parts + [f"{n}/" for n in ("final",) if (self.path / n).exists()]) or "no results"

    # ------------------------------------------------------------------ starting
    def begin(self, *, resume: bool, checkpoint: str | None = None, fresh: bool = False) -> Start:
        """Decide how the run starts here and prepare the directory; the same on every rank.

        Every rank reads the directory, then rank 0 moves files aside where the decision says
        so (the others wait) and completes ``Start.message``, which the caller prints on rank 0.

        Raises:
            LZNError: the directory holds a run and neither ``resume`` nor ``fresh`` is set;
                ``resume`` without a checkpoint; the directory cannot be created.
        """
        try:
            plan = self._plan(resume=resume, checkpoint=checkpoint, fresh=fresh)
            barrier()  # every rank has looked before rank 0 moves anything
            if rank() == 0:
                plan = self._prepare(plan, fresh=fresh)
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LZNError(
                f"cannot write the run directory {self.path}: {exc.strerror or exc}; "
                "choose another --output (or fix its permissions)"
            ) from exc
        barrier()
        return plan

    def _plan(self, *, resume: bool, checkpoint: str | None, fresh: bool) -> Start:
        if fresh or not (resume or checkpoint):
            if self.holds_run() and not fresh:
                raise LZNError(
                    f"run directory {self.path} already holds a run ({self.describe()}): pass --resume "
                    f"to continue it, --fresh to start over (its files are moved to {self.path}/previous-<n>/), "
                    "or choose another --output"
                )
            return Start(None, 0, f"starting {self.path} at step 0")
        if checkpoint is None and latest_tag(self.ckpt) is None:
            raise LZNError(
                f"nothing to resume in {self.path}: no checkpoint ({self.ckpt / 'latest'} does not exist); "
                "run without --resume to start it"
            )
        root, tag = resolve_checkpoint(self.ckpt, checkpoint or "latest")
        step = step_of(tag)
        if step is None:
            raise LZNError(
                f"{root / tag} is not a checkpoint of recipes/train.py (expected a step-<k> directory)"
            )
        outside = root.resolve() != self.ckpt.resolve()
        if outside and self.holds_run():
            raise LZNError(
                f"run directory {self.path} already holds a run ({self.describe()}); to continue from "
                f"{root / tag} choose a new --output"
            )
        where = f"{root / tag}" if outside else f"ckpt/{tag}"
        return Start(root / tag, step, f"resuming {self.path} at step {step} ({where})")

    def _prepare(self, plan: Start, *, fresh: bool) -> Start:
        """Rank 0: move aside what the plan replaces; returns the plan with its message completed."""
        if fresh:
            moved = [n for n in OUTPUTS if (self.path / n).exists()]
            if not moved:
                return plan
            what, aside = self.describe(), self._aside()
            for name in moved:
                os.replace(self.path / name, aside / name)
            return Start(None, 0, f"{plan.message}; the previous run ({what}) is now in {aside}")
        if plan.checkpoint is None:
            dropped = self._drop_rows_after(0) if self.metrics.exists() else 0
            note = (
                f" (dropped {dropped} metrics rows of an attempt that saved no checkpoint)" if dropped else ""
            )
            return Start(None, 0, plan.message + note)
        later = [p for p in list_checkpoints(self.ckpt) if (step_of(p) or 0) > plan.step]
        if plan.checkpoint.parent.resolve() == self.ckpt.resolve() and later:
            aside = self._aside()
            (aside / "ckpt").mkdir()
            for path in later:
                os.replace(path, aside / "ckpt" / path.name)
            if self.metrics.exists():
                shutil.copy2(self.metrics, aside / self.metrics.name)
            write_atomic(self.ckpt / "latest", plan.checkpoint.name)
            names = ", ".join(p.name for p in later)
            plan = Start(
                plan.checkpoint,
                plan.step,
                f"{plan.message}; the later checkpoints ({names}) are now in {aside}",
            )
        dropped = self._drop_rows_after(plan.step) if self.metrics.exists() else 0
        note = (
            f"; dropped {dropped} metrics rows after step {plan.step} (they are logged again)"
            if dropped
            else ""
        )
        return Start(plan.checkpoint, plan.step, plan.message + note)

    def _aside(self) -> Path:
        n = 1
        while (self.path / f"previous-{n}").exists():
            n += 1
        aside = self.path / f"previous-{n}"
        aside.mkdir(parents=True)
        return aside

    # ------------------------------------------------------------------ metrics
    def _drop_rows_after(self, step: int) -> int:
        """Rewrite ``metrics.jsonl`` without rows of steps > ``step`` (and torn lines), atomically."""
        kept, dropped = [], 0
        for line in self.metrics.read_text().splitlines():
            try:
                row = json.loads(line)
                keep = int(row["step"]) <= step
            except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
                keep = False
            kept += [line] if keep else []
            dropped += not keep
        if dropped:
            write_atomic(self.metrics, "".join(f"{line}\n" for line in kept))
        return dropped

    def log(self, row: dict[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` (rank 0; :meth:`begin` has dropped the stale rows)."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
