"""The PROXY protocol: the strict parser (with a fuzz), and the stage that reads a header off a real socket."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import pytest
from stage_driver import accept_connection, run_stages

from sockwork import ConfigError, Server, StageFailed
from sockwork.connection import Connection
from sockwork.proxy_protocol import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_SSL,
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeaderStage,
    ProxyProtocolError,
    TrustedProxies,
    crc32c,
    encode_v1,
    encode_v2,
    expected_length,
    parse,
)

# ---- The parser: what is accepted ------------------------------------------------------


def test_v1_tcp4_gives_both_addresses_and_its_length() -> None:
    """A v1 TCP4 line names the client and the address it connected to; bytes after it are not the header's."""
    header = parse(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\nGET / HTTP/1.1\r\n")
    assert (header.version, header.command, header.family) == (1, "PROXY", "inet")
    assert header.source == ("203.0.113.7", 51234)
    assert header.destination == ("192.0.2.1", 443)
    assert header.length == len(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n")


def test_v1_tcp6_addresses_look_like_the_socket_modules() -> None:
    """IPv6 addresses come as (host, port, flowinfo, scope_id), as accept() reports them."""
    header = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n")
    assert header.source == ("2001:db8::7", 1, 0, 0)
    assert header.destination == ("2001:db8::1", 65535, 0, 0)


def test_v1_unknown_carries_no_address() -> None:
    """PROXY UNKNOWN (the balancer does not know) keeps the connection's own peer; the rest of its line is ignored."""
    assert parse(b"PROXY UNKNOWN\r\n").source is None
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").source is None


def test_v1_at_its_longest_is_accepted() -> None:
    """The specification's worst cases (107 bytes with CRLF for UNKNOWN, 104 for TCP6) are valid headers."""
    six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    unknown = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(unknown) == V1_MAX_LENGTH
    assert parse(unknown).length == V1_MAX_LENGTH
    assert parse(f"PROXY TCP6 {six} {six} 65535 65535\r\n".encode()).source == (six, 65535, 0, 0)


def test_v2_inet_with_tlvs() -> None:
    """A v2 header gives the addresses and its TLVs (ALPN, authority) in order."""
    data = encode_v2(("203.0.113.7", 51234), ("192.0.2.1", 443),
                     tlvs=[(PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_AUTHORITY, b"example.com")])
    header = parse(data + b"payload")
    assert (header.version, header.command, header.family, header.protocol) == (2, "PROXY", "inet", "stream")
    assert header.source == ("203.0.113.7", 51234)
    assert header.alpn == b"h2" and header.authority == "example.com"
    assert header.length == len(data)


def test_v2_inet6_and_unix() -> None:
    """IPv6 and Unix-socket clients are read from v2 headers too."""
    assert parse(encode_v2(("2001:db8::7", 1), ("::1", 2))).source == ("2001:db8::7", 1, 0, 0)
    header = parse(encode_v2("/run/client.sock", "/run/haproxy.sock"))
    assert (header.family, header.source, header.destination) == ("unix", "/run/client.sock", "/run/haproxy.sock")


def test_v2_local_is_the_balancers_own_connection() -> None:
    """LOCAL (a health check) carries no client: the connection's own peer stands."""
    header = parse(encode_v2(None, None, command="LOCAL"))
    assert (header.command, header.source, header.family) == ("LOCAL", None, "unspec")


def test_v2_crc32c_is_checked() -> None:
    """A CRC32C TLV is verified: right passes, one flipped bit in the addresses fails."""
    data = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs=[(PP2_TYPE_CRC32C, b"\0\0\0\0")])
    crc = crc32c(data).to_bytes(4, "big")
    good = data[:-4] + crc
    assert parse(good).tlv(PP2_TYPE_CRC32C) == crc
    bad = bytearray(good)
    bad[16] ^= 1
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse(bytes(bad))


def test_crc32c_known_value() -> None:
    """The Castagnoli check value of "123456789" (RFC 3720)."""
    assert crc32c(b"123456789") == 0xE3069283


# ---- The parser: what is refused ---------------------------------------------------------

@pytest.mark.parametrize(("data", "message"), [
    (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", "truncated"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare CR or LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "non-printable"),
    (b"PROXY " + b"1" * 120 + b"\r\n", "longer than 107"),
    (b"PROXY TCP4 ::1 ::2 1 2\r\n", "not IPv4"),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "not IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "leading zeros"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "0..65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "0..65535"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "not IPv4"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "single spaces"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "scope"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n", "non-printable"),
    (b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", "non-printable"),
])
def test_v1_malformed_is_refused_with_a_reason(data: bytes, message: str) -> None:
    """Every malformed v1 header is refused, and the message says what is wrong."""
    with pytest.raises(ProxyProtocolError, match=message):
        parse(data)


def _v2(byte13: int, byte14: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([byte13, byte14]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize(("data", "message"), [
    (V2_SIGNATURE[:10], "truncated"),
    (_v2(0x21, 0x11, b"\0" * 12)[:-1], "truncated"),
    (_v2(0x11, 0x11, b"\0" * 12), "version 1"),
    (_v2(0x22, 0x11, b"\0" * 12), "command 2"),
    (_v2(0x21, 0x41, b"\0" * 12), "unknown address family"),
    (_v2(0x21, 0x13, b"\0" * 12), "unknown address family or protocol"),
    (_v2(0x21, 0x11, b"\0" * 8), "needs 12 bytes"),
    (_v2(0x21, 0x21, b"\0" * 12), "needs 36 bytes"),
    (_v2(0x21, 0x12, b"\0" * 12), "dgram connection"),
    (_v2(0x21, 0x11, b"\0" * 12 + b"\x01\x00"), "TLV cut short"),
    (_v2(0x21, 0x11, b"\0" * 12 + b"\x01\x00\x05ab"), "claims 5 bytes"),
    (_v2(0x21, 0x11, b"\0" * 12 + b"\x20\x00\x02ab"), "SSL TLV"),
    (_v2(0x21, 0x11, b"\0" * 12 + b"\x03\x00\x02ab"), "CRC32C TLV of 2"),
    (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_LENGTH), "longer than"),
])
def test_v2_malformed_is_refused_with_a_reason(data: bytes, message: str) -> None:
    """Every malformed v2 header is refused, and the message says what is wrong."""
    with pytest.raises(ProxyProtocolError, match=message):
        parse(data)


def test_a_version_not_asked_for_is_refused() -> None:
    """proxy_protocol = "v1" refuses a v2 header and the other way round."""
    with pytest.raises(ProxyProtocolError, match=r"expected 'PROXY ' \(v1\)$"):
        parse(encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2)), versions=("v1",))
    with pytest.raises(ProxyProtocolError, match="expected the v2 signature"):
        parse(encode_v1(("1.2.3.4", 1), ("5.6.7.8", 2)), versions=("v2",))


def test_expected_length_tells_as_soon_as_it_can() -> None:
    """Nothing is known from a partial prefix; v2's length is known after 16 bytes, v1's at its CRLF."""
    v2 = encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2))
    assert [expected_length(v2[:n]) for n in (0, 1, 15)] == [None, None, None]
    assert expected_length(v2[:16]) == len(v2)
    v1 = encode_v1(("1.2.3.4", 1), ("5.6.7.8", 2))
    assert expected_length(v1[:-1]) is None
    assert expected_length(v1) == len(v1)


