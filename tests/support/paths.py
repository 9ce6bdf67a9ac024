"""Where things are, for a test in any folder of tests/: the repository root and the test helpers.

tests/support/ is on ``sys.path`` for every test (``pythonpath`` in pyproject.toml), so a test
writes ``from paths import ROOT`` instead of counting ``Path(__file__).parents``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
SUPPORT = ROOT / "tests" / "support"  # these helpers: reference.py, fault_runner.py, kit_plugins.py, ...
THIRDPARTY = SUPPORT / "thirdparty"  # third-party plugin packages written for the tests


def with_support(env: dict[str, str]) -> dict[str, str]:
    """``env`` with tests/support/ first on ``PYTHONPATH``: for a subprocess that runs a test file as a
    script (a worker), which imports these helpers as the tests do."""
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(SUPPORT), env.get("PYTHONPATH")) if p)}
