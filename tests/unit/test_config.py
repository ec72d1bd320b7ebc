"""Config objects: loading from dict/TOML/JSON, every kind of mistake reported by field path."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from sockwork import (
    ConfigError,
    ConfigErrors,
    DispatcherConfig,
    Registry,
    ServerConfig,
    TransportConfig,
    assemble_config,
    build_server,
    load_config,
    load_config_file,
    make_plugin_manager,
)
from sockwork.strategies import PoolOptions
from sockwork.testing import exchange, serving
from sockwork.transports import TCPOptions

pytestmark = pytest.mark.timeout(20)

REGISTRY = Registry(make_plugin_manager(entry_points=False))
GOOD = {
    "transport": {"url": "tcp://127.0.0.1:0", "options": {"backlog": 64}},
    "dispatcher": {"name": "pool", "options": {"workers": 2}},
    "handler": {"ref": "lines", "options": {"max_line": 100}},
    "drain_timeout": 3,
    "log_level": "warning",
}

TOML = """
transport = "tcp://127.0.0.1:0"
drain_timeout = "forever"

[dispatcher]
name = "pool"
options = { workers = 2, queue_size = 8 }

[handler]
ref = "lines"
"""


def errors_of(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as info:
        load_config(data, REGISTRY)
    return info.value.errors


def test_a_good_config_loads_with_options_as_objects() -> None:
    config = load_config(GOOD, REGISTRY)
    assert config.transport.options == TCPOptions(address=("127.0.0.1", 0), backlog=64)
    assert config.dispatcher.options == PoolOptions(workers=2)
    assert config.log_level == "WARNING" and config.drain_timeout == 3


def test_round_trip_through_dict_and_json(tmp_path: Path) -> None:
    config = load_config(GOOD, REGISTRY)
    assert load_config(config.to_dict(), REGISTRY) == config
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config.to_dict()))
    assert load_config_file(path, REGISTRY) == config


def test_toml_file_runs_a_server(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(TOML)
    config = ServerConfig.from_file(path)
    assert config.drain_timeout is None and config.to_dict()["drain_timeout"] == "forever"
    with serving(build_server(config, REGISTRY)) as server:
        assert type(server.dispatcher).__name__ == "PoolDispatcher"
        assert exchange(server, b"a\nb\n") == b"1: a\n2: b\n"


def test_config_built_in_python_with_options_objects() -> None:
    config = ServerConfig(
        transport=TransportConfig(name="tcp", options=TCPOptions(address=("127.0.0.1", 0))),
        dispatcher=DispatcherConfig(name="pool", options=PoolOptions(workers=2)),
    )
    variant = attrs.evolve(config, dispatcher=DispatcherConfig(name="inline"))
    for each in (config, variant):
        with serving(build_server(each, REGISTRY)) as server:
            assert exchange(server, b"ping") == b"ping"


def test_handler_reference_by_import_path() -> None:
    config = load_config({"transport": "tcp://127.0.0.1:0", "handler": "sockwork.handlers:echo"}, REGISTRY)
    with serving(build_server(config, REGISTRY)) as server:
        assert exchange(server, b"imported") == b"imported"


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"transport": "tcp://h:1", "port": 1}, "port", "unknown setting; allowed: transport, dispatcher"),
        ({}, "transport", "missing; e.g. transport = \"tcp://127.0.0.1:8000\""),
        ({"transport": 8000}, "transport", "must be a URL or a table"),
        ({"transport": "tcp://127.0.0.1"}, "transport", "must look like tcp://HOST:PORT"),
        ({"transport": "quic://h:1"}, "transport.name", "no transport named 'quic'; registered: fd, tcp"),
        ({"transport": {"name": "tcp"}}, "transport.options", "missing required option(s): address"),
        ({"transport": {"url": "tcp://h:0", "options": {"backlg": 1}}}, "transport.options.backlg",
         "unknown option; allowed: address, backlog, ipv6_only, nodelay, proxy_protocol, reuse_address, "
         "reuse_port, trusted_proxies"),
        ({"transport": {"url": "tcp://h:0", "options": []}}, "transport.options", "must be a table of options"),
        ({"transport": {"url": "tcp://h:0", "port": 1}}, "transport.port", "unknown key; allowed: name, url, options"),
        ({"transport": "tcp://h:0", "dispatcher": "threads"}, "dispatcher.name", "no dispatcher named 'threads'"),
        ({"transport": "tcp://h:0", "dispatcher": {"name": "pool", "options": {"workers": 0}}},
         "dispatcher.options.workers", "must be an int >= 1, got 0"),
        ({"transport": "tcp://h:0", "dispatcher": {"name": "thread", "options": {"daemon": "yes"}}},
         "dispatcher.options.daemon", "must be true or false, got 'yes'"),
        ({"transport": "tcp://h:0", "dispatcher": 7}, "dispatcher", "must be a name string or a table"),
        ({"transport": "tcp://h:0", "handler": "ekko"}, "handler.ref", "no handler named 'ekko'"),
        ({"transport": "tcp://h:0", "handler": "no_such_module:fn"}, "handler.ref",
         "cannot import module 'no_such_module'"),
        ({"transport": "tcp://h:0", "handler": "sockwork.handlers:nope"}, "handler.ref",
         "'sockwork.handlers' has no attribute 'nope'"),
        ({"transport": "tcp://h:0", "handler": "sockwork.handlers:__doc__"}, "handler.ref", "is not callable"),
        ({"transport": "tcp://h:0", "handler": ":"}, "handler.ref",
         "write 'package.module:attribute' with an absolute"),
        ({"transport": "tcp://h:0", "handler": ".x:y"}, "handler.ref",
         "write 'package.module:attribute' with an absolute"),
        ({"transport": "tcp://h:0", "handler": "os:"}, "handler.ref",
         "write 'package.module:attribute' with an absolute"),
        ({"transport": "tcp://h:0", "handler": {"ref": "sockwork.handlers:echo", "options": {"x": 1}}},
         "handler.options", "options only apply to a registered handler name"),
        ({"transport": "tcp://h:0", "drain_timeout": -1}, "drain_timeout", "must be a finite number of seconds"),
        ({"transport": "tcp://h:0", "drain_timeout": "soon"}, "drain_timeout", "('forever' in files), got 'soon'"),
        ({"transport": "tcp://h:0", "log_level": "LOUD"}, "log_level", "must be one of DEBUG, INFO"),
    ],
)
def test_each_kind_of_mistake_names_its_field(data: dict, path: str, message: str) -> None:
    errors = errors_of(data)
    assert any(p == path and message in m for p, m in errors), errors


def test_all_mistakes_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("""
        transport = { url = "tcp://127.0.0.1:0", options = { backlog = 0 } }
        dispatcher = { name = "pool", options = { workers = 0, queue_size = -2 } }
        handler = "ekko"
        log_level = "LOUD"
        colour = "blue"
    """)
    with pytest.raises(ConfigErrors) as info:
        load_config_file(path, REGISTRY)
    paths = sorted(p for p, _ in info.value.errors)
    assert paths == ["colour", "dispatcher.options.queue_size", "dispatcher.options.workers",
                     "handler.ref", "log_level", "transport.options.backlog"]
    assert str(info.value).startswith(f"6 problems in {path}:\n  ")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.toml", "transport = ", "is not valid TOML"),
        ("a.json", "{", "is not valid JSON"),
        ("a.yaml", "transport: x", "the name must end in .toml or .json"),
        ("a.json", "[1]", "must hold a table of settings"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config_file(path, REGISTRY)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file '/no/such/file\.toml'"):
        load_config_file("/no/such/file.toml", REGISTRY)


def test_nothing_is_bound_when_the_config_is_invalid() -> None:
    """Validation happens before any socket is opened (the leak check would catch one)."""
    config = ServerConfig(transport=TransportConfig.from_url("tcp://127.0.0.1:0"),
                          dispatcher=DispatcherConfig(name="pool", options={"workers": 0}))
    with pytest.raises(ConfigErrors, match=r"dispatcher\.options\.workers: must be an int >= 1, got 0"):
        build_server(config, REGISTRY)


def test_mistakes_only_assembly_finds() -> None:
    """A handler for the other kind of transport, or one that cannot take three arguments:
    load_config accepts them, assembly (build_server, sockwork check) refuses them by field."""
    for data, message in [
        ({"transport": "udp://127.0.0.1:0", "handler": "lines"},
         "handler 'lines' serves stream requests, but the udp transport delivers datagram requests"),
        ({"transport": "tcp://127.0.0.1:0", "handler": "os:getcwd"},
         "handler 'os:getcwd' cannot be called as handler(request, client_address, server): its signature is ()"),
    ]:
        config = load_config(data, REGISTRY)
        with pytest.raises(ConfigErrors) as info:
            assemble_config(config, REGISTRY)
        assert info.value.errors == [("handler", message)]


def test_mistakes_only_a_whole_check_finds() -> None:
    """An address given twice; none in files."""
    assert errors_of({"transport": {"url": "tcp://[::1]:0", "options": {"address": ["127.0.0.1", 5]}}}) == [
        ("transport", "address given twice: in the URL 'tcp://[::1]:0' and in the options")]
    hint = errors_of({"transport": "tcp://127.0.0.1:0", "handler": "mymodule.handle"})
    assert "write 'package.module:attribute'" in hint[0][1]
    config = load_config({"transport": "tcp://127.0.0.1:0",
                          "dispatcher": {"name": "thread", "options": {"max_threads": False}},
                          "limits": {"idle_timeout": "none"}}, REGISTRY)
    assert config.dispatcher.options.max_threads is None and config.limits.idle_timeout is None


def test_plugins_get_their_options_from_the_config() -> None:
    """[plugins.NAME] tables reach server.plugin_options for that plugin; unknown names are errors."""
    from sockwork import hookimpl, make_plugin_manager

    seen: list[object] = []

    class Metrics:
        @hookimpl
        def sockwork_server_started(self, server: object) -> None:
            seen.append(server.plugin_options.get("metrics"))  # type: ignore[attr-defined]

    pm = make_plugin_manager(entry_points=False)
    pm.register(Metrics(), name="metrics")
    registry = Registry(pm)
    config = load_config({"transport": "tcp://127.0.0.1:0", "plugins": {"metrics": {"prefix": "edge"}}}, registry)
    assert config.plugins == {"metrics": {"prefix": "edge"}}
    assert config.to_dict()["plugins"] == {"metrics": {"prefix": "edge"}}
    with serving(build_server(config, registry)):
        pass
    assert seen == [{"prefix": "edge"}]
    with pytest.raises(ConfigErrors) as info:
        load_config({"transport": "tcp://127.0.0.1:0", "plugins": {"metrix": {}, "metrics": 3}}, registry)
    errors = dict(info.value.errors)
    assert errors["plugins.metrix"].startswith("no plugin named 'metrix'; registered: ")
    assert "metrics" in errors["plugins.metrix"]
    assert errors["plugins.metrics"] == "must be a table of options, got 3"


def test_reading_resolves_nothing_and_load_config_reports_both_steps_at_once() -> None:
    """read_config keeps names, URLs and handler references as given; load_config (assembly)
    reports the data's problems and the parts' in one go."""
    from sockwork.config import read_config

    data = {"transport": "quic://h:1", "dispatcher": "threads", "handler": "no_such_module:fn"}
    config = read_config(data)
    assert config.transport == TransportConfig(url="quic://h:1") and config.dispatcher.name == "threads"
    assert sorted(p for p, _ in errors_of({**data, "log_level": "LOUD"})) == [
        "dispatcher.name", "handler.ref", "log_level", "transport.name"]


def test_config_does_not_import_the_server() -> None:
    """config.py reads and validates data; resolving, building and serving are assembly's and the server's."""
    import subprocess
    import sys

    probe = ("import sys, sockwork.config; print(sorted(m for m in ('sockwork._server', 'sockwork._loop', "
             "'sockwork.registry', 'sockwork.assembly', 'pluggy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"
