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
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._parts import LifecycleHooks, Parts
from .errors import ConfigError, OptionError, PluginError, UnknownPluginError
from .interfaces import capability
from .registry import DispatcherEntry, Entry, HandlerEntry, Kind, Registry, make_options, with_shadowing

if TYPE_CHECKING:
    from .config import ServerConfig

__all__ = [
    "Parts", "assemble", "assemble_config", "build_component", "check_handler", "inner_dispatcher_factory",
    "resolve_handler",
]

# What a built component must have; the Protocols in sockwork.interfaces document them.
REQUIRED_MEMBERS: dict[str, tuple[str, ...]] = {
    "transport": ("kind", "family", "address", "open", "fileno", "accept", "close_request", "release_request",
                  "after_fork", "close"),
    "dispatcher": ("concurrency", "start", "submit", "saturated", "drain", "close"),
}
ROLES = {"transport": "Transport", "dispatcher": "Dispatcher", "handler": "handler factory"}


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


def assemble_config(config: ServerConfig, registry: Registry | None = None, *, source: str = "config") -> Parts:
    """:func:`assemble` for a :class:`~sockwork.ServerConfig`; problems name their field path.

    Raises :class:`~sockwork.ConfigErrors` (a ConfigError) listing every part
    that failed, e.g. ``handler: handler 'lines' serves stream requests, but
    the udp transport delivers datagram requests``.
    """
    from .config import ConfigErrors  # config imports nothing of assembly; this keeps it so

    registry = registry if registry is not None else Registry()
    errors: list[tuple[str, str]] = []
    built: dict[str, Any] = {}
    handler_ref = config.handler.ref
    roles: tuple[tuple[Kind, str, Any, str], ...] = (
        ("transport", config.transport.name, config.transport.options, "transport"),
        ("dispatcher", config.dispatcher.name, config.dispatcher.options, "dispatcher"),
    )
    for kind, name, options, path in roles:
        try:
            built[kind], _ = _component(registry, kind, name, options or None)
        except PluginError as exc:
            raise PluginError(f"{path}: {exc}") from None
        except OptionError as exc:
            errors.append((f"{path}.options" + (f".{exc.field}" if exc.field else ""), exc.problem))
        except ConfigError as exc:
            errors.append((f"{path}.name" if isinstance(exc, UnknownPluginError) else path, _first_line(exc)))
    try:
        built["handler"] = _handler(registry, handler_ref, config.handler.options or None,
                                    _runs_async(built.get("dispatcher")))
    except PluginError as exc:
        raise PluginError(f"handler: {exc}") from None
    except ConfigError as exc:
        errors.append(("handler.ref", _first_line(exc)))
    if not errors:
        try:
            built["handler"] = check_handler(built["handler"], built["transport"], handler_ref,
                                             built["dispatcher"], config.dispatcher.name)
        except ConfigError as exc:
            errors.append(("handler", str(exc)))
    if errors:
        raise ConfigErrors(errors, source)
    return Parts(
        transport=built["transport"], dispatcher=built["dispatcher"], handler=built["handler"],
        transport_name=str(capability(built["transport"], "name") or config.transport.name),
        hooks=LifecycleHooks(registry.plugin_manager), registry=registry,
    )


# ---- One component --------------------------------------------------------------

def _component(
    registry: Registry, kind: Kind, spec: object, options: Mapping[str, Any] | object | None,
) -> tuple[Any, str]:
    """Turn a name (or URL), an options object or a ready component into a checked component."""
    if isinstance(spec, str):
        name = spec
        if kind == "transport" and ":" in spec:
            name, from_url = registry.parse_transport_url(spec)
            if options is not None and not isinstance(options, Mapping):
                raise ConfigError(f"transport_options given with the URL {spec!r} must be a mapping, got {options!r}")
            twice = sorted(set(from_url) & set(options or {}))
            if twice:
                raise ConfigError(f"{', '.join(twice)} given twice: in the URL {spec!r} and in transport_options")
            options = {**from_url, **(options or {})}
        entry = registry.get(kind, name)
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
        validated = make_options(kind, entry, options)
    except OptionError as exc:  # say which one is in use when a plugin's part shadows another (a built-in)
        problem = with_shadowing(registry, kind, entry.name, exc.problem)
        if problem == exc.problem:
            raise
        raise OptionError(kind, entry.name, exc.field, problem) from None
    make_inner = (inner_dispatcher_factory(registry, entry, validated)
                  if isinstance(entry, DispatcherEntry) and entry.supervisor else None)
    try:
        built = entry.factory(validated) if make_inner is None else entry.factory(validated, make_inner)
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


def inner_dispatcher_factory(registry: Registry, entry: Entry, options: Any) -> Callable[[], Any]:
    """For supervisor ``entry`` with ``options``: a function building the dispatcher each worker runs.

    The inner dispatcher is chosen by name from ``registry`` and its options are
    validated now, with its own options class, so a mistake fails at assembly.
    """
    inner = registry.get("dispatcher", options.inner)
    if isinstance(inner, DispatcherEntry) and inner.supervisor:
        raise ConfigError(f"dispatcher {entry.name!r} option 'inner': {inner.name!r} supervises processes "
                          "itself and cannot run inside a worker; choose e.g. pool, thread or inline")
    try:
        inner_options = make_options("dispatcher", inner, options.inner_options)
    except OptionError as exc:
        where = f" option {exc.field!r}" if exc.field else ""
        raise ConfigError(f"dispatcher {entry.name!r} option 'inner_options' ({inner.name}{where}): "
                          f"{exc.problem}") from None
    make_inner = functools.partial(build_component, registry, "dispatcher", inner, inner_options)
    make_inner().close()  # built once here, so that a broken one fails assembly, not every worker
    return make_inner


def _missing_members(kind: str, component: object) -> list[str]:
    """The members of ``kind``'s Protocol that ``component`` lacks (methods shown with ``()``)."""
    missing = []
    for name in REQUIRED_MEMBERS[kind]:
        data = name in ("kind", "family", "address", "concurrency")
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
        try:
            entry = registry.get("handler", spec)
        except UnknownPluginError as exc:
            if "." not in spec:
                raise
            raise ConfigError(_first_line(exc) + " To import a handler, write 'package.module:attribute'.") from None
        if runs_async and isinstance(entry, HandlerEntry) and entry.async_factory is not None:
            # The one place a name turns into its async form: same entry, same options.
            entry = attrs.evolve(entry, factory=entry.async_factory)
        handler: Callable[..., object] = build_component(registry, "handler", entry, options)
        return handler
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


def resolve_handler(ref: str | Callable[..., object]) -> Callable[..., object]:
    """A handler factory from ``"package.module:attribute"`` (or the object itself).

    Naming a handler imports its module: a config file is trusted input.
    """
    import importlib

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
                if getattr(stage, "replaces_socket", False):
                    raise ConfigError(
                        f"the {capability(transport, 'name') or 'given'} transport's {stage.name} keeps its "
                        f"session in the socket object, which dispatcher {dispatcher_name or 'asyncio'!r} "
                        "cannot take over (it serves the bare descriptor on its own event loop): serve it "
                        "with pool, thread, inline, fork or prefork"
                    )
    if is_async:
        from .aio import as_async_handler

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
