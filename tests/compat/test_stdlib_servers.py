"""The standard library's servers built on socketserver run on sockwork.socketserver.

Each test runs in a fresh interpreter where ``sockwork.socketserver`` is
installed as ``socketserver`` before ``http.server`` / ``xmlrpc.server`` are
imported, and real clients (urllib.request, xmlrpc.client) talk to them
over loopback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

PRELUDE = """
import sys
import sockwork.socketserver as ours
assert "socketserver" not in sys.modules
sys.modules["socketserver"] = ours
"""

HTTP_SERVER = PRELUDE + """
import http.server, os, tempfile, threading, urllib.request, functools, http.client

assert issubclass(http.server.ThreadingHTTPServer, ours.ThreadingMixIn)
with tempfile.TemporaryDirectory() as root:
    with open(os.path.join(root, "hello.txt"), "wb") as f:
        f.write(b"served by sockwork\\n" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever)
        thread.start()
        port = httpd.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=10) as response:
            assert response.status == 200
            assert response.read() == b"served by sockwork\\n" * 1000
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/missing.txt", timeout=10)
        except urllib.error.HTTPError as error:
            assert error.code == 404
        else:
            raise AssertionError("expected a 404")
        # HTTP/1.1 keep-alive: several requests over one connection
        http.server.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):
            conn.request("GET", "/hello.txt")
            assert conn.getresponse().read() == b"served by sockwork\\n" * 1000
        conn.close()
        httpd.shutdown()
        thread.join()
print("OK")
"""

XMLRPC_SERVER = PRELUDE + """
import threading, xmlrpc.client, xmlrpc.server

assert issubclass(xmlrpc.server.SimpleXMLRPCServer, ours.TCPServer)
with xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True) as server:
    server.register_function(lambda a, b: a + b, "add")
    server.register_function(lambda: None, "nothing")
    server.register_introspection_functions()
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    port = server.server_address[1]
    with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/", allow_none=True) as proxy:
        assert proxy.add(2, 3) == 5
        assert proxy.add("sock", "work") == "sockwork"
        assert proxy.nothing() is None
        assert "add" in proxy.system.listMethods()
        try:
            proxy.add(1)
        except xmlrpc.client.Fault as fault:
            assert "TypeError" in fault.faultString
        else:
            raise AssertionError("expected a Fault")
    server.shutdown()
    thread.join()
print("OK")
"""


@pytest.mark.parametrize("script", [HTTP_SERVER, XMLRPC_SERVER], ids=["http.server", "xmlrpc.server"])
def test_stdlib_server_runs_on_the_legacy_module(script: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK", result.stdout + result.stderr
