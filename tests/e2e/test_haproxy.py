"""Two sockwork servers behind a real HAProxy with ``send-proxy-v2``, TLS terminated by sockwork.

HAProxy (from the distribution's packages; skipped without it) listens on a
socket this test binds on 127.0.0.1:0 and passes to it (``bind fd@N``), so no
port is guessed. Each sockwork server is ``sockwork serve`` in a process of
its own, started and stopped by PID. Checks: a client through HAProxy is
seen with its own address (the ``address`` handler), a server whose
``trusted_proxies`` does not cover HAProxy refuses the connection, and
stopping one server gracefully (SIGTERM) while clients keep going loses no
request: HAProxy retries the refused connections on the other. The
operations test (docs/production.md, "Deploying without downtime") runs two
prefork servers with an agent check through reloads, a resize, an upgrade
in place and a graceful stop under a bounded load of 20,000 requests or
more, and counts every failed request.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from operations_load import Load

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not on PATH: install it from the distribution's packages "
                                               "(apt-get update && apt-get install -y haproxy) to run this test"),
]


@pytest.fixture
def certificates(sockwork_tmp: Path) -> Path:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(sockwork_tmp / "cert.pem"))
    issued.private_key_pem.write_to_path(str(sockwork_tmp / "key.pem"))
    ca.cert_pem.write_to_path(str(sockwork_tmp / "ca.pem"))
    return sockwork_tmp


class Backend:
    """``sockwork serve`` with tls + PROXY v2 and the address handler, in its own process."""

    def __init__(self, directory: Path, name: str, trusted: list[str], settings: str = "") -> None:
        config = directory / f"{name}.toml"
        config.write_text(
            'handler = "address"\n'
            'drain_timeout = 10\n'
            f'{settings}'
            '[dispatcher]\nname = "pool"\noptions = { workers = 4 }\n'
            '[transport]\nurl = "tls://127.0.0.1:0"\n'
            f'options = {{ certfile = "{directory / "cert.pem"}", keyfile = "{directory / "key.pem"}", '
            f'proxy_protocol = "v2", trusted_proxies = {trusted!r} }}\n'.replace("'", '"'))
        self.log = directory / f"{name}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "sockwork", "serve", str(config)],
                                            stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        started = re.match(r"sockwork: serving 'address' on tls://127\.0\.0\.1:(\d+) ", line)
        assert started, line + self.log.read_text()
        self.port = int(started.group(1))
        agent = re.search(r"; agent check on tcp://127\.0\.0\.1:(\d+)", line)
        self.agent_port = int(agent.group(1)) if agent else None

    def stop(self) -> int:
        """SIGTERM (a graceful stop) to this PID; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.process.stdout.close()  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if not self.process.stdout.closed:  # type: ignore[union-attr]
            self.process.stdout.close()  # type: ignore[union-attr]


