"""Plugin discovery, isolation, env controls and `lzn plugins` (lzn_core.plugins)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from paths import ROOT

import lzn_core
from lzn_core import cli
from lzn_core.errors import DuplicateModalityError, PluginLoadError, UnknownModalityError
from lzn_core.plugins import (
    PluginRegistry,
    PluginWarning,
    discover_entry_points,
    registry,
    reset_plugins,
)

GOOD = """
import lzn_core
from lzn_core.modality import ModalitySpec
from pydantic import BaseModel, ConfigDict

class Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")

def _unused(*a):
    raise NotImplementedError

@lzn_core.hookimpl
def lzn_register_modalities(register):
    for n in NAMES:
        register(ModalitySpec(name=n, config=Cfg, build_encoder=_unused, build_decoder=_unused,
                              shard_keys=("x",), decode_sample=_unused))
    if RAISE_AFTER:
        raise RuntimeError("hook exploded after registering")
"""


def good(*names: str, raise_after: bool = False) -> str:
    return f"NAMES = {list(names)!r}\nRAISE_AFTER = {raise_after}\n" + GOOD


pytestmark = pytest.mark.usefixtures("lzn_plugins")  # the kit's fixture: a fresh registry per test


@pytest.fixture
def make_dist(tmp_path, monkeypatch):
    """Write a fake installed distribution (dist-info + plugin modules) and put it on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(dist: str, version: str, plugins: dict[str, str]) -> Path:
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[lzn]"]
        for ep, src in plugins.items():
            mod = f"_lzn_fake_{ep}_{uuid.uuid4().hex[:8]}"
            (tmp_path / f"{mod}.py").write_text(src)
            lines.append(f"{ep} = {mod}")
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        return tmp_path

    return make


def fake_registry(root: Path, **env: str) -> PluginRegistry:
    strict = env.pop("strict", "0")
    return PluginRegistry(discover_entry_points([str(root)]), environ={"LZN_STRICT_PLUGINS": strict, **env})


# -- built-ins and laziness ------------------------------------------------------
def test_builtins_come_through_the_entry_point_group():
    eps = {ep.name: ep for ep in discover_entry_points()}
    assert eps["label"].value == "lzn_label.plugin" and eps["label"].dist.name == "lzn"
    wanted = [n for n in ("image", "label", "text") if (ROOT / f"plugins/lzn_{n}/plugin.py").exists()]
    reg = PluginRegistry(environ={"LZN_PLUGINS": ",".join(wanted), "LZN_STRICT_PLUGINS": "1"})
    infos = {i.name: i for i in reg.list_plugins()}
    for name in wanted:
        assert infos[name].status == "ok", infos[name]
        assert infos[name].modalities == (name,)
        assert infos[name].distribution == "lzn" and infos[name].version == lzn_core.__version__
        assert reg.get_modality(name).name == name
    only_label = PluginRegistry(environ={"LZN_PLUGINS": "label", "LZN_STRICT_PLUGINS": "1"}).list_plugins()
    assert {i.name: i.status for i in only_label} == {"image": "disabled", "label": "ok", "text": "disabled"}
    assert {i.error for i in only_label if i.name != "label"} == {"not listed in LZN_PLUGINS"}


