"""One job's end: the probe a policy records through, the engine's rule for how a job
ended, the guards around every recording step, and deferred work.

Everything here is re-exported by ``_engine``, which is what a policy imports.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

__all__ = [
    "CANCELLING",
    "Probe",
    "aend_job",
    "collector_closing",
    "defer",
    "deferred_work",
    "end_job",
    "end_outside",
    "post_job_async",
    "record_end",
    "record_success",
    "report_failure",
    "run_deferred",
]

logger = logging.getLogger("instrument")

# Exceptions that end a job as "cancelled" rather than "error".
CANCELLING: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
)


class Probe:
    """One job in flight. Subclasses record; the engine decides when each method runs."""

    __slots__ = ()

    def success(self, result: Any) -> Any:
        """The job returned ``result``; return what the caller should receive."""
        return result

    def error(self, exc: BaseException) -> None:
        """The job raised ``exc`` (an Exception); the engine re-raises it unchanged."""

    def cancel(self) -> None:
        """The job was cancelled, interrupted, or a generator was closed early."""

    def item(self, value: Any) -> None:
        """A generator job yielded ``value``; called only when the policy sets
        ``Instrumenter.observes_items`` (it costs a call per item)."""

    #: The job's span (OpenTelemetry's, see ``_tracing``), or None: the engine makes it the
    #: current span inside the wrapped code; the policy started it and ends it. A probe
    #: class with ``__slots__`` that starts spans has a slot for it, set at every start.
    span: Any = None

    #: The post-job step in sync code, once the job's end is recorded: a callable handing
    #: the new state to delivery, or None when there is nothing to hand over. (An
    #: attribute, not a method, so a probe can hold the delivery's bound method directly:
    #: one call less per job.)
    after_job: Callable[[], None] | None = None

    def after_job_async(self) -> Awaitable[None] | None:
        """The post-job step in async code: an awaitable to await, or None."""
        if self.after_job is not None:
            self.after_job()
        return None

    def note_change(self) -> None:
        """The post-job step of a job that ended outside a call (see :func:`end_outside`):
        mark the state for the next push, never push."""


def report_failure(what: str) -> None:
    """Log the exception being handled as ``what`` having failed, the way the engine's own
    guards do: for a policy's code that runs outside them (a stream it watches). Call it
    in an ``except Exception:`` block that then carries on as if nothing was recorded.

    >>> try:
    ...     read_chunk(chunk)
    ... except Exception:
    ...     report_failure("recording a chunk")  # "instrument: recording a chunk failed; ..."
    """
    logger.exception("instrument: %s failed; the instrumented call is unaffected", what)


def record_success(probe: Probe, result: Any) -> Any:
    """``probe.success(result)``, guarded: what the caller receives."""
    try:
        return probe.success(result)
    except Exception:
        report_failure("recording a result")
        return result


def record_end(probe: Probe, exc: BaseException) -> None:
    """Record an exception end by the engine's rule, guarded: ``error`` for an Exception,
    ``cancel`` for CancelledError, KeyboardInterrupt, SystemExit and GeneratorExit."""
    try:
        if isinstance(exc, CANCELLING) or not isinstance(exc, Exception):
            probe.cancel()
        else:
            probe.error(exc)
    except Exception:
        report_failure("recording an exception")


def end_job(probe: Probe, exc: BaseException | None = None) -> None:
    """End ``probe``'s job after the wrapper returned (a stream it handed out ended, a
    manager entered later exited), then run its post-job step. Never raises.

    With ``exc``, the engine's rule records it (see :func:`record_end`); without, the
    policy has recorded the end itself. In async code, ``await aend_job(...)``.
    """
    if exc is not None:
        _end(probe, exc)
    # No helper frames for the post-job step: this may run at the recursion limit.
    try:
        try:
            after = probe.after_job
            if after is not None:
                after()
        except Exception:
            report_failure("delivery")
    except RecursionError:  # no room for the post-job step: the next one carries this end
        pass


async def aend_job(probe: Probe, exc: BaseException | None = None) -> None:
    """:func:`end_job` in async code: the post-job step may be awaited (a push)."""
    if exc is not None:
        _end(probe, exc)
    waiter = post_job_async(probe)
    if waiter is not None:
        await waiter


def post_job_async(probe: Probe) -> Awaitable[None] | None:
    """The post-job step in async code, guarded: None when there is nothing to await (the
    usual case: then a job's end makes no coroutine), else one to await. Never raises."""
    try:
        try:
            waiter = probe.after_job_async()
        except Exception:
            report_failure("delivery")
            return None
    except RecursionError:  # no room for the post-job step: the next one carries this end
        return None
    return None if waiter is None else _delivered(waiter)


async def _delivered(waiter: Awaitable[None]) -> None:
    try:
        try:
            await waiter
        except Exception:
            report_failure("delivery")
    except RecursionError:
        pass


def end_outside(probe: Probe, exc: BaseException) -> None:
    """End ``probe``'s job from outside any call, recording nothing now: from a finalizer
    (``__del__``, a generator the garbage collector closes), which may run while this
    thread holds a lock that recording takes. The end is deferred (see below): it is
    recorded before the next read, and marks the state for the next push, never pushes.

    The engine ends this way what the collector's GeneratorExit ends in its wrappers and
    with-blocks (:func:`collector_closing`). Reads see no difference: deferred work runs
    before each of them.
    """
    defer(partial(_ended_outside, probe, exc))


def collector_closing(exc: BaseException) -> bool:
    """Whether ``exc`` ends a job from inside the garbage collector: a GeneratorExit while
    a collection runs (it closes the suspended generators and coroutines it frees). Such
    an end goes to :func:`end_outside`; a ``close()`` the caller made is recorded at once."""
    return _collecting and isinstance(exc, GeneratorExit)


_collecting = False


def _collection(phase: str, info: dict[str, int]) -> None:
    global _collecting
    _collecting = phase == "start"


gc.callbacks.append(_collection)


def _ended_outside(probe: Probe, exc: BaseException) -> None:
    record_end(probe, exc)
    try:
        probe.note_change()
    except Exception:
        report_failure("delivery")


def _end(probe: Probe, exc: BaseException) -> None:
    """Record an exception end, or defer it when there is no stack left to record it on.

    A RecursionError escaping from here means nothing was recorded: the caller defers the
    end (it ran out of stack before it could record anything).
    """
    if type(exc) is not RecursionError:
        record_end(probe, exc)
        return
    if not _has_room():
        defer(partial(record_end, probe, exc))
        return
    record_end(probe, exc)
    # A shallower level of the recursion: the deeper levels' ends wait, and it has room.
    # (Only here: other ends may come from a finalizer, where deferred work must not run.)
    run_deferred()


# -- deferred work: what cannot be recorded where it happens ------------------------------------
# - A function that recursed until RecursionError is left by every decorated level of that
#   recursion, the deepest ones with no stack to record on.
# - The garbage collector finds a stream abandoned before its end; it may run while its
#   thread holds a lock that recording takes (prometheus_client's, the model guard's).
# That work waits here and runs at the next safe point: the next end of a RecursionError
# with room (the shallower levels, as the error unwinds), an AI call's start, and before
# every snapshot (a push, a scrape, a read of the registry): no count is lost, no job left
# open. Deferred work must not push (it runs as a push takes its snapshot): it records, and
# at most marks the state for the next push.

#: Frames that recording an end may need: the probe, prometheus_client, the guard's logging.
_HEADROOM = 60
_deferred: deque[Callable[[], object]] = deque()
#: The deferred work waiting: a hot path checks it is empty before calling run_deferred.
deferred_work = _deferred

#: ``defer(work)``: run ``work`` (no arguments) at the next safe point instead of now. It
#: is the deque's own append, a C method (thread-safe, as the documentation says of a
#: deque's appends and pops): it runs no Python frame, so it works with no stack left (a
#: RecursionError unwinding), and takes no lock a garbage collector could find held, so it
#: is safe in a finalizer (``__del__``, a weakref callback) and a signal handler.
defer: Callable[[Callable[[], object]], None] = _deferred.append


def run_deferred() -> None:
    """Run the deferred work now, each piece guarded: never raises.

    This happens by itself before every push and scrape (and read of the registry). Only
    the work queued when it starts runs: work that defers more work (itself, say) cannot
    keep a push waiting. Near the recursion limit, what has no stack to run on waits for
    the next safe point.
    """
    waiting = len(_deferred)
    if not waiting:  # the usual case, before every read and AI call
        return
    for _ in range(waiting):
        if not _has_room():
            return
        try:
            work = _deferred.popleft()
        except IndexError:  # taken by a run in another thread
            return
        try:
            work()
        except Exception:
            report_failure("deferred recording")


def _room(depth: int) -> None:
    if depth:
        _room(depth - 1)


def _has_room() -> bool:
    try:
        _room(_HEADROOM)
    except RecursionError:
        return False
    return True
