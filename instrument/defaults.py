"""The process-wide default instrumentation behind the module-level API, and configure().

The default is created from the environment on first use; :func:`configure` replaces it.
Decorators that follow the default (made without an ``inst``) hold a binding to it; when
it is replaced, the old one is retired: its bindings go stale and those decorators rebind
at their next call.

This module never imports the facade (``instrumentation.py`` imports it, with the
policies): the facade registers its class here when it is imported, which importing any
part of the package does first.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import config as _config

if TYPE_CHECKING:
    from .instrumentation import Instrumentation
    from .policy import Binding

__all__ = [
    "apush",
    "configure",
    "flush",
    "get_instrumentation",
    "instrumentation_class",
    "is_default",
    "push",
    "register_instrumentation_class",
    "replace_default",
    "set_retired",
    "track_binding",
]

logger = logging.getLogger("instrument")

_class: type[Instrumentation] | None = None
_default: Instrumentation | None = None
_default_lock = threading.RLock()
#: The bindings made to each instrumentation, so that retiring it marks them stale.
_bindings: weakref.WeakKeyDictionary[Instrumentation, weakref.WeakSet[Binding]] = (
    weakref.WeakKeyDictionary()
)
_bindings_lock = threading.Lock()


def register_instrumentation_class(cls: type[Instrumentation]) -> None:
    """What the default is an instance of: called by the facade as it is imported."""
    global _class
    _class = cls


def instrumentation_class() -> type[Instrumentation]:
    """The Instrumentation class the facade registered."""
    if _class is None:  # only if this module were loaded without its package
        raise RuntimeError("instrument.instrumentation is not imported; import instrument")
    return _class


def get_instrumentation() -> Instrumentation:
    """The default instrumentation, created from the environment on first use.

    A variable with a bad value must not break, or flood the log of, every decorated call:
    the error is logged once, that variable is ignored (its default applies), and calls
    are recorded as usual. :func:`configure` raises instead.
    """
    global _default
    current = _default
    if current is not None:
        return current
    with _default_lock:
        if _default is None:
            _default = _default_from_environment()
        return _default


def is_default(inst: Instrumentation) -> bool:
    """True if ``inst`` is the default instrumentation now; never creates one."""
    return _default is inst


def _default_from_environment() -> Instrumentation:
    make = instrumentation_class()
    settings, problems = _config.read_environment()
    for problem in problems:
        logger.error("instrument: %s; ignoring it, its default applies", problem)
    try:
        return make(**settings)
    except Exception as exc:
        # Values that are each fine, but not together (push_mode=each with no target).
        logger.error(
            "instrument: the environment gives no working configuration (%s); "
            "recording with the defaults instead",
            _with_environment(exc, settings),
        )
        return make()


def configure(**kwargs: Any) -> Instrumentation:
    """Replace the default instrumentation; environment variables fill what is not given.

    Functions decorated with the module-level decorators before this call report to the
    new instrumentation from their next call on. A bad environment variable raises a
    ValueError naming it (a variable whose keyword is given is not read).
    """
    unset = [s.keyword for s in _config.SETTINGS if s.keyword not in kwargs]
    from_env = _config.from_environment(only=unset)
    try:
        new = instrumentation_class()(**{**from_env, **kwargs})
    except (TypeError, ValueError) as exc:
        if not from_env:
            raise
        error = ValueError if isinstance(exc, ValueError) else TypeError
        raise error(_with_environment(exc, from_env)) from None
    old = replace_default(new)
    if old is not None:
        old.close()
    return new


def push(timeout: float | None = None) -> bool:
    """Push the default instrumentation's state now; True on success."""
    return get_instrumentation().push(timeout)


async def apush(timeout: float | None = None) -> bool:
    """Push the default instrumentation's state now over aiohttp; True on success."""
    return await get_instrumentation().apush(timeout)


def flush(timeout: float = 5.0) -> bool:
    """Wait until the default instrumentation's latest state is delivered."""
    return get_instrumentation().flush(timeout)


def _with_environment(exc: BaseException, from_env: Mapping[str, Any]) -> str:
    """``exc``'s message, plus which variables supplied settings: the message names
    keywords, which a user who set only variables would not recognise."""
    names = [s.env for s in _config.SETTINGS if s.keyword in from_env and s.env]
    if "basic_auth" in from_env:
        names.append("INSTRUMENT_PUSHGATEWAY_USERNAME")
    if not names:
        return str(exc)
    return f"{exc} (set from the environment: {', '.join(names)})"


def replace_default(new: Instrumentation | None) -> Instrumentation | None:
    """Make ``new`` the default (None: create it from the environment on next use) and
    return the previous one, retired: decorators following the default rebind. The
    caller closes what it gets back, if it is done with it."""
    global _default
    with _default_lock:
        old, _default = _default, new
    if old is not None and old is not new:
        set_retired(old, True)
    if new is not None:
        set_retired(new, False)
    return old


# -- retiring: the bindings of an instrumentation that stopped being the default ---------------


def track_binding(binding: Binding) -> None:
    """Note a new binding, so that retiring its instrumentation marks it stale. Called
    before the binding reads ``inst.retired``, so a retirement meanwhile cannot miss it."""
    with _bindings_lock:
        bindings = _bindings.get(binding.inst)
        if bindings is None:
            bindings = _bindings[binding.inst] = weakref.WeakSet()
        bindings.add(binding)


def set_retired(inst: Instrumentation, retired: bool) -> None:
    """Mark ``inst`` as (no longer) the default; its bindings go stale (or fresh again)."""
    inst.retired = retired
    with _bindings_lock:
        bindings = list(_bindings.get(inst, ()))
    for binding in bindings:
        binding.stale = retired or not binding.enabled
