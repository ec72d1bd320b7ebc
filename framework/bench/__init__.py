"""Side-by-side benchmark: sockwork's dispatchers and legacy classes against socketserver.

    python -m sockwork.bench [--quick] [--workloads short,persistent,...] [--json FILE]
    sockwork bench ...   (the same)

Each server runs in a process of its own and is driven by separate client
processes over loopback (or a Unix socket). Every run warms up first; the
implementations take turns round by round (A B C A B C) so that drift of a
shared machine affects all alike. Reported per run: requests/s, latency
percentiles, **server CPU time per request** (the server process tree's
utime+stime, which stays meaningful when the clients share the CPUs), peak
RSS, the most threads and processes seen, errors. The standard library's
classic server is always the reference row; ratios are against it.

``--pin`` runs the server pinned to one CPU and the load on the others (Linux); ``--pin both``
runs pinned and free in one run and reports free ÷ pinned server CPU per request.

Every client is counted. Only what happens inside the measured window counts:
a reply that arrives in it is a request done, a failure seen in it is an
error, and a client that got neither a reply nor an error in the whole window
(it waited for an answer that never came) is an error too -- one per client.
Fairness is reported per run: how many clients got at least one reply, and
the fewest replies any client got next to the median.

Workloads (64-byte echo unless said otherwise):
  short       a new TCP connection per request, 8 clients at a time
  persistent  32 clients, each with one TCP connection, request after request
  large       4 clients, 64 KiB requests over persistent TCP connections
  udp         8 clients with one datagram outstanding each
  unix        8 clients over persistent Unix stream connections
  many        1,000 keep-alive TCP clients (multiplexed in two client processes)
  lines       1,000 keep-alive TCP clients of a line protocol (``lines``: each line answered ``"<n>: <line>"``)
  silent      16 keep-alive clients measured while 2,000 connections that send nothing and 100 that
              trickle a byte every 2 s are held open (opened first, by a process of their own)
  tls         32 keep-alive clients over TLS (certificates made per run by trustme; skipped without it)
  http10      http.server serving a 1 KiB file, HTTP/1.0 (a connection per request)
  http11      the same with HTTP/1.1 keep-alive

Implementations: ``stdlib`` (the standard library's Threading*Server, always
the reference row), ``legacy`` (``sockwork.socketserver``'s), any registered
sockwork dispatcher by name (``thread``, ``pool``, ``prefork``, ...), and the
event-loop peers ``asyncio-streams`` and ``uvloop-streams`` (asyncio's
streams, on uvloop's loop; skipped, and said so, when uvloop is not installed), and the
bare reference rows ``bare-threads`` and ``bare-lf`` (``bare``: sockets, epoll and threads,
no framework; their ratios are the "× bare" columns).
What sockwork's servers run is each workload's ``handler`` (a registered
name: the built-in ``echo`` or ``lines``); the other rows run the same
protocol written their own way (a classic handler class, an asyncio coroutine).

The two HTTP workloads run ``http.server.ThreadingHTTPServer`` with
``SimpleHTTPRequestHandler`` on the standard ``socketserver`` and on
``sockwork.socketserver`` (installed as ``socketserver`` before ``http.server``
is imported), nothing else, and are driven by ``wrk -t1 -c16`` (a C load
generator: the distribution's ``wrk`` package). Without ``wrk`` on PATH they are
skipped, and the report says so.

The package's modules, in the order a run uses them: ``command`` (the command line, the order of the
runs), ``workloads`` (what is measured), ``servers`` (one server per process), ``runs`` and ``wrk``
(one measured run), ``placement`` (pinned or free), ``bare`` (the reference rows), ``tls`` (the
workload's certificates), ``clients``, ``mux`` and ``holder`` (the client processes), ``tally`` (every
client counted), ``measurement`` (the server's tree from /proc), ``lifecycle`` (shutdown() and
import time), ``report`` (the tables).
"""

from __future__ import annotations

from .command import main as main

__all__ = ["main"]
