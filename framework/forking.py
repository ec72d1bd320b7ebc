"""Fork hygiene for plugins that fork: what a child process does first.

(Placeholder written by the core redesign; the fork work replaces it.)
"""

from __future__ import annotations

import signal
import sys
from typing import Any

__all__ = ["flush_stdio", "prepare_child"]


def flush_stdio() -> None:
    """Flush stdout and stderr before fork(), so a child does not write the parent's buffer again."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass  # a broken stdout must not stop a fork or a child's exit


def prepare_child() -> None:
    """First thing in a forked child: drop the parent's signal plumbing; the parent decides when it stops."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, _ignore)
    signal.signal(signal.SIGTERM, _ignore)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _ignore(signum: int, frame: Any) -> None:
    pass
