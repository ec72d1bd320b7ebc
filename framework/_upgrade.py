"""Upgrade in place (SIGUSR2): a new master, the same command line re-executed, takes over the listener.

    old master ──SIGUSR2──► spawn [python, *sys.orig_argv[1:]] with the listening socket inherited
                              (its descriptor number in SOCKWORK_LISTENER_FD, a pipe's write end in
                              SOCKWORK_READY_FD, the old master's pid in SOCKWORK_UPGRADE_FROM)
    new master ──► build_server adopts the socket instead of binding ──► serving: "ready" on the pipe
    old master ──"ready"──► hand over: stop as on SIGTERM, but close only its copy of the listener;
                             drain; exit 0 by itself
               ──the new one exits, or says nothing for UPGRADE_TIMEOUT──► log why, keep serving

Rule 1: the listening socket is never closed while anybody might connect: both masters hold it
until the old one has drained, and the old one never filters or unlinks it.
Rule 2: the old master keeps serving until the new one says it serves; any failure before that
(a config that does not load, a bind error, a crash, silence) leaves it serving and logged.
Rule 3: the new master writes the pid file; if it fails, the old one writes its own pid back.
Rule 4: under systemd (``NOTIFY_SOCKET``), a first master says ``READY=1`` once it serves, and an old
master hands the unit over with ``MAINPID=<new>`` (it is the main process, so the default
``NotifyAccess=main`` accepts it) before it drains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, final

from .validators import check_listener_url

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Handover", "Upgrade", "notify_systemd", "take_handover", "write_pid_file"]

logger = logging.getLogger("sockwork")

ENV_LISTENER, ENV_READY, ENV_FROM = "SOCKWORK_LISTENER_FD", "SOCKWORK_READY_FD", "SOCKWORK_UPGRADE_FROM"
ENV_SIDE = "SOCKWORK_SIDE_FDS"  # "agent check=5,health=6": the side listeners, inherited the same way

UPGRADE_TIMEOUT = 30.0
"""Seconds the new master has to start serving before the old one gives up on it (and ends it)."""


@final
class Handover:
    """In a new master: the listener inherited from the old one, and how to tell it this one serves."""

    def __init__(self, listener_fd: int, ready_fd: int, old_pid: int, side: dict[str, int]) -> None:
        self.listener_fd, self.ready_fd, self.old_pid = listener_fd, ready_fd, old_pid
        self.side = side

    def side_listener(self, name: str, configured: str | None) -> str | int | None:
        """The inherited descriptor of side listener ``name`` if the config still asks for its address
        (port 0: any), else the configured URL (bound anew; the old one closes with the old master)."""
        fd = self.side.get(name)
        if fd is None or configured is None:
            return configured
        address = check_listener_url(configured, name)
        host, port = address if isinstance(address, tuple) else ("", 0)
        bound = socket.socket(fileno=fd)
        try:
            bound_host, bound_port = bound.getsockname()[:2]
        finally:
            bound.detach()
        if port in (0, bound_port) and (host in ("", "0.0.0.0", "::") or host == bound_host):
            return fd
        os.close(fd)
        return configured

    def serving(self) -> None:
        """Tell the old master (once): it hands over, drains and exits."""
        if self.ready_fd < 0:
            return
        with contextlib.suppress(OSError):  # the old master is gone: nobody to tell
            os.write(self.ready_fd, b"ready\n")
        os.close(self.ready_fd)
        self.ready_fd = -1


def take_handover() -> Handover | None:
    """The handover an old master prepared for this process (the variables are removed), or None."""
    values = [os.environ.pop(name, None) for name in (ENV_LISTENER, ENV_READY, ENV_FROM)]
    side_text = os.environ.pop(ENV_SIDE, "")
    if None in values or not all(value.isdigit() for value in values if value is not None):
        return None
    listener, ready, old = (int(value) for value in values if value is not None)
    side = {name: int(fd) for name, _, fd in (item.partition("=") for item in side_text.split(",") if item)}
    return Handover(listener, ready, old, side)


@final
class Upgrade:
    """In the old master: start the new one, watch it, and hand over once it serves (in the loop)."""

    def __init__(self, server: Server, pid_file: str | None) -> None:
        self.server = server
        self.pid_file = pid_file
        self._child: subprocess.Popen[bytes] | None = None
        self._ready = self._pidfd = -1

    def start(self) -> str:
        """SIGUSR2's action; what happened, in words."""
        if self._child is not None:
            return f"ignored: an upgrade is under way (new master pid {self._child.pid})"
        listener = self.server.transport.fileno()
        side = {name: side_listener.fileno() for name, side_listener in self.server.side_listeners.items()}
        ready_r, ready_w = os.pipe()
        command = [sys.executable, *sys.orig_argv[1:]]
        env = {**os.environ, ENV_LISTENER: str(listener), ENV_READY: str(ready_w), ENV_FROM: str(os.getpid()),
               ENV_SIDE: ",".join(f"{name}={fd}" for name, fd in side.items())}
        try:
            child = subprocess.Popen(command, pass_fds=(listener, ready_w, *side.values()), env=env)
        except OSError as exc:
            os.close(ready_r)
            return f"upgrade failed: cannot start {command[0]}: {exc}; still serving"
        finally:
            os.close(ready_w)
        self._child, self._ready, self._pidfd = child, ready_r, os.pidfd_open(child.pid)
        loop = self.server.loop
        loop.add_reader(ready_r, self._on_ready)
        loop.add_reader(self._pidfd, self._on_exit)
        loop.call_later(UPGRADE_TIMEOUT, lambda: self._give_up(child))
        return (f"started a new master (pid {child.pid}): {' '.join(command)}; this one hands over and drains "
                "once it serves")

    def _on_ready(self) -> None:
        child = self._child
        try:
            said = os.read(self._ready, 64)
        except OSError:
            said = b""
        if child is None or not said:
            self._stop_watching_ready()  # end of file: its exit tells why
            return
        self._successor = child  # never waited for: it outlives this process
        self._stop_watching_ready()
        self._stop_watching_exit()
        notify_systemd(f"MAINPID={child.pid}")
        logger.info("SIGUSR2: upgraded: the new master (pid %d) serves; this one (pid %d) drains and exits",
                    child.pid, os.getpid())
        self.server.lifecycle.hand_over()

    def _on_exit(self) -> None:
        child = self._child
        if child is None:
            return
        status = child.wait()
        self._failed(f"the new master (pid {child.pid}) exited with status {status} before serving")

    def _give_up(self, child: subprocess.Popen[bytes]) -> None:
        if self._child is not child:
            return  # it served, or failed, meanwhile
        child.kill()
        child.wait()
        self._failed(f"the new master (pid {child.pid}) did not serve within {UPGRADE_TIMEOUT:g} s; ended it")

    def _failed(self, why: str) -> None:
        self._stop_watching_ready()
        self._stop_watching_exit()
        if self.pid_file is not None:
            with contextlib.suppress(OSError):
                write_pid_file(self.pid_file, os.getpid())
        logger.error("SIGUSR2: upgrade failed: %s; still serving (pid %d)", why, os.getpid())

    def _stop_watching_ready(self) -> None:
        if self._ready >= 0:
            self.server.loop.remove_reader(self._ready)
            os.close(self._ready)
            self._ready = -1

    def _stop_watching_exit(self) -> None:
        if self._pidfd >= 0:
            self.server.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        self._child = None


def write_pid_file(path: str, pid: int) -> None:
    """``pid`` and a newline in ``path``, replaced in one step: a reader never sees half a file."""
    temporary = f"{path}.{pid}.tmp"
    with open(temporary, "w", encoding="ascii") as file:
        file.write(f"{pid}\n")
    os.replace(temporary, path)


def notify_systemd(*states: str) -> bool:
    """sd_notify(3): send ``states`` (``READY=1``, ``MAINPID=N``) to the service manager that ``NOTIFY_SOCKET``
    names; False, and nothing sent, outside such a service or if it cannot be reached."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path.startswith(("/", "@")):
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # "@": an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True
