"""The suite's rank launcher: ``recipes/train.py`` as ``world`` gloo ranks started the way a launcher
starts them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` at a free port), each through
``fault_runner.py WRAP`` (a fault injected from outside; ``none``: the script as is). Used by
e2e/test_distributed.py and e2e/test_resize.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from paths import SUPPORT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(
    cwd: Path, world: int, args: list[str], wrap: str = "none", env: dict[str, str] | None = None
) -> list[subprocess.Popen]:
    """``python recipes/train.py ARGS`` as ``world`` ranks in ``cwd``; ``env`` is added to each
    rank's environment."""
    port = free_port()
    base = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0", **(env or {})}
    ranks = [dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world)) for r in range(world)]
    return [
        subprocess.Popen(
            [sys.executable, str(SUPPORT / "fault_runner.py"), wrap, *args],
            cwd=cwd,
            env={**base, **rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in ranks
    ]


def wait_ranks(procs: list[subprocess.Popen], allowed: tuple[int, ...] = (0,)) -> list[int]:
    """Exit statuses of the ranks (-9: killed); any other than ``allowed`` fails with the rank's output."""
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode in allowed, out[-3000:]
    return [p.returncode for p in procs]


def logged(run: Path) -> list[dict]:
    """The training rows of a run's metrics.jsonl (those with a loss)."""
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
