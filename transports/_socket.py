"""What the built-in transports share: open/close, accepting, option validation.

A transport is two choices: how the address is bound (internet host/port or
a Unix path) and how requests arrive (stream: accepted connections;
datagram: packets). Each concrete transport combines one of each.

Rule 1: ``open()`` either leaves a bound, activated socket or no socket at all.
Rule 2: ``accept()`` never blocks and never raises for a peer's mistake.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import attrs

from sockwork._ratelimit import RateLimitedLog
from sockwork.errors import BindError, ConfigError
from sockwork.validators import boolean, off_is_none

logger = logging.getLogger("sockwork")

# accept() errors that concern one aborted connection, not the listener; Linux
# also reports pending network errors of the new connection here (accept(2)).
_PEER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED", "ECONNRESET", "EPROTO", "EPERM", "ENETDOWN", "ENOPROTOOPT",
        "EHOSTDOWN", "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ECONNREFUSED",
    )
    if hasattr(errno, name)
)

# Linux copies TCP_NODELAY from the listening socket to accepted ones; elsewhere
# it has to be set on every connection.
NODELAY_INHERITED = sys.platform.startswith("linux")


# ---- Option validators shared by the options classes -----------------------

def check_port_address(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        raise ValueError(f"'{attribute.name}' must be [host, port] with a str host and an int port, got {value!r}")
    if not 0 <= value[1] <= 65535:
        raise ValueError(f"'{attribute.name}' port must be in 0..65535 (0 lets the OS pick), got {value[1]!r}")
    read_as = _ipv4_shorthand(value[0])
    if read_as is not None:
        # The C resolver reads "0" as 0.0.0.0, "127.1" as 127.0.0.1 and "010.0.0.1" as 8.0.0.1
        # (inet_aton(3)); "0" silently listening on every interface is the surprise we refuse.
        where = "every interface" if read_as == "0.0.0.0" else "that address"
        raise ValueError(
            f"'{attribute.name}' host {value[0]!r} is a shorthand the OS would read as {read_as} ({where}); "
            f"write {read_as!r} if that is meant"
            + ("" if read_as != "0.0.0.0" else ", or '127.0.0.1' for this machine only")
        )


def _ipv4_shorthand(host: str) -> str | None:
    """The dotted quad an IPv4 shorthand such as ``"0"`` or ``"127.1"`` stands for; None for anything else."""
    if not host or host.strip(".0123456789abcdefxABCDEFX"):
        return None  # a host name or an IPv6 address: the resolver's business
    try:
        read_as = socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None
    return None if read_as == host else read_as


def to_port_address(value: object) -> object:
    """Accept a list (as TOML and JSON give it) where a (host, port) tuple is meant."""
    return tuple(value) if isinstance(value, list) else value


def to_path(value: object) -> object:
    return os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else value


def check_path(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{attribute.name}' must be a non-empty filesystem path, got {value!r}")
    if "\0" in value and not value.startswith("\0"):
        # The kernel would cut the name at the NUL and bind a socket file under the shorter name.
        raise ValueError(f"'{attribute.name}' must not contain a NUL byte (only a leading one, which means "
                         f"a Linux abstract name), got {value!r}")


def check_mode(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777):
        shown = oct(value) if isinstance(value, int) else repr(value)
        raise ValueError(f"'{attribute.name}' must be a permission mode such as 0o660 (or none), got {shown}")


# ---- Options every stream transport shares: the PROXY protocol, dual stack --------------

PROXY_HEADER_TIMEOUT = 10.0
"""Seconds a balancer gets to send its PROXY header (it sends it at once, before any client byte)."""

_PROXY_VERSIONS: dict[str | None, tuple[Literal["v1", "v2"], ...]] = {
    None: (), "v1": ("v1",), "v2": ("v2",), "any": ("v1", "v2"),
}


def _check_proxy_protocol(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _PROXY_VERSIONS:
        raise ValueError(f"'{attribute.name}' must be 'v1', 'v2', 'any' or none (off), got {value!r}")


def _to_networks(value: object) -> object:
    """A list (TOML, JSON) or a single string of addresses/networks, as a tuple of strings."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


_NEEDS_TRUSTED = ("must list the balancers allowed to send a PROXY header (addresses or networks, "
                  "e.g. ['10.0.0.0/8']) when proxy_protocol is set: any client could claim any address otherwise")
_UNIX_UNTRUSTED = ("cannot apply to a Unix socket, whose peers have no address: who may send a PROXY header "
                   "is who may connect; restrict that with 'mode'")


