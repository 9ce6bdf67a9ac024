"""The pluggy hook specifications of LZN (project name ``"lzn"``).

A plugin is a module named by an entry point of group ``lzn`` (see
``docs/writing-a-plugin.md``). It implements hooks with the marker exported
here::

    import lzn_core

    @lzn_core.hookimpl
    def lzn_register_modalities(register):
        register(ModalitySpec(name="vector", ...))

Every hook name starts with ``lzn_``. This module imports only pluggy, so
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