# ---- Fuzzing: the parser never fails any other way --------------------------------------

def _parse_or_refuse(data: bytes) -> None:
    """Either a header whose length fits the data, or ProxyProtocolError: nothing else."""
    try:
        header = parse(data)
    except ProxyProtocolError:
        return
    assert 0 < header.length <= len(data)
    assert expected_length(data) == header.length


FUZZ_ROUNDS = 3000  # each of the loops below: bounded, seeded, well under a second


def test_fuzz_arbitrary_bytes() -> None:
    """Random bytes are parsed or refused with ProxyProtocolError, never another exception."""
    rng = random.Random(1)
    for _ in range(FUZZ_ROUNDS):
        _parse_or_refuse(rng.randbytes(rng.randrange(300)))


def test_fuzz_v2_after_a_valid_signature() -> None:
    """Behind a valid signature, any version, family, length and TLV bytes parse or are refused cleanly."""
    rng = random.Random(2)
    for _ in range(FUZZ_ROUNDS):
        body = rng.randbytes(rng.choice((0, 12, 36, 216, rng.randrange(260))))
        if rng.random() < 0.5:  # well-formed TLV framing, random types and values
            body = body[: rng.choice((12, 36))] + b"".join(
                bytes([rng.randrange(256)]) + struct.pack("!H", n) + rng.randbytes(n)
                for n in (rng.randrange(20) for _ in range(rng.randrange(4))))
        declared = len(body) if rng.random() < 0.8 else rng.randrange(300)
        _parse_or_refuse(V2_SIGNATURE + bytes([rng.choice((0x20, 0x21, rng.randrange(256))),
                                               rng.choice((0x11, 0x21, 0x31, 0x00, rng.randrange(256)))])
                         + struct.pack("!H", declared) + body)


