"""Bad input fails when the server is assembled, naming the bad value, with no socket left open."""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

import pytest

from sockwork import (
    BindError,
    ConfigError,
    DispatcherEntry,
    OptionError,
    PluginError,
    Registry,
    Server,
    UnknownPluginError,
    hookimpl,
    make_plugin_manager,
)
from sockwork.handlers import echo
from sockwork.strategies import PoolOptions
from sockwork.transports import TCPOptions, TCPTransport

pytestmark = pytest.mark.timeout(10)

TCP = "tcp://127.0.0.1:0"
BUILTINS_ONLY = Registry(make_plugin_manager(entry_points=False))  # the name lists below are the built-ins


def test_every_way_of_naming_a_part_works(short_tmp: Path) -> None:
    """Names with options, URLs, options objects and ready components all assemble."""
    servers = [
        Server(transport="tcp", transport_options={"address": ["127.0.0.1", 0]}, handler="echo"),
        Server(transport=TCP, dispatcher="pool", dispatcher_options={"workers": 2}, handler=echo),
        Server(transport=TCPOptions(address=("127.0.0.1", 0)), dispatcher=PoolOptions(workers=2), handler=echo),
        Server(transport=TCPTransport(TCPOptions(address=("127.0.0.1", 0))), handler=echo),
        Server(transport=f"unix://{short_tmp}/s.sock", handler=echo),
    ]
    for server in servers:
        with server:
            assert server.url.startswith(("tcp://127.0.0.1:", "unix:///"))
            assert not server.url.endswith(":0")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"handler": 42}, ConfigError, "handler must be callable as handler(request, client_address, server) "
                                       "or a registered handler name (address, discard, echo, lines); got 42"),
        ({"handler": "ecko"}, UnknownPluginError,
         "no handler named 'ecko'; registered: address, discard, echo, lines."),
        ({"dispatcher": "threads"}, UnknownPluginError, "no dispatcher named 'threads'"),
        ({"dispatcher": object()}, ConfigError,
         "dispatcher must be a registered name (asyncio, fork, inline, pool, prefork, thread)"),
        ({"dispatcher": "pool", "dispatcher_options": {"workers": -1}}, OptionError,
         "dispatcher 'pool' option 'workers': must be an int >= 1, got -1"),
        ({"transport": "tcp://127.0.0.1:70000"}, ConfigError, "the port must be a number in 0..65535"),
        ({"transport": "carrier-pigeon://a:1"}, UnknownPluginError, "no transport named 'carrier-pigeon'"),
        ({"transport": "tcp", "transport_options": {"address": ("127.0.0.1", -1)}}, OptionError,
         "transport 'tcp' option 'address': port must be in 0..65535 (0 lets the OS pick), got -1"),
        ({"transport": TCPOptions(address=("127.0.0.1", 0)), "transport_options": {}}, ConfigError,
         "transport options were given twice"),
        ({"drain_timeout": -1}, ConfigError, "'drain_timeout' must be a finite number of seconds >= 0, or None"),
        ({"drain_timeout": float("inf")}, ConfigError, "'drain_timeout' must be a finite number of seconds >= 0"),
        ({"drain_timeout": float("nan")}, ConfigError, "'drain_timeout' must be a finite number of seconds >= 0"),
        ({"transport": "127.0.0.1:8000"}, ConfigError, "has no scheme (tcp://127.0.0.1:8000)"),
        ({"transport": "tcp://::1:8000"}, ConfigError, "IPv6 hosts go in brackets, e.g. tcp://[::1]:8000"),
        ({"handler": echo, "handler_options": {"x": 1}}, ConfigError, "handler_options only apply"),
    ],
)
def test_bad_values_fail_with_a_message_naming_them(kwargs: dict, error: type, message: str) -> None:
    """Each mistake raises a ConfigError (a ValueError) naming the value and what is allowed."""
    arguments = {"transport": TCP, "handler": echo, "registry": BUILTINS_ONLY, **kwargs}
    with pytest.raises(error) as info:
        Server(**arguments)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unresolvable_host_is_a_bind_error() -> None:
    """A host that does not resolve fails with a BindError naming it."""
    with pytest.raises(BindError, match=r"couldn't resolve host 'no-such-host\.invalid'"):
        Server(transport="tcp://no-such-host.invalid:0", handler=echo)


