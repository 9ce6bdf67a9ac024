"""DeepSpeed beyond its documented API: the one list (lzn_core.train._deepspeed) against the installed one.

An upgrade that drops an attribute the framework still needs fails here, naming the attribute and
the DeepSpeed version; the pin in pyproject.toml is the list's tested range; no other module of
lzn reaches into DeepSpeed's private names.
"""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest
from packaging.specifiers import SpecifierSet
from paths import ROOT

from lzn_core.errors import LZNError
from lzn_core.train import _deepspeed
from lzn_core.train._deepspeed import INTERNALS, TESTED, Internal, missing


def test_every_deepspeed_internal_lzn_uses_is_there() -> None:
    gone = missing()
    assert not gone, "\n".join(gone)


def test_a_missing_internal_is_named_with_the_deepspeed_version(monkeypatch) -> None:
    fake = (
        Internal("deepspeed.comm.torch", "lzn_no_such_function", False, "a test", "to see the check fail"),
        Internal("deepspeed.monitor.monitor.MonitorMaster", "lzn_no_such_field", True, "a test", "idem"),
        Internal("deepspeed.lzn_no_such_module", "x", False, "a test", "idem"),
    )
    monkeypatch.setattr(_deepspeed, "INTERNALS", (*INTERNALS, *fake))
    ver = version("deepspeed")
    assert missing() == [
        f"DeepSpeed {ver} has no deepspeed.comm.torch.lzn_no_such_function (lzn is tested with "
        f"deepspeed{TESTED}; used by a test: to see the check fail)",
        f"DeepSpeed {ver} has no deepspeed.monitor.monitor.MonitorMaster().lzn_no_such_field (lzn is "
        f"tested with deepspeed{TESTED}; used by a test: idem)",
        f"DeepSpeed {ver} has no deepspeed.lzn_no_such_module.x (lzn is tested with deepspeed{TESTED}; "
        "used by a test: idem)",
    ]


def test_replacing_a_function_deepspeed_no_longer_has_fails_loudly(monkeypatch) -> None:
    import deepspeed.comm.torch  # noqa: F401

    module = __import__("sys").modules["deepspeed.comm.torch"]
    monkeypatch.delattr(module, "build_shm_op")
    with pytest.raises(LZNError) as err:
        _deepspeed.replace("deepspeed.comm.torch", "build_shm_op", lambda: None)
    assert str(err.value) == (
        f"DeepSpeed {version('deepspeed')} has no deepspeed.comm.torch.build_shm_op, which "
        f"lzn_core.train.engine.setup_distributed replaces; install a tested version: pip install "
        f"'deepspeed{TESTED}'"
    )
    assert not hasattr(module, "build_shm_op")  # nothing set that DeepSpeed would never call
    with pytest.raises(ValueError, match="is not a module attribute listed"):
        _deepspeed.replace("deepspeed.comm.torch", "get_accelerator", None)


def test_the_pin_is_the_tested_range_and_holds_the_installed_version() -> None:
    pinned = re.findall(r'^\s*"(deepspeed\b[^"]*)",', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert pinned == [f"deepspeed{TESTED}"]
    assert version("deepspeed") in SpecifierSet(TESTED)


def test_no_other_module_reaches_into_deepspeed_private_names() -> None:
    """``deepspeed.x._y``, ``ds_x._y``, or a DeepSpeed module patched by assignment: only in _deepspeed.py."""
    private = re.compile(r"\b(deepspeed(\.\w+)*|ds_\w+)\._[A-Za-z]\w*")
    patched = re.compile(r"sys\.modules\[\"deepspeed[\w.]*\"\]\.\w+\s*=")
    found = []
    for path in sorted((ROOT / "lzn_core").rglob("*.py")) + sorted((ROOT / "recipes").rglob("*.py")):
        if path.name == "_deepspeed.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line) or patched.search(line):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)
