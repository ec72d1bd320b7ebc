"""``sockwork serve --transport tls://...``: openssl s_client and Python's ssl talk to it; SIGHUP reloads."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

pytestmark = pytest.mark.timeout(60)


def write_server_files(ca: trustme.CA, directory: Path) -> None:
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    issued.private_key_pem.write_to_path(str(directory / "key.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))


def ask_address(port: int, cafile: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        reply = b""
        while chunk := sock.recv(100):
            reply += chunk
        return reply


def test_serve_tls_talks_to_openssl_and_python_and_reloads_on_sighup(sockwork_tmp: Path) -> None:
    """The CLI serves TLS from certificate options; SIGHUP reloads the files (logged), SIGTERM stops it cleanly."""
    write_server_files(trustme.CA(), sockwork_tmp)
    process = subprocess.Popen(
        [sys.executable, "-m", "sockwork", "serve", "--transport", "tls://127.0.0.1:0", "--handler", "address",
         "--option", f"transport.certfile={sockwork_tmp / 'cert.pem'}",
         "--option", f"transport.keyfile={sockwork_tmp / 'key.pem'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        started = re.match(r"sockwork: serving 'address' on tls://127\.0\.0\.1:(\d+) ", line)
        assert started, line + process.stderr.read()  # type: ignore[union-attr]
        port = int(started.group(1))
        assert re.fullmatch(rb"127\.0\.0\.1 \d+\n", ask_address(port, sockwork_tmp / "ca.pem"))
        if shutil.which("openssl"):
            result = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(sockwork_tmp / "ca.pem"),
                 "-verify_return_error", "-servername", "localhost", "-ign_eof"],
                input="", capture_output=True, text=True, timeout=20)
            assert "Verify return code: 0 (ok)" in result.stdout, result.stdout + result.stderr
            assert re.search(r"^127\.0\.0\.1 \d+$", result.stdout, re.MULTILINE), result.stdout
        renewed = sockwork_tmp / "renewed"
        renewed.mkdir()
        write_server_files(trustme.CA(), renewed)
        for name in ("cert.pem", "key.pem"):
            (renewed / name).replace(sockwork_tmp / name)
        process.send_signal(signal.SIGHUP)
        # Served from the new files: a client trusting only the new CA gets through.
        assert ask_address(port, renewed / "ca.pem").startswith(b"127.0.0.1 ")
        process.send_signal(signal.SIGTERM)  # after SIGHUP: Python runs pending handlers in signal order
        assert process.wait(timeout=20) == 0
        log = process.stderr.read()  # type: ignore[union-attr]
        assert f"tls transport: reloaded the certificate from {sockwork_tmp / 'cert.pem'}" in log, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def test_a_failed_reload_is_logged_and_serving_goes_on(sockwork_tmp: Path) -> None:
    """A certificate file broken at SIGHUP time is logged as an error (one line: the reloaded config is refused);
    the server keeps running and stops cleanly."""
    write_server_files(trustme.CA(), sockwork_tmp)
    process = subprocess.Popen(
        [sys.executable, "-m", "sockwork", "--transport", "tls://127.0.0.1:0",
         "--option", f"transport.certfile={sockwork_tmp / 'cert.pem'}",
         "--option", f"transport.keyfile={sockwork_tmp / 'key.pem'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("sockwork: serving")  # type: ignore[union-attr]
        (sockwork_tmp / "key.pem").write_text("garbage\n")
        process.send_signal(signal.SIGHUP)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        log = process.stderr.read()  # type: ignore[union-attr]
        # The reloaded config is checked first, and TLSOptions loads the files: refused, the old ones serve on.
        assert ("SIGHUP: refused, still serving the config loaded before: 1 problem in command line: "
                "transport.options: couldn't load the certificate") in log, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
