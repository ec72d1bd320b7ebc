"""sockwork's pytest plugin is opt-in: installing sockwork changes no other project's test run (issue 14 item 13)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

USES_THE_FIXTURES = """
    def test_fixtures(sockwork_tmp, sockwork_registry):
        assert sockwork_tmp.is_dir()
        assert sockwork_registry.get("dispatcher", "inline").name == "inline"
"""


def run_pytest(project: Path, *args: str, before: str = "") -> subprocess.CompletedProcess[str]:
    """Run pytest on ``project`` in a fresh interpreter, with none of this run's options or plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    code = f"import sys, pytest{before}; sys.exit(pytest.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "-p", "no:cacheprovider", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=50)


def make_project(tmp_path: Path, tests: str, ini: str = "", conftest: str | None = None) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + ini)
    (tmp_path / "test_it.py").write_text(textwrap.dedent(tests))
    if conftest is not None:
        (tmp_path / "conftest.py").write_text(conftest)
    return tmp_path


def test_no_pytest11_entry_point() -> None:
    """The installed distribution registers nothing that pytest loads by itself."""
    ours = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.value.startswith("sockwork")]
    assert ours == []


def test_a_warnings_as_errors_suite_starts_when_sockwork_was_imported_first(tmp_path: Path) -> None:
    """werkzeug's case: ``-W error`` and sockwork imported before pytest starts; the suite runs."""
    project = make_project(tmp_path, "def test_nothing():\n    pass\n")
    result = run_pytest(project, "-W", "error", before="; import sockwork")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_without_opting_in_there_are_no_sockwork_fixtures(tmp_path: Path) -> None:
    """A project that does not ask for the plugin does not get it."""
    result = run_pytest(make_project(tmp_path, USES_THE_FIXTURES))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fixture 'sockwork_tmp' not found" in result.stdout


@pytest.mark.parametrize("how", ["command line", "conftest"])
def test_opting_in_gives_the_fixtures_and_the_ini_options(tmp_path: Path, how: str) -> None:
    """``-p sockwork.pytest_plugin`` or ``pytest_plugins`` in conftest.py: the fixtures, and ini options pytest
    knows."""
    conftest = 'pytest_plugins = ["sockwork.pytest_plugin"]\n' if how == "conftest" else None
    project = make_project(tmp_path, USES_THE_FIXTURES, ini="sockwork_conformance_builtins = true\n",
                           conftest=conftest)
    args = ["-p", "sockwork.pytest_plugin"] if how == "command line" else []
    result = run_pytest(project, "--strict-config", "-W", "error", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
