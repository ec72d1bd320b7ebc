"""The tls transport: options, the handshake stage (driven directly), reload, close_notify, dual stack."""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from stage_driver import StageTimedOut, accept_connection, run_stages

from sockwork import ConfigError, Server, StageFailed, stream_handler
from sockwork.connection import Connection
from sockwork.proxy_protocol import encode_v2
from sockwork.testing import TLSClient, eventually, serving
from sockwork.transports.tcp import TCPOptions, TCPTransport
from sockwork.transports.tls import TLSOptions, TLSTransport


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(ca: trustme.CA, sockwork_tmp: Path) -> dict[str, str]:
    """The server's certificate and key, a client CA file, and a client certificate from that CA."""
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(sockwork_tmp / "cert.pem"))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(sockwork_tmp / "cert.pem"), append=True)
    server.private_key_pem.write_to_path(str(sockwork_tmp / "key.pem"))
    ca.cert_pem.write_to_path(str(sockwork_tmp / "ca.pem"))
    client = ca.issue_cert("client@example.com")
    client.private_key_and_cert_chain_pem.write_to_path(str(sockwork_tmp / "client.pem"))
    return {name: str(sockwork_tmp / f"{name}.pem") for name in ("cert", "key", "ca", "client")}


@pytest.fixture
def open_transport() -> Iterator[Callable[..., TLSTransport]]:
    opened: list[TLSTransport] = []

    def make(**options: Any) -> TLSTransport:
        options.setdefault("address", ("127.0.0.1", 0))
        transport = TLSTransport(TLSOptions(**options))
        transport.open()
        transport.socket.setblocking(True)  # type: ignore[union-attr]  # the test accepts, blocking
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


def client_context(files: dict[str, str], certificate: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["ca"])
    if certificate is not None:
        context.load_cert_chain(certificate)
    return context


class Client(threading.Thread):
    """A TLS client in a thread: connects, handshakes, runs ``then(sock)``; keeps what went wrong."""

    def __init__(self, address: Any, context: ssl.SSLContext | None, then: Callable[[Any], Any] = lambda s: None,
                 before: bytes = b"") -> None:
        super().__init__()
        self.address, self.context, self.then, self.before = address, context, then, before
        self.error: BaseException | None = None
        self.result: Any = None

    def run(self) -> None:
        try:
            with socket.create_connection(self.address[:2], timeout=10) as raw:
                raw.sendall(self.before)
                if self.context is None:
                    self.result = self.then(raw)
                    return
                with self.context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as sock:
                    self.result = self.then(sock)
        except BaseException as exc:  # reported by the test
            self.error = exc


def handshake(transport: TLSTransport, client: Client) -> Connection:
    client.start()
    conn = accept_connection(transport.socket)
    try:
        run_stages(transport.stages, conn)
    except BaseException:
        conn.socket.close()
        client.join()
        raise
    return conn


