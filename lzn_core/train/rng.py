"""The global random number generators of one training process: seeding, saving, restoring.

Everything random in a training step that the script controls comes from ``(seed, step)``
generators (:func:`seeded`; ``recipes/train.py``: noise, decoder losses, augmentation). What remains is the
*global* state that modules draw from by themselves, e.g. ``nn.Dropout``: torch's CPU
generator, the CUDA generator of this process's device, numpy's and Python's. Exact resume
needs each rank's own states saved with the checkpoint and restored with nothing drawing
in between; a draw that must not move the training stream (evaluation, a DataLoader's seed)
runs inside :func:`untouched`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def seeded(seed: int, step: int, salt: int, device: Any = "cpu") -> torch.Generator:
    """A generator on ``device`` for (seed, step, purpose ``salt``): the same on every rank and
    after a resume. ``recipes/train.py`` draws every random number of a step from these."""
    value = ((seed * 1_000_003 + step) * 1_009 + salt) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(value)


def seed_rank(seed: int, rank: int) -> None:
    """Seed the global generators for rank ``rank`` of a run with ``seed`` (differs per rank).

    Called once everything that initialises weights is built (the weights come from
    ``torch.manual_seed(seed)``, the same on every rank); from then on each rank's dropout
    masks are its own.
    """
    value = (int(seed) * 1_000_003 + 7919 * (int(rank) + 1)) % (2**63 - 1)
    torch.manual_seed(value)  # CPU and every CUDA device
    np.random.seed(value % 2**32)
    random.seed(value)


def _cuda_device() -> int | None:
    return torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def rng_state() -> dict[str, Any]:
    """This process's global generator states: torch CPU, CUDA (its current device), numpy, Python.

    Plain tensors, ints, floats and tuples only, so ``torch.load(..., weights_only=True)`` reads it.
    """
    device = _cuda_device()
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    keys = np.asarray(keys, dtype=np.int64)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device is not None else None,
        "numpy": (str(kind), torch.from_numpy(keys), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (the CUDA state goes to the current device)."""
    torch.set_rng_state(state["torch"])
    device = _cuda_device()
    if state.get("cuda") is not None and device is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def torch_state() -> tuple[torch.Tensor, torch.Tensor | None]:
    """What modules draw from by themselves (dropout): torch's CPU state and this process's CUDA
    state (None before CUDA is used). Host-side reads: no wait for the device."""
    device = _cuda_device()
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device is not None else None


def set_torch_state(state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    """Restore what :func:`torch_state` returned (e.g. to redraw a micro-batch's dropout masks)."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    device = _cuda_device()
    if cuda is not None and device is not None:
        torch.cuda.set_rng_state(cuda, device)


@contextlib.contextmanager
def untouched() -> Iterator[None]:
    """Run a block without moving the global generators (its draws are forgotten afterwards)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
