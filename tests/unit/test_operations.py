"""Operations: side listeners, health answers, lame duck, pid file, and a listener closed without resets."""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from operations_load import Load

from sockwork import Server
from sockwork._side_listener import MAX_HEAD, SideListener, http_answer, http_response
from sockwork.errors import BindError, ConfigError
from sockwork.transports._handshakes import drop_new_handshakes, half_open

pytestmark = pytest.mark.timeout(30)


class FakeLoop:
    """add_reader/remove_reader/call_later over a selector, run by the test."""

    def __init__(self) -> None:
        import selectors

        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, object]] = []

    def add_reader(self, fd: int, callback: object) -> None:
        import selectors

        self.selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        self.selector.unregister(fd)

    def call_later(self, delay: float, callback: object) -> None:
        self.timers.append((time.monotonic() + delay, callback))

    def run(self, until: float) -> None:
        end = time.monotonic() + until
        while time.monotonic() < end:
            for key, _ in self.selector.select(0.01):
                key.data()
            now = time.monotonic()
            due = [t for t in self.timers if t[0] <= now]
            self.timers = [t for t in self.timers if t[0] > now]
            for _, callback in due:
                callback()  # type: ignore[operator]

    def close(self) -> None:
        self.selector.close()


@pytest.fixture
def loop() -> Iterator[FakeLoop]:
    fake = FakeLoop()
    yield fake
    fake.close()


def ask_in_thread(port: int, send: bytes) -> tuple[threading.Thread, list[bytes]]:
    replies: list[bytes] = []

    def ask() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            if send:
                conn.sendall(send)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            replies.append(data)

    thread = threading.Thread(target=ask)
    thread.start()
    return thread, replies


def test_a_side_listener_speaking_first_answers_each_connection_once(loop: FakeLoop) -> None:
    """A listener that does not read a request answers at accept and closes (the agent check's shape)."""
    listener = SideListener("agent check", ("127.0.0.1", 0), lambda request: b"up\n", reads_request=False)
    listener.open()
    try:
        listener.attach(loop)
        thread, replies = ask_in_thread(listener.address[1], b"")
        while thread.is_alive():
            loop.run(0.05)
        thread.join()
        assert replies == [b"up\n"]
        assert listener.url == f"tcp://127.0.0.1:{listener.address[1]}"
    finally:
        listener.close()


def test_an_http_side_listener_routes_get_and_head_and_refuses_the_rest(loop: FakeLoop) -> None:
    """GET/HEAD on a known path get the route's answer; others 404/405/400; a large body goes out whole."""
    big = b"x" * 3_000_000  # larger than a socket buffer: sent in pieces from loop timers
    answer = http_answer({"/big": lambda: (200, "text/plain", big), "/readyz": lambda: (503, "text/plain", b"no\n")})
    listener = SideListener("health", ("127.0.0.1", 0), answer, reads_request=True)
    listener.open()
    try:
        listener.attach(loop)
        port = listener.address[1]
        asked = [ask_in_thread(port, request) for request in (
            b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n",
            b"HEAD /readyz HTTP/1.1\r\n\r\n", b"POST /readyz HTTP/1.1\r\n\r\n", b"GET /nope HTTP/1.1\r\n\r\n",
            b"nonsense\r\n\r\n", b"GET /readyz HTTP/1.1\r\n".ljust(MAX_HEAD, b"x"))]
        while any(thread.is_alive() for thread, _ in asked):
            loop.run(0.05)
        replies = [replies[0] if replies else b"" for thread, replies in asked]
        assert replies[0] == http_response(200, "text/plain", big)
        assert replies[1] == http_response(503, "text/plain", b"no\n")
        assert replies[2] == http_response(503, "text/plain", b"no\n")[: -len(b"no\n")]
        assert replies[3].startswith(b"HTTP/1.1 405 ")
        assert replies[4].startswith(b"HTTP/1.1 404 ") and b"/readyz" in replies[4]
        assert replies[5].startswith(b"HTTP/1.1 400 ")
        assert replies[6] == http_response(400, "text/plain", b"request head too long\n")
    finally:
        listener.close()


