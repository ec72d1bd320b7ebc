"""sockwork's pytest plugin: registered through its entry point but inert unless a project asks for the kit
(issue 14 item 13, issue 22 item 2): installing sockwork changes no other project's test run, and plugin suites
written for the previous release (0.1.0, when the kit loaded everywhere) pass unchanged."""

from __future__ import annotations

import importlib.metadata
import os
import re
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


def test_the_pytest11_entry_point_is_the_inert_one() -> None:
    """pytest loads sockwork's entry point by itself: it names the inert module, never the kit."""
    ours = [ep.value for ep in importlib.metadata.entry_points(group="pytest11") if ep.value.startswith("sockwork")]
    assert ours == ["sockwork._pytest_entry"]


@pytest.mark.parametrize(("module", "warns"), [("sockwork", False), ("sockwork.registry", True)])
def test_pytest_does_not_warn_about_rewriting_an_imported_sockwork(tmp_path: Path, module: str, warns: bool) -> None:
    """With the entry point, pytest marks the installed package for assertion rewriting (a regular install);
    a package imported before pytest started makes it warn, an error under ``-W error``, unless the package's
    docstring opts out, as sockwork's does. (The same marking of a module without the marker does warn.)"""
    project = make_project(tmp_path, "def test_nothing():\n    pass\n")
    (project / "marks.py").write_text(
        f"def pytest_configure(config):\n    config.pluginmanager.rewrite_hook.mark_rewrite({module!r})\n")
    result = run_pytest(project, "-W", "error", "-p", "marks", before=f"; import {module}")
    if warns:
        assert result.returncode != 0
        assert f"Module already imported so cannot be rewritten; {module}" in result.stdout + result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr


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


# ---- A plugin project as the previous release documented it ---------------------------------------------

OLD_PLUGIN = """
    import attrs
    from sockwork import DispatcherEntry, hookimpl
    from sockwork.strategies.pool import PoolDispatcher, PoolOptions


    @attrs.frozen
    class OldOptions:
        workers: int = 2


    @hookimpl
    def sockwork_add_dispatchers():
        return [DispatcherEntry("oldpool", lambda options: PoolDispatcher(PoolOptions(workers=options.workers)),
                                OldOptions, description="a 0.1.0-era plugin")]


    @hookimpl
    def sockwork_server_started(server):
        server.plugin_options  # a lifecycle hook, as 0.1.0's plugins.md showed
"""

OLD_CONFTEST = """
    import pytest


    @pytest.fixture(params=[{}, {"workers": 1}], ids=["defaults", "small"])
    def sockwork_make_server(request, sockwork_make_server, sockwork_dispatcher_name):
        def make(handler, **kwargs):
            if sockwork_dispatcher_name == "oldpool":
                kwargs.setdefault("dispatcher_options", request.param)
            return sockwork_make_server(handler, **kwargs)
        return make
"""

OLD_TESTS = """
    from sockwork.conformance import *  # noqa: F403


    def test_oldpool_is_registered(sockwork_registry):
        assert sockwork_registry.get("dispatcher", "oldpool").plugin == "oldpool"
"""

OLD_HOOK_TESTS = """
    def test_the_hooks_are_listed(sockwork_registry, sockwork_no_leaks):
        assert ("oldpool", ["sockwork_server_started"]) in sockwork_registry.lifecycle_plugins()
"""


def old_plugin_project(tmp_path: Path, *, with_kit: bool = True) -> tuple[Path, dict[str, str]]:
    """A plugin distribution laid out as 0.1.0's plugins.md said (no conftest line, no ini option), "installed"
    through a dist-info directory on PYTHONPATH; returns the project and the environment to run it in."""
    site_dir = tmp_path / "site"
    (site_dir / "old_plugin").mkdir(parents=True)
    (site_dir / "old_plugin" / "__init__.py").write_text(textwrap.dedent(OLD_PLUGIN))
    dist_info = site_dir / "sockwork_oldpool-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sockwork-oldpool\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[sockwork]\noldpool = old_plugin\n")
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent("""
        [project]
        name = "sockwork-oldpool"
        version = "0.1.0"
        dependencies = ["sockwork"]

        [project.entry-points.sockwork]
        oldpool = "old_plugin"

        [tool.pytest.ini_options]
        testpaths = ["tests"]
    """))
    (project / "tests" / "conftest.py").write_text(textwrap.dedent(OLD_CONFTEST))
    if with_kit:
        (project / "tests" / "test_conformance.py").write_text(textwrap.dedent(OLD_TESTS))
    (project / "tests" / "test_hooks.py").write_text(textwrap.dedent(OLD_HOOK_TESTS))
    env = {**os.environ, "PYTHONPATH": str(site_dir)}
    return project, env


def run_in(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=50)


def test_a_dispatcher_suite_written_for_the_previous_release_passes_unchanged(tmp_path: Path) -> None:
    """0.1.0's set-up: the star-import, a conftest overriding sockwork_make_server, no pytest_plugins line."""
    project, env = old_plugin_project(tmp_path)
    result = run_in(project, env, "-k", "test_echo_small and (tcp-oldpool or unix-oldpool) or registered or hooks")
    assert result.returncode == 0, result.stdout + result.stderr
    # tcp and unix, each with the conftest's two option sets; the registration and hooks tests; the kit's
    # lifecycle test, which the old plugin's sockwork_server_started hook now gets.
    assert "7 passed" in result.stdout, result.stdout
    assert "test_lifecycle_hooks_are_called_in_order_and_raise_nothing[oldpool] PASSED" in run_in(
        project, env, "-v", "-k", "lifecycle").stdout


