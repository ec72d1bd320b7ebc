"""Measuring the server's process tree from /proc: CPU time, threads, processes, memory, descriptors."""

from __future__ import annotations

import contextlib
import os
import time

_TICK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of each of its threads, recursively)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    children = [int(p) for p in f.read().split()]
                found.extend(children)
                todo.extend(children)
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def cpu_seconds(pid: int) -> float:
    """utime+stime of the tree: the process, its reaped children, its live descendants."""
    def fields(p: int) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    total = 0.0
    try:
        own = fields(pid)
        total += sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime
    except OSError:
        return 0.0
    for child in descendants(pid):
        with contextlib.suppress(OSError):  # exited meanwhile: counted in its parent's cutime once reaped
            total += sum(int(x) for x in fields(child)[11:13])
    return total / _TICK


def status(pid: int, key: str) -> int:
    """One number of ``/proc/PID/status`` (``Threads``, ``VmRSS``, ``VmHWM``), 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid: int) -> int:
    """Resident memory of the process tree now (VmRSS summed; shared pages of prefork's workers count twice)."""
    return sum(status(p, "VmRSS") for p in tree(pid))


def tree_fds(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


def settled_fds(pid: int, limit: float = 5.0) -> int:
    """The tree's descriptor count once it has stopped changing (for 0.5 s), or after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    count = tree_fds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        count, before = tree_fds(pid), count
        if count == before:
            break
    return count


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile of latencies in seconds, in milliseconds (None without any)."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000
