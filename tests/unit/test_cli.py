"""``python -m sockwork`` serves, reports where, and stops gracefully on SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

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
        (["--dispatcher", "threads"], "no dispatcher named 'threads'; registered: fork, inline, pool, thread."),
        (["--transport", "tcp://127.0.0.1"], "must look like tcp://HOST:PORT"),
    ],
)
def test_bad_flags_exit_2_with_the_reason(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "sockwork", *args], capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert message in result.stderr