def test_a_lifecycle_plugin_suite_gets_the_fixtures_without_the_kit_import(tmp_path: Path) -> None:
    """A project that declares sockwork entry points gets the fixtures even if no module imports the kit."""
    project, env = old_plugin_project(tmp_path, with_kit=False)
    result = run_in(project, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout, result.stdout


@pytest.mark.parametrize("how", ["ini plugins", "ini builtins", "flag"])
def test_a_project_asks_for_the_kit_with_an_ini_option_or_the_flag(tmp_path: Path, how: str) -> None:
    """``sockwork_conformance_plugins``, ``sockwork_conformance_builtins`` or ``--sockwork-kit`` loads the kit."""
    ini = {"ini plugins": "sockwork_conformance_plugins = nothing\n",
           "ini builtins": "sockwork_conformance_builtins = true\n", "flag": ""}[how]
    project = make_project(tmp_path, USES_THE_FIXTURES, ini=ini)
    result = run_pytest(project, "--strict-config", "-W", "error", *(["--sockwork-kit"] if how == "flag" else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


OTHER_PLUGIN = """
    from sockwork import TransportEntry, hookimpl
    from sockwork.transports.tcp import TCPOptions, TCPTransport


    @hookimpl
    def sockwork_add_transports():
        return [TransportEntry("othertcp", TCPTransport, TCPOptions,
                               loopback_options=lambda directory: TCPOptions(address=("127.0.0.1", 0)))]
"""


@pytest.mark.parametrize("others", [False, True])
def test_your_parts_are_paired_with_the_built_ins_and_others_only_if_you_opt_in(tmp_path: Path, others: bool) -> None:
    """A plugin project's kit pairs its own dispatcher with the built-in transports; another installed plugin's
    transport is left out (its bugs are not yours) unless sockwork_conformance_others = true."""
    project, env = old_plugin_project(tmp_path)
    site = Path(env["PYTHONPATH"])
    (site / "other_plugin.py").write_text(textwrap.dedent(OTHER_PLUGIN))
    (site / "sockwork_othertcp-1.0.dist-info").mkdir()
    (site / "sockwork_othertcp-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sockwork-othertcp\nVersion: 1.0\n")
    (site / "sockwork_othertcp-1.0.dist-info" / "entry_points.txt").write_text("[sockwork]\nothertcp = other_plugin\n")
    if others:
        text = (project / "pyproject.toml").read_text()
        opted_in = 'testpaths = ["tests"]\nsockwork_conformance_others = true'
        (project / "pyproject.toml").write_text(text.replace('testpaths = ["tests"]', opted_in))
    result = run_in(project, env, "--collect-only", "-q", "-k", "test_echo_small")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_echo_small[defaults-tcp-oldpool]" in result.stdout
    assert ("test_echo_small[defaults-othertcp-oldpool]" in result.stdout) is others, result.stdout


PARENT_ONLY = """
    import os

    from sockwork import DispatcherEntry, hookimpl
    from sockwork.strategies.pool import PoolDispatcher, PoolOptions

    PARENT = os.getpid()


    class ParentOnly:
        '''Broken inside a supervisor: works in the process that imported it, refuses to start in a worker.'''

        def __init__(self):
            self.inner = PoolDispatcher(PoolOptions(workers=1))
            self.concurrency = 1
            self.submit, self.saturated, self.drain, self.close = (
                self.inner.submit, self.inner.saturated, self.inner.drain, self.inner.close)

        def start(self, host):
            if os.getpid() != PARENT:
                raise RuntimeError("this dispatcher only works in the process that imported it")
            self.inner.start(host)


    @hookimpl
    def sockwork_add_dispatchers():
        return [DispatcherEntry("parentonly", lambda options: ParentOnly())]
"""


@pytest.mark.parametrize("broken", [False, True])
def test_your_dispatcher_is_tested_inside_every_supervisor(tmp_path: Path, broken: bool) -> None:
    """The kit adds prefork[yours] to the dispatchers: a dispatcher that breaks only in a worker process fails."""
    project, env = old_plugin_project(tmp_path)
    if broken:
        (Path(env["PYTHONPATH"]) / "old_plugin" / "__init__.py").write_text(textwrap.dedent(PARENT_ONLY))
        (project / "tests" / "test_conformance.py").write_text("from sockwork.conformance import *  # noqa: F403\n")
    name = "parentonly" if broken else "oldpool"
    result = run_in(project, env, "-q", "-k", f"test_echo_small and tcp-prefork and {name}")
    ids = re.findall(r"test_echo_small\[([^\]]*\])\]", result.stdout)
    if broken:
        assert result.returncode == 1, result.stdout + result.stderr
        assert "FAILED tests/test_conformance.py::test_echo_small[defaults-tcp-prefork[parentonly]]" in result.stdout
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 passed" in result.stdout, (result.stdout, ids)


REFUSING_PLUGIN = """
    from sockwork import ConfigError, DispatcherEntry, hookimpl


    def refuse(options):
        raise ConfigError("this dispatcher needs a licence file")


    @hookimpl
    def sockwork_add_dispatchers():
        return [DispatcherEntry("oldpool", refuse)]
"""


def test_a_failed_assembly_leaks_nothing_of_the_kits(tmp_path: Path) -> None:
    """The fd transport's loopback socket, opened before a server is built, is closed when assembly fails:
    the test fails for its own reason, with no "left behind" error at teardown."""
    project, env = old_plugin_project(tmp_path)
    (Path(env["PYTHONPATH"]) / "old_plugin" / "__init__.py").write_text(textwrap.dedent(REFUSING_PLUGIN))
    result = run_in(project, env, "-q", "-k", "test_echo_small and defaults-fd-oldpool")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this dispatcher needs a licence file" in result.stdout
    assert "1 failed" in result.stdout, result.stdout
    assert "ERROR at teardown" not in result.stdout and "left behind:" not in result.stdout, result.stdout
