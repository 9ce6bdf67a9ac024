"""The public API of ``lzn_core``: every advertised name resolves, lazily."""

from __future__ import annotations

import subprocess

import pytest
from paths import ROOT

import lzn_core


def test_all_lists_exactly_the_lazy_names_and_submodules() -> None:
    assert set(lzn_core.__all__) == set(lzn_core._LAZY) | set(lzn_core._SUBMODULES)


@pytest.mark.parametrize("name", sorted(lzn_core._LAZY))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(lzn_core, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lzn_core.nope  # noqa: B018


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
