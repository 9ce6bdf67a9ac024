"""``lzn recipes``: the shipped recipes and training script; ``lzn recipes cp NAME DIR`` copies one to edit.

    lzn recipes                               # name + the first line of each header, the script, the DeepSpeed configs
    lzn recipes cp digits_joint.yaml .        # ./digits_joint.yaml + ./ds/cpu.json (the config it names)
    lzn recipes cp train.py my_run/           # the training script
    lzn recipes cp slurm/train.sbatch .       # the SLURM batch script (docs/cluster.md)
    python -m lzn_recipes.train --recipe digits_joint.yaml          # trains the copy in the cwd

The shipped files are the package ``lzn_recipes`` (a clone's ``recipes/``). A recipe NAME resolves
in the cwd first, then in the shipped recipes (as ``--recipe`` does); the DeepSpeed JSON it names
is copied beside it with the same relative path, so the copy finds its own.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
from pathlib import Path

from ..errors import LZNError
from ..recipe.files import RECIPES_DIR, read_yaml, resolve_recipe_path

HELP = "list the shipped recipes and training script; `cp NAME DIR` copies one to edit"

SCRIPT = "train.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("ls", help="list them (the default)")
    cp = sub.add_parser("cp", help="copy a recipe (with the DeepSpeed JSON it names), the script or a config")
    cp.add_argument("name", metavar="NAME", help="digits_joint.yaml (or digits_joint), train.py, ds/cpu.json")
    cp.add_argument("dest", metavar="DEST", help="a directory, or the new file's path")
    cp.add_argument("--force", action="store_true", help="overwrite files that exist")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "cp":
        return copy(args.name, args.dest, force=args.force)
    print(listing())
    return 0


# ----------------------------------------------------------------------------- ls


def shipped() -> list[tuple[str, str, str]]:
    """(name, kind, description) of every shipped file: recipes, the script, DeepSpeed configs."""
    rows = [(p.name, "recipe", header_line(p)) for p in sorted(RECIPES_DIR.glob("*.yaml"))]
    script = RECIPES_DIR / SCRIPT
    if script.is_file():
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        rows.append((SCRIPT, "script", doc.strip().splitlines()[0] if doc.strip() else ""))
    for p in sorted((RECIPES_DIR / "slurm").glob("*.sbatch")):
        rows.append((f"slurm/{p.name}", "slurm", header_line(p)))
    for p in sorted((RECIPES_DIR / "ds").glob("*.json")):
        try:
            comment = str(json.loads(p.read_text()).get("_comment", ""))
        except (json.JSONDecodeError, AttributeError):
            comment = ""
        rows.append(
            (f"ds/{p.name}", "deepspeed", comment.split(". ")[0].rstrip(".") + "." if comment else "")
        )
    return rows


def header_line(path: Path) -> str:
    """The first line of a recipe's header comment, without its ``name:`` prefix."""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("#!"):  # a shell script's interpreter line
            continue
        if not text.startswith("#"):
            return ""
        text = text.lstrip("#").strip()
        prefix = f"{path.stem}:"
        return text[len(prefix) :].strip() if text.startswith(prefix) else text
    return ""


def listing() -> str:
    rows = shipped()
    if not rows:
        return f"no recipes in {RECIPES_DIR}"
    head = ("NAME", "KIND", "DESCRIPTION")
    w = [max(len(r[k]) for r in [head, *rows]) for k in range(2)]
    lines = [f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]}".rstrip() for r in [head, *rows]]
    lines += [
        "",
        f"shipped in {RECIPES_DIR}",
        "copy one to edit: lzn recipes cp NAME DIR; train a recipe: python -m lzn_recipes.train --recipe NAME",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- cp


def copy(name: str, dest: str | Path, *, force: bool = False) -> int:
    """Copy the shipped file ``name`` (a recipe also from the cwd) to ``dest``; prints what it did."""
    source, extra = _source(name)
    dest = Path(dest)
    into_dir = dest.is_dir() or str(dest).endswith(("/", "\\")) or not dest.suffix
    target = dest / source.name if into_dir else dest
    plan = [(source, target)]
    if extra is not None:
        rel, found = extra
        plan.append((found, target.parent / rel))
    for src, dst in plan:
        if dst.exists() and dst.resolve() == src.resolve():
            raise LZNError(f"{dst} is the file itself; copy it to another directory")
        if dst.exists() and not force and dst.read_bytes() != src.read_bytes():
            raise LZNError(f"{dst} exists; pass --force to overwrite it, or copy to another directory")
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    also = f" (+ {plan[1][1]})" if len(plan) > 1 else ""
    print(f"copied {source} -> {target}{also}")
    if source.suffix in (".yaml", ".yml"):
        print(f"train it: python -m lzn_recipes.train --recipe {target}")
    elif source.suffix == ".sbatch":
        print(f"submit it: sbatch {target} RECIPE [key=value ...]  (docs/cluster.md)")
    elif source.name == SCRIPT:
        print(f"run it: python {target} --recipe NAME  (or deepspeed {target} --recipe NAME)")
    return 0


def _source(name: str) -> tuple[Path, tuple[str, Path] | None]:
    """The file to copy and, for a recipe, (relative path, file) of the DeepSpeed JSON it names."""
    shipped_file = RECIPES_DIR / name
    if name == SCRIPT or (name.endswith((".json", ".sbatch")) and shipped_file.is_file()):
        if not shipped_file.is_file():
            raise LZNError(f"{name!r} is not shipped in {RECIPES_DIR}; see `lzn recipes`")
        return shipped_file, None
    if name.endswith(".json"):
        available = ", ".join(r[0] for r in shipped() if r[1] == "deepspeed")
        raise LZNError(f"no DeepSpeed config {name!r} in {RECIPES_DIR}; shipped: {available or 'none'}")
    path = resolve_recipe_path(name)
    ds = read_yaml(path).get("deepspeed")
    if not isinstance(ds, str) or Path(ds).is_absolute():
        return path, None
    bases = (path.parent, Path.cwd(), RECIPES_DIR)  # where a recipe's deepspeed path resolves, in order
    for base in bases:
        if (base / ds).is_file():
            return path, (ds, base / ds)
    raise LZNError(
        f"recipe {path}: deepspeed: file {ds!r} not found (looked in {', '.join(map(str, bases))}); "
        "fix the path or copy the JSON yourself"
    )
