"""The flusher thread of a coalescing delivery: it pushes when the state is dirty, at most
once per interval, backing off after failures, and holds its delivery strongly only while
there is something to push."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._flusher import Delivery

__all__ = [
    "PUSH_CPU_SHARE",
    "FlushState",
    "backoff",
    "flusher",
    "log_stretch",
    "stretched_gap",
    "wake",
]

logger = logging.getLogger("instrument")

#: The most of the wall time the flusher may spend on the CPU work of its pushes: collecting
#: and serializing hold the GIL, so the callers wait as long. A slower push stretches the
#: wait after it to this share.
PUSH_CPU_SHARE = 0.10
_RETRY_BASE = 0.5
_RETRY_CAP = 30.0


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: capped exponential, with
    jitter so that processes failing together do not retry together."""
    step: float = _RETRY_BASE * 2 ** min(failures, 16)
    return min(_RETRY_CAP, step) * random.uniform(0.5, 1.0)


def stretched_gap(gap: float, cpu_seconds: float) -> float:
    """The wait after a push that took ``cpu_seconds`` of the flusher's CPU: at least
    ``gap``, and long enough that pushing takes at most PUSH_CPU_SHARE of the time."""
    return max(gap, cpu_seconds * (1 - PUSH_CPU_SHARE) / PUSH_CPU_SHARE)


def log_stretch(cpu_seconds: float, stretched: float, interval: float) -> None:
    """Say (once per delivery: its caller keeps count) that pushes are further apart than
    ``push_interval``, and why."""
    logger.info(
        "instrument: one push of this registry takes %.3f s of CPU; the flusher waits %.2f s "
        "between pushes instead of push_interval=%g s, so that pushing takes at most %d %% "
        "of the time (logged once)",
        cpu_seconds,
        stretched,
        interval,
        round(PUSH_CPU_SHARE * 100),
    )


class FlushState:
    """What the flusher thread shares with its delivery: the condition it waits on, and
    the delivery itself while it has something to push (a strong reference, so a dirty
    instrumentation dropped without close() is still pushed)."""

    __slots__ = ("cond", "pending")

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self.pending: Delivery | None = None


def flusher(ref: weakref.ref[Delivery], state: FlushState) -> None:
    """The flusher thread: push when dirty, at most once per interval, backing off after
    failures. It holds the delivery strongly only while there is something to push."""
    cond = state.cond
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
                cond.wait(delay)
        # This thread's CPU time, not the wall time: waiting for the network or for the GIL
        # costs the callers nothing, collecting and serializing the registry does.
        started = time.thread_time()
        ok = delivery.deliver_now(None)
        delivery._schedule(ok, time.thread_time() - started)
        del delivery


def wake(cond: threading.Condition, pid: int) -> None:
    if os.getpid() != pid:
        return  # the flusher it would wake lives in another process
    with cond:
        cond.notify_all()
