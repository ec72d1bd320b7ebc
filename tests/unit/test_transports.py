"""Transport specifics: address families, Unix socket files, socket options, accept errors."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from sockwork import BindError, Server, StageFailed
from sockwork.handlers import echo
from sockwork.testing import eventually, exchange, recv_until_eof, serving
from sockwork.transports import TCPOptions, TCPTransport, UDPOptions, UDPTransport

pytestmark = pytest.mark.timeout(10)


def ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("scheme", ["tcp", "udp"])
def test_ipv6_is_chosen_from_the_address(scheme: str) -> None:
    """An IPv6 host binds an AF_INET6 socket; the URL shows it in brackets."""
    with serving(Server(transport=f"{scheme}://[::1]:0", handler=echo)) as server:
        assert server.transport.family == socket.AF_INET6
        assert server.url.startswith(f"{scheme}://[::1]:")
        assert exchange(server, b"six") == b"six"


@pytest.mark.parametrize("scheme", ["tcp", "udp"])
def test_port_zero_reports_the_real_port(scheme: str) -> None:
    with Server(transport=f"{scheme}://127.0.0.1:0", handler=echo) as server:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        assert server.url == f"{scheme}://127.0.0.1:{port}"


def test_hostname_is_resolved() -> None:
    """A host name is resolved; the family follows what it resolves to."""
    with Server(transport="tcp://localhost:0", handler=echo) as server:
        assert server.address[0] in ("127.0.0.1", "::1")


def test_nodelay_is_on_for_accepted_connections_unless_turned_off() -> None:
    """TCP_NODELAY is set on accepted connections by default (option nodelay)."""
    def report(request, client_address, server) -> None:  # type: ignore[no-untyped-def]
        request.sendall(b"%d" % bool(request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    for nodelay, expected in ((True, b"1"), (False, b"0")):
        options = TCPOptions(address=("127.0.0.1", 0), nodelay=nodelay)
        with serving(Server(transport=options, handler=report)) as server:
            assert exchange(server, b"") == expected


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
@pytest.mark.parametrize("transport", [TCPTransport, UDPTransport])
def test_reuse_port_lets_two_servers_share_a_port(transport: type) -> None:
    options_class = TCPOptions if transport is TCPTransport else UDPOptions
    first = transport(options_class(address=("127.0.0.1", 0), reuse_port=True))
    first.open()
    try:
        second = transport(options_class(address=first.address, reuse_port=True))
        second.open()
        second.close()
        without = transport(options_class(address=first.address))
        with pytest.raises(BindError, match="Address already in use"):
            without.open()
    finally:
        first.close()


def test_backlog_option_is_validated() -> None:
    with pytest.raises(ValueError, match="'backlog' must be an int >= 1, got 0"):
        TCPOptions(address=("127.0.0.1", 0), backlog=0)


def test_accept_returns_none_for_an_aborted_connection_and_raises_for_emfile() -> None:
    """A peer's abort is no error; running out of descriptors is (the Server backs off)."""
    transport = TCPTransport(TCPOptions(address=("127.0.0.1", 0)))
    transport.open()
    try:
        assert transport.accept() is None  # nothing pending: no blocking
        # The transport accepts through the accept function it made for its listener (see accepter()).
        aborted = ConnectionAbortedError(errno.ECONNABORTED, "x")
        with mock.patch.object(transport, "_accept", side_effect=aborted):
            assert transport.accept() is None
        with mock.patch.object(transport, "_accept", side_effect=OSError(errno.EMFILE, "Too many open files")):
            with pytest.raises(OSError) as info:
                transport.accept()
            assert info.value.errno == errno.EMFILE
        assert transport.accept() is None
    finally:
        transport.close()


def test_the_accept_shim_is_in_use_and_accepts_as_socket_accept_does() -> None:
    """accepter() skips socket.accept()'s enum conversions through the private ``socket.socket._accept``:
    this fails loudly on a Python without it. What it returns is what accept() returns."""
    import ssl

    from sockwork.transports._socket import _RAW_ACCEPT, accepter

    assert _RAW_ACCEPT is not None, "socket.socket._accept is gone: accepter() falls back to socket.accept()"
    for timeout in (None, 2.0):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(timeout)
            accept = accepter(listener)
            assert accept != listener.accept
            with socket.create_connection(listener.getsockname()) as client:
                conn, address = accept()
                with conn:
                    assert address == client.getsockname()
                    assert (conn.family, conn.type, conn.proto) == (listener.family, listener.type, listener.proto)
                    assert type(conn) is socket.socket and conn.gettimeout() is None  # blocking, as accept() makes it
                    client.sendall(b"x")
                    assert conn.recv(1) == b"x"
    with socket.socket() as plain, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_socket(
            plain, server_side=True, do_handshake_on_connect=False) as wrapped:
        assert accepter(wrapped) == wrapped.accept  # a subclass keeps its own accept


# ---- Unix socket files ------------------------------------------------------

unix_only = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")


