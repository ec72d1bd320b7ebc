"""The ``tls`` transport: TCP with TLS, the handshake run as a connection stage in the loop.

``tls://HOST:PORT`` (IPv6 hosts in brackets) with ``certfile`` (and
``keyfile``, ``password``) at least. The handshake runs without blocking and
without a worker: a client that stalls it, speaks plaintext, or offers a bad
certificate is closed in the loop, logged at INFO, counted as refused (or
timed out), and never reaches a handler. Handlers then get an
``ssl.SSLSocket``, so classic ``StreamRequestHandler`` classes work
unchanged; ``conn.info["tls"]`` (a :class:`TLSInfo`) says what was
negotiated.

Rule 1: a certificate reload (:meth:`TLSTransport.reload`, SIGHUP under
``sockwork serve``) swaps the context new connections use; connections
already open keep theirs, so nothing is dropped. A reload that fails keeps
the old context.
Rule 2: closing sends close_notify without waiting for the client's, and a
client that closes without one reads as an ordinary end of stream.
Rule 3: a client that goes away while its handler writes is a client that left
(``ClientLeftTLS``, a ``ConnectionResetError``): counted ``disconnected`` with
one INFO line, as over tcp, not a handler failure.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs

# Public pieces only, as a third party's transport would use them (tests/unit/test_tls.py checks).
from sockwork import ClosedBeforeSpeaking, StageFailed, StageInputs, TransportEntry, hookimpl
from sockwork.transports.tcp import (
    TCPStreams,
    address_field,
    ipv6_only_field,
    proxy_protocol_field,
    trusted_proxies_field,
)
from sockwork.validators import boolean, positive_int, secret_field

if TYPE_CHECKING:
    from sockwork import Connection
    from sockwork.connection import StageWant

__all__ = ["ClientLeftTLS", "TLSHandshakeStage", "TLSInfo", "TLSOptions", "TLSTransport", "make_context"]

logger = logging.getLogger("sockwork")

_VERIFY: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_VERSIONS: Final = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_HANDSHAKE_RECORD: Final = 0x16  # the first byte of every TLS ClientHello


def _check_file(optional: bool) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            raise ValueError(f"'{attribute.name}' must be a file path, got {value!r}")
        if not Path(value).is_file():
            raise ValueError(f"'{attribute.name}' file {value!r} does not exist (or is not a file)")
    return check


def _to_str_path(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def _one_of(choices: Any) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise ValueError(f"'{attribute.name}' must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return check


def _to_tuple(value: object) -> object:
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _check_alpn(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, str) and 0 < len(p.encode()) < 256 for p in value):
        raise ValueError(f"'{attribute.name}' must be a list of protocol names such as ['h2', 'http/1.1'], "
                         f"got {value!r}")


def _check_timeout(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"'{attribute.name}' must be a number of seconds > 0, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class TLSOptions:
    """Options of the ``tls`` transport. The certificate files are loaded (and checked) when validated."""

    address: tuple[str, int] = address_field()
    """``(host, port)``, as for ``tcp``; ``tls://[::]:8443`` listens on IPv6 and IPv4."""
    certfile: str = attrs.field(converter=_to_str_path, validator=_check_file(False))
    """PEM file with the server's certificate, followed by its chain (and the key, if ``keyfile`` is none)."""
    keyfile: str | None = attrs.field(default=None, converter=_to_str_path, validator=_check_file(True))
    """PEM file with the private key; none: the key is in ``certfile``."""
    password: str | None = secret_field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str)))
    """The private key's password, if it is encrypted (a secret: ``sockwork check`` shows ``***``)."""
    client_ca: str | None = attrs.field(default=None, converter=_to_str_path, validator=_check_file(True))
    """PEM file of the CAs whose client certificates are accepted (with ``verify_client``)."""
    verify_client: Literal["none", "optional", "required"] = attrs.field(
        default="none", validator=_one_of(tuple(_VERIFY)))
    """Client certificates: ``"none"`` (not asked for), ``"optional"`` (checked if sent),
    ``"required"`` (a client without a valid one is refused). Needs ``client_ca`` unless ``"none"``."""
    minimum_version: Literal["TLSv1.2", "TLSv1.3"] = attrs.field(
        default="TLSv1.2", validator=_one_of(tuple(_VERSIONS)))
    """The oldest protocol version accepted."""
    alpn: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple, validator=_check_alpn)
    """ALPN protocols offered, in order of preference (``["h2", "http/1.1"]``); the
    choice is in ``conn.info["tls"].alpn_protocol``."""
    handshake_timeout: float = attrs.field(default=10.0, validator=_check_timeout)
    """Seconds a client gets to complete the handshake; then it is closed (counted as timed out)."""
    backlog: int = attrs.field(default=1024, validator=positive_int)
    """Connections the kernel may hold before they are accepted."""
    reuse_address: bool = attrs.field(default=True, validator=boolean)
    """SO_REUSEADDR: restart on a port with connections still in TIME_WAIT."""
    reuse_port: bool = attrs.field(default=False, validator=boolean)
    """SO_REUSEPORT: several processes bind the same port."""
    nodelay: bool = attrs.field(default=True, validator=boolean)
    """TCP_NODELAY on connections."""
    ipv6_only: bool = ipv6_only_field()
    """IPV6_V6ONLY for an IPv6 address: off (default), ``[::]`` accepts IPv4 clients too."""
    proxy_protocol: str | None = proxy_protocol_field()
    """Expect a PROXY protocol header (``"v1"``, ``"v2"``, ``"any"``) before the TLS handshake."""
    trusted_proxies: tuple[str, ...] = trusted_proxies_field()
    """Addresses or networks allowed to send a PROXY header; required with ``proxy_protocol``."""

    def __attrs_post_init__(self) -> None:
        if self.verify_client != "none" and self.client_ca is None:
            raise ValueError(f"'verify_client' {self.verify_client!r} needs 'client_ca': the CAs client "
                             "certificates are checked against")
        make_context(self)  # a key that does not match, a wrong password: found now, not at the first client


