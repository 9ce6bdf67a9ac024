"""How a training process fails: one line on rank 0, the traceback only with ``--debug``.

A launcher starts one process per rank and every rank meets the same bad recipe, missing shard
or unwritable directory; printing each rank's traceback buries the one line that matters. So:

* a user error (:class:`~lzn_core.errors.LZNError`, ``OSError``, ``ValueError``: the same on
  every rank) prints one line on rank 0 -- for a recipe the text ``lzn validate`` prints, one
  line per problem -- and the other ranks exit quietly;
* an error of the distributed group itself (a peer died, so a collective failed) is the echo
  of another rank's error: rank 0 says so in one line, the other ranks are quiet;
* anything else (a bug, a GPU out of memory on one rank) is reported by the rank it happened
  on, in one line naming the exception type (and the rank when it is not 0);
* every failure exits with status 1 (130 for Ctrl-C); ``--debug`` (or ``LZN_DEBUG=1``)
  re-raises instead, so each rank prints its traceback. A run stopped by a signal is no failure:
  75 after its checkpoint, 76 when ``train.stop_deadline`` came first
  (:mod:`lzn_core.train.preemption`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..errors import LZNError, RecipeError

USER_ERRORS: tuple[type[BaseException], ...] = (LZNError, OSError, ValueError)
"""Errors of the user's recipe, data or files: the same on every rank, reported by rank 0."""


def _rank() -> int:
    return torch.distributed.get_rank() if _group_up() else int(os.environ.get("RANK", "0"))


def _group_up() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _distributed_error(exc: BaseException) -> bool:
    dist_error = getattr(torch.distributed, "DistError", None)
    return dist_error is not None and isinstance(exc, dist_error)


def error_line(exc: BaseException, prog: str, rank: int = 0, group_up: bool = True) -> str | None:
    """The text ``prog`` prints for ``exc`` on ``rank``, or None when that rank stays quiet.

    ``group_up``: the process group was running (a distributed error is then a peer's echo; one
    while starting it, e.g. a port in use, is reported like any other).
    """
    if isinstance(exc, RecipeError):  # what `lzn validate` prints: a header and one line per problem
        return str(exc) if rank == 0 else None
    if isinstance(exc, USER_ERRORS):
        return f"{prog}: error: {exc}" if rank == 0 else None
    if _distributed_error(exc) and group_up:
        if rank != 0:
            return None
        return f"{prog}: error: the process group failed, most likely because another rank did ({exc})"
    where = f" on rank {rank}" if rank else ""
    return f"{prog}: error ({type(exc).__name__}){where}: {exc} (run again with --debug for the traceback)"


def reported(fn: Callable[..., int], *args: Any, debug: bool = False, prog: str = "train.py") -> int:
    """``fn(*args)``, with its errors reported as above; the exit status."""
    debug = debug or os.environ.get("LZN_DEBUG") == "1"
    try:
        return int(fn(*args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        if _rank() == 0:
            print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        if debug:
            raise
        line = error_line(exc, prog, _rank(), _group_up())
        if line is not None:
            print(line, file=sys.stderr, flush=True)
        return 1
