"""``python -m lzn_core.testing._launch [--stop-after-first-checkpoint] -- TRAIN_ARGS``: the training
script's ``main`` (what ``python -m lzn_recipes.train TRAIN_ARGS`` runs), for the trial's subprocess
mode; with the flag, the run stops for real after its first checkpoint
(:func:`lzn_core.testing.trial.stopping_after_first_checkpoint`)."""

from __future__ import annotations

import contextlib
import sys

from lzn_recipes import train

from .trial import stopping_after_first_checkpoint


def main(argv: list[str]) -> int:
    stop = bool(argv) and argv[0] == "--stop-after-first-checkpoint"
    args = argv[1:] if stop else argv
    if args[:1] == ["--"]:
        args = args[1:]
    # the process ends after the run: a stopped run's signals stay ignored for its exit
    with stopping_after_first_checkpoint(train, release=False) if stop else contextlib.nullcontext():
        return train.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
