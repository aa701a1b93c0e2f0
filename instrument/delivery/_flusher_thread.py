"""The flusher thread of a coalescing delivery: it pushes when the state is dirty, at most
once per interval, backing off after failures, and holds its delivery strongly only while
there is something to push."""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING

from ._gil import (
    log_lowered,
    lower_from_a_call,
    lower_switch_interval,
    restore_switch_interval,
    settle,
    settle_from_a_call,
    starved,
    starved_after,
    starved_until,
)

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
    """What the flusher thread shares with its delivery: the condition it waits on, the
    delivery itself while it has something to push (a strong reference, so a dirty
    instrumentation dropped without close() is still pushed), and when a call should hand
    it the GIL.

    A flusher starved of the GIL cannot say so until it has it; a call, which holds it,
    can. While the flusher waits, ``overdue`` is the ``perf_counter()`` by which it should
    have the GIL back at the latest: a call starting later finds it starving and lowers the
    interval (:meth:`hand_over`), and the flusher holds that lowering as its own once it
    runs. Otherwise ``overdue`` is infinite, and a
    call's whole cost is a comparison with the clock reading it takes anyway::

        if t0 > b.handover.overdue:
            b.handover.hand_over()
    """

    __slots__ = ("cond", "gone", "handed", "overdue", "pending", "tokens", "waiting", "woken")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start over (a new process: no flusher)."""
        self.cond = threading.Condition()
        #: The delivery while dirty: the flusher keeps it alive until it has pushed.
        self.pending: Delivery | None = None
        #: When a call last woke the flusher for new state (its condition held).
        self.woken = 0.0
        #: Whether the flusher waits, so that a call's wake arms it (condition held).
        self.waiting = False
        self.overdue = math.inf
        # No lock between the calls and the flusher (see hand_over): list operations are
        # atomic. One token per wait, taken by the one call that hands over; one entry in
        # ``handed`` per hand-over, taken by the flusher.
        self.tokens: list[bool] = []
        self.handed: list[bool] = []
        #: Set once the flusher ended: a hand-over after that gives the interval back.
        self.gone = False

    def wake(self) -> None:
        """Wake the flusher for new state; called holding the condition."""
        self.woken = time.monotonic()
        if self.waiting:
            self.arm(0.0)
        self.cond.notify()

    def arm(self, delay: float) -> None:
        """The flusher waits ``delay`` seconds from now (condition held): a call starting
        once it then starves hands it the GIL."""
        self.overdue = min(self.overdue, time.perf_counter() + delay + starved_after())
        if not self.tokens:
            self.tokens.append(True)

    def hand_over(self) -> None:
        """Called by a call that found the flusher overdue (so waiting for the GIL this
        call holds): lower the interval for the flusher to hold. No lock: a signal handler
        may run a decorated call in the middle of this, and the flusher takes its locks
        holding its condition, which such a call may want. The token makes it one call's
        per wait; a flusher that ended meanwhile has the interval given back here."""
        try:
            self.tokens.pop()
        except IndexError:
            return  # another call took it, or the flusher runs again
        self.overdue = math.inf
        self.handed.append(True)
        lower_from_a_call()
        if self.gone:  # ended after the token was taken: nobody holds what was lowered
            settle_from_a_call()

    def taken_back(self) -> bool:
        """The flusher runs again (condition held): nothing more to hand over. True when a
        call lowered the interval for it meanwhile."""
        self.overdue = math.inf
        self.tokens.clear()
        handed = False
        try:
            while True:
                self.handed.pop()
                handed = True
        except IndexError:
            return handed


def flusher(ref: weakref.ref[Delivery], state: FlushState) -> None:
    """The flusher thread: push when dirty, at most once per interval, backing off after
    failures. It holds the delivery strongly only while there is something to push.

    Starved of the GIL (``_gil``), it keeps the interpreter's switch interval lowered while
    it starves: from when a call finds it overdue, or when it gets the GIL back too late
    after a wait; and each push runs with the interval lowered, so that its steps (each
    needs the GIL back after its I/O) cannot starve."""
    cond = state.cond
    lowered_until: float | None = None  # set while this flusher keeps the interval lowered
    try:
        while True:
            lowered: float | None = None
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
                    started = time.monotonic()
                    due = None if delay is None else started + delay
                    timeout = delay
                    if lowered_until is not None:  # wake to restore it, even when idle
                        left = max(lowered_until - started, 0.0)
                        timeout = left if timeout is None else min(timeout, left)
                    state.waiting = True  # lowered or not: the program may set its own
                    if delay is not None:
                        state.arm(delay)
                    cond.wait(timeout)
                    now = time.monotonic()
                    state.waiting = False
                    handed = state.taken_back()
                    # Due at its deadline, or when a call woke it meanwhile (a close's or
                    # a spurious wake-up is no moment it was due at).
                    woken = state.woken
                    if woken >= started and (due is None or woken < due):
                        due = woken
                    # Starved: a call lowered the interval for it (it takes that over), or
                    # it got the GIL back too late.
                    if handed or (due is not None and starved(now - due)):
                        if lowered_until is None:
                            lowered = lower_switch_interval()
                        lowered_until = starved_until(now)
                    elif lowered_until is not None and now >= lowered_until:
                        lowered_until = None
                        restore_switch_interval()
            if lowered is not None:
                log_lowered(lowered)
            ok = push_lowered(delivery)
            delivery._schedule(ok)
            del delivery
    finally:
        state.gone = True  # before giving it back: a hand-over after this sees it
        if lowered_until is not None:
            restore_switch_interval()
        else:
            settle()


def push_lowered(delivery: Delivery) -> bool:
    """One push with the switch interval lowered while it runs (its wait for the answer
    too): each of its steps needs the GIL back after its I/O, and a main thread doing
    frequent short I/O would starve them."""
    lower_switch_interval()
    try:
        return delivery.deliver_now(None)
    finally:
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
