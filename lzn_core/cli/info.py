"""``lzn info MODEL``: what a model is, from its ``info.json`` and ``recipe.yaml``.

    lzn info runs/digits_joint/final
    lzn info user/lzn-digits --json

Modalities with the plugin behind each (entry point, distribution, version: those that trained
it, and a note where the installed one differs or is missing), the latent, the tasks it was
trained on, the compose edges it serves, the training length and the final metrics. Nothing is
built: a model whose plugins are not installed here is described all the same. An export older
than ``info.json`` is loaded to compute what it can (its training metrics then come from the
run's ``metrics.jsonl`` when MODEL is a run's ``final/``).
"""

from __future__ import annotations

import argparse
import json
import textwrap
import warnings
from typing import Any

from ..io import load, locate, run_metrics
from ..io.files import INFO, RECIPE, model_info, read_info, read_recipe_mapping
from ..io.hub import CARD
from ..plugins import PluginRegistry, PluginWarning

HELP = "show what a model is: modalities, plugins and versions, latent, compose edges, training, metrics"

_WIDTH = 100
_INDENT = 13


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="an exported model directory, a run directory (its final/) or a hub id user/name",
    )
    parser.add_argument("--json", action="store_true", help="print info.json (with the recipe) as JSON")
    parser.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")


def run(args: argparse.Namespace) -> int:
    folder = locate(args.model, revision=args.revision, files=(RECIPE, INFO, CARD))  # not the weights
    recipe = read_recipe_mapping(folder)
    info, computed = read_info(folder), False
    if info is None:  # an export older than info.json: build the model to describe it
        info, computed = model_info(load(args.model, revision=args.revision), run_metrics(folder)), True
    if args.json:
        print(json.dumps({"path": str(folder), **info, "recipe": recipe}, indent=2))
        return 0
    print(describe(info, recipe, str(args.model), computed=computed))
    return 0


def describe(info: dict[str, Any], recipe: dict[str, Any], where: str, *, computed: bool = False) -> str:
    """The text ``lzn info`` prints for ``info`` (``info.json``) and the recipe mapping."""
    lines = [f"{info.get('name') or recipe.get('name')}  ({where})"]
    made = f"lzn {info.get('lzn_version', '?')}, {info.get('created', '?')}"
    lines.append(f"  exported by {made}; {info.get('parameters', 0):,} parameters")
    if computed:
        lines.append(
            "  (no info.json: an older export; computed from the model with the plugins installed here)"
        )
    latent = recipe.get("latent") or {}
    solver = ", ".join(
        f"{k} {latent[k]}" for k in ("solver", "steps", "g", "alpha", "bank_size") if k in latent
    )
    lines += _field("latent", [f"q = {info.get('latent_dim')}" + (f"; {solver}" if solver else "")])
    lines += _field("modalities", _modality_table(info.get("modalities") or {}))
    lines += _field("tasks", [_task(t) for t in recipe.get("tasks") or []])
    lines += _field("edges", _wrap(", ".join(info.get("edges") or []) or "none"))
    training = info.get("training")
    if not training:
        lines += _field("training", ["no training metrics stored (not exported from a training run)"])
        return "\n".join(lines)
    minutes = float(training.get("wall_time_s") or 0.0) / 60
    lines += _field(
        "training",
        [
            f"{training['steps']} of {training['iterations']} iterations, batch {training['batch_size']} "
            f"({training['samples']:,} samples), {minutes:.1f} min, {training.get('skipped_steps', 0)} skipped steps"
        ],
    )
    final = dict(training.get("final") or {})
    rows = [f"step {final.pop('step', '?')}: " + ", ".join(f"{k} {_num(v)}" for k, v in final.items())]
    evaluation = dict(training.get("eval") or {})
    if evaluation:
        step = evaluation.pop("step", "?")
        rows.append(f"eval at step {step}: " + ", ".join(f"{k} {_num(v)}" for k, v in evaluation.items()))
    lines += _field("metrics", [w for r in rows for w in _wrap(r)])
    return "\n".join(lines)


def _field(name: str, values: list[str]) -> list[str]:
    values = values or ["-"]
    return [f"{name:<{_INDENT - 1}} {values[0]}", *(" " * _INDENT + v for v in values[1:])]


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH - _INDENT, break_on_hyphens=False) or [""]


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _modality_table(mods: dict[str, Any]) -> list[str]:
    installed = _installed()
    head = ("NAME", "PLUGIN", "DISTRIBUTION", "VERSION", "DECODER", "PARAMS (ENC / DEC)", "BANK")
    rows = []
    for name, m in mods.items():
        params = m.get("parameters") or {}
        dist = f"{m.get('distribution') or '?'}"
        version = f"{m.get('version') or '?'}"
        here = installed.get(m.get("plugin"))
        note = ""
        if here is None:
            note = "  (not installed here)"
        elif (here.distribution, here.version) != (m.get("distribution"), m.get("version")):
            note = f"  (installed: {here.distribution} {here.version})"
        rows.append(
            (
                name,
                f"{m.get('plugin')} (spec {m.get('spec_version', '?')})",
                dist,
                version,
                str(m.get("decoder")),
                " / ".join(f"{params[side]:,}" if side in params else "-" for side in ("encoder", "decoder")),
                str(m.get("bank") if m.get("bank") is not None else "-"),
                note,
            )
        )
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]
    out = []
    for r in [head, *rows]:
        cells = "  ".join(c.ljust(w) for c, w in zip(r[: len(head)], widths, strict=True))
        out.append((cells + (r[len(head)] if len(r) > len(head) else "")).rstrip())
    return out


def _installed() -> dict[str, Any]:
    """Registered modality name -> the PluginInfo that provides it here (never raises)."""
    reg = PluginRegistry(strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        infos = reg.list_plugins()
    return {m: i for i in infos if i.status == "ok" for m in i.modalities}


def _task(task: dict[str, Any]) -> str:
    kind, weight = task.get("kind"), task.get("weight", 1.0)
    if kind == "generate":
        cond = f" conditioned on {task['condition']}" if task.get("condition") else ""
        return f"generate {task.get('target')}{cond} (weight {weight})"
    if kind == "align":
        extra = ", ".join(f"{k} {task[k]}" for k in ("loss", "steps") if task.get(k) is not None)
        return f"align {task.get('source')} -> {task.get('target')} ({extra}; weight {weight})"
    return f"{kind} {task}"
