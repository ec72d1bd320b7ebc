"""The ``tls`` workload's certificates and contexts: a throw-away CA made by ``trustme``, per run.

``trustme`` is in sockwork's ``test`` extra, not a runtime dependency: without it the workload is
skipped and the report says so. No key is kept: the files live in the run's temporary directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import ssl
from typing import Any

CA, CERT, KEY = "ca.pem", "cert.pem", "key.pem"
SERVER_NAME = "localhost"


def tls_unavailable() -> str | None:
    """Why the TLS workload cannot run here, or None."""
    if importlib.util.find_spec("trustme") is None:
        return ("trustme is not installed: the tls workload is skipped "
                "(`pip install trustme`, or sockwork's test extra, to run it).")
    return None


def make_certificates(directory: str) -> None:
    """A CA and a server certificate for ``localhost`` and 127.0.0.1, written into ``directory``."""
    import trustme  # the optional dependency, checked by tls_unavailable()

    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(directory, CA))
    issued = ca.issue_cert(SERVER_NAME, "127.0.0.1")
    issued.private_key_pem.write_to_path(os.path.join(directory, KEY))
    issued.cert_chain_pems[0].write_to_path(os.path.join(directory, CERT))
    for pem in issued.cert_chain_pems[1:]:
        pem.write_to_path(os.path.join(directory, CERT), append=True)


def files(directory: str) -> dict[str, str]:
    """The server's ``certfile`` and ``keyfile`` (the ``tls`` transport's option names)."""
    return {"certfile": os.path.join(directory, CERT), "keyfile": os.path.join(directory, KEY)}


def server_context(directory: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(**files(directory))
    return context


def client_context(directory: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.path.join(directory, CA))


class TLSEchoHandler:
    """The echo protocol as a classic handler that wraps its connection itself (the handshake in the thread).

    What a socketserver program does for TLS: the standard library's and the legacy module's rows run it.
    """

    context: ssl.SSLContext  # set on a subclass made per server process (see ``for_directory``)

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        # A reset, or a client gone mid-handshake, is no failure.
        with contextlib.suppress(OSError), self.context.wrap_socket(request, server_side=True) as sock:
            while chunk := sock.recv(65536):
                sock.sendall(chunk)

    @classmethod
    def for_directory(cls, directory: str) -> type[TLSEchoHandler]:
        return type("TLSEchoHandler", (cls,), {"context": server_context(directory)})
