"""How a delivery's final state outlives its process: at exit, after a fork, in a
multiprocessing child, on SIGTERM.

Every live delivery is closed (its final state delivered) by one atexit handler, within one
bound for all of them. A forked child resets what does not survive a fork; a multiprocessing
child, which ends with ``os._exit`` and never runs atexit, closes them from a multiprocessing
finalizer; a SIGTERM, with the opt-in handler, exits through ``sys.exit`` so atexit runs.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sys
import time
import weakref
from types import FrameType
from typing import Any, Protocol

from .._cells import more_fork_locks

__all__ = [
    "EXIT_FLUSH_TIMEOUT",
    "exit_flush_running",
    "follow_multiprocess_env",
    "install_sigterm_handler",
    "instance_label",
    "multiprocess_enabled",
    "track",
    "values_locks",
]

logger = logging.getLogger("instrument")

#: Seconds the final flush at exit may take, for all deliveries together.
EXIT_FLUSH_TIMEOUT = 5.0


class _Closable(Protocol):
    def close(self, timeout: float = ...) -> None: ...

    def reset_process_state(self) -> None: ...


_live: weakref.WeakSet[_Closable] = weakref.WeakSet()
_exit_flush_running = False
#: The multiprocess value classes made here, by directory.
_multiprocess_values: dict[str, Any] = {}


def instance_label(multiprocess: bool) -> str:
    """This process's ``instance``: host-pid. In multiprocess mode a push carries the whole
    directory's totals, the same from any process of the host: one group per host, or each
    owner's group would count them again."""
    host = socket.gethostname()
    return host if multiprocess else f"{host}-{os.getpid()}"


def multiprocess_enabled() -> bool:
    """True when prometheus_client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112
    )


def follow_multiprocess_env() -> bool:
    """Make prometheus_client's value class agree with ``PROMETHEUS_MULTIPROC_DIR`` as it
    is now, before metrics are created; True in multiprocess mode.

    prometheus_client picks the class once, when it is imported. A variable set after
    ``import instrument`` (which imports it) but before configuring would leave the metrics
    in memory while delivery and ``/metrics`` collect from the directory: every push and
    scrape empty. The metrics created from here on follow the variable; ones created
    before keep their values where they are.
    """
    from prometheus_client import values

    wanted = multiprocess_enabled()
    if values.ValueClass is not values.MutexValue:
        if not wanted:
            values.ValueClass = values.MutexValue
    elif wanted:
        # One class per directory and process: a class keeps its files open, and a second
        # one would map the same per-pid files twice.
        # (prometheus_client copies the old lower-case variable into this one.)
        key = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        if key not in _multiprocess_values:
            _multiprocess_values[key] = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        values.ValueClass = _multiprocess_values[key]
    return wanted


def values_locks() -> list[Any]:
    """The locks of prometheus_client's multiprocess value classes in this process.

    Each class keeps one lock for all its values (in its methods' closure), taken by every
    update: the flusher's own counters update from its thread. A fork while a thread holds
    it would leave the child a lock nobody releases, and the child's first update would
    wait forever; so a fork waits for these, after the cells' locks (``_cells``). None are
    found (and nothing waits) if prometheus_client keeps its lock elsewhere."""
    values = sys.modules.get("prometheus_client.values")
    if values is None:
        return []
    locks = []
    for cls in {values.ValueClass, *_multiprocess_values.values()}:
        inc = getattr(cls, "inc", None) if getattr(cls, "_multiprocess", False) else None
        code, closure = getattr(inc, "__code__", None), getattr(inc, "__closure__", None)
        if code is not None and closure:
            for name, cell in zip(code.co_freevars, closure, strict=False):
                if name == "lock" and hasattr(cell.cell_contents, "acquire"):
                    locks.append(cell.cell_contents)
    return locks


def track(delivery: _Closable) -> None:
    """Close ``delivery`` when its process ends, whichever way it ends (held weakly)."""
    _live.add(delivery)
    _hook_multiprocessing()


def exit_flush_running() -> bool:
    """True while the final flush at exit runs: a SIGTERM handler lets it finish."""
    return _exit_flush_running


def _close_all_at_exit() -> None:
    global _exit_flush_running
    _exit_flush_running = True
    try:
        # One bound for the whole exit, however many instrumentations there are.
        deadline = time.monotonic() + EXIT_FLUSH_TIMEOUT
        for delivery in list(_live):
            try:
                delivery.close(timeout=max(deadline - time.monotonic(), 0.001))
            except Exception:
                logger.exception("instrument: final flush at exit failed")
    finally:
        _exit_flush_running = False


def install_sigterm_handler() -> None:
    """On SIGTERM, exit through ``sys.exit`` so atexit's final flush runs.

    A handler that was installed before is called first. Only the main thread can install it.
    The toolkit's threads never receive the signal, so it reaches the main thread even while
    that sleeps; a SIGTERM that comes while the final flush runs lets it finish.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        if exit_flush_running():
            # A second SystemExit would abort the flush this exit is waiting for; it is
            # bounded (5 s), so the process ends anyway.
            return
        # Children forked after this inherit the handler; they exit the same way.
        sys.exit(128 + signum)

    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, on_sigterm)


# -- multiprocessing children: they end with os._exit, so atexit never runs there ---------------

_after_fork_hooked = False
_child_finalizer: Any = None


def _hook_multiprocessing(_: object = None) -> None:
    """Deliver the final state when a multiprocessing child ends normally.

    multiprocessing ends a child (fork and forkserver start methods) with ``os._exit``
    after running its own finalizers (``multiprocessing.util.Finalize``), never the atexit
    handlers; and it clears the finalizers a child inherited before running the after-fork
    hooks (``register_after_fork``). So the final flush is registered as a finalizer from
    such a hook in each child, or when a delivery is created in one. Nothing is imported:
    without multiprocessing loaded, no multiprocessing child can start.
    """
    global _after_fork_hooked, _child_finalizer
    util = sys.modules.get("multiprocessing.util")
    multiprocessing = sys.modules.get("multiprocessing")
    if util is None or multiprocessing is None:
        return
    if not _after_fork_hooked:  # inherited by children, with multiprocessing's registry
        _after_fork_hooked = True
        util.register_after_fork(_hook_multiprocessing, _hook_multiprocessing)
    if multiprocessing.parent_process() is None:
        return  # not a multiprocessing child: atexit delivers
    if _child_finalizer is not None and _child_finalizer.still_active():
        return
    # Below zero: run after the child has joined its own children, so an owner in
    # multiprocess mode collects their final totals too.
    _child_finalizer = util.Finalize(None, _close_all_at_exit, exitpriority=-10)


def _after_fork_in_child() -> None:
    for delivery in list(_live):
        delivery.reset_process_state()
    # Runs inside os.fork(): multiprocessing's own after-fork hooks run later, in the child.
    _hook_multiprocessing()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
more_fork_locks.append(values_locks)