def test_handshake_in_stages_then_the_handler_reads_and_writes(open_transport: Any, files: dict[str, str]) -> None:
    """The handshake runs non-blocking to "done"; then the SSLSocket serves; conn.info["tls"] says what was settled."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"], alpn=["h2", "http/1.1"])
    context = client_context(files)
    context.set_alpn_protocols(["http/1.1"])

    def talk(sock: ssl.SSLSocket) -> bytes:
        sock.sendall(b"ping")
        return sock.recv(100)

    client = Client(transport.address, context, talk)
    conn = handshake(transport, client)
    info = conn.info["tls"]
    assert (info.version, info.alpn_protocol, info.server_name) == ("TLSv1.3", "http/1.1", "localhost")
    assert info.cipher and info.peer_certificate is None
    assert isinstance(conn.socket, ssl.SSLSocket)
    # The details are in conn.info only: nothing stuck onto the socket, nothing kept by the transport.
    assert not [name for name in vars(conn.socket) if name.startswith("sockwork")]
    assert len(transport.server_names) == 0
    conn.socket.settimeout(10)  # what the loop does before a handler gets it
    assert conn.socket.recv(100) == b"ping"
    conn.socket.sendall(b"pong")
    transport.close_request(conn.socket)
    client.join()
    assert client.error is None and client.result == b"pong"


def test_a_plaintext_client_is_refused_with_what_it_sent(open_transport: Any, files: dict[str, str]) -> None:
    """Plain HTTP on the TLS port fails the stage (the client's fault) and the message shows its first bytes."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"])
    client = Client(transport.address, None, lambda s: s.recv(10), before=b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(StageFailed, match=r"not a TLS client: it sent b'GET / HT'"):
        handshake(transport, client)
    client.join()


def test_a_required_client_certificate(open_transport: Any, files: dict[str, str], sockwork_tmp: Path) -> None:
    """verify_client = "required": no certificate, or one from another CA, fails the stage; a good one is shown."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"], client_ca=files["ca"],
                               verify_client="required")
    nobody = Client(transport.address, client_context(files), lambda s: s.recv(10))
    with pytest.raises(StageFailed, match="sent no certificate"):
        handshake(transport, nobody)
    other = trustme.CA().issue_cert("mallory@example.com")
    other.private_key_and_cert_chain_pem.write_to_path(str(sockwork_tmp / "other.pem"))
    stranger = Client(transport.address, client_context(files, str(sockwork_tmp / "other.pem")), lambda s: s.recv(10))
    with pytest.raises(StageFailed, match="did not verify against client_ca"):
        handshake(transport, stranger)
    friend = Client(transport.address, client_context(files, files["client"]), lambda s: s.recv(10))
    conn = handshake(transport, friend)
    info = conn.info["tls"]
    assert ((("commonName", "client@example.com"),) in info.peer_certificate["subject"]
            or any("client@example.com" in str(v) for v in info.peer_certificate.get("subjectAltName", ())))
    assert info.peer_certificate_der
    transport.close_request(conn.socket)
    friend.join()


def test_a_stalled_handshake_asks_to_wait_and_holds_nothing(open_transport: Any, files: dict[str, str]) -> None:
    """A client that sends nothing leaves the stage waiting for "read": handshake_timeout (the loop) ends it."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"], handshake_timeout=0.2)
    with socket.create_connection(transport.address):
        conn = accept_connection(transport.socket)
        with conn.socket:
            assert transport.stages[-1].timeout == 0.2
            with pytest.raises(StageTimedOut):
                run_stages(transport.stages, conn)


def test_close_sends_close_notify_and_tolerates_clients_that_do_not(open_transport: Any, files: dict[str, str]) -> None:
    """The server's close sends close_notify (the client reads b"", no ragged EOF); a bare TCP close reads as EOF."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"])

    def read_to_end(sock: ssl.SSLSocket) -> bytes:
        return sock.recv(10)  # suppress_ragged_eofs=False: a missing close_notify would raise here

    client = Client(transport.address, client_context(files), read_to_end)
    conn = handshake(transport, client)
    transport.close_request(conn.socket)
    client.join()
    assert client.error is None and client.result == b""

    def drop(sock: ssl.SSLSocket) -> None:
        sock.sendall(b"bye")
        sock.recv(1) if False else None
        raw = socket.socket(fileno=sock.detach())  # the TCP socket alone: closing it sends no close_notify
        raw.close()

    client = Client(transport.address, client_context(files), drop)
    conn = handshake(transport, client)
    client.join()
    conn.socket.settimeout(10)
    try:
        assert conn.socket.recv(10) == b"bye"
        try:
            end = conn.socket.recv(10)  # an end of stream, not SSLEOFError
        except ConnectionResetError:
            # Also tolerated: the client's kernel resets instead of ending when it closes with
            # bytes unread (TLS 1.3 session tickets the client never read), depending on timing.
            end = b""
        assert end == b""
    finally:
        transport.close_request(conn.socket)


def test_reload_serves_the_new_certificate_and_keeps_open_connections(
    open_transport: Any, files: dict[str, str], sockwork_tmp: Path,
) -> None:
    """After reload(), new clients get the new certificate; a connection opened before keeps working."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"])
    before = Client(transport.address, client_context(files), lambda s: (s.sendall(b"old"), s.recv(10))[1])
    old_conn = handshake(transport, before)
    new_ca = trustme.CA()
    renewed = new_ca.issue_cert("127.0.0.1", "localhost")
    renewed.cert_chain_pems[0].write_to_path(files["cert"])
    renewed.private_key_pem.write_to_path(files["key"])
    transport.reload()
    new_ca.cert_pem.write_to_path(str(sockwork_tmp / "new-ca.pem"))
    after = Client(transport.address, ssl.create_default_context(cafile=str(sockwork_tmp / "new-ca.pem")),
                   lambda s: s.getpeercert()["issuer"])
    new_conn = handshake(transport, after)
    after.join()
    assert after.error is None
    transport.close_request(new_conn.socket)
    old_conn.socket.settimeout(10)
    assert old_conn.socket.recv(10) == b"old"
    old_conn.socket.sendall(b"still here")
    transport.close_request(old_conn.socket)
    before.join()
    assert before.error is None and before.result == b"still here"


