"""The ``lzn`` command: one module per subcommand in this package, plus the plugins' commands.

This file only lists the core's, so ``lzn --help`` stays fast (no command module and no torch is
imported for it). A subcommand ``NAME`` is the module ``lzn_core.cli.NAME`` (dashes become
underscores) with ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Plugins add commands through the hook ``lzn_register_commands`` (:mod:`lzn_core.hookspecs`):
``lzn --help`` lists them (discovering the plugins, which import no torch), and a name that is
not the core's is looked up there. Errors of the framework (``LZNError``) and of the user's
files print as one line; ``--debug`` shows the traceback. A plugin command that fails in any
other way is reported with the plugin that provides it; the other commands keep working.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from ..errors import LZNError

if TYPE_CHECKING:  # pragma: no cover
    from ..plugins import PluginCommand

# name -> one-line help (the same text as the module's HELP). Order is the order of `lzn --help`.
COMMANDS: dict[str, str] = {
    "plugins": "list plugins: name, distribution, version, modalities, commands, status",
    "validate": "check a recipe (and key=value overrides) without training",
    "plan": "the memory plan of a training step: rows per micro-batch, passes, predicted peak (train.micro_batch_size: auto)",
    "shards": "build webdataset shards: digits, cifar10, folder, captions; map: add a key to shards",
    "export": "write a run's weights (safetensors) + resolved recipe",
    "sample": "generate items from a model (optionally from the zone of a class)",
    "classify": "classify files with the label flow (nearest class zone, zone-vote confidence)",
    "embed": "write representations of files (backbone features, anchors or latents)",
    "reconstruct": "reconstruct files through their latent",
    "eval": "evaluate a run or model: accuracy, calibration, OOD, FID/KID, reconstruction, probes",
    "info": "show what a model is: modalities, plugins and versions, latent, compose edges, training, metrics",
    "recipes": "list the shipped recipes and training script; `cp NAME DIR` copies one to edit",
}


_EPILOG = """\
quick start:
  lzn shards digits data/digits                       # the embedded data set (no download)
  lzn recipes                                         # the shipped recipes (lzn recipes cp NAME DIR to edit one)
  lzn validate digits_joint.yaml                      # check a recipe
  deepspeed recipes/train.py --recipe digits_joint.yaml
  lzn export runs/digits_joint model/ && lzn sample model/ --label 3 -n 16 -o grid.png
  lzn info runs/digits_joint/final                    # what a model is (also a hub id: user/name)

run `lzn COMMAND --help` for a command's options.
"""


def _plugin_commands() -> tuple[dict[str, PluginCommand], list[str]]:
    """The plugins' commands whose names the core does not use, and one line per problem (a plugin
    that failed to load, a name taken by the core or by two plugins). Never raises."""
    from ..plugins import registry  # here, not at the top: only --help and unknown names discover plugins

    try:
        reg = registry()
        found, conflicts = reg.commands(), reg.command_conflicts()
    except LZNError as exc:  # strict discovery (LZN_STRICT_PLUGINS=1) with a broken plugin
        return {}, [f"plugin commands unavailable: {exc}"]
    problems = [
        f"command {name!r} of {found[name].source} is not available: the core has a command of that name"
        for name in found
        if name in COMMANDS
    ]
    problems += [
        f"command {n!r} is registered by {' and '.join(who)}; none is used" for n, who in conflicts.items()
    ]
    return {n: c for n, c in found.items() if n not in COMMANDS}, problems


def _top_parser(plugins: dict[str, PluginCommand] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lzn",
        description="Latent Zoning Networks: one Gaussian latent space for generation, "
        "representation learning and classification.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    for name, command in (plugins or {}).items():
        sub.add_parser(name, help=f"{command.help} [plugin {command.distribution}]", add_help=False)
    return p


def _command_parser(name: str, plugin: PluginCommand | None = None) -> tuple[argparse.ArgumentParser, Any]:
    if plugin is not None:
        help_, add_arguments, run = plugin.help, plugin.add_arguments, plugin.run
    else:
        module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
        help_, add_arguments, run = module.HELP, module.add_arguments, module.run
    p = argparse.ArgumentParser(prog=f"lzn {name}", description=help_)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    add_arguments(p)
    return p, run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lzn`` console script (also ``python -m lzn_core``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LZN_DEBUG") == "1"
    command = next((a for a in argv if not a.startswith("-")), None)
    plugin = None
    if command is None or command not in COMMANDS:
        plugins, problems = ({}, []) if argv == ["--version"] else _plugin_commands()
        plugin = plugins.get(command) if command is not None else None
        if plugin is None:
            for line in problems:
                print(f"lzn: {line}", file=sys.stderr)
            top = _top_parser(plugins)
            args = top.parse_args(argv)  # prints help / "invalid choice" and exits for bad input
            if args.version:
                print(f"lzn {version('lzn')}")
                return 0
            top.print_help()
            return 0 if command is None and not argv else 2
    assert command is not None  # a core command, or a plugin's
    try:
        parser, run = _command_parser(command, plugin)
        rest = list(argv)
        rest.remove(command)  # the first occurrence only: a later one may be an argument value
        args = parser.parse_args(rest)
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for users, the traceback with --debug
        if debug:
            raise
        known = (
            LZNError,
            FileNotFoundError,
            IsADirectoryError,
            NotADirectoryError,
            PermissionError,
            ValueError,
        )
        kind = "error" if isinstance(exc, known) else f"error ({type(exc).__name__})"
        if plugin is not None and not isinstance(exc, known):
            kind += f" in the command of {plugin.source}"
        print(f"lzn {command}: {kind}: {exc}", file=sys.stderr)
        if not isinstance(exc, known):
            print("  (run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
