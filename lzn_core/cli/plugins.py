"""``lzn plugins``: every plugin with its distribution, version, modalities, commands and status."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from ..plugins import PluginInfo, PluginRegistry, PluginWarning

HELP = "list plugins: name, distribution, version, modalities, commands, status"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lzn plugins``."""
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--verbose", "-v", action="store_true", help="show the tracebacks of failed plugins")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a plugin failed or two distributions register one modality name",
    )


def run(args: argparse.Namespace) -> int:
    """List every plugin. Never raises for a broken plugin: this is the tool to diagnose one."""
    reg = PluginRegistry(strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        infos = reg.list_plugins()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
    else:
        print(_table(infos, verbose=args.verbose))
    if not args.check:
        return 0
    bad = [i for i in infos if i.status == "failed"]
    duplicates = reg.duplicates()
    for i in bad:
        print(
            f"lzn plugins --check: plugin {i.name!r} ({i.distribution} {i.version}) failed: {i.error}",
            file=sys.stderr,
        )
    for modality, who in duplicates.items():
        print(
            f"lzn plugins --check: modality {modality!r} is registered by {' and '.join(who)}",
            file=sys.stderr,
        )
    return 1 if bad or duplicates else 0


def _table(infos: Sequence[PluginInfo], *, verbose: bool = False) -> str:
    if not infos:
        return "no LZN plugins installed (entry-point group 'lzn')"
    head = ("NAME", "DISTRIBUTION", "VERSION", "MODALITIES", "COMMANDS", "STATUS", "REASON")
    rows = [
        (
            i.name,
            i.distribution,
            i.version,
            ",".join(i.modalities) or "-",
            ",".join(i.commands) or "-",
            i.status,
            (i.error or "") if verbose else _clip(i.error or "", 90),
        )
        for i in infos
    ]
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(6)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6] for r in [head, *rows]
    ]
    if verbose:
        lines += [f"\n--- {i.name} ---\n{i.traceback}" for i in infos if i.traceback]
    return "\n".join(line.rstrip() for line in lines)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