def test_fuzz_v1_lookalikes() -> None:
    """Lines made of v1's own characters parse or are refused cleanly."""
    rng = random.Random(3)
    alphabet = "PROXY TCP46UNKOW0123456789abcdef.:% \r\n"
    words = ["TCP4", "TCP6", "UNKNOWN", "1.2.3.4", "::1", "ffff::1", "65535", "0", "80", " "]
    for _ in range(FUZZ_ROUNDS):
        if rng.random() < 0.5:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(120)))
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randrange(8))) + rng.choice(("\r\n", "\n", ""))
        _parse_or_refuse(("PROXY " + text).encode())


def test_mutations_of_valid_headers() -> None:
    """Every one-byte change and every truncation of valid headers parses or is refused (a seeded, bounded loop)."""
    rng = random.Random(11)
    valid = [
        encode_v1(("203.0.113.7", 51234), ("192.0.2.1", 443)),
        encode_v1(("2001:db8::7", 1), ("::1", 2)),
        encode_v2(("203.0.113.7", 51234), ("192.0.2.1", 443), tlvs=[(PP2_TYPE_ALPN, b"h2")]),
        encode_v2(("2001:db8::7", 1), ("::1", 2), tlvs=[(PP2_TYPE_SSL, b"\x01\0\0\0\0\x21\0\x07TLSv1.3")]),
        encode_v2("/a", "/b"),
    ]
    for data in valid:
        assert parse(data).length == len(data)
        for cut in range(len(data)):
            with pytest.raises(ProxyProtocolError):
                parse(data[:cut])
        for _ in range(300):
            mutated = bytearray(data)
            mutated[rng.randrange(len(data))] = rng.randrange(256)
            _parse_or_refuse(bytes(mutated))


# ---- Trusted proxies --------------------------------------------------------------------------

def test_trusted_proxies_match_addresses_networks_and_mapped_ipv4() -> None:
    """Networks and single addresses match; a dual-stack socket's ::ffff:a.b.c.d matches IPv4 entries."""
    trusted = TrustedProxies(["10.0.0.0/8", "::1", "192.0.2.7"])
    assert ("10.1.2.3", 5) in trusted
    assert ("::ffff:10.1.2.3", 5, 0, 0) in trusted
    assert ("::1", 5, 0, 0) in trusted
    assert ("192.0.2.7", 1) in trusted
    assert ("192.0.2.8", 1) not in trusted
    assert "" not in trusted  # a Unix peer, on an internet transport
    assert "" in TrustedProxies([], unix=True)