def test_import_lzn_core_is_lazy():
    code = (
        "import sys, lzn_core\n"
        "bad = [m for m in ('torch', 'pluggy', 'lzn_core.plugins', 'lzn_label', 'pydantic') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "lzn_core.hookimpl\n"
        "assert 'pluggy' in sys.modules and 'lzn_core.plugins' not in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_module_level_registry_is_loaded_once(monkeypatch):
    monkeypatch.setenv("LZN_PLUGINS", "label")
    assert lzn_core.get_modality("label").name == "label"
    first = registry()
    assert registry() is first and {i.name for i in lzn_core.list_plugins() if i.status == "ok"} == {"label"}
    reset_plugins()
    assert registry() is not first
    mine = PluginRegistry([], environ={})
    reset_plugins(mine)
    assert registry() is mine and lzn_core.list_plugins() == []


# -- failure isolation -------------------------------------------------------------
def test_broken_import_is_isolated_and_warned_once(make_dist):
    root = make_dist(
        "lzn-broken", "2.3", {"broken": "raise RuntimeError('boom at import')\n", "fine": good("fine")}
    )
    reg = fake_registry(root)
    with pytest.warns(
        PluginWarning, match=r"'broken' \(lzn-broken 2.3\) failed to load: RuntimeError: boom"
    ) as rec:
        infos = {i.name: i for i in reg.list_plugins()}
    assert len(rec) == 1
    assert reg.list_plugins() and len(rec) == 1  # loaded once: no second warning
    assert infos["broken"].status == "failed" and infos["broken"].modalities == ()
    assert infos["broken"].error == "RuntimeError: boom at import"
    assert "boom at import" in infos["broken"].traceback and "Traceback" in infos["broken"].traceback
    assert infos["fine"].status == "ok" and reg.get_modality("fine").name == "fine"
    with pytest.raises(
        PluginLoadError, match=r"modality 'broken' is unavailable: plugin 'broken' \(lzn-broken 2.3\)"
    ) as ei:
        reg.get_modality("broken")
    assert isinstance(ei.value.__cause__, RuntimeError)
    with pytest.raises(
        UnknownModalityError, match=r"failed to load \(their modalities are unknown\): broken"
    ):
        reg.get_modality("other")


def test_hook_that_raises_keeps_none_of_its_modalities(make_dist):
    root = make_dist("lzn-half", "1.0", {"half": good("half_a", "half_b", raise_after=True)})
    reg = fake_registry(root)
    with pytest.warns(PluginWarning, match="hook exploded"):
        info = reg.list_plugins()[0]
    assert info.status == "failed" and info.modalities == ()
    with pytest.raises(UnknownModalityError, match="available: none"):
        reg.get_modality("half_a")


def test_strict_mode_raises_at_discovery(make_dist):
    root = make_dist("lzn-broken", "2.3", {"broken": "raise RuntimeError('boom at import')\n"})
    with pytest.raises(
        PluginLoadError,
        match=r"1 plugin\(s\) failed to load \(LZN_STRICT_PLUGINS=1\): "
        r"broken \(lzn-broken 2.3\): RuntimeError: boom",
    ) as ei:
        fake_registry(root, strict="1").load()
    assert isinstance(ei.value.__cause__, RuntimeError)


@pytest.mark.parametrize(
    ("src", "message"),
    [
        (
            "import lzn_core\n@lzn_core.hookimpl\ndef lzn_register_modalities(register):\n    register('text')\n",
            "ContractError: plugin 'p': register() takes a lzn_core.ModalitySpec, got str",
        ),
        (
            "def lzn_register_modalities(register):\n    pass\n",
            "implements no hook; decorate `lzn_register_modalities` (or `lzn_register_commands`) with "
            "`@lzn_core.hookimpl`",
        ),
        (
            "import lzn_core\n@lzn_core.hookimpl\ndef lzn_register_modality(register):\n    pass\n",
            "unknown hook 'lzn_register_modality'",
        ),
        (good("twice", "twice"), "plugin 'p' registers modality 'twice' twice"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ],
    ids=["not-a-spec", "no-hookimpl", "typo-in-hook-name", "same-name-twice", "sys-exit"],
)
def test_bad_plugins_fail_with_a_reason(make_dist, src, message):
    reg = fake_registry(make_dist("lzn-bad", "0.1", {"p": src}))
    with pytest.warns(PluginWarning):
        info = reg.list_plugins()[0]
    assert info.status == "failed" and message in info.error


# -- environment controls -----------------------------------------------------------
def test_disable_plugins_blocks_without_importing(make_dist):
    root = make_dist(
        "lzn-x", "1.0", {"broken": "raise RuntimeError('must not import')\n", "fine": good("fine")}
    )
    reg = fake_registry(root, LZN_DISABLE_PLUGINS="broken", strict="1")
    infos = {i.name: i for i in reg.list_plugins()}  # strict, yet no error: never imported
    assert infos["broken"].status == "disabled" and infos["broken"].error == "disabled by LZN_DISABLE_PLUGINS"
    assert infos["fine"].status == "ok"
    with pytest.raises(
        UnknownModalityError, match="plugin 'broken' is disabled by LZN_DISABLE_PLUGINS; available: fine"
    ):
        reg.get_modality("broken")


def test_only_listed_plugins_load(make_dist):
    root = make_dist("lzn-x", "1.0", {"a": good("a"), "b": good("b"), "c": "raise RuntimeError('x')\n"})
    reg = fake_registry(root, LZN_PLUGINS=" a, b ", strict="1")
    assert {i.name: i.status for i in reg.list_plugins()} == {"a": "ok", "b": "ok", "c": "disabled"}
    assert reg.modalities() == ["a", "b"]


def test_env_names_that_match_no_plugin(make_dist):
    root = make_dist("lzn-x", "1.0", {"vector": good("vector")})
    with pytest.warns(
        PluginWarning, match="LZN_PLUGINS names 'vectr', which no installed plugin has; did you mean 'vector'"
    ):
        fake_registry(root, LZN_PLUGINS="vector,vectr").load()
    with pytest.raises(PluginLoadError, match="LZN_DISABLE_PLUGINS names 'nope'.*installed: vector"):
        fake_registry(root, LZN_DISABLE_PLUGINS="nope", strict="1").load()


# -- duplicates and unknown names -----------------------------------------------------
def test_duplicate_modality_names_both_distributions(make_dist):
    make_dist("lzn-audio-a", "1.0", {"audio": good("audio", "beep")})
    root = make_dist("lzn-audio-b", "2.0", {"audio_b": good("audio")})
    reg = fake_registry(root)
    with pytest.warns(PluginWarning, match="modality 'audio' is registered by"):
        reg.load()
    with pytest.raises(DuplicateModalityError) as ei:
        reg.get_modality("audio")
    msg = str(ei.value)
    assert "lzn-audio-a 1.0 (entry point 'audio')" in msg and "lzn-audio-b 2.0 (entry point 'audio_b')" in msg
    assert "LZN_DISABLE_PLUGINS" in msg
    assert reg.get_modality("beep").name == "beep" and reg.modalities() == ["beep"]
    infos = {i.name: i for i in reg.list_plugins()}
    assert infos["audio"].status == "ok" and "also registered by lzn-audio-b 2.0" in infos["audio"].error
    with pytest.raises(DuplicateModalityError, match="lzn-audio-a 1.0"):
        fake_registry(root, strict="1").load()
    fixed = fake_registry(root, LZN_DISABLE_PLUGINS="audio_b", strict="1")
    assert fixed.get_modality("audio").name == "audio"


def test_entry_point_name_used_by_two_distributions(make_dist):
    make_dist("lzn-one", "1.0", {"same": good("one")})
    root = make_dist("lzn-two", "1.0", {"same": good("two")})
    with pytest.warns(PluginWarning, match="entry point name 'same' of lzn-.* is already used by lzn-"):
        infos = fake_registry(root).list_plugins()
    assert sorted(i.status for i in infos) == ["failed", "ok"]


def test_lookup_during_discovery_fails_the_plugin_not_the_process(make_dist, monkeypatch):
    src = "import lzn_core\nlzn_core.get_modality('label')\n"
    make_dist("lzn-eager", "1.0", {"eager": src})
    monkeypatch.setenv("LZN_PLUGINS", "label,eager")
    monkeypatch.setenv("LZN_STRICT_PLUGINS", "0")
    with pytest.warns(PluginWarning, match="'eager'"):
        infos = {i.name: i for i in lzn_core.list_plugins()}
    assert infos["eager"].status == "failed"
    assert "called while plugins are being discovered" in infos["eager"].error
    assert lzn_core.get_modality("label").name == "label"


def test_unknown_modality_lists_available_with_suggestion(monkeypatch):
    monkeypatch.setenv("LZN_PLUGINS", "label")
    with pytest.raises(UnknownModalityError) as ei:
        lzn_core.get_modality("labl")
    assert str(ei.value) == "unknown modality 'labl'; did you mean 'label'?; available: label"
    assert isinstance(ei.value, KeyError)


# -- `lzn plugins` --------------------------------------------------------------------
def test_cli_plugins_table_and_json(make_dist, monkeypatch, capsys):
    make_dist("lzn-broken", "2.3", {"broken": "raise ImportError('needs libfoo')\n"})
    monkeypatch.setenv("LZN_PLUGINS", "label,broken")
    monkeypatch.setenv("LZN_STRICT_PLUGINS", "1")  # listing never raises: it is the diagnostic tool
    assert cli.main(["plugins"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "NAME",
        "DISTRIBUTION",
        "VERSION",
        "MODALITIES",
        "COMMANDS",
        "STATUS",
        "REASON",
    ]
    rows = {line.split()[0]: line for line in table[1:]}
    assert rows["label"].split()[:6] == ["label", "lzn", lzn_core.__version__, "label", "-", "ok"]
    assert rows["broken"].split()[1:6] == ["lzn-broken", "2.3", "-", "-", "failed"]
    assert rows["broken"].endswith("ImportError: needs libfoo")
    assert "not listed in LZN_PLUGINS" in rows["text"]
    assert cli.main(["plugins", "--check"]) == 1
    capsys.readouterr()
    assert cli.main(["plugins", "--json"]) == 0
    data = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert data["label"]["modalities"] == ["label"] and data["label"]["status"] == "ok"
    assert data["broken"]["status"] == "failed" and "needs libfoo" in data["broken"]["traceback"]


def test_cli_plugins_check_fails_on_a_modality_registered_twice(make_dist, monkeypatch, capsys):
    make_dist("lzn-audio-a", "1.0", {"audio": good("audio")})
    make_dist("lzn-audio-b", "2.0", {"audio_b": good("audio")})
    monkeypatch.setenv("LZN_PLUGINS", "label,audio,audio_b")
    assert cli.main(["plugins"]) == 0  # listing shows both, it does not fail
    assert "also registered by lzn-audio-b 2.0" in capsys.readouterr().out
    assert cli.main(["plugins", "--check"]) == 1
    err = capsys.readouterr().err
    assert "modality 'audio' is registered by" in err
    assert "lzn-audio-a 1.0 (entry point 'audio')" in err and "lzn-audio-b 2.0 (entry point 'audio_b')" in err
    monkeypatch.setenv("LZN_PLUGINS", "label,audio")
    assert cli.main(["plugins", "--check"]) == 0


def test_python_dash_m_lzn_core_plugins():
    out = subprocess.run(
        [sys.executable, "-m", "lzn_core", "plugins", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "LZN_PLUGINS": "label", "LZN_STRICT_PLUGINS": "1"},
    )
    data = {d["name"]: d for d in json.loads(out.stdout)}
    assert data["label"]["status"] == "ok" and data["label"]["distribution"] == "lzn"


# -- plugin commands (lzn_register_commands) ---------------------------------------------
COMMANDS = """
import sys
import lzn_core

def _args(parser):
    parser.add_argument("who")
    parser.add_argument("--times", type=int, default=1)

def _hello(args):
    print(" ".join(["hello", args.who] * args.times))
    return 0

def _crash(args):
    raise RuntimeError("the converter fell over")

def _bad_args(parser):
    raise KeyError("no such option table")

@lzn_core.hookimpl
def lzn_register_commands(register):
    register("hello", help="greet someone (a plugin command)", add_arguments=_args, run=_hello)
    register("crash", help="always fails", add_arguments=_args, run=_crash)
    register("bad-args", help="fails while adding its arguments", add_arguments=_bad_args, run=_hello)
    register("plugins", help="takes a core command's name", add_arguments=_args, run=_hello)
"""


def test_a_plugin_command_is_listed_runs_and_fails_alone(make_dist, capsys):
    """A plugin adds `lzn` commands through its hook: `lzn --help` lists them with the distribution;
    one that raises, or breaks while adding its arguments, is reported naming the plugin, and the
    host (other commands, the core's) keeps working; a core command name stays the core's."""
    reset_plugins(fake_registry(make_dist("lzn-tools", "1.2", {"tools": COMMANDS}), strict="1"))
    assert registry().list_plugins()[0].commands == ("hello", "crash", "bad-args", "plugins")
    assert registry().list_plugins()[0].modalities == ()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert "greet someone (a plugin command) [plugin lzn-tools]" in " ".join(out.split())
    assert (
        "command 'plugins' of plugin 'tools' (lzn-tools 1.2) is not available: the core has a command" in err
    )
    assert cli.main(["hello", "world", "--times", "2"]) == 0
    assert capsys.readouterr().out.strip() == "hello world hello world"
    assert cli.main(["crash", "x"]) == 1
    err = capsys.readouterr().err
    assert "lzn crash: error (RuntimeError) in the command of plugin 'tools' (lzn-tools 1.2): " in err
    assert "the converter fell over" in err and "--debug" in err
    assert cli.main(["bad-args", "x"]) == 1
    assert "in the command of plugin 'tools' (lzn-tools 1.2)" in capsys.readouterr().err
    assert cli.main(["plugins", "--json"]) == 0  # the core's command (it lists the installed plugins)
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["image"]["commands"] == ["import-official"] and listed["label"]["commands"] == []
    with pytest.raises(SystemExit):
        cli.main(["nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_two_plugins_with_one_command_name_and_bad_registrations(make_dist, capsys):
    hello = COMMANDS.replace('register("crash"', '# register("crash"').replace(
        'register("bad-args"', '# register("bad-args"'
    )
    root = make_dist("lzn-tools", "1.2", {"tools": hello})
    make_dist("lzn-more", "0.1", {"more": hello.replace('register("plugins"', '# register("plugins"')})
    reset_plugins(fake_registry(root))
    assert registry().command_conflicts() == {
        "hello": ["plugin 'more' (lzn-more 0.1)", "plugin 'tools' (lzn-tools 1.2)"]
    } or registry().command_conflicts() == {
        "hello": ["plugin 'tools' (lzn-tools 1.2)", "plugin 'more' (lzn-more 0.1)"]
    }
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "command 'hello' is registered by plugin" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            'register("Bad Name", help="x", add_arguments=print, run=print)',
            "lower-case letters, digits and dashes",
        ),
        (
            'register("ok", help="", add_arguments=print, run=print)',
            "help must be a non-empty one-line string",
        ),
        ('register("ok", help="x", add_arguments=None, run=print)', "add_arguments must be callable"),
    ],
    ids=["name", "help", "not-callable"],
)
def test_bad_command_registrations_fail_the_plugin(make_dist, call, message):
    src = f"import lzn_core\n@lzn_core.hookimpl\ndef lzn_register_commands(register):\n    {call}\n"
    reg = fake_registry(make_dist("lzn-bad", "0.1", {"p": src}))
    with pytest.warns(PluginWarning):
        info = reg.list_plugins()[0]
    assert info.status == "failed" and message in info.error and info.commands == ()


def test_a_broken_plugin_under_strict_discovery_leaves_help_working(make_dist, monkeypatch, capsys):
    import lzn_core.plugins as plugins_module

    eps = discover_entry_points(
        [str(make_dist("lzn-broken", "2.3", {"broken": "raise RuntimeError('boom')\n"}))]
    )
    monkeypatch.setattr(plugins_module, "discover_entry_points", lambda path=None: eps)
    monkeypatch.setenv("LZN_STRICT_PLUGINS", "1")
    reset_plugins(None)  # the process-wide registry, discovered (strictly) by `lzn --help`
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out, err = capsys.readouterr()
    assert "validate" in out and "recipes" in out  # the core's commands are all there
    assert "lzn: plugin commands unavailable: 1 plugin(s) failed to load" in err and "boom" in err


def test_help_lists_the_image_plugins_command_without_importing_torch():
    code = (
        "import sys, contextlib, io\n"
        "from lzn_core.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'import-official' in buf.getvalue(), buf.getvalue()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
