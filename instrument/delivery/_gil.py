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
the difference. An interval the program sets meanwhile is kept (unless it is exactly
``STARVED_SWITCH_INTERVAL``, which cannot be told from this module's own).
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
    "lower_switch_interval",
    "restore_switch_interval",
    "starved",
    "starved_after",
    "starved_until",
]

logger = logging.getLogger("instrument")

#: The switch interval while a flusher starves, when the program's is longer.
STARVED_SWITCH_INTERVAL = 0.0005
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
#: How many flushers keep the interval lowered, and the program's interval (in whole
#: microseconds, as the interpreter keeps it) while one does, else None.
_holders = 0
_saved_us: int | None = None


def _interval_us() -> int:
    return round(sys.getswitchinterval() * _US)


def _set_us(us: int) -> None:
    # The interpreter truncates ``interval * 1e6`` to whole microseconds: half a
    # microsecond more gives back exactly ``us`` (0.007 s would come back 6999 µs).
    sys.setswitchinterval((us + 0.5) / _US)


def starved_after() -> float:
    """How late after its wait a flusher may get the GIL back before it counts as
    starved, rather than waiting out a busy thread's switch interval."""
    return max(STARVED_LATENESS, STARVED_INTERVALS * sys.getswitchinterval())


def starved(lateness: float) -> bool:
    """Whether a flusher that got the GIL back ``lateness`` seconds after its wait ended
    was starved of it."""
    return lateness > starved_after()


def starved_until(now: float) -> float:
    """Until when the interval stays lowered after a flusher starved at ``now``."""
    return now + STARVED_FOR


def lower_switch_interval() -> float | None:
    """One more flusher starves or pushes: the first lowers the interval. Returns the
    program's interval when this call lowered it (to be logged, outside any lock), else None."""
    global _holders, _saved_us
    with _lock:
        _holders += 1
        if _holders > 1:
            return None
        program = _interval_us()
        if program <= _STARVED_US:
            return None
        _saved_us = program
        _set_us(_STARVED_US)
        return program / _US


def restore_switch_interval() -> None:
    """A flusher no longer starves (or pushed, or ended): the last one gives the program
    its own interval back, unless the program set another meanwhile."""
    global _holders, _saved_us
    with _lock:
        _holders -= 1
        if _holders == 0 and _saved_us is not None:
            if _interval_us() == _STARVED_US:
                _set_us(_saved_us)
            _saved_us = None


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
    global _lock, _holders, _saved_us
    _lock = threading.Lock()
    _holders = 0
    if _saved_us is not None and _interval_us() == _STARVED_US:
        _set_us(_saved_us)
    _saved_us = None


os.register_at_fork(after_in_child=_in_child)