def test_options_need_trusted_proxies_and_check_them() -> None:
    """proxy_protocol without trusted_proxies, a bad network, trusted_proxies on a Unix socket: config errors."""
    def build(transport: str, **options: object) -> None:
        Server(transport=transport, transport_options=options, handler="echo").close()

    with pytest.raises(ConfigError, match="option 'trusted_proxies': must list the balancers"):
        build("tcp", address=("127.0.0.1", 0), proxy_protocol="v2")
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.1/8' is not an IP address or network"):
        build("tcp", address=("127.0.0.1", 0), proxy_protocol="v2", trusted_proxies=["10.0.0.1/8"])
    with pytest.raises(ConfigError, match="must be 'v1', 'v2', 'any' or none"):
        build("tcp", address=("127.0.0.1", 0), proxy_protocol="v3", trusted_proxies=["::1"])
    with pytest.raises(ConfigError, match="whose peers have no address"):
        build("unix", path="/tmp/x.sock", proxy_protocol="v1", trusted_proxies=["127.0.0.1"])


# ---- The stage on real sockets ---------------------------------------------------------------

@pytest.fixture
def listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def stage(versions: tuple[str, ...] = ("v1", "v2"), trusted: tuple[str, ...] = ("127.0.0.1",)) -> ProxyHeaderStage:
    return ProxyHeaderStage(versions, TrustedProxies(trusted), timeout=5.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("header", [
    encode_v1(("203.0.113.7", 51234), ("192.0.2.1", 443)),
    encode_v2(("203.0.113.7", 51234), ("192.0.2.1", 443), tlvs=[(PP2_TYPE_AUTHORITY, b"example.com")]),
    b"PROXY UNKNOWN\r\n",
], ids=["v1", "v2", "v1-unknown"])
def test_stage_reads_exactly_the_header(listener: socket.socket, header: bytes) -> None:
    """The stage sets the real client as the peer and leaves the first bytes after the header in the socket."""
    with socket.create_connection(listener.getsockname()) as client:
        client.sendall(header + b"hello")
        conn = accept_connection(listener)
        with conn.socket:
            proxy_address = conn.peer
            run_stages([stage()], conn)
            info = conn.info["proxy"]
            assert info.proxy == proxy_address
            assert conn.peer == (info.source or proxy_address)
            if info.source is not None:
                assert conn.peer == ("203.0.113.7", 51234)
            conn.socket.setblocking(True)
            assert conn.socket.recv(100) == b"hello"
            assert "_proxy_partial" not in conn.info


@pytest.mark.parametrize("versions", [("v1",), ("v2",), ("v1", "v2")], ids=["v1", "v2", "any"])
def test_stage_byte_by_byte_never_over_reads(listener: socket.socket, versions: tuple[str, ...]) -> None:
    """A header trickling in one byte at a time is read as it comes (no spinning on peeked bytes), and no more."""
    header = (encode_v1 if versions == ("v1",) else encode_v2)(("198.51.100.9", 7), ("192.0.2.1", 443))
    with socket.create_connection(listener.getsockname()) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = accept_connection(listener)
        with conn.socket:
            def trickle() -> None:
                for byte in header:
                    client.send(bytes([byte]))
                    time.sleep(0.002)
                client.send(b"after")
            sender = threading.Thread(target=trickle)
            sender.start()
            try:
                asked = run_stages([stage(versions)], conn)
            finally:
                sender.join()
            assert asked[-1] == "done"
            assert len(asked) <= 2 * len(header) + 2  # one wait per arriving segment at most, no busy loop
            assert conn.peer == ("198.51.100.9", 7)
            conn.socket.setblocking(True)
            assert conn.socket.recv(5, socket.MSG_WAITALL) == b"after"


def test_stage_refuses_an_untrusted_peer_before_reading(listener: socket.socket) -> None:
    """A peer outside trusted_proxies is refused, and not one byte of what it sent is consumed."""
    with socket.create_connection(listener.getsockname()) as client:
        client.sendall(encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2)))
        conn = accept_connection(listener)
        with conn.socket:
            time.sleep(0.05)
            with pytest.raises(StageFailed, match=r"127\.0\.0\.1:\d+ is not in trusted_proxies"):
                run_stages([stage(trusted=("10.0.0.0/8",))], conn)
            assert len(conn.socket.recv(200, socket.MSG_PEEK)) == 28