def _check_trusted_proxies(unix: bool | None) -> Any:
    """``unix`` None: the family is known only later (an inherited descriptor); the transport checks then."""
    def check(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"'{attribute.name}' must be a list of addresses or networks such as "
                             f"['10.0.0.0/8', '::1'], got {value!r}")
        if unix:
            if value:
                raise ValueError(f"'{attribute.name}' {_UNIX_UNTRUSTED}")
            return
        for item in value:
            try:
                ipaddress.ip_network(item)
            except ValueError as exc:
                raise ValueError(f"'{attribute.name}' entry {item!r} is not an IP address or network: {exc}") from None
        if unix is False and instance.proxy_protocol is not None and not value:
            raise ValueError(f"'{attribute.name}' {_NEEDS_TRUSTED}")
    return check


def proxy_protocol_field() -> Any:
    """``proxy_protocol``: "v1", "v2", "any" or None (off, the default)."""
    return attrs.field(default=None, converter=off_is_none, validator=_check_proxy_protocol)


def trusted_proxies_field(*, unix: bool | None = False) -> Any:
    """``trusted_proxies``: addresses/networks that may send a PROXY header (none for a Unix socket)."""
    return attrs.field(default=(), converter=_to_networks, validator=_check_trusted_proxies(unix))


def ipv6_only_field() -> Any:
    """``ipv6_only``: IPV6_V6ONLY; off by default, so ``[::]`` also accepts IPv4 clients (dual stack)."""
    return attrs.field(default=False, validator=boolean)


def proxy_stages(options: Any, *, unix: bool = False) -> tuple[Any, ...]:
    """The PROXY-header stage the options ask for (none when ``proxy_protocol`` is off)."""
    versions = _PROXY_VERSIONS[options.proxy_protocol]
    if not versions:
        return ()
    if unix and options.trusted_proxies:
        raise ConfigError(f"'trusted_proxies' {_UNIX_UNTRUSTED}")
    if not unix and not options.trusted_proxies:
        raise ConfigError(f"'trusted_proxies' {_NEEDS_TRUSTED}")
    from sockwork.proxy_protocol import ProxyHeaderStage, TrustedProxies  # only where it is used

    return (ProxyHeaderStage(versions, TrustedProxies(options.trusted_proxies, unix=unix), PROXY_HEADER_TIMEOUT),)


# ---- Accepting: one shim over the standard library's private API --------------

# socket.socket.accept() converts the listener's family and type to IntEnums on every call
# (``socket(self.family, self.type, ...)``): about 1.3 µs per connection, more than the rest of
# what accept() does in Python. accepter() makes the same steps with the three numbers read once.
# It calls the C method accept() itself calls, ``_accept`` (private, present from Python 3.0 to
# 3.13 at least); where a Python lacks it, accepter() returns ``listener.accept`` and nothing else
# changes. tests/unit/test_transports.py fails loudly if that fallback is in use.
_RAW_ACCEPT: Callable[[socket.socket], tuple[int, Any]] | None = getattr(socket.socket, "_accept", None)


def accepter(listener: socket.socket) -> Callable[[], tuple[socket.socket, Any]]:
    """``listener.accept``, or an equivalent that skips its enum conversions (see above).

    Only for a plain ``socket.socket``: a subclass (``ssl.SSLSocket`` wraps what it accepts) keeps
    its own ``accept``.
    """
    raw = _RAW_ACCEPT
    if raw is None or type(listener) is not socket.socket:
        return listener.accept
    family, kind, proto = int(listener.family), int(listener.type), listener.proto
    new, default_timeout, timeout = socket.socket, socket.getdefaulttimeout, listener.gettimeout

    def accept() -> tuple[socket.socket, Any]:
        fd, address = raw(listener)
        sock = new(family, kind, proto, fileno=fd)
        if default_timeout() is None and timeout():  # as accept() does (CPython issue #7995)
            sock.setblocking(True)
        return sock, address

    return accept


# ---- The base ----------------------------------------------------------------

