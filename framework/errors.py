"""Exceptions raised by sockwork.

Hierarchy::

    ServerError
    ├── ConfigError (also a ValueError)     bad value given when assembling
    │   ├── UnknownPluginError (also LookupError)   no component by that name
    │   ├── OptionError                     an option a component rejected
    │   └── PartsRefused                    parts that each work, but not together (tls with asyncio)
    ├── PluginError                         a plugin broke its contract
    ├── FailedElsewhere                     a handler failed in another process (fork)
    └── BindError (also an OSError)         the transport could not bind/listen

Every message names the bad value and what is allowed instead.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BindError",
    "ConfigError",
    "FailedElsewhere",
    "OptionError",
    "PartsRefused",
    "PluginError",
    "ServerError",
    "UnknownPluginError",
]


class ServerError(Exception):
    """Base class of every exception sockwork raises on purpose."""


class ConfigError(ServerError, ValueError):
    """A value given to assemble a server is unusable; nothing was opened."""


class UnknownPluginError(ConfigError, LookupError):
    """No component of this kind is registered under this name."""

    def __init__(self, kind: str, name: object, available: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = tuple(sorted(available))
        listing = ", ".join(self.available) or "(none)"
        import difflib  # only for this message: the drop-in's import time stays low

        close = difflib.get_close_matches(name, self.available, n=1) if isinstance(name, str) else []
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"no {kind} named {name!r}; registered: {listing}.{hint}\n"
            "Is the plugin that provides it installed (entry point group 'sockwork')?"
        )


class OptionError(ConfigError):
    """A component rejected one of its options.

    ``kind`` and ``component`` say whose option it is ("dispatcher", "pool"),
    ``field`` which option (None when the problem is not one field's), and
    ``problem`` what is wrong with it.
    """

    def __init__(self, kind: str, component: str, field: str | None, problem: str) -> None:
        self.kind = kind
        self.component = component
        self.field = field
        self.problem = problem
        where = f"{kind} {component!r}"
        if field is not None:
            where += f" option {field!r}"
        super().__init__(f"{where}: {problem}")


class PartsRefused(ConfigError):
    """Assembly refuses to put together parts that each work, but not with each other, by design: a
    transport whose stage keeps its session in the socket object (``tls``) with a dispatcher that takes the
    bare descriptor over (``asyncio``). The conformance kit skips such a pair with this message."""


class PluginError(ServerError):
    """A plugin returned something that breaks the hook's contract."""


class FailedElsewhere(ServerError):
    """A handler raised in another process (a ``fork`` child); what the parent learns of it.

    ``type_name`` is the exception's class (``"RuntimeError"``, or
    ``"package.module.Error"`` outside builtins), ``message`` its text, ``pid``
    the process that ran the handler. The ``sockwork_request_failed`` hook gets
    this in the server's own process.
    """

    def __init__(self, type_name: str, message: str, pid: int) -> None:
        self.type_name = type_name
        self.message = message
        self.pid = pid
        super().__init__(f"{type_name}: {message} (in process {pid})")


class BindError(ServerError, OSError):
    """The transport could not bind or listen on the requested address."""
