"""Configuration as frozen attrs objects, loadable from a dict, TOML or JSON.

Rule 1: a config is validated completely before any socket is opened; every
problem is reported with its field path (``dispatcher.options.workers``),
the bad value and what is allowed, all problems of a file at once.
Rule 2: each component validates its own options, with the attrs options
class it registered; this module knows no component's options.

The file format (TOML shown; JSON has the same shape)::

    transport = "tcp://127.0.0.1:8000"      # or a table: name / url + options
    dispatcher = "pool"                     # or a table: name + options
    handler = "mypackage.handlers:serve"    # or a registered name, or a table: ref + options
    drain_timeout = 10                      # seconds, or "forever"
    log_level = "INFO"
    limits = { max_connections = 1024, idle_timeout = 60 }   # see Limits

    [dispatcher]                             # the table form, instead of the string
    name = "pool"
    options = { workers = 8, queue_size = 128 }
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, final

import attrs

from .assembly import resolve_handler
from .errors import ConfigError
from .limits import Limits
from .registry import DispatcherEntry, Kind, Registry, field_problem, validate_options, with_shadowing
from .urls import parse_transport_url

__all__ = [
    "ConfigErrors",
    "DispatcherConfig",
    "HandlerConfig",
    "ServerConfig",
    "TransportConfig",
    "load_config",
    "load_config_file",
    "read_config_data",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FOREVER = "forever"  # drain_timeout in files, where TOML has no null


@final
class ConfigErrors(ConfigError):
    """Every problem found in one configuration, each as ``(field path, message)``."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "config") -> None:
        self.errors = errors
        self.source = source
        lines = "\n".join(f"  {path}: {message}" for path, message in errors)
        count = f"{len(errors)} problem{'s' if len(errors) != 1 else ''}"
        super().__init__(f"{count} in {source}:\n{lines}")


def _options_factory() -> dict[str, Any]:
    return {}


@final
@attrs.frozen(kw_only=True)
class TransportConfig:
    """Which transport, and its options (a mapping, or its options object)."""

    name: str
    options: Any = attrs.field(factory=_options_factory)

    @classmethod
    def from_url(cls, url: str, registry: Registry | None = None, **options: Any) -> TransportConfig:
        """``TransportConfig.from_url("tcp://127.0.0.1:8000", backlog=4096)``.

        With a ``registry``, schemes that plugin transports declare are understood too.
        """
        name, from_url = registry.parse_transport_url(url) if registry is not None else parse_transport_url(url)
        twice = sorted(set(from_url) & set(options))
        if twice:
            raise ConfigError(f"{', '.join(twice)} given twice: in the URL {url!r} and in the options")
        return cls(name=name, options={**from_url, **options})


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


def _check_drain_timeout(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf
    ):
        raise ValueError(f"'{attribute.name}' must be a finite number of seconds >= 0, or none to wait forever "
                         f"({FOREVER!r} in files), got {value!r}")


def _check_log_level(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in LOG_LEVELS:
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(LOG_LEVELS)}, got {value!r}")


ACCESS_LOG_FORMATS = ("text", "json")


