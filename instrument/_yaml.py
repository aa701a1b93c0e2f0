"""A small YAML emitter for the generated rule and test files: mappings, lists, strings,
numbers, booleans. It quotes every string that could read as something else (a boolean, a
number, a duration read as a number by some parsers), so no YAML library is needed at
runtime."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._promql import DURATION_RE

__all__ = ["to_yaml"]

_PLAIN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*(:[A-Za-z0-9_./-]+)*$")
# Words that YAML 1.1 (Go's yaml.v2, PyYAML) or 1.2 read as booleans or null.
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\0": "\\0",
}


def _string(value: str) -> str:
    # fullmatch: "$" alone would also match before a final newline, which plain YAML drops.
    plain = _PLAIN_RE.fullmatch(value) or (value and DURATION_RE.fullmatch(value))
    if plain and value.lower() not in _RESERVED:
        return value
    if value.isprintable():
        # Single quotes take everything printable literally; only ' is doubled.
        return "'" + value.replace("'", "''") + "'"
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 needs a dot in a float ("1e-05" would read as a string).
        mantissa, e, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        return mantissa + (e + exponent if e else "")
    if isinstance(value, str):
        return _string(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML: use dicts, lists, str, numbers")


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"YAML keys must be strings here, got {key!r}")
            head = f"{pad}{_string(key)}:"
            if isinstance(item, Mapping | list | tuple) and item:
                lines.append(head)
                _emit(item, indent + 2, lines)
            else:
                lines.append(f"{head} {_inline(item)}")
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, Mapping | list | tuple) and item:
                nested: list[str] = []
                _emit(item, indent + 2, nested)
                # The first line of the nested block goes after the dash.
                lines.append(f"{pad}- {nested[0][indent + 2 :]}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:
        lines.append(pad + _scalar(value))


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    return _scalar(value)


def to_yaml(data: Mapping[str, Any] | list[Any] | tuple[Any, ...]) -> str:
    """``data`` (dicts with string keys, lists, str, int, float, bool, None) as block YAML."""
    if not isinstance(data, Mapping | list | tuple):
        raise TypeError("to_yaml writes a mapping or a list")
    lines: list[str] = []
    _emit(data, 0, lines)
    return "\n".join(lines) + "\n" if lines else ("{}\n" if isinstance(data, Mapping) else "[]\n")
