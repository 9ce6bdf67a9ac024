"""Conformance kit for modality plugins (also a pytest plugin: entry point ``pytest11``, ``lzn``).

Two parts, like a plugin's own tests want them:

* :mod:`~lzn_core.testing.contract`, the default: :func:`check_modality` makes every call of the
  contract (:mod:`lzn_core.modality`) the way the framework makes it, in seconds, nothing trained;
* :mod:`~lzn_core.testing.trial`, opt-in: :func:`run_trial` trains the modality beside a partner
  through the training script's own code path (in this process, like pytest's pytester; in a
  subprocess when asked), stops the run after its first checkpoint for real, resumes it, checks
  that the logged steps and losses continue exactly, and serves the export through every compose
  edge.

A plugin author's tests can be::

    def test_contract(lzn_check_modality):
        lzn_check_modality("vector")            # a registered modality name (or a ModalitySpec)

    def test_trains_and_serves(lzn_trial):
        assert "vector -> label" in lzn_trial("vector").edges

Importing this package does not import torch (pytest loads it in every session).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .contract import (
    CORRUPT_SAMPLES,
    KIT_CONDITION_DIM,
    ConformanceReport,
    SpyBatch,
    check_framework_moves_batches,
    check_modality,
)
from .trial import TrialReport, run_trial, stopping_after_first_checkpoint

__all__ = [
    "CORRUPT_SAMPLES",
    "KIT_CONDITION_DIM",
    "ConformanceReport",
    "SpyBatch",
    "TrialReport",
    "check_framework_moves_batches",
    "check_modality",
    "run_trial",
    "stopping_after_first_checkpoint",
]

try:  # the pytest11 plugin part: fixtures for plugin authors' test suites
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed to run tests
    pass
else:

    @pytest.fixture
    def lzn_check_modality() -> Callable[..., ConformanceReport]:
        """The contract part of the kit, :func:`lzn_core.testing.check_modality`, as a fixture."""
        return check_modality

    @pytest.fixture
    def lzn_trial() -> Callable[..., TrialReport]:
        """The trial part of the kit, :func:`lzn_core.testing.run_trial`, as a fixture: trains and
        serves a registered modality (in-process; ``subprocess=True`` for one process per run)."""
        return run_trial

    @pytest.fixture
    def lzn_plugins() -> Iterator[Callable[..., None]]:
        """A fresh plugin registry for one test: discovery runs again on first use and is forgotten
        afterwards. Yields :func:`lzn_core.plugins.reset_plugins`; call it with a
        ``PluginRegistry(entry_points, environ={...})`` to install a registry of your own."""
        from ..plugins import reset_plugins

        reset_plugins()
        yield reset_plugins
        reset_plugins()
