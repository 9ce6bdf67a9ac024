"""``recipes/train.py`` with one function wrapped from outside, for tests/test_cluster.py (no hooks in
the product code): ``python tests/cluster_runner.py WRAP TRAIN_ARGS...``. ``WRAP``:

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
import sys
import time
from pathlib import Path

import torch
from lzn_recipes import train


def _marker() -> None:
    Path(os.environ["LZN_TEST_MARKER"]).write_text(str(time.time()))


def _wrap(spec: str) -> None:
    kind, _, arg = spec.partition(":")
    if kind in ("slow-save", "stall-save"):
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

        torch.save = save
    elif kind == "slow-eval":
        evaluator = train.TrainingEvaluator
        real_call = evaluator.__call__

        def call(self, *args, **kwargs):  # noqa: ANN001, ANN202
            if "LZN_TEST_MARKER" in os.environ:
                _marker()
            time.sleep(float(arg))
            return real_call(self, *args, **kwargs)

        evaluator.__call__ = call
    elif kind == "slow-export":
        real_write = train.write_model

        def write(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            _marker()
            time.sleep(float(arg))
            return real_write(*args, **kwargs)

        train.write_model = write
    elif kind == "stuck-rank":
        rank, after, seconds = (float(x) for x in arg.split(":"))
        real_losses = train.task_losses

        def losses(model, recipe, batch, step, rank_, world, nets=None):  # noqa: ANN001, ANN202
            if rank_ == int(rank) and step == int(after):
                time.sleep(seconds)
            return real_losses(model, recipe, batch, step, rank_, world, nets)

        train.task_losses = losses
    elif kind != "none":
        raise SystemExit(f"unknown wrap {spec!r}")


if __name__ == "__main__":
    _wrap(sys.argv[1])
    sys.exit(train.main(sys.argv[2:]))
