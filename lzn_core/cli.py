"""The ``lzn`` command.

Each subcommand lives in the module that owns its concept; this file only
lists them, so ``lzn --help`` stays fast (nothing heavy is imported). A
subcommand ``NAME`` in module ``M`` is two functions there:
``cli_NAME_args(parser)`` adds its arguments and ``cli_NAME(args) -> int`` runs it.
Errors of the framework (``LZNError``) and of the user's files print as one
line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Order is the order of `lzn --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("lzn_core.plugins", "list modality plugins: name, distribution, version, status"),
    "validate": ("lzn_core.recipe", "check a recipe (and key=value overrides) without training"),
    "shards": ("lzn_core.shards", "build webdataset shards: digits, cifar10, folder, captions"),
    "export": ("lzn_core.export", "write a run's weights (safetensors) + resolved recipe"),
    "sample": ("lzn_core.inference", "generate images from a model (optionally of one class)"),
    "classify": ("lzn_core.inference", "classify images with the label flow"),
    "embed": ("lzn_core.inference", "write representations (backbone, anchors or latents)"),
    "reconstruct": ("lzn_core.inference", "reconstruct an image through its latent"),
    "eval": ("lzn_core.evaluation", "evaluate a run or model: accuracy, FID/KID, probes, calibration"),
}

_EPILOG = """\
quick start:
  lzn shards digits data/digits                       # the embedded data set (no download)
  lzn validate digits_joint.yaml                      # check a recipe
  deepspeed recipes/train.py --recipe digits_joint.yaml
  lzn export runs/digits_joint model/ && lzn sample model/ --label 3 -n 16 -o grid.png

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
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def _command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    p = argparse.ArgumentParser(prog=f"lzn {name}", description=help_)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    getattr(module, f"cli_{name}_args")(p)
    return p, getattr(module, f"cli_{name}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lzn`` console script (also ``python -m lzn_core``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LZN_DEBUG") == "1"
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or command not in COMMANDS:
        top = _top_parser()
        args = top.parse_args(argv)  # prints help / "invalid choice" and exits for bad input
        if args.version:
            from importlib.metadata import version

            print(f"lzn {version('lzn')}")
            return 0
        top.print_help()
        return 0 if command is None and not argv else 2
    try:
        parser, run = _command_parser(command)
        rest = list(argv)
        rest.remove(command)  # the first occurrence only: a later one may be an argument value
        args = parser.parse_args(rest)
        return int(run(args) or 0)  # type: ignore[operator]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for users, the traceback with --debug
        from .errors import LZNError

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
