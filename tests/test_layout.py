"""The package's shape: imports flow one way, the top level stays small, files stay readable.

Read from the sources (no import is executed), so a rule broken anywhere fails here with the
modules that break it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "fbdl_fast"
CRATE = ROOT / "rust_tokenizer" / "src"

# The leaves and the run folder's module sit at the top; everything else is in a subpackage.
MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 600
# Long on purpose: the Triton kernels (one file per op, kernels and launch code read together)
# and the Trainer (one class whose loop is read top to bottom).
LONG_FILES_ALLOWED = {"training/trainer.py"}
LONG_FOLDERS_ALLOWED = {"kernels"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, typing_too: bool) -> list[ast.AST]:
    """Import statements anywhere in the module (function-local ones too); those under
    `if TYPE_CHECKING:` only when `typing_too`."""
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            typing = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            if typing and not typing_too:
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the fbdl_fast modules it imports (a `from package import name` counts as
    importing the submodule when `name` is one), type-checking imports included: a module's
    types come from below it as its code does. The package's __init__ is the exception: it
    names every public type for type checkers, and imports none of them when it runs."""
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _imports(tree, typing_too=name != "fbdl_fast"):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                assert node.module is not None and node.level == 0, f"{name}: relative import"
                targets = [
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}" in modules
                    else node.module
                    for alias in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_cycle_finder_finds_a_planted_cycle() -> None:
    """The checker itself: a cycle is reported with its members, a DAG gives none."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_python_modules_import_in_one_direction() -> None:
    """No fbdl_fast module imports a module that imports it back (run-time, function-local and
    type-checking imports alike)."""
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert find_cycle(graph) == []


def test_lower_layers_never_import_upper_ones() -> None:
    """kernels -> ops -> nn -> models and the leaves never reach up into the application wings
    (data, training, serving, reports, cli)."""
    wings = ("fbdl_fast.data", "fbdl_fast.training", "fbdl_fast.serving", "fbdl_fast.reports")
    lower = ("fbdl_fast.kernels", "fbdl_fast.ops", "fbdl_fast.nn", "fbdl_fast.models")
    leaves = ("fbdl_fast.config", "fbdl_fast.tokenizer", "fbdl_fast.checkpoint", "fbdl_fast.files")
    crossings = []
    for name, targets in import_graph().items():
        for target in targets:
            entry = name.startswith("fbdl_fast.cli") or name == "fbdl_fast.__main__"
            up = target.startswith("fbdl_fast.cli") and not entry
            if name.startswith(lower + leaves) and target.startswith(wings):
                up = True
            if up:
                crossings.append(f"{name} -> {target}")
    assert crossings == []


def test_top_level_is_small() -> None:
    """At most eight modules directly in fbdl_fast/ (besides __init__ and __main__)."""
    top = sorted(
        p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_long_files() -> None:
    """No Python file over 600 lines, except the Triton kernels and the Trainer's module."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in LONG_FOLDERS_ALLOWED or str(relative) in LONG_FILES_ALLOWED:
            continue
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            long.append(f"{relative}: {lines}")
    assert long == []


def test_private_names_stay_in_their_module() -> None:
    """A name with a leading underscore is imported by no other module of the package (a helper
    others use is public, or it moves next to its users)."""
    modules = package_modules()
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                "fbdl_fast"
            ):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and alias.name != "_tokenizer":  # the compiled module, re-exported
                    found.append(f"{name}: from {node.module} import {alias.name}")
    assert found == []


def rust_module_graph() -> dict[str, set[str]]:
    """Rust module -> the crate modules its non-test code names (`crate::x`)."""
    graph: dict[str, set[str]] = {}
    names = {p.stem for p in CRATE.glob("*.rs")} - {"lib"}
    for path in CRATE.glob("*.rs"):
        if path.stem == "lib":
            continue
        text = path.read_text(encoding="utf-8")
        # The unit tests sit at the end of each file, after #[cfg(test)].
        code = text.split("#[cfg(test)]", 1)[0]
        used = set(re.findall(r"crate::([a-z_]+)", code))
        graph[path.stem] = (used & names) - {path.stem}
    return graph


def test_rust_modules_import_in_one_direction() -> None:
    """The tokenizer crate's modules use each other in one direction only."""
    graph = rust_module_graph()
    if not graph:
        pytest.fail(f"no Rust modules found in {CRATE}")
    assert find_cycle(graph) == []


def test_test_modules_import_tests_of_their_own_folder_only() -> None:
    """A test module imports another test module only from its own folder (pytest puts that
    folder and tests/ on sys.path, nothing else); shared helpers live at the top of tests/."""
    tests = ROOT / "tests"
    crossing = []
    for path in tests.rglob("test_*.py"):
        if "fixtures" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if (
                module
                and module.startswith("test_")
                and not (path.parent / f"{module}.py").is_file()
            ):
                crossing.append(f"{path.relative_to(tests)} imports {module}")
    assert crossing == []
