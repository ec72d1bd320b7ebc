"""Finding components by name: plugin manager, registry entries, option building.

Rule 1: every component, built-in or third-party, arrives through a
registration hook; there is no other table of names.
Rule 2: there is no global plugin manager; each Registry owns one.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, final, overload

import attrs
import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError, UnknownPluginError
from .urls import parse_transport_url

if TYPE_CHECKING:
    import importlib.metadata
    import socket
    from pathlib import Path

__all__ = [
    "BUILTIN_PLUGINS",
    "DispatcherEntry",
    "Entry",
    "FramingEntry",
    "HandlerEntry",
    "HandlerSamples",
    "NoOptions",
    "PluginManager",
    "Registry",
    "StageInputs",
    "TransportEntry",
    "make_plugin_manager",
]

logger = logging.getLogger("sockwork")

Kind = Literal["transport", "dispatcher", "handler", "framing"]
KINDS: tuple[Kind, ...] = ("transport", "dispatcher", "handler", "framing")

BUILTIN_PLUGINS = (
    "sockwork.transports.tcp",
    "sockwork.transports.udp",
    "sockwork.transports.unix",
    "sockwork.transports.fd",
    "sockwork.transports.tls",
    "sockwork.strategies.inline",
    "sockwork.strategies.thread",
    "sockwork.strategies.fork",
    "sockwork.strategies.pool",
    "sockwork.strategies.prefork",
    "sockwork.strategies.aio",
    "sockwork.handlers",
    "sockwork.address_handler",
)

LIFECYCLE_HOOKS = ("sockwork_server_started", "sockwork_request_failed", "sockwork_collect_stats",
                   "sockwork_server_stopped")

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


@final
@attrs.frozen
class NoOptions:
    """The options class of a component that takes none."""


def _check_name(entry: Entry, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise PluginError(
            f"component name {value!r} is not usable: use lower-case letters, digits, '-', '_' or '.'"
        )


def _check_options_class(entry: Entry, attribute: attrs.Attribute[Any], value: object) -> None:
    if not (isinstance(value, type) and attrs.has(value)):
        raise PluginError(f"{entry.name!r}: options must be an attrs class, got {value!r}")


@attrs.frozen
class Entry:
    """One component a plugin contributes: a name, a factory and its options class.

    ``factory(options)`` builds the component from an instance of ``options``
    (an attrs class; the component's own validation lives there).
    ``unavailable_reason`` marks a component that cannot work on this platform;
    asking for it by name fails with that reason. ``plugin`` is filled in by
    the Registry with the name of the plugin that contributed the entry.
    """

    name: str = attrs.field(validator=_check_name)
    factory: Callable[..., Any] = attrs.field(validator=attrs.validators.is_callable())  # a supervisor's takes two
    options: type = attrs.field(default=NoOptions, validator=_check_options_class)
    description: str = ""
    unavailable_reason: str | None = None
    plugin: str = ""


@final
@attrs.frozen
class StageInputs:
    """What the conformance kit sends to test a transport's connection stages (``TransportEntry.stage_inputs``).

    ``partial``: the start of what the stages accept, too short to complete them (a
    client stalled mid-greeting): the kit checks that the connection then costs no CPU
    while it waits and is cut at the stage's timeout (counted ``timed_out``).
    ``refused``: bytes the stages refuse (:class:`~sockwork.StageFailed`, counted
    ``refused``); None leaves that test out.
    """

    partial: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    refused: bytes | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(bytes)))


@final
@attrs.frozen
class TransportEntry(Entry):
    """A transport: ``factory(options)`` returns an unopened :class:`~sockwork.Transport`.

    ``loopback_options(directory)`` returns options that listen on loopback
    (or, for file-based transports, inside ``directory``); the conformance
    suite and :mod:`sockwork.testing` use it to test the transport.

    ``loopback_client(sock, options)`` is for transports that change the wire
    format (TLS, a PROXY header): given a client socket connected to a server
    built with ``options``, it returns the socket to talk through (wrapped,
    or with a header sent). Without it, clients speak plain bytes.

    ``stage_inputs`` (a :class:`StageInputs`) says what the conformance kit sends to
    test the transport's connection stages; without it those tests are skipped.

    ``schemes`` are URL schemes that mean this transport besides its name
    (``("tls",)``, ``("proxy+tcp",)``); ``parse_url(url)`` turns such a URL
    into a mapping of options. Without ``parse_url``, a URL is read the
    generic way: ``SCHEME://HOST:PORT`` gives ``address``, a path scheme
    ``path`` (see :mod:`sockwork.urls`).
    """

    loopback_options: Callable[[Path], Any] | None = None
    loopback_client: Callable[[socket.socket, Any], Any] | None = None
    stage_inputs: StageInputs | None = None
    schemes: tuple[str, ...] = ()
    parse_url: Callable[[str], Mapping[str, Any]] | None = None


@final
@attrs.frozen
class DispatcherEntry(Entry):
    """A dispatcher: ``factory(options)`` returns a :class:`~sockwork.Dispatcher`.

    ``supervisor=True`` marks a dispatcher that runs worker processes, each
    serving with an inner dispatcher chosen by name (see
    :class:`~sockwork.interfaces.Supervisor`). Its options class must have the
    fields ``inner`` (a dispatcher name) and ``inner_options`` (a mapping);
    assembly validates them with the inner dispatcher's own options class and
    calls ``factory(options, make_inner)``, where ``make_inner()`` builds a
    fresh inner dispatcher (in each worker).
    """

    supervisor: bool = False


def _exchanges(value: object) -> tuple[tuple[bytes, bytes], ...]:
    pairs = tuple(tuple(pair) for pair in value) if isinstance(value, (list, tuple)) else value
    if not isinstance(pairs, tuple) or not all(
            len(pair) == 2 and all(isinstance(part, bytes) for part in pair) for pair in pairs):
        raise PluginError(f"handler samples must be (request bytes, reply bytes) pairs, got {value!r}")
    return pairs


@final
@attrs.frozen
class HandlerSamples:
    """What the conformance kit sends a named handler, and the reply it expects (``HandlerEntry.samples``).

    ``stream``: ``(request, reply)`` pairs, each sent on a connection of its own
    (``reply`` is read by its length); ``datagram``: the same as datagrams. The kit
    sends them under a blocking dispatcher and, when the entry has an
    ``async_factory``, under ``asyncio`` too; leave a kind empty to skip it.
    """

    stream: tuple[tuple[bytes, bytes], ...] = attrs.field(default=(), converter=_exchanges)
    datagram: tuple[tuple[bytes, bytes], ...] = attrs.field(default=(), converter=_exchanges)


@final
@attrs.frozen
class HandlerEntry(Entry):
    """A named handler: ``factory(options)`` returns a handler factory.

    ``async_factory(options)``, if given, returns the handler's async form
    (:class:`sockwork.aio.AsyncHandler`): assembly uses it instead of ``factory``
    when the dispatcher runs async handlers (``asyncio``), so one name serves both.
    """

    async_factory: Callable[..., Any] | None = None
    samples: HandlerSamples | None = None
    """What the conformance kit sends the handler and expects back; without it, its kit test is skipped."""


@final
@attrs.frozen
class FramingEntry(Entry):
    """A framing: ``factory(options)`` returns a :class:`sockwork.messages.Framing` (how a stream is cut into
    messages and replies are put on it). A config chooses it by name for a message handler."""


_ENTRY_TYPES: dict[Kind, type[Entry]] = {
    "transport": TransportEntry,
    "dispatcher": DispatcherEntry,
    "handler": HandlerEntry,
    "framing": FramingEntry,
}
_HOOK_NAMES: dict[Kind, str] = {
    "transport": "sockwork_add_transports",
    "dispatcher": "sockwork_add_dispatchers",
    "handler": "sockwork_add_handlers",
    "framing": "sockwork_add_framings",
}


@final
class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, remembering where plugins came from and which failed.

    ``distributions`` maps a plugin's name to ``"distribution version"``;
    ``load_failures`` lists ``(entry point name, distribution, exception)``
    for installed plugins that could not be loaded.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.distributions: dict[str, str] = {}
        self.load_failures: list[tuple[str, str, Exception]] = []


def make_plugin_manager(*, entry_points: bool = True) -> PluginManager:
    """A new plugin manager with the built-ins and (by default) installed plugins.

    Installed plugins are found through the ``sockwork`` entry-point group.
    One that fails to import or to register (a misspelled hook, say) is
    logged and recorded in ``load_failures``; the others keep working.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
        pm.distributions[name] = f"sockwork {_own_version()}"
    pm.check_pending()
    if entry_points:
        from importlib import metadata  # costly: only where installed plugins are wanted

        for entry_point in metadata.entry_points(group=hookspecs.PROJECT):
            _load_entry_point(pm, entry_point)
    return pm


def _load_entry_point(pm: PluginManager, entry_point: importlib.metadata.EntryPoint) -> None:
    dist = entry_point.dist
    origin = f"{dist.name} {dist.version}" if dist is not None else "?"
    if pm.is_blocked(entry_point.name):
        return
    if pm.get_plugin(entry_point.name) is not None:
        exc = PluginError(f"the entry point name {entry_point.name!r} is taken already "
                          f"(by {pm.distributions.get(entry_point.name, '?')}); this one was not loaded")
        logger.warning("plugin %r from %s: %s", entry_point.name, origin, exc)
        pm.load_failures.append((entry_point.name, origin, exc))
        return
    try:
        pm.register(entry_point.load(), name=entry_point.name)
        pm.check_pending()  # a misspelled hook name fails here, not silently later
    except Exception as exc:  # one broken plugin must not take the others down
        if pm.get_plugin(entry_point.name) is not None:
            pm.unregister(name=entry_point.name)
        logger.error("plugin %r from %s could not be loaded: %s", entry_point.name, origin, exc)
        pm.load_failures.append((entry_point.name, origin, exc))
        return
    pm.distributions[entry_point.name] = origin


def _own_version() -> str:
    from importlib import metadata  # costly: only where a plugin manager is made

    try:
        return metadata.version("sockwork")
    except metadata.PackageNotFoundError:
        return "(not installed)"


@final
class Registry:
    """The transports, dispatchers and handlers a plugin manager knows, by name.

    A plugin whose registration hook raises or returns something else than a
    list of entries is recorded in :attr:`failures` (and logged); every other
    plugin keeps working.
    """

    def __init__(self, plugin_manager: pluggy.PluginManager | None = None) -> None:
        # A plain pluggy manager works too; it just cannot say where plugins came from.
        self.plugin_manager = plugin_manager if plugin_manager is not None else make_plugin_manager()
        self.failures: list[tuple[str, Kind, Exception]] = []
        self.shadowed: dict[tuple[Kind, str], list[Entry]] = {}
        """Entries that lost their name to another plugin's, by (kind, name): the one in use shadows them."""
        self._entries: dict[Kind, dict[str, Entry]] = {
            kind: self._collect(kind) for kind in KINDS
        }
        self._schemes: dict[str, Entry] = {}
        for entry in self._entries["transport"].values():
            for scheme in (entry.name, *getattr(entry, "schemes", ())):
                if self._schemes.setdefault(scheme, entry) is not entry:
                    logger.warning("URL scheme %r of transport %r is taken by transport %r",
                                   scheme, entry.name, self._schemes[scheme].name)

    def _collect(self, kind: Kind) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        caller = getattr(self.plugin_manager.hook, _HOOK_NAMES[kind])
        # pluggy calls implementations last-registered first, trylast ones
        # (the built-ins) at the end; we keep that order and the first name wins.
        for impl in reversed(caller.get_hookimpls()):
            try:
                entries = _checked_entries(kind, impl.function())
            except Exception as exc:  # a broken plugin must not take the others down
                logger.error("plugin %r failed to register %ss: %s", impl.plugin_name, kind, exc)
                self.failures.append((impl.plugin_name, kind, exc))
                continue
            for entry in entries:
                if entry.name in found:
                    logger.warning(
                        "%s %r from plugin %r is shadowed by the one from plugin %r",
                        kind, entry.name, impl.plugin_name, found[entry.name].plugin,
                    )
                    self.shadowed.setdefault((kind, entry.name), []).append(
                        attrs.evolve(entry, plugin=impl.plugin_name))
                    continue
                found[entry.name] = attrs.evolve(entry, plugin=impl.plugin_name)
        return found

    def parse_transport_url(self, url: str) -> tuple[str, dict[str, Any]]:
        """``(transport name, options)`` for a URL, by the scheme a transport declared or its name."""
        scheme = url.partition(":")[0].lower()
        entry = self._schemes.get(scheme)
        if isinstance(entry, TransportEntry) and entry.parse_url is not None:
            try:
                return entry.name, dict(entry.parse_url(url))
            except ConfigError:
                raise
            except Exception as exc:  # the plugin's parser: a bad URL, or a bug, told in one line
                raise ConfigError(f"transport URL {url!r} could not be read by transport {entry.name!r} "
                                  f"(plugin {entry.plugin!r}): {type(exc).__name__}: {exc}") from None
        name, options = parse_transport_url(url)
        return (entry.name if entry is not None else name), options

    def schemes_of(self, transport: str) -> list[str]:
        """The URL schemes that mean transport ``transport``: its name and the ``schemes`` it declared
        (less any another transport took first), in that order."""
        return [scheme for scheme, entry in self._schemes.items() if entry.name == transport]

    def lifecycle_plugins(self) -> list[tuple[str, list[str]]]:
        """``(plugin name, [lifecycle hooks it implements])`` for every plugin that implements one."""
        found: dict[str, list[str]] = {}
        for hook in LIFECYCLE_HOOKS:
            for impl in getattr(self.plugin_manager.hook, hook).get_hookimpls():
                found.setdefault(impl.plugin_name, []).append(hook)
        return sorted(found.items())

    def shadowing(self, kind: Kind, name: str) -> str | None:
        """If the ``kind`` called ``name`` shadows another plugin's (a built-in, say), which one is in use and
        what it shadows, in words for an error or a listing; None when nothing is shadowed."""
        lost = self.shadowed.get((kind, name))
        entry = self._entries[kind].get(name)
        if not lost or entry is None:
            return None
        others = ", ".join(
            "sockwork's built-in" if e.plugin in BUILTIN_PLUGINS
            else f"plugin {e.plugin!r}'s ({self.distribution_of(e.plugin)})" for e in lost)
        return (f"in use: {kind} {name!r} from plugin {entry.plugin!r} ({self.distribution_of(entry.plugin)}), "
                f"shadowing {others}")

    def distribution_of(self, plugin: str) -> str:
        """``"distribution version"`` of a plugin, or ``"?"`` when it is not known."""
        return str(getattr(self.plugin_manager, "distributions", {}).get(plugin, "?"))

    def entries(self, kind: Kind) -> list[Entry]:
        """Every registered entry of ``kind``, sorted by name."""
        return sorted(self._entries[kind].values(), key=lambda e: e.name)

    # Each kind holds entries of its own class (checked when plugins register them).
    @overload
    def get(self, kind: Literal["transport"], name: str) -> TransportEntry: ...
    @overload
    def get(self, kind: Literal["dispatcher"], name: str) -> DispatcherEntry: ...
    @overload
    def get(self, kind: Literal["handler"], name: str) -> HandlerEntry: ...
    @overload
    def get(self, kind: Literal["framing"], name: str) -> FramingEntry: ...
    @overload
    def get(self, kind: Kind, name: str) -> Entry: ...

    def get(self, kind: Kind, name: str) -> Entry:
        """The entry called ``name``; fails listing the names that exist."""
        entry = self._entries[kind].get(name)
        if entry is None:
            raise UnknownPluginError(kind, name, self._entries[kind])
        if entry.unavailable_reason is not None:
            raise ConfigError(f"{kind} {name!r} is not available here: {entry.unavailable_reason}")
        return entry

    def entry_for_options(self, kind: Kind, options: object) -> Entry | None:
        """The entry whose options class ``options`` is an instance of, if any."""
        for entry in self._entries[kind].values():
            if type(options) is entry.options:
                return entry
        return None


def _checked_entries(kind: Kind, returned: object) -> list[Entry]:
    expected = _ENTRY_TYPES[kind]
    if returned is None:
        return []
    if not isinstance(returned, Iterable) or isinstance(returned, (str, bytes)):
        raise PluginError(f"{_HOOK_NAMES[kind]} must return a list of {expected.__name__}, got {returned!r}")
    entries = list(returned)
    for entry in entries:
        if not isinstance(entry, expected):
            raise PluginError(f"{_HOOK_NAMES[kind]} must return {expected.__name__} objects, got {entry!r}")
        if isinstance(entry, TransportEntry) and (
            not isinstance(entry.schemes, tuple)
            or not all(isinstance(x, str) and _SCHEME.match(x) for x in entry.schemes)
        ):
            raise PluginError(f"transport {entry.name!r}: schemes must be a tuple of lower-case URL schemes "
                              f"such as ('tls',), got {entry.schemes!r}")
        if isinstance(entry, DispatcherEntry) and entry.supervisor:
            fields = attrs.fields_dict(entry.options)
            if "inner" not in fields or "inner_options" not in fields:
                raise PluginError(f"supervisor {entry.name!r}: its options class {entry.options.__name__} "
                                  "needs the fields 'inner' and 'inner_options'")
    return entries


def with_shadowing(registry: Registry, kind: Kind, name: str, problem: str) -> str:
    """``problem``, followed by which component is in use when it shadows another of the same name."""
    shadowing = registry.shadowing(kind, name)
    return problem if shadowing is None else f"{problem} ({shadowing})"
