"""The ``lzn`` command: one module per subcommand in this package.

This file only lists them, so ``lzn --help`` stays fast (no command module, torch or plugin
is imported for it). A subcommand ``NAME`` is the module ``lzn_core.cli.NAME`` (dashes become
underscores) with ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors of the framework (``LZNError``) and of the user's files print as one line;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from ..errors import LZNError

# name -> one-line help (the same text as the module's HELP). Order is the order of `lzn --help`.
COMMANDS: dict[str, str] = {
    "plugins": "list modality plugins: name, distribution, version, status",
    "validate": "check a recipe (and key=value overrides) without training",
    "plan": "the memory plan of a training step: rows per micro-batch, passes, predicted peak (train.micro_batch_size: auto)",
    "shards": "build webdataset shards: digits, cifar10, folder, captions; map: add a key to shards",
    "export": "write a run's weights (safetensors) + resolved recipe",
    "sample": "generate items from a model (optionally from the zone of a class)",
    "classify": "classify files with the label flow (nearest class zone, zone-vote confidence)",
    "embed": "write representations of files (backbone features, anchors or latents)",
    "reconstruct": "reconstruct files through their latent",
    "eval": "evaluate a run or model: accuracy, calibration, OOD, FID/KID, reconstruction, probes",
    "import-official": "convert a checkpoint of the paper's official code into an exported model",
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


def _top_parser() -> argparse.ArgumentParser:
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
    return p


def _command_parser(name: str) -> tuple[argparse.ArgumentParser, Any]:
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    p = argparse.ArgumentParser(prog=f"lzn {name}", description=module.HELP)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    module.add_arguments(p)
    return p, module.run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lzn`` console script (also ``python -m lzn_core``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LZN_DEBUG") == "1"
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or command not in COMMANDS:
        top = _top_parser()
        args = top.parse_args(argv)  # prints help / "invalid choice" and exits for bad input
        if args.version:
            print(f"lzn {version('lzn')}")
            return 0
        top.print_help()
        return 0 if command is None and not argv else 2
    try:
        parser, run = _command_parser(command)
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
        print(f"lzn {command}: {kind}: {exc}", file=sys.stderr)
        if not isinstance(exc, known):
            print("  (run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
