"""The public API of ``lzn_core``: every advertised name resolves, lazily."""

from __future__ import annotations

import subprocess

import pytest

import lzn_core


def test_all_lists_exactly_the_lazy_names_and_submodules() -> None:
    assert set(lzn_core.__all__) == set(lzn_core._LAZY) | set(lzn_core._SUBMODULES)


@pytest.mark.parametrize("name", sorted(lzn_core._LAZY))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(lzn_core, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lzn_core.nope  # noqa: B018


def test_import_lzn_core_stays_light() -> None:
    """``import lzn_core`` and what a plugin module needs at import time (``hookimpl``,
    ``ModalitySpec``) import no torch: ``lzn plugins`` and plugin discovery stay fast."""
    import sys

    code = (
        "import sys, lzn_core; lzn_core.hookimpl; lzn_core.ModalitySpec; lzn_core.list_plugins(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
