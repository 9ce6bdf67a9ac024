"""``lzn ARGS`` in the test's own process (``lzn_core.cli.main``), for the tests of the commands."""

from __future__ import annotations

import pytest

from lzn_core.cli import main


def run_lzn(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``lzn *argv``."""
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err
