"""The built-in transports: tcp, tls, udp, unix (stream), unix-dgram and fd (inherited).

Each module is a sockwork plugin registering its transports through the
``sockwork_add_transports`` hook, like any third-party plugin.
"""

import typing

from sockwork._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from .fd import FDOptions as FDOptions
    from .tcp import TCPOptions as TCPOptions
    from .tcp import TCPTransport as TCPTransport
    from .tls import TLSInfo as TLSInfo
    from .tls import TLSOptions as TLSOptions
    from .tls import TLSTransport as TLSTransport
    from .udp import UDPOptions as UDPOptions
    from .udp import UDPTransport as UDPTransport
    from .unix import UnixDatagramOptions as UnixDatagramOptions
    from .unix import UnixDatagramTransport as UnixDatagramTransport
    from .unix import UnixOptions as UnixOptions
    from .unix import UnixStreamTransport as UnixStreamTransport

_EXPORTS = {
    "FDOptions": ".fd",
    "TCPOptions": ".tcp",
    "TCPTransport": ".tcp",
    "TLSInfo": ".tls",
    "TLSOptions": ".tls",
    "TLSTransport": ".tls",
    "UDPOptions": ".udp",
    "UDPTransport": ".udp",
    "UnixDatagramOptions": ".unix",
    "UnixDatagramTransport": ".unix",
    "UnixOptions": ".unix",
    "UnixStreamTransport": ".unix",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
