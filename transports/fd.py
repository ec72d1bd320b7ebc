"""The ``fd`` transport: a listening socket inherited from a supervisor.

``fd://3`` adopts descriptor 3; ``systemd://`` (or ``systemd://NAME``) adopts
the socket systemd passed through socket activation (``LISTEN_FDS``,
``LISTEN_PID`` and ``LISTEN_FDNAMES``). The socket may be TCP, UDP or Unix,
stream or datagram; the transport behaves like the built-in one of that kind.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, final

import attrs

from sockwork.errors import BindError, ConfigError
from sockwork.hookspecs import hookimpl
from sockwork.registry import TransportEntry
from sockwork.urls import MAX_FD
from sockwork.validators import positive_int

from ._socket import (
    DatagramRequests,
    SocketTransport,
    StreamRequests,
    proxy_protocol_field,
    proxy_stages,
    trusted_proxies_field,
)

__all__ = ["FDOptions", "make_fd_transport"]

SD_LISTEN_FDS_START = 3  # systemd passes sockets from descriptor 3 on


def _check_fd(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FD):
        raise ValueError(f"'{attribute.name}' must be a file descriptor number (an int in 0..{MAX_FD}), got {value!r}")


@final
@attrs.frozen(kw_only=True)
class FDOptions:
    """Options of the ``fd`` transport: give ``fd`` or ``systemd = true``."""

    fd: int | None = attrs.field(default=None, validator=_check_fd)
    """The descriptor of an already bound (and, for streams, listening) socket."""
    systemd: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Take the socket from systemd socket activation instead."""
    name: str | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str)))
    """With ``systemd``: the socket's ``FileDescriptorName=`` (default: the first socket)."""
    max_packet_size: int = attrs.field(default=65535, validator=positive_int)
    """Receive buffer per datagram, for a datagram socket."""
    proxy_protocol: str | None = proxy_protocol_field()
    """For a stream socket: expect a PROXY protocol header first (``"v1"``, ``"v2"``, ``"any"``; none: off)."""
    trusted_proxies: tuple[str, ...] = trusted_proxies_field(unix=None)
    """Addresses or networks allowed to send it: required for TCP, empty for a Unix socket."""

    def __attrs_post_init__(self) -> None:
        if (self.fd is None) == (not self.systemd):
            raise ValueError("give either 'fd' (a descriptor number) or 'systemd = true', not both or neither")
        if self.name is not None and not self.systemd:
            raise ValueError("'name' only applies with 'systemd = true'")


def systemd_listen_fd(name: str | None = None, environ: Any = os.environ) -> int:
    """The descriptor systemd passed for ``name`` (or the first), per sd_listen_fds(3)."""
    pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    if pid is None or count is None:
        raise ConfigError("systemd socket activation: LISTEN_PID/LISTEN_FDS are not set; "
                          "start the server from a systemd .socket unit (or give fd://N)")
    if not pid.isdigit() or int(pid) != os.getpid():
        raise ConfigError(f"systemd socket activation: LISTEN_PID={pid} is not this process ({os.getpid()})")
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"systemd socket activation: LISTEN_FDS={count!r} passes no socket")
    names: list[str] = environ.get("LISTEN_FDNAMES", "").split(":")
    if name is None:
        return SD_LISTEN_FDS_START
    if name not in names[: int(count)]:
        raise ConfigError(
            f"systemd socket activation: no socket named {name!r}; passed: {', '.join(names) or '(none)'}"
        )
    return SD_LISTEN_FDS_START + names.index(name)


class _Inherited(SocketTransport):
    """Adopts a socket bound by someone else; closing it closes the descriptor."""

    default_family = socket.AF_INET  # replaced by the descriptor's own in __init__

    def __init__(self, options: FDOptions, fd: int, family: int) -> None:
        super().__init__(options)
        self._fd = fd
        self.family = family
        unix = family == getattr(socket, "AF_UNIX", None)
        datagram = self.kind == "datagram"
        self.name = ("unix-dgram" if datagram else "unix") if unix else ("udp" if datagram else "tcp")
        if datagram and options.proxy_protocol is not None:
            raise ConfigError(f"proxy_protocol: descriptor {fd} is a datagram socket; the PROXY protocol is for "
                              "stream sockets")
        self.stages = () if datagram else proxy_stages(options, unix=unix)

    def describe(self) -> str:
        return f"inherited descriptor {self._fd}"

    def open(self) -> None:
        if self.socket is not None:
            raise RuntimeError("fd transport is already open")
        sock = socket.socket(fileno=self._fd)
        if self.kind == "stream" and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()  # not ours to close: the caller handed us the wrong descriptor
            raise BindError(0, f"{self.describe()} is a stream socket that is not listening; call listen() first")
        if self.kind == "stream":
            sock.setblocking(False)  # accepted connections stay blocking
        self.socket = sock
        self._address = sock.getsockname()


@final
class InheritedStreamTransport(_Inherited, StreamRequests):
    """An inherited listening stream socket (TCP or Unix)."""


@final
class InheritedDatagramTransport(_Inherited, DatagramRequests):
    """An inherited datagram socket (UDP or Unix)."""


def make_fd_transport(options: FDOptions) -> _Inherited:
    """Look at the descriptor now, so that its kind is known before it is adopted."""
    fd = systemd_listen_fd(options.name) if options.systemd else options.fd
    assert fd is not None
    try:
        probe = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"descriptor {fd} is not a usable socket: {exc.strerror or exc}") from None
    try:
        family, kind = probe.family, probe.type
    finally:
        probe.detach()
    if kind == socket.SOCK_STREAM:
        return InheritedStreamTransport(options, fd, family)
    if kind == socket.SOCK_DGRAM:
        return InheritedDatagramTransport(options, fd, family)
    raise ConfigError(f"descriptor {fd} is a socket of type {kind!r}; only stream and datagram sockets are served")


def _loopback(directory: Path) -> FDOptions:
    sock = socket.create_server(("127.0.0.1", 0))
    return FDOptions(fd=sock.detach())  # the transport owns it from here


@hookimpl(trylast=True)
def sockwork_add_transports() -> list[TransportEntry]:
    return [
        TransportEntry(
            "fd", make_fd_transport, FDOptions,
            description="a socket inherited from a supervisor: fd://N or systemd:// socket activation",
            loopback_options=_loopback,
            schemes=("systemd",),  # systemd://[NAME], read by sockwork.urls
        )
    ]
