"""The ``tcp`` transport: TCP over IPv4 or IPv6, chosen from the host."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import attrs

from sockwork.hookspecs import hookimpl
from sockwork.registry import TransportEntry
from sockwork.validators import boolean, positive_int

from ._handshakes import drop_new_handshakes, half_open
from ._socket import (
    NODELAY_INHERITED,
    InternetAddress,
    StreamRequests,
    check_port_address,
    ipv6_only_field,
    proxy_protocol_field,
    proxy_stages,
    to_port_address,
    trusted_proxies_field,
)

if TYPE_CHECKING:
    from sockwork.connection import ConnectionStage

__all__ = [
    "TCPOptions",
    "TCPStreams",
    "TCPTransport",
    "address_field",
    "ipv6_only_field",
    "proxy_protocol_field",
    "trusted_proxies_field",
]


def address_field() -> Any:
    """An attrs field ``address``: ``(host, port)`` read as ``tcp`` reads it (a list from TOML becomes a
    tuple; an IPv4 shorthand such as ``"0"`` is refused; port 0 lets the OS pick)."""
    return attrs.field(converter=to_port_address, validator=check_port_address)


@final
@attrs.frozen(kw_only=True)
class TCPOptions:
    """Options of the ``tcp`` transport."""

    address: tuple[str, int] = address_field()
    """``(host, port)``. An IPv6 host (``"::1"``) selects IPv6; ``""`` (or ``"0.0.0.0"``)
    means every IPv4 interface; an IPv4 shorthand such as ``"0"`` or ``"127.1"`` is
    refused; port 0 lets the OS pick (read it back from ``server.address``)."""
    backlog: int = attrs.field(default=1024, validator=positive_int)
    """Connections the kernel may hold before they are accepted (capped by the
    kernel's somaxconn). The standard library uses 5, which drops connection
    attempts under even light load."""
    reuse_address: bool = attrs.field(default=True, validator=boolean)
    """SO_REUSEADDR: restart on a port with connections still in TIME_WAIT."""
    reuse_port: bool = attrs.field(default=False, validator=boolean)
    """SO_REUSEPORT: let several processes bind the same port (kernel load balancing)."""
    nodelay: bool = attrs.field(default=True, validator=boolean)
    """TCP_NODELAY on connections: small replies go out at once instead of
    waiting for Nagle's algorithm (which stalls request/response protocols)."""
    ipv6_only: bool = ipv6_only_field()
    """IPV6_V6ONLY for an IPv6 address: off (the default), ``[::]`` also accepts
    IPv4 clients, seen as ``::ffff:a.b.c.d`` (dual stack); on, IPv6 clients only."""
    proxy_protocol: str | None = proxy_protocol_field()
    """Expect a PROXY protocol header from a load balancer first: ``"v1"``,
    ``"v2"``, ``"any"`` (either), or none (off, the default)."""
    trusted_proxies: tuple[str, ...] = trusted_proxies_field()
    """Addresses or networks (``["10.0.0.0/8", "::1"]``) allowed to send a PROXY
    header; required with ``proxy_protocol``; connections from elsewhere are refused."""


class TCPStreams(InternetAddress, StreamRequests):
    """TCP connections with TCP_NODELAY and the PROXY header where asked: ``tcp``, and the base of ``tls``.

    A public building block for TCP transports of your own: subclass it (set ``name``, add
    stages, override ``close_request``; ``transports/tls.py`` does all three), or pass
    ``stages`` to :class:`TCPTransport`. ``options`` has the fields of :class:`TCPOptions`
    (an attrs class of your own may add more; :func:`address_field` and the other
    ``*_field`` helpers give the same validation). ``stages`` run on each connection after
    the PROXY header (when ``proxy_protocol`` asks for one), in order.
    """

    def __init__(self, options: Any, stages: Iterable[ConnectionStage] = ()) -> None:
        super().__init__(options)
        self.stages: tuple[ConnectionStage, ...] = (*proxy_stages(options), *stages)
        if options.nodelay and not NODELAY_INHERITED:
            self.accept = self._accept_nodelay  # type: ignore[method-assign]  # chosen once, per instance

    def configure(self, sock: socket.socket) -> None:
        super().configure(sock)
        if self.options.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def stop_new_connections(self) -> bool:
        """Before the listener closes: the kernel starts no new handshake (see ``_handshakes``)."""
        return self.socket is not None and drop_new_handshakes(self.socket)

    def handshakes_pending(self) -> int:
        """Handshakes under way on the listener's port, which complete into the accept queue."""
        return half_open(self.address[1])

    def _accept_nodelay(self) -> tuple[socket.socket, object] | None:
        accepted = StreamRequests.accept(self)
        if accepted is not None:
            accepted[0].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return accepted


@final
class TCPTransport(TCPStreams):
    """Accepts TCP connections; a request is the connected socket.

    ``TCPTransport(options, stages=[...])`` runs connection stages of your own on each
    connection (after the PROXY header, if any): a plugin's transport factory can be
    ``lambda options: TCPTransport(options, stages=[Greeting()])`` (docs/plugins.md).
    """

    name = "tcp"


def _loopback(directory: Path) -> TCPOptions:
    return TCPOptions(address=("127.0.0.1", 0))


@hookimpl(trylast=True)
def sockwork_add_transports() -> list[TransportEntry]:
    return [
        TransportEntry(
            "tcp", TCPTransport, TCPOptions,
            description="TCP over IPv4 or IPv6; a request is a connected socket",
            loopback_options=_loopback,
        )
    ]
