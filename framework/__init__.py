"""Composable socket servers: a Server is a Transport, a Dispatcher and a handler factory.

Assemble one from parts, by name or from objects::

    from sockwork import Server
    with Server(transport="tcp", transport_options={"address": ("127.0.0.1", 8000)},
                dispatcher="pool", handler="echo") as server:
        server.serve_forever()

Plugins contribute parts through the hooks in :mod:`sockwork.hookspecs`.

PYTEST_DONT_REWRITE: pytest's marker (sockwork registers a pytest plugin, so pytest would
otherwise warn when sockwork was imported before it started; this module has no asserts).
"""

# Names are imported when first used (PEP 562), so that `import sockwork.socketserver`
# (the drop-in) loads only what a legacy server needs; type checkers see them all.
import typing

from ._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from ._parts import LifecycleHooks as LifecycleHooks
    from ._parts import Parts as Parts
    from ._server import Server as Server
    from .assembly import assemble as assemble
    from .assembly import assemble_config as assemble_config
    from .assembly import build_server as build_server
    from .assembly import load_config as load_config
    from .assembly import load_config_file as load_config_file
    from .config import ConfigErrors as ConfigErrors
    from .config import DispatcherConfig as DispatcherConfig
    from .config import FramingConfig as FramingConfig
    from .config import HandlerConfig as HandlerConfig
    from .config import ServerConfig as ServerConfig
    from .config import TransportConfig as TransportConfig
    from .connection import KEEP_ALIVE as KEEP_ALIVE
    from .connection import ClosedBeforeSpeaking as ClosedBeforeSpeaking
    from .connection import Connection as Connection
    from .connection import ConnectionStage as ConnectionStage
    from .connection import StageFailed as StageFailed
    from .errors import BindError as BindError
    from .errors import ConfigError as ConfigError
    from .errors import FailedElsewhere as FailedElsewhere
    from .errors import OptionError as OptionError
    from .errors import PartsRefused as PartsRefused
    from .errors import PluginError as PluginError
    from .errors import ServerError as ServerError
    from .errors import UnknownPluginError as UnknownPluginError
    from .handlers import datagram_handler as datagram_handler
    from .handlers import stream_handler as stream_handler
    from .hookspecs import hookimpl as hookimpl
    from .interfaces import ACCEPT_CAPACITY_ERRNOS as ACCEPT_CAPACITY_ERRNOS
    from .interfaces import Dispatcher as Dispatcher
    from .interfaces import DispatcherHost as DispatcherHost
    from .interfaces import HandlerFactory as HandlerFactory
    from .interfaces import ProcessDispatcherHost as ProcessDispatcherHost
    from .interfaces import ServerHost as ServerHost
    from .interfaces import Supervisor as Supervisor
    from .interfaces import SupervisorHost as SupervisorHost
    from .interfaces import Transport as Transport
    from .limits import Limits as Limits
    from .limits import Outcome as Outcome
    from .limits import ServerStats as ServerStats
    from .limits import WorkerExit as WorkerExit
    from .messages import message_handler as message_handler
    from .registry import DispatcherEntry as DispatcherEntry
    from .registry import FramingEntry as FramingEntry
    from .registry import HandlerEntry as HandlerEntry
    from .registry import HandlerSamples as HandlerSamples
    from .registry import NoOptions as NoOptions
    from .registry import PluginManager as PluginManager
    from .registry import Registry as Registry
    from .registry import StageInputs as StageInputs
    from .registry import TransportEntry as TransportEntry
    from .registry import make_plugin_manager as make_plugin_manager

__version__ = "0.1.0"

_EXPORTS = {
    "ACCEPT_CAPACITY_ERRNOS": ".interfaces",
    "LifecycleHooks": "._parts",
    "Parts": "._parts",
    "Server": "._server",
    "build_server": ".assembly",
    "assemble": ".assembly",
    "assemble_config": ".assembly",
    "ConfigErrors": ".config",
    "DispatcherConfig": ".config",
    "FramingConfig": ".config",
    "HandlerConfig": ".config",
    "ServerConfig": ".config",
    "TransportConfig": ".config",
    "load_config": ".assembly",
    "load_config_file": ".assembly",
    "BindError": ".errors",
    "ConfigError": ".errors",
    "FailedElsewhere": ".errors",
    "OptionError": ".errors",
    "PartsRefused": ".errors",
    "PluginError": ".errors",
    "ServerError": ".errors",
    "UnknownPluginError": ".errors",
    "KEEP_ALIVE": ".connection",
    "Connection": ".connection",
    "ConnectionStage": ".connection",
    "ClosedBeforeSpeaking": ".connection",
    "StageFailed": ".connection",
    "datagram_handler": ".handlers",
    "stream_handler": ".handlers",
    "hookimpl": ".hookspecs",
    "message_handler": ".messages",
    "Dispatcher": ".interfaces",
    "DispatcherHost": ".interfaces",
    "ProcessDispatcherHost": ".interfaces",
    "ServerHost": ".interfaces",
    "SupervisorHost": ".interfaces",
    "HandlerFactory": ".interfaces",
    "Supervisor": ".interfaces",
    "Transport": ".interfaces",
    "Limits": ".limits",
    "Outcome": ".limits",
    "ServerStats": ".limits",
    "WorkerExit": ".limits",
    "DispatcherEntry": ".registry",
    "FramingEntry": ".registry",
    "HandlerEntry": ".registry",
    "HandlerSamples": ".registry",
    "NoOptions": ".registry",
    "PluginManager": ".registry",
    "Registry": ".registry",
    "StageInputs": ".registry",
    "TransportEntry": ".registry",
    "make_plugin_manager": ".registry",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