def test_address_in_use_is_a_bind_error_and_leaves_nothing_open() -> None:
    """Binding a port that is taken raises BindError (an OSError) naming the address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BindError) as info:
            Server(transport=f"tcp://127.0.0.1:{port}", transport_options=None, handler=echo)
    assert f"couldn't bind tcp transport to 127.0.0.1:{port}" in str(info.value)
    assert isinstance(info.value, OSError) and info.value.errno is not None
    # the autouse no_leaks fixture checks that no descriptor stayed open


def test_invalid_component_is_refused_before_binding() -> None:
    """With a bad dispatcher, the (valid) transport is never bound."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UnknownPluginError):
        Server(transport=f"tcp://127.0.0.1:{port}", dispatcher="nope", handler=echo)
    with socket.socket() as again:  # the port is still free: nothing bound it
        again.bind(("127.0.0.1", port))


# ---- One step, each part resolved once; factories checked against their role ----------

def counting(registry: Registry) -> dict[str, int]:
    """Count the registry's look-ups of each kind, and every factory call, on ``registry``."""
    counts: dict[str, int] = {}
    lookup = registry.get

    def get(kind: str, name: str) -> object:
        counts[kind] = counts.get(kind, 0) + 1
        return lookup(kind, name)  # type: ignore[arg-type]

    registry.get = get  # type: ignore[method-assign]
    return counts


def test_server_and_build_server_resolve_each_part_exactly_once() -> None:
    """Server(...) and build_server(config) look each name up once: one step, no second resolution."""
    from sockwork import build_server, load_config

    registry = Registry(make_plugin_manager(entry_points=False))
    counts = counting(registry)
    with Server(transport=TCP, dispatcher="pool", handler="echo", registry=registry):
        pass
    assert counts == {"transport": 1, "dispatcher": 1, "handler": 1}

    config = load_config({"transport": TCP, "dispatcher": "pool", "handler": "lines"}, registry)
    counts.clear()
    with build_server(config, registry):
        pass
    assert counts == {"transport": 1, "dispatcher": 1, "handler": 1}


class BrokenPlugins:
    """Factories that break their contract: None, and an object lacking a method."""

    @hookimpl
    def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
        class HalfDispatcher:
            concurrency = 1

            def start(self, host: object) -> None: ...

        return [DispatcherEntry("returns-none", lambda options: None),
                DispatcherEntry("half", lambda options: HalfDispatcher())]


@pytest.mark.parametrize(("name", "why"), [("returns-none", "which is not a Dispatcher: it lacks concurrency"),
                                           ("half", "it lacks submit(), saturated(), drain(), close()")])
def test_a_factory_returning_a_broken_part_fails_assembly_naming_the_plugin(name: str, why: str) -> None:
    """What a plugin's factory returns is checked at assembly; the error names the plugin."""
    pm = make_plugin_manager(entry_points=False)
    pm.register(BrokenPlugins(), name="broken-plugin")
    with pytest.raises(PluginError) as info:
        Server(transport=TCP, dispatcher=name, handler=echo, registry=Registry(pm))
    message = str(info.value)
    assert message.startswith(f"dispatcher {name!r} from plugin 'broken-plugin' (?) is broken: its factory returned")
    assert why in message


FAKE_DIST = """\
from sockwork import DispatcherEntry, hookimpl

@hookimpl
def sockwork_add_dispatchers():
    return [DispatcherEntry("returns-none", lambda options: None)]
"""


