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

import pytest

pytestmark = pytest.mark.timeout(30)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sockwork", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
        (["--dispatcher", "threads"], "no dispatcher named 'threads'; registered: fork, inline, pool,"),
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


def test_a_second_signal_forces_the_stop() -> None:
    """SIGTERM drains; a second SIGTERM during the drain exits at once with status 1."""
    process = start("--handler", "lines", "--transport", "tcp://127.0.0.1:0", "--drain-timeout", "forever")
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
    result = subprocess.run([sys.executable, "-m", "sockwork", "check", str(good), "--option", "transport.max_packet_size=512"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["transport"] == {"name": "udp", "options": {
        "address": ["127.0.0.1", 0], "max_packet_size": 512, "reuse_address": False, "reuse_port": False}}
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
    assert "broken [?]: FAILED: ModuleNotFoundError: No module named 'sockwork_no_such_plugin_module'" in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "sockwork"
    assert script.exists()
    result = subprocess.run([str(script), "check", "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and "CONFIG" in result.stdout


def test_inline_handler_is_held_to_the_drain_deadline() -> None:
    """With inline, the loop itself runs the handler; SIGTERM still ends it at the deadline."""
    process = start("--dispatcher", "inline", "--handler", "lines", "--transport", "tcp://127.0.0.1:0",
                    "--drain-timeout", "0.3", "--option", "limits.idle_timeout=30")
    try:
        started = read_started_line(process)
        with socket.create_connection(("127.0.0.1", int(started.group(3))), timeout=10) as idle:
            idle.sendall(b"x\n")
            assert idle.recv(100) == b"1: x\n"  # the handler waits for the next line: for 30 s
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - began < 5
    finally:
        stop(process)


def test_second_signal_leaves_no_child_processes_behind() -> None:
    process = start("--dispatcher", "fork", "--handler", "lines", "--transport", "tcp://127.0.0.1:0",
                    "--drain-timeout", "forever")
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
