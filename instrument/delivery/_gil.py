"""The switch interval while the flusher needs the GIL and would starve for it.

A thread waiting for the GIL asks for it only after a whole switch interval in which no
thread took it. A main thread that drops and retakes it for short I/O more often than that
(a small read every 2.5 ms, say) restarts that wait every time, and the flusher, which needs
the GIL back after its wait and after every step of its request, gets it only when it wins
a race: on some machines a few pushes in 3 s instead of 60. So the interpreter's switch
interval is lowered to ``STARVED_SWITCH_INTERVAL`` (shorter than such a main thread's
period, so the wait ends and the GIL is handed over) while a push runs, and while the
flusher starves: found by a call that starts once it is overdue (``FlushState``), or by
the flusher getting the GIL back too late after a wait. The program's own comes back after
each push, once the flusher has not starved for ``STARVED_FOR`` seconds, when the last
flusher that lowered it ends, and in a forked child. Only threads waiting for the GIL see
the difference. An interval the program sets meanwhile is recorded and is the one given
back (a push lowers it again meanwhile); one that is exactly ``STARVED_SWITCH_INTERVAL``
is taken for this module's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

__all__ = [
    "STARVED_FOR",
    "STARVED_INTERVALS",
    "STARVED_LATENESS",
    "STARVED_SWITCH_INTERVAL",
    "log_lowered",
    "lower_from_a_call",
    "lower_switch_interval",
    "restore_switch_interval",
    "settle",
    "settle_from_a_call",
    "starved",
    "starved_after",
    "starved_until",
]

logger = logging.getLogger("instrument")

#: The switch interval while a flusher pushes or starves, when the program's is longer:
#: half a millisecond, less one microsecond, so that no interval a program chose is
#: taken for this module's own.
STARVED_SWITCH_INTERVAL = 0.000499
#: How late after its wait a flusher must get the GIL back to count as starved: at least
#: this, and at least ``STARVED_INTERVALS`` of the program's switch intervals (a busy
#: thread, once asked, holds the GIL for at most one of them, 5 ms by default).
STARVED_LATENESS = 0.02
STARVED_INTERVALS = 4
#: How long the lowered interval stays after the flusher last woke starved.
STARVED_FOR = 60.0

_US = 1_000_000
_STARVED_US = round(STARVED_SWITCH_INTERVAL * _US)
_lock = threading.Lock()
#: How many flushers keep the interval lowered (under the lock; calls never take it).
_holders = 0
#: The program's own interval (in whole microseconds, as the interpreter keeps it), as
#: last seen before it was lowered, by a flusher or by a call for one; None before. An
#: interval found lowered with no flusher holding it is given this back.
_program_us: int | None = None


def _interval_us() -> int:
    return round(sys.getswitchinterval() * _US)


def _set_us(us: int) -> None:
    # The interpreter truncates ``interval * 1e6`` to whole microseconds: half a
    # microsecond more gives back exactly ``us`` (0.007 s would come back 6999 µs).
    sys.setswitchinterval((us + 0.5) / _US)


def _program_interval_us() -> int:
    us = _interval_us()
    return _program_us if us == _STARVED_US and _program_us is not None else us


def starved_after() -> float:
    """How late after its wait a flusher may get the GIL back before it counts as
    starved, rather than waiting out a busy thread's switch interval: measured in the
    program's intervals, not in the lowered one another flusher's push may hold."""
    return max(STARVED_LATENESS, STARVED_INTERVALS * _program_interval_us() / _US)


def starved(lateness: float) -> bool:
    """Whether a flusher that got the GIL back ``lateness`` seconds after its wait ended
    was starved of it."""
    return lateness > starved_after()


def starved_until(now: float) -> float:
    """Until when the interval stays lowered after a flusher starved at ``now``."""
    return now + STARVED_FOR


def lower_from_a_call() -> None:
    """Lower the interval for a flusher starved of the GIL, from the call that holds it.
    No lock (a signal handler may run a decorated call in the middle of this, and one
    waiting for a lock a flusher holds with its condition would deadlock): the program's
    interval is recorded before the interval is lowered, so an exception between the two
    leaves nothing unrecorded. The flusher holds it once it runs; until then, the next
    flusher's push, end or close gives it back (``settle``)."""
    global _program_us
    us = _interval_us()
    if us > _STARVED_US:
        _program_us = us
        _set_us(_STARVED_US)


def settle_from_a_call() -> None:
    """Give the program its interval back, from a call, when no flusher holds it lowered:
    for a hand-over that came after its flusher ended. No lock, as above."""
    if _holders == 0:
        _settle()


def lower_switch_interval() -> float | None:
    """One more flusher starves or pushes: the interval is lowered (or one a call lowered
    is held), also when the program set its own while another flusher held it (the
    program's is recorded, and given back at the end). Returns the program's interval when
    no flusher held it lowered before (to be logged, outside any lock), else None."""
    global _holders, _program_us
    with _lock:
        _holders += 1
        first = _holders == 1
        us = _interval_us()
        if us == _STARVED_US:  # held, lowered by a call, or put back by the program
            return _program_us / _US if first and _program_us is not None else None
        if us < _STARVED_US:
            return None  # the program's own, shorter still
        _program_us = us
        _set_us(_STARVED_US)
        return us / _US if first else None


def restore_switch_interval() -> None:
    """A flusher no longer starves (or pushed, or ended): the last one gives the program
    its own interval back, unless the program set another meanwhile."""
    global _holders
    with _lock:
        if _holders:  # none: a flusher forked while it held one, the child counts none
            _holders -= 1
        if _holders == 0:
            _settle()


def settle() -> None:
    """Give the program its interval back if no flusher holds it lowered (a flusher's
    end, a close)."""
    with _lock:
        if _holders == 0:
            _settle()


def _settle() -> None:
    if _program_us is not None and _interval_us() == _STARVED_US:
        _set_us(_program_us)


def log_lowered(program: float) -> None:
    """Say that the interval was lowered; never raises (a failing log filter or handler
    must not end the flusher that holds the lowering)."""
    with contextlib.suppress(Exception):
        logger.info(
            "instrument: the flusher waited for the GIL well past its wait (a thread drops "
            "it for short I/O more often than the switch interval); the switch interval is "
            "%g s instead of %g s while it keeps starving, and %g s again after %g s "
            "without (logged each time it is lowered)",
            STARVED_SWITCH_INTERVAL,
            program,
            program,
            STARVED_FOR,
        )


def _in_child() -> None:
    """A forked child has none of its parent's flushers: whatever they lowered goes back,
    whichever step of lowering or restoring a parent thread was at (the lock is new)."""
    global _lock, _holders
    _lock = threading.Lock()
    _holders = 0
    _settle()


os.register_at_fork(after_in_child=_in_child)