def test_a_reload_that_fails_keeps_the_old_certificate(open_transport: Any, files: dict[str, str]) -> None:
    """A broken certificate file makes reload() raise; the context in use stays."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"])
    context = transport.context
    Path(files["key"]).write_text("not a key\n")
    with pytest.raises(ValueError, match="couldn't load the certificate"):
        transport.reload()
    assert transport.context is context


def test_proxy_header_then_handshake(open_transport: Any, files: dict[str, str]) -> None:
    """With proxy_protocol, the PROXY stage runs first and the handshake reads what follows it."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"], proxy_protocol="v2",
                               trusted_proxies=["127.0.0.1"])
    assert [stage.name for stage in transport.stages] == ["PROXY header", "TLS handshake"]
    client = Client(transport.address, client_context(files), lambda s: s.recv(10),
                    before=encode_v2(("203.0.113.7", 4433), ("192.0.2.1", 443)))
    conn = handshake(transport, client)
    assert conn.peer == ("203.0.113.7", 4433)
    assert conn.info["tls"].version == "TLSv1.3"
    transport.close_request(conn.socket)
    client.join()


def test_the_testing_client_half_closes_and_keeps_reading(open_transport: Any, files: dict[str, str]) -> None:
    """sockwork.testing.TLSClient: shutdown(SHUT_WR) sends close_notify; the server reads b"" and can still answer."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"])
    result: list[bytes] = []

    def run() -> None:
        with socket.create_connection(transport.address, timeout=10) as raw, \
                TLSClient(raw, client_context(files), "127.0.0.1") as client:
            client.sendall(b"all of it")
            client.shutdown(socket.SHUT_WR)
            result.append(client.recv(100, socket.MSG_WAITALL))

    thread = threading.Thread(target=run)
    thread.start()
    conn = accept_connection(transport.socket)
    run_stages(transport.stages, conn)
    conn.socket.settimeout(10)
    received = b""
    while chunk := conn.socket.recv(100):
        received += chunk
    conn.socket.sendall(received.upper())
    transport.close_request(conn.socket)
    thread.join()
    assert result == [b"ALL OF IT"]


# ---- Options ----------------------------------------------------------------------------------

def test_options_are_checked_before_anything_opens(files: dict[str, str], sockwork_tmp: Path, ca: trustme.CA) -> None:
    """Missing files, a key that is not the certificate's, verify_client without client_ca...: config errors."""
    def build(**options: Any) -> None:
        Server(transport="tls://127.0.0.1:0", transport_options=options, handler="echo").close()

    with pytest.raises(ConfigError, match=r"option 'certfile': file '/nonexistent\.pem' does not exist"):
        build(certfile="/nonexistent.pem")
    other_key = ca.issue_cert("elsewhere").private_key_pem
    other_key.write_to_path(str(sockwork_tmp / "other-key.pem"))
    with pytest.raises(ConfigError, match="couldn't load the certificate"):
        build(certfile=files["cert"], keyfile=str(sockwork_tmp / "other-key.pem"))
    with pytest.raises(ConfigError, match="option 'verify_client': 'required' needs 'client_ca'"):
        build(certfile=files["cert"], keyfile=files["key"], verify_client="required")
    with pytest.raises(ConfigError, match=r"option 'minimum_version': must be one of 'TLSv1\.2', 'TLSv1\.3'"):
        build(certfile=files["cert"], keyfile=files["key"], minimum_version="TLSv1.0")
    with pytest.raises(ConfigError, match="option 'alpn': must be a list of protocol names"):
        build(certfile=files["cert"], keyfile=files["key"], alpn=[""])


