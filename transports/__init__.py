"""The built-in transports: tcp, udp, unix (stream), unix-dgram and fd (inherited).

Each module is a sockwork plugin registering its transports through the
``sockwork_add_transports`` hook, like any third-party plugin.
"""

from .fd import FDOptions
from .tcp import TCPOptions, TCPTransport
from .udp import UDPOptions, UDPTransport
from .unix import UnixDatagramOptions, UnixDatagramTransport, UnixOptions, UnixStreamTransport

__all__ = [
    "FDOptions",
    "TCPOptions",
    "TCPTransport",
    "UDPOptions",
    "UDPTransport",
    "UnixDatagramOptions",
    "UnixDatagramTransport",
    "UnixOptions",
    "UnixStreamTransport",
]