def test_a_silent_probe_is_closed_at_its_timeout_and_others_are_answered_meanwhile(
    loop: FakeLoop, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A probe that sends nothing holds nothing: others are answered, and it is closed at PROBE_TIMEOUT."""
    monkeypatch.setattr("sockwork._side_listener.PROBE_TIMEOUT", 0.3)
    listener = SideListener("health", ("127.0.0.1", 0), http_answer({"/healthz": lambda: (200, "text/plain", b"")}),
                            reads_request=True)
    listener.open()
    try:
        listener.attach(loop)
        with socket.create_connection(listener.address, timeout=5) as silent:
            thread, replies = ask_in_thread(listener.address[1], b"GET /healthz HTTP/1.1\r\n\r\n")
            while thread.is_alive():
                loop.run(0.05)
            assert replies[0].startswith(b"HTTP/1.1 200 ")
            loop.run(0.5)
            assert silent.recv(10) == b""  # closed by the listener
    finally:
        listener.close()


def test_a_side_listener_that_cannot_bind_says_which_and_where() -> None:
    """The bind error names the listener and the address."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        listener = SideListener("agent check", ("127.0.0.1", port), lambda request: b"", reads_request=False)
        with pytest.raises(BindError, match=rf"couldn't bind the agent check listener to 127\.0\.0\.1:{port}: "):
            listener.open()


def agent(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.recv(100)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_servers_health_follows_its_phase() -> None:
    """serving: up NN% and ready; lame duck: drain and 503; draining: maint and 503; /healthz stays 200."""
    server = Server(transport="tcp://127.0.0.1:0", handler="echo", dispatcher="pool",
                    agent_check="tcp://127.0.0.1:0", health=("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        agent_port = server.side_listeners["agent check"].address[1]
        health_port = server.side_listeners["health"].address[1]
        assert re.fullmatch(rb"up \d+%\n", agent(agent_port))
        assert http_get(health_port, "/readyz") == (200, b"ready\n")
        server.lifecycle.phase = "lame duck"
        assert agent(agent_port) == b"drain\n"
        assert http_get(health_port, "/readyz") == (503, b"lame duck\n")
        server.lifecycle.phase = "draining"
        assert agent(agent_port) == b"maint\n"
        assert http_get(health_port, "/readyz") == (503, b"draining\n")
        assert http_get(health_port, "/healthz") == (200, b"alive\n")
    finally:
        server.shutdown()
        thread.join()
        server.close()
    with pytest.raises(ConnectionRefusedError):
        agent(agent_port)  # closed with the server


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lame_duck": -1}, "'lame_duck' must be a finite number of seconds >= 0 (0: off), got -1"),
    ({"agent_check": "udp://127.0.0.1:1"}, "'agent_check' must be a tcp://HOST:PORT URL"),
    ({"health": "tcp://127.0.0.1"}, "'health' must be a tcp://HOST:PORT URL with a port in 0..65535 (IPv6: "
                                    "tcp://[::1]:PORT), got 'tcp://127.0.0.1'"),
])
def test_bad_operations_arguments_are_refused_before_binding(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Server(transport="tcp://127.0.0.1:0", handler="echo", **kwargs)  # type: ignore[arg-type]


def test_a_listener_dropping_new_handshakes_keeps_the_connections_it_completed() -> None:
    """With the SYN filter attached, a queued connection is still accepted and served; a new one is not started."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as queued:
            assert drop_new_handshakes(listener)
            late = socket.socket()
            late.setblocking(False)
            try:
                assert late.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS
                _, writable, _ = select.select([], [late], [], 0.3)
                assert not writable  # its SYN was dropped: no handshake
                accepted, _ = listener.accept()
                with accepted:
                    queued.sendall(b"ping")
                    assert accepted.recv(4) == b"ping"
            finally:
                late.close()


def test_half_open_counts_syn_recv_entries_for_the_port(tmp_path: Path) -> None:
    """SYN_RECV (03) lines whose local port is the listener's are counted, in every table given."""
    heading = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (tmp_path / "tcp").write_text(heading
        + "   0: 0100007F:1F90 0100007F:C350 03 00000000:00000000 00:00000000 00000000     0        0 0\n"
        + "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
        + "   2: 0100007F:1F91 0100007F:C351 03 00000000:00000000 00:00000000 00000000     0        0 0\n")
    (tmp_path / "tcp6").write_text(heading
        + "   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C352 03 0:0 0:0 0 0 0 0\n")
    assert half_open(0x1F90, (str(tmp_path / "tcp"), str(tmp_path / "tcp6"), str(tmp_path / "missing"))) == 2
    assert half_open(0x1F92, (str(tmp_path / "tcp"),)) == 0


def test_a_handshake_completing_while_the_listener_closes_is_refused_not_reset() -> None:
    """A client whose SYN arrives between the last accept and the close is refused (retryable), never reset.

    The window is widened on purpose: the test connects from inside it.
    """
    server = Server(transport="tcp://127.0.0.1:0", handler="echo", dispatcher="pool")
    address = server.address
    late = socket.socket()
    late.setblocking(False)
    stop_listening = server.loop.stop_listening

    def in_the_window() -> None:
        late.connect_ex(address)
        time.sleep(0.1)  # without the filter, the handshake completes now and the close resets it
        stop_listening()

    server.loop.stop_listening = in_the_window  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        server.wait_serving(5)
        server.shutdown()
        thread.join()
        server.close()
        _, writable, _ = select.select([], [late], [], 5)  # the SYN is sent again after 1 s, to a closed port
        assert writable
        assert late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    finally:
        late.close()


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sockwork", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def end(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
    process.wait()
    process.stdout.close()  # type: ignore[union-attr]
    err = process.stderr.read()  # type: ignore[union-attr]
    process.stderr.close()  # type: ignore[union-attr]
    return err


def echo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"hello\n")
        conn.shutdown(socket.SHUT_WR)
        return conn.recv(100)


@pytest.mark.parametrize("dispatcher", ["pool", "prefork"])
def test_sigterm_with_a_lame_duck_keeps_serving_while_the_agent_says_drain(dispatcher: str, tmp_path: Path) -> None:
    """sockwork serve --lame-duck: after SIGTERM it serves on, says drain, then refuses; the pid file goes."""
    pid_file = tmp_path / "server.pid"
    process = start("--transport", "tcp://127.0.0.1:0", "--dispatcher", dispatcher, "--workers", "2",
                    "--lame-duck", "1.5", "--agent-check", "tcp://127.0.0.1:0", "--pid-file", str(pid_file))
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        started = re.match(r"sockwork: serving 'echo' on tcp://127\.0\.0\.1:(\d+) .*\(pid (\d+)\); "
                           r"agent check on tcp://127\.0\.0\.1:(\d+)\n", line)
        assert started, line + end(process)
        port, agent_port = int(started.group(1)), int(started.group(3))
        assert pid_file.read_text() == f"{process.pid}\n"
        assert echo(port) == b"hello\n"
        assert agent(agent_port).startswith(b"up")
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while agent(agent_port) != b"drain\n":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert echo(port) == b"hello\n"  # still serving in the lame duck
        assert process.wait(10) == 0
        with pytest.raises(ConnectionRefusedError):
            echo(port)
        assert not pid_file.exists()
    finally:
        err = end(process)
    assert "stopping on SIGTERM: lame duck for 1.5 s (serving; health checks say draining), then draining" in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--lame-duck", "soon"], "sockwork: command line: lame_duck: must be a finite number of seconds >= 0 "
                              "(0: off), got 'soon'"),
    (["--health", "http://127.0.0.1:8080"], "sockwork: command line: health: must be a tcp://HOST:PORT URL"),
    (["--agent-check", "tcp://127.0.0.1:99999"], "sockwork: command line: agent_check: must be a tcp://HOST:PORT "
                                                 "URL with a port in 0..65535"),
    (["--pid-file", "/nonexistent-dir/x.pid"], "sockwork: pid_file: cannot write '/nonexistent-dir/x.pid': "),
])
def test_bad_operations_flags_are_one_line_and_exit_2(flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "sockwork", "serve", "--transport", "tcp://127.0.0.1:0", *flags],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