@pytest.mark.parametrize("command", ["check", "serve"])
def test_cli_refuses_a_broken_plugin_with_exit_2_and_one_line(tmp_path: Path, command: str) -> None:
    """An installed plugin whose factory returns None fails check and serve: exit 2, one line."""
    import subprocess
    import sys

    (tmp_path / "brokenplugin.py").write_text(FAKE_DIST)
    dist = tmp_path / "brokenplugin-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[sockwork]\nbrokenplugin = brokenplugin\n")
    config = tmp_path / "server.toml"
    config.write_text('transport = "tcp://127.0.0.1:0"\ndispatcher = "returns-none"\n')
    result = subprocess.run(
        [sys.executable, "-m", "sockwork", command, str(config)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("sockwork: dispatcher: dispatcher 'returns-none' from plugin 'brokenplugin' "
                                    "(brokenplugin 1.2) is broken: its factory returned None"), result.stderr
    assert "serving" not in result.stdout


def test_an_accept_error_that_cannot_heal_ends_serve_forever(caplog: pytest.LogCaptureFixture) -> None:
    """EBADF from accept (the listener is gone) is logged once and raised, not retried forever."""

    class GoneListener:
        kind, family, address = "stream", socket.AF_INET, ("127.0.0.1", 9)

        def __init__(self) -> None:
            self._r, self._w = socket.socketpair()
            self._w.send(b"!")  # always readable: the loop calls accept()

        def open(self) -> None: ...
        def fileno(self) -> int: return self._r.fileno()
        def accept(self) -> None: raise OSError(errno.EBADF, "Bad file descriptor")
        def close_request(self, request: object) -> None: ...
        def release_request(self, request: object) -> None: ...
        def after_fork(self) -> None: ...

        def close(self) -> None:
            self._r.close()
            self._w.close()

    with (Server(transport=GoneListener(), handler=echo, dispatcher="inline") as server,
          caplog.at_level(logging.ERROR, logger="sockwork"), pytest.raises(OSError) as info):
        server.serve_forever()
    assert info.value.errno == errno.EBADF
    assert [r.getMessage() for r in caplog.records] == [
        "accepting on a closed listener failed: [Errno 9] Bad file descriptor; the listener cannot recover, stopping"]


class MorePlugins:
    @hookimpl
    def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
        def explode(options: object) -> object:
            raise RuntimeError("cannot reach the license server")

        return [DispatcherEntry("returns-none", lambda options: None), DispatcherEntry("explodes", explode)]


def more_plugins() -> Registry:
    pm = make_plugin_manager(entry_points=False)
    pm.register(MorePlugins(), name="more")
    return Registry(pm)


def test_a_factory_that_raises_is_a_plugin_error() -> None:
    """A factory's unexpected exception is reported as the plugin's fault, in one line."""
    with pytest.raises(PluginError, match=r"^dispatcher 'explodes' from plugin 'more' \(\?\) is broken: its factory "
                                          r"raised RuntimeError: cannot reach the license server$"):
        Server(transport=TCP, dispatcher="explodes", handler=echo, registry=more_plugins())


def test_a_supervisors_broken_inner_dispatcher_fails_assembly() -> None:
    """prefork with an inner dispatcher whose factory is broken fails assembly, not every worker later."""
    with pytest.raises(PluginError, match="dispatcher 'returns-none' from plugin 'more'"):
        Server(transport=TCP, dispatcher="prefork", dispatcher_options={"inner": "returns-none"}, handler=echo,
               registry=more_plugins())


def test_a_dispatcher_whose_start_raises_leaves_nothing_behind() -> None:
    """start() raising: serve_forever raises it, close() works from the same thread, nothing leaks."""

    class Broken:
        concurrency = 1

        def start(self, host: object) -> None:
            raise RuntimeError("no workers today")

        def submit(self, request: object, client_address: object) -> None: ...
        def saturated(self) -> bool: return False
        def drain(self, timeout: float | None) -> bool: return True
        def close(self) -> None: ...

    with (Server(transport=TCP, dispatcher=Broken(), handler=echo) as server,
          pytest.raises(RuntimeError, match="no workers today")):
        server.serve_forever()
    # leaving the block closed it; the autouse leak check finds no descriptor left


def test_url_and_transport_options_combine_as_in_config_files() -> None:
    """Server(transport=URL, transport_options=...) merges them; a key given twice is refused."""
    with Server(transport=TCP, transport_options={"backlog": 5}, handler=echo) as server:
        assert server.transport.options.backlog == 5  # type: ignore[attr-defined]
    with pytest.raises(ConfigError,
                       match=r"address given twice: in the URL 'tcp://127\.0\.0\.1:0' and in transport_options"):
        Server(transport=TCP, transport_options={"address": ("127.0.0.1", 0)}, handler=echo)


def test_transport_schemes_must_be_a_tuple_of_lower_case_schemes() -> None:
    """schemes="tls" (a string) is refused at registration, not read as 't', 'l', 's'."""
    from sockwork import TransportEntry
    from sockwork.transports import TCPOptions, TCPTransport

    class Plugin:
        @hookimpl
        def sockwork_add_transports(self) -> list[TransportEntry]:
            return [TransportEntry("tls", TCPTransport, TCPOptions, schemes="tls")]  # type: ignore[arg-type]

    pm = make_plugin_manager(entry_points=False)
    pm.register(Plugin(), name="tlsplugin")
    registry = Registry(pm)
    assert "schemes must be a tuple of lower-case URL schemes" in str(registry.failures[0][2])