@unix_only
@pytest.mark.parametrize("scheme", ["unix", "unix-dgram"])
def test_socket_file_is_removed_on_close(scheme: str, short_tmp: Path) -> None:
    path = short_tmp / "s.sock"
    with Server(transport=f"{scheme}://{path}", handler=echo):
        assert stat.S_ISSOCK(path.stat().st_mode)
    assert not path.exists()


@unix_only
@pytest.mark.parametrize(("scheme", "kind"), [("unix", socket.SOCK_STREAM), ("unix-dgram", socket.SOCK_DGRAM)])
def test_stale_socket_file_of_a_dead_server_is_replaced(scheme: str, kind: int, short_tmp: Path) -> None:
    path = short_tmp / "s.sock"
    dead = socket.socket(socket.AF_UNIX, kind)
    dead.bind(str(path))
    dead.close()  # the file stays behind, as after a crash
    with serving(Server(transport=f"{scheme}://{path}", handler=echo)) as server:
        assert exchange(server, b"alive") == b"alive"


@unix_only
@pytest.mark.parametrize(("scheme", "kind"), [("unix", socket.SOCK_STREAM), ("unix-dgram", socket.SOCK_DGRAM)])
def test_a_live_server_socket_is_not_stolen(scheme: str, kind: int, short_tmp: Path) -> None:
    path = short_tmp / "s.sock"
    with socket.socket(socket.AF_UNIX, kind) as live:
        live.bind(str(path))
        if kind == socket.SOCK_STREAM:
            live.listen()
        with pytest.raises(BindError, match="another server is listening there"):
            Server(transport=f"{scheme}://{path}", handler=echo)
        assert path.exists()


@unix_only
def test_a_path_that_is_not_a_socket_is_refused(short_tmp: Path) -> None:
    path = short_tmp / "precious.txt"
    path.write_text("user data")
    with pytest.raises(BindError, match="exists and is not a socket"):
        Server(transport=f"unix://{path}", handler=echo)
    assert path.read_text() == "user data"


@unix_only
def test_close_leaves_a_socket_file_that_another_server_replaced(short_tmp: Path) -> None:
    """Only our own socket file is removed on close."""
    path = short_tmp / "s.sock"
    server = Server(transport=f"unix://{path}", handler=echo)
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        server.close()
        assert path.exists()


@unix_only
def test_mode_option_sets_socket_file_permissions(short_tmp: Path) -> None:
    path = short_tmp / "s.sock"
    with Server(transport="unix", transport_options={"path": str(path), "mode": 0o600}, handler=echo):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---- Inherited sockets (fd://, systemd://) ------------------------------------

def test_inherited_udp_socket_is_served_as_datagrams() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    with serving(Server(transport=f"fd://{sock.detach()}", handler=echo)) as server:
        assert server.transport.kind == "datagram"
        assert server.url.startswith("udp://127.0.0.1:")
        assert exchange(server, b"inherited") == b"inherited"


def test_inherited_stream_socket_must_be_listening() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(BindError, match="not listening; call listen"):
            Server(transport=f"fd://{sock.fileno()}", handler=echo)
    finally:
        sock.close()


def test_a_descriptor_that_is_not_a_socket_is_refused() -> None:
    from sockwork import ConfigError

    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ConfigError, match=f"descriptor {read_end} is not a usable socket"):
            Server(transport=f"fd://{read_end}", handler=echo)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_systemd_socket_activation_environment() -> None:
    """sd_listen_fds(3): LISTEN_PID must be us; sockets start at fd 3; names pick one."""
    from sockwork import ConfigError
    from sockwork.transports.fd import systemd_listen_fd

    me = str(os.getpid())
    env = {"LISTEN_PID": me, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"}
    assert systemd_listen_fd(None, env) == 3
    assert systemd_listen_fd("admin", env) == 4
    with pytest.raises(ConfigError, match="no socket named 'api'; passed: web, admin"):
        systemd_listen_fd("api", env)
    with pytest.raises(ConfigError, match="is not this process"):
        systemd_listen_fd(None, {**env, "LISTEN_PID": "1"})
    with pytest.raises(ConfigError, match="LISTEN_PID/LISTEN_FDS are not set"):
        systemd_listen_fd(None, {})


# ---- Bad addresses: a clear ConfigError before anything is bound (issue 14) -------

@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("udp://[::1", "write the IPv6 host in brackets, then :PORT"),
        ("tcp://[::1", "write the IPv6 host in brackets, then :PORT"),
        ("tcp://[::1]x:0", "write the IPv6 host in brackets, then :PORT"),
        ("tcp://[zz]:80", "'zz' in brackets is not an IPv6 address"),
        ("tcp://h]:80", "']' without '['"),
        ("fd://99999999999999999999", "too large for a descriptor number"),
        ("tcp://user:pw@host:1", "a user or password part (user@) has no meaning"),
        ("tcp://h:99999", "the port must be a number in 0..65535"),
        ("tcp://::1:80", "IPv6 hosts go in brackets"),
    ],
)
def test_a_malformed_url_is_a_one_line_config_error(url: str, message: str) -> None:
    """parse_transport_url, Server(...) and load_config all say what is wrong, in one line."""
    from sockwork import ConfigError, load_config
    from sockwork.urls import parse_transport_url

    with pytest.raises(ConfigError) as info:
        parse_transport_url(url)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Server(transport=url, handler=echo)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config({"transport": url})