def _check_access_log(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and value not in ACCESS_LOG_FORMATS:
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(ACCESS_LOG_FORMATS)}, or false for none, "
                         f"got {value!r}")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _false_is_none(value: Any) -> Any:
    return None if value in (False, "none") else value


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
    access_log: str | None = attrs.field(default=None, converter=_false_is_none, validator=_check_access_log)
    """One line per request on the ``sockwork.access`` logger: ``"text"``, ``"json"`` (JSON lines), or None (off)."""
    plugins: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """Options for plugins by plugin name (``[plugins.NAME]`` tables in a file): the Server
    passes them on as ``server.plugin_options``, for lifecycle-hook plugins to read."""

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], registry: Registry | None = None, source: str = "config"
    ) -> ServerConfig:
        return load_config(data, registry, source=source)

    @classmethod
    def from_file(cls, path: str | Path, registry: Registry | None = None) -> ServerConfig:
        return load_config_file(path, registry)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) that :meth:`from_dict` reads back."""
        return {
            "transport": {"name": self.transport.name, "options": _options_dict(self.transport.options)},
            "dispatcher": {"name": self.dispatcher.name, "options": _options_dict(self.dispatcher.options)},
            "handler": {"ref": _handler_ref(self.handler.ref), "options": _options_dict(self.handler.options)},
            "drain_timeout": FOREVER if self.drain_timeout is None else self.drain_timeout,
            "log_level": self.log_level,
            "limits": _options_dict(self.limits),
            "access_log": self.access_log if self.access_log is not None else False,
            "plugins": _plain(self.plugins),
        }


# ---- Loading ------------------------------------------------------------------

_TOP_KEYS = ("transport", "dispatcher", "handler", "drain_timeout", "log_level", "limits", "access_log", "plugins")


def load_config_file(path: str | Path, registry: Registry | None = None) -> ServerConfig:
    """Read a ``.toml`` or ``.json`` file into a validated ServerConfig."""
    return load_config(read_config_data(path), registry, source=str(path))


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


def load_config(data: Mapping[str, Any], registry: Registry | None = None, *, source: str = "config") -> ServerConfig:
    """Validate plain data (as TOML/JSON give it) into a ServerConfig; options become objects."""
    registry = registry if registry is not None else Registry()
    errors: list[tuple[str, str]] = []
    for key in data:
        if key not in _TOP_KEYS:
            errors.append((str(key), f"unknown setting; allowed: {', '.join(_TOP_KEYS)}"))
    if "transport" in data:
        transport = _read_transport(data["transport"], registry, errors)
    else:
        transport = None
        errors.append(("transport", 'missing; e.g. transport = "tcp://127.0.0.1:8000"'))
    dispatcher = _read_component(data.get("dispatcher", "thread"), "dispatcher", "name", errors)
    handler = _read_component(data.get("handler", "echo"), "handler", "ref", errors)
    server_fields: dict[str, Any] = {}
    if "drain_timeout" in data:
        value = data["drain_timeout"]
        server_fields["drain_timeout"] = None if value == FOREVER else value
    if "log_level" in data:
        server_fields["log_level"] = data["log_level"]
    if "access_log" in data:
        server_fields["access_log"] = data["access_log"]
    fields = attrs.fields_dict(ServerConfig)
    for name, value in server_fields.items():
        problem = field_problem(fields[name], value)
        if problem is not None:
            errors.append((name, problem))
    if "limits" in data:
        limits, problems = validate_options(Limits, data["limits"])
        errors.extend((f"limits.{field}" if field else "limits", problem) for field, problem in problems)
        server_fields["limits"] = limits
    if "plugins" in data:
        server_fields["plugins"] = _read_plugin_options(data["plugins"], registry, errors)
    # The components check their own options, whatever else is wrong: all problems at once.
    resolved = _resolve_parts(transport, dispatcher, handler, registry, errors)
    if errors or resolved is None:
        raise ConfigErrors(_unique(errors), source)
    return ServerConfig(**resolved, **server_fields)


def _read_plugin_options(value: Any, registry: Registry, errors: list[tuple[str, str]]) -> dict[str, Any]:
    """``plugins = { NAME = { ... } }``: each NAME a registered plugin, each value a table."""
    if not isinstance(value, Mapping):
        errors.append(("plugins", f"must be a table of plugin names, each with a table of options, got {value!r}"))
        return {}
    registered = sorted(name for name, _ in registry.plugin_manager.list_name_plugin())
    options: dict[str, Any] = {}
    for name, table in value.items():
        if registry.plugin_manager.get_plugin(name) is None:
            errors.append((f"plugins.{name}", f"no plugin named {name!r}; registered: {', '.join(registered)}"))
        elif not isinstance(table, Mapping):
            errors.append((f"plugins.{name}", f"must be a table of options, got {table!r}"))
        else:
            options[name] = dict(table)
    return options


def _read_transport(value: Any, registry: Registry, errors: list[tuple[str, str]]) -> TransportConfig | None:
    if isinstance(value, str):
        return _from_url(value, {}, "transport", registry, errors)
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
        return _from_url(value["url"], options, "transport.url", registry, errors)
    if not isinstance(value.get("name"), str):
        errors.append(("transport.name", f"must be a transport name such as 'tcp', got {value.get('name')!r}"))
        return None
    return TransportConfig(name=value["name"], options=dict(options))


def _from_url(
    url: Any, options: Mapping[str, Any], path: str, registry: Registry, errors: list[tuple[str, str]],
) -> TransportConfig | None:
    if not isinstance(url, str):
        errors.append((path, f"must be a URL such as tcp://127.0.0.1:8000, got {url!r}"))
        return None
    try:
        return TransportConfig.from_url(url, registry, **options)
    except ConfigError as exc:
        errors.append((path, str(exc)))
        return None


def _read_component(value: Any, kind: str, key: str, errors: list[tuple[str, str]]) -> Any:
    config_class = DispatcherConfig if kind == "dispatcher" else HandlerConfig
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


def _unique(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(errors))


# ---- Validating options: names to entries, mappings to options objects ------------
# Only validation: building and checking the parts together is assembly's job
# (sockwork.assembly.assemble_config), which build_server and `sockwork check` run.

def _resolve_parts(
    transport: TransportConfig | None, dispatcher: DispatcherConfig, handler: HandlerConfig,
    registry: Registry, errors: list[tuple[str, str]],
) -> dict[str, Any] | None:
    """The three component configs with validated options objects; problems go to ``errors``."""
    before = len(errors)
    if transport is not None:
        transport = attrs.evolve(transport, options=_component_options(
            registry, "transport", transport.name, transport.options, "transport", errors))
    dispatcher = attrs.evolve(dispatcher, options=_component_options(
        registry, "dispatcher", dispatcher.name, dispatcher.options, "dispatcher", errors))
    if isinstance(handler.ref, str) and ":" not in handler.ref:
        handler = attrs.evolve(handler, options=_component_options(
            registry, "handler", handler.ref, handler.options, "handler", errors, name_key="ref"))
    else:
        try:
            resolve_handler(handler.ref)
        except ConfigError as exc:
            errors.append(("handler.ref", str(exc)))
        if handler.options:
            errors.append(("handler.options", "options only apply to a registered handler name"))
    if len(errors) > before or transport is None:
        return None
    return {"transport": transport, "dispatcher": dispatcher, "handler": handler}


def _component_options(
    registry: Registry, kind: Kind, name: str, options: Any, path: str,
    errors: list[tuple[str, str]], name_key: str = "name",
) -> Any:
    try:
        entry = registry.get(kind, name)
    except ConfigError as exc:
        hint = " To import a handler, write 'package.module:attribute'." if kind == "handler" and "." in name else ""
        errors.append((f"{path}.{name_key}", str(exc).splitlines()[0] + hint))
        return None
    validated, problems = validate_options(entry.options, options)
    for field, problem in problems:
        errors.append((f"{path}.options" + (f".{field}" if field else ""),
                       with_shadowing(registry, kind, name, problem)))
    if validated is not None and isinstance(entry, DispatcherEntry) and entry.supervisor:
        # A supervisor's inner dispatcher is a registry name with options of its own.
        # A supervisor's options class has "inner" and "inner_options" (checked at registration).
        inner = validated.inner  # type: ignore[attr-defined]  # see above
        before = len(errors)
        _component_options(registry, "dispatcher", inner, validated.inner_options,  # type: ignore[attr-defined]  # see above
                           f"{path}.options.inner", errors)
        for index in range(before, len(errors)):
            field, problem = errors[index]
            errors[index] = (field.replace(".inner.options", ".inner_options").replace(".inner.name", ".inner"),
                             problem)
    return validated


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
