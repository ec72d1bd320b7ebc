"""The PROXY protocol, versions 1 and 2: a strict parser, and the connection stage that reads the header.

A load balancer that speaks the PROXY protocol (HAProxy ``send-proxy`` /
``send-proxy-v2``, nginx ``proxy_protocol on``, AWS NLB, ...) opens each
connection to the server with one header naming the real client; the
server would otherwise only see the balancer's address. Specification:
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

Rule 1: the parser is pure (bytes in, :class:`ProxyHeader` or
:class:`ProxyProtocolError` out) and strict: anything the specification does
not allow is refused with a message that says what and where.
Rule 2: the stage never consumes a byte that is not part of the header (it
peeks, then receives exactly the header's bytes): the handler, or the TLS
handshake, reads what follows from the socket itself.
Rule 3: only peers in ``trusted_proxies`` may send a header, checked before
anything is read: any client that can connect could otherwise claim to be
any address.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs

from .connection import ClosedBeforeSpeaking, StageFailed

if TYPE_CHECKING:
    from .connection import Connection, StageWant

__all__ = [
    "V1_MAX_LENGTH",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderStage",
    "ProxyProtocolError",
    "TrustedProxies",
    "crc32c",
    "encode_v1",
    "encode_v2",
    "expected_length",
    "parse",
]

Version = Literal["v1", "v2"]
BOTH: Final[tuple[Version, ...]] = ("v1", "v2")

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107
"""The longest v1 header, CRLF included (the specification's own bound)."""
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_LENGTH: Final = 16 + 4096
"""The longest v2 header accepted: the 16-byte prefix and 4 KiB of addresses and TLVs.

The format allows 64 KiB; balancers send a few hundred bytes at most (more
only with every SSL TLV and a long unique ID), so a longer one is refused
rather than buffered.
"""

# v2 TLV types (section 2.2 of the specification).
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_TYPE_NETNS: Final = 0x30

_V2_FAMILIES: Final = {0x0: "unspec", 0x1: "inet", 0x2: "inet6", 0x3: "unix"}
_V2_PROTOCOLS: Final = {0x0: "unspec", 0x1: "stream", 0x2: "dgram"}
_V2_ADDRESS_LENGTHS: Final = {"unspec": 0, "inet": 12, "inet6": 36, "unix": 216}


class ProxyProtocolError(ValueError):
    """A PROXY protocol header that breaks the specification: malformed, truncated, oversize, wrong family."""


@final
@attrs.frozen(kw_only=True)
class ProxyHeader:
    """One parsed PROXY header: who the client really is, as the balancer saw it.

    ``source`` is the real client (``(host, port)`` for IPv4, ``(host, port,
    0, 0)`` for IPv6, like the socket module's addresses; a path for a Unix
    client) and ``destination`` the address it connected to (the balancer's
    front end). Both are None when the header carries no addresses: a v2
    ``LOCAL`` command (the balancer's own health check), family ``unspec``,
    or v1 ``UNKNOWN``; the connection's own peer then stands. ``proxy`` is
    the balancer's own address, the connection's peer (filled in by the
    stage). ``tlvs`` are v2's type-length-value extensions, in order.
    """

    version: Literal[1, 2]
    command: Literal["PROXY", "LOCAL"]
    family: Literal["inet", "inet6", "unix", "unspec"]
    protocol: Literal["stream", "dgram", "unspec"]
    source: Any
    destination: Any
    tlvs: tuple[tuple[int, bytes], ...] = ()
    length: int
    """Bytes the header took on the wire."""
    proxy: Any = None

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind`` (e.g. :data:`PP2_TYPE_AUTHORITY`), or None."""
        for found, value in self.tlvs:
            if found == kind:
                return value
        return None

    @property
    def alpn(self) -> bytes | None:
        """The protocol the client negotiated with the balancer (TLV ``PP2_TYPE_ALPN``)."""
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked the balancer for (SNI; TLV ``PP2_TYPE_AUTHORITY``)."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def unique_id(self) -> bytes | None:
        """The balancer's ID for this connection (TLV ``PP2_TYPE_UNIQUE_ID``)."""
        return self.tlv(PP2_TYPE_UNIQUE_ID)


# ---- Parsing -----------------------------------------------------------------

def _versions(versions: Iterable[Version]) -> tuple[Version, ...]:
    found = tuple(versions)
    if not found or any(v not in BOTH for v in found):
        raise ValueError(f"versions must be 'v1' and/or 'v2', got {found!r}")
    return found


def _version_of(data: bytes, versions: tuple[Version, ...]) -> Version | None:
    """Which version ``data`` starts as (the first byte tells: ``P`` or CR); None for no data."""
    if not data:
        return None
    for version, prefix in (("v1", V1_PREFIX), ("v2", V2_SIGNATURE)):
        if version in versions and data[: len(prefix)] == prefix[: len(data)]:
            return version
    expected = " or ".join(
        {"v1": "'PROXY ' (v1)", "v2": "the v2 signature \\r\\n\\r\\n\\0\\r\\nQUIT\\n"}[v] for v in versions)
    raise ProxyProtocolError(f"not a PROXY protocol header: starts {bytes(data[:16])!r}, expected {expected}")


def expected_length(data: bytes, versions: Iterable[Version] = BOTH) -> int | None:
    """The length of the header ``data`` begins with, once it can be told; None while more bytes are needed.

    Checks everything the bytes so far allow and raises
    :class:`ProxyProtocolError` as soon as they cannot begin a valid header
    (a wrong signature, an unknown v2 version or command, a v1 line past
    107 bytes, a v2 length past :data:`V2_MAX_LENGTH`).
    """
    allowed = _versions(versions)
    version = _version_of(data, allowed)
    if version is None:
        return None
    if version == "v1":
        end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes (no CRLF): "
                                     f"{bytes(data[:40])!r}...")
        if b"\n" in data or b"\r" in data[:-1]:  # the first CRLF ends the line: no other CR or LF
            raise ProxyProtocolError(f"PROXY v1 header with a bare CR or LF: {bytes(data[:V1_MAX_LENGTH])!r}")
        return None
    if len(data) < 16:
        return None
    _v2_command(data[12])
    _v2_family(data[13])
    length: int = struct.unpack_from("!H", data, 14)[0]
    if 16 + length > V2_MAX_LENGTH:
        raise ProxyProtocolError(f"PROXY v2 header of {16 + length} bytes: longer than the {V2_MAX_LENGTH} "
                                 "accepted")
    return 16 + length


