"""The ``udp`` transport: UDP over IPv4 or IPv6, chosen from the host."""

from __future__ import annotations

from pathlib import Path
from typing import final

import attrs

from sockwork.hookspecs import hookimpl
from sockwork.registry import TransportEntry
from sockwork.validators import boolean, positive_int

from ._socket import DatagramRequests, InternetAddress, check_port_address, ipv6_only_field, to_port_address

__all__ = ["UDPOptions", "UDPTransport"]


@final
@attrs.frozen(kw_only=True)
class UDPOptions:
    """Options of the ``udp`` transport."""

    address: tuple[str, int] = attrs.field(converter=to_port_address, validator=check_port_address)
    """``(host, port)``; an IPv6 host selects IPv6; port 0 lets the OS pick."""
    max_packet_size: int = attrs.field(default=65535, validator=positive_int)
    """Receive buffer per datagram. The default holds any UDP datagram."""
    reuse_address: bool = attrs.field(default=False, validator=boolean)
    """SO_REUSEADDR. Off by default: for UDP it lets another socket share the port."""
    reuse_port: bool = attrs.field(default=False, validator=boolean)
    """SO_REUSEPORT: several processes share the port, the kernel spreads datagrams."""
    ipv6_only: bool = ipv6_only_field()
    """IPV6_V6ONLY for an IPv6 address: off (the default), ``[::]`` also receives
    IPv4 datagrams (dual stack); on, IPv6 only."""


@final
class UDPTransport(InternetAddress, DatagramRequests):
    """Receives UDP datagrams; a request is ``(payload, socket)``."""

    name = "udp"


def _loopback(directory: Path) -> UDPOptions:
    return UDPOptions(address=("127.0.0.1", 0))


@hookimpl(trylast=True)
def sockwork_add_transports() -> list[TransportEntry]:
    return [
        TransportEntry(
            "udp", UDPTransport, UDPOptions,
            description="UDP over IPv4 or IPv6; a request is (payload, socket)",
            loopback_options=_loopback,
        )
    ]
