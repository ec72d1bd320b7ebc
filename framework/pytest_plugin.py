"""sockwork's pytest plugin: fixtures for testing components, and the conformance kit's parametrization.

Loaded where a project asks for it, and nowhere else: sockwork's ``pytest11``
entry point (:mod:`sockwork._pytest_entry`) is inert until a project sets one of
the ini options below, passes ``--sockwork-kit``, or has a test module import
:mod:`sockwork.conformance`; a project may also load it itself, in its
top-level ``conftest.py`` (``pytest_plugins = ["sockwork.pytest_plugin"]``) or
with ``pytest -p sockwork.pytest_plugin``. It only adds fixtures (all named
``sockwork_*``) and three ini options, and parametrizes tests that ask for those
fixtures; it changes nothing else.

- ``sockwork_transport_name`` / ``sockwork_dispatcher_name``: every pair of a
  registered transport and dispatcher in which at least one is yours: the
  parts of the plugins named in the ini option ``sockwork_conformance_plugins``,
  or else those the project declares in its pyproject.toml's ``sockwork`` entry
  points, or else every installed plugin's; paired with sockwork's built-ins,
  and with other plugins' parts only if ``sockwork_conformance_others`` is true
  (someone else's bug does not fail your run). Every pair when
  ``sockwork_conformance_builtins`` is true. A pair that assembly refuses by
  design (:class:`sockwork.PartsRefused`) is skipped with the reason. If an
  installed plugin fails to load, a test named ``plugin-load-failure`` fails
  and says why;
- ``sockwork_loopback``: how the transport under test listens on loopback
  (its ``loopback_options``) and how a client talks to it (its
  ``loopback_client``: TLS, a PROXY header), as a :class:`Loopback`; override
  this one fixture to test a variant (sockwork's own suite adds the PROXY
  header to tcp, tls and unix this way);
- ``sockwork_client``: a :class:`sockwork.testing.Clients` that connects the
  way ``sockwork_loopback`` says;
- ``sockwork_make_server(handler, **server_kwargs)``: a Server on that pair,
  listening on loopback (or in a temporary directory), closed after the test;
  ``handler`` may be a :class:`sockwork.testing.HandlerForms`, of which the
  form the dispatcher serves (blocking or async) is used;
- ``sockwork_framing_name`` / ``sockwork_make_framing(**options)``: each registered
  framing under test (the same rule: a plugin's, or every one with the built-ins), and
  the framing itself, built as assembly builds it;
- ``sockwork_no_leaks``: fails the test if it leaves a thread, a descriptor
  or a child process behind;
- ``sockwork_registry``: the Registry, with installed plugins, built once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, final

import attrs
import pytest

from ._pytest_entry import BUILTINS_INI as _BUILTINS_INI
from ._pytest_entry import OTHERS_INI as _OTHERS_INI
from ._pytest_entry import PLUGINS_INI as _PLUGINS_INI
from ._pytest_entry import add_kit_ini_options, project_plugins
from ._server import Server
from .assembly import build_component
from .errors import PartsRefused
from .registry import BUILTIN_PLUGINS, Entry, Kind, Registry, StageInputs, TransportEntry
from .testing import Clients, HandlerForms, ResourceSnapshot, Wrap, dispatcher_runs_async

__all__ = ["Loopback", "SupervisedName"]  # otherwise a pytest plugin: reached through hooks and fixtures

_REGISTRY_KEY = pytest.StashKey[Registry]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_kit_ini_options(parser)  # again, for a run without the entry point (PYTEST_DISABLE_PLUGIN_AUTOLOAD)


def _registry(config: pytest.Config) -> Registry:
    if _REGISTRY_KEY not in config.stash:
        config.stash[_REGISTRY_KEY] = Registry()
    return config.stash[_REGISTRY_KEY]


def _param(entries: tuple[Any, ...]) -> Any:
    reasons = [f"{e.name}: {e.unavailable_reason}" for e in entries if e.unavailable_reason]
    return pytest.param(*(getattr(e, "value", e.name) for e in entries), id="-".join(e.name for e in entries),
                        marks=[pytest.mark.skip(reason="; ".join(reasons))] if reasons else [])


@final
class SupervisedName(str):
    """The dispatcher under test when it runs inside a supervisor: the supervisor's name (a str, as the
    fixtures expect), with ``inner``, the dispatcher each worker runs."""

    inner: str

    def __new__(cls, supervisor: str, inner: str) -> SupervisedName:
        name = super().__new__(cls, supervisor)
        name.inner = inner
        return name


@attrs.frozen
class _Supervised:
    """A pseudo-entry of the dispatcher axis: ``inner`` (yours) inside ``supervisor`` (e.g. ``prefork[mine]``)."""

    supervisor: Entry
    inner: Entry

    @property
    def name(self) -> str:
        return f"{self.supervisor.name}[{self.inner.name}]"

    @property
    def value(self) -> SupervisedName:
        return SupervisedName(self.supervisor.name, self.inner.name)

    @property
    def plugin(self) -> str:
        return self.inner.plugin

    @property
    def unavailable_reason(self) -> str | None:
        return self.supervisor.unavailable_reason or self.inner.unavailable_reason


def _dispatchers_with_supervised(registry: Registry, only: set[str]) -> list[Any]:
    """Every dispatcher, and each plugin dispatcher under test inside each supervisor (prefork, a plugin's)."""
    entries: list[Any] = registry.entries("dispatcher")
    supervisors = [e for e in entries if getattr(e, "supervisor", False)]
    entries += [_Supervised(supervisor, inner) for inner in list(entries)
                if _under_test(inner, only) and not getattr(inner, "supervisor", False) for supervisor in supervisors]
    return entries


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sockwork_lifecycle_plugin" in metafunc.fixturenames:
        _parametrize_lifecycle_plugins(metafunc)
    wanted = [name for name in _AXES if name in metafunc.fixturenames]
    if not wanted:
        return
    registry = _registry(metafunc.config)
    include_builtins = metafunc.config.getini(_BUILTINS_INI)
    only = set(metafunc.config.getini(_PLUGINS_INI)) or set(project_plugins(metafunc.config))
    with_others = metafunc.config.getini(_OTHERS_INI) or not only
    axes: list[list[Any]] = [_dispatchers_with_supervised(registry, only) if _AXES[name] == "dispatcher"
                             else registry.entries(_AXES[name]) for name in wanted]
    combos: list[tuple[Any, ...]] = [()]
    for axis in axes:
        combos = [(*combo, entry) for combo in combos for entry in axis]
    if not include_builtins:  # your parts, with sockwork's built-ins (and others' only if you opt in)
        combos = [c for c in combos if any(_under_test(e, only) for e in c)
                  and (with_others or all(e.plugin in BUILTIN_PLUGINS or e.plugin in only for e in c))]
    broken = _load_failures(registry)
    if broken:  # a plugin that does not load must not pass its tests by having none
        combos.append(())
    if not combos:
        metafunc.parametrize(wanted, [pytest.param(*([None] * len(wanted)), marks=pytest.mark.skip(
            reason=f"no plugin component to test; set {_BUILTINS_INI} = true to test the built-ins"))])
        return
    metafunc.parametrize(wanted, [_param(c) if c else pytest.param(
        *([_BROKEN] * len(wanted)), id="plugin-load-failure") for c in combos])


def _parametrize_lifecycle_plugins(metafunc: pytest.Metafunc) -> None:
    """``sockwork_lifecycle_plugin``: each plugin under test that implements a lifecycle hook."""
    registry = _registry(metafunc.config)
    only = set(metafunc.config.getini(_PLUGINS_INI)) or set(project_plugins(metafunc.config))
    builtins = metafunc.config.getini(_BUILTINS_INI)
    names = [name for name, _ in registry.lifecycle_plugins()
             if (builtins or name not in BUILTIN_PLUGINS) and (builtins or not only or name in only)]
    if not names:
        metafunc.parametrize("sockwork_lifecycle_plugin", [pytest.param(None, marks=pytest.mark.skip(
            reason="no plugin under test implements a lifecycle hook"))])
        return
    metafunc.parametrize("sockwork_lifecycle_plugin", names, ids=names)


_BROKEN = "(a plugin failed to load)"
_AXES: dict[str, Kind] = {"sockwork_transport_name": "transport", "sockwork_dispatcher_name": "dispatcher",
                          "sockwork_framing_name": "framing", "sockwork_handler_name": "handler"}
"""The fixtures that parametrize a test over registered parts, and the kind of part each names."""


def _under_test(entry: Any, only: set[str]) -> bool:
    return entry.plugin not in BUILTIN_PLUGINS and (not only or entry.plugin in only)


def _load_failures(registry: Registry) -> list[str]:
    failures = [f"{name} ({origin}): {exc!r}" for name, origin, exc in
                getattr(registry.plugin_manager, "load_failures", [])]
    failures += [f"{name} ({kind}s): {exc!r}" for name, kind, exc in registry.failures]
    return failures


@pytest.fixture(scope="session")
def sockwork_registry(request: pytest.FixtureRequest) -> Registry:
    return _registry(request.config)


@pytest.fixture
def sockwork_no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a thread, descriptor or child process behind."""
    before = ResourceSnapshot.take()
    yield
    leaks = before.leaks()
    assert not leaks, f"left behind: {leaks}"


@pytest.fixture
def sockwork_tmp() -> Iterator[Path]:
    """A short temporary directory: Unix socket paths are limited to ~107 bytes."""
    directory = tempfile.mkdtemp(prefix="sw-")
    yield Path(directory)
    shutil.rmtree(directory)


@final
@attrs.frozen
class Loopback:
    """How the transport under test listens on loopback, and how clients reach it.

    ``options``: the transport's options (from its entry's
    ``loopback_options``); ``wrap``: turns a connected client socket into
    what speaks the transport's wire format, or None for plain bytes;
    ``stage_inputs``: what the kit's stage tests send (the entry's
    :class:`~sockwork.StageInputs`, which fit its own loopback options; a
    variant, such as one adding a PROXY header, leaves it None and those
    tests are skipped).
    """

    options: Any
    wrap: Wrap | None = None
    stage_inputs: StageInputs | None = None


def loopback_of(entry: TransportEntry, directory: Path) -> Loopback:
    """A transport entry's own :class:`Loopback`; skips the test if it has none or cannot make one here."""
    if entry.loopback_options is None:
        pytest.skip(f"transport {entry.name!r} has no loopback_options to test it with")
    try:
        options = entry.loopback_options(directory)
    except ImportError as exc:  # e.g. tls makes its test certificate with trustme
        pytest.skip(f"transport {entry.name!r} needs {exc.name!r} to listen on loopback in tests "
                    f"(pip install {exc.name})")
    make_client = entry.loopback_client
    if make_client is None:
        return Loopback(options, stage_inputs=entry.stage_inputs)

    def wrap(sock: Any) -> Any:
        return make_client(sock, options)

    return Loopback(options, wrap, entry.stage_inputs)


