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
* ``--fresh``: move every file the training script writes to ``previous-<n>/``, start at 0;
* ``--resume auto`` (a requeued job's one command line): resume when ``ckpt/latest`` exists, else
  start (a run that finished without checkpoints is still refused).

Rank 0 holds ``<run>/lock`` from :meth:`RunDir.begin` until its process ends, so two runs never
write one directory: a second start is refused in one line naming the holder. The lock is a file
created with ``O_EXCL`` (atomic on local disks, NFSv3+ and Lustre, where ``flock`` may not reach
other nodes) that names host, pid and SLURM job; a thread touches it every 30 s. A lock left by a
process that died without releasing it (SIGKILL) is taken over when its process is gone (same
host), when it belongs to an earlier attempt of this SLURM job (a requeue: a higher
``SLURM_RESTART_COUNT``), or when it has not been touched for 5 minutes.

On resume the rows of ``metrics.jsonl`` after the resumed step (logged between the checkpoint
and a crash; they are logged again) are dropped, atomically, before new rows are appended.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import LZNError
from .checkpoint import barrier, latest_tag, list_checkpoints, rank, resolve_checkpoint, step_of, write_atomic
from .monitor import WANDB_ID

LOCK = "lock"
HEARTBEAT_S = 30.0
"""How often the holder touches ``<run>/lock``."""
STALE_AFTER_S = 300.0
"""A lock not touched for this long is taken over (its holder died on another host)."""

OUTPUTS = (
    "ckpt",
    "metrics.jsonl",
    "recipe.yaml",
    "samples",
    "final",
    "loss.png",
    "tensorboard",
    "csv",
    WANDB_ID,
)
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
        self.lock: RunLock | None = None

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
    def begin(self, *, resume: bool | str, checkpoint: str | None = None, fresh: bool = False) -> Start:
        """Lock the directory, decide how the run starts here and prepare it; the same on every rank.

        Rank 0 takes ``<run>/lock`` (every rank fails alike when it cannot); every rank reads the
        directory, then rank 0 moves files aside where the decision says so (the others wait) and
        completes ``Start.message``, which the caller prints on rank 0.

        Args:
            resume: True (``--resume``), ``"auto"`` (resume if ``ckpt/latest`` exists, else start)
                or False.
            checkpoint: ``--from``: a tag of this run or a checkpoint directory.
            fresh: ``--fresh``.

        Raises:
            LZNError: another process holds the lock; the directory holds a run and neither
                ``resume`` nor ``fresh`` is set; ``resume`` without a checkpoint; the directory
                cannot be created.
        """
        try:
            self._lock()
            if resume == "auto":
                resume = latest_tag(self.ckpt) is not None or self.holds_run()
            plan = self._plan(resume=bool(resume), checkpoint=checkpoint, fresh=fresh)
            barrier()  # every rank has looked before rank 0 moves anything
            if rank() == 0:
                plan = self._prepare(plan, fresh=fresh)
                if self.lock is not None and self.lock.taken_over:
                    plan = Start(plan.checkpoint, plan.step, f"{plan.message}; {self.lock.taken_over}")
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LZNError(
                f"cannot write the run directory {self.path}: {exc.strerror or exc}; "
                "choose another --output (or fix its permissions)"
            ) from exc
        barrier()
        return plan

    def _lock(self) -> None:
        """Rank 0 takes the lock; its outcome (ok, or the refusal) is broadcast so all ranks agree."""
        message = ""
        if rank() == 0:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self.lock = RunLock.acquire(self.path / LOCK)
            except LZNError as exc:
                message = str(exc)
            except OSError as exc:
                message = (
                    f"cannot write the run directory {self.path}: {exc.strerror or exc}; "
                    "choose another --output (or fix its permissions)"
                )
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            box = [message]
            torch.distributed.broadcast_object_list(box, src=0)
            message = box[0]
        if message:
            raise LZNError(message)

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
            (self.path / WANDB_ID).unlink(missing_ok=True)  # a run that saved no checkpoint: a new W&B run
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


class RunLock:
    """``<run>/lock``, held by one process (rank 0 of a run) until it ends; see the module docstring.

    Created by :meth:`acquire`; released when the holder is garbage collected or its process exits
    normally (an error or a stop included); a SIGKILL leaves it to be taken over.
    """

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path, self.record = path, record
        self.taken_over: str | None = None  # why an earlier holder's lock was taken over
        self._stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(path, self._stop), name="lzn-lock", daemon=True)
        beat.start()
        self._finalizer = weakref.finalize(self, _release, path, record, self._stop)

    @classmethod
    def acquire(cls, path: Path) -> RunLock:
        """Take ``path`` (or a stale lock there, moved to ``lock.stale``); refuse a live one in one line."""
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
            "token": uuid.uuid4().hex,
        }
        taken = None
        for _ in range(5):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = _read_lock(path)
                if held is None and _age(path) < 10.0:  # vanished (released) or being written: look again
                    time.sleep(0.5)
                    continue
                raw, held = held, held or {"host": "?", "pid": "?"}  # unreadable for 10 s: its writer died
                same = held.get("host") == record["host"] and held.get("pid") == record["pid"]
                why = "this process's own" if same else _stale(path, held, record)
                if why is None:
                    raise LZNError(_in_use(path, held)) from None
                taken = (
                    None
                    if same
                    else f"took over the lock of pid {held.get('pid')} on {held.get('host')} ({why})"
                )
                aside = path.with_name(f"{LOCK}.stale")
                os.replace(path, aside)
                if _read_lock(aside) != raw:  # another process took it over in between: give it back
                    os.replace(aside, path)
                    raise LZNError(_in_use(path, _read_lock(path) or held)) from None
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            lock = cls(path, record)
            lock.taken_over = taken
            return lock
        raise LZNError(f"cannot take the lock {path}: it keeps changing; is another run starting there?")

    def release(self) -> None:
        """Remove the lock file if it is still this holder's."""
        self._finalizer()


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _stale(path: Path, held: dict[str, Any], me: dict[str, Any]) -> str | None:
    """Why the lock ``held`` is dead (None: it may be alive)."""
    if held.get("host") == me["host"] and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return "its process is gone"
        except PermissionError:
            pass
    if me["slurm_job"] and held.get("slurm_job") == me["slurm_job"]:
        if int(held.get("slurm_restart") or 0) < me["slurm_restart"]:
            return "an earlier attempt of this SLURM job"
    if held.get("pid") == "?":
        return "unreadable"
    age = _age(path)
    return f"not touched for {age / 60:.0f} min" if age > STALE_AFTER_S else None


def _age(path: Path) -> float:
    """Seconds since ``path`` was last touched (0 when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _in_use(path: Path, held: dict[str, Any]) -> str:
    job = f", SLURM job {held['slurm_job']}" if held.get("slurm_job") else ""
    return (
        f"run directory {path.parent} is in use by pid {held.get('pid')} on {held.get('host')}{job} "
        f"(since {held.get('started')}): wait for that run to end or choose another --output; if it "
        f"is dead, delete {path} (a lock not touched for {STALE_AFTER_S / 60:.0f} min is taken over)"
    )


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:
            return


def _release(path: Path, record: dict[str, Any], stop: threading.Event) -> None:
    stop.set()
    if _read_lock(path) == record:
        path.unlink(missing_ok=True)
