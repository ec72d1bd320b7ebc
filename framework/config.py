"""Configuration as frozen attrs objects, loadable from a dict, TOML or JSON.

Rule 1: this module reads and checks data: the shape of the file, and the
settings that are sockwork's own (``drain_timeout``, ``log_level``, ``limits``,
``access_log``). It looks no name up, imports no handler and knows no
component's options: :mod:`sockwork.assembly` does that, once
(``sockwork.load_config`` is :func:`read_config` followed by assembly's
resolution, every problem of a file reported at once, each with its field path).
Rule 2: each component validates its own options, with the attrs options
class it registered, when assembly resolves it.

The file format (TOML shown; JSON has the same shape)::

    transport = "tcp://127.0.0.1:8000"      # or a table: name / url + options
    dispatcher = "pool"                     # or a table: name + options
    handler = "mypackage.handlers:serve"    # or a registered name, or a table: ref + options
    drain_timeout = 10                      # seconds, or "forever"
    log_level = "INFO"
    lame_duck = 2                           # seconds still serving after SIGTERM, health saying "draining"
    pid_file = "/run/myapp.pid"             # written once serving, removed at exit
    agent_check = "tcp://127.0.0.1:8001"    # HAProxy's agent check; health = "tcp://..." for HTTP probes
    limits = { max_connections = 1024, idle_timeout = 60 }   # see Limits

    [dispatcher]                             # the table form, instead of the string
    name = "pool"
    options = { workers = 8, queue_size = 128 }
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, final

import attrs

from .errors import ConfigError
from .limits import Limits
from .validators import (
    check_access_log,
    check_drain_timeout,
    check_lame_duck,
    check_listener_url,
    check_pid_file,
    field_problem,
    off_is_none,
    validate_options,
)

__all__ = [
    "ConfigErrors",
    "DispatcherConfig",
    "FramingConfig",
    "HandlerConfig",
    "ServerConfig",
    "TransportConfig",
    "read_config",
    "read_config_data",
    "read_config_file",
    "read_config_partially",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FOREVER = "forever"  # drain_timeout in files, where TOML has no null


@final
class ConfigErrors(ConfigError):
    """Every problem found in one configuration, each as ``(field path, message)``."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "config") -> None:
        self.errors = errors = list(dict.fromkeys(errors))  # one line per problem, however it was found
        self.source = source
        lines = "\n".join(f"  {path}: {message}" for path, message in errors)
        count = f"{len(errors)} problem{'s' if len(errors) != 1 else ''}"
        super().__init__(f"{count} in {source}:\n{lines}")


def _options_factory() -> dict[str, Any]:
    return {}


def _check_transport(config: TransportConfig, attribute: attrs.Attribute[Any], value: object) -> None:
    if (config.name is None) == (config.url is None):
        raise ConfigError("a TransportConfig needs a name or a url (one of them)")


@final
@attrs.frozen(kw_only=True)
class TransportConfig:
    """Which transport, by ``name`` or by ``url``, and its options (a mapping, or its options object).

    A URL is read by assembly, which knows the schemes transports declare: the
    config :func:`sockwork.load_config` returns has the transport's ``name`` and
    the options the URL gave.
    """

    name: str | None = attrs.field(default=None, validator=_check_transport)
    url: str | None = None
    options: Any = attrs.field(factory=_options_factory)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> TransportConfig:
        """``TransportConfig.from_url("tcp://127.0.0.1:8000", backlog=4096)``."""
        return cls(url=url, options=options)


@final
@attrs.frozen(kw_only=True)
class DispatcherConfig:
    """Which dispatcher, and its options (a mapping, or its options object)."""

    name: str = "thread"
    options: Any = attrs.field(factory=_options_factory)


@final
@attrs.frozen(kw_only=True)
class HandlerConfig:
    """What serves requests: a registered name, ``"package.module:attribute"``,
    or the handler factory itself; ``options`` apply to a registered name."""

    ref: str | Callable[..., object] = "echo"
    options: Any = attrs.field(factory=_options_factory)