def test_an_encrypted_key_needs_its_password(sockwork_tmp: Path, ca: trustme.CA) -> None:
    """A key password is used to load the key; a wrong one is a config error that says so."""
    from cryptography.hazmat.primitives import serialization

    issued = ca.issue_cert("127.0.0.1")
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"s3cret"))
    (sockwork_tmp / "enc-key.pem").write_bytes(encrypted)
    issued.cert_chain_pems[0].write_to_path(str(sockwork_tmp / "c.pem"))
    good = TLSOptions(address=("127.0.0.1", 0), certfile=str(sockwork_tmp / "c.pem"),
                      keyfile=str(sockwork_tmp / "enc-key.pem"), password="s3cret")
    assert "s3cret" not in repr(good)
    with pytest.raises(ValueError, match=r"and the password right\)\?"):
        TLSOptions(address=("127.0.0.1", 0), certfile=str(sockwork_tmp / "c.pem"),
                   keyfile=str(sockwork_tmp / "enc-key.pem"), password="wrong")


def test_tls_url_with_an_ipv6_host(files: dict[str, str]) -> None:
    """tls://[::1]:0 is the tls transport on ::1, like tcp://."""
    server = Server(transport="tls://[::1]:0", transport_options={"certfile": files["cert"], "keyfile": files["key"]},
                    handler="address")
    try:
        assert server.transport.name == "tls"
        assert server.transport.options.address == ("::1", 0)
    finally:
        server.close()


# ---- Dual stack -----------------------------------------------------------------------------------

def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 on this machine")
def test_ipv6_wildcard_accepts_ipv4_unless_ipv6_only() -> None:
    """tcp://[::]:PORT accepts an IPv4 client (seen as ::ffff:127.0.0.1); ipv6_only = true refuses it."""
    transport = TCPTransport(TCPOptions(address=("::", 0)))
    transport.open()
    try:
        transport.socket.setblocking(True)  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", transport.address[1]), timeout=10):
            sock, peer = transport.socket.accept()  # type: ignore[union-attr]
            sock.close()
        assert peer[0] == "::ffff:127.0.0.1"
    finally:
        transport.close()
    only = TCPTransport(TCPOptions(address=("::", 0), ipv6_only=True))
    only.open()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", only.address[1]), timeout=10).close()
    finally:
        only.close()


def test_the_testing_client_does_not_wait_for_a_busy_server(open_transport: Any, files: dict[str, str]) -> None:
    """TLSClient connects and sends before the server has even accepted; the bytes arrive once it handshakes."""
    transport = open_transport(certfile=files["cert"], keyfile=files["key"])
    with socket.create_connection(transport.address, timeout=10) as raw:
        client = TLSClient(raw, client_context(files), "localhost")
        try:
            client.sendall(b"early")
            client.shutdown(socket.SHUT_WR)
            conn = accept_connection(transport.socket)  # only now does the server look at it
            run_stages(transport.stages, conn)
            conn.socket.settimeout(10)
            assert conn.socket.recv(100) == b"early"
            assert conn.socket.recv(100) == b""  # the close_notify sent after the early bytes
            conn.socket.sendall(b"late reply")
            transport.close_request(conn.socket)
            assert client.recv(100, socket.MSG_WAITALL) == b"late reply"
            assert client.version == "TLSv1.3"
        finally:
            client.close()


