"""Whether this checkout's Server runs connection stages yet (see loop_runs_stages)."""

from __future__ import annotations

_STAGES_RUN: list[bool] = []


def loop_runs_stages() -> bool:
    """Whether this checkout's Server runs a transport's connection stages (probed once, on loopback).

    The stages contract (sockwork.connection) landed before the loop that
    runs them: until it does, tests of stage-using transports (tls, the
    PROXY option) are skipped with that reason instead of failing.
    """
    if not _STAGES_RUN:
        import socket as socket_module

        from sockwork import Server
        from sockwork.proxy_protocol import encode_v1
        from sockwork.testing import recv_until_eof, serving

        server = Server(transport="tcp://127.0.0.1:0", handler="echo", dispatcher="inline",
                        transport_options={"proxy_protocol": "v1", "trusted_proxies": ["127.0.0.1"]})
        with serving(server), socket_module.create_connection(server.address, timeout=10) as probe:
            probe.sendall(encode_v1(("192.0.2.1", 1), ("192.0.2.2", 2)) + b"x")
            probe.shutdown(socket_module.SHUT_WR)
            _STAGES_RUN.append(recv_until_eof(probe) == b"x")
    return _STAGES_RUN[0]


STAGES_NOT_RUN = ("the server's loop does not run connection stages yet (contract in sockwork.connection; "
                  "the loop that runs them is the lead's change on main)")