@final
@attrs.frozen(kw_only=True)
class FramingConfig:
    """Which framing a message handler uses (a registered name: ``lines``, ``length``, a plugin's), and its
    options; None in a ServerConfig keeps the handler's own."""

    name: str = "lines"
    options: Any = attrs.field(factory=_options_factory)


def _check_drain_timeout(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_drain_timeout(value, attribute.name)


def _check_log_level(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in LOG_LEVELS:
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(LOG_LEVELS)}, got {value!r}")


def _check_access_log(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_access_log(value, attribute.name)


def _check_lame_duck(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_lame_duck(value, attribute.name)


def _check_pid_file(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_pid_file(value, attribute.name)


def _check_listener_url(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_listener_url(value, attribute.name)


LOG_FORMATS = ("text", "json")


def _check_log_format(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in LOG_FORMATS:
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(LOG_FORMATS)}, got {value!r}")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


@final
@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything needed to assemble a Server. Immutable: derive variants
    with ``attrs.evolve(config, dispatcher=DispatcherConfig(name="pool"))``."""

    transport: TransportConfig
    dispatcher: DispatcherConfig = attrs.field(factory=DispatcherConfig)
    handler: HandlerConfig = attrs.field(factory=HandlerConfig)
    drain_timeout: float | None = attrs.field(default=10.0, validator=_check_drain_timeout)
    """Seconds ``close()`` lets running requests finish; None waits forever."""
    log_level: str = attrs.field(default="INFO", converter=_upper, validator=_check_log_level)
    """Level of the ``sockwork`` logger."""
    limits: Limits = attrs.field(factory=Limits, validator=attrs.validators.instance_of(Limits))
    """Connection cap and timeouts (see :class:`~sockwork.Limits`)."""
    access_log: str | None = attrs.field(default=None, converter=off_is_none, validator=_check_access_log)
    """One line per request on the ``sockwork.access`` logger: ``"text"``, ``"json"`` (JSON lines), or None (off)."""
    lame_duck: float = attrs.field(default=0.0, validator=_check_lame_duck)
    """Seconds a server stopping on SIGTERM/SIGINT keeps serving while its health checks say it is
    draining, before it stops listening and drains; 0 (the default): stop listening at once."""
    pid_file: str | None = attrs.field(default=None, converter=off_is_none, validator=_check_pid_file)
    """``sockwork serve`` writes its process id there once serving (a new master after an upgrade
    rewrites it) and removes it at exit; None: no file."""
    agent_check: str | None = attrs.field(default=None, converter=off_is_none, validator=_check_listener_url)
    """``tcp://HOST:PORT``: answer HAProxy's agent check there (``up``, ``drain``, ``maint``); None: off."""
    health: str | None = attrs.field(default=None, converter=off_is_none, validator=_check_listener_url)
    """``tcp://HOST:PORT``: answer HTTP ``GET /healthz`` and ``GET /readyz`` there; None: off."""
    framing: FramingConfig | None = None
    """The framing the (message) handler uses, chosen by name; None: the handler's own."""
    log_format: str = attrs.field(default="text", validator=_check_log_format)
    """How ``sockwork serve`` writes its log lines: ``"text"``, or ``"json"`` (one JSON object per line,
    see :class:`sockwork.logs.JsonFormatter`). A library user configures logging themselves."""
    metrics: str | None = attrs.field(default=None, converter=off_is_none, validator=_check_listener_url)
    """``tcp://HOST:PORT``: serve Prometheus' ``GET /metrics`` there, from the server's process
    (needs ``pip install 'sockwork[prometheus]'``); None: off."""
    plugins: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """Options for plugins by plugin name (``[plugins.NAME]`` tables in a file): the Server
    passes them on as ``server.plugin_options``, for lifecycle-hook plugins to read."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> ServerConfig:
        """:func:`read_config`: the data read and checked; names and options are assembly's to resolve."""
        return read_config(data, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> ServerConfig:
        """:func:`read_config_file`."""
        return read_config_file(path)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) that :meth:`from_dict` reads back."""
        return {
            "transport": {**({"url": self.transport.url} if self.transport.name is None else
                             {"name": self.transport.name}), "options": _options_dict(self.transport.options)},
            "dispatcher": {"name": self.dispatcher.name, "options": _options_dict(self.dispatcher.options)},
            "handler": {"ref": _handler_ref(self.handler.ref), "options": _options_dict(self.handler.options)},
            "drain_timeout": FOREVER if self.drain_timeout is None else self.drain_timeout,
            "log_level": self.log_level,
            "limits": _options_dict(self.limits),
            "access_log": self.access_log if self.access_log is not None else False,
            "lame_duck": self.lame_duck,
            "pid_file": self.pid_file if self.pid_file is not None else False,
            "agent_check": self.agent_check if self.agent_check is not None else False,
            "health": self.health if self.health is not None else False,
            "log_format": self.log_format,
            "metrics": self.metrics if self.metrics is not None else False,
            "plugins": _plain(self.plugins),
            **({} if self.framing is None else
               {"framing": {"name": self.framing.name, "options": _options_dict(self.framing.options)}}),
        }


# ---- Loading ------------------------------------------------------------------

_TOP_KEYS = ("transport", "dispatcher", "handler", "framing", "drain_timeout", "log_level", "limits", "access_log",
             "log_format", "lame_duck", "pid_file", "agent_check", "health", "metrics", "plugins")


def read_config_file(path: str | Path) -> ServerConfig:
    """Read a ``.toml`` or ``.json`` file into a ServerConfig (its data checked; see :func:`read_config`)."""
    return read_config(read_config_data(path), source=str(path))


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The plain data of a ``.toml`` or ``.json`` config file, not yet validated."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {str(path)!r}: the name must end in .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of settings")
    return data


def read_config(data: Mapping[str, Any], *, source: str = "config") -> ServerConfig:
    """Plain data (as TOML/JSON give it) into a ServerConfig; raises :class:`ConfigErrors` listing every problem.

    Component names, URLs, options and handler references are kept as given:
    :func:`sockwork.load_config` (assembly) resolves and checks them.
    """
    config, errors = read_config_partially(data)
    if errors or config is None:
        raise ConfigErrors(errors, source)
    return config


def read_config_partially(data: Mapping[str, Any]) -> tuple[ServerConfig | None, list[tuple[str, str]]]:
    """What :func:`read_config` reads, with its problems instead of an exception.

    The config holds every setting that could be read (a bad one is left at its
    default), so that assembly can check the components too and report all
    problems at once; it is None when there is no usable transport.
    """
    errors: list[tuple[str, str]] = []
    for key in data:
        if key not in _TOP_KEYS:
            errors.append((str(key), f"unknown setting; allowed: {', '.join(_TOP_KEYS)}"))
    if "transport" in data:
        transport = _read_transport(data["transport"], errors)
    else:
        transport = None
        errors.append(("transport", 'missing; e.g. transport = "tcp://127.0.0.1:8000"'))
    dispatcher = _read_component(data.get("dispatcher", "thread"), "dispatcher", "name", errors)
    handler = _read_component(data.get("handler", "echo"), "handler", "ref", errors)
    server_fields: dict[str, Any] = {}
    fields = attrs.fields_dict(ServerConfig)
    for name in ("drain_timeout", "log_level", "access_log", "log_format", "lame_duck", "pid_file", "agent_check",
                 "health", "metrics"):
        if name in data:
            value = None if name == "drain_timeout" and data[name] == FOREVER else data[name]
            problem = field_problem(fields[name], value)
            if problem is None:
                server_fields[name] = value
            else:
                errors.append((name, problem))
    if "limits" in data:
        limits, problems = validate_options(Limits, data["limits"])
        errors.extend((f"limits.{field}" if field else "limits", problem) for field, problem in problems)
        if limits is not None:
            server_fields["limits"] = limits
    if "plugins" in data:
        server_fields["plugins"] = _read_plugin_options(data["plugins"], errors)
    if "framing" in data:
        server_fields["framing"] = _read_component(data["framing"], "framing", "name", errors)
    if transport is None:
        return None, errors
    return ServerConfig(transport=transport, dispatcher=dispatcher, handler=handler, **server_fields), errors


def _read_plugin_options(value: Any, errors: list[tuple[str, str]]) -> dict[str, Any]:
    """``plugins = { NAME = { ... } }``: a table of tables (assembly checks that each NAME is a plugin)."""
    if not isinstance(value, Mapping):
        errors.append(("plugins", f"must be a table of plugin names, each with a table of options, got {value!r}"))
        return {}
    options: dict[str, Any] = {}
    for name, table in value.items():
        if not isinstance(table, Mapping):
            errors.append((f"plugins.{name}", f"must be a table of options, got {table!r}"))
        else:
            options[name] = dict(table)
    return options


def _read_transport(value: Any, errors: list[tuple[str, str]]) -> TransportConfig | None:
    if isinstance(value, str):
        return TransportConfig(url=value)
    if not isinstance(value, Mapping):
        errors.append(("transport", f"must be a URL or a table with name/url and options, got {value!r}"))
        return None
    _unknown_keys(value, ("name", "url", "options"), "transport", errors)
    options = value.get("options", {})
    if not isinstance(options, Mapping):
        errors.append(("transport.options", f"must be a table of options, got {options!r}"))
        options = {}
    if "url" in value:
        if "name" in value:
            errors.append(("transport", "give 'url' or 'name', not both"))
        if not isinstance(value["url"], str):
            errors.append(("transport.url", f"must be a URL such as tcp://127.0.0.1:8000, got {value['url']!r}"))
            return None
        return TransportConfig(url=value["url"], options=dict(options))
    if not isinstance(value.get("name"), str):
        errors.append(("transport.name", f"must be a transport name such as 'tcp', got {value.get('name')!r}"))
        return None
    return TransportConfig(name=value["name"], options=dict(options))


def _read_component(value: Any, kind: str, key: str, errors: list[tuple[str, str]]) -> Any:
    config_class = {"dispatcher": DispatcherConfig, "framing": FramingConfig}.get(kind, HandlerConfig)
    if isinstance(value, str):
        return config_class(**{key: value})
    if not isinstance(value, Mapping):
        errors.append((kind, f"must be a {key} string or a table with {key} and options, got {value!r}"))
        return config_class()
    _unknown_keys(value, (key, "options"), kind, errors)
    name, options = value.get(key, getattr(config_class(), key)), value.get("options", {})
    if not isinstance(name, str):
        errors.append((f"{kind}.{key}", f"must be a string, got {name!r}"))
        return config_class()
    if not isinstance(options, Mapping):
        errors.append((f"{kind}.options", f"must be a table of options, got {options!r}"))
        options = {}
    fields: dict[str, Any] = {key: name, "options": dict(options)}
    return config_class(**fields)


def _unknown_keys(table: Mapping[str, Any], allowed: tuple[str, ...], path: str, errors: list[tuple[str, str]]) -> None:
    for key in table:
        if key not in allowed:
            errors.append((f"{path}.{key}", f"unknown key; allowed: {', '.join(allowed)}"))


# ---- Back to plain data ---------------------------------------------------------

def _options_dict(options: Any) -> dict[str, Any]:
    data = attrs.asdict(options) if attrs.has(type(options)) else dict(options)
    return {key: _plain(value) for key, value in data.items()}


def _plain(value: Any) -> Any:
    """Tuples as lists, as TOML and JSON have them."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _handler_ref(ref: str | Callable[..., object]) -> str:
    if isinstance(ref, str):
        return ref
    module, name = getattr(ref, "__module__", None), getattr(ref, "__qualname__", None)
    if not module or not name or "<" in name:
        raise ConfigError(f"handler {ref!r} has no importable 'module:attribute' name to write down")
    return f"{module}:{name}"
