"""The package layout as a contract: no import cycles, the core names no built-in plugin, and the
top level of lzn_core is the contract and the math."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "lzn_core"
BUILT_INS = ("lzn_image", "lzn_label", "lzn_text")
BUILT_IN_NAMES = ("image", "label", "text")
ALLOWED = {
    "lzn_core/data/convert.py": {"image"},  # the caption JSONL format's field {"image": path, ...}
}


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


def _code_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


@pytest.mark.parametrize(
    "path",
    [*sorted(CORE.rglob("*.py")), ROOT / "recipes" / "train.py"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_core_and_training_script_name_no_built_in_plugin(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = (
        _top_level_imports(path)
        | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    )
    assert not [m for m in imported if m.split(".")[0] in BUILT_INS], f"{path} imports a built-in plugin"
    allowed = ALLOWED.get(str(path.relative_to(ROOT)), set())
    keyed = [(line, s) for line, s in _code_strings(tree) if s in BUILT_IN_NAMES and s not in allowed]
    assert not keyed, f"{path} keys behaviour on built-in modality names: {keyed}"


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
        "testing.py",
        "zoning.py",
    ]
    roles = sorted(p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert roles == ["cli", "data", "eval", "graphs", "io", "recipe", "train"]
