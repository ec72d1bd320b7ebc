"""The conformance kit's fixtures: a project that declares sockwork entry points (this one) gets them without
the pytest_plugins line below, which is kept so that the suite also runs with pytest's plugin autoloading off."""

from __future__ import annotations

import pytest

pytest_plugins = ["sockwork.pytest_plugin"]

# procpool hands each connection to a worker process by its descriptor (SCM_RIGHTS). A tls
# connection's state (the TLS session, set up by the handshake in the server's loop) lives in the
# server's process and does not travel with the descriptor, so procpool cannot serve tls: those
# pairs are left out, not failed.
PROCESS_BOUND_TRANSPORTS = ("tls",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        transport = callspec.params.get("sockwork_transport_name") if callspec is not None else None
        (drop if transport in PROCESS_BOUND_TRANSPORTS else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
