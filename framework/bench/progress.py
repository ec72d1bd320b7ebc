"""Progress on stderr while the runs go: per run, with the time left.

On a terminal, one line redrawn in place: a bar, the runs done, what runs now and the time left. Not
on a terminal (a log, CI), a plain line per finished run. The time left is the runs still to do at the
mean time of those done so far (before the first, the warm-up and window plus a guess for setting
up), plus the two short measurements at the end (shutdown() and import time).
"""

from __future__ import annotations

import time
from typing import TextIO

SETUP_GUESS = 2.0  # seconds a run takes beyond warm-up and window before any has been timed
TAIL = 12.0  # seconds the shutdown() and import-time measurements take at the end (default rounds)
BAR = 24


class Progress:
    """Counts runs done out of ``total`` and tells ``stream`` as they go."""

    def __init__(self, total: int, per_run_guess: float, stream: TextIO) -> None:
        self.total, self.done = total, 0
        self.guess = per_run_guess + SETUP_GUESS
        self.stream = stream
        self.tty = stream.isatty()
        self.began = time.monotonic()
        self.current = ""

    def left(self) -> float:
        """Seconds still to go, estimated."""
        per_run = (time.monotonic() - self.began) / self.done if self.done else self.guess
        return per_run * (self.total - self.done) + TAIL

    def start(self, what: str) -> None:
        """A run begins (``what``: workload, implementation, round, placement)."""
        self.current = what
        if self.tty:
            self._draw()

    def finish(self, seconds: float) -> None:
        """The current run ended after ``seconds``."""
        self.done += 1
        if self.tty:
            self._draw()
        else:
            self.stream.write(f"sockwork bench: {self.current}: {seconds:.1f} s "
                              f"({self.done}/{self.total} runs, about {duration(self.left())} left)\n")
            self.stream.flush()

    def skip(self, runs: int) -> None:
        """``runs`` planned runs will not happen (an implementation that refused the workload)."""
        self.total -= runs

    def say(self, line: str) -> None:
        """A line of its own (a workload done, a warning), not overwritten by the bar."""
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(line + "\n")
        if self.tty and self.done < self.total:
            self._draw()
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _draw(self) -> None:
        filled = BAR * self.done // max(1, self.total)
        self.stream.write(f"\r\033[K[{'#' * filled}{'.' * (BAR - filled)}] {self.done}/{self.total} "
                          f"{self.current}, about {duration(self.left())} left")
        self.stream.flush()


def duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 10 s"``, ``"1 h 5 min"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