class SocketTransport:
    """Binds one socket; subclasses say how to resolve and how to accept."""

    name: str  # a class constant, but an adopted descriptor (fd://) learns it per instance
    kind: ClassVar[Literal["stream", "datagram"]]
    socket_type: ClassVar[int]

    def __init__(self, options: Any) -> None:
        self.options = options
        self.family: int = self.default_family
        self.socket: socket.socket | None = None
        self._address: Any = None

    def __repr__(self) -> str:
        state = repr(self._address) if self.socket is not None else "closed"
        return f"<{type(self).__name__} {state}>"

    @property
    def address(self) -> Any:
        if self._address is None:
            raise RuntimeError(f"{self.name} transport is not open")
        return self._address

    def fileno(self) -> int:
        if self.socket is None:
            raise RuntimeError(f"{self.name} transport is not open")
        return self.socket.fileno()

    _adopt_fd: int | None = None

    def adopt(self, fd: int) -> None:
        """Make ``open()`` take over ``fd`` instead of binding: a bound (for streams, listening) socket of the
        configured address, inherited from the server this process replaces (an upgrade in place)."""
        self._adopt_fd = fd

    def _take_over(self, fd: int) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise BindError(exc.errno, f"inherited descriptor {fd} is not a usable socket: "
                                       f"{exc.strerror or exc}") from None
        family, wanted = self.resolve()
        problem = None
        if sock.type != self.socket_type or sock.family != family:
            problem = f"it is a {sock.family.name} {sock.type.name} socket, not the {self.name} transport's"
        elif not _same_address(sock.getsockname(), wanted):
            problem = f"it is bound to {sock.getsockname()!r}, the config asks for {self.describe()}"
        if problem is not None:
            sock.detach()  # not ours: the old server's
            raise BindError(0, f"cannot take over the inherited listener (descriptor {fd}): {problem}; an upgrade "
                               "keeps the listening socket, so a changed address takes a restart")
        if self.kind == "stream":
            sock.setblocking(False)  # accepted connections stay blocking
        self.family = family
        self.socket = sock
        self._address = sock.getsockname()
        self.took_over(sock)

    def took_over(self, sock: socket.socket) -> None:
        """After ``open()`` took over an inherited socket: take on what binding would have left (a socket file)."""

    def open(self) -> None:
        if self.socket is not None:
            raise RuntimeError(f"{self.name} transport is already open")
        if self._adopt_fd is not None:
            fd, self._adopt_fd = self._adopt_fd, None
            self._take_over(fd)
            return
        family, bind_address = self.resolve()
        sock = socket.socket(family, self.socket_type)
        try:
            self.configure(sock)
            self.bind(sock, bind_address)
            self.activate(sock)
        except BindError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            self.forget_bind()
            raise BindError(
                exc.errno, f"couldn't bind {self.name} transport to {self.describe()}: {exc.strerror or exc}"
            ) from exc
        self.family = family
        self.socket = sock
        self._address = sock.getsockname()

    def close(self) -> None:
        sock, self.socket = self.socket, None
        if sock is not None:
            sock.close()
            self.forget_bind()

    # Overridden by the address and request mix-ins below.
    default_family: ClassVar[int]

    def resolve(self) -> tuple[int, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def configure(self, sock: socket.socket) -> None:
        pass

    def bind(self, sock: socket.socket, address: Any) -> None:
        sock.bind(address)

    def activate(self, sock: socket.socket) -> None:
        pass

    def forget_bind(self) -> None:
        """Undo what binding left outside the socket (a Unix socket file)."""


# ---- How requests arrive -----------------------------------------------------

class StreamRequests(SocketTransport):
    """A request is an accepted connection; ending it shuts it down and closes it."""

    kind = "stream"
    socket_type = socket.SOCK_STREAM

    def activate(self, sock: socket.socket) -> None:
        sock.listen(self.options.backlog)
        sock.setblocking(False)  # accepted connections stay blocking

    _listener: socket.socket | None = None  # the socket _accept was made for

    def accept(self) -> tuple[socket.socket, Any] | None:
        if self.socket is not self._listener:
            self._listener, self._accept = self.socket, accepter(self.socket)  # type: ignore[arg-type]  # the loop accepts only while open
        try:
            return self._accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in _PEER_ERRNOS:
                return None
            raise

    def close_request(self, request: socket.socket) -> None:
        try:  # noqa: SIM105 -- per request: cheaper than contextlib.suppress
            request.shutdown(socket.SHUT_WR)  # send FIN now, whoever else holds the fd
        except OSError:
            pass  # the peer is gone already; closing is all that is left
        request.close()

    def release_request(self, request: socket.socket) -> None:
        request.close()  # without shutdown: the connection lives on in the other process

    def after_fork(self) -> None:
        if self.socket is not None:
            # Only close our descriptor: the parent still listens on the same socket.
            self.socket.close()
            self.socket = None


class DatagramRequests(SocketTransport):
    """A request is ``(payload, socket)``; there is nothing to end afterwards.

    The socket stays blocking so that replies (``sendto``) never fail with
    EAGAIN; receiving uses MSG_DONTWAIT so the accept loop never blocks.
    A datagram larger than ``max_packet_size`` is dropped, counted in
    ``oversized`` and logged (at most every few seconds) — never handed to
    the handler truncated.
    """

    kind = "datagram"
    socket_type = socket.SOCK_DGRAM
    oversized = 0

    def accept(self) -> tuple[tuple[bytes, socket.socket], Any] | None:
        sock = cast(socket.socket, self.socket)  # the loop accepts only while the transport is open
        size = self.options.max_packet_size
        try:
            data, _, flags, client_address = sock.recvmsg(size, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in _PEER_ERRNOS:  # an ICMP error about an earlier reply
                return None
            raise
        if flags & socket.MSG_TRUNC:
            self.oversized += 1
            if not hasattr(self, "_log_oversized"):
                self._log_oversized = RateLimitedLog(logger, 5.0)
            self._log_oversized(logging.WARNING, "dropped a datagram from %s: larger than max_packet_size=%d",
                                client_address, size)
            return None
        return (data, sock), client_address

    def close_request(self, request: tuple[bytes, socket.socket]) -> None:
        pass

    def release_request(self, request: tuple[bytes, socket.socket]) -> None:
        pass

    def after_fork(self) -> None:
        pass  # the child answers on this very socket


def _same_address(bound: Any, wanted: Any) -> bool:
    """Whether an inherited socket's address is the configured one (port 0 and wildcard hosts match any)."""
    if not isinstance(bound, tuple):
        return bool(bound == wanted)
    host, port = wanted[0], wanted[1]
    if port not in (0, bound[1]):
        return False
    try:
        return host in ("", "0.0.0.0", "::") or ipaddress.ip_address(host) == ipaddress.ip_address(bound[0])
    except ValueError:
        return True  # a host name: whatever it resolved to when the old server bound it


# ---- How the address is bound ------------------------------------------------

class InternetAddress(SocketTransport):
    """``(host, port)``: IPv4 or IPv6, chosen from the host."""

    default_family = socket.AF_INET

    def describe(self) -> str:
        host, port = self.options.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def resolve(self) -> tuple[int, Any]:
        host, port = self.options.address
        if host == "":
            return socket.AF_INET, ("", port)
        try:
            literal = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            literal = None
        if literal is not None:
            return (socket.AF_INET6 if literal.version == 6 else socket.AF_INET), (host, port)
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, self.socket_type, 0, socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise BindError(
                exc.errno, f"couldn't resolve host {host!r} for the {self.name} transport: {exc.strerror}"
            ) from exc
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr

    def configure(self, sock: socket.socket) -> None:
        if sock.family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
            # Set either way: the system default (Linux: net.ipv6.bindv6only) must not decide.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(self.options.ipv6_only))
        if self.options.reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.options.reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise BindError(errno.ENOPROTOOPT, "reuse_port: SO_REUSEPORT is not supported on this platform")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


class UnixAddress(SocketTransport):
    """A filesystem path (or, on Linux, an abstract name starting with NUL).

    A socket file left behind by a server that died is replaced; a path where
    a server still listens, or that is not a socket, is refused. ``close()``
    removes the socket file, unless another server has replaced it since.
    """

    default_family = socket.AF_UNIX
    _bound_file: tuple[int, int] | None = None

    def describe(self) -> str:
        return repr(self.options.path)

    def resolve(self) -> tuple[int, Any]:
        return socket.AF_UNIX, self.options.path

    def bind(self, sock: socket.socket, path: str) -> None:
        abstract = path.startswith("\0")
        try:
            sock.bind(path)
        except OSError as exc:
            if abstract or exc.errno != errno.EADDRINUSE or not self._remove_stale(path):
                raise
            sock.bind(path)
        if not abstract:
            info = os.stat(path)
            self._bound_file = (info.st_dev, info.st_ino)  # before anything else can fail
            if self.options.mode is not None:
                os.chmod(path, self.options.mode)

    def _remove_stale(self, path: str) -> bool:
        """True if ``path`` was a dead server's socket file and is gone now."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return True
        if not stat.S_ISSOCK(info.st_mode):
            raise BindError(errno.EADDRINUSE, f"couldn't bind {self.name} transport to {path!r}: "
                            "the path exists and is not a socket; remove it or choose another path")
        probe = socket.socket(socket.AF_UNIX, self.socket_type)
        probe.setblocking(False)  # a live server with a full backlog must not keep us waiting
        try:
            probe.connect(path)
        except BlockingIOError:
            pass  # EAGAIN: the backlog is full, so someone is listening
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens: a dead server's leftover
            return True
        except FileNotFoundError:
            return True
        finally:
            probe.close()
        raise BindError(errno.EADDRINUSE, f"couldn't bind {self.name} transport to {path!r}: "
                        "another server is listening there")

    def took_over(self, sock: socket.socket) -> None:
        path = self.options.path
        if not path.startswith("\0"):
            info = os.stat(path)
            self._bound_file = (info.st_dev, info.st_ino)  # ours now: removed when this server stops for good

    def forget_bind(self) -> None:
        bound, self._bound_file = self._bound_file, None
        if bound is None:
            return
        try:
            info = os.stat(self.options.path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == bound:
            os.unlink(self.options.path)
