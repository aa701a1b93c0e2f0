"""The flusher thread of a coalescing delivery: it pushes when the state is dirty, at most
once per interval, backing off after failures, and holds its delivery strongly only while
there is something to push."""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._flusher import Delivery

__all__ = [
    "PUSH_MODES",
    "SERIALIZE_SHARE",
    "FlushState",
    "backoff",
    "check_mode",
    "flusher",
    "log_stretch",
    "log_undelivered",
    "stretched_gap",
    "wake",
]

logger = logging.getLogger("instrument")

#: The most of the wall time pushes may spend collecting and serializing the registry: that
#: work holds the GIL, and handing the GIL back and forth leaves the callers waiting about
#: as long as it takes (measured as wall time, it includes those hand-offs; the time on the
#: network is not counted). A slower push stretches the wait after it to this share. At
#: 10,000 series a tenth slowed the callers by 1.13x (section 8): the mark each call makes
#: and the push's own work beyond serializing add a few percent, so half that keeps the
#: whole under a tenth.
SERIALIZE_SHARE = 0.05
_RETRY_BASE = 0.5
_RETRY_CAP = 30.0


PUSH_MODES: tuple[str, ...] = ("each", "coalesce", "off")


def check_mode(mode: str | None, interval: float, has_target: bool) -> str:
    """The push mode a delivery runs in (None: coalesce with a target, else off), or a
    ValueError saying what to pass."""
    if mode is None:
        mode = "coalesce" if has_target else "off"
    if mode not in PUSH_MODES:
        raise ValueError(f"push_mode must be one of {', '.join(PUSH_MODES)}; got {mode!r}")
    if not interval > 0:
        raise ValueError(f"push_interval must be a positive number of seconds, got {interval!r}")
    if mode != "off" and not has_target:
        raise ValueError(
            f"push_mode={mode!r} needs a target: pass pushgateway=URL, remote_write=URL "
            "or textfile=PATH"
        )
    return mode


def backoff(failures: int, base: float = _RETRY_BASE, cap: float = _RETRY_CAP) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: ``base`` doubled per
    failure up to ``cap``, with jitter so that processes failing together do not retry
    together. The defaults are the flusher's, between pushes."""
    step: float = base * 2 ** min(failures, 16)
    return min(cap, step) * random.uniform(0.5, 1.0)


def stretched_gap(gap: float, seconds: float) -> float:
    """The wait after a push that spent ``seconds`` collecting and serializing: at least
    ``gap``, and long enough that this takes at most SERIALIZE_SHARE of the time."""
    return max(gap, seconds * (1 - SERIALIZE_SHARE) / SERIALIZE_SHARE)


def log_stretch(seconds: float, stretched: float, interval: float) -> None:
    """Say (once per delivery: its caller keeps count) that pushes are further apart than
    ``push_interval``, and why."""
    logger.info(
        "instrument: collecting and serializing this registry takes %.3f s per push; the "
        "flusher waits %.2f s between pushes instead of push_interval=%g s, so that this "
        "takes at most %d %% of the time (logged once)",
        seconds,
        stretched,
        interval,
        round(SERIALIZE_SHARE * 100),
    )


class FlushState:
    """What the flusher thread shares with its delivery: the condition it waits on, and
    the delivery itself while it has something to push (a strong reference, so a dirty
    instrumentation dropped without close() is still pushed)."""

    __slots__ = ("cond", "pending")

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self.pending: Delivery | None = None


