"""Assembly: names, options, objects and configs become built parts, in one step.

    parts = assemble(transport="tcp://127.0.0.1:0", dispatcher="pool", handler="echo")
    parts = assemble_config(load_config_file("server.toml"))
    server = Server(parts=parts)          # Server(transport=..., ...) calls assemble() itself

Rule 1: each part is resolved exactly once: one registry look-up, one options
object, one call of its factory. Nothing is opened: ``sockwork check`` runs
this same step, so what passes ``check``, starts (unless its address is taken).
Rule 2: what a factory returns is checked against its role's Protocol right
here; the error names the component, its plugin and the plugin's distribution.
Rule 3: a handler is checked against the transport (stream or datagram) and
against its call signature ``handler(request, client_address, server)``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._parts import LifecycleHooks, Parts
from ._server import Server
from ._upgrade import Handover
from .config import ConfigErrors, ServerConfig, TransportConfig, read_config_data, read_config_partially
from .errors import ConfigError, OptionError, PartsRefused, PluginError, UnknownPluginError
from .interfaces import capability
from .registry import DispatcherEntry, Entry, HandlerEntry, Kind, Registry, with_shadowing
from .validators import make_options, validate_options

__all__ = [
    "Parts", "assemble", "assemble_config", "build_component", "build_server", "check_handler",
    "inner_dispatcher_factory", "load_config", "load_config_file", "resolve_handler",
]

# What a built component must have; the Protocols in sockwork.interfaces document them.
REQUIRED_MEMBERS: dict[str, tuple[str, ...]] = {
    "transport": ("kind", "family", "address", "open", "fileno", "accept", "close_request", "release_request",
                  "after_fork", "close"),
    "dispatcher": ("concurrency", "start", "submit", "saturated", "drain", "close"),
    "framing": ("max_message", "split", "finish", "frame"),
}
ROLES = {"transport": "Transport", "dispatcher": "Dispatcher", "handler": "handler factory", "framing": "Framing"}
Errors = list[tuple[str, str]]


@attrs.frozen
class _Resolved:
    """One component resolved: its entry, its validated options, and a supervisor's inner dispatcher."""

    entry: Entry
    options: object
    inner: _Resolved | None = None


