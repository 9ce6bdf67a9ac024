"""The package layout as a contract: no import cycles, the core names no built-in plugin, and the
top level of lzn_core is the contract and the math."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from paths import ROOT

CORE = ROOT / "lzn_core"
BUILT_INS = ("lzn_image", "lzn_label", "lzn_text")
BUILT_IN_NAMES = ("image", "label", "text")
WRITERS = ("make_sample",)
"""The call that builds a shard sample: a module making samples chooses the keys it writes (a
converter); the writer itself (``data/shards.py``) and every reader take keys from specs."""


def _built_in_shard_keys() -> set[str]:
    """The shard keys the built-in plugins read (their specs; importing them imports no torch)."""
    import importlib

    return {key for name in BUILT_INS for key in importlib.import_module(f"{name}.plugin").SPEC.shard_keys}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _top_level_imports(path: Path, *, everywhere: bool = False) -> set[str]:
    """Modules imported when ``path`` is imported: module-level statements, not TYPE_CHECKING blocks
    (``everywhere``: also the imports inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if everywhere and isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With)
            ):
                visit(node.body)
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)

    visit(ast.parse(path.read_text()).body)
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the lzn_core modules it imports anywhere (module level or in a function)."""
    files = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        deps = {d for d in _top_level_imports(path, everywhere=True) if d in files and d != mod}
        # importing a.b.c imports its packages a and a.b first; a submodule's own packages are
        # already being imported when it runs, so they are no edge
        parents = {".".join(d.split(".")[:i]) for d in deps for i in range(2, d.count(".") + 1)}
        ancestors = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
        graph[mod] = (deps | parents) - ancestors - {mod}
    return graph


def test_import_graph_has_no_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert len(graph) > 30  # the walk saw the package


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _json_record_keys(tree: ast.AST) -> set[int]:
    """String constants that are keys looked up in a record parsed from a user's JSON file
    (``rec = json.loads(line); rec.get("image")``): a file format's field names, not modality names."""
    out: set[int] = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        records = {
            t.id
            for n in ast.walk(fn)
            if isinstance(n, ast.Assign)
            and isinstance(n.value, ast.Call)
            and isinstance(n.value.func, ast.Attribute)
            and n.value.func.attr == "loads"
            and getattr(n.value.func.value, "id", None) == "json"
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for n in ast.walk(fn):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get":
                if (
                    getattr(n.func.value, "id", None) in records
                    and n.args
                    and isinstance(n.args[0], ast.Constant)
                ):
                    out.add(id(n.args[0]))
            elif isinstance(n, ast.Subscript) and getattr(n.value, "id", None) in records:
                if isinstance(n.slice, ast.Constant):
                    out.add(id(n.slice))
    return out


def _code_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings nor JSON-record field names; an f-string as its
    literal parts joined by ``{}`` (``f"encoders.{name}.w"`` gives ``"encoders.{}.w"``)."""
    skip = _docstrings(tree) | _json_record_keys(tree)
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in n.values]
            skip.update(id(v) for v in n.values)
            out.append((n.lineno, "".join(str(p) for p in parts)))
    out += [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]
    return out


def _names_in(text: str, names: set[str]) -> set[str]:
    """``names`` that ``text`` is, or that are a component of a dotted or slashed name in it
    (``"encoders.image"``, ``"{m}.label."``, ``"image/x"``); prose with spaces around a word is not."""
    found = {text} & names
    for word in text.split():
        word = word.rstrip(".,;:!?)]'\"`").lstrip("(['\"`")  # a word at the end of a sentence is prose
        if "." in word or "/" in word:
            found |= {part for part in word.replace("/", ".").split(".") if part in names}
    return found


def _writes_samples(tree: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and (getattr(n.func, "id", None) or getattr(n.func, "attr", None)) in WRITERS
        for n in ast.walk(tree)
    )


SOURCES = [*sorted(CORE.rglob("*.py")), ROOT / "recipes" / "train.py"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_and_training_script_name_no_built_in_plugin(path: Path) -> None:
    """No import of a built-in plugin; no string (f-string parts and dotted names included) that
    names a built-in modality; a built-in's shard key only where samples are written (a
    converter chooses its keys), never where they are read."""
    tree = ast.parse(path.read_text())
    imported = (
        _top_level_imports(path)
        | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    )
    assert not [m for m in imported if m.split(".")[0] in BUILT_INS], f"{path} imports a built-in plugin"
    strings = _code_strings(tree)
    keyed = [(line, s) for line, s in strings if _names_in(s, set(BUILT_IN_NAMES))]
    assert not keyed, f"{path} keys behaviour on built-in modality names: {keyed}"
    if not _writes_samples(tree):
        keys = _built_in_shard_keys()
        named = [(line, s) for line, s in strings if _names_in(s, keys) - {"png"} or s in keys]
        assert not named, f"{path} reads the built-ins' shard keys by name (take them from the spec): {named}"


def test_the_layout_checks_catch_what_they_are_for() -> None:
    """The checks above on snippets: each kind of naming is caught, JSON fields and prose are not."""
    names = set(BUILT_IN_NAMES)
    caught = [
        'x = "image"',
        'x = f"encoders.image.{k}"',
        'x = f"{prefix}.label"',
        'x = f"label.{k}"',
        'state["decoders.text.lm.weight"]',
    ]
    for src in caught:
        assert any(_names_in(s, names) for _, s in _code_strings(ast.parse(src))), src
    free = [
        'def f(line):\n    rec = json.loads(line)\n    return rec.get("image")',
        'x = "an image of a label, in text."',
        'x = "a.png"',
    ]
    for src in free:
        assert not any(_names_in(s, names) for _, s in _code_strings(ast.parse(src))), src
    assert _writes_samples(ast.parse('make_sample("k", {"png": b""})'))
    assert not _writes_samples(ast.parse('fields["png"]'))
    old_writer = 'def make_sample(key, png, caption):\n    return key, {"png": png, "txt": caption}'
    keys = _built_in_shard_keys()
    assert not _writes_samples(ast.parse(old_writer))  # defines the writer, builds no sample of its own
    assert {s for _, s in _code_strings(ast.parse(old_writer)) if s in keys} == {"png", "txt"}


def test_top_level_is_the_contract_and_the_math() -> None:
    top = sorted(p.name for p in CORE.glob("*.py"))
    assert top == [
        "__init__.py",
        "__main__.py",
        "_posterior.py",
        "alignment.py",
        "errors.py",
        "hookspecs.py",
        "latent.py",
        "modality.py",
        "model.py",
        "plugins.py",
        "zoning.py",
    ]
    roles = sorted(p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert roles == ["cli", "data", "eval", "graphs", "io", "recipe", "testing", "train"]
