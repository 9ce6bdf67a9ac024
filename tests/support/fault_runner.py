"""Faults injected into ``recipes/train.py`` from outside: one of its functions wrapped before ``main``
runs (the product code has no test hooks). Two ways to use it:

* in a subprocess: ``python tests/support/fault_runner.py WRAP TRAIN_ARGS...`` (e2e/test_cluster.py,
  e2e/test_distributed.py: ranks started as a launcher would);
* in-process: ``wrap(train_module, WRAP, monkeypatch.setattr)`` before ``train_module.main(...)``
  (train/test_train.py), undone by the monkeypatch.

``WRAP``:

* ``nan-loss:K[:R]``: the loss of 0-based step K (on rank R; every rank without R) is NaN;
* ``kill:K``: kill -9 of the process before 0-based step K, i.e. after step K (1-based) with its
  checkpoint, if one was due, written;
* ``slow-save:S``: the first checkpoint write sleeps S seconds after its first file (the file
  ``$LZN_TEST_MARKER`` appears when it starts sleeping);
* ``stall-save:K``: the write of a checkpoint of a step above K never ends (marker as above);
* ``slow-eval:S``: every evaluation on rank 0 takes S seconds longer (marker as above);
* ``slow-export:S``: the export of ``final/`` takes S seconds longer (marker as above);
* ``stuck-rank:R:K:S``: rank R sleeps S seconds before the step after step K (its peers wait in
  the step's first collective);
* ``none``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


def _marker() -> None:
    Path(os.environ["LZN_TEST_MARKER"]).write_text(str(time.time()))


def wrap(train: ModuleType, spec: str, patch: Callable[[Any, str, Any], None] = setattr) -> None:
    """Wrap the function of the training script ``train`` that ``spec`` names; ``patch(obj, name,
    value)`` sets it (``setattr``; in-process tests: ``monkeypatch.setattr``, undone after the test)."""
    kind, _, arg = spec.partition(":")
    if kind in ("nan-loss", "kill", "stuck-rank"):
        real_losses = train.task_losses
        args = [int(float(x)) for x in arg.split(":")]

        def losses(model, recipe, batch, step, rank, world, nets=None):  # noqa: ANN001, ANN202
            if kind == "kill" and step == args[0]:
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "stuck-rank" and rank == args[0] and step == args[1]:
                time.sleep(float(arg.split(":")[2]))
            out = real_losses(model, recipe, batch, step, rank, world, nets)
            if kind == "nan-loss" and step == args[0] and (len(args) == 1 or rank == args[1]):
                first = next(iter(out))
                out[first] = out[first] * float("nan")
            return out

        patch(train, "task_losses", losses)
    elif kind in ("slow-save", "stall-save"):
        real, state = torch.save, {"slept": False}

        def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN202 - torch.save's own signature
            real(obj, f, *args, **kwargs)
            step = re.search(r"tmp-(\d+)", str(f))
            if step is None:
                return
            if kind == "slow-save" and not state["slept"]:
                state["slept"] = True
                _marker()
                time.sleep(float(arg))
            elif kind == "stall-save" and int(step.group(1)) > int(arg):
                _marker()
                time.sleep(3600)

        patch(torch, "save", save)
    elif kind == "slow-eval":
        real_call = train.TrainingEvaluator.__call__

        def call(self, *args, **kwargs):  # noqa: ANN001, ANN202
            if "LZN_TEST_MARKER" in os.environ:
                _marker()
            time.sleep(float(arg))
            return real_call(self, *args, **kwargs)

        patch(train.TrainingEvaluator, "__call__", call)
    elif kind == "slow-export":
        real_write = train.write_model

        def write(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            _marker()
            time.sleep(float(arg))
            return real_write(*args, **kwargs)

        patch(train, "write_model", write)
    elif kind != "none":
        raise SystemExit(f"unknown wrap {spec!r}")


if __name__ == "__main__":
    from lzn_recipes import train as train_script

    wrap(train_script, sys.argv[1])
    sys.exit(train_script.main(sys.argv[2:]))