def assemble(
    transport: str | object,
    handler: str | Callable[..., object] = "echo",
    dispatcher: str | object = "thread",
    *,
    transport_options: Mapping[str, Any] | None = None,
    dispatcher_options: Mapping[str, Any] | None = None,
    handler_options: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> Parts:
    """Build a transport, a dispatcher and a handler and check them together.

    Each part may be a registered name (with a mapping of options), an options
    object of a registered component, or a ready component; a transport also
    a URL (see :mod:`sockwork.urls`), a handler also ``"package.module:attribute"``.
    Raises :class:`~sockwork.ConfigError` for a bad value (nothing is opened)
    and :class:`~sockwork.PluginError` for a plugin that broke its contract.
    """
    registry = registry if registry is not None else Registry()
    built_transport, transport_name = _component(registry, "transport", transport, transport_options)
    built_dispatcher, dispatcher_name = _component(registry, "dispatcher", dispatcher, dispatcher_options)
    built_handler = _handler(registry, handler, handler_options, _runs_async(built_dispatcher))
    built_handler = check_handler(built_handler, built_transport, handler, built_dispatcher, dispatcher_name)
    return Parts(
        transport=built_transport, dispatcher=built_dispatcher, handler=built_handler,
        transport_name=str(capability(built_transport, "name") or transport_name),
        hooks=LifecycleHooks(registry.plugin_manager), registry=registry,
    )


# ---- Configs: read (sockwork.config), then resolved here, then built -------------------

def load_config(data: Mapping[str, Any], registry: Registry | None = None, *, source: str = "config") -> ServerConfig:
    """Plain data (as TOML/JSON give it) into a ServerConfig whose names are resolved and whose
    options are options objects; raises :class:`~sockwork.ConfigErrors` listing every problem.

    :func:`sockwork.config.read_config` reads the data; this also looks the
    components up, checks their options and imports a handler reference,
    and reports the problems of both steps at once, each with its field path.
    """
    registry = registry if registry is not None else Registry()
    config, errors = read_config_partially(data)
    resolved = _resolve_config(config, registry, errors) if config is not None else None
    if errors or resolved is None:
        raise ConfigErrors(errors, source)
    return resolved[0]


def load_config_file(path: str | Path, registry: Registry | None = None) -> ServerConfig:
    """Read a ``.toml`` or ``.json`` file, then :func:`load_config`."""
    return load_config(read_config_data(path), registry, source=str(path))


def assemble_config(config: ServerConfig, registry: Registry | None = None, *, source: str = "config") -> Parts:
    """:func:`assemble` for a :class:`~sockwork.ServerConfig`; problems name their field path.

    Raises :class:`~sockwork.ConfigErrors` (a ConfigError) listing every part
    that failed, e.g. ``handler: handler 'lines' serves stream requests, but
    the udp transport delivers datagram requests``.
    """
    registry = registry if registry is not None else Registry()
    errors: Errors = []
    resolved = _resolve_config(config, registry, errors)
    if errors or resolved is None:
        raise ConfigErrors(errors, source)
    parts = resolved[1]
    built: dict[str, Any] = {}
    for kind in ("transport", "dispatcher"):
        try:
            built[kind] = _build(registry, kind, parts[kind])
        except PluginError as exc:
            raise PluginError(f"{kind}: {exc}") from None
        except ConfigError as exc:  # the component's own words about its environment
            errors.append((kind, _first_line(exc)))
    handler = parts["handler"]
    if isinstance(handler, _Resolved):
        try:
            handler = _build_handler(registry, handler, _runs_async(built.get("dispatcher")))
        except PluginError as exc:
            raise PluginError(f"handler: {exc}") from None
    if parts["framing"] is not None:
        try:
            handler = _with_framing(handler, _build(registry, "framing", parts["framing"]), config.handler.ref)
        except PluginError as exc:
            raise PluginError(f"framing: {exc}") from None
        except ConfigError as exc:
            errors.append(("framing", _first_line(exc)))
    if not errors:
        try:
            built["handler"] = check_handler(handler, built["transport"], config.handler.ref,
                                             built["dispatcher"], config.dispatcher.name)
        except ConfigError as exc:
            errors.append(("handler", str(exc)))
    if config.metrics is not None:
        from .metrics import require_prometheus  # metrics are optional: loaded when asked for

        try:
            require_prometheus()
        except ConfigError as exc:
            errors.append(("metrics", str(exc).removeprefix("metrics: ")))
    if errors:
        raise ConfigErrors(errors, source)
    return Parts(
        transport=built["transport"], dispatcher=built["dispatcher"], handler=built["handler"],
        transport_name=str(capability(built["transport"], "name") or parts["transport"].entry.name),
        hooks=LifecycleHooks(registry.plugin_manager), registry=registry,
    )


def _with_framing(handler: Any, framing: Any, ref: object) -> Any:
    """The message handler ``handler`` with ``framing`` instead of its own (a config chose it by name)."""
    from .messages import MessageHandler  # only for a config that names a framing

    if not isinstance(handler, MessageHandler):
        shown = ref if isinstance(ref, str) else getattr(ref, "__qualname__", ref)
        raise ConfigError(f"only a message handler (made with sockwork.message_handler) has a framing to choose; "
                          f"handler {shown!r} is not one")
    return MessageHandler(handler.fn, framing)


def build_server(config: ServerConfig, registry: Registry | None = None, *, handover: Handover | None = None) -> Server:
    """Assemble ``config`` (each part resolved once, everything checked), then bind a ready Server.

    With ``handover`` (an upgrade in place, ``sockwork._upgrade``), the transport and the side listeners
    take over the old master's sockets instead of binding.
    """
    parts = assemble_config(config, registry)
    logging.getLogger("sockwork").setLevel(config.log_level)
    if config.access_log is not None:
        logging.getLogger("sockwork.access").setLevel(logging.INFO)  # asked for: shown whatever log_level says
    agent_check: str | int | None = config.agent_check
    health: str | int | None = config.health
    metrics: str | int | None = config.metrics
    if handover is not None:
        adopt = capability(parts.transport, "adopt")
        if adopt is None:
            raise ConfigError(f"the {config.transport.name or 'configured'} transport cannot take over an "
                              "inherited listener; an upgrade in place needs one that can (tcp, tls, udp, unix)")
        adopt(handover.listener_fd)
        agent_check = handover.side_listener("agent check", config.agent_check)
        health = handover.side_listener("health", config.health)
        metrics = handover.side_listener("metrics", config.metrics)
    return Server(parts=parts, drain_timeout=config.drain_timeout, limits=config.limits,
                  plugin_options=config.plugins, access_log=config.access_log, lame_duck=config.lame_duck,
                  agent_check=agent_check, health=health, metrics=metrics)


def _resolve_config(
    config: ServerConfig, registry: Registry, errors: Errors,
) -> tuple[ServerConfig, dict[str, Any]] | None:
    """Each name looked up once, each option checked, a handler reference imported; problems to ``errors``.

    Returns the config with options objects, and the resolved parts
    (a handler given by reference or as an object resolves to itself).
    """
    before = len(errors)
    transport_config = config.transport
    name, options = transport_config.name, transport_config.options
    if transport_config.url is not None:
        try:
            name, options = _transport_url(registry, transport_config.url, options)
        except ConfigError as exc:
            errors.append(("transport", str(exc)))
    transport = _resolve(registry, "transport", name, options, "transport", errors) if name is not None else None
    dispatcher = _resolve(registry, "dispatcher", config.dispatcher.name, config.dispatcher.options, "dispatcher",
                          errors)
    ref = config.handler.ref
    handler: _Resolved | Callable[..., object] | None
    if isinstance(ref, str) and ":" not in ref:
        handler = _resolve(registry, "handler", ref, config.handler.options, "handler", errors, name_key="ref")
    else:
        try:
            handler = resolve_handler(ref)
        except ConfigError as exc:
            handler = None
            errors.append(("handler.ref", str(exc)))
        if config.handler.options:
            errors.append(("handler.options", "options only apply to a registered handler name"))
    framing = (_resolve(registry, "framing", config.framing.name, config.framing.options, "framing", errors)
               if config.framing is not None else None)
    _check_plugin_names(config.plugins, registry, errors)
    if len(errors) > before or transport is None or dispatcher is None or handler is None:
        return None
    resolved = attrs.evolve(
        config,
        transport=TransportConfig(name=transport.entry.name, options=transport.options),
        dispatcher=attrs.evolve(config.dispatcher, options=dispatcher.options),
        handler=attrs.evolve(config.handler, options=handler.options) if isinstance(handler, _Resolved)
        else config.handler,
        framing=None if framing is None or config.framing is None
        else attrs.evolve(config.framing, options=framing.options),
    )
    return resolved, {"transport": transport, "dispatcher": dispatcher, "handler": handler, "framing": framing}


def _resolve(
    registry: Registry, kind: Kind, name: str, options: object, path: str, errors: Errors, name_key: str = "name",
) -> _Resolved | None:
    try:
        entry = _lookup(registry, kind, name)
    except ConfigError as exc:
        errors.append((f"{path}.{name_key}", _first_line(exc)))
        return None
    validated, problems = validate_options(entry.options, options)
    errors.extend((f"{path}.options" + (f".{field}" if field else ""), with_shadowing(registry, kind, name, problem))
                  for field, problem in problems)
    if validated is None:
        return None
    if not (isinstance(entry, DispatcherEntry) and entry.supervisor):
        return _Resolved(entry, validated)
    inner_problems: list[tuple[str, str]] = []
    inner = _resolve_inner(registry, validated, inner_problems)
    errors.extend((f"{path}.options.{option}", problem) for option, problem in inner_problems)
    return _Resolved(entry, validated, inner) if inner is not None else None


def _resolve_inner(registry: Registry, options: Any, problems: list[tuple[str, str]] | None) -> _Resolved | None:
    """A supervisor's inner dispatcher (options ``inner``, ``inner_options``, checked at registration),
    validated with that dispatcher's own options class.

    Problems go to ``problems`` as ``(option path, message)``, all of them; with
    None, the first is raised, naming the supervisor's option and the inner dispatcher's.
    """
    try:
        inner = registry.get("dispatcher", options.inner)
        if inner.supervisor:
            raise ConfigError(f"option 'inner': {inner.name!r} supervises processes itself and cannot run inside "
                              "a worker; choose e.g. pool, thread or inline")
    except ConfigError as exc:
        if problems is None:
            raise
        problems.append(("inner", _first_line(exc).removeprefix("option 'inner': ")))
        return None
    validated, found = validate_options(inner.options, options.inner_options)
    if problems is not None:
        problems.extend(("inner_options" + (f".{field}" if field else ""), problem) for field, problem in found)
    elif found:
        field, problem = found[0]
        where = f" option {field!r}" if field else ""
        raise ConfigError(f"option 'inner_options' ({inner.name}{where}): {problem}")
    return _Resolved(inner, validated) if validated is not None else None


def _check_plugin_names(plugins: Mapping[str, Any], registry: Registry, errors: Errors) -> None:
    """``[plugins.NAME]`` tables: each NAME a registered plugin."""
    pm = registry.plugin_manager
    for name in plugins:
        if pm.get_plugin(name) is None:
            registered = sorted(plugin for plugin, _ in pm.list_name_plugin())
            errors.append((f"plugins.{name}", f"no plugin named {name!r}; registered: {', '.join(registered)}"))


# ---- One component --------------------------------------------------------------

def _lookup(registry: Registry, kind: Kind, name: str) -> Entry:
    """``registry.get``, with a hint for a handler name that looks like an import path."""
    try:
        return registry.get(kind, name)
    except UnknownPluginError as exc:
        if kind != "handler" or "." not in name:
            raise
        raise ConfigError(_first_line(exc) + " To import a handler, write 'package.module:attribute'.") from None


def _transport_url(
    registry: Registry, url: str, options: object, label: str = "the options",
) -> tuple[str, dict[str, Any]]:
    """A transport URL (by the scheme a transport declared, or its name) and more options, merged."""
    name, from_url = registry.parse_transport_url(url)
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"{label} given with the URL {url!r} must be a mapping, got {options!r}")
    twice = sorted(set(from_url) & set(options or {}))
    if twice:
        raise ConfigError(f"{', '.join(twice)} given twice: in the URL {url!r} and in {label}")
    return name, {**from_url, **(options or {})}