def test_a_client_that_leaves_mid_request_is_disconnected_not_failed(
        files: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """A TLS client that resets while its handler writes: one INFO line and `disconnected`, as over tcp."""
    read, leave = threading.Event(), threading.Event()

    @stream_handler
    def handle(conn: Connection) -> None:
        conn.read(3)
        read.set()
        leave.wait(10)
        for _ in range(1000):  # far more than the socket buffers hold: a write meets the reset
            conn.write(b"x" * 16384)

    server = Server(transport="tls://127.0.0.1:0", dispatcher="thread", handler=handle,
                    transport_options={"certfile": files["cert"], "keyfile": files["key"]})
    with caplog.at_level(logging.INFO, logger="sockwork"), serving(server):
        raw = socket.create_connection(server.address[:2], timeout=10)
        with client_context(files).wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"abc")
            assert read.wait(10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        leave.set()
        assert eventually(lambda: server.stats.active == 0)
    stats = server.stats
    assert (stats.disconnected, stats.failed) == (1, 0)
    gone = [r for r in caplog.records if "went away mid-request" in r.getMessage()]
    assert [r.levelno for r in gone] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_tls_transport_is_built_on_public_pieces_only() -> None:
    """transports/tls.py imports no private module of sockwork and no name outside a module's __all__
    (issue 22: a third party can write the same transport from the documented building blocks)."""
    import ast
    import importlib

    import sockwork.transports.tls as tls

    tree = ast.parse(Path(tls.__file__).read_text())
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: inside sockwork.transports
                module = ".".join(["sockwork", "transports"][: 3 - node.level] + ([module] if module else []))
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            module, names = "", []
            for alias in node.names:
                assert not alias.name.startswith("sockwork"), f"import {alias.name}: use 'from ... import'"
            continue
        else:
            continue
        if not module.startswith("sockwork"):
            continue
        assert not any(part.startswith("_") for part in module.split(".")), f"tls imports private {module}"
        public = importlib.import_module(module).__all__
        for name in names:
            assert name in public, f"tls imports {module}.{name}, which is not in its __all__"
            checked += 1
    assert checked >= 8  # the check saw the imports it is about


def test_tls_with_asyncio_is_refused_as_parts_that_do_not_go_together(files: dict[str, str]) -> None:
    """The refusal is a PartsRefused (a ConfigError), which the conformance kit skips, saying why."""
    from sockwork import PartsRefused

    with pytest.raises(PartsRefused, match="keeps its session in the socket object"):
        Server(transport="tls://127.0.0.1:0", dispatcher="asyncio", handler="echo",
               transport_options={"certfile": files["cert"], "keyfile": files["key"]})


@pytest.mark.parametrize("proxy", [False, True])
def test_a_health_check_that_closes_without_a_byte_is_counted_and_logged_at_debug(
        files: dict[str, str], caplog: pytest.LogCaptureFixture, proxy: bool) -> None:
    """A TCP health check (connect, close, not a byte) on a tls listener, with or without a PROXY header
    expected: counted disconnected, a DEBUG line, nothing at INFO (HAProxy checks every 2 s)."""
    options: dict[str, Any] = {"certfile": files["cert"], "keyfile": files["key"]}
    if proxy:
        options.update(proxy_protocol="v2", trusted_proxies=["127.0.0.1"])
    server = Server(transport="tls://127.0.0.1:0", dispatcher="pool", handler="echo", transport_options=options)
    with caplog.at_level(logging.DEBUG, logger="sockwork"), serving(server):
        for _ in range(3):
            socket.create_connection(server.address[:2], timeout=10).close()
        assert eventually(lambda: server.stats.disconnected == 3)
    checks = [r for r in caplog.records if "closed the connection before" in r.getMessage()]
    assert checks and {r.levelno for r in checks} == {logging.DEBUG}, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "went away" in r.getMessage()]


def test_tls_connections_leave_nothing_in_the_request_tables(files: dict[str, str]) -> None:
    """Review of issue 18: the stage that wraps the socket moves every table entry to the new socket;
    after 10 TLS connections ended, nothing of theirs is left (force() would count it "never started")."""
    from sockwork import Server
    from sockwork.testing import eventually, serving

    server = Server(transport="tls", transport_options={"address": ("127.0.0.1", 0), "certfile": files["cert"],
                                                        "keyfile": files["key"]}, dispatcher="pool", handler="echo")
    context = client_context(files)
    with serving(server):
        for i in range(10):
            with socket.create_connection(server.address[:2], timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"hi %d" % i)
                assert sock.recv(10) == b"hi %d" % i
        assert eventually(lambda: server.stats.completed == 10)
        assert not server.requests._unstarted and not server.requests.in_flight
