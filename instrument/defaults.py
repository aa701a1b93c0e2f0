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

import contextlib
import logging
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.registry import Collector

from .metrics import DEFAULT_NAMESPACE, METRICS, Metrics

if TYPE_CHECKING:
    from .instrumentation import Instrumentation
    from .policy import Binding

__all__ = [
    "apush",
    "configure",
    "discard",
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
#: The metrics a default made with registry=REGISTRY registered there itself (or took over
#: from the default before it): they leave REGISTRY with that default.
_owned: weakref.WeakKeyDictionary[Instrumentation, Metrics] = weakref.WeakKeyDictionary()
#: What of the defaults' is on REGISTRY now (by id): the current default's, and the
#: collectors a default made with registry=REGISTRY until it is replaced.
_present: dict[int, Collector] = {}


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
    # The settings table is imported when the environment is first read: a program that
    # builds its own Instrumentation never needs it.
    from . import config as _config

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
    on_global = settings.get("registry") is REGISTRY
    namespace = settings.get("namespace", DEFAULT_NAMESPACE)
    existed = on_global and Metrics.shared(REGISTRY, namespace) is not None
    new = instrumentation_class()(**settings)
    if "registry" not in settings:
        _shown_by[new] = _Shown(new.registry)
    elif on_global and not existed:
        _owned[new] = new.metrics
        _present.update((id(c), c) for c in _collectors(new.metrics))
    elif on_global and any(m is new.metrics for m in _owned.values()):
        _owned[new] = new.metrics  # shared with a default made the same way: it counts on
    return new


def _collectors(metrics: Metrics) -> list[Collector]:
    return [getattr(metrics, spec.attr) for spec in METRICS]


def _presence(inst: Instrumentation | None) -> list[Collector]:
    """What REGISTRY holds of ``inst`` while it is the default."""
    if inst is None:
        return []
    shown = _shown_by.get(inst)
    if shown is not None:
        return [shown]
    owned = _owned.get(inst)
    return _collectors(owned) if owned is not None else []


def _show_on_global(new: Instrumentation | None) -> None:
    """Make REGISTRY hold what ``new`` shows there (nothing, for one given a registry of its
    own) instead of what the defaults before it did; a ValueError, with REGISTRY as it was,
    if its names clash there."""
    with _default_lock:
        wanted = {id(c): c for c in _presence(new)}
        leaving = [c for key, c in _present.items() if key not in wanted]
        coming = [c for key, c in wanted.items() if key not in _present]
        # The leaving first: what comes has the same names.
        for collector in leaving:
            with contextlib.suppress(KeyError):
                REGISTRY.unregister(collector)
        added: list[Collector] = []
        try:
            for collector in coming:
                REGISTRY.register(collector)
                added.append(collector)
        except ValueError as exc:
            for collector in added:
                REGISTRY.unregister(collector)
            for collector in leaving:
                REGISTRY.register(collector)
            raise ValueError(
                "the default instrumentation's metrics clash with a collector already on "
                f"prometheus_client.REGISTRY ({_clashing(exc)}); rename yours, or pass "
                "namespace= or registry= to configure()"
            ) from None
        _present.clear()
        _present.update(wanted)


def _clashing(exc: ValueError) -> str:
    """prometheus_client's duplicate error lists every sample name (dozens): a few do."""
    names = sorted(set(re.findall(r"'([^']+)'", str(exc))))
    if not names:
        return str(exc)
    shown = ", ".join(names[:3])
    return f"{shown} and {len(names) - 3} more" if len(names) > 3 else shown


def configure(**kwargs: Any) -> Instrumentation:
    """Replace the default instrumentation; environment variables fill what is not given.

    Without ``registry=``, the new default is shown on ``prometheus_client.REGISTRY`` in
    place of the old one, and pushes only its own metrics (``push_registry=`` to push more).

    Functions decorated with the module-level decorators before this call report to the
    new instrumentation from their next call on. A bad environment variable raises a
    ValueError naming it (a variable whose keyword is given is not read).
    """
    from . import config as _config

    unset = [s.keyword for s in _config.SETTINGS if s.keyword not in kwargs]
    from_env = _config.from_environment(only=unset)
    settings = {**from_env, **kwargs}
    with _default_lock:
        current = _default
        # What the current default has on REGISTRY gives way while the new one is made (it
        # may register the same names there), and comes back if that fails.
        _show_on_global(None)
        try:
            try:
                new = _make_default(settings)
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
        except BaseException:
            _show_on_global(current)
            raise
    if old is not None:
        discard(old)
    return new


def discard(inst: Instrumentation) -> None:
    """Close a default replaced for good (what :func:`replace_default` gave back) and take
    the collectors it registered on REGISTRY itself (made with registry=REGISTRY) off, unless
    the current default counts on them: the registry's table of shared metrics forgets them
    too, so the next registry=REGISTRY starts afresh and nothing stale stays exported."""
    inst.close()
    with _default_lock:
        owned = _owned.pop(inst, None)
        if owned is not None and (_default is None or _default.metrics is not owned):
            for collector in _collectors(owned):
                _present.pop(id(collector), None)
            owned.unregister()


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
    from . import config as _config

    names = [s.env for s in _config.SETTINGS if s.keyword in from_env and s.env]
    if "basic_auth" in from_env:
        names.append("INSTRUMENT_PUSHGATEWAY_USERNAME")
    if not names:
        return str(exc)
    return f"{exc} (set from the environment: {', '.join(names)})"


def replace_default(new: Instrumentation | None) -> Instrumentation | None:
    """Make ``new`` the default (None: create it from the environment on next use) and
    return the previous one, retired: decorators following the default rebind. The
    caller passes what it gets back to :func:`discard`, if it is done with it.

    REGISTRY holds what the new default shows there (its own registry, if configure() or
    the first use made it without one; the collectors it made, with registry=REGISTRY) in
    place of the old one's. A ValueError, with nothing replaced, if its names clash there."""
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
