"""The repository's own machinery: the Makefile's test targets (the two tiers, pytest's exit 5) and what
they leave to the user."""

from __future__ import annotations

import re
import subprocess

import pytest
from paths import ROOT


def test_make_test_fails_when_pytest_collects_nothing(tmp_path) -> None:
    """pytest's exit code 5 (no tests) makes `make test` (and so .ci/run) and `make test-fast` fail
    with a message; `make test` runs every test, `make test-fast` deselects integration and slow."""
    import os
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\necho "$@" > "$FAKE_ARGS"\nexit $FAKE_RC\n')
    fake.chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()  # newer than pyproject.toml: no reinstall
    args = tmp_path / "args"
    selects = {"test": "", "test-fast": " -m not integration and not slow"}
    for target, selection in selects.items():
        for rc, expect in ((5, 1), (0, 0), (1, 1)):
            proc = subprocess.run(
                ["make", "-s", "-C", str(ROOT), target, f"PY={fake}", f"STAMP={stamp}"],
                capture_output=True,
                text=True,
                env={**os.environ, "FAKE_RC": str(rc), "FAKE_ARGS": str(args)},
            )
            assert (proc.returncode != 0) == bool(expect), (target, rc, proc.stdout, proc.stderr)
            if rc == 5:
                assert f"make {target}: no tests were collected" in proc.stderr
            assert args.read_text().strip() == f"-m pytest -q -p no:cacheprovider{selection}", target


def test_the_integration_tier_is_the_e2e_folder(request: pytest.FixtureRequest) -> None:
    """tests/conftest.py marks every test under tests/e2e ``integration`` and no other: checked on
    this session's tests (under `make test-fast` the e2e ones are deselected and none may be left)."""
    e2e = ROOT / "tests" / "e2e"
    assert request.session.items
    for item in request.session.items:
        assert (item.get_closest_marker("integration") is not None) == (e2e in item.path.resolve().parents), (
            item.nodeid
        )


def test_make_leaves_the_accelerator_to_the_user() -> None:
    """No global DS_ACCELERATOR in the Makefile (a GPU run launched from make would silently use the
    CPU); `make run` defaults it to cpu only when unset, `make test` sets it for the tests."""
    text = (ROOT / "Makefile").read_text()
    assert not re.search(r"^export DS_ACCELERATOR", text, re.M)
    assert "DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu}" in text
    assert "DS_ACCELERATOR=cpu $(PY) -m pytest" in text
