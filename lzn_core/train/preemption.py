"""Preemption: a stop signal on any rank ends the run at the next step boundary, checkpointed.

Schedulers send a signal before they kill a job (SLURM, Kubernetes and spot instances SIGTERM;
SLURM's ``--signal=USR1@300`` minutes before the time limit), often to every process of it: the
launcher, the ranks and their data workers. ``recipes/train.py`` runs its loop inside
:class:`Preemption`:

* a signal of ``train.stop_signals`` only records itself: the handler does no I/O, so a signal in
  the middle of a checkpoint write, an evaluation or an export interrupts nothing, and a signal
  repeated (the scheduler's, then the launcher's copy) changes nothing;
* after every optimiser step :meth:`Preemption.boundary` does one all-reduce (MAX) of two numbers
  on a gloo group of its own (host memory: no device synchronisation): the stop signal this rank
  got (0: none) and, on rank 0 only, whether ``train.ckpt_every_minutes`` have passed since the
  last checkpoint. Every rank thus stops after the same step, whichever ranks the signal reached,
  and writes the checkpoint a periodic one of that step would be (exact resume);
* :meth:`Preemption.stopped` prints one line on rank 0 (where the checkpoint is, how to resume)
  and returns :data:`STOPPED` (75, ``EX_TEMPFAIL`` of ``sysexits.h``), every rank's exit status;
* ``train.stop_deadline``: that many seconds after the first signal (or after the agreed stop, on
  a rank the signal did not reach) a watcher thread ends the process with :data:`DEADLINE` (76)
  wherever it is -- a collective waiting for a hung peer, a stalled file system. A checkpoint
  being written is then a ``tmp-<k>`` leftover that is never read; ``ckpt/latest`` still names
  the last complete one. The watcher hears of the signal through ``signal.set_wakeup_fd``, which
  the C-level handler writes to at once: a Python handler runs only when the main thread is back
  in the interpreter, which a blocked collective never is;
* processes forked while it is active (the DataLoader workers) block the stop signals: a signal
  sent to the whole process tree must not kill a rank's data workers in the step that still
  needs them (torch ends a worker that gets SIGTERM from anyone but its parent, and the rank then
  fails). They end with their rank;
* :meth:`Preemption.barrier`: the other ranks wait for rank 0's evaluation or export here, on a
  second gloo group whose timeout is ``train.eval_timeout_minutes``, not in the next step's
  collective, whose timeout (``train.timeout_minutes``) is for a training step.

A stop agreed after the last step does not end the run early: its checkpoint is written and the
evaluation and export of the end of training run as usual (the deadline still holds).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ..errors import LZNWarning

STOPPED = 75
"""Exit status after a stop signal: the checkpoint of the step reached is written; resume it."""

DEADLINE = 76
"""Exit status when ``train.stop_deadline`` passed first: resume continues from ``ckpt/latest``."""

_WAKE, _QUIT = 0, 255  # bytes on the wakeup pipe besides signal numbers (1..64)
_active: Preemption | None = None


def _after_fork_in_child() -> None:
    """In a process forked by an active :class:`Preemption` (a data worker): block the stop signals
    and detach from the parent's wakeup pipe."""
    global _active
    if _active is None:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, _active.signals)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # pragma: no cover - forked from a thread that is not the main one
        pass
    _active = None


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True)
class Boundary:
    """What every rank does after a step: ``save`` its checkpoint; ``stop`` after that."""

    stop: bool
    save: bool