def parse(data: bytes, versions: Iterable[Version] = BOTH) -> ProxyHeader:
    """Parse the PROXY header at the start of ``data`` (bytes after it are left alone: see ``length``).

    Raises :class:`ProxyProtocolError` if ``data`` does not begin with a
    complete, valid header of one of ``versions``.
    """
    data = bytes(data)
    length = expected_length(data, versions)
    if length is None or len(data) < length:
        whole = f"of a {length}-byte header" if length is not None else "and no complete header"
        raise ProxyProtocolError(f"truncated PROXY header: {len(data)} bytes {whole}: {data[:40]!r}")
    if data.startswith(V1_PREFIX):
        return _parse_v1(data[:length])
    return _parse_v2(data[:length])


def _parse_v1(line: bytes) -> ProxyHeader:
    text = line[:-2]
    if not text.isascii() or any(c < 0x20 or c == 0x7F for c in text):
        raise ProxyProtocolError(f"PROXY v1 header with a non-printable byte: {line!r}")
    words = text.decode("ascii").split(" ")
    if len(words) >= 2 and words[1] == "UNKNOWN":
        # The rest of the line, if any, is to be ignored (the balancer does not know the addresses).
        return ProxyHeader(version=1, command="PROXY", family="unspec", protocol="unspec",
                           source=None, destination=None, length=len(line))
    if len(words) != 6:
        raise ProxyProtocolError(f"PROXY v1 header must be 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' "
                                 f"(single spaces), got {line!r}")
    _, proto, src, dst, sport, dport = words
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got {proto!r}")
    version = 4 if proto == "TCP4" else 6
    source = _v1_address(src, _v1_port(sport, line), version, line)
    destination = _v1_address(dst, _v1_port(dport, line), version, line)
    return ProxyHeader(version=1, command="PROXY", family="inet" if version == 4 else "inet6",
                       protocol="stream", source=source, destination=destination, length=len(line))


