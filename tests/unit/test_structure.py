"""The shape of the package, checked by reading its source (no imports, no sockets)."""

from __future__ import annotations

import ast
import os
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
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


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
        # A module's own packages are imported before it, whatever it says: never a cycle.
        graph[module] = {name for name in found if not module.startswith(name + ".") and name != module}
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


# Files others are rewriting (the benchmark package: issue 24); shrink this as they land.
IMPORTS_ALLOWED_WITHOUT_REASON = ("framework/bench/",)


def test_every_import_inside_a_function_says_why() -> None:
    """An import inside a function is for start-up cost or an optional dependency, with a comment
    saying so on its line; one that hides a cycle has no reason to give (the test above)."""
    unexplained = []
    for _, path in package_files():
        relative = str(path.relative_to(ROOT))
        if relative.startswith(IMPORTS_ALLOWED_WITHOUT_REASON):
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


def test_the_server_module_is_a_facade() -> None:
    """_server.py stays small: prefork's worker body lives with the supervisor, the host in _host.py."""
    lines = (ROOT / "framework/_server.py").read_text(encoding="utf-8").count("\n")
    assert lines < 300, f"framework/_server.py has {lines} lines"
    assert "def run_worker" in (ROOT / "strategies/prefork.py").read_text(encoding="utf-8")


def test_an_inherited_transport_declares_every_member_it_passes_on(tmp_path: Path) -> None:
    """A worker's transport is explicit (no __getattr__ proxy): every Transport member and capability,
    open() a no-op, close() only this process's copy (after_fork)."""
    from sockwork._parts import InheritedTransport
    from sockwork.assembly import REQUIRED_MEMBERS
    from sockwork.interfaces import OPTIONAL_CAPABILITIES
    from sockwork.transports import TCPOptions, TCPTransport

    assert "__getattr__" not in vars(InheritedTransport)
    transport = TCPTransport(TCPOptions(address=("127.0.0.1", 0)))
    transport.open()
    try:
        inherited = InheritedTransport(transport, accept_batch=1)
        for name in REQUIRED_MEMBERS["transport"]:
            assert hasattr(inherited, name), name
        transport_capabilities = [n for n, (_, doc) in OPTIONAL_CAPABILITIES.items() if doc.startswith("Transport:")]
        for name in transport_capabilities:
            assert hasattr(inherited, name), name
        assert inherited.accept_batch == 1 and inherited.address == transport.address
        inherited.open()
        assert inherited.fileno() == transport.fileno()
        inherited.close()  # this process's copy: the listener is closed here
        assert repr(transport) == "<TCPTransport closed>"
    finally:
        transport.close()


# ---- Capabilities: every optional member declared, and read through capability() ------------

def _capabilities() -> dict[str, tuple[object, str]]:
    from sockwork.interfaces import OPTIONAL_CAPABILITIES

    return OPTIONAL_CAPABILITIES


# Names too common to find by attribute access alone (entry.name, self.stages): for these only
# getattr/hasattr reads of something that looks like a part count (getattr(hook, "name") is pluggy's).
_COMMON = {"name", "stages", "reload", "abort", "oversized"}
_PART = re.compile(r"transport|dispatcher|handler|stage|part")

# Reads in files the lead is rewriting (issue 18), to go through capability() there; an entry
# that is no longer found fails the test, so the list only shrinks.
CAPABILITY_READS_TO_FIX: set[tuple[str, str]] = set()


def capability_reads() -> Iterator[tuple[str, int, str, str]]:
    """``(file, line, capability, how)`` for every read of an optional member that bypasses capability()."""
    table = _capabilities()
    for _, path in package_files():
        relative = str(path.relative_to(ROOT))
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2:
                name = node.args[1].value if isinstance(node.args[1], ast.Constant) else None
                if not isinstance(name, str):
                    continue
                if name in _COMMON and not _PART.search(ast.unparse(node.args[0])):
                    continue
                if node.func.id in ("getattr", "hasattr") and (name in table or name.startswith("sockwork_")):
                    yield relative, node.lineno, name, ast.unparse(node)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                owner = ast.unparse(node.value)
                if owner in ("self", "cls") or node.attr in _COMMON:
                    continue
                if node.attr in table or node.attr.startswith("sockwork_"):
                    yield relative, node.lineno, node.attr, ast.unparse(node)


def test_every_capability_read_goes_through_capability() -> None:
    """No getattr(part, "sockwork_..."), hasattr or bare attribute read of an optional member: one
    function, capability(), with the default in one table."""
    found = list(capability_reads())
    assert any(how.startswith("getattr") for *_, how in found) or not CAPABILITY_READS_TO_FIX  # the walk sees them
    bypassing = [f"{file}:{line}: {how}" for file, line, name, how in found
                 if (file, name) not in CAPABILITY_READS_TO_FIX]
    assert bypassing == []
    stale = CAPABILITY_READS_TO_FIX - {(file, name) for file, _, name, _ in found}
    assert not stale, f"fixed: remove {sorted(stale)} from CAPABILITY_READS_TO_FIX"