def _descriptors() -> dict[int, tuple[int, int]]:
    """This process's open descriptors, each with what it refers to (device, inode)."""
    found = {}
    for name in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"):
        try:
            status = os.fstat(int(name))
        except OSError:  # the directory listing's own descriptor, closed by now
            continue
        found[int(name)] = (status.st_dev, status.st_ino)
    return found


@pytest.fixture
def sockwork_loopback(sockwork_transport_name: str, sockwork_tmp: Path, sockwork_registry: Registry,
                      ) -> Iterator[Loopback]:
    """The transport under test's loopback options and client (override to test a variant).

    A descriptor that ``loopback_options`` opened (``fd`` inherits a listening socket) belongs to
    the transport once one is built and opened from the options; if none was (a test skipped, or
    assembly refused the pair), it is closed here, so that nothing leaks.
    """
    if sockwork_transport_name == _BROKEN:
        pytest.fail("plugin(s) failed to load: " + "; ".join(_load_failures(sockwork_registry)), pytrace=False)
    entry = sockwork_registry.get("transport", sockwork_transport_name)
    assert isinstance(entry, TransportEntry)
    before = _descriptors()
    loopback = loopback_of(entry, sockwork_tmp)
    opened = {fd: what for fd, what in _descriptors().items() if before.get(fd) != what}
    yield loopback
    now = _descriptors()
    for fd, what in opened.items():
        if now.get(fd) == what:  # still the descriptor the options opened: no transport took it over
            os.close(fd)


