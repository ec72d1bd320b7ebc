"""The ``inline`` dispatcher: serve each request in the accept loop's thread, one at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import attrs

from sockwork.hookspecs import hookimpl
from sockwork.interfaces import DispatcherHost

if TYPE_CHECKING:
    from sockwork.registry import DispatcherEntry

__all__ = ["InlineDispatcher", "InlineOptions"]


@final
@attrs.frozen
class InlineOptions:
    """The ``inline`` dispatcher takes no options."""


@final
class InlineDispatcher:
    """Serves each request before accepting the next (socketserver's default).

    Right for handlers that answer at once and for debugging; one slow client
    holds up everyone else.
    """

    concurrency = 1

    def __init__(self, options: InlineOptions | None = None) -> None:
        self.options = options or InlineOptions()

    def start(self, host: DispatcherHost) -> None:
        # Nothing to schedule: submitting *is* serving, with no call in between.
        # (serve() returns an Outcome where submit() returns None: the loop ignores either.)
        self.submit = host.serve  # type: ignore[method-assign,assignment]  # a per-instance fast path

    def submit(self, request: Any, client_address: Any) -> None:
        raise RuntimeError("InlineDispatcher.submit() called before start()")

    def saturated(self) -> bool:
        return False

    def drain(self, timeout: float | None) -> bool:
        return True  # work only ever runs inside submit()

    def close(self) -> None:
        pass


@hookimpl(trylast=True)
def sockwork_add_dispatchers() -> list[DispatcherEntry]:
    from sockwork.registry import DispatcherEntry  # the registry is loaded only when one is built

    return [
        DispatcherEntry(
            "inline", InlineDispatcher, InlineOptions,
            description="serve in the accept loop's thread, one request at a time",
        )
    ]
