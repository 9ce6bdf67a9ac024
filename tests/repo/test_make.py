"""The repository's own machinery: the Makefile's test targets and what they leave to the user."""

from __future__ import annotations

import re
import subprocess

import pytest
from paths import ROOT


def test_make_test_fails_when_pytest_collects_nothing(tmp_path) -> None:
    """pytest's exit code 5 (no tests) makes `make test` (and so .ci/run) fail with a message."""
    import os
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nexit $FAKE_RC\n")
    fake.chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()  # newer than pyproject.toml: no reinstall
    for rc, expect in ((5, 1), (0, 0), (1, 1)):
        proc = subprocess.run(
            ["make", "-s", "-C", str(ROOT), "test", f"PY={fake}", f"STAMP={stamp}"],
            capture_output=True,
            text=True,
            env={**os.environ, "FAKE_RC": str(rc)},
        )
        assert (proc.returncode != 0) == bool(expect), (rc, proc.stdout, proc.stderr)
        if rc == 5:
            assert "no tests were collected" in proc.stderr


def test_make_leaves_the_accelerator_to_the_user() -> None:
    """No global DS_ACCELERATOR in the Makefile (a GPU run launched from make would silently use the
    CPU); `make run` defaults it to cpu only when unset, `make test` sets it for the tests."""
    text = (ROOT / "Makefile").read_text()
    assert not re.search(r"^export DS_ACCELERATOR", text, re.M)
    assert "DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu}" in text
    assert "DS_ACCELERATOR=cpu $(PY) -m pytest" in text