class ClientLeftTLS(ssl.SSLEOFError, ConnectionResetError):
    """The client closed the connection under a write: still an ``ssl.SSLEOFError`` for code that catches
    that, and a ``ConnectionResetError`` like the same client over tcp (so the request counts ``disconnected``)."""


class _TLSSocket(ssl.SSLSocket):
    """The handlers' socket: an ``SSLEOFError`` from a write is the client leaving (rule 3)."""

    def send(self, data: Any, flags: int = 0) -> int:  # sendall() sends through this
        try:
            return super().send(data, flags)
        except ssl.SSLEOFError as exc:
            raise ClientLeftTLS(*exc.args) from exc


def make_context(options: TLSOptions) -> ssl.SSLContext:
    """A server-side SSLContext for ``options``, loading the files anew (a reload calls it again)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslsocket_class = _TLSSocket
    context.minimum_version = _VERSIONS[options.minimum_version]
    # A client that closes without close_notify reads as end of stream (rule 2), not as an error.
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    # Renegotiation would make a read wait for a handshake the loop does not know about.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        context.load_cert_chain(options.certfile, options.keyfile, options.password)
    except ssl.SSLError as exc:
        raise ValueError(f"couldn't load the certificate {options.certfile!r}"
                         f"{f' with the key {options.keyfile!r}' if options.keyfile else ''}: {_reason(exc)}; "
                         "is the key the certificate's (and the password right)?") from None
    except OSError as exc:
        raise ValueError(f"couldn't read the certificate or key: {exc}") from None
    if options.client_ca is not None:
        try:
            context.load_verify_locations(cafile=options.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"couldn't load 'client_ca' {options.client_ca!r}: {_reason(exc)}") from None
    context.verify_mode = _VERIFY[options.verify_client]
    if options.alpn:
        context.set_alpn_protocols(list(options.alpn))
    return context


@final
@attrs.frozen(kw_only=True)
class TLSInfo:
    """What a TLS handshake settled, in ``conn.info["tls"]``.

    ``peer_certificate`` is the client's certificate as ``ssl`` decodes it
    (a dict; None when none was sent or verification is off, in which case
    ``peer_certificate_der`` may still hold the raw bytes).
    """

    version: str | None
    """``"TLSv1.3"``, ``"TLSv1.2"``."""
    cipher: str | None
    """The cipher suite's name, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
    alpn_protocol: str | None
    """The ALPN protocol chosen, or None."""
    server_name: str | None
    """The host name the client asked for (SNI), or None."""
    peer_certificate: dict[str, Any] | None
    peer_certificate_der: bytes | None


