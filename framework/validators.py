"""attrs validators for options classes: the ones the built-in components use, public for plugins.

Each raises ``ValueError`` with a message that starts with the option's name, as
sockwork's option checking expects: ``'workers' must be an int >= 1, got 0``::

    @attrs.frozen(kw_only=True)
    class MyOptions:
        workers: int = attrs.field(default=4, validator=positive_int)
        limit: int | None = attrs.field(default=None, converter=off_is_none, validator=optional_positive_int)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import ConfigError, OptionError
from .urls import parse_listener_url

__all__ = ["SECRET", "boolean", "is_secret", "off_is_none", "optional_positive_int", "optional_seconds",
           "positive_int", "secret_field", "shown"]

SECRET = "secret"
"""The attrs ``metadata`` key that marks an option as a secret: ``attrs.field(metadata={SECRET: True})``.

``sockwork check`` (and ``sockwork plugins``, for a default) shows such an option's
value as ``***``. :func:`secret_field` sets it, and keeps the value out of the
options object's ``repr`` too (so out of logs and tracebacks)."""

SECRET_SHOWN = "***"

ACCESS_LOG_FORMATS = ("text", "json")


def off_is_none(value: object) -> object:
    """Config files cannot write None: ``false`` or ``"none"`` mean it."""
    return None if value is False or value == "none" else value



def secret_field(**kwargs: Any) -> Any:
    """``attrs.field(**kwargs)`` for a secret option (a password, a token): marked :data:`SECRET`, and shown
    as ``***`` by ``sockwork check``, ``sockwork plugins`` and the options object's ``repr``."""
    metadata = {**kwargs.pop("metadata", {}), SECRET: True}
    return attrs.field(repr=lambda value: SECRET_SHOWN if value is not None else "None", metadata=metadata,
                       **kwargs)


def is_secret(field: attrs.Attribute[Any]) -> bool:
    """Whether an options class's field is marked :data:`SECRET`."""
    return bool(field.metadata.get(SECRET))


def shown(options_class: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (a mapping of option names) with every secret option's value replaced by ``***``."""
    secret = {field.alias for field in attrs.fields(options_class) if is_secret(field)} \
        if attrs.has(options_class) else set()
    return {name: SECRET_SHOWN if name in secret and value is not None else value for name, value in values.items()}


def boolean(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"'{attribute.name}' must be true or false, got {value!r}")


def positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{attribute.name}' must be an int >= 1, got {value!r}")


def optional_positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"'{attribute.name}' must be an int >= 1, or none for no limit, got {value!r}")


def optional_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
    ):
        raise ValueError(f"'{attribute.name}' must be a number of seconds > 0, or none to disable, got {value!r}")


# ---- Server settings checked in one place, for ServerConfig and Server(...) alike ---------

def check_drain_timeout(value: object, name: str = "drain_timeout") -> None:
    """Seconds, finite (an infinite float would overflow thread joins' timeouts), or None: forever."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf
    ):
        raise ConfigError(f"'{name}' must be a finite number of seconds >= 0, or None to wait forever "
                          f"('forever' in files), got {value!r}")


def check_access_log(value: object, name: str = "access_log") -> None:
    if value is not None and value not in ACCESS_LOG_FORMATS:
        raise ConfigError(f"'{name}' must be one of {', '.join(ACCESS_LOG_FORMATS)}, or None for none "
                          f"(false in files), got {value!r}")


def check_lame_duck(value: object, name: str = "lame_duck") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"'{name}' must be a finite number of seconds >= 0 (0: off), got {value!r}")


def check_pid_file(value: object, name: str = "pid_file") -> None:
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise ConfigError(f"'{name}' must be a file path, or None for none (false in files), got {value!r}")


def check_listener_url(value: object, name: str) -> tuple[str, int] | int | None:
    """A side listener's ``tcp://HOST:PORT`` (None: none; a ``(HOST, PORT)`` tuple as it is) as ``(HOST, PORT)``."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value  # a descriptor: a bound listening socket inherited from an upgraded master
    return parse_listener_url(value, f"'{name}'")


# ---- Checking values against an options class -----------------------------------------

Problem = tuple[str | None, str]
"""(option name or None, what is wrong with it), as :func:`validate_options` reports."""

_ATTRS_FIELD_MESSAGE = re.compile(r"^'(?P<field>\w+)' ")
_MISSING_ARGUMENT = re.compile(r"missing \d+ required .*argument[s]?: (?P<fields>.*)$")


def validate_options(cls: type, values: Mapping[str, Any] | object | None) -> tuple[object | None, list[Problem]]:
    """Build an instance of the attrs class ``cls`` from ``values``, or say every problem.

    ``values`` may be None (all defaults), a mapping of option names, or
    already an instance of ``cls``. Returns ``(instance, [])`` or
    ``(None, problems)``; each problem names its option where it can, so a
    file with several mistakes is reported in one go.
    """
    if isinstance(values, cls):
        return values, []
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        return None, [(None, f"options must be a table of option names, got {type(values).__name__}")]
    fields = {f.alias: f for f in attrs.fields(cls) if f.init}
    listing = ", ".join(sorted(fields)) or "(it takes none)"
    problems: list[Problem] = [
        (str(key), f"unknown option; allowed: {listing}") for key in values if key not in fields
    ]
    missing = sorted(name for name, f in fields.items() if f.default is attrs.NOTHING and name not in values)
    if missing:
        problems.append((None, f"missing required option(s): {', '.join(missing)}"))
    for name, value in values.items():
        if name in fields:
            problem = field_problem(fields[name], value)
            if problem is not None:
                problems.append((name, problem))
    if problems:
        return None, problems
    try:
        return cls(**values), []
    except (TypeError, ValueError) as exc:  # a check across fields, made by the class itself
        return None, [_as_problem(exc)]


def field_problem(field: attrs.Attribute[Any], value: object) -> str | None:
    """What is wrong with one option's value, checked on its own."""
    try:
        if field.converter is not None:
            value = field.converter(value)  # type: ignore[operator]  # our options use plain callables
        if field.validator is not None:
            field.validator(None, field, value)
    except (TypeError, ValueError) as exc:
        return _as_problem(exc)[1]
    except AttributeError:
        return None  # a validator that needs the whole object: the class checks it
    return None


def _as_problem(exc: Exception) -> Problem:
    message = str(exc.args[0]) if exc.args else str(exc)
    missing = _MISSING_ARGUMENT.search(message)
    if missing:
        return None, f"missing required option(s): {missing.group('fields').replace(chr(39), '')}"
    field = _ATTRS_FIELD_MESSAGE.match(message)
    if field is None:
        return None, message
    # attrs-style messages start with the option's name, which the caller shows already.
    return field.group("field"), message[field.end():]


def make_options(kind: str, name: str, options_class: type, values: Mapping[str, Any] | object | None) -> object:
    """Validate ``values`` into an instance of ``options_class``; raise on the first problem.

    Errors name the component and the option:
    ``dispatcher 'pool' option 'workers': must be an int >= 1, got 0``.
    """
    options, problems = validate_options(options_class, values)
    if problems:
        field, problem = problems[0]
        raise OptionError(kind, name, field, problem)
    return options