def _component(
    registry: Registry, kind: Kind, spec: object, options: Mapping[str, Any] | object | None,
) -> tuple[Any, str]:
    """Turn a name (or URL), an options object or a ready component into a checked component."""
    if isinstance(spec, str):
        name = spec
        if kind == "transport" and ":" in spec:
            name, options = _transport_url(registry, spec, options, "transport_options")
        entry = _lookup(registry, kind, name)
        return build_component(registry, kind, entry, options), entry.name
    owner = registry.entry_for_options(kind, spec)
    if owner is not None:
        if options is not None:
            raise ConfigError(f"{kind} options were given twice: as {spec!r} and as {options!r}")
        if owner.unavailable_reason is not None:
            registry.get(kind, owner.name)  # raises, saying why
        return build_component(registry, kind, owner, spec), owner.name
    if options is not None:
        raise ConfigError(f"{kind}_options only apply to a {kind} given by name, not to {spec!r}")
    missing = _missing_members(kind, spec)
    if missing:
        names = ", ".join(e.name for e in registry.entries(kind))
        raise ConfigError(
            f"{kind} must be a registered name ({names}), the options object of one, "
            f"or a {ROLES[kind]} object; got {spec!r}, which lacks {', '.join(missing)}"
        )
    return spec, kind


def build_component(registry: Registry, kind: Kind, entry: Entry, options: Mapping[str, Any] | object | None) -> Any:
    """Validate ``options`` for ``entry``, call its factory, check what it returned against the role."""
    try:
        validated = make_options(kind, entry.name, entry.options, options)
    except OptionError as exc:  # say which one is in use when a plugin's part shadows another (a built-in)
        problem = with_shadowing(registry, kind, entry.name, exc.problem)
        if problem == exc.problem:
            raise
        raise OptionError(kind, entry.name, exc.field, problem) from None
    inner = (_inner_or_raise(registry, entry, validated)
             if isinstance(entry, DispatcherEntry) and entry.supervisor else None)
    return _build(registry, kind, _Resolved(entry, validated, inner))