@pytest.mark.parametrize(("sent", "error", "message"), [
    (b"GET / HTTP/1.0\r\n\r\n", StageFailed, "not a PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4", StageFailed, "ended inside the PROXY header"),
    (b"", ConnectionAbortedError, "before sending a PROXY header"),
    (b"PROXY " + b"9" * 200, StageFailed, "longer than 107"),
])
def test_stage_failures(listener: socket.socket, sent: bytes, error: type[Exception], message: str) -> None:
    """Garbage and truncated headers are the client's fault (StageFailed); closing before any byte is a disconnect."""
    with socket.create_connection(listener.getsockname()) as client:
        client.sendall(sent)
        client.shutdown(socket.SHUT_WR)
        conn = accept_connection(listener)
        with conn.socket, pytest.raises(error, match=message):
            run_stages([stage()], conn)


def test_stage_on_a_unix_socket() -> None:
    """On a Unix socket any peer may send (the file's permissions decide who connects)."""
    server, client = socket.socketpair()
    with server, client:
        client.sendall(encode_v2(("203.0.113.7", 1), ("192.0.2.1", 2)))
        server.setblocking(False)
        conn = Connection(server, "")
        run_stages([ProxyHeaderStage(("v2",), TrustedProxies([], unix=True), 5.0)], conn)
        assert conn.peer == ("203.0.113.7", 1)


def test_an_inherited_descriptor_takes_the_proxy_options_too() -> None:
    """fd:// (and systemd://) stream sockets get the PROXY stage; the family decides what trusted_proxies must be."""
    from sockwork.transports.fd import FDOptions, make_fd_transport

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(ConfigError, match="'trusted_proxies' must list the balancers"):
            make_fd_transport(FDOptions(fd=listener.fileno(), proxy_protocol="v2"))
        transport = make_fd_transport(FDOptions(fd=listener.fileno(), proxy_protocol="v2",
                                                trusted_proxies=["127.0.0.1"]))
        assert [stage.name for stage in transport.stages] == ["PROXY header"]
    finally:
        listener.close()
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ConfigError, match="is a datagram socket"):
            make_fd_transport(FDOptions(fd=datagram.fileno(), proxy_protocol="v1", trusted_proxies=["::1"]))
    finally:
        datagram.close()


def _nested_ssl(levels: int) -> bytes:
    """An SSL TLV holding an SSL TLV, ``levels`` deep."""
    value = b""
    for _ in range(levels):
        value = bytes([PP2_TYPE_SSL]) + struct.pack("!H", 5 + len(value)) + b"\x01\0\0\0\0" + value
    return value


@pytest.mark.parametrize("levels", [2, 510])
def test_nested_ssl_tlvs_are_refused_with_a_reason_not_a_recursion(levels: int) -> None:
    """An SSL TLV inside an SSL TLV (510 deep fits in 4 KiB) is refused by depth, never a RecursionError."""
    header = _v2(0x21, 0x11, b"\0" * 12 + _nested_ssl(levels))
    assert len(header) <= V2_MAX_LENGTH
    with pytest.raises(ProxyProtocolError, match="SSL TLV nested in an SSL TLV"):
        parse(header)


def test_an_ssl_tlvs_sub_tlvs_are_still_checked() -> None:
    """One level of nesting (the SSL TLV's own sub-TLVs) is parsed and checked as before."""
    good = bytes([PP2_TYPE_SSL]) + struct.pack("!H", 5 + 10) + b"\x01\0\0\0\0" + b"\x21\x00\x07TLSv1.3"
    assert parse(_v2(0x21, 0x11, b"\0" * 12 + good)).tlvs[0][0] == PP2_TYPE_SSL
    bad = bytes([PP2_TYPE_SSL]) + struct.pack("!H", 5 + 4) + b"\x01\0\0\0\0" + b"\x21\x00\x07T"
    with pytest.raises(ProxyProtocolError, match="claims 7 bytes"):
        parse(_v2(0x21, 0x11, b"\0" * 12 + bad))
