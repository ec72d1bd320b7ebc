"""What is measured: the workloads, the implementations that serve them, and the bytes a client sends.

Each workload is one line. "handler" is what sockwork's own rows serve (a registered name or a
"module:attribute" reference): switching a workload to another handler is a change of that word.
"protocol" is what the bytes mean, for the clients and for the rows that are not sockwork
(echo: the request comes back; lines: each line comes back as "<n>: <line>").
"limits": "off" runs sockwork without idle_timeout (socketserver has none), "defaults" as `sockwork serve` does.
"client": "threads" (a thread per client) or "mux" (clients multiplexed on a selector, for many of them).
"tls": the connections speak TLS (certificates made per run, see ``tls``).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import Any

from .bare import BARE, bare_unsupported

_ECHO = {"protocol": "echo", "handler": "echo"}
WORKLOADS: dict[str, dict[str, Any]] = {
    "short": {"kind": "tcp", "clients": 8, "size": 64, "persistent": False, **_ECHO, "limits": "off",
              "client": "threads"},
    "persistent": {"kind": "tcp", "clients": 32, "size": 64, "persistent": True, **_ECHO, "limits": "off",
                   "client": "threads"},
    "large": {"kind": "tcp", "clients": 4, "size": 65536, "persistent": True, **_ECHO, "limits": "off",
              "client": "threads"},
    "udp": {"kind": "udp", "clients": 8, "size": 64, "persistent": True, **_ECHO, "limits": "off",
            "client": "threads"},
    "unix": {"kind": "unix", "clients": 8, "size": 64, "persistent": True, **_ECHO, "limits": "off",
             "client": "threads"},
    "many": {"kind": "tcp", "clients": 1000, "size": 64, "persistent": True, **_ECHO, "limits": "defaults",
             "client": "mux"},
    "lines": {"kind": "tcp", "clients": 1000, "size": 64, "persistent": True, "protocol": "lines",
              "handler": "lines", "limits": "defaults", "client": "mux"},
    "silent": {"kind": "tcp", "clients": 16, "size": 64, "persistent": True, **_ECHO, "limits": "defaults",
               "client": "mux", "silent": 2000, "trickle": 100, "trickle_every": 2.0},
    "tls": {"kind": "tcp", "tls": True, "clients": 32, "size": 64, "persistent": True, **_ECHO, "limits": "off",
            "client": "threads"},
    "http10": {"kind": "http", "clients": 16, "size": 1024, "persistent": False, "protocol": "HTTP/1.0"},
    "http11": {"kind": "http", "clients": 16, "size": 1024, "persistent": True, "protocol": "HTTP/1.1"},
}
HTTP_IMPLEMENTATIONS = ("stdlib", "legacy")  # http.server runs on socketserver classes only

# Implementations: the reference first. "legacy" is sockwork.socketserver's Threading* class; the
# "bare" rows are the floor of a pool of Python threads (see ``bare``); the event-loop peers are
# asyncio's streams on asyncio's own loop and on uvloop's. Any other name is a sockwork dispatcher.
PEERS = {"asyncio-streams": None, "uvloop-streams": "uvloop"}  # name -> the module it needs beyond the stdlib
IMPLEMENTATIONS = ("stdlib", "legacy", "bare-threads", "thread", "pool", "prefork", "asyncio", "asyncio-streams",
                   "uvloop-streams")
CLASSIC = ("stdlib", "legacy")


def unavailable(implementation: str) -> str | None:
    """Why an event-loop peer cannot run here, or None."""
    module = PEERS.get(implementation)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"{implementation}: {module} is not installed (`pip install {module}` to compare with it)."


def not_applicable(implementation: str, spec: dict[str, Any]) -> str | None:
    """Why ``implementation`` does not run ``spec`` (said in the report), or None."""
    if implementation in BARE:
        return bare_unsupported(implementation, spec)
    return None  # a sockwork dispatcher that refuses the workload's transport says so when its server starts


def payload(spec: dict[str, Any]) -> bytes:
    """The request a client of ``spec`` sends, again and again."""
    if spec["protocol"] == "lines":
        return os.urandom(spec["size"]).hex().encode()[: spec["size"] - 1] + b"\n"
    return os.urandom(spec["size"])


def expected(spec: dict[str, Any], payload: bytes, number: int) -> bytes:
    """The reply to the ``number``-th request (from 1) on one connection."""
    return b"%d: %s" % (number, payload) if spec["protocol"] == "lines" else payload


def socket_for(spec: dict[str, Any]) -> socket.socket:
    """A client socket for ``spec``'s transport (TCP_NODELAY on TCP)."""
    if spec["kind"] == "unix":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if spec["kind"] == "udp" else socket.SOCK_STREAM)
    if spec["kind"] == "tcp":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def target(spec: dict[str, Any], address: Any) -> Any:
    """The address to connect to, from what the server printed (JSON: a list for a tuple)."""
    return address if spec["kind"] == "unix" else tuple(address)