class Preemption:
    """Stop signals, the deadline, wall-time checkpoints and waits for rank 0, for one training loop.

    Args:
        train: the recipe's ``train`` section (``stop_signals``, ``stop_deadline``,
            ``ckpt_every_minutes``, ``iterations``, ``timeout_minutes``, ``eval_timeout_minutes``).
        rank: this process's rank.
        world: the number of ranks (every rank must construct it: it creates a process group).
        prog: the program name of the printed lines.
    """

    def __init__(self, train: Any, *, rank: int, world: int, prog: str = "train.py") -> None:
        self.signals: list[int] = [int(signal.Signals[name]) for name in train.stop_signals]
        self.deadline: float | None = train.stop_deadline
        self.every = None if train.ckpt_every_minutes is None else 60.0 * float(train.ckpt_every_minutes)
        self.iterations = int(train.iterations)
        self.rank, self.world, self.prog = rank, world, prog
        self.group: Any = None  # the per-step all-reduce (train.timeout_minutes)
        self.wait_group: Any = None  # the waits for rank 0 (train.eval_timeout_minutes)
        if world > 1 and torch.distributed.is_initialized():
            timeout = timedelta(minutes=float(train.timeout_minutes))
            self.group = torch.distributed.new_group(backend="gloo", timeout=timeout)
            timeout = timedelta(minutes=float(train.eval_timeout_minutes))
            self.wait_group = torch.distributed.new_group(backend="gloo", timeout=timeout)
        self.received = 0  # the first stop signal this process got (0: none)
        self.count = 0  # how many it got
        self.agreed = 0  # the signal every rank agreed to stop on (0: none yet)
        self.saved = False  # the stop's checkpoint is written: a deadline now exits with STOPPED
        self.last_save = time.monotonic()
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._watcher: threading.Thread | None = None
        self._stop_line = ""

    # ------------------------------------------------------------------ installing
    def __enter__(self) -> Preemption:
        global _active
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "training runs outside the main thread: stop signals are not handled (no preemption "
                "checkpoint); run it from the main thread of its process",
                LZNWarning,
                stacklevel=2,
            )
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, args=(r,), name="lzn-preemption", daemon=True)
        self._watcher.start()
        _active = self
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Uninstall, unless a signal came: then the stop signals stay ignored until the process
        exits (Python's own shutdown would restore their default, deadly action) and the deadline
        stays, bounding the process's teardown too (:meth:`release` ends both)."""
        if self._stop_line:  # printed here: after the progress bar of the same with-statement closed
            print(self._stop_line, file=sys.stderr, flush=True)
        if self._pipe is None:
            return
        if self.received or self.agreed:
            for sig in self.signals:
                signal.signal(sig, signal.SIG_IGN)
            return
        self.release()

    def release(self) -> None:
        """Uninstall now: the previous signal handlers and wakeup fd, no watcher, no deadline. The
        with-statement does it unless a signal came; after a stop, a process that goes on (a
        training run in-process: a notebook, the conformance kit's trial) calls it."""
        global _active
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        os.write(self._pipe[1], bytes([_QUIT]))
        if self._watcher is not None:
            self._watcher.join()
        os.close(self._pipe[1])
        self._pipe = None
        if _active is self:
            _active = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked child that still runs the parent's handler
            return
        self.count += 1
        if not self.received:
            self.received = signum

    def _watch(self, r: int) -> None:
        """The watcher thread: starts the deadline at the first stop signal (or the agreed stop)."""
        started: float | None = None
        try:
            while True:
                wait = None
                if started is not None and self.deadline is not None:
                    wait = max(0.0, started + self.deadline - time.monotonic())
                ready, _, _ = select.select([r], [], [], wait)
                if not ready:
                    self._hard_exit()
                data = os.read(r, 512)
                if _QUIT in data:
                    return
                if started is None and any(b == _WAKE or b in self.signals for b in data):
                    started = time.monotonic()
        finally:
            os.close(r)

    def _hard_exit(self) -> None:
        code = STOPPED if self.saved else DEADLINE
        if self.rank == 0 and code == DEADLINE:
            name = signal.Signals(self.agreed or self.received or signal.SIGTERM).name
            line = (
                f"{self.prog}: no checkpoint within train.stop_deadline={self.deadline:g} s of {name}: "
                f"exiting with status {DEADLINE}; --resume continues from ckpt/latest\n"
            )
            os.write(2, line.encode())  # not sys.stderr: the main thread may hold its lock
        os._exit(code)

    # ------------------------------------------------------------------ the loop's calls
    def boundary(self, step: int, periodic: bool = False) -> Boundary:
        """After step ``step``: one all-reduce decides, the same on every rank, whether to save
        (``periodic``, the wall-time interval on rank 0's clock, or a stop) and whether to stop."""
        timed = self.rank == 0 and self.every is not None and time.monotonic() - self.last_save >= self.every
        flags = torch.tensor([self.received, int(timed)], dtype=torch.int64)
        if self.group is not None:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self.group)
        signum, timed = int(flags[0]), bool(flags[1])
        if signum and not self.agreed:
            self.agreed = signum
            if self._pipe is not None:  # start this rank's deadline if its own signal did not
                os.write(self._pipe[1], bytes([_WAKE]))
        save = periodic or timed or bool(signum)
        if save:
            self.last_save = time.monotonic()
        return Boundary(stop=bool(signum) and step < self.iterations, save=save)

    def stopped(self, step: int, checkpoint: Path) -> int:
        """After the stop's checkpoint: the exit status; rank 0 prints where the checkpoint is and how
        to resume when the with-statement ends."""
        self.saved = True
        if self.rank == 0:
            name = signal.Signals(self.agreed).name
            self._stop_line = (
                f"{self.prog}: stopped by {name} after step {step} of {self.iterations}: checkpoint "
                f"{checkpoint}; to continue, run the same command with --resume (exit status {STOPPED})"
            )
        return STOPPED

    def barrier(self) -> None:
        """The other ranks wait here for rank 0's evaluation or export (``train.eval_timeout_minutes``)."""
        if self.wait_group is not None:
            torch.distributed.barrier(group=self.wait_group)
