"""Checks of the values users hand to the decorators and the facade: each returns quietly or
raises a TypeError / ValueError that says what was expected."""

from __future__ import annotations

import math

from .metrics import check_label_value

__all__ = ["check_flag", "check_label", "check_number"]


def check_flag(what: str, value: object) -> bool:
    """``value`` if it is a bool: a string such as "false" is truthy, and would do the
    opposite of what it says."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return value


def check_label(what: str, value: object, *, optional: bool = False) -> None:
    """``value`` must be a non-empty string fit for a label value (None if ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, got {value!r}")
    check_label_value(what, value)


def check_number(what: str, value: object) -> float:
    """``value`` as a float, or a TypeError/ValueError saying what was expected."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{what} must not be NaN")
    return number
