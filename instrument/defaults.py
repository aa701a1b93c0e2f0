"""The process-wide default instrumentation behind the module-level API, and configure().

The default is created from the environment on first use; :func:`configure` replaces it.
Unless given a registry, the default is shown on ``prometheus_client.REGISTRY`` (what
``start_http_server``, ``make_asgi_app`` and ``generate_latest()`` serve by default), while it
pushes only its own families: not the process_*/python_gc_* collectors that registry holds.
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
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Metric

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


class _Shown:
    """Shows one default's own registry on the global REGISTRY.

    A collector on REGISTRY rather than the metrics themselves: each default keeps a registry
    of its own, so configure() starts from fresh counts and other buckets without clashing
    with the previous default's collectors, and a push never carries REGISTRY's process_*
    families. Its names are REGISTRY's to check, so a user's own clashing metric is refused.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


#: The defaults made without a registry of their own, each with what shows it on REGISTRY.
_shown_by: weakref.WeakKeyDictionary[Instrumentation, _Shown] = weakref.WeakKeyDictionary()
#: What is on REGISTRY now: at most one, the current default's.
_on_global: list[_Shown] = []


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


def _default_from_environment() -> Instrumentation:
    settings, problems = _config.read_environment()
    for problem in problems:
        logger.error("instrument: %s; ignoring it, its default applies", problem)
    try:
        new = _make_default(settings)
    except Exception as exc:
        # Values that are each fine, but not together (push_mode=each with no target).
        logger.error(
            "instrument: the environment gives no working configuration (%s); "
            "recording with the defaults instead",
            _with_environment(exc, settings),
        )
        new = _make_default({})
    try:
        _show_on_global(new)
    except ValueError as exc:
        # Called from a decorated function's first call, which must not fail for it.
        logger.error(
            "instrument: the default instrumentation's metrics are not shown on "
            "prometheus_client.REGISTRY (%s); they are still recorded and pushed. Give the "
            "clashing metric another name, or call configure(namespace=...)",
            exc,
        )
    return new


def _make_default(settings: Mapping[str, Any]) -> Instrumentation:
    """An Instrumentation for the default; without a registry given, on one of its own that
    REGISTRY shows once it becomes the default."""
    new = instrumentation_class()(**settings)
    if "registry" not in settings:
        _shown_by[new] = _Shown(new.registry)
    return new


def _show_on_global(new: Instrumentation | None) -> None:
    """Make REGISTRY show ``new`` (if it was made without a registry) instead of the
    defaults before it; a ValueError, with REGISTRY as it was, if its names clash there."""
    with _default_lock:
        wanted = _shown_by.get(new) if new is not None else None
        if _on_global == [wanted]:
            return
        previous = list(_on_global)
        # The old ones first: the new one has the same names.
        for shown in previous:
            REGISTRY.unregister(shown)
        _on_global.clear()
        if wanted is None:
            return
        try:
            REGISTRY.register(wanted)
        except ValueError as exc:
            for shown in previous:
                REGISTRY.register(shown)
            _on_global.extend(previous)
            raise ValueError(
                f"the default instrumentation's metrics clash with a collector already on "
                f"prometheus_client.REGISTRY ({exc}); rename yours, or pass namespace= or "
                "registry= to configure()"
            ) from None
        _on_global.append(wanted)


def configure(**kwargs: Any) -> Instrumentation:
    """Replace the default instrumentation; environment variables fill what is not given.

    Without ``registry=``, the new default is shown on ``prometheus_client.REGISTRY`` in
    place of the old one, and pushes only its own metrics (``push_registry=`` to push more).

    Functions decorated with the module-level decorators before this call report to the
    new instrumentation from their next call on. A bad environment variable raises a
    ValueError naming it (a variable whose keyword is given is not read).
    """
    unset = [s.keyword for s in _config.SETTINGS if s.keyword not in kwargs]
    from_env = _config.from_environment(only=unset)
    try:
        new = _make_default({**from_env, **kwargs})
    except (TypeError, ValueError) as exc:
        if not from_env:
            raise
        error = ValueError if isinstance(exc, ValueError) else TypeError
        raise error(_with_environment(exc, from_env)) from None
    try:
        old = replace_default(new)
    except ValueError:
        new.close()
        raise
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
    caller closes what it gets back, if it is done with it.

    REGISTRY shows the new default if configure() (or the first use) made it without a
    registry, else none. A ValueError, with nothing replaced, if its names clash there."""
    global _default
    with _default_lock:
        _show_on_global(new)
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
