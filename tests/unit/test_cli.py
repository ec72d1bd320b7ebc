"""``python -m sockwork`` serves, reports where, and stops gracefully on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)


def start(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sockwork", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
    )


@pytest.mark.parametrize("dispatcher", ["thread", "pool", "fork"])
def test_serves_echo_and_stops_on_sigterm(dispatcher: str) -> None:
    process = start("--transport", "tcp://127.0.0.1:0", "--dispatcher", dispatcher)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        started = re.match(r"sockwork: serving 'echo' on tcp://127\.0\.0\.1:(\d+) with dispatcher "
                           rf"'{dispatcher}' \(pid (\d+)\)", line)
        assert started, line
        assert int(started.group(2)) == process.pid
        with socket.create_connection(("127.0.0.1", int(started.group(1))), timeout=10) as conn:
            conn.sendall(b"over the wire")
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(100) == b"over the wire"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "stopped" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dispatcher", "threads"], "no dispatcher named 'threads'; registered: asyncio, fork, inline, pool,"),
        (["--transport", "tcp://127.0.0.1"], "must look like tcp://HOST:PORT"),
    ],
)
def test_bad_flags_exit_2_with_the_reason(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "sockwork", *args], capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert message in result.stderr


def read_started_line(process: subprocess.Popen[str]) -> re.Match[str]:
    line = process.stdout.readline()  # type: ignore[union-attr]
    started = re.match(r"sockwork: serving '(.*)' on (\w+)://127\.0\.0\.1:(\d+) with dispatcher '(\w+)'", line)
    assert started, line + process.stderr.read()  # type: ignore[union-attr]
    return started


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    process.stdout.close()  # type: ignore[union-attr]
    process.stderr.close()  # type: ignore[union-attr]


def test_serve_from_a_config_file_with_flags_on_top(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('transport = "tcp://127.0.0.1:0"\nhandler = "lines"\n[dispatcher]\nname = "thread"\n')
    process = start("serve", str(config), "--dispatcher", "pool", "--option", "dispatcher.workers=2")
    try:
        started = read_started_line(process)
        assert started.group(1) == "lines" and started.group(4) == "pool"
        with socket.create_connection(("127.0.0.1", int(started.group(3))), timeout=10) as conn:
            conn.sendall(b"hello\n")
            assert conn.recv(100) == b"1: hello\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        stop(process)


def test_a_second_signal_forces_the_stop(blocking: Path) -> None:
    """SIGTERM drains; a second SIGTERM during the drain exits at once with status 1."""
    process = start("--handler", "blocking:lines", "--transport", "tcp://127.0.0.1:0", "--drain-timeout", "forever",
                    cwd=blocking)
    try:
        started = read_started_line(process)
        with socket.create_connection(("127.0.0.1", int(started.group(3))), timeout=10) as idle:
            idle.sendall(b"x\n")
            assert idle.recv(100) == b"1: x\n"  # its handler now waits for the next line, forever
            process.send_signal(signal.SIGTERM)
            assert "stopping on SIGTERM: draining 1 request(s)" in process.stderr.readline()  # type: ignore[union-attr]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 1
            assert "second signal" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        stop(process)


def test_check_prints_the_resolved_config_or_every_error(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('transport = "udp://127.0.0.1:0"\n')
    result = subprocess.run([sys.executable, "-m", "sockwork", "check", str(good),
                             "--option", "transport.max_packet_size=512"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["transport"] == {"name": "udp", "options": {
        "address": ["127.0.0.1", 0], "max_packet_size": 512, "reuse_address": False, "reuse_port": False,
        "ipv6_only": False}}
    assert resolved["dispatcher"]["name"] == "thread" and resolved["handler"]["ref"] == "echo"

    bad = tmp_path / "bad.toml"
    bad.write_text('transport = "udp://127.0.0.1:0"\ndispatcher = { name = "pool", options = { workers = 0 } }\n')
    result = subprocess.run([sys.executable, "-m", "sockwork", "check", str(bad), "--option", "handler.size=3"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert "dispatcher.options.workers: must be an int >= 1, got 0" in result.stderr
    assert "handler.options.size: unknown option; allowed: (it takes none)" in result.stderr


@pytest.mark.parametrize(
    "option", ["workers=8", "dispatcher=8", "bogus.workers=8"],
)
def test_malformed_option_flags(option: str) -> None:
    result = subprocess.run([sys.executable, "-m", "sockwork", "serve", "--option", option],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "write KIND.NAME=VALUE" in result.stderr


def test_plugins_lists_everything_and_reports_a_broken_plugin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib.metadata import EntryPoint

    from sockwork import _cli, registry

    broken = EntryPoint(name="broken", value="sockwork_no_such_plugin_module", group="sockwork")
    real = registry.importlib.metadata.entry_points
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: [*real(group=group), broken])
    assert _cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "  pool         a fixed set of worker threads" in out
    assert "[sockwork.strategies.pool, sockwork " in out
    assert "      workers = " in out and "      queue_size = 64" in out
    assert "  tls          " in out and "      URLs: tls://\n" in out  # the name is its scheme
    assert "      URLs: tcp://\n" in out and "      URLs: fd://, systemd://\n" in out
    assert "broken [?]: FAILED: ModuleNotFoundError: No module named 'sockwork_no_such_plugin_module'" in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "sockwork"
    assert script.exists()
    result = subprocess.run([str(script), "check", "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and "CONFIG" in result.stdout


@pytest.fixture
def blocking(tmp_path: Path) -> Path:
    """A directory with blocking.py: ``blocking:lines`` numbers lines like the built-in ``lines``, but in
    one turn for the whole connection, so a connected client holds a running request (a worker)."""
    (tmp_path / "blocking.py").write_text(
        "from sockwork import stream_handler\n\n"
        "@stream_handler\n"
        "def lines(conn):  # blocks in readline between lines\n"
        "    for number, line in enumerate(conn, 1):\n"
        "        conn.write(b'%d: %s' % (number, line))\n"
    )
    return tmp_path


def test_inline_handler_is_held_to_the_drain_deadline(blocking: Path) -> None:
    """With inline, the loop itself runs the handler; SIGTERM still ends it at the deadline."""
    process = start("--dispatcher", "inline", "--handler", "blocking:lines", "--transport", "tcp://127.0.0.1:0",
                    "--drain-timeout", "0.3", "--option", "limits.idle_timeout=30", cwd=blocking)
    try:
        started = read_started_line(process)
        with socket.create_connection(("127.0.0.1", int(started.group(3))), timeout=10) as idle:
            idle.sendall(b"x\n")
            assert idle.recv(100) == b"1: x\n"  # the handler waits for the next line: for 30 s
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - began < 5
        log = process.stderr.read()  # type: ignore[union-attr]
        stopping, deadline = log.index("INFO stopping on SIGTERM: draining 1 request(s)"), log.index(
            "WARNING the 0.3 s drain deadline has passed with 1 request(s) still running; shut down their 1")
        assert stopping < deadline, log  # the stop is announced before the deadline warning
        assert "abandoning" not in log and "ERROR" not in log, log
    finally:
        stop(process)


def test_second_signal_leaves_no_child_processes_behind(blocking: Path) -> None:
    process = start("--dispatcher", "fork", "--handler", "blocking:lines", "--transport", "tcp://127.0.0.1:0",
                    "--drain-timeout", "forever", cwd=blocking)
    try:
        started = read_started_line(process)
        with socket.create_connection(("127.0.0.1", int(started.group(3))), timeout=10) as idle:
            idle.sendall(b"x\n")
            assert idle.recv(100) == b"1: x\n"
            with open(f"/proc/{process.pid}/task/{process.pid}/children") as f:
                children = [int(pid) for pid in f.read().split()]
            assert len(children) == 1
            process.send_signal(signal.SIGTERM)
            assert "stopping on SIGTERM: draining 1 request(s)" in process.stderr.readline()  # type: ignore[union-attr]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 1
            assert idle.recv(100) == b""  # its child is gone too
        assert not os.path.exists(f"/proc/{children[0]}")
    finally:
        stop(process)


# ---- Bad input: one line, exit 2, no traceback (issue 14) ---------------------------

def run_cli(*args: str, cwd: Path | None = None, script: bool = False) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "sockwork")] if script else [sys.executable, "-m", "sockwork"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=20, cwd=cwd)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("udp://[::1", "transport URL 'udp://[::1': write the IPv6 host in brackets, then :PORT"),
        ("tcp://[::1", "transport URL 'tcp://[::1': write the IPv6 host in brackets, then :PORT"),
        ("tcp://[zz]:80", "'zz' in brackets is not an IPv6 address"),
        ("fd://99999999999999999999", "too large for a descriptor number"),
        ("tcp://user:pw@host:1", "a user or password part (user@) has no meaning for a tcp transport"),
        ("tcp://0:0", "host '0' is a shorthand the OS would read as 0.0.0.0 (every interface); write '0.0.0.0'"),
    ],
)
def test_a_bad_transport_url_is_one_line_and_exit_2(url: str, message: str) -> None:
    result = run_cli("serve", "--transport", url)
    assert result.returncode == 2
    assert result.stderr.startswith("sockwork: command line: transport") and result.stderr.count("\n") == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_unix_path_with_a_nul_byte_from_json_is_refused_without_a_stray_file(tmp_path: Path) -> None:
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"transport": {"name": "unix", "options": {"path": str(tmp_path / "a\0b")}}}))
    result = run_cli("serve", str(config))
    assert result.returncode == 2
    assert "transport.options.path: must not contain a NUL byte" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == ["server.json"]


def test_a_unix_path_where_a_server_with_a_full_backlog_listens_exits_2(unix_path_with_full_backlog: Path) -> None:
    """The stale-socket check gives up at once (EAGAIN) instead of waiting in connect() forever."""
    path = unix_path_with_full_backlog
    result = run_cli("serve", "--transport", f"unix://{path}")  # timeout=20: fails rather than hangs
    assert result.returncode == 2
    assert f"couldn't bind unix transport to '{path}': another server is listening there" in result.stderr


# ---- Commands and flags (issue 14) ---------------------------------------------------

def test_an_unknown_command_says_so_with_the_commands() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: sockwork ")
    assert ("sockwork: error: unknown command 'frobnicate'; commands: serve, check, plugins, top, bench, reload, "
            "upgrade, resize, stop. A config file's name ends in .toml or .json.") in result.stderr
    assert "did you mean 'check'?" in run_cli("chek").stderr


def test_a_config_file_name_alone_still_means_serve(tmp_path: Path) -> None:
    """``sockwork file.toml`` is ``sockwork serve file.toml``: here, a file that is missing."""
    result = run_cli(str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert f"cannot read config file '{tmp_path / 'missing.toml'}'" in result.stderr


@pytest.mark.parametrize("command", ["serve", "check"])
def test_an_unknown_flag_shows_the_commands_own_usage(command: str) -> None:
    result = run_cli(command, "--dispatchr", "pool")
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: sockwork {command} [-h] [--transport URL]")
    assert f"sockwork {command}: error: unrecognized arguments: --dispatchr" in result.stderr


def test_version() -> None:
    import sockwork

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout == f"sockwork {sockwork.__version__}\n"


def test_check_takes_flags_alone() -> None:
    result = run_cli("check", "--transport", "unix:///tmp/never-bound.sock", "--handler", "lines")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["transport"]["name"] == "unix" and resolved["handler"]["ref"] == "lines"
    assert not os.path.exists("/tmp/never-bound.sock")  # check binds nothing


def test_workers_sets_the_dispatchers_worker_count() -> None:
    result = run_cli("check", "--dispatcher", "pool", "--workers", "3")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dispatcher"]["options"]["workers"] == 3


def test_workers_is_refused_for_a_dispatcher_without_a_worker_count() -> None:
    result = run_cli("serve", "--dispatcher", "thread", "--workers", "3")
    assert result.returncode == 2
    assert result.stderr == ("sockwork: --workers: dispatcher 'thread' has no 'workers' option; dispatchers with a "
                             "worker count: pool, prefork, e.g. --dispatcher pool --workers 3\n")


def test_log_level_help_lists_every_accepted_level() -> None:
    from sockwork.config import LOG_LEVELS

    help_text = " ".join(run_cli("serve", "--help").stdout.split())
    assert f"--log-level LEVEL one of {', '.join(LOG_LEVELS)}, in any case (default: INFO)" in help_text


def test_the_script_finds_handler_modules_in_the_current_directory(tmp_path: Path) -> None:
    """As ``python -m sockwork`` (and gunicorn, uvicorn) do: the current directory comes first."""
    (tmp_path / "my_cli_handler.py").write_text("def handle(request, client_address, server):\n    pass\n")
    result = run_cli("check", "--handler", "my_cli_handler:handle", cwd=tmp_path, script=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["handler"]["ref"] == "my_cli_handler:handle"
    safe = subprocess.run([str(Path(sys.executable).parent / "sockwork"), "check",
                           "--handler", "my_cli_handler:handle"],
                          capture_output=True, text=True, timeout=20, cwd=tmp_path,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert safe.returncode == 1 and "cannot import module 'my_cli_handler'" in safe.stderr


# ---- What stopping says (issue 14) ------------------------------------------------------

@pytest.mark.parametrize("drain", [[], ["--drain-timeout", "10"], ["--drain-timeout", "10.0"]])
def test_the_stop_message_shows_the_deadline_one_way_and_counts_what_runs(drain: list[str], blocking: Path) -> None:
    """"10 s" whether the deadline came from the default (10.0) or a flag (10)."""
    process = start("--handler", "blocking:lines", "--transport", "tcp://127.0.0.1:0", *drain, cwd=blocking)
    try:
        started = read_started_line(process)
        with socket.create_connection(("127.0.0.1", int(started.group(3))), timeout=10) as idle:
            idle.sendall(b"x\n")
            assert idle.recv(100) == b"1: x\n"  # its handler now waits for the next line
            process.send_signal(signal.SIGTERM)
            line = process.stderr.readline()  # type: ignore[union-attr]
            assert line.rstrip().endswith(
                "sockwork INFO stopping on SIGTERM: draining 1 request(s) still running (up to 10 s)")
        # the client has left: its handler returns, and the drain is over
        assert process.wait(timeout=10) == 0
    finally:
        stop(process)


def test_the_stop_message_does_not_mention_draining_when_nothing_runs() -> None:
    process = start("--transport", "tcp://127.0.0.1:0")
    try:
        read_started_line(process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        err = process.stderr.read()  # type: ignore[union-attr]
        assert "stopping on SIGTERM: no request is running" in err and "draining" not in err
    finally:
        stop(process)


def test_an_inline_handler_calling_sys_exit_stops_the_whole_server(tmp_path: Path) -> None:
    """As docs/guide.md says (and as in socketserver): status 3 for sys.exit(3), logged first."""
    (tmp_path / "quitter.py").write_text("import sys\n\ndef handle(request, client_address, server):\n"
                                         "    request.recv(100)\n    sys.exit(3)\n")
    process = subprocess.Popen([sys.executable, "-m", "sockwork", "--dispatcher", "inline", "--handler",
                                "quitter:handle", "--transport", "tcp://127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        started = read_started_line(process)
        with socket.create_connection(("127.0.0.1", int(started.group(3))), timeout=10) as conn:
            conn.sendall(b"bye")
            assert conn.recv(100) == b""
        assert process.wait(timeout=10) == 3
        assert "raised SystemExit(3); passing it on" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        stop(process)


def test_plugins_lists_lifecycle_only_plugins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin that only implements lifecycle hooks is listed with its hooks."""
    from sockwork import _cli, hookimpl, registry

    class Audit:
        @hookimpl
        def sockwork_request_failed(self) -> None: ...

        @hookimpl
        def sockwork_server_stopped(self) -> None: ...

    real = registry.make_plugin_manager

    def with_audit(*, entry_points: bool = True) -> registry.PluginManager:
        pm = real(entry_points=entry_points)
        pm.register(Audit(), name="audit")
        return pm

    monkeypatch.setattr(registry, "make_plugin_manager", with_audit)
    assert _cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "lifecycle hooks:\n  audit        sockwork_request_failed, sockwork_server_stopped  [audit, ?]" in out


