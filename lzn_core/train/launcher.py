"""What the launcher tells a training process: its rank, the world size, its local rank, the master.

``torch.distributed`` reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. The deepspeed launcher and ``torchrun`` set them; other launchers say the same
in their own words, and :func:`from_environment` translates, first match wins:

=====================  ===========================================================================
launcher               variables read
=====================  ===========================================================================
deepspeed, torchrun    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``)
Open MPI (``mpirun``)  ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``, ``OMPI_COMM_WORLD_LOCAL_RANK``
MPICH, Intel MPI       ``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``
SLURM ``srun``         ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``), ``SLURM_LOCALID``
                       (inside a job step only: ``SLURM_STEP_ID`` set; a batch script's own
                       ``SLURM_NTASKS`` is the allocation's, not a launch)
none                   one process: rank 0 of 1
=====================  ===========================================================================

Under ``srun`` the master is the first host of ``SLURM_STEP_NODELIST`` (``SLURM_JOB_NODELIST``) and
the port ``10000 + SLURM_JOB_ID % 50000`` unless ``MASTER_ADDR``/``MASTER_PORT`` are set. An MPI
launch with more than one rank needs ``MASTER_ADDR``; a launch that says there are several ranks
but not which one this is (``WORLD_SIZE`` without ``RANK``) is refused in one line: without a rank,
N processes would be N runs writing one directory.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from ..errors import LZNError

_LAUNCHERS = {
    "torch": "a torchrun/deepspeed",
    "openmpi": "an Open MPI",
    "pmi": "an MPI (PMI)",
    "slurm": "an srun",
}


@dataclass(frozen=True)
class Launch:
    """This process's place in the run, and where it came from."""

    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: str
    source: str  # "torch" (deepspeed, torchrun), "openmpi", "pmi", "slurm" or "single"


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise LZNError(f"{key}={env[key]!r} is not an integer; fix the launcher's environment") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,9],cpu1`` -> ``gpu03``; ``a[1-2]-b[4]`` -> ``a1-b4``."""
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if first is None:
        raise LZNError(f"cannot read the node list {nodelist!r}; set MASTER_ADDR to rank 0's host")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], first.group(0))


def from_environment(env: Mapping[str, str] | None = None) -> Launch:
    """Read the launcher's variables from ``env`` (default ``os.environ``); see the module docstring.

    Raises:
        LZNError: a multi-rank launch that does not say this process's rank, or an MPI launch of
            several ranks without ``MASTER_ADDR``.
    """
    env = os.environ if env is None else env
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if "RANK" in env or env.get("WORLD_SIZE", "1") != "1":
        if "RANK" not in env or "WORLD_SIZE" not in env:
            given, missing = ("WORLD_SIZE", "RANK") if "WORLD_SIZE" in env else ("RANK", "WORLD_SIZE")
            raise LZNError(
                f"{given} is set but {missing} is not: the launcher did not say this process's place in "
                "the run; launch with deepspeed or torchrun, or set RANK, WORLD_SIZE and LOCAL_RANK"
            )
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local, source = int(env.get("LOCAL_RANK", "0") or 0), "torch"
    elif "OMPI_COMM_WORLD_RANK" in env:
        rank, world = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
        local, source = int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")), "openmpi"
    elif "PMI_RANK" in env and "PMI_SIZE" in env:
        rank, world = _int(env, "PMI_RANK"), _int(env, "PMI_SIZE")
        local, source = int(env.get("MPI_LOCALRANKID", env.get("PMI_LOCAL_RANK", "0"))), "pmi"
    elif "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        rank = _int(env, "SLURM_PROCID")
        world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
        local, source = int(env.get("SLURM_LOCALID", "0")), "slurm"
        if world > 1:
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
            addr = addr or first_host(nodes)
            port = port or str(10000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 50000)
    else:
        rank, world, local, source = 0, 1, 0, "single"
    if not 0 <= rank < world:
        raise LZNError(f"rank {rank} is outside the world of {world} ranks ({source} launch); fix the launch")
    if world > 1 and not addr:
        raise LZNError(
            f"{_LAUNCHERS[source]} launch of {world} ranks without MASTER_ADDR: set MASTER_ADDR (the host of rank 0) "
            "and MASTER_PORT in the environment of every rank"
        )
    if not port:
        if world > 1:
            raise LZNError(
                f"{_LAUNCHERS[source]} launch of {world} ranks without MASTER_PORT: set it on every rank"
            )
        with socket.socket() as s:  # one process without a launcher: any free port
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
    return Launch(rank, world, local, addr or "127.0.0.1", port, source)


def apply(launch: Launch, env: MutableMapping[str, str] | None = None) -> None:
    """Write ``launch`` as torch's variables (``RANK`` ... ``MASTER_PORT``) into ``env`` (``os.environ``)."""
    env = os.environ if env is None else env
    env.update(
        RANK=str(launch.rank),
        WORLD_SIZE=str(launch.world),
        LOCAL_RANK=str(launch.local_rank),
        MASTER_ADDR=launch.master_addr,
        MASTER_PORT=launch.master_port,
    )
