"""The ``unix`` (stream) and ``unix-dgram`` transports: Unix domain sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, final

import attrs

from sockwork.hookspecs import hookimpl
from sockwork.registry import TransportEntry
from sockwork.validators import off_is_none, positive_int

from ._socket import (
    DatagramRequests,
    StreamRequests,
    UnixAddress,
    check_mode,
    check_path,
    proxy_protocol_field,
    proxy_stages,
    to_path,
    trusted_proxies_field,
)

if TYPE_CHECKING:
    from sockwork.connection import ConnectionStage

__all__ = ["UnixDatagramOptions", "UnixDatagramTransport", "UnixOptions", "UnixStreamTransport"]

_REASON = None if hasattr(socket, "AF_UNIX") else "this platform has no Unix domain sockets"


@final
@attrs.frozen(kw_only=True)
class UnixOptions:
    """Options of the ``unix`` (stream) transport."""

    path: str = attrs.field(converter=to_path, validator=check_path)
    """Socket file to create (removed again on close); a leading NUL byte
    means a Linux abstract name, which leaves no file."""
    backlog: int = attrs.field(default=1024, validator=positive_int)
    """Connections the kernel may hold before they are accepted."""
    mode: int | None = attrs.field(default=None, converter=off_is_none, validator=check_mode)
    """Permission bits for the socket file (e.g. ``0o660``); None keeps the umask's."""
    proxy_protocol: str | None = proxy_protocol_field()
    """Expect a PROXY protocol header first (``"v1"``, ``"v2"``, ``"any"``; none: off).
    Anyone who may connect to the socket file may send one: restrict that with ``mode``."""
    trusted_proxies: tuple[str, ...] = trusted_proxies_field(unix=True)
    """Must stay empty: a Unix socket's peers have no address to check."""


@final
@attrs.frozen(kw_only=True)
class UnixDatagramOptions:
    """Options of the ``unix-dgram`` transport."""

    path: str = attrs.field(converter=to_path, validator=check_path)
    """Socket file to create (removed again on close)."""
    max_packet_size: int = attrs.field(default=65535, validator=positive_int)
    """Receive buffer per datagram."""
    mode: int | None = attrs.field(default=None, converter=off_is_none, validator=check_mode)
    """Permission bits for the socket file; None keeps the umask's."""


@final
class UnixStreamTransport(UnixAddress, StreamRequests):
    """Accepts Unix stream connections; a request is the connected socket.

    ``UnixStreamTransport(options, stages=[...])`` runs connection stages of your own on each
    connection, after the PROXY header if any (docs/plugins.md).
    """

    name = "unix"

    def __init__(self, options: UnixOptions, stages: Iterable[ConnectionStage] = ()) -> None:
        super().__init__(options)
        self.stages: tuple[ConnectionStage, ...] = (*proxy_stages(options, unix=True), *stages)

    def stop_new_connections(self) -> bool:
        """Before the listener closes: remove the socket file (a new ``connect()`` is refused), if it is ours."""
        if self.socket is None or self._bound_file is None:
            return False
        self.forget_bind()
        return True


@final
class UnixDatagramTransport(UnixAddress, DatagramRequests):
    """Receives Unix datagrams; a request is ``(payload, socket)``.

    A client must bind its own socket to a path to receive replies.
    """

    name = "unix-dgram"


@hookimpl(trylast=True)
def sockwork_add_transports() -> list[TransportEntry]:
    return [
        TransportEntry(
            "unix", UnixStreamTransport, UnixOptions,
            description="Unix domain stream socket; a request is a connected socket",
            unavailable_reason=_REASON,
            loopback_options=lambda directory: UnixOptions(path=str(directory / "server.sock")),
        ),
        TransportEntry(
            "unix-dgram", UnixDatagramTransport, UnixDatagramOptions,
            description="Unix domain datagram socket; a request is (payload, socket)",
            unavailable_reason=_REASON,
            loopback_options=lambda directory: UnixDatagramOptions(path=str(directory / "server.sock")),
        ),
    ]