def test_access_log_as_text_from_the_command_line() -> None:
    """--access-log text: one line per request on stderr, with the bytes each way."""
    process = start("--dispatcher", "pool", "--transport", "tcp://127.0.0.1:0", "--access-log", "text",
                    "--log-level", "warning")
    try:
        started = read_started_line(process)
        with socket.create_connection(("127.0.0.1", int(started.group(3))), timeout=10) as conn:
            conn.sendall(b"twelve bytes")
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(100) == b"twelve bytes"
        line = process.stderr.readline()  # type: ignore[union-attr]
        assert re.search(r"sockwork\.access INFO 127\.0\.0\.1:\d+ completed [\d.]+ ms in=12 out=(0|12)$",
                         line.rstrip()), line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        stop(process)


def test_a_plugin_that_shadows_a_built_in_is_shown_and_named_in_option_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An old third-party ``tls`` transport takes the built-in's name: ``plugins`` says so, and its option errors
    say which ``tls`` is in use (issue 22: a plugin for the previous release silently shadowed the new built-in)."""
    import attrs

    from sockwork import TransportEntry, _cli, hookimpl, registry
    from sockwork.transports.tcp import TCPOptions, TCPTransport

    @attrs.frozen(kw_only=True)
    class OldTLSOptions:
        address: tuple[str, int] = ("127.0.0.1", 0)

    class OldTLS:
        @hookimpl
        def sockwork_add_transports(self) -> list[TransportEntry]:
            return [TransportEntry("tls", lambda options: TCPTransport(TCPOptions(address=options.address)),
                                   OldTLSOptions, description="an old TLS plugin")]

    real = registry.make_plugin_manager

    def with_old_tls(*, entry_points: bool = True) -> registry.PluginManager:
        pm = real(entry_points=entry_points)
        pm.register(OldTLS(), name="oldtls")
        pm.distributions["oldtls"] = "sockwork-oldtls 0.3.0"
        return pm

    monkeypatch.setattr(registry, "make_plugin_manager", with_old_tls)
    assert _cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  tls +an old TLS plugin  \[oldtls, sockwork-oldtls 0\.3\.0\]  "
                     r"SHADOWS: \[sockwork\.transports\.tls, sockwork [^]]+\]$", out, re.M), out
    assert _cli.main(["check", "--transport", "tls://127.0.0.1:0", "--option", "transport.certfile=x.pem"]) == 1
    err = capsys.readouterr().err
    assert ("transport.options.certfile: unknown option; allowed: address (in use: transport 'tls' from plugin "
            "'oldtls' (sockwork-oldtls 0.3.0), shadowing sockwork's built-in)") in err, err
    from sockwork import OptionError, Registry, Server

    with pytest.raises(OptionError, match=r"unknown option; allowed: address \(in use: transport 'tls' from plugin "):
        Server(transport="tls", transport_options={"certfile": "x.pem"}, handler="echo",
               registry=Registry(with_old_tls()))


@pytest.mark.parametrize(("source", "error"), [
    ("open('no-such-file.txt')\n", "FileNotFoundError: [Errno 2] No such file or directory: 'no-such-file.txt'"),
    ("x = (\n", "SyntaxError: "),
    ("raise RuntimeError('no database')\n", "RuntimeError: no database"),
])
@pytest.mark.parametrize("command", ["serve", "check"])
def test_a_handler_module_that_fails_at_import_is_one_line_like_an_import_error(
        command: str, source: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Anything a handler module raises at import, not only ImportError, is one line naming the module; serve
    exits 2 and check 1, as for an ImportError."""
    from sockwork._cli import main

    name = f"broken_at_import_{command}_{abs(hash(source))}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    status = main([command, "--handler", f"{name}:handle", "--transport", "tcp://127.0.0.1:0"])
    err = capsys.readouterr().err
    assert status == (2 if command == "serve" else 1)
    assert err.startswith(f"sockwork: command line: handler.ref: cannot import module {name!r} for handler "
                          f"'{name}:handle': {error}"), err
    assert err.count("\n") == 1, err


