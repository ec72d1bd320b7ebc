"""Bad input fails when the server is assembled, naming the bad value, with no socket left open."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sockwork import BindError, ConfigError, OptionError, Registry, Server, UnknownPluginError, make_plugin_manager
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
                                       "or a registered handler name (discard, echo, lines); got 42"),
        ({"handler": "ecko"}, UnknownPluginError, "no handler named 'ecko'; registered: discard, echo, lines."),
        ({"dispatcher": "threads"}, UnknownPluginError, "no dispatcher named 'threads'"),
        ({"dispatcher": object()}, ConfigError, "dispatcher must be a registered name (fork, inline, pool, prefork, thread)"),
        ({"dispatcher": "pool", "dispatcher_options": {"workers": -1}}, OptionError,
         "dispatcher 'pool' option 'workers': must be an int >= 1, got -1"),
        ({"transport": "tcp://127.0.0.1:70000"}, ConfigError, "the port must be a number in 0..65535"),
        ({"transport": "carrier-pigeon://a:1"}, UnknownPluginError, "no transport named 'carrier-pigeon'"),
        ({"transport": "tcp", "transport_options": {"address": ("127.0.0.1", -1)}}, OptionError,
         "transport 'tcp' option 'address': port must be in 0..65535 (0 lets the OS pick), got -1"),
        ({"transport": TCPOptions(address=("127.0.0.1", 0)), "transport_options": {}}, ConfigError,
         "transport options were given twice"),
        ({"drain_timeout": -1}, ConfigError, "'drain_timeout' must be a finite number >= 0, or None"),
        ({"drain_timeout": float("inf")}, ConfigError, "'drain_timeout' must be a finite number >= 0"),
        ({"drain_timeout": float("nan")}, ConfigError, "'drain_timeout' must be a finite number >= 0"),
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
    with pytest.raises(BindError, match="couldn't resolve host 'no-such-host.invalid'"):
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