class HAProxy:
    """haproxy -db on a listening socket this test made; stopped by PID."""

    def __init__(self, directory: Path, backends: list[Backend]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        servers = "\n".join(
            f"    server s{i} 127.0.0.1:{b.port} send-proxy-v2"
            + (f" weight 100 agent-check agent-port {b.agent_port} agent-inter 200ms" if b.agent_port else "")
            for i, b in enumerate(backends))
        config = directory / "haproxy.cfg"
        config.write_text(f"""\
global
    maxconn 512

defaults
    mode tcp
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    retries 5
    option redispatch 1

frontend front
    bind fd@{self.listener.fileno()}
    default_backend sockwork

backend sockwork
    balance roundrobin
{servers}
""")
        check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True,  # type: ignore[list-item]
                               pass_fds=[self.listener.fileno()], timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = directory / "haproxy.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)],  # type: ignore[list-item]
                                            pass_fds=[self.listener.fileno()], stdout=log, stderr=log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.listener.close()


def ask(port: int, cafile: Path) -> tuple[bytes, int]:
    """One request through HAProxy: the server's reply and this client's own port."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        own_port = raw.getsockname()[1]
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            reply = b""
            while chunk := sock.recv(100):
                reply += chunk
    return reply, own_port


@pytest.fixture(params=["plain"])
def running(certificates: Path, request: pytest.FixtureRequest) -> Iterator[tuple[list[Backend], HAProxy]]:
    """Two backends behind HAProxy; with the "agent" param, each with a lame duck and an agent check."""
    settings = 'lame_duck = 1\nagent_check = "tcp://127.0.0.1:0"\n' if request.param == "agent" else ""
    backends: list[Backend] = []
    haproxy = None
    try:
        backends.append(Backend(certificates, "one", ["127.0.0.1"], settings))
        backends.append(Backend(certificates, "two", ["127.0.0.1"], settings))
        haproxy = HAProxy(certificates, backends)
        deadline = time.monotonic() + 20
        while True:  # HAProxy is up once a request goes through
            try:
                ask(haproxy.port, certificates / "ca.pem")
                break
            except OSError:
                if time.monotonic() > deadline or haproxy.process.poll() is not None:
                    raise AssertionError("haproxy did not start: " + haproxy.log.read_text()) from None
                time.sleep(0.05)
        yield backends, haproxy
    finally:
        if haproxy is not None:
            haproxy.stop()
        for backend in backends:
            backend.kill()


def test_clients_are_seen_with_their_own_addresses(running: tuple[list[Backend], HAProxy], certificates: Path) -> None:
    """Through HAProxy (send-proxy-v2) and TLS, the address handler answers with the client's own address and port."""
    backends, haproxy = running
    for _ in range(6):  # round robin: both servers answer
        reply, own_port = ask(haproxy.port, certificates / "ca.pem")
        assert reply == f"127.0.0.1 {own_port}\n".encode()
    for backend in backends:
        assert backend.stop() == 0


def test_a_balancer_outside_trusted_proxies_is_refused(certificates: Path) -> None:
    """A server whose trusted_proxies does not cover HAProxy refuses its connections (logged at INFO)."""
    backend = Backend(certificates, "strict", ["10.0.0.0/8"])
    haproxy = None
    try:
        haproxy = HAProxy(certificates, [backend])
        deadline = time.monotonic() + 20
        while True:
            try:
                ask(haproxy.port, certificates / "ca.pem")
            except (OSError, ssl.SSLError):
                if "is not in trusted_proxies" in backend.log.read_text():
                    break
            else:
                raise AssertionError("a request went through a balancer that is not trusted")
            assert time.monotonic() < deadline, backend.log.read_text() + haproxy.log.read_text()
            time.sleep(0.05)
        assert backend.stop() == 0
    finally:
        if haproxy is not None:
            haproxy.stop()
        backend.kill()


@pytest.mark.parametrize("running", ["plain", "agent"], indirect=True)
def test_a_graceful_stop_behind_haproxy_loses_no_request(
    running: tuple[list[Backend], HAProxy], certificates: Path,
) -> None:
    """While clients keep sending through HAProxy, one server stops on SIGTERM: every request still gets its answer.

    "plain": no lame duck and no health check: the server stops listening at once. It refuses new
    handshakes before closing its listener and accepts those under way, so the close resets no
    connection HAProxy had established; the refused ones HAProxy retries on the other server.
    "agent": the documented recipe (production.md, section 10): the agent says ``drain`` for the
    1 s lame duck, HAProxy stops sending to that server, then it stops listening.
    """
    backends, haproxy = running
    errors: list[BaseException] = []
    answered = [0]
    lock = threading.Lock()
    stop_clients = threading.Event()

    def client() -> None:
        while not stop_clients.is_set():
            try:
                reply, own_port = ask(haproxy.port, certificates / "ca.pem")
                assert reply == f"127.0.0.1 {own_port}\n".encode(), reply
            except BaseException as exc:  # counted: any request without its answer fails the test
                with lock:
                    errors.append(exc)
                return
            with lock:
                answered[0] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while answered[0] < 100 and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped_at = answered[0]
        assert backends[0].stop() == 0  # graceful: the SIGTERM drain
        while answered[0] < stopped_at + 200 and not errors and time.monotonic() < deadline + 30:
            time.sleep(0.01)
    finally:
        stop_clients.set()
        for thread in clients:
            thread.join(30)
    assert not errors, (f"{len(errors)} request(s) lost after {answered[0]} answered: {errors[:3]!r}\n"
                        f"the stopped server's log:\n{backends[0].log.read_text()}\n"
                        f"haproxy:\n{haproxy.log.read_text()}")
    assert answered[0] >= stopped_at + 200
    if backends[0].agent_port is not None:
        assert "lame duck for 1 s" in backends[0].log.read_text()
        assert re.search(r"Server sockwork/s0 enters drain state", haproxy.log.read_text()), haproxy.log.read_text()
    assert backends[1].stop() == 0


OPS_HANDLER = '''from sockwork import message_handler

VERSION = b"{version}"


@message_handler
def handle(line, conn):
    return VERSION + b" " + line
'''


def sockwork_command(directory: Path, *args: str) -> str:
    """``sockwork reload|upgrade|resize|stop ...``: it must succeed; its one line."""
    done = subprocess.run([sys.executable, "-m", "sockwork", *args], capture_output=True, text=True, timeout=90,
                          cwd=directory)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class OpsBackend:
    """``sockwork serve`` with prefork, PROXY v2, a pid file, a lame duck and an agent check, in tmp."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name
        config = directory / f"{name}.toml"
        config.write_text(
            'handler = "opsapp:handle"\nlame_duck = 1\nagent_check = "tcp://127.0.0.1:0"\n'
            f'pid_file = "{name}.pid"\n'
            '[dispatcher]\nname = "prefork"\noptions = { workers = 2, inner = "pool" }\n'
            '[transport]\nurl = "tcp://127.0.0.1:0"\n'
            'options = { proxy_protocol = "v2", trusted_proxies = ["127.0.0.1"] }\n')
        self.log = directory / f"{name}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "sockwork", "serve", config.name], cwd=directory,
                                            stdout=log, stderr=log, text=True)  # stdout: the serving line
        deadline = time.monotonic() + 20
        while not (started := re.search(r"serving 'opsapp:handle' on tcp://127\.0\.0\.1:(\d+) .*; agent check on "
                                        r"tcp://127\.0\.0\.1:(\d+)", self.log.read_text())):
            assert time.monotonic() < deadline and self.process.poll() is None, self.log.read_text()
            time.sleep(0.05)
        self.port, self.agent_port = int(started.group(1)), int(started.group(2))

    def command(self, *args: str) -> str:
        return sockwork_command(self.directory, *args[:-1], args[-1].replace("PIDFILE", f"{self.name}.pid"))

    def pid(self) -> int | None:
        text = (self.directory / f"{self.name}.pid").read_text().strip() if (
            self.directory / f"{self.name}.pid").exists() else ""
        return int(text) if text.isdigit() else None

    def kill(self) -> None:
        """Whatever is left (a failed test): the master named by the pid file, then the one this test started."""
        pid = self.pid()
        if pid is not None and pid != self.process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def test_reloads_an_upgrade_a_resize_and_a_graceful_stop_behind_haproxy_lose_no_request(sockwork_tmp: Path) -> None:
    """Two prefork servers behind HAProxy (agent check, PROXY v2) under a bounded load of at least 20,000
    requests over new and keep-alive connections: 3 reloads with new handler code, a resize up and down, an
    upgrade in place and a graceful stop of one server: 0 failed requests (a request on a reused keep-alive
    connection the server closed is retried once, as HTTP clients do). Driven by the sockwork commands."""
    (sockwork_tmp / "opsapp.py").write_text(OPS_HANDLER.format(version="v1"))
    backends: list[OpsBackend] = []
    haproxy = load = None
    try:
        backends = [OpsBackend(sockwork_tmp, "one"), OpsBackend(sockwork_tmp, "two")]
        haproxy = HAProxy(sockwork_tmp, backends)  # type: ignore[arg-type]  # the same port, agent_port
        load = Load(haproxy.port, clients=6, most=100_000, seconds=80)  # stopped below, at 20,000 or more

        def reached(version: bytes, count: int) -> None:
            deadline = time.monotonic() + 30
            while load.replies.get(version, 0) < count:  # type: ignore[union-attr]
                assert not load.failures and time.monotonic() < deadline, (load.failures[:3], load.replies)  # type: ignore[union-attr]
                time.sleep(0.02)

        def logged(backend: OpsBackend, text: str) -> None:
            deadline = time.monotonic() + 20
            while text not in backend.log.read_text():
                assert time.monotonic() < deadline, backend.log.read_text()
                time.sleep(0.02)

        reached(b"v1", 500)
        for version in ("v2", "v3"):  # reloads 1 and 2, with a resize between them
            (sockwork_tmp / "opsapp.py").write_text(OPS_HANDLER.format(version=version))
            for backend in backends:
                assert backend.command("reload", "PIDFILE").startswith("sockwork reload: sent SIGHUP")
            reached(version.encode(), 500)
            if version == "v2":
                backends[0].command("resize", "+1", "PIDFILE")
                logged(backends[0], "SIGTTIN: resized from 2 to 3 worker(s)")
                backends[0].command("resize", "-1", "PIDFILE")
                logged(backends[0], "SIGTTOU: resized from 3 to 2 worker(s)")
        (sockwork_tmp / "opsapp.py").write_text(OPS_HANDLER.format(version="v4"))
        old = backends[0].pid()
        assert "the new master serves, the old one drained and exited" in backends[0].command("upgrade", "PIDFILE")
        assert backends[0].pid() != old and backends[0].process.wait(10) == 0  # the old master left by itself
        reached(b"v4", 500)  # backend one's new master; backend two still serves v3
        (sockwork_tmp / "opsapp.py").write_text(OPS_HANDLER.format(version="v5"))
        for backend in backends:  # reload 3
            backend.command("reload", "PIDFILE")
        reached(b"v5", 500)
        stopped_at = load.answered
        assert backends[0].command("stop", "PIDFILE").endswith(" stopped\n")  # lame duck: the agent says drain
        assert "Server sockwork/s0 enters drain state" in haproxy.log.read_text()
        while load.answered < max(stopped_at + 1000, 20_000) and not load.failures and not load.stop.is_set():
            time.sleep(0.05)
        load.finish()
        assert load.failures == [], (load.failures[:5], load.replies)
        assert load.answered >= 20_000, load.replies
        assert backends[1].command("stop", "PIDFILE").endswith(" stopped\n")
    finally:
        if load is not None:
            load.finish()
        if haproxy is not None:
            haproxy.stop()
        for backend in backends:
            backend.kill()