def inner_dispatcher_factory(registry: Registry, entry: Entry, options: Any) -> Callable[[], Any]:
    """For supervisor ``entry`` with ``options``: a function building the dispatcher each worker runs.

    The inner dispatcher is chosen by name from ``registry`` and its options are
    validated now, with its own options class, so a mistake fails at assembly.
    """
    return _make_inner(registry, _inner_or_raise(registry, entry, options))


def _inner_or_raise(registry: Registry, entry: Entry, options: Any) -> _Resolved:
    try:
        inner = _resolve_inner(registry, options, None)
    except UnknownPluginError:
        raise  # names the dispatchers that exist
    except ConfigError as exc:
        raise ConfigError(f"dispatcher {entry.name!r} {exc}") from None
    assert inner is not None  # problems raise above
    return inner


def _make_inner(registry: Registry, inner: _Resolved) -> Callable[[], Any]:
    make_inner = functools.partial(_build, registry, "dispatcher", inner)
    make_inner().close()  # built once here, so that a broken one fails assembly, not every worker
    return make_inner


def _build(registry: Registry, kind: Kind, resolved: _Resolved) -> Any:
    """Call a resolved component's factory; check what it returned against its role."""
    entry, options = resolved.entry, resolved.options
    make_inner = _make_inner(registry, resolved.inner) if resolved.inner is not None else None
    try:
        built = entry.factory(options) if make_inner is None else entry.factory(options, make_inner)
    except (ConfigError, PluginError):
        raise  # the component's own words about its options or environment
    except Exception as exc:
        raise _broken(registry, kind, entry, None, f"its factory raised {type(exc).__name__}: {exc}") from exc
    if kind == "handler":
        if not callable(built):
            raise _broken(registry, kind, entry, built, "it is not callable")
        return built
    missing = _missing_members(kind, built)
    if missing:
        raise _broken(registry, kind, entry, built, f"it lacks {', '.join(missing)}")
    if make_inner is not None and capability(built, "accepts_itself") is not True:
        raise _broken(registry, kind, entry, built, "a supervisor's dispatcher must declare accepts_itself = True")
    return built


