"""Closing a TCP listener without resetting a connection the kernel completed (Linux).

A listener's close resets every connection in its accept queue and every
handshake under way; the client (a balancer) had its connection established
and may have sent its request, so it cannot retry it elsewhere. Taking the
accept queue before the close is not enough: a handshake that completes
between the last accept and the close is reset all the same. So, before a
transport that owns its listener closes it:

1. :func:`drop_new_handshakes` attaches a classic BPF socket filter that drops
   packets with SYN set and ACK clear: the kernel starts no new handshake (the
   client's SYN is lost; its retransmission, a second later, meets a closed
   port and is refused, which a balancer retries on another server), while the
   final ACKs of handshakes under way pass and complete them;
2. :func:`half_open` counts those still under way (SYN_RECV entries for the
   listener's port in ``/proc/net/tcp`` and ``tcp6``), so the server accepts
   until none is left (bounded by its own grace), then closes.

Connections accepted after the filter was attached inherit it, harmlessly:
an established connection never carries a SYN without an ACK. Where the
filter cannot be attached (not Linux, or refused) nothing changes and the
caller closes as before.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

__all__ = ["drop_new_handshakes", "half_open"]

_SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; Linux only (other architectures: the same except sparc/parisc)

# ldb [13] (the TCP flags byte; a TCP socket's filter sees the TCP header at offset 0);
# and #0x12 (SYN|ACK); jeq #0x02 (SYN alone) ? drop : accept
_PROGRAM = (
    (0x30, 0, 0, 13),          # BPF_LD | BPF_B | BPF_ABS
    (0x54, 0, 0, 0x12),        # BPF_ALU | BPF_AND | BPF_K
    (0x15, 0, 1, 0x02),        # BPF_JMP | BPF_JEQ | BPF_K
    (0x06, 0, 0, 0),           # BPF_RET | BPF_K: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: accept the whole packet
)
_SYN_RECV = "03"


def drop_new_handshakes(sock: socket.socket) -> bool:
    """Make the TCP listener ``sock`` drop new SYNs; True if the kernel took the filter."""
    if not sys.platform.startswith("linux") or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in _PROGRAM)
    buffer = ctypes.create_string_buffer(code)
    program = struct.pack("HP", len(_PROGRAM), ctypes.addressof(buffer))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
    except OSError:
        return False
    return True


def half_open(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> int:
    """How many connections to local ``port`` are in SYN_RECV (handshakes under way); 0 if unknown."""
    wanted = f":{port:04X}"
    count = 0
    for table in tables:
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)  # the heading
                for line in lines:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == _SYN_RECV and fields[1].endswith(wanted):
                        count += 1
        except OSError:
            continue
    return count
