"""CPython's own test suites pass against sockwork.socketserver.

Lib/test/test_socketserver.py, test_httpservers.py and test_xmlrpc.py of the
running interpreter are used, unmodified, with our module installed as
``socketserver`` in ``sys.modules`` before the test module (and with it
``http.server`` and ``xmlrpc.server``) is imported. Our module's source is
executed under the very name ``socketserver`` there, so ``__module__`` of
its classes honestly is ``socketserver`` for that run (CPython's ``test_all``
checks it).

The suites run in parallel subprocesses, test_xmlrpc split in shards: most of
its time is servers waiting out a 3 s timeout, the same on the standard
module.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.timeout(300)

RUNNER = textwrap.dedent(
    """
    import importlib, importlib.util, sys, unittest

    name, shard, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import sockwork, sockwork.socketserver
    assert "socketserver" not in sys.modules, "importing sockwork imported the standard socketserver"
    assert "http.server" not in sys.modules and "xmlrpc.server" not in sys.modules

    spec = importlib.util.spec_from_file_location("socketserver", sockwork.socketserver.__file__)
    ours = importlib.util.module_from_spec(spec)
    sys.modules["socketserver"] = ours
    spec.loader.exec_module(ours)

    suite_module = importlib.import_module("test." + name)
    import http.server, xmlrpc.server
    assert http.server.socketserver is ours and xmlrpc.server.socketserver is ours
    if name == "test_socketserver":
        assert suite_module.socketserver is ours

    def flatten(suite):
        for item in suite:
            if isinstance(item, unittest.TestSuite):
                yield from flatten(item)
            else:
                yield item

    tests = list(flatten(unittest.defaultTestLoader.loadTestsFromModule(suite_module)))
    mine = unittest.TestSuite(t for i, t in enumerate(tests) if i % shards == shard)
    result = unittest.TextTestRunner(verbosity=2).run(mine)  # runs setUpModule/setUpClass too
    print(f"RAN {result.testsRun} FAILURES {len(result.failures)} ERRORS {len(result.errors)} "
          f"SKIPPED {len(result.skipped)}", file=sys.stderr)
    for test, reason in result.skipped:
        print(f"SKIP {test.id()}: {reason}", file=sys.stderr)
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
    """
)

SUITES = {"test_socketserver": 1, "test_httpservers": 1, "test_xmlrpc": 4}
"""Each suite and the number of processes it is split into."""

ENVIRONMENT_SKIPS = ("This test can't be run reliably as root",)
"""Skips that say something about this machine, not about the module under test."""

RUNS = [(name, shard, shards) for name, shards in SUITES.items() for shard in range(shards)]


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, int, int], subprocess.Popen[str]]]:
    """Every shard of every suite, started at once; killed (by PID, ours) if a test gives up on it.

    Each runs in a temporary directory of its own: CPython's tests write their files
    (``@test_<pid>_tmp…``) to the working directory.
    """
    if importlib.util.find_spec("test.test_socketserver") is None:
        pytest.skip("this interpreter ships no 'test' package (Debian: python3-test / pyenv: built without tests)")
    runs = {
        run: subprocess.Popen([sys.executable, "-c", RUNNER, *map(str, run)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path_factory.mktemp(f"{run[0]}-{run[1]}"))
        for run in RUNS
    }
    try:
        yield runs
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.mark.parametrize("run", RUNS, ids=[f"{name}-{shard + 1}of{shards}" for name, shard, shards in RUNS])
def test_cpython_suite_passes(run: tuple[str, int, int],
                              suite_runs: dict[tuple[str, int, int], subprocess.Popen[str]]) -> None:
    process = suite_runs[run]
    _, stderr = process.communicate(timeout=280)
    report = stderr[-20000:]
    assert process.returncode == 0, report
    # CPython's helpers only *warn* about leftover threads and children; we fail on it.
    assert "Warning -- " not in stderr, report
    skipped = [line for line in stderr.splitlines()
               if line.startswith("SKIP ") and not any(reason in line for reason in ENVIRONMENT_SKIPS)]
    assert not skipped, skipped