def _missing_members(kind: str, component: object) -> list[str]:
    """The members of ``kind``'s Protocol that ``component`` lacks (methods shown with ``()``)."""
    missing = []
    for name in REQUIRED_MEMBERS[kind]:
        data = name in ("kind", "family", "address", "concurrency", "max_message")
        present = hasattr(type(component), name) or hasattr(component, name)
        if not present or (not data and not callable(getattr(component, name))):
            missing.append(name if data else f"{name}()")
    if kind == "transport" and "kind" not in missing and getattr(component, "kind", None) not in ("stream", "datagram"):
        missing.append("a kind of 'stream' or 'datagram'")
    return missing


def _broken(registry: Registry, kind: Kind, entry: Entry, built: object, why: str) -> PluginError:
    """A plugin broke its contract: name the component, the plugin and its distribution."""
    what = why if built is None and why.startswith("its factory raised") else (
        f"its factory returned {built!r}, which is not a {ROLES[kind]}: {why}")
    return PluginError(
        f"{kind} {entry.name!r} from plugin {entry.plugin!r} ({registry.distribution_of(entry.plugin)}) "
        f"is broken: {what}"
    )


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


# ---- Handlers -------------------------------------------------------------------------

def _runs_async(dispatcher: object) -> bool:
    return dispatcher is not None and bool(capability(dispatcher, "runs_async"))


def _handler(
    registry: Registry, spec: object, options: Mapping[str, Any] | object | None, runs_async: bool = False,
) -> Callable[..., object]:
    if isinstance(spec, str) and ":" not in spec:
        entry = _lookup(registry, "handler", spec)
        return _build_handler(registry, _Resolved(entry, make_options("handler", entry.name, entry.options, options)),
                              runs_async)
    if options is not None:
        raise ConfigError(f"handler_options only apply to a handler given by name, not to {spec!r}")
    if isinstance(spec, str):
        return resolve_handler(spec)
    if not callable(spec):
        names = ", ".join(e.name for e in registry.entries("handler"))
        raise ConfigError(
            f"handler must be callable as handler(request, client_address, server) "
            f"or a registered handler name ({names}); got {spec!r}"
        )
    return spec


def _build_handler(registry: Registry, resolved: _Resolved, runs_async: bool) -> Callable[..., object]:
    entry = resolved.entry
    if runs_async and isinstance(entry, HandlerEntry) and entry.async_factory is not None:
        # The one place a name turns into its async form: same entry, same options.
        resolved = attrs.evolve(resolved, entry=attrs.evolve(entry, factory=entry.async_factory))
    handler: Callable[..., object] = _build(registry, "handler", resolved)
    return handler


