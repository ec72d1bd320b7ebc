"""attrs validators shared by the options classes of the built-in components."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["boolean", "off_is_none", "optional_positive_int", "positive_int"]


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
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"'{attribute.name}' must be an int >= 1, or none for no limit, got {value!r}")
