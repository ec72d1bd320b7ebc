"""The ``address`` handler: answers each client with the address the server sees for it.

One line, then the connection ends (for a datagram: one datagram back)::

    203.0.113.7 51234          an IPv4 client: host, space, port
    2001:db8::7 51234          an IPv6 client (no brackets); a dual-stack socket's
                               IPv4 client shows as ::ffff:203.0.113.7
    /run/client.sock           a Unix client bound to a path; "-" for an unnamed one

Behind a load balancer speaking the PROXY protocol it is the real client's
address, so ``printf '' | nc balancer 80`` shows at once whether the
``proxy_protocol`` and ``trusted_proxies`` options are right. The server
speaks first: nothing needs to be sent.
"""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl
from .messages import send_datagram
from .registry import HandlerEntry, NoOptions

__all__ = ["address", "format_address"]


def format_address(client_address: Any) -> str:
    """``"host port"`` for an internet address, the path (or ``-``) for a Unix one."""
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        return f"{client_address[0]} {client_address[1]}"
    if isinstance(client_address, bytes):
        client_address = client_address.decode("utf-8", "backslashreplace")
    return str(client_address) if client_address else "-"


def address(request: Any, client_address: Any, server: Any) -> None:
    """Reply with ``client_address`` as one line (streams) or one datagram."""
    reply = format_address(client_address).encode("utf-8", "backslashreplace") + b"\n"
    if isinstance(request, tuple):
        send_datagram(request[1], reply, client_address)
    else:
        request.sendall(reply)


@hookimpl(trylast=True)
def sockwork_add_handlers() -> list[HandlerEntry]:
    return [
        HandlerEntry(
            "address", lambda options: address, NoOptions,
            description="reply with the client's address as the server sees it (streams and datagrams)",
        ),
    ]