@final
class TLSHandshakeStage:
    """The server side of a TLS handshake, one non-blocking step per call.

    The first call peeks at the client's first byte: anything but a TLS
    handshake record is refused at once as plaintext (with what it sent).
    Then it wraps ``conn.socket`` (``do_handshake_on_connect=False``) with the
    transport's current context and drives ``do_handshake()``: "read" or
    "write" while OpenSSL wants them, "done" with ``conn.info["tls"]`` set.
    """

    replaces_socket = True  # the TLS session lives in the ssl.SSLSocket: a bare descriptor cannot carry it

    name = "TLS handshake"

    def __init__(self, transport: TLSTransport, timeout: float) -> None:
        self.transport = transport
        self.timeout: float | None = timeout

    def advance(self, conn: Connection) -> StageWant:
        sock = conn.socket
        if not isinstance(sock, ssl.SSLSocket):
            try:
                first = sock.recv(8, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return "read"
            if not first:
                raise ClosedBeforeSpeaking("the client closed the connection before the TLS handshake")
            if first[0] != _HANDSHAKE_RECORD:
                raise StageFailed(f"not a TLS client: it sent {first!r}... (plaintext on a TLS port?)")
            sock = self.transport.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            conn.socket = sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            return "read"
        except ssl.SSLWantWriteError:
            return "write"
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise ConnectionAbortedError("the client closed the connection during the TLS handshake") from None
        except ssl.SSLError as exc:
            raise StageFailed(f"TLS handshake failed: {_reason(exc)}") from None
        certificate_der = sock.getpeercert(binary_form=True)
        cipher = sock.cipher()
        conn.info["tls"] = TLSInfo(
            version=sock.version(), cipher=cipher[0] if cipher else None,
            alpn_protocol=sock.selected_alpn_protocol(),
            server_name=self.transport.server_names.pop(sock, None),
            peer_certificate=sock.getpeercert() or None if certificate_der else None,
            peer_certificate_der=certificate_der,
        )
        return "done"


_REASONS: Final = {
    "HTTP_REQUEST": "the client spoke plain HTTP to a TLS port",
    "WRONG_VERSION_NUMBER": "the client did not speak TLS (or an unsupported version)",
    "UNSUPPORTED_PROTOCOL": "the client offered only protocol versions below minimum_version",
    "NO_SHARED_CIPHER": "no cipher suite in common with the client",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate, and one is required",
    "CERTIFICATE_VERIFY_FAILED": "the client's certificate did not verify against client_ca",
    "NO_APPLICATION_PROTOCOL": "no ALPN protocol in common with the client",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the server's certificate (alert: unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected the server's certificate (alert: bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client rejected the server's certificate (alert: certificate unknown)",
}


def _reason(exc: BaseException) -> str:
    """One readable line for an SSLError: what it means, then OpenSSL's reason code."""
    reason = getattr(exc, "reason", None)
    detail = getattr(exc, "verify_message", None)
    meaning = _REASONS.get(reason or "")
    if meaning is None:
        words = str(exc.args[1] if len(exc.args) > 1 else exc)
        meaning = re.sub(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] |\s*\(_ssl\.c:\d+\)$", "", words)
    return f"{meaning}{f': {detail}' if detail else ''}{f' ({reason})' if reason else ''}"


@final
class TLSTransport(TCPStreams):
    """Accepts TCP connections and runs TLS on them; a request is the ``ssl.SSLSocket``."""

    name = "tls"

    def __init__(self, options: TLSOptions) -> None:
        super().__init__(options, stages=[TLSHandshakeStage(self, options.handshake_timeout)])  # after PROXY
        # The host name each client asked for (SNI), by its socket, until its handshake is done
        # (the loop's thread only); a socket that never finishes drops its entry when it goes.
        self.server_names: weakref.WeakKeyDictionary[ssl.SSLSocket, str | None] = weakref.WeakKeyDictionary()
        self.context = self._new_context()

    def _new_context(self) -> ssl.SSLContext:
        context = make_context(self.options)
        context.sni_callback = self._remember_server_name
        return context

    def _remember_server_name(self, sock: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        """OpenSSL's SNI callback, during the handshake: the name goes into TLSInfo when it is done."""
        self.server_names[sock] = server_name

    def reload(self) -> None:
        """Load the certificate, key and client CAs from their files again (after a renewal, say).

        New connections use them at once; connections already open keep the
        old ones until they end, so nothing is dropped. If the files cannot
        be loaded, this raises ``ValueError`` and the old ones stay in use.
        """
        self.context = self._new_context()
        logger.info("tls transport: reloaded the certificate from %s", self.options.certfile)

    def close_request(self, request: socket.socket) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                # close_notify, without waiting for the client's (rule 2): it may never send one.
                request.settimeout(0)
                request.unwrap()
            except (OSError, ValueError):
                # SSLWantReadError: ours is sent, theirs is not here yet. ValueError: no TLS left on it
                # (unwrapped already). Other OSErrors: the peer is gone, or the handshake never ended.
                pass
        super().close_request(request)


def _loopback(directory: Path) -> TLSOptions:
    """A certificate for 127.0.0.1 made with trustme (the test extra), its CA written next to it."""
    import trustme  # only for tests: the conformance kit skips the tls transport without it

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    return TLSOptions(address=("127.0.0.1", 0), certfile=str(directory / "server.pem"))


def _loopback_client(sock: socket.socket, options: Any) -> Any:
    """A TLS client on a socket connected to a loopback tls server made by ``_loopback``."""
    from sockwork.testing import TLSClient  # start-up cost: the test helpers load only when a test needs a client

    context = ssl.create_default_context(cafile=str(Path(options.certfile).parent / "ca.pem"))
    return TLSClient(sock, context, server_hostname="127.0.0.1")


@hookimpl(trylast=True)
def sockwork_add_transports() -> list[TransportEntry]:
    return [
        TransportEntry(
            "tls", TLSTransport, TLSOptions,
            description="TCP with TLS (handshake in the loop); a request is an ssl.SSLSocket",
            loopback_options=_loopback,
            loopback_client=_loopback_client,
            # A TLS record header, then nothing (a stalled handshake); plain HTTP (refused as plaintext).
            stage_inputs=StageInputs(partial=b"\x16\x03\x01", refused=b"GET / HTTP/1.0\r\n\r\n"),
            schemes=("tls",),  # tls://HOST:PORT, read like tcp:// (address); IPv6 in brackets
        )
    ]