@pytest.mark.parametrize(("host", "read_as"), [("0", "0.0.0.0"), ("00", "0.0.0.0"), ("127.1", "127.0.0.1"),
                                               ("010.0.0.1", "8.0.0.1")])
@pytest.mark.parametrize("scheme", ["tcp", "udp"])
def test_an_ipv4_shorthand_host_is_refused(scheme: str, host: str, read_as: str) -> None:
    """tcp://0:0 would listen on every interface; the host must be written out (docs/config.md)."""
    from sockwork import ConfigError

    with pytest.raises(ConfigError, match=f"host '{host}' is a shorthand the OS would read as {re.escape(read_as)}"):
        Server(transport=f"{scheme}://{host}:0", handler=echo)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "127.0.0.1", "localhost"])
def test_written_out_hosts_are_accepted(host: str) -> None:
    with Server(transport="tcp", transport_options={"address": (host, 0)}, handler=echo) as server:
        assert server.address[1] > 0


def test_a_descriptor_number_beyond_a_c_int_is_refused() -> None:
    from sockwork import ConfigError

    with pytest.raises(ConfigError, match=r"must be a file descriptor number \(an int in 0\.\.2147483647\)"):
        Server(transport="fd", transport_options={"fd": 2**63}, handler=echo)


@unix_only
@pytest.mark.parametrize("scheme", ["unix", "unix-dgram"])
def test_a_path_with_a_nul_byte_is_refused_before_binding(scheme: str, short_tmp: Path) -> None:
    """The kernel would bind 'a' for 'a\\0b'; we refuse before any socket file exists."""
    from sockwork import ConfigError

    before = set(os.listdir(short_tmp))
    with pytest.raises(ConfigError, match="must not contain a NUL byte"):
        Server(transport=scheme, transport_options={"path": str(short_tmp / "a\0b")}, handler=echo)
    assert set(os.listdir(short_tmp)) == before


@unix_only
def test_a_live_server_with_a_full_backlog_is_not_stolen_and_not_waited_for(unix_path_with_full_backlog: Path) -> None:
    """The stale-socket probe does not block in connect(): EAGAIN means someone listens."""
    with pytest.raises(BindError, match="another server is listening there"):
        Server(transport=f"unix://{unix_path_with_full_backlog}", handler=echo)
    assert unix_path_with_full_backlog.exists()


def test_the_legacy_module_keeps_the_standard_reading_of_a_shorthand_host() -> None:
    """sockwork.socketserver is a drop-in: ("0", port) binds every interface there, as in the standard module."""
    from sockwork import socketserver

    server = socketserver.TCPServer(("0", 0), socketserver.BaseRequestHandler)
    try:
        assert server.server_address[0] == "0.0.0.0"
    finally:
        server.server_close()


class _Greeting:
    """A stage of a plugin's own: the client must send b"HI" first (consumed)."""

    name = "greeting"
    timeout = 5.0

    def advance(self, conn: Any) -> str:
        head = conn.peek(2)
        if not b"HI".startswith(head):
            raise StageFailed(f"expected HI, got {head!r}")
        if len(head) < 2:
            return "read"
        conn.recv(2)
        return "done"


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_stages_of_your_own_on_tcp_and_unix(kind: str, short_tmp: Path) -> None:
    """TCPTransport(options, stages=[...]) and UnixStreamTransport(options, stages=[...]) run a plugin's stage
    (after the PROXY header, which stays first), then the handler sees the rest."""
    from sockwork.transports.tcp import TCPOptions, TCPTransport
    from sockwork.transports.unix import UnixOptions, UnixStreamTransport

    if kind == "tcp":
        transport: Any = TCPTransport(TCPOptions(address=("127.0.0.1", 0)), stages=[_Greeting()])
        proxied = TCPTransport(TCPOptions(address=("127.0.0.1", 0), proxy_protocol="v1",
                                          trusted_proxies=["127.0.0.1"]), stages=[_Greeting()])
    else:
        transport = UnixStreamTransport(UnixOptions(path=str(short_tmp / "s.sock")), stages=[_Greeting()])
        proxied = UnixStreamTransport(UnixOptions(path=str(short_tmp / "p.sock"), proxy_protocol="v1"),
                                      stages=[_Greeting()])
    assert [stage.name for stage in proxied.stages] == ["PROXY header", "greeting"]
    with serving(Server(transport=transport, handler="echo")) as server:
        family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
        with socket.socket(family) as sock:
            sock.settimeout(10)
            sock.connect(server.address)
            sock.sendall(b"HIhello")
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_eof(sock) == b"hello"
        with socket.socket(family) as sock:
            sock.settimeout(10)
            sock.connect(server.address)
            sock.sendall(b"NO")
            with contextlib.suppress(ConnectionResetError):  # closed with the refused bytes unread: a reset
                assert recv_until_eof(sock) == b""  # refused by the stage
        assert eventually(lambda: server.stats.refused == 1)
