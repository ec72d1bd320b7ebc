"""The conformance suite again, for every stream transport behind a PROXY-protocol balancer.

Same tests, same dispatchers; only the loopback set-up differs: the
transport gets ``proxy_protocol`` (v2 for tcp, v1 for unix, "any" for tls,
which then reads a v1 header before the TLS handshake) and each client sends
a header first, as HAProxy would.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import attrs
import pytest

from sockwork import Registry
from sockwork.conformance import *  # noqa: F403
from sockwork.proxy_protocol import encode_v1, encode_v2
from sockwork.pytest_plugin import Loopback, loopback_of
from sockwork.registry import TransportEntry

VARIANTS = {"tcp": "v2", "unix": "v1", "tls": "any"}
_ports = itertools.count(40000)


@pytest.fixture(params=["parts"])
def assembly(request: pytest.FixtureRequest) -> str:
    """Parts only: the legacy classes have no PROXY option."""
    return str(request.param)


@pytest.fixture
def sockwork_loopback(sockwork_transport_name: str, sockwork_tmp: Path, sockwork_registry: Registry) -> Loopback:
    """The transport's own loopback set-up with proxy_protocol on, and clients that send a header first."""
    version = VARIANTS.get(sockwork_transport_name)
    if version is None:  # deselected in tests/conftest.py; a plugin's transport would land here
        pytest.skip(f"transport {sockwork_transport_name!r} has no proxy_protocol option")
    entry = sockwork_registry.get("transport", sockwork_transport_name)
    assert isinstance(entry, TransportEntry)
    plain = loopback_of(entry, sockwork_tmp)
    trusted = [] if sockwork_transport_name == "unix" else ["127.0.0.1", "::1"]
    options = attrs.evolve(plain.options, proxy_protocol=version, trusted_proxies=trusted)
    inner = plain.wrap
    encode = encode_v2 if version == "v2" else encode_v1

    def wrap(sock: Any) -> Any:
        sock.sendall(encode(("203.0.113.7", next(_ports) % 65536), ("192.0.2.1", 443)))
        return inner(sock) if inner is not None else sock

    return Loopback(options, wrap)
