"""What the docs show is what the code prints (where the output is stable)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

DOCS = Path(__file__).resolve().parents[2] / "docs"
README = DOCS.parent / "README.md"


def code_block_after(text: str, heading: str, language: str = "python") -> str:
    """The first ```language block after ``heading``."""
    start = text.index(heading)
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(text, start)
    assert match, f"no {language} block after {heading!r}"
    return match.group(1)


def sockwork(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockwork", *args], capture_output=True, text=True,
                          timeout=20, env=env)


def end(process: subprocess.Popen[str]) -> None:
    """Stop a process this test started (by its pid, if still running) and close its pipes."""
    if process.poll() is None:
        process.kill()
        process.wait()
    process.stdout.close()  # type: ignore[union-attr]
    process.stderr.close()  # type: ignore[union-attr]


def without_listen_variables() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("LISTEN_")}


def test_the_readme_example_stops_on_ctrl_c_without_a_traceback() -> None:
    source = code_block_after(README.read_text(), "## Assembling a server in code")
    source = source.replace("tcp://127.0.0.1:8000", "tcp://127.0.0.1:0")
    process = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        port = re.fullmatch(r"listening on tcp://127\.0\.0\.1:(\d+)\n", line)
        assert port, line + process.stderr.read()  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", int(port.group(1))), timeout=10) as conn:
            conn.sendall(b"quiet\n")
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(100) == b"QUIET\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]
    finally:
        end(process)


def test_the_migrating_snippet_with_the_same_handler_class_runs_on_its_own() -> None:
    source = code_block_after((DOCS / "migrating.md").read_text(), "**Assembled from parts, same handler class:**")
    source = source.replace("tcp://127.0.0.1:8000", "tcp://127.0.0.1:0")
    source = source.replace("server.serve_forever()", "print(server.url)")  # assembled and bound: enough
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tcp://127.0.0.1:")


def test_config_md_url_errors_are_the_ones_raised() -> None:
    from sockwork import ConfigError
    from sockwork.urls import parse_transport_url

    lines = [line for line in (DOCS / "config.md").read_text().splitlines()
             if line.startswith("transport: transport URL '")]
    assert len(lines) >= 6
    for line in lines:
        url = re.match(r"transport: transport URL '([^']*)'", line).group(1)  # type: ignore[union-attr]
        with pytest.raises(ConfigError) as info:
            parse_transport_url(url)
        assert line == f"transport: {info.value}"


def test_config_md_errors_of_an_fd_transport_are_what_check_and_serve_print() -> None:
    """Both look at the inherited descriptor: check exits 1, serve 2, with the same line."""
    block = code_block_after((DOCS / "config.md").read_text(), "report it under\n`transport`, for example:", "text")
    expected = block.splitlines()
    env = without_listen_variables()
    wrong_pid = {**env, "LISTEN_PID": "4242", "LISTEN_FDS": "1"}
    for command, status in (("check", 1), ("serve", 2)):
        not_set = sockwork(command, "--transport", "systemd://", env=env)
        assert (not_set.returncode, not_set.stderr) == (status, expected[0] + "\n")
        other = sockwork(command, "--transport", "systemd://", env=wrong_pid)
        assert other.returncode == status
        assert re.sub(r"\d+", "N", other.stderr) == re.sub(r"\d+", "N", expected[1]) + "\n"
        bad_fd = sockwork(command, "--transport", "fd://57", env=env)  # close_fds: 57 is not open in the child
        assert (bad_fd.returncode, bad_fd.stderr) == (status, expected[2] + "\n")


def test_production_md_listen_pid_example_is_what_serve_prints() -> None:
    block = code_block_after((DOCS / "production.md").read_text(), "Otherwise the server exits with status 2", "text")
    env = {**without_listen_variables(), "LISTEN_PID": "4242", "LISTEN_FDS": "1"}
    result = sockwork("serve", "--transport", "systemd://web", env=env)
    assert result.returncode == 2
    assert re.sub(r"\d+", "N", result.stderr) == re.sub(r"\d+", "N", block)


def test_config_md_unknown_command_output_is_what_the_command_prints() -> None:
    block = code_block_after((DOCS / "config.md").read_text(), "is\nrefused with status 2", "text")
    result = sockwork("frobnicate")
    assert (result.returncode, result.stderr) == (2, block)


def test_config_md_stop_message_is_what_serve_logs() -> None:
    block = code_block_after((DOCS / "config.md").read_text(), "**Signals.**", "text")
    expected = [line.split(" sockwork ", 1)[1] for line in block.splitlines()]
    process = subprocess.Popen([sys.executable, "-m", "sockwork", "--handler", "lines", "--transport",
                                "tcp://127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        port = int(re.search(r"127\.0\.0\.1:(\d+) ", line).group(1))  # type: ignore[union-attr]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            for client in clients:
                client.sendall(b"x\n")
                assert client.recv(100) == b"1: x\n"  # both connections now wait in the loop for a next line
            process.send_signal(signal.SIGTERM)
            assert process.stderr.readline().split(" sockwork ", 1)[1].rstrip() == expected[0]  # type: ignore[union-attr]
            assert process.wait(timeout=10) == 0  # idle clients are closed by the server, not the other way
        finally:
            for client in clients:
                client.close()
        rest = process.stderr.read().splitlines()  # type: ignore[union-attr]
        assert [line.split(" sockwork ", 1)[1].rstrip() for line in rest] == expected[1:]
    finally:
        end(process)


def test_bench_quick_duration_in_help_and_docs() -> None:
    """`sockwork bench --help` and config.md give the quick duration the code uses (0.3 s)."""
    import inspect

    from sockwork import bench

    assert "(0.3 if args.quick else" in inspect.getsource(bench.main)
    help_text = " ".join(sockwork("bench", "--help").stdout.split())
    assert "measured seconds per run (default 2; quick 0.3;" in help_text
    assert "`--quick` measures 0.3 s per run" in (DOCS / "config.md").read_text()


def test_the_capability_table_in_plugins_md_is_the_one_in_the_code() -> None:
    """plugins.md's capability table lists every optional member with the default sockwork uses."""
    from sockwork.interfaces import OPTIONAL_CAPABILITIES

    text = (DOCS / "plugins.md").read_text()
    table = text[text.index("### The capability table"):text.index("## 9. Fork hygiene")]
    rows = dict(re.findall(r"^\| `(\w+)` \| \w+ \| `([^`]*)` \|", table, re.M))
    assert rows == {name: repr(default) for name, (default, _) in OPTIONAL_CAPABILITIES.items()}
