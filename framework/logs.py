"""Log lines operators can ship: the access log, and JSON lines for every sockwork log record.

- :func:`log_access`: one line per connection (or datagram) on the ``sockwork.access`` logger,
  with its fields also on the record (``record.access_fields``), so any formatter can use them.
- :class:`JsonFormatter`: one JSON object per line, with stable keys (ACCESS_KEYS on access lines,
  LOG_KEYS on the others). ``sockwork serve --log-format json`` uses it for every line;
  ``--access-log json`` for the access lines.

Rule 1: keys are stable: new keys may be added, none is renamed or removed, and a value's type never
changes (a count the kernel could not tell is ``null``, not a missing key).
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, Final

from .interfaces import Address
from .limits import Outcome

__all__ = ["ACCESS_KEYS", "LOG_KEYS", "JsonFormatter", "format_client", "log_access"]

access_logger = logging.getLogger("sockwork.access")

ACCESS_KEYS: Final = ("time", "level", "logger", "pid", "client", "outcome", "duration_ms", "bytes_in", "bytes_out")
"""Keys of an access line (as JsonFormatter writes it)."""

LOG_KEYS: Final = ("time", "level", "logger", "pid", "message")
"""Keys of any other line; ``exc`` is added when the record carries a traceback."""


def format_client(client_address: Address) -> str:
    """A client address as one string: ``127.0.0.1:52936``, ``[::1]:52936``, a Unix path, or ``""`` (unnamed)."""
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        host, port = client_address[0], client_address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(client_address, bytes):
        return client_address.decode("utf-8", "backslashreplace")
    return str(client_address) if client_address else ""


def log_access(style: str, client_address: Address, outcome: Outcome, seconds: float,
               traffic: tuple[int | None, int | None]) -> None:
    """One access line: client, outcome, duration, bytes in and out (None where the kernel cannot tell).

    ``style`` ``"json"``: the message is the fields as one JSON object; ``"text"``:
    ``127.0.0.1:52936 completed 0.070 ms in=12 out=12``.
    """
    bytes_in, bytes_out = traffic
    fields: dict[str, Any] = {
        "client": format_client(client_address), "outcome": outcome.name.lower(),
        "duration_ms": round(seconds * 1000, 3), "bytes_in": bytes_in, "bytes_out": bytes_out,
    }
    extra = {"access_fields": fields}
    if style == "json":
        access_logger.info("%s", json.dumps(fields), extra=extra)
    else:
        access_logger.info("%s %s %.3f ms in=%s out=%s", fields["client"] or "-", fields["outcome"], seconds * 1000,
                           "-" if bytes_in is None else bytes_in, "-" if bytes_out is None else bytes_out, extra=extra)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Every line: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``
    and ``pid``; access lines add ``client``, ``outcome``, ``duration_ms``,
    ``bytes_in`` and ``bytes_out``; other lines add ``message`` (and ``exc``,
    the traceback, when there is one).
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "pid": record.process,
        }
        fields = getattr(record, "access_fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str)