HANDLER = '''from sockwork import message_handler

VERSION = b"{version}"


@message_handler
def handle(line, conn):
    return VERSION + b" " + line
'''


def write_app(directory: Path, version: str, dispatcher: str, extra: str = "") -> Path:
    (directory / "reloadable_app.py").write_text(HANDLER.format(version=version))
    config = directory / "server.toml"
    options = "{ workers = 2, inner = \"pool\" }" if dispatcher == "prefork" else "{ workers = 4 }"
    config.write_text(f'transport = "tcp://127.0.0.1:0"\nhandler = "reloadable_app:handle"\n{extra}'
                      f'[dispatcher]\nname = "{dispatcher}"\noptions = {options}\n')
    return config


def wait_for(predicate: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def serve_app(directory: Path, config: Path) -> tuple[subprocess.Popen[str], int, list[str]]:
    """sockwork serve CONFIG from ``directory``; its port, and a list that collects its log lines."""
    process = subprocess.Popen([sys.executable, "-m", "sockwork", "serve", config.name], cwd=directory,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # type: ignore[union-attr]
    started = re.search(r" on tcp://127\.0\.0\.1:(\d+) ", line)
    assert started, line + end(process)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(iter(process.stderr.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    return process, int(started.group(1)), log


def logged(log: list[str], text: str) -> bool:
    return any(text in line for line in list(log))


def test_prefork_reloads_new_code_resizes_and_refuses_a_broken_config_without_failing_a_request(
    tmp_path: Path,
) -> None:
    """Under load (new and keep-alive connections): SIGHUP serves new handler code, SIGTTIN/SIGTTOU add and
    remove a worker, a broken config and a broken module are refused in one line each; 0 failed requests."""
    config = write_app(tmp_path, "v1", "prefork")
    process, port, log = serve_app(tmp_path, config)
    load = None
    try:
        load = Load(port)
        wait_for(lambda: load.replies.get(b"v1", 0) >= 200)
        write_app(tmp_path, "v2", "prefork")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: load.replies.get(b"v2", 0) >= 200)
        assert logged(log, "SIGHUP: read server.toml again: no setting changed; the tcp transport has nothing to "
                           "reload; started 2 new prefork worker(s) with it (the handler's code imported afresh)")
        process.send_signal(signal.SIGTTIN)
        wait_for(lambda: logged(log, "SIGTTIN: resized from 2 to 3 worker(s)"))
        process.send_signal(signal.SIGTTOU)
        wait_for(lambda: logged(log, "SIGTTOU: resized from 3 to 2 worker(s)"))
        wait_for(lambda: sum("retired: drained and stopped" in line for line in list(log)) >= 3)
        (tmp_path / "reloadable_app.py").write_text("this is not python\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: logged(log, "SIGHUP: refused, still serving the config loaded before: 1 problem in "
                                     "server.toml: handler.ref: "))
        write_app(tmp_path, "v3", "prefork", extra="drain_timeout = -1\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: logged(log, "SIGHUP: refused, still serving the config loaded before: 1 problem in "
                                     "server.toml: drain_timeout: must be a finite number of seconds >= 0"))
        before = load.replies.get(b"v2", 0)
        wait_for(lambda: load.replies.get(b"v2", 0) >= before + 200)
        load.finish()
        assert load.failures == []
        assert set(load.replies) == {b"v1", b"v2"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if load is not None:
            load.finish()
        end(process)


def test_reload_without_prefork_applies_what_it_can_and_names_the_rest(tmp_path: Path) -> None:
    """pool: a new drain_timeout applies in place; a new handler and limits are named as needing a restart."""
    config = write_app(tmp_path, "v1", "pool")
    process, port, log = serve_app(tmp_path, config)
    try:
        write_app(tmp_path, "v2", "pool", extra='drain_timeout = 3\nhandler = "echo"\n'.replace(
            'handler = "echo"\n', "") + "limits = { idle_timeout = 5 }\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: logged(log, "SIGHUP: read server.toml again: changed and applied: drain_timeout; changed, "
                                     "and applied only by a restart or an upgrade (SIGUSR2): limits; the tcp "
                                     "transport has nothing to reload; the handler's code is the one loaded at "
                                     "start (new code takes a restart or an upgrade)"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"x\n")
            assert conn.recv(100) == b"v1 x\n"
        process.send_signal(signal.SIGTTIN)
        wait_for(lambda: logged(log, "SIGTTIN: not resized: the PoolDispatcher cannot change its number of workers"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        end(process)


def test_fresh_handler_modules_imports_afresh_and_puts_the_old_ones_back_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside the block the handler's package imports anew; a block that raises leaves sys.modules as before."""
    import importlib

    from sockwork._operations import fresh_handler_modules

    package = tmp_path / "fresh_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("VERSION = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        old = importlib.import_module("fresh_pkg.mod")
        (package / "mod.py").write_text("VERSION = 22\n")  # another size: the cached bytecode is stale
        with pytest.raises(RuntimeError), fresh_handler_modules("fresh_pkg.mod:VERSION"):
            assert importlib.import_module("fresh_pkg.mod").VERSION == 22
            raise RuntimeError("refused")
        assert sys.modules["fresh_pkg.mod"] is old
        with fresh_handler_modules("fresh_pkg.mod:VERSION"):
            new = importlib.import_module("fresh_pkg.mod")
        assert new is not old and new.VERSION == 22 and sys.modules["fresh_pkg.mod"] is new
    finally:
        for name in [name for name in sys.modules if name.startswith("fresh_pkg")]:
            del sys.modules[name]


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper that is not this test counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sigusr2_upgrades_in_place_under_load_and_the_old_master_leaves_by_itself(tmp_path: Path) -> None:
    """SIGUSR2: a new master (new code) takes over the listener and the agent port, rewrites the pid file;
    the old one drains and exits 0 by itself; 0 failed requests throughout."""
    config = write_app(tmp_path, "v1", "prefork", extra='pid_file = "server.pid"\nagent_check = "tcp://127.0.0.1:0"\n')
    process, port, log = serve_app(tmp_path, config)
    load = new_pid = None
    try:
        load = Load(port)
        wait_for(lambda: load.replies.get(b"v1", 0) >= 200)
        write_app(tmp_path, "v2", "prefork", extra='pid_file = "server.pid"\nagent_check = "tcp://127.0.0.1:0"\n')
        process.send_signal(signal.SIGUSR2)
        line = process.stdout.readline()  # type: ignore[union-attr]  # the new master's, on the same stdout
        started = re.search(r" on tcp://127\.0\.0\.1:(\d+) .*\(pid (\d+)\); agent check on tcp://127\.0\.0\.1:(\d+)",
                            line)
        assert started and int(started.group(1)) == port, line
        new_pid = int(started.group(2))
        assert process.wait(20) == 0  # the old master left by itself
        assert (tmp_path / "server.pid").read_text() == f"{new_pid}\n"
        wait_for(lambda: load.replies.get(b"v2", 0) >= 200)
        assert agent(int(started.group(3))).startswith(b"up")
        load.finish()
        assert load.failures == []
        assert logged(log, f"SIGUSR2: upgraded: the new master (pid {new_pid}) serves; this one "
                           f"(pid {process.pid}) drains and exits")
    finally:
        if load is not None:
            load.finish()
        if new_pid is not None:
            os.kill(new_pid, signal.SIGTERM)
            wait_for(lambda: gone(new_pid))
        end(process)
    assert not (tmp_path / "server.pid").exists()  # removed by the new master, whose pid it held


def test_an_upgrade_whose_new_master_fails_leaves_the_old_one_serving(tmp_path: Path) -> None:
    """A new master that cannot start (its config no longer checks) exits; the old one logs why and serves on."""
    config = write_app(tmp_path, "v1", "pool", extra='pid_file = "server.pid"\n')
    process, port, log = serve_app(tmp_path, config)
    try:
        config.write_text(config.read_text() + "unknown_setting = 1\n")
        process.send_signal(signal.SIGUSR2)
        wait_for(lambda: logged(log, "SIGUSR2: upgrade failed: the new master (pid "))
        assert logged(log, "exited with status 2 before serving; still serving")
        assert logged(log, "dispatcher.unknown_setting: unknown key")  # the new master's own reason, same stderr
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"x\n")
            assert conn.recv(100) == b"v1 x\n"
        assert (tmp_path / "server.pid").read_text() == f"{process.pid}\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        end(process)


def test_a_transport_refuses_to_take_over_a_socket_of_another_address() -> None:
    """adopt(fd) with a socket bound elsewhere fails at open(), naming both addresses; the socket is left alone."""
    from sockwork.transports import TCPOptions, TCPTransport

    with socket.create_server(("127.0.0.1", 0)) as other:
        transport = TCPTransport(TCPOptions(address=("127.0.0.1", 1)))
        transport.adopt(other.fileno())
        with pytest.raises(BindError, match=r"cannot take over the inherited listener \(descriptor \d+\): it is bound "
                                            r"to \('127\.0\.0\.1', \d+\), the config asks for 127\.0\.0\.1:1"):
            transport.open()
        assert other.fileno() >= 0  # still open, still the test's
        same = TCPTransport(TCPOptions(address=("127.0.0.1", 0)))
        duplicate = os.dup(other.fileno())
        same.adopt(duplicate)
        same.open()
        try:
            assert same.address == other.getsockname()
        finally:
            same.close()


def sockwork_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockwork", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_the_signal_commands_name_the_server_by_its_pid_file_and_say_what_came_of_it(tmp_path: Path) -> None:
    """sockwork reload/resize/stop PIDFILE: one line each with the result; bad input is one line, status 2."""
    config = write_app(tmp_path, "v1", "pool", extra='pid_file = "server.pid"\n')
    process, _, log = serve_app(tmp_path, config)
    try:
        pid = process.pid
        done = sockwork_command("reload", "server.pid", cwd=tmp_path)
        assert (done.returncode, done.stdout) == (0, f"sockwork reload: sent SIGHUP to {pid}; the server logs "
                                                     "what it applied\n")
        wait_for(lambda: logged(log, "SIGHUP: read server.toml again: no setting changed"))
        done = sockwork_command("resize", "+1", "server.pid", cwd=tmp_path)
        assert (done.returncode, done.stdout) == (0, f"sockwork resize +1: sent SIGTTIN to {pid} 1 time(s); the "
                                                     "server logs each resize\n")
        wait_for(lambda: logged(log, "SIGTTIN: not resized: the PoolDispatcher cannot change"))
        for args, message in (
            (("resize", "2", "server.pid"), "sockwork resize 2: write the change as +N or -N (N >= 1), got '2'\n"),
            (("reload", "missing.pid"), "sockwork reload: cannot read pid file 'missing.pid': No such file or "
                                        "directory\n"),
        ):
            done = sockwork_command(*args, cwd=tmp_path)
            assert (done.returncode, done.stderr) == (2, message)
        done = sockwork_command("stop", "server.pid", cwd=tmp_path)
        assert (done.returncode, done.stdout) == (0, f"sockwork stop: {pid} stopped\n")
        assert process.wait(5) == 0
        (tmp_path / "stale.pid").write_text(f"{pid}\n")
        done = sockwork_command("stop", "stale.pid", cwd=tmp_path)
        assert (done.returncode, done.stderr) == (2, f"sockwork stop: no process {pid} (from 'stale.pid'): the pid "
                                                     "file is stale\n")
    finally:
        end(process)


def test_under_systemd_the_server_says_ready_and_an_upgrade_hands_the_unit_to_the_new_master(
    tmp_path: Path, short_tmp: Path,
) -> None:
    """With NOTIFY_SOCKET set: READY=1 once serving; after SIGUSR2 the old master sends MAINPID=<new>."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(short_tmp / "notify"))
    notify.settimeout(20)
    config = write_app(tmp_path, "v1", "pool", extra='pid_file = "server.pid"\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(short_tmp / "notify")}
    process = subprocess.Popen([sys.executable, "-m", "sockwork", "serve", config.name], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    new_pid = None
    try:
        assert notify.recv(100) == b"READY=1"
        process.send_signal(signal.SIGUSR2)
        said = notify.recv(100)
        assert said.startswith(b"MAINPID="), said
        new_pid = int(said.split(b"=")[1])
        assert process.wait(20) == 0
        assert (tmp_path / "server.pid").read_text() == f"{new_pid}\n"
    finally:
        notify.close()
        if new_pid is not None:
            os.kill(new_pid, signal.SIGTERM)
            wait_for(lambda: gone(new_pid))
        end(process)


def caught(pid: int) -> int:
    """The signals process ``pid`` has handlers for (SigCgt in /proc/PID/status), as a bit mask."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("SigCgt:")).split()[1], 16)


def test_prefork_workers_ignore_the_supervisors_operations_signals(tmp_path: Path) -> None:
    """SIGHUP, SIGUSR2, SIGTTIN and SIGTTOU sent to a worker itself (a signal to the whole group) end nothing:
    a worker ignores every signal its supervisor handles (sockwork.forking.prepare_child)."""
    config = write_app(tmp_path, "v1", "prefork")
    process, port, log = serve_app(tmp_path, config)
    try:
        wait_for(lambda: logged(log, "prefork: 2 worker processes serve (pids "))
        line = next(line for line in list(log) if "worker processes serve (pids " in line)
        workers = [int(pid) for pid in re.search(r"\(pids ([\d, ]+)\)", line).group(1).split(", ")]  # type: ignore[union-attr]
        operations = (signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)
        for pid in workers:  # each worker has set its handlers (the kernel's mask of caught signals says so)
            wait_for(lambda pid=pid: all(caught(pid) >> (signum - 1) & 1 for signum in operations))
        for pid in workers:
            for signum in operations:
                os.kill(pid, signum)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"x\n")
            assert conn.recv(100) == b"v1 x\n"
        assert all(not gone(pid) for pid in workers)
        assert not logged(log, "starting a new one"), log  # no worker died
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"x\n")
            assert conn.recv(100) == b"v1 x\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        end(process)