def resolve_handler(ref: str | Callable[..., object]) -> Callable[..., object]:
    """A handler factory from ``"package.module:attribute"`` (or the object itself).

    Naming a handler imports its module: a config file is trusted input.
    """
    if callable(ref):
        return ref
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ConfigError(f"must be a registered handler name or 'package.module:attribute', got {ref!r}")
    module_name, _, attribute = ref.partition(":")
    if not module_name or module_name.startswith(".") or not attribute or "" in attribute.split("."):
        raise ConfigError(f"handler {ref!r}: write 'package.module:attribute' with an absolute module name "
                          "and an attribute, e.g. 'myapp.handlers:serve'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for handler {ref!r}: {exc}") from None
    except Exception as exc:  # the module's own code failed (a missing file, a syntax error): still one line
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(f"cannot import module {module_name!r} for handler {ref!r}: {detail}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"handler {ref!r}: {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ConfigError(
            f"handler {ref!r} is {target!r}, which is not callable as handler(request, client_address, server)"
        )
    handler: Callable[..., object] = target
    return handler


def check_handler(
    handler: Callable[..., object], transport: object, shown: object = None, dispatcher: object = None,
    dispatcher_name: str = "",
) -> Callable[..., object]:
    """Refuse a handler made for the other kind of request, one that cannot take its arguments,
    or one made for the other kind of dispatcher (async vs blocking); return the handler to serve.

    A bare ``async def`` function comes back as a :class:`sockwork.aio.AsyncHandler` of the
    transport's kind.
    """
    label = shown if isinstance(shown, str) else getattr(handler, "__qualname__", handler)
    handles = capability(handler, "sockwork_kind")
    kind = getattr(transport, "kind", None)
    if handles is not None and handles != kind:
        raise ConfigError(
            f"handler {label!r} serves {handles} requests, "
            f"but the {capability(transport, 'name') or 'given'} transport delivers {kind} requests"
        )
    is_async = bool(capability(handler, "sockwork_async")) or inspect.iscoroutinefunction(handler)
    if dispatcher is not None:
        _check_async_pairing(label, is_async, dispatcher, dispatcher_name)
        if _runs_async(dispatcher):
            # An event loop takes the descriptor over; a session a stage built on the
            # socket object (TLS) would stay behind, and the client would get plaintext.
            for stage in capability(transport, "stages"):
                if capability(stage, "replaces_socket"):
                    raise PartsRefused(
                        f"the {capability(transport, 'name') or 'given'} transport's {stage.name} keeps its "
                        f"session in the socket object, which dispatcher {dispatcher_name or 'asyncio'!r} "
                        "cannot take over (it serves the bare descriptor on its own event loop): serve it "
                        "with pool, thread, inline, fork or prefork"
                    )
    if is_async:
        from .aio import as_async_handler  # start-up cost: asyncio is imported only for an async handler

        async_handler = as_async_handler(handler, kind)
        if async_handler is None:  # marked async by a plugin of its own: its dispatcher knows it
            return handler
        if async_handler.stream is not None:
            _check_signature(label, async_handler.stream, 2, "reader, writer")
        if async_handler.datagram is not None:
            sends = async_handler.datagram_sends
            _check_signature(label, async_handler.datagram, 3 if sends else 2,
                             "payload, client_address" + (", transport" if sends else ""))
        return async_handler
    _check_signature(label, handler, 3, "request, client_address, server")
    return handler


def _check_signature(label: object, fn: Callable[..., object], count: int, arguments: str) -> None:
    try:
        signature = inspect.signature(fn, follow_wrapped=False)  # a wrapper is what gets called
    except (TypeError, ValueError):
        return  # a builtin without a signature: it will tell at the first request
    try:
        signature.bind(*([None] * count))
    except TypeError:
        raise ConfigError(
            f"handler {label!r} cannot be called as handler({arguments}): its signature is {signature}"
        ) from None


def _check_async_pairing(label: object, is_async: bool, dispatcher: object, name: str) -> None:
    runs_async = _runs_async(dispatcher)
    shown = repr(name) if name and name != "dispatcher" else type(dispatcher).__name__
    if is_async and not runs_async:
        raise ConfigError(
            f"handler {label!r} is async (async def): serve it with dispatcher 'asyncio' "
            f"(or prefork with inner = 'asyncio'); dispatcher {shown} runs blocking handlers"
        )
    if runs_async and not is_async:
        raise ConfigError(
            f"handler {label!r} is a blocking handler, but dispatcher {shown} runs async handlers: "
            "write it as 'async def handle(reader, writer)' (see sockwork.aio), "
            "or serve it with a blocking dispatcher such as pool, thread or inline"
        )
