"""Reading the fields of foreign objects (SDK models, dicts, other mappings) by name.

A response, a stream chunk and a usage block may each be an SDK object (attributes) or a
plain dict (keys); these read either, and never raise: a property of a foreign object may
raise anything, and what cannot be read is absent (None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def attribute(obj: Any, name: str) -> Any:
    """``obj.name``, None when absent."""
    try:
        return getattr(obj, name, None)
    except Exception:  # a property of a foreign object may raise anything
        return None


def _key(obj: Any, name: str) -> Any:
    """``obj[name]`` of a mapping other than a dict, None when absent."""
    return obj.get(name)


def no_fields(obj: Any, name: str) -> None:
    """None, str and bytes: no fields to read."""
    return None


Reader = Callable[[Any, str], Any]

# How to read the fields of each type, remembered: the Mapping ABC check costs more than
# a read, and a stream reads several fields of every chunk, all of the same few types.
READERS: dict[type, Reader] = {
    dict: dict.get,
    str: no_fields,
    bytes: no_fields,
    type(None): no_fields,
}
_SEEDED = dict(READERS)


def reader_of(obj: Any) -> Reader:
    """How to read the fields of ``obj``: by key, by attribute, or not at all."""
    kind = type(obj)
    read = READERS.get(kind)
    if read is None:
        if isinstance(obj, str | bytes):
            read = no_fields
        elif isinstance(obj, Mapping):
            read = _key
        else:
            read = attribute
        if len(READERS) >= TYPES_KEPT:
            # Types made per object (each Mock is an instance of its own class) must not
            # be kept alive here without end: start over, the few usual ones come back.
            forget(READERS)
        READERS[kind] = read
    return read


def read_field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` otherwise; None when absent."""
    read = READERS.get(type(obj)) or reader_of(obj)
    if read is not attribute:
        return read(obj, name)
    try:  # inlined: the common case, one call per field rather than two
        return getattr(obj, name, None)
    except Exception:  # a property of a foreign object may raise anything
        return None


#: How many response types a per-type cache of readers keeps: a type made per response
#: (a class built in a loop) would otherwise grow it without end.
TYPES_KEPT = 256


def learn(
    readers: dict[type, Callable[[Any], T]],
    response: Any,
    none: Callable[[Any], T],
    of_dict: Callable[[Any], T],
    of_object: Callable[[Any], T],
) -> Callable[[Any], T]:
    """Which of three readers applies to ``response``'s type, remembered in ``readers``
    (started over when it holds ``TYPES_KEPT`` types):
    ``none`` for None, str and bytes, ``of_dict`` for a plain dict (a subclass may have
    its own get, so it is a mapping), ``of_object`` for any other mapping or object. What
    each reads from an instance is the instance's own, so this is all a type decides."""
    kind = type(response)
    get = READERS.get(kind) or reader_of(response)
    read = none if get is no_fields else of_dict if get is dict.get else of_object
    if len(readers) >= TYPES_KEPT:
        forget(readers)
    readers[kind] = read
    return read


def forget(readers: dict[type, Any]) -> None:
    """Empty a full per-type cache (``READERS`` keeps the types it is seeded with)."""
    readers.clear()
    if readers is READERS:
        READERS.update(_SEEDED)
