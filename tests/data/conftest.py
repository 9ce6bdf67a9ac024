"""Fixtures of the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lzn_core.cli import main


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits shards written by ``lzn shards digits`` (shards of 600), once per test module."""
    out = tmp_path_factory.mktemp("digits")
    assert main(["shards", "digits", str(out), "--shard-size", "600", "--no-progress"]) == 0
    return out