#: The switch interval once the flusher was starved of the GIL, when the program's is longer.
#: A thread waiting for the GIL asks for it only after a whole interval in which no thread
#: took it; a main thread that drops and retakes it for short I/O more often than that (a
#: small read every 2.5 ms, say) restarts the wait every time, and the flusher, which needs
#: the GIL back after its wait and after every step of its request, gets it only when it
#: wins a race (on some machines a few pushes in 3 s instead of 60). Shorter than such a
#: main thread's period, the wait ends and the GIL is handed over. Only threads waiting for
#: the GIL see the difference.
STARVED_SWITCH_INTERVAL = 0.0005
#: How late after its wait a flusher must get the GIL back to count as starved: a busy
#: thread holds it for at most a switch interval (5 ms by default) once asked.
STARVED_LATENESS = 0.02
#: How long the lowered interval stays after the flusher last woke starved; then the
#: program's own comes back, until the flusher starves again.
STARVED_FOR = 60.0

_switch_lock = threading.Lock()
#: The flushers that lowered the interval, and the program's own interval, to restore.
_lowered_by = 0
_program_interval = 0.0


def lower_switch_interval() -> None:
    global _lowered_by, _program_interval
    with _switch_lock:
        if _lowered_by == 0:
            _program_interval = sys.getswitchinterval()
            if _program_interval > STARVED_SWITCH_INTERVAL:
                sys.setswitchinterval(STARVED_SWITCH_INTERVAL)
                logger.info(
                    "instrument: the flusher waited for the GIL past %.0f ms after its "
                    "wait (a thread dropping it for short I/O more often than the switch "
                    "interval); the switch interval is %g s instead of %g s while it "
                    "keeps starving (logged once per episode)",
                    STARVED_LATENESS * 1000,
                    STARVED_SWITCH_INTERVAL,
                    _program_interval,
                )
        _lowered_by += 1


def restore_switch_interval() -> None:
    """Undo :func:`lower_switch_interval`; the last flusher restores the program's
    interval, unless the program set one of its own meanwhile."""
    global _lowered_by
    with _switch_lock:
        _lowered_by -= 1
        if (
            _lowered_by == 0
            and _program_interval > STARVED_SWITCH_INTERVAL
            and sys.getswitchinterval() == STARVED_SWITCH_INTERVAL
        ):
            sys.setswitchinterval(_program_interval)


def _forget_lowering() -> None:
    """In a forked child: its parent's flushers are gone, and so is their lowering (the
    lock is new: a parent thread may have held it at the fork)."""
    global _lowered_by, _switch_lock
    _switch_lock = threading.Lock()
    if _lowered_by:
        _lowered_by = 1
        restore_switch_interval()


os.register_at_fork(after_in_child=_forget_lowering)


def flusher(ref: weakref.ref[Delivery], state: FlushState) -> None:
    """The flusher thread: push when dirty, at most once per interval, backing off after
    failures. It holds the delivery strongly only while there is something to push."""
    cond = state.cond
    lowered_until: float | None = None  # set while this flusher keeps the interval lowered
    try:
        while True:
            with cond:
                while True:
                    delivery = state.pending or ref()
                    if delivery is None or delivery._stopping:
                        return
                    delay = delivery._flush_slot()
                    if delay is not None and delay <= 0:
                        break
                    if delay is None:
                        state.pending = None  # clean: let it be collected
                    del delivery
                    due = None if delay is None else time.monotonic() + delay
                    cond.wait(delay)
                    now = time.monotonic()
                    if due is not None and now - due > STARVED_LATENESS:
                        if lowered_until is None:
                            lower_switch_interval()
                        lowered_until = now + STARVED_FOR
                    elif lowered_until is not None and now > lowered_until:
                        lowered_until = None
                        restore_switch_interval()
            ok = delivery.deliver_now(None)
            delivery._schedule(ok)
            del delivery
    finally:
        if lowered_until is not None:
            restore_switch_interval()


def wake(cond: threading.Condition, pid: int) -> None:
    if os.getpid() != pid:
        return  # the flusher it would wake lives in another process
    with cond:
        cond.notify_all()


def log_undelivered(where: str) -> None:
    """The final push at close failed: said even in an outage logged before, as nothing
    will carry these counts later."""
    logger.warning(
        "instrument: the final push to %s at close failed: the counts recorded since the "
        "last successful push were not delivered",
        where,
    )
