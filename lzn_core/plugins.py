"""Plugin discovery and failure isolation (``lzn plugins`` lists what it found).

Plugins are modules named by entry points of group ``lzn`` (the built-ins in
``plugins/`` come through the same group, from the root ``pyproject.toml``).
Discovery is lazy and happens once per process, on the first
:func:`get_modality` / :func:`list_plugins` / :func:`plugin_commands` call. Each plugin
implements the hook ``lzn_register_modalities(register)``, ``lzn_register_commands(register)``
(subcommands of ``lzn``) or both (:mod:`lzn_core.hookspecs`).

Isolation: a plugin that raises on import, in its hook, or registers something
that is not a ``ModalitySpec`` is recorded (distribution, version, traceback)
and warned about once (:class:`PluginWarning`); only :func:`get_modality` of
*its* modality fails, with :class:`PluginLoadError` chained to the cause. A
failed plugin cannot say which modalities it would have registered, so the
failure is matched by **entry-point name**: name your entry point like your
(main) modality.

Environment:

* ``LZN_STRICT_PLUGINS=1``: any failure raises at discovery (tests run this way).
* ``LZN_PLUGINS=a,b``: load only these entry points (the others are "disabled").
* ``LZN_DISABLE_PLUGINS=a,b``: do not load these (listed as "disabled").
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from importlib.metadata import distributions, entry_points
from typing import TYPE_CHECKING, Any, Literal

import pluggy

from . import hookspecs
from .errors import (
    ContractError,
    DuplicateModalityError,
    LZNWarning,
    PluginLoadError,
    UnknownModalityError,
    did_you_mean,
)
from .modality import ModalitySpec

if TYPE_CHECKING:  # pragma: no cover
    from importlib.metadata import EntryPoint


GROUP = "lzn"
"""Entry-point group of LZN plugins."""

Status = Literal["ok", "failed", "disabled"]
_TRUE = {"1", "true", "yes", "on"}


class PluginWarning(LZNWarning):
    """A plugin failed to load, or a plugin environment variable names no plugin."""


@dataclass(frozen=True)
class PluginInfo:
    """One entry point of group ``lzn``, as ``lzn plugins`` lists it.

    Attributes:
        name: entry-point name (by convention the name of the plugin's main modality).
        distribution: the installed distribution providing it ("?" when unknown).
        version: that distribution's version ("?" when unknown).
        modalities: modality names it registered (empty unless status is "ok").
        commands: ``lzn`` subcommands it registered (empty unless status is "ok").
        status: "ok", "failed" or "disabled".
        error: why it is not usable (failed: the exception in one line; disabled: which
            variable disabled it); for an "ok" plugin, a note such as a duplicate name.
        traceback: the full traceback of a failure.
    """

    name: str
    distribution: str
    version: str
    modalities: tuple[str, ...] = ()
    status: Status = "ok"
    error: str | None = None
    traceback: str | None = None
    commands: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``modalities`` and ``commands`` as lists)."""
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["commands"] = list(self.commands)
        return d


_COMMAND_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class PluginCommand:
    """An ``lzn`` subcommand a plugin registered (``lzn_register_commands``).

    Attributes:
        name: the subcommand (``lzn NAME``).
        help: one line for ``lzn --help``.
        add_arguments: ``(parser) -> None``.
        run: ``(args) -> int``.
        plugin: entry-point name of the plugin.
        distribution: its distribution.
        version: that distribution's version.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]
    plugin: str
    distribution: str
    version: str

    @property
    def source(self) -> str:
        """``"plugin 'image' (lzn 0.1.0)"``: who provides the command."""
        return f"plugin {self.plugin!r} ({self.distribution} {self.version})"


def _env_names(environ: Mapping[str, str], key: str) -> set[str] | None:
    raw = environ.get(key, "").strip()
    return {n.strip() for n in raw.split(",") if n.strip()} if raw else None


def _dist_of(ep: Any) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return str(dist.metadata["Name"] or getattr(dist, "name", "?")), str(dist.version or "?")


def _one_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def discover_entry_points(path: Sequence[str] | None = None) -> list[EntryPoint]:
    """Entry points of group ``lzn``, each with its distribution (``ep.dist``).

    Args:
        path: directories to search instead of ``sys.path`` (tests use a temporary
            ``*.dist-info`` directory).
    """

    if path is None:
        return list(entry_points(group=GROUP))
    eps: list[EntryPoint] = []
    for dist in distributions(path=list(path)):
        eps.extend(ep for ep in dist.entry_points if ep.group == GROUP)
    return eps


def new_plugin_manager() -> pluggy.PluginManager:
    """A fresh ``pluggy.PluginManager`` for project ``lzn`` with the hook specs added."""

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


class PluginRegistry:
    """The plugins of one process: loads entry points, keeps specs and failures.

    Args:
        entry_points: entry points to load (default: :func:`discover_entry_points`).
        environ: where to read ``LZN_PLUGINS`` / ``LZN_DISABLE_PLUGINS`` /
            ``LZN_STRICT_PLUGINS`` (default ``os.environ``).
        strict: overrides ``LZN_STRICT_PLUGINS``.
    """

    def __init__(
        self,
        entry_points: Iterable[Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        strict: bool | None = None,
    ) -> None:
        self._eps = None if entry_points is None else list(entry_points)
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        env_strict = self._environ.get("LZN_STRICT_PLUGINS", "").strip().lower() in _TRUE
        self.strict = env_strict if strict is None else strict
        self.pm = new_plugin_manager()
        self._infos: dict[str, PluginInfo] = {}
        self._specs: dict[str, ModalitySpec] = {}
        self._owner: dict[str, str] = {}  # modality -> plugin (entry-point) name
        self._duplicates: dict[str, list[str]] = {}  # modality -> every plugin registering it
        self._commands: dict[str, list[PluginCommand]] = {}  # command -> every plugin's registration
        self._causes: dict[str, BaseException] = {}
        self._loaded = False

    # -- loading ---------------------------------------------------------------
    def load(self) -> PluginRegistry:
        """Load every entry point once; raise in strict mode, else warn about failures."""
        if self._loaded:
            return self
        eps = discover_entry_points() if self._eps is None else self._eps
        only = _env_names(self._environ, "LZN_PLUGINS")
        blocked = _env_names(self._environ, "LZN_DISABLE_PLUGINS") or set()
        for ep in eps:
            dist, version = _dist_of(ep)
            if ep.name in self._infos:
                other = self._infos[ep.name]
                exc = PluginLoadError(
                    f"entry point name {ep.name!r} of {dist} {version} is already used by "
                    f"{other.distribution} {other.version}; rename one of them"
                )
                self._fail(f"{ep.name}@{dist}", dist, version, exc)
            elif ep.name in blocked:
                self._infos[ep.name] = PluginInfo(
                    ep.name, dist, version, status="disabled", error="disabled by LZN_DISABLE_PLUGINS"
                )
            elif only is not None and ep.name not in only:
                self._infos[ep.name] = PluginInfo(
                    ep.name, dist, version, status="disabled", error="not listed in LZN_PLUGINS"
                )
            else:
                self._load_one(ep, dist, version)
        self._loaded = True
        self._check_env_names(only, blocked, {ep.name for ep in eps})
        self._report()
        return self

    def _load_one(self, ep: Any, dist: str, version: str) -> None:
        try:
            plugin = ep.load()
            self.pm.register(plugin, name=ep.name)
            try:
                self.pm.check_pending()
                if not self.pm.get_hookcallers(plugin):
                    raise ContractError(
                        f"plugin {ep.name!r} ({ep.value}) implements no hook; decorate "
                        "`lzn_register_modalities` (or `lzn_register_commands`) with `@lzn_core.hookimpl`"
                    )
                specs = self._call_hook(ep.name)
                commands = self._call_commands_hook(ep.name, dist, version)
            except BaseException:
                self.pm.unregister(name=ep.name)
                raise
        except (Exception, SystemExit) as exc:
            self._fail(ep.name, dist, version, exc)
            return
        for spec in specs:
            self._duplicates.setdefault(spec.name, []).append(ep.name)
            self._owner.setdefault(spec.name, ep.name)
            self._specs.setdefault(spec.name, spec)
        for command in commands:
            self._commands.setdefault(command.name, []).append(command)
        self._infos[ep.name] = PluginInfo(
            ep.name, dist, version, tuple(s.name for s in specs), commands=tuple(c.name for c in commands)
        )

    def _call_hook(self, name: str) -> list[ModalitySpec]:

        specs: list[ModalitySpec] = []

        def register(spec: ModalitySpec) -> None:
            if not isinstance(spec, ModalitySpec):
                raise ContractError(
                    f"plugin {name!r}: register() takes a lzn_core.ModalitySpec, got {type(spec).__name__}"
                )
            if any(s.name == spec.name for s in specs):
                raise DuplicateModalityError(f"plugin {name!r} registers modality {spec.name!r} twice")
            specs.append(spec)

        others = [p for n, p in self.pm.list_name_plugin() if n != name]
        self.pm.subset_hook_caller("lzn_register_modalities", remove_plugins=others)(register=register)
        return specs

    def _call_commands_hook(self, name: str, dist: str, version: str) -> list[PluginCommand]:
        commands: list[PluginCommand] = []

        def register(
            command: str,
            *,
            help: str,
            add_arguments: Callable[[argparse.ArgumentParser], None],
            run: Callable[[argparse.Namespace], Any],
        ) -> None:
            where = f"plugin {name!r}: register({command!r}, ...)"
            if not isinstance(command, str) or not _COMMAND_NAME.fullmatch(command):
                raise ContractError(
                    f"{where}: a command name is lower-case letters, digits and dashes (like 'import-official')"
                )
            if not isinstance(help, str) or not help.strip():
                raise ContractError(f"{where}: help must be a non-empty one-line string")
            for what, fn in (("add_arguments", add_arguments), ("run", run)):
                if not callable(fn):
                    raise ContractError(f"{where}: {what} must be callable, got {type(fn).__name__}")
            if any(c.name == command for c in commands):
                raise ContractError(f"plugin {name!r} registers command {command!r} twice")
            commands.append(
                PluginCommand(command, help.strip().splitlines()[0], add_arguments, run, name, dist, version)
            )

        others = [p for n, p in self.pm.list_name_plugin() if n != name]
        self.pm.subset_hook_caller("lzn_register_commands", remove_plugins=others)(register=register)
        return commands

    def _fail(self, name: str, dist: str, version: str, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._infos[name] = PluginInfo(
            name, dist, version, status="failed", error=_one_line(exc), traceback=tb
        )
        self._causes[name] = exc

    def _check_env_names(self, only: set[str] | None, blocked: set[str], known: set[str]) -> None:
        for var, names in (("LZN_PLUGINS", only or set()), ("LZN_DISABLE_PLUGINS", blocked)):
            for n in sorted(names - known):
                msg = (
                    f"{var} names {n!r}, which no installed plugin has{did_you_mean(n, known)}; "
                    f"installed: {', '.join(sorted(known)) or 'none'}"
                )
                if self.strict:
                    raise PluginLoadError(msg)
                warnings.warn(msg, PluginWarning, stacklevel=4)

    def _report(self) -> None:
        dups = {m: ps for m, ps in self._duplicates.items() if len(ps) > 1}
        for m, ps in dups.items():
            for p in ps:
                note = f"modality {m!r} is also registered by " + ", ".join(
                    self._describe(o) for o in ps if o != p
                )
                self._infos[p] = replace(self._infos[p], error=note)
        failed = [i for i in self._infos.values() if i.status == "failed"]
        if self.strict and failed:
            lines = "; ".join(f"{i.name} ({i.distribution} {i.version}): {i.error}" for i in failed)
            raise PluginLoadError(
                f"{len(failed)} plugin(s) failed to load (LZN_STRICT_PLUGINS=1): {lines}"
            ) from self._causes[failed[0].name]
        if self.strict and dups:
            raise self._duplicate_error(next(iter(dups)))
        for i in failed:
            warnings.warn(
                f"LZN plugin {i.name!r} ({i.distribution} {i.version}) failed to load: {i.error}; "
                f"its modality is unavailable (see `lzn plugins`)",
                PluginWarning,
                stacklevel=4,
            )
        for m in dups:
            warnings.warn(str(self._duplicate_error(m)), PluginWarning, stacklevel=4)

    def _describe(self, plugin: str) -> str:
        i = self._infos[plugin]
        return f"{i.distribution} {i.version} (entry point {plugin!r})"

    def _duplicate_error(self, modality: str) -> DuplicateModalityError:
        who = " and ".join(self._describe(p) for p in self._duplicates[modality])
        return DuplicateModalityError(
            f"modality {modality!r} is registered by {who}; uninstall one, or block one with "
            f"LZN_DISABLE_PLUGINS=<entry point name>"
        )

    # -- queries ---------------------------------------------------------------
    def get_modality(self, name: str) -> ModalitySpec:
        """The spec registered under ``name``.

        Raises:
            DuplicateModalityError: two plugins register ``name``.
            PluginLoadError: the plugin whose entry point is named ``name`` failed
                (chained to the original exception).
            UnknownModalityError: nothing registers ``name``; lists what is available.
        """
        self.load()
        if len(self._duplicates.get(name, ())) > 1:
            raise self._duplicate_error(name)
        if name in self._specs:
            return self._specs[name]
        info = self._infos.get(name)
        if info is not None and info.status == "failed":
            raise PluginLoadError(
                f"modality {name!r} is unavailable: plugin {name!r} ({info.distribution} {info.version}) "
                f"failed to load: {info.error}"
            ) from self._causes[name]
        available = sorted(self._specs)
        msg = f"unknown modality {name!r}{did_you_mean(name, available)}; available: {', '.join(available) or 'none'}"
        if info is not None and info.status == "disabled":
            msg = f"modality {name!r} is unavailable: plugin {name!r} is {info.error}; available: " + (
                ", ".join(available) or "none"
            )
        failed = [i for i in self._infos.values() if i.status == "failed"]
        if failed:
            msg += "; plugins that failed to load (their modalities are unknown): " + ", ".join(
                f"{i.name} ({i.distribution}: {i.error})" for i in failed
            )
        raise UnknownModalityError(msg)

    def list_plugins(self) -> list[PluginInfo]:
        """Every entry point of group ``lzn`` (ok, failed or disabled), sorted by name."""
        self.load()
        return sorted(self._infos.values(), key=lambda i: i.name)

    def modalities(self) -> list[str]:
        """Names of the modalities that :meth:`get_modality` can return."""
        self.load()
        return sorted(m for m in self._specs if len(self._duplicates[m]) == 1)

    def commands(self) -> dict[str, PluginCommand]:
        """``lzn`` subcommands of the loaded plugins, by name (a name two plugins register is left out:
        :meth:`command_conflicts` lists it)."""
        self.load()
        return {n: cs[0] for n, cs in sorted(self._commands.items()) if len(cs) == 1}

    def command_conflicts(self) -> dict[str, list[str]]:
        """Command name -> the plugins that all register it (none of them is kept)."""
        self.load()
        return {n: [c.source for c in cs] for n, cs in sorted(self._commands.items()) if len(cs) > 1}

    def duplicates(self) -> dict[str, list[str]]:
        """Modality name -> the plugins (distribution, version, entry point) that all register it."""
        self.load()
        return {
            m: [self._describe(p) for p in ps] for m, ps in sorted(self._duplicates.items()) if len(ps) > 1
        }


_LOCK = threading.RLock()
_LOADING = threading.local()
_REGISTRY: PluginRegistry | None = None


def registry() -> PluginRegistry:
    """The process-wide registry, discovered and loaded on first use."""
    global _REGISTRY
    with _LOCK:
        if _REGISTRY is None:
            if getattr(_LOADING, "active", False):
                raise PluginLoadError(
                    "get_modality()/list_plugins() was called while plugins are being discovered (from a "
                    "plugin's import or hook); look modalities up later, e.g. inside build_encoder"
                )
            _LOADING.active = True
            try:
                reg = PluginRegistry()
                reg.load()  # raises in strict mode; then nothing is cached and the next call retries
            finally:
                _LOADING.active = False
            _REGISTRY = reg
        return _REGISTRY


def reset_plugins(new: PluginRegistry | None = None) -> None:
    """Forget the process-wide registry (rediscover on next use) or install ``new`` (tests)."""
    global _REGISTRY
    with _LOCK:
        _REGISTRY = new


def get_modality(name: str) -> ModalitySpec:
    """The :class:`~lzn_core.modality.ModalitySpec` registered under ``name`` (see :meth:`PluginRegistry.get_modality`)."""
    return registry().get_modality(name)


def list_plugins() -> list[PluginInfo]:
    """Every LZN plugin with its status (see :meth:`PluginRegistry.list_plugins`)."""
    return registry().list_plugins()


def plugin_commands() -> dict[str, PluginCommand]:
    """The ``lzn`` subcommands plugins registered (see :meth:`PluginRegistry.commands`)."""
    return registry().commands()


def list_modalities() -> list[str]:
    """Names of every modality :func:`get_modality` can return (sorted)."""
    return registry().modalities()
