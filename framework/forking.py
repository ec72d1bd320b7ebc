"""Forking a server process safely: what the parent does around ``fork()``, and what the child does first.

sockwork forks in two places — the ``fork`` dispatcher (a child per request)
and the ``prefork`` supervisor (worker processes) — and a plugin that forks
should do it the same way::

    from sockwork import forking

    pid = forking.fork()          # instead of os.fork()
    if pid == 0:
        ...                       # the child: its signal plumbing is already reset
        os._exit(status)

or, if something else forks for you (``multiprocessing``, a C library), call
:func:`prepare_child` first thing in the child.

Rule 1: a child keeps none of its parent's signal plumbing. The parent's
wake-up fd (``signal.set_wakeup_fd``, set by ``sockwork serve`` and by asyncio)
names a descriptor the child closes and then reuses for its own sockets and
files; left in place, every signal would write a byte into them (issue 14,
item 1). The parent's Python signal handlers were written for the parent's
state; run in a child they act on a copy of it.
Rule 2: the parent decides when its children stop. A signal the parent
catches (SIGINT from Ctrl-C in a terminal reaches the whole process group, as
does systemd's default SIGTERM) is ignored by the child, so it finishes its
request; the parent stops it (``close()`` kills what outlives the drain).
Rule 3: no signal reaches a child before it has done the above: :func:`fork`
blocks signals across ``os.fork()``; the child's pending ones arrive after.
Rule 4: what is buffered in ``sys.stdout``/``sys.stderr`` at ``fork()`` is
written once, by the parent: :func:`fork` flushes first.

Forking from a process that runs other threads is a hazard no function here
removes: a lock another thread holds at ``fork()`` (logging's, an SSL
library's) stays locked forever in the child. Python 3.12 and later warn about
it (``DeprecationWarning: This process ... is multi-threaded, use of fork()
may lead to deadlocks in the child``). Fork from a process with one thread; see
"Fork hygiene" in docs/plugins.md.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

__all__ = ["CHILD_SETUP_FAILED", "flush_stdio", "fork", "prepare_child"]

# Synchronous signals are the process's own faults: never blocked, never handled here.
_SYNCHRONOUS = frozenset(
    getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT")
    if hasattr(signal, name)
)
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
_ASYNCHRONOUS = frozenset(signal.valid_signals()) - _SYNCHRONOUS - _UNCATCHABLE
_ALWAYS_IGNORED = (signal.SIGINT, signal.SIGTERM)

# The signal module's C functions, without its wrappers' conversion of every
# number to an enum member (a ValueError for each real-time signal). Measured
# on 3.11: fork()'s masking in the parent (the accept loop's thread) takes 2 us
# instead of 66, prepare_child() 10 us instead of 33. The public functions
# where there is no _signal.
_c: Any = importlib.import_module("_signal") if "_signal" in sys.builtin_module_names else signal
_sigmask: Callable[[int, Iterable[int]], set[int]] = _c.pthread_sigmask
_getsignal: Callable[[int], object] = _c.getsignal

CHILD_SETUP_FAILED = 70
"""Exit status of a child :func:`fork` could not prepare (``EX_SOFTWARE``); it says why on stderr."""


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The child's handler for the parent's signals: does nothing.

    A Python function rather than SIG_IGN because exec() resets a caught
    signal to its default but keeps an ignored one ignored: a program the
    child runs can still be stopped with SIGINT or SIGTERM.
    """


def prepare_child() -> None:
    """First thing in a forked child: drop the parent's signal plumbing; let the parent decide when it stops.

    Exactly this, in this order:

    1. ``signal.set_wakeup_fd(-1)``: no wake-up fd (the parent's, if it had one,
       names a descriptor that is not the child's to write to);
    2. SIGINT and SIGTERM, and every other signal whose handler is a Python
       callable (one the parent installed with ``signal.signal``, or Python's
       default SIGINT handler), get a Python handler that does nothing: the
       child ignores them, and a program it execs gets their defaults back;
       signals set to ``SIG_DFL`` or ``SIG_IGN``, or handled outside Python
       (``faulthandler``), are left as they are;
    3. the calling thread's signal mask is emptied (``pthread_sigmask(SIG_SETMASK,
       [])``): signals the parent had blocked (for ``sigwait``, or by :func:`fork`)
       are delivered again, so a program the child execs does not inherit them
       blocked. Signals that arrived while blocked are handled here, by step 2.

    Call it in the child's only thread, before anything that could block or
    open a descriptor; :func:`fork` already does. It is idempotent and raises
    nothing on POSIX. Install your own handlers after it (a prefork worker
    handles SIGTERM as "drain and exit", say).
    """
    signal.set_wakeup_fd(-1)
    for signum in _ASYNCHRONOUS:
        if signum in _ALWAYS_IGNORED or callable(_getsignal(signum)):
            signal.signal(signum, _ignore)
    _sigmask(signal.SIG_SETMASK, ())


def fork() -> int:
    """``os.fork()`` for a server: flush stdio, fork with signals held, prepare the child.

    Returns what ``os.fork()`` returns: 0 in the child, the child's pid in the
    parent. In the parent: :func:`flush_stdio`, then every asynchronous signal
    is blocked in the calling thread across ``os.fork()`` and unblocked right
    after (a signal to the parent then waits a few microseconds, and is not
    lost). In the child: :func:`prepare_child` has run before this returns, so
    a signal to the process group between ``fork()`` and the child's first line
    finds it ready; should that fail, the child says why on stderr and exits
    with :data:`CHILD_SETUP_FAILED` rather than return into the parent's code.
    Raises ``OSError`` as ``os.fork()`` does (the mask is restored first).

    Like ``os.fork()``, it warns on Python 3.12+ when the process runs other
    threads.
    """
    flush_stdio()  # else the child inherits, and writes again, what the parent buffered
    held = _sigmask(signal.SIG_BLOCK, _ASYNCHRONOUS)
    try:
        pid = os.fork()
    except BaseException:
        _sigmask(signal.SIG_SETMASK, held)
        raise
    if pid == 0:
        try:
            prepare_child()
        except BaseException as exc:  # never let a child return into its parent's code
            os.write(2, f"sockwork: forked child {os.getpid()} cannot start: {exc!r}\n".encode())
            os._exit(CHILD_SETUP_FAILED)
    else:
        _sigmask(signal.SIG_SETMASK, held)
    return pid


def flush_stdio() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``, ignoring any error.

    Call it before forking (else the child inherits, and writes again, what the
    parent had buffered) and in a child before ``os._exit()`` (which skips
    Python's own flush). A broken or closed stream must not stop a fork or a
    child's exit, so errors are ignored.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass  # documented: a broken stream must not stop a fork or a child's exit
