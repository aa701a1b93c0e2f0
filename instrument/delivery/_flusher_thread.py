"""The flusher thread of a coalescing delivery: it pushes when the state is dirty, at most
once per interval, backing off after failures, and holds its delivery strongly only while
there is something to push."""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._flusher import Delivery

__all__ = ["FlushState", "flusher", "wake"]


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
        ok = delivery.deliver_now(None)
        delivery._schedule(ok)
        del delivery


def wake(cond: threading.Condition, pid: int) -> None:
    if os.getpid() != pid:
        return  # the flusher it would wake lives in another process
    with cond:
        cond.notify_all()
