"""sockwork's ``pytest11`` entry point: inert until a project asks for the conformance kit.

PYTEST_DONT_REWRITE (nothing to rewrite here; pytest's marker, keep it)

pytest loads this module in every project of an environment where sockwork is
installed. By itself it only declares the kit's ini options and one flag; it
adds no fixture and parametrizes nothing. It loads the kit, the real plugin
:mod:`sockwork.pytest_plugin`, when the project asks for it in any of these
ways (docs/plugins.md, "Testing your plugin"):

- the ini option ``sockwork_conformance_plugins`` or ``sockwork_conformance_builtins``;
- the flag ``--sockwork-kit``;
- the project is itself a sockwork plugin: its ``pyproject.toml`` (next to the
  ini file, or in pytest's root directory) declares entry points in the
  ``sockwork`` group;
- a test module that imports :mod:`sockwork.conformance` (``from
  sockwork.conformance import *``), which was the whole set-up before 0.2.0,
  when the kit loaded everywhere: such suites pass unchanged;
- ``pytest_plugins = ["sockwork.pytest_plugin"]`` or ``-p sockwork.pytest_plugin``,
  which load the kit themselves (this module then leaves it alone).
"""

from __future__ import annotations

import sys

import pytest

__all__: list[str] = []  # a pytest plugin: reached through its hooks

KIT = "sockwork.pytest_plugin"
FLAG = "--sockwork-kit"
BUILTINS_INI = "sockwork_conformance_builtins"
PLUGINS_INI = "sockwork_conformance_plugins"
OTHERS_INI = "sockwork_conformance_others"


def add_kit_ini_options(parser: pytest.Parser) -> None:
    """The kit's ini options (declared here, so that a project may set them before the kit loads)."""
    parser.addini(BUILTINS_INI, type="bool", default=False,
                  help="sockwork conformance suite: also test sockwork's built-in components")
    parser.addini(PLUGINS_INI, type="linelist", default=[],
                  help="sockwork conformance suite: test the components of these plugins (entry point names; "
                       "default: the project's own sockwork entry points, else every installed plugin)")
    parser.addini(OTHERS_INI, type="bool", default=False,
                  help="sockwork conformance suite: also pair your components with other installed plugins' "
                       "(default: with sockwork's built-ins only)")


def pytest_addoption(parser: pytest.Parser) -> None:
    add_kit_ini_options(parser)
    parser.getgroup("sockwork").addoption(
        FLAG, action="store_true", default=False,
        help="load sockwork's conformance kit (sockwork.pytest_plugin) for this run")


def _asked(config: pytest.Config) -> bool:
    return bool(config.getoption(FLAG) or config.getini(PLUGINS_INI) or config.getini(BUILTINS_INI)
                or project_plugins(config))


def project_plugins(config: pytest.Config) -> list[str]:
    """The plugin names the project under test declares (``[project.entry-points.sockwork]`` in its
    pyproject.toml, next to the ini file or in pytest's root directory): the project's own parts."""
    import tomllib  # only where a project is looked at: this module loads in every pytest run

    places = {config.rootpath / "pyproject.toml"}
    if config.inipath is not None:
        places.add(config.inipath.parent / "pyproject.toml")
    for path in places:
        try:
            with open(path, "rb") as file:
                project = tomllib.load(file).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            continue
        entry_points = project.get("entry-points", {}) if isinstance(project, dict) else {}
        ours = entry_points.get("sockwork") if isinstance(entry_points, dict) else None
        if isinstance(ours, dict) and ours:
            return sorted(ours)
    return []


def _load_kit(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin(KIT):
        return
    import sockwork.pytest_plugin as kit  # the kit, loaded only for a project that asks for it

    # Registered late, it still gets its hooks and fixtures: pytest calls the historic ones
    # (pytest_addoption, pytest_configure) on registration and reads fixtures from it then.
    config.pluginmanager.register(kit, KIT)


def pytest_configure(config: pytest.Config) -> None:
    if _asked(config):
        _load_kit(config)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    # Called for each name of a test module once it is imported, before its tests are made:
    # the kit is loaded in time for the star-import's tests to get its fixtures and pairs.
    if "sockwork.conformance" in sys.modules:
        _load_kit(collector.config)