def _with_plugin(monkeypatch: pytest.MonkeyPatch, plugin: object, name: str) -> None:
    """Every Registry the CLI makes gets ``plugin`` too, registered as ``name`` (an installed plugin's stand-in)."""
    from sockwork import registry

    real = registry.make_plugin_manager

    def with_it(*, entry_points: bool = True) -> registry.PluginManager:
        pm = real(entry_points=entry_points)
        pm.register(plugin, name=name)
        pm.distributions[name] = f"sockwork-{name} 1.0"
        return pm

    monkeypatch.setattr(registry, "make_plugin_manager", with_it)


def test_secret_options_are_shown_as_stars_by_check_plugins_and_repr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An option marked secret (sockwork.validators.secret_field) is never printed: ``***`` instead."""
    import attrs

    from sockwork import DispatcherEntry, _cli, hookimpl
    from sockwork.strategies.pool import PoolDispatcher, PoolOptions
    from sockwork.validators import secret_field

    @attrs.frozen(kw_only=True)
    class VaultOptions:
        token: str = secret_field(default="default-token")
        workers: int = 2

    class Vault:
        @hookimpl
        def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
            return [DispatcherEntry("vault", lambda options: PoolDispatcher(PoolOptions(workers=options.workers)),
                                    VaultOptions)]

    _with_plugin(monkeypatch, Vault(), "vault")
    assert _cli.main(["check", "--transport", "tcp://127.0.0.1:0", "--dispatcher", "vault",
                      "--option", "dispatcher.token=hunter2"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["dispatcher"]["options"] == {"token": "***", "workers": 2}
    assert _cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "      token = ***\n      workers = 2" in out and "default-token" not in out
    assert repr(VaultOptions(token="hunter2")) == "VaultOptions(token=***, workers=2)"  # logs, tracebacks


def test_a_dispatcher_whose_start_fails_makes_serve_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.md: a server that cannot start exits 2, one line on stderr, no traceback, no "serving" line."""
    from sockwork import DispatcherEntry, _cli, hookimpl
    from sockwork.strategies.pool import PoolDispatcher, PoolOptions

    class FailsToStart:
        def __init__(self) -> None:
            self.inner = PoolDispatcher(PoolOptions(workers=1))
            self.concurrency = 1
            self.submit, self.saturated, self.drain, self.close = (
                self.inner.submit, self.inner.saturated, self.inner.drain, self.inner.close)

        def start(self, host: object) -> None:
            raise RuntimeError("no licence server")

    class Plugin:
        @hookimpl
        def sockwork_add_dispatchers(self) -> list[DispatcherEntry]:
            return [DispatcherEntry("unlicensed", lambda options: FailsToStart())]

    _with_plugin(monkeypatch, Plugin(), "unlicensed")
    assert _cli.main(["serve", "--transport", "tcp://127.0.0.1:0", "--dispatcher", "unlicensed"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("sockwork: dispatcher 'unlicensed' failed to start: RuntimeError: no licence server\n")


# ---- Habits from gunicorn and uvicorn (issue 23 item 13) ------------------------------------

def _check(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    """``sockwork check ARGS`` in this process: (status, the printed config or None, stderr)."""
    from sockwork._cli import main

    try:
        status = main(["check", *args])
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    return status, json.loads(out) if status == 0 else None, err


def test_short_flags_w_and_b_bind(capsys: pytest.CaptureFixture[str]) -> None:
    """-w is --workers; -b and --bind are --transport (gunicorn's)."""
    status, config, err = _check("--dispatcher", "pool", "-w", "3", "-b", "tcp://127.0.0.1:0", capsys=capsys)
    assert status == 0, err
    assert config["dispatcher"]["options"]["workers"] == 3
    assert config["transport"]["options"]["address"] == ["127.0.0.1", 0]
    status, config, err = _check("--bind", "tcp://[::1]:0", capsys=capsys)
    assert status == 0 and config["transport"]["options"]["address"] == ["::1", 0], err


@pytest.mark.parametrize(("args", "hint"), [
    (["--port", "8000"], "no --port: sockwork takes the address as a URL, --transport tcp://127.0.0.1:8000"),
    (["--host", "0.0.0.0", "--port=80"], "no --host or --port: sockwork takes the address as a URL, "
                                         "--transport tcp://0.0.0.0:80 (or -b/--bind)"),
])
def test_port_and_host_flags_get_the_url_they_mean(args: list[str], hint: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _check(*args, capsys=capsys)
    assert status == 2 and err.splitlines()[-1].startswith(f"sockwork check: error: {hint}"), err


def test_a_handler_where_a_config_file_is_expected_gets_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    from sockwork._cli import main

    status, _, err = _check("app:handle", capsys=capsys)
    assert status == 2
    assert err.splitlines()[-1] == ("sockwork check: error: 'app:handle' is not a config file (a .toml or .json "
                                    "file); did you mean --handler app:handle?")
    with pytest.raises(SystemExit) as exit_info:
        main(["app:handle"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "sockwork: error: 'app:handle' is not a command; did you mean 'sockwork serve --handler app:handle'?")


@pytest.mark.parametrize(("flag", "name", "meant"), [
    ("--dispatcher", "threads", "thread"), ("--handler", "ecko", "echo"), ("--transport", "tcpp://h:1", "tcp"),
])
def test_a_misspelled_part_name_gets_did_you_mean(flag: str, name: str, meant: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _check(flag, name, capsys=capsys)
    assert status == 1 and err.rstrip().endswith(f"Did you mean {meant!r}?"), err


def test_flags_from_sockwork_environment_variables(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """SOCKWORK_<FLAG> gives a flag the command line does not; the command line wins; errors name the variable."""
    monkeypatch.setenv("SOCKWORK_TRANSPORT", "tcp://127.0.0.1:0")
    monkeypatch.setenv("SOCKWORK_DISPATCHER", "pool")
    monkeypatch.setenv("SOCKWORK_WORKERS", "3")
    monkeypatch.setenv("SOCKWORK_LOG_LEVEL", "debug")
    status, config, err = _check("-w", "5", capsys=capsys)
    assert status == 0, err
    assert (config["transport"]["options"]["address"], config["dispatcher"]["name"], config["log_level"]) == (
        ["127.0.0.1", 0], "pool", "DEBUG")
    assert config["dispatcher"]["options"]["workers"] == 5  # the flag, not SOCKWORK_WORKERS
    monkeypatch.setenv("SOCKWORK_WORKERS", "many")
    status, _, err = _check(capsys=capsys)
    assert status == 1
    assert err == ("sockwork: command line (and SOCKWORK_TRANSPORT, SOCKWORK_DISPATCHER, SOCKWORK_WORKERS, "
                   "SOCKWORK_LOG_LEVEL): dispatcher.options.workers: must be an int >= 1, got 'many'\n")
