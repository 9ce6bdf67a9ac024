"""The pluggy hook specifications of LZN (project name ``"lzn"``).

A plugin is a module named by an entry point of group ``lzn`` (see
``docs/writing-a-plugin.md``). It implements hooks with the marker exported
here::

    import lzn_core

    @lzn_core.hookimpl
    def lzn_register_modalities(register):
        register(ModalitySpec(name="vector", ...))

    @lzn_core.hookimpl
    def lzn_register_commands(register):
        register("vector-convert", help="...", add_arguments=add_arguments, run=run)

A plugin implements one or both. Every hook name starts with ``lzn_``. This module imports only pluggy, so
``lzn_core.hookimpl`` is cheap for plugins to import at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .modality import ModalitySpec

PROJECT_NAME = "lzn"
"""pluggy project name and entry-point group of LZN plugins."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def lzn_register_modalities(register: Callable[[ModalitySpec], None]) -> None:
    """Register the modalities a plugin provides.

    Called once per process, the first time the core needs a modality (lazy
    discovery: ``import lzn_core`` never calls it). The plugin calls
    ``register(spec)`` once per :class:`lzn_core.modality.ModalitySpec`; the
    hook's return value is ignored.

    Rules the core enforces:

    * ``spec`` must be a ``ModalitySpec`` (anything else fails the plugin with a
      ``ContractError``).
    * A modality name may be registered by one distribution only; a second one
      makes ``get_modality(name)`` raise ``DuplicateModalityError`` naming both.
    * Registration is all or nothing per plugin: if the hook raises after some
      ``register`` calls, none of its modalities are kept and the plugin is
      listed as failed (``lzn plugins``) with the reason.
    * Keep the hook cheap: build models inside ``spec.build_encoder`` /
      ``spec.build_decoder`` and import torch-heavy code there, not here.

    Args:
        register: callback taking one ``ModalitySpec``.
    """


@hookspec
def lzn_register_commands(register: Callable[..., None]) -> None:
    """Add subcommands to the ``lzn`` command (a modality's own tools: an importer, a converter).

    Called once per process, when the ``lzn`` command needs the list (``lzn --help``, or a
    command name that is not one of the core's). The plugin calls, once per command::

        register(name, help=ONE_LINE, add_arguments=add_arguments, run=run)

    * ``name``: lower-case letters, digits and dashes (``import-official``); ``lzn NAME``
      runs it. A name the core already uses, or that two plugins register, is reported by
      ``lzn --help`` and the core's (or neither plugin's) command is kept.
    * ``add_arguments(parser: argparse.ArgumentParser) -> None`` adds its options;
      ``run(args: argparse.Namespace) -> int`` runs it and returns the exit status.
      Errors of the framework (``LZNError``), missing files and bad values print as one line;
      anything else also names the plugin that provides the command. The host keeps working.
    * Keep the hook cheap: ``lzn --help`` calls it. Import heavy code (torch) inside ``run``.

    Registration is all or nothing per plugin, as for modalities: if the hook raises, the plugin
    is listed as failed (``lzn plugins``) and none of its commands or modalities are kept.

    Args:
        register: callback ``register(name, *, help, add_arguments, run)``.
    """
