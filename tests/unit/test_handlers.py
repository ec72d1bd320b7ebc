"""Function handlers and the Connection they receive."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sockwork import ConfigError, Connection, Server, datagram_handler, stream_handler
from sockwork.testing import client, eventually, exchange, serving

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    server_side, peer = socket.socketpair()
    yield Connection(server_side, "peer"), peer
    server_side.close()
    peer.close()


def test_readline_read_and_iteration(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    peer.sendall(b"first\nsecond\nrest of it")
    peer.shutdown(socket.SHUT_WR)
    assert conn.readline() == b"first\n"
    assert conn.read(3) == b"sec"
    assert list(conn) == [b"ond\n", b"rest of it"]
    assert conn.read() == b"" and conn.readline() == b""


def test_readline_limit_bounds_the_buffer(pair: tuple[Connection, socket.socket]) -> None:
    """A line longer than the limit comes back in pieces of the limit."""
    conn, peer = pair
    peer.sendall(b"x" * 10 + b"\n")
    assert conn.readline(limit=4) == b"xxxx"
    assert conn.readline(limit=4) == b"xxxx"
    assert conn.readline(limit=4) == b"xx\n"


def test_recv_returns_buffered_bytes_first(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    peer.sendall(b"line\ntail")
    assert conn.readline() == b"line\n"
    assert conn.recv(100) == b"tail"
    conn.write(b"reply")
    assert peer.recv(100) == b"reply"


def test_stream_function_serves_a_tcp_server() -> None:
    @stream_handler
    def shout(conn: Connection) -> None:
        for line in conn:
            conn.write(line.upper())

    assert shout.__name__ == "shout"
    with serving(Server(transport="tcp://127.0.0.1:0", handler=shout)) as server:
        assert exchange(server, b"hello\nworld\n") == b"HELLO\nWORLD\n"


def test_datagram_function_replies_or_stays_silent() -> None:
    @datagram_handler
    def answer(payload: bytes, client_address: object) -> bytes | None:
        return None if payload == b"quiet" else payload[::-1]

    with serving(Server(transport="udp://127.0.0.1:0", handler=answer)) as server:
        with client(server, timeout=0.2) as sock:
            sock.send(b"quiet")
            with pytest.raises(TimeoutError):
                sock.recv(100)
        assert exchange(server, b"abc") == b"cba"


def test_function_for_the_wrong_kind_of_transport_is_refused_at_assembly() -> None:
    @datagram_handler
    def answer(payload: bytes, client_address: object) -> bytes:
        return payload

    @stream_handler
    def talk(conn: Connection) -> None:
        pass

    with pytest.raises(ConfigError, match="serves datagram requests, but the tcp transport delivers stream"):
        Server(transport="tcp://127.0.0.1:0", handler=answer)
    with pytest.raises(ConfigError, match="serves stream requests, but the udp transport delivers datagram"):
        Server(transport="udp://127.0.0.1:0", handler=talk)


def test_function_called_with_the_wrong_kind_of_request_says_so(pair: tuple[Connection, socket.socket]) -> None:
    """Called directly (outside a Server), the adapters still name the mismatch."""
    @datagram_handler
    def answer(payload: bytes, client_address: object) -> bytes:
        return payload

    with pytest.raises(TypeError, match="answer is a datagram handler; it cannot serve streams"):
        answer(pair[1], "peer", None)


def test_helpers_refuse_non_callables() -> None:
    with pytest.raises(TypeError, match="stream_handler"):
        stream_handler("not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="datagram_handler"):
        datagram_handler(None)  # type: ignore[arg-type]


def test_standard_library_handler_classes_work_unchanged() -> None:
    """socketserver.StreamRequestHandler subclasses are handler factories as they are."""
    import socketserver

    class Upper(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    with serving(Server(transport="tcp://127.0.0.1:0", handler=Upper)) as server:
        assert exchange(server, b"classic\n") == b"CLASSIC\n"


def test_builtin_lines_and_discard_handlers() -> None:
    with serving(Server(transport="tcp://127.0.0.1:0", handler="lines")) as server:
        assert exchange(server, b"first\nsecond\nlast") == b"1: first\n2: second\n3: last\n"
    with serving(Server(transport="tcp://127.0.0.1:0", handler="lines", handler_options={"max_line": 4})) as server:
        assert exchange(server, b"abcd\nabcdef\n") == b"1: abcd\n"  # the long line is refused: closed, counted
        assert eventually(lambda: server.stats.refused == 1)
    with serving(Server(transport="tcp://127.0.0.1:0", handler="discard")) as server:
        assert exchange(server, b"x" * 100_000) == b""
    with (serving(Server(transport="udp://127.0.0.1:0", handler="discard")) as server,
          client(server, timeout=0.2) as sock):
        sock.send(b"into the void")
        with pytest.raises(TimeoutError):
            sock.recv(100)



def test_connection_peek_shows_the_held_bytes_then_the_kernels_and_consumes_nothing(
    pair: tuple[Connection, socket.socket],
) -> None:
    """Connection.peek: the record's buffer first, then MSG_PEEK; never blocks; the end of the stream is an error."""
    conn, peer = pair
    with pytest.raises(BlockingIOError):
        conn.peek()  # nothing yet: on a blocking socket too, it does not wait
    peer.sendall(b"LO there")
    conn._buffer += b"HE"  # what the loop already holds for this connection
    assert conn.peek(4) == b"HELO"
    assert conn.peek() == b"HELO there"
    assert conn.recv(100) == b"HE"  # nothing was consumed: the held bytes come first
    assert conn.read(8) == b"LO there"
    peer.close()
    with pytest.raises(ConnectionAbortedError):
        conn.peek()


@pytest.mark.parametrize("dispatcher", ["inline", "thread", "pool", "fork", "asyncio"])
def test_lines_answers_and_refuses_alike_on_every_dispatcher(dispatcher: str) -> None:
    """``lines``: a line per reply, "\\r\\n" read as "\\n", a last line without one answered; a line over
    ``max_line`` refuses the connection (counted ``refused``) after the lines before it are answered."""
    server = Server(transport="tcp://127.0.0.1:0", dispatcher=dispatcher, handler="lines",
                    handler_options={"max_line": 4})
    with serving(server):
        assert exchange(server, b"a\r\nbb\n\nend") == b"1: a\n2: bb\n3: \n4: end\n"
        assert exchange(server, b"a\nfour\nlonger\nnever") == b"1: a\n2: four\n"
        assert eventually(lambda: server.stats.active == 0)
    assert (server.stats.completed, server.stats.refused, server.stats.failed) == (1, 1, 0)