def test_capability_is_asked_only_for_declared_members() -> None:
    """capability(part, NAME) with a NAME missing from OPTIONAL_CAPABILITIES would fail at run time."""
    table = _capabilities()
    asked = set()
    for _, path in package_files():
        for node in ast.walk(parsed(path)):
            if (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("capability") and len(node.args) == 2
                    and isinstance(node.args[1], ast.Constant)):
                asked.add(node.args[1].value)
    assert asked and asked <= set(table), sorted(asked - set(table))


def test_every_optional_member_is_in_design_md_and_plugins_md() -> None:
    """The table's members are each named in docs/design.md and docs/plugins.md."""
    for doc in ("docs/design.md", "docs/plugins.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        missing = [name for name in _capabilities() if f"`{name}`" not in text and f"`{name}()`" not in text
                   and f"`{name} = " not in text]
        assert missing == [], f"{doc} does not name {missing}"


# ---- Private members: no SLF001 exception in the package, no reach into the standard library's -----

# Lines in files the lead is rewriting (issue 18); shrink as they land.
PRIVATE_READS_TO_FIX: set[tuple[str, str]] = set()


# The standard library's private API, each read behind one documented shim (design.md) whose own
# test fails loudly when a new Python drops it: (file, the read) -> that test.
STDLIB_SHIMS = {
    ("transports/_socket.py", "getattr(socket.socket, '_accept', None)"):
        "tests/unit/test_transports.py::test_the_accept_shim_is_in_use_and_accepts_as_socket_accept_does",
    ("strategies/aio.py", "getattr(reader, '_waiter', None)"):
        "tests/unit/test_aio.py::test_the_stream_reader_shim_sees_a_pending_read_and_buffered_bytes",
    ("strategies/aio.py", "getattr(reader, '_buffer', b'')"):
        "tests/unit/test_aio.py::test_the_stream_reader_shim_sees_a_pending_read_and_buffered_bytes",
}


# Documented API despite the underscore: os._exit, and a named tuple's methods.
_PUBLIC_UNDERSCORED = {"_exit", "_asdict", "_replace", "_make", "_fields", "_field_defaults"}


def private_reads() -> Iterator[tuple[str, int, str]]:
    """Reads of another object's ``_private`` member (documented underscored API aside)."""
    for _, path in package_files():
        relative = str(path.relative_to(ROOT))
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = ast.unparse(node.value)
                if owner not in ("self", "cls") and node.attr not in _PUBLIC_UNDERSCORED:
                    yield relative, node.lineno, ast.unparse(node)
            elif (isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "hasattr", "setattr")
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and str(node.args[1].value).startswith("_") and not str(node.args[1].value).startswith("__")
                  and ast.unparse(node.args[0]) != "self"):
                yield relative, node.lineno, ast.unparse(node)


def test_no_private_member_of_another_object_is_read() -> None:
    """ruff's SLF001 without exceptions, and what it cannot see (getattr(obj, "_private")): a private
    member of the standard library would break silently on a new Python."""
    found = list(private_reads())
    for shim, loud_test in STDLIB_SHIMS.items():
        test_file, test_name = loud_test.split("::")
        assert f"def {test_name}(" in (ROOT / test_file).read_text(encoding="utf-8"), (shim, loud_test)
    allowed = PRIVATE_READS_TO_FIX | set(STDLIB_SHIMS)
    reads = [f"{file}:{line}: {text}" for file, line, text in found if (file, text) not in allowed]
    assert reads == []
    stale = allowed - {(file, text) for file, _, text in found}
    assert not stale, f"fixed: remove {sorted(stale)} from PRIVATE_READS_TO_FIX"
    exceptions = [f"{path.relative_to(ROOT)}:{number}" for _, path in package_files()
                  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                  if re.search(r"noqa:[^#]*SLF001", line)]
    assert exceptions == []


# ---- Sizes: functions short enough to read at a glance, no heavy file in the tree --------------

MAX_FUNCTION_LINES = 60

# Files others are rewriting, whose long functions are theirs to shorten: the lead's hot path
# (issue 18). (The benchmark package, issue 24, passes already.) Remove a file once it passes.
LONG_FUNCTIONS_ALLOWED_IN: set[str] = set()


def test_no_function_is_longer_than_sixty_lines() -> None:
    """Every function (def to last line, docstring included) fits on a screen."""
    long = []
    for _, path in package_files():
        relative = str(path.relative_to(ROOT))
        if relative in LONG_FUNCTIONS_ALLOWED_IN:
            continue
        for node in ast.walk(parsed(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{relative}:{node.lineno}: {node.name} has {lines} lines")
    assert long == []


MAX_FILE_BYTES = 200 * 1024
_NOT_THE_TREE = re.compile(r"^(\.|build$|dist$|__pycache__$|.*\.egg-info$)")


def test_no_file_in_the_tree_is_over_200_kb() -> None:
    """No wheel, archive or data dump lands in the repository (a 2.9 MB wheel once did)."""
    heavy = []
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [name for name in subdirectories if not _NOT_THE_TREE.match(name)]
        for name in files:
            path = Path(directory, name)
            if path.stat().st_size > MAX_FILE_BYTES:
                heavy.append(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")
    assert heavy == []
