"""A bounded client load for the operations tests (tests/unit/test_operations.py, tests/e2e/test_haproxy.py).

Each client asks ``ping\n`` and reads one line back; the first word of the reply is the handler's
version, so a test sees new code arrive. Half the clients keep their connection alive, half open one
per request. A request on a reused keep-alive connection that the server closed is retried once on a
new connection, as HTTP clients do; every other failure is recorded.
"""

from __future__ import annotations

import socket
import threading
import time


class Load:
    """Bounded load: new connections and keep-alive ones (a request on a reused connection the server
    closed is retried once, as HTTP clients do); every other failure is counted."""

    def __init__(self, port: int, clients: int = 4, most: int = 20_000, seconds: float = 25.0) -> None:
        self.port, self.most, self.until = port, most, time.monotonic() + seconds
        self.replies: dict[bytes, int] = {}
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i % 2 == 0,)) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    @property
    def answered(self) -> int:
        return sum(self.replies.values())

    def _done(self) -> bool:
        return self.stop.is_set() or self.answered >= self.most or time.monotonic() > self.until

    def _client(self, keep_alive: bool) -> None:
        conn: socket.socket | None = None
        while not self._done():
            try:
                if conn is None:
                    conn = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    fresh = True
                else:
                    fresh = False
                reply = self._ask(conn)
                if reply is None and not fresh:  # the server closed a kept-alive connection: retry once
                    conn.close()
                    conn = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    reply = self._ask(conn)
                if reply is None:
                    raise ConnectionError("closed without a reply")
                with self.lock:
                    version = reply.split()[0]
                    self.replies[version] = self.replies.get(version, 0) + 1
                if not keep_alive:
                    conn.close()
                    conn = None
            except OSError as exc:
                with self.lock:
                    self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _ask(self, conn: socket.socket) -> bytes | None:
        try:
            conn.sendall(b"ping\n")
        except (BrokenPipeError, ConnectionResetError):
            return None
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = conn.recv(100)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
