"""The LZN error hierarchy. Messages say what went wrong and what to do."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from typing import Any


class LZNError(Exception):
    """Base class of every error the framework raises on purpose."""


class LZNWarning(UserWarning):
    """Base class of the framework's own warnings (tests turn them into errors)."""


class UnknownModalityError(LZNError, KeyError):
    """A modality name that no loaded plugin registers."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class DuplicateModalityError(LZNError):
    """Two plugins (distributions) register the same modality name."""


class PluginLoadError(LZNError):
    """A plugin failed to import or register; chained to the original exception."""


class ContractError(LZNError):
    """A modality plugin breaks the modality contract (shapes, dtypes, config, gradients)."""


class ZonalLossError(ContractError, NotImplementedError):
    """``loss`` was called on a zonal decoder, which has nothing to train."""


class RecipeError(LZNError):
    """A recipe (YAML or compose task models) is invalid; lists every problem with its field path."""


class DataError(LZNError):
    """Missing shards, an empty shard set, or data that cannot be read."""


class MissingShardsError(DataError):
    """No shard (or not every listed shard) matches a pattern.

    Attributes:
        pattern: the shard pattern, as given.
    """

    def __init__(self, message: str, pattern: str) -> None:
        super().__init__(message)
        self.pattern = pattern


class ComposeError(LZNError):
    """A task graph that the model cannot run (unknown modality, impossible edge, bad option)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean X?"`` for the closest choice, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


DEBUG_CHECKS_ENV = "LZN_DEBUG_CHECKS"
"""``LZN_DEBUG_CHECKS=1``: check tensor values on an accelerator too (see :func:`checks_values`)."""

_FREE_DEVICES: tuple[str, ...] = ("cpu",)


def checks_values(*tensors: Any) -> bool:
    """Whether a value check (an index range, finite weights) runs on these tensors.

    Reading a value held on an accelerator makes the host wait for the device (a host sync):
    the training step and the solver loops must not do that. So value checks run on CPU
    tensors (free, and what every CPU test sees) and on accelerator tensors only with
    ``LZN_DEBUG_CHECKS=1``; shape, dtype and device checks always run (they read no values).
    The values themselves were validated once, outside the step (the loader's
    ``validate_item``); a bad index on a GPU still stops the run with a device-side assert.
    """
    if os.environ.get(DEBUG_CHECKS_ENV) == "1":
        return True
    return all(getattr(getattr(t, "device", None), "type", "cpu") in _FREE_DEVICES for t in tensors)
