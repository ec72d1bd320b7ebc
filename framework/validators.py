"""attrs validators for options classes: the ones the built-in components use, public for plugins.

Each raises ``ValueError`` with a message that starts with the option's name, as
sockwork's option checking expects: ``'workers' must be an int >= 1, got 0``::

    @attrs.frozen(kw_only=True)
    class MyOptions:
        workers: int = attrs.field(default=4, validator=positive_int)
        limit: int | None = attrs.field(default=None, converter=off_is_none, validator=optional_positive_int)
"""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["boolean", "off_is_none", "optional_positive_int", "optional_seconds", "positive_int"]


def off_is_none(value: object) -> object:
    """Config files cannot write None: ``false`` or ``"none"`` mean it."""
    return None if value is False or value == "none" else value



def boolean(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"'{attribute.name}' must be true or false, got {value!r}")


def positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{attribute.name}' must be an int >= 1, got {value!r}")


def optional_positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"'{attribute.name}' must be an int >= 1, or none for no limit, got {value!r}")


def optional_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
    ):
        raise ValueError(f"'{attribute.name}' must be a number of seconds > 0, or none to disable, got {value!r}")
