"""The shape of the package, checked by reading its source (no imports, no sockets)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"framework": "sockwork", "strategies": "sockwork.strategies", "transports": "sockwork.transports"}


def package_files() -> Iterator[tuple[str, Path]]:
    """``(module name, path)`` of every module of the installed package, from the source folders."""
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            yield (package if path.stem == "__init__" else f"{package}.{path.stem}"), path


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imported(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    """The sockwork modules an import statement loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("sockwork")]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if not target.startswith("sockwork"):
        return []
    # `from . import aio` and `from sockwork import aio` load the submodule too.
    return [target, *(f"{target}.{alias.name}" for alias in node.names)]


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Lines of imports under ``if TYPE_CHECKING:`` (never run)."""
    lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines.update(n.lineno for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return lines


def module_imports() -> dict[str, set[str]]:
    """Each module's sockwork imports made when it is imported (top level, not TYPE_CHECKING)."""
    modules = dict(package_files())
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = parsed(path)
        skipped = _type_checking_only(tree)
        found: set[str] = set()
        for node in tree.body:
            for each in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else (node,):
                if isinstance(each, (ast.Import, ast.ImportFrom)) and each.lineno not in skipped:
                    found.update(name for name in _imported(module, each, path.stem == "__init__") if name in modules)
        found.discard(module)
        graph[module] = found
    return graph


def test_module_level_imports_have_no_cycle() -> None:
    """No two modules import each other, directly or around a circle: no import has to hide in a function."""
    graph = module_imports()
    assert graph["sockwork.assembly"] >= {"sockwork.config", "sockwork.registry"}  # the walk sees imports
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


# Files others are rewriting (bench: issue 24); shrink this as they land.
IMPORTS_ALLOWED_WITHOUT_REASON = {"framework/bench.py"}


def test_every_import_inside_a_function_says_why() -> None:
    """An import inside a function is for start-up cost or an optional dependency, with a comment
    saying so on its line; one that hides a cycle has no reason to give (the test above)."""
    unexplained = []
    for _, path in package_files():
        relative = str(path.relative_to(ROOT))
        if relative in IMPORTS_ALLOWED_WITHOUT_REASON:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for function in ast.walk(parsed(path)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    text = " ".join(lines[node.lineno - 1:node.end_lineno])
                    if not re.search(r"#\s*\S", text):
                        unexplained.append(f"{relative}:{node.lineno}: {text.strip()}")
    assert unexplained == []


def test_config_reads_data_and_resolves_nothing() -> None:
    """config.py imports neither the registry, nor assembly, nor a handler; it looks no name up."""
    tree = parsed(ROOT / "framework/config.py")
    assert module_imports()["sockwork.config"] <= {"sockwork.errors", "sockwork.limits", "sockwork.validators"}
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not {call for call in calls if re.search(r"import_module|registry|\.get\(|parse_transport_url", call)}
