"""The registry finds components by name and keeps a broken plugin from hurting others."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest

from sockwork import (
    DispatcherEntry,
    OptionError,
    PluginError,
    Registry,
    TransportEntry,
    UnknownPluginError,
    hookimpl,
    make_plugin_manager,
)
from sockwork.assembly import build_component
from sockwork.registry import Kind
from sockwork.strategies import InlineDispatcher, PoolOptions

pytestmark = pytest.mark.timeout(10)


def build(registry: Registry, kind: Kind, name: str, options: object) -> Any:
    """A component by name, built and checked as assembly builds it."""
    return build_component(registry, kind, registry.get(kind, name), options)


def registry_with(*plugins: object) -> Registry:
    pm = make_plugin_manager(entry_points=False)
    for plugin in plugins:
        pm.register(plugin)
    return Registry(pm)


def test_builtins_register_through_the_hooks() -> None:
    """Every built-in arrives through a registration hook and names its plugin."""
    registry = registry_with()
    assert [e.name for e in registry.entries("transport")] == ["fd", "tcp", "tls", "udp", "unix", "unix-dgram"]
    assert [e.name for e in registry.entries("dispatcher")] == [
        "asyncio", "fork", "inline", "pool", "prefork", "thread"]
    assert "echo" in [e.name for e in registry.entries("handler")]
    assert registry.get("dispatcher", "pool").plugin == "sockwork.strategies.pool"


def test_unknown_name_lists_the_registered_ones() -> None:
    """Asking for a missing name fails with every available name in the message."""
    with pytest.raises(UnknownPluginError) as info:
        registry_with().get("dispatcher", "threads")
    message = str(info.value)
    assert "no dispatcher named 'threads'; registered: asyncio, fork, inline, pool, prefork, thread." in message
    assert isinstance(info.value, LookupError) and isinstance(info.value, ValueError)


def test_a_plugin_can_add_and_replace_components() -> None:
    """A third-party entry is listed; one named like a built-in replaces it."""

    @attrs.frozen
    class SlowOptions:
        delay: float = 0.0

    class Plugin:
        @hookimpl
        def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
            return [
                DispatcherEntry("slow", InlineDispatcher, SlowOptions),
                DispatcherEntry("pool", InlineDispatcher, SlowOptions),
            ]

    registry = registry_with(Plugin())
    assert registry.get("dispatcher", "slow").factory is InlineDispatcher
    assert registry.get("dispatcher", "pool").options is SlowOptions


def test_a_broken_plugin_is_recorded_and_the_rest_keeps_working(caplog: pytest.LogCaptureFixture) -> None:
    """A plugin whose hook raises or returns garbage is reported; built-ins still load."""

    class Raises:
        @hookimpl
        def sockwork_add_transports(self) -> list[TransportEntry]:
            raise ImportError("no module named 'quic'")

    class Garbage:
        @hookimpl
        def sockwork_add_dispatchers(self) -> object:
            return ["not an entry"]

    with caplog.at_level(logging.ERROR, logger="sockwork"):
        registry = registry_with(Raises(), Garbage())
    kinds = sorted((kind, type(exc).__name__) for _, kind, exc in registry.failures)
    assert kinds == [("dispatcher", "PluginError"), ("transport", "ImportError")]
    assert "no module named 'quic'" in caplog.text
    assert registry.get("transport", "tcp") and registry.get("dispatcher", "thread")


def test_entries_check_their_own_fields() -> None:
    """A bad name or a non-attrs options class is refused when the entry is made."""
    with pytest.raises(PluginError, match="component name 'Bad Name'"):
        DispatcherEntry("Bad Name", InlineDispatcher)
    with pytest.raises(PluginError, match="options must be an attrs class"):
        DispatcherEntry("ok", InlineDispatcher, dict)


def test_unavailable_component_says_why() -> None:
    """An entry marked unavailable fails by name with its reason."""

    class Plugin:
        @hookimpl
        def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
            return [DispatcherEntry("gpu", InlineDispatcher, unavailable_reason="needs a GPU")]

    with pytest.raises(ValueError, match="dispatcher 'gpu' is not available here: needs a GPU"):
        registry_with(Plugin()).get("dispatcher", "gpu")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wrkers": 2}, "dispatcher 'pool' option 'wrkers': unknown option; allowed: queue_size, workers"),
        ({"workers": 0}, "dispatcher 'pool' option 'workers': must be an int >= 1, got 0"),
        ({"workers": "8"}, "dispatcher 'pool' option 'workers': must be an int >= 1, got '8'"),
        ([1, 2], "dispatcher 'pool': options must be a table of option names, got list"),
    ],
)
def test_bad_options_name_the_component_and_the_field(options: object, message: str) -> None:
    """Every option error names the component, the option and what is allowed."""
    with pytest.raises(OptionError) as info:
        build(registry_with(), "dispatcher", "pool", options)
    assert str(info.value) == message


def test_missing_required_option() -> None:
    """A transport without its address says which option is missing."""
    with pytest.raises(OptionError, match=r"transport 'tcp': missing required option.*address"):
        build(registry_with(), "transport", "tcp", {})


def test_options_object_is_used_as_is() -> None:
    """An options instance needs no conversion."""
    dispatcher = build(registry_with(), "dispatcher", "pool", PoolOptions(workers=3))
    assert dispatcher.concurrency == 3


def test_a_transport_can_declare_its_own_url_scheme() -> None:
    """A plugin's scheme (with its own parser) works in Server(...) and in config files, like tcp://."""
    from sockwork import Server, load_config
    from sockwork.transports import TCPOptions, TCPTransport

    seen: list[str] = []

    def parse(url: str) -> dict[str, object]:
        seen.append(url)
        host, _, port = url.removeprefix("loud+tcp://").rpartition(":")
        return {"address": (host, int(port)), "backlog": 7}

    class Plugin:
        @hookimpl
        def sockwork_add_transports(self) -> list[TransportEntry]:
            return [TransportEntry("loud", TCPTransport, TCPOptions, schemes=("loud+tcp",), parse_url=parse)]

    registry = registry_with(Plugin())
    with Server(transport="loud+tcp://127.0.0.1:0", handler="echo", registry=registry) as server:
        assert server.transport.options.backlog == 7  # type: ignore[attr-defined]
        assert server.url.startswith("tcp://127.0.0.1:")  # the transport names itself
    config = load_config({"transport": "loud+tcp://127.0.0.1:0"}, registry)
    assert config.transport.name == "loud" and config.transport.options.backlog == 7
    assert seen == ["loud+tcp://127.0.0.1:0"] * 2