def _v1_port(text: str, line: bytes) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1 port must be a number in 0..65535 without leading zeros, "
                                 f"got {text!r} in {line!r}")
    return int(text)


def _v1_address(text: str, port: int, version: int, line: bytes) -> tuple[Any, ...]:
    if "%" in text:  # ipaddress accepts a scope ("fe80::1%eth0"); the specification has none
        raise ProxyProtocolError(f"PROXY v1 address with a scope: {text!r} in {line!r}")
    try:
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 TCP{version} header with an address that is not IPv{version}: "
                                 f"{text!r} in {line!r}") from None
    return _socket_address(address, port)


def _socket_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> tuple[Any, ...]:
    """As the socket module reports a peer: IPv6 addresses have flow info and scope (0, 0)."""
    return (str(address), port) if address.version == 4 else (str(address), port, 0, 0)


def _v2_command(byte: int) -> Literal["PROXY", "LOCAL"]:
    if byte >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {byte >> 4} (byte 13 = {byte:#04x}); only 2 exists")
    command = byte & 0xF
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header with command {command}; only 0 (LOCAL) and 1 (PROXY) exist")
    return "LOCAL" if command == 0 else "PROXY"


def _v2_family(byte: int) -> tuple[str, str]:
    family, protocol = _V2_FAMILIES.get(byte >> 4), _V2_PROTOCOLS.get(byte & 0xF)
    if family is None or protocol is None:
        raise ProxyProtocolError(f"PROXY v2 header with an unknown address family or protocol (byte 14 = "
                                 f"{byte:#04x})")
    return family, protocol


def _parse_v2(data: bytes) -> ProxyHeader:
    command = _v2_command(data[12])
    family, protocol = _v2_family(data[13])
    body = memoryview(data)[16:]
    needed = _V2_ADDRESS_LENGTHS[family]
    if len(body) < needed:
        raise ProxyProtocolError(f"PROXY v2 {family} header needs {needed} bytes of addresses; its length "
                                 f"field says {len(body)}")
    if command == "PROXY" and family != "unspec" and protocol != "stream":
        raise ProxyProtocolError(f"PROXY v2 header announces a {protocol} connection over {family} to a stream "
                                 "server")
    source: Any = None
    destination: Any = None
    if family == "inet":
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        source = _socket_address(ipaddress.IPv4Address(src), sport)
        destination = _socket_address(ipaddress.IPv4Address(dst), dport)
    elif family == "inet6":
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = _socket_address(ipaddress.IPv6Address(src), sport)
        destination = _socket_address(ipaddress.IPv6Address(dst), dport)
    elif family == "unix":
        source, destination = _unix_path(body[:108]), _unix_path(body[108:216])
    tlvs = _parse_tlvs(body[needed:])
    header = ProxyHeader(version=2, command=command, family=family,  # type: ignore[arg-type]
                         protocol=protocol, source=source, destination=destination,  # type: ignore[arg-type]
                         tlvs=tlvs, length=len(data))
    crc = header.tlv(PP2_TYPE_CRC32C)
    if crc is not None:
        _check_crc(data, needed, crc)
    if command == "LOCAL":  # the balancer speaking for itself: its addresses, if any, are not a client's
        return attrs.evolve(header, source=None, destination=None)
    return header


def _unix_path(raw: memoryview) -> str:
    data = bytes(raw)
    if data.startswith(b"\0"):  # a Linux abstract name: NUL, then the name, padded with NULs
        return "\0" + data[1:].rstrip(b"\0").decode("utf-8", "surrogateescape")
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


_TLV_MAX_DEPTH: Final = 2
"""TLVs nest this deep at most: the header's own, and the sub-TLVs of a ``PP2_TYPE_SSL`` one.

The specification nests only that one level; an SSL TLV inside an SSL TLV is
refused with that reason (510 of them fit in a 4 KiB header).
"""


def _parse_tlvs(data: memoryview) -> tuple[tuple[int, bytes], ...]:
    """The header's TLVs (top level only), each checked; an SSL TLV's sub-TLVs are checked too.

    Iterative, with a work list and a depth bound: no header can make it recurse.
    """
    tlvs: list[tuple[int, bytes]] = []
    pending = [(data, 1)]
    while pending:
        block, depth = pending.pop()
        offset = 0
        while offset < len(block):
            if len(block) - offset < 3:
                raise ProxyProtocolError(f"PROXY v2 TLV cut short: {len(block) - offset} byte(s) left where a TLV "
                                         "needs at least 3")
            kind = block[offset]
            (length,) = struct.unpack_from("!H", block, offset + 1)
            value = block[offset + 3: offset + 3 + length]
            if len(value) != length:
                raise ProxyProtocolError(f"PROXY v2 TLV of type {kind:#04x} claims {length} bytes, {len(value)} left")
            if kind == PP2_TYPE_SSL:
                if depth >= _TLV_MAX_DEPTH:
                    raise ProxyProtocolError("PROXY v2 SSL TLV nested in an SSL TLV; its sub-TLVs nest one level "
                                             "only")
                if length < 5:
                    raise ProxyProtocolError(f"PROXY v2 SSL TLV of {length} bytes; it has at least 5")
                # Client flags (1 byte), verify result (4 bytes), then sub-TLVs that fill it exactly.
                pending.append((value[5:], depth + 1))
            elif kind == PP2_TYPE_CRC32C and length != 4:
                raise ProxyProtocolError(f"PROXY v2 CRC32C TLV of {length} bytes; it has 4")
            if depth == 1:
                tlvs.append((kind, bytes(value)))
            offset += 3 + length
    return tuple(tlvs)


def _check_crc(data: bytes, address_length: int, crc: bytes) -> None:
    # The checksum covers the whole header with the checksum's own value zeroed.
    body = bytearray(data)
    offset = 16 + address_length
    while offset < len(body):
        kind, length = body[offset], struct.unpack_from("!H", body, offset + 1)[0]
        if kind == PP2_TYPE_CRC32C:
            body[offset + 3: offset + 7] = b"\0\0\0\0"
            break
        offset += 3 + length
    if crc32c(bytes(body)).to_bytes(4, "big") != crc:
        raise ProxyProtocolError("PROXY v2 header fails its CRC32C checksum")


_CRC32C_TABLE: list[int] = []


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the PP2_TYPE_CRC32C TLV uses it."""
    if not _CRC32C_TABLE:
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC32C_TABLE.append(c)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---- Who may send a header ---------------------------------------------------------

@final
class TrustedProxies:
    """A set of addresses and networks (``"10.0.0.0/8"``, ``"::1"``) that may send a PROXY header.

    IPv4 peers of a dual-stack socket (``::ffff:10.1.2.3``) match IPv4
    networks. Anything but an IP address (a Unix socket's peer) matches
    only if ``unix`` is True: who may connect to a socket file is decided by
    its permissions.
    """

    __slots__ = ("_networks", "unix")

    def __init__(self, networks: Iterable[str], *, unix: bool = False) -> None:
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self.unix = unix

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self._networks]!r}, unix={self.unix})"

    def __contains__(self, peer: object) -> bool:
        host = peer[0] if isinstance(peer, tuple) else None
        if not isinstance(host, str):
            return self.unix
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


# ---- The connection stage ------------------------------------------------------------

_PARTIAL: Final = "_proxy_partial"  # conn.info key: header bytes consumed so far, while the stage runs


@final
class ProxyHeaderStage:
    """Reads the PROXY header off an accepted connection, in the loop, without over-reading.

    It peeks (``MSG_PEEK``: up to 107 bytes for v1, the 16-byte prefix for
    v2), receives exactly the bytes that belong to the header (keeping a
    partial header in ``conn.info`` between calls, so a slow balancer never
    makes the loop spin on bytes it already saw), then parses it. On
    success ``conn.peer`` is the real client (unless the header carries no
    address: ``LOCAL``, ``UNKNOWN``) and ``conn.info["proxy"]`` the
    :class:`ProxyHeader`, whose ``proxy`` is the balancer's own address.
    """

    name = "PROXY header"

    def __init__(self, versions: Iterable[Version], trusted: TrustedProxies, timeout: float | None) -> None:
        self.versions = _versions(versions)
        self.trusted = trusted
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<ProxyHeaderStage {'/'.join(self.versions)} trusted={self.trusted!r}>"

    def advance(self, conn: Connection) -> StageWant:
        info = conn.info
        partial: bytes = info.get(_PARTIAL, b"")
        if not partial and conn.peer not in self.trusted:
            raise StageFailed(f"{_describe(conn.peer)} is not in trusted_proxies: it may not send a PROXY header")
        sock = conn.socket
        try:
            while True:
                length = expected_length(partial, self.versions)
                if length is not None and len(partial) == length:
                    header = parse(partial, self.versions)
                    break
                v1 = partial.startswith(b"P") or self.versions == ("v1",)
                if length is not None or (partial and not v1) or self.versions == ("v2",):
                    # Every byte up to the known length, or of v2's 16-byte prefix, is the header's.
                    chunk = sock.recv((length or 16) - len(partial))
                else:
                    # v1 ends at its CRLF, wherever that is: peek, then take the bytes up to it.
                    peeked = sock.recv((V1_MAX_LENGTH if v1 else 16) - len(partial), socket.MSG_PEEK)
                    seen = partial + peeked
                    end = seen.find(b"\r\n", 0, V1_MAX_LENGTH) if seen.startswith(b"P") else -1
                    chunk = sock.recv(end + 2 - len(partial)) if end >= 0 else (
                        sock.recv(len(peeked)) if peeked else b"")
                if not chunk:
                    info.pop(_PARTIAL, None)
                    if partial:
                        raise StageFailed(f"the connection ended inside the PROXY header, after {partial!r}")
                    raise ClosedBeforeSpeaking("the client closed the connection before sending a PROXY header")
                partial += chunk
        except ProxyProtocolError as exc:
            info.pop(_PARTIAL, None)
            raise StageFailed(str(exc)) from None
        except (BlockingIOError, InterruptedError):
            info[_PARTIAL] = partial
            return "read"
        info.pop(_PARTIAL, None)
        header = attrs.evolve(header, proxy=conn.peer)
        info["proxy"] = header
        if header.source is not None:
            conn.peer = header.source
        return "done"


def _describe(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
    return f"peer {peer!r}"


# ---- Writing headers (for tests, and for clients that sit behind no balancer) --------------------

def encode_v1(source: tuple[Any, ...] | None, destination: tuple[Any, ...] | None) -> bytes:
    """A v1 header line for TCP ``source`` -> ``destination``; ``None`` gives ``PROXY UNKNOWN``."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    version = ipaddress.ip_address(source[0]).version
    return (f"PROXY TCP{version} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n").encode("ascii")


def encode_v2(source: Any, destination: Any, *, tlvs: Iterable[tuple[int, bytes]] = (),
              command: Literal["PROXY", "LOCAL"] = "PROXY") -> bytes:
    """A v2 header: ``(host, port)`` addresses (IPv4 or IPv6), Unix paths (str), or None (family unspec)."""
    if source is None or destination is None:
        family, addresses = 0x0, b""
    elif isinstance(source, str):
        family = 0x3
        addresses = os.fsencode(source).ljust(108, b"\0") + os.fsencode(destination).ljust(108, b"\0")
    else:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        family = 0x1 if src.version == 4 else 0x2
        addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    extensions = b"".join(bytes([kind]) + struct.pack("!H", len(value)) + value for kind, value in tlvs)
    body = addresses + extensions
    protocol = 0x1 if family else 0x0
    return V2_SIGNATURE + bytes([0x20 | (1 if command == "PROXY" else 0), family << 4 | protocol]) + \
        struct.pack("!H", len(body)) + body
