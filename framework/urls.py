"""Transport addresses written as URLs: ``tcp://127.0.0.1:8000``, ``unix:///run/app.sock``.

====================  ====================================================
URL                   means
====================  ====================================================
tcp://HOST:PORT       transport ``tcp``, ``address=(HOST, PORT)``
tcp://[::1]:PORT      IPv6 hosts go in brackets
udp://HOST:PORT       transport ``udp``
unix:///PATH          transport ``unix``, ``path=/PATH`` (absolute)
unix:PATH             a relative path
unix-dgram:///PATH    transport ``unix-dgram``
fd://N                transport ``fd``: adopt inherited descriptor N
systemd://[NAME]      transport ``fd``: the socket systemd passed (by name)
====================  ====================================================

Any other scheme is taken as the name of a (plugin) transport whose options
are ``address=(HOST, PORT)`` or ``path=PATH`` in the same way.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Any

from .errors import ConfigError

__all__ = ["format_address", "parse_listener_url", "parse_transport_url"]

_PATH_SCHEMES = frozenset({"unix", "unix-dgram"})
_SCHEME = re.compile(r"^[a-z][a-z0-9_.+-]*$")
MAX_FD = 2**31 - 1  # a C int: what the system calls take


def parse_transport_url(url: str) -> tuple[str, dict[str, Any]]:
    """``"tcp://127.0.0.1:0"`` -> ``("tcp", {"address": ("127.0.0.1", 0)})``."""
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep or not _SCHEME.match(scheme) or (scheme not in _PATH_SCHEMES and rest.isdigit()):
        hint = f" (tcp://{url})" if sep and rest.isdigit() else ""
        raise ConfigError(
            f"transport URL {url!r} has no scheme{hint}; write e.g. tcp://127.0.0.1:8000 or unix:///run/app.sock"
        )
    if scheme == "fd":
        number = rest[2:] if rest.startswith("//") else rest
        if not (number.isascii() and number.isdigit()):
            raise ConfigError(f"transport URL {url!r}: write fd://N with N the inherited descriptor's number")
        if int(number) > MAX_FD:
            raise ConfigError(f"transport URL {url!r}: {number} is too large for a descriptor number "
                              f"(at most {MAX_FD})")
        return "fd", {"fd": int(number)}
    if scheme == "systemd":
        name = rest[2:] if rest.startswith("//") else rest
        return "fd", {"systemd": True, **({"name": name} if name else {})}
    if scheme in _PATH_SCHEMES:
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise ConfigError(f"transport URL {url!r} has no path; write e.g. {scheme}:///run/app.sock")
        return scheme, {"path": path}  # taken literally: no %-decoding, so every path round-trips
    shape = f"must look like {scheme}://HOST:PORT (IPv6: {scheme}://[::1]:PORT)"
    if not rest.startswith("//"):
        raise ConfigError(f"transport URL {url!r} {shape}")
    netloc = rest[2:].partition("/")[0].partition("?")[0].partition("#")[0]
    if "@" in netloc:
        raise ConfigError(f"transport URL {url!r}: a user or password part (user@) has no meaning for a "
                          f"{scheme} transport; write {scheme}://HOST:PORT")
    if netloc.startswith("["):
        host, closed, after = netloc[1:].partition("]")
        if not closed or (after and not after.startswith(":")):
            raise ConfigError(f"transport URL {url!r}: write the IPv6 host in brackets, then :PORT; "
                              f"e.g. {scheme}://[::1]:8000")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"transport URL {url!r}: {host!r} in brackets is not an IPv6 address; "
                              f"brackets are for IPv6 only, e.g. {scheme}://[::1]:8000") from None
    elif "]" in netloc:
        raise ConfigError(f"transport URL {url!r}: ']' without '['; write IPv6 hosts as {scheme}://[::1]:8000")
    elif netloc.count(":") > 1:
        raise ConfigError(f"transport URL {url!r}: IPv6 hosts go in brackets, e.g. {scheme}://[::1]:8000")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        # urlsplit's own words ("Port out of range 0-65535", ...); whatever it is, one clear line.
        if "port" in str(exc).lower():
            raise ConfigError(f"transport URL {url!r}: the port must be a number in 0..65535") from None
        raise ConfigError(f"transport URL {url!r} {shape}: {exc}") from None
    if port is None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"transport URL {url!r} {shape}")
    return scheme, {"address": (parts.hostname or "", port)}


def parse_listener_url(url: object, what: str) -> tuple[str, int]:
    """A side listener's ``tcp://HOST:PORT`` (``what`` names it in errors) -> ``(HOST, PORT)``."""
    problem = f"{what} must be a tcp://HOST:PORT URL with a port in 0..65535 (IPv6: tcp://[::1]:PORT), got {url!r}"
    if not isinstance(url, str) or not url.lower().startswith("tcp://"):
        raise ConfigError(problem)
    try:
        _, options = parse_transport_url(url)
    except ConfigError:
        raise ConfigError(problem) from None
    host, port = options["address"]
    return host, port


def format_address(transport_name: str, address: Any) -> str:
    """The URL of a bound address, as :func:`parse_transport_url` reads it."""
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"{transport_name}://[{host}]:{port}" if ":" in host else f"{transport_name}://{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode(errors="backslashreplace")
    if address.startswith("/"):
        return f"{transport_name}://{address}"
    return f"{transport_name}:{address}"