@pytest.fixture
def sockwork_client(sockwork_loopback: Loopback) -> Clients:
    """Connects to the server under test as its transport expects (``client.connect(server)``, ``client.exchange``)."""
    return Clients(sockwork_loopback.wrap)


@pytest.fixture
def sockwork_make_framing(sockwork_framing_name: str, sockwork_registry: Registry) -> Callable[..., Any]:
    """Build the framing under test: ``sockwork_make_framing(**options)``, checked as assembly checks it."""
    if sockwork_framing_name == _BROKEN:
        pytest.fail("plugin(s) failed to load: " + "; ".join(_load_failures(sockwork_registry)), pytrace=False)

    def make(**options: Any) -> Any:
        return build_component(sockwork_registry, "framing", sockwork_registry.get("framing", sockwork_framing_name),
                               options)

    return make


@pytest.fixture
def sockwork_make_server(
    sockwork_transport_name: str, sockwork_dispatcher_name: str, sockwork_registry: Registry,
    sockwork_loopback: Loopback,
) -> Iterator[Callable[..., Server]]:
    """Build a Server on the parametrized transport (loopback) and dispatcher."""
    created: list[Server] = []
    if sockwork_transport_name == _BROKEN or sockwork_dispatcher_name == _BROKEN:
        pytest.fail("plugin(s) failed to load: " + "; ".join(_load_failures(sockwork_registry)), pytrace=False)

    def make(handler: Any, **kwargs: Any) -> Server:
        if isinstance(handler, HandlerForms):  # the form this dispatcher serves: blocking or async
            handler = handler.pick(dispatcher_runs_async(sockwork_registry, sockwork_dispatcher_name))
        kwargs.setdefault("registry", sockwork_registry)
        inner = getattr(sockwork_dispatcher_name, "inner", None)
        if inner is not None:  # your dispatcher inside a supervisor: each worker runs it
            kwargs.setdefault("dispatcher_options", {"inner": inner})
        try:
            server = Server(
                transport=sockwork_transport_name,
                transport_options=sockwork_loopback.options,
                dispatcher=sockwork_dispatcher_name, handler=handler, **kwargs,
            )
        except PartsRefused as exc:  # by design, not a failure of either part: said, and skipped
            pytest.skip(f"assembly refuses {sockwork_transport_name} with {sockwork_dispatcher_name}: {exc}")
        created.append(server)
        return server

    yield make
    for server in created:
        server.close()
