"""With-blocks: which open entry of a decorator object an exit ends.

One with-block object may be used from many threads and tasks at once, nested, and exited
in another context than the enter's (a generator resumed by another thread or task): each
exit ends exactly one open entry.

How an exit finds its enter. The enter records its probe, the frame running the
with-statement, and the context. The exit ends, in this order of preference:

1. the context's innermost entry, if the same frame entered it (the usual case);
2. the latest open entry this frame made, in whatever context: a generator's frame is the
   same object whichever thread or task resumes it, so a generator that enters in one task
   and exits in another still pairs exactly;
3. the context's innermost open entry (entered through a helper such as ExitStack, whose
   enter and exit run in different frames);
4. the oldest open entry of this object (an exit in a context with no entry at all, e.g. a
   manual __exit__ in another thread): the one most likely left by a context that will not
   exit it. Counts and active_jobs stay exact whatever is paired; only which duration goes
   with which exit can then be off (their sum stays exact).

An exit finding no open entry anywhere is a no-op when its context did enter (that job was
already ended by an exit elsewhere), else a clear error.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Generic, TypeVar

__all__ = ["OpenEntries", "caller_frame"]

P = TypeVar("P")


class _Entry(Generic[P]):
    """One with-block entry: its probe, the frame that entered, and how to undo it in the
    context that entered."""

    __slots__ = ("frame", "previous", "probe", "token")

    def __init__(self, probe: P, previous: _Entry[P] | None, frame: int) -> None:
        self.probe = probe
        self.previous = previous
        self.frame = frame
        self.token: contextvars.Token[_Entry[P] | None]


def caller_frame() -> int:
    """The identity of the frame running the with-statement: the caller of the caller
    (``__enter__`` / ``__exit__``) of this function."""
    try:
        return id(sys._getframe(2))
    except ValueError:  # called straight from C (a thread's target, atexit): no frame
        return 0


class OpenEntries(Generic[P]):
    """The open entries of one with-block object, whichever context entered them."""

    __slots__ = ("_entered", "_open")

    def __init__(self, name: str) -> None:
        # Created with the object, not on first use: two threads entering first at once
        # must share it. The context's innermost entry: a hint for pairing, not the state.
        self._entered: contextvars.ContextVar[_Entry[P] | None] = contextvars.ContextVar(
            name, default=None
        )
        # Every open entry, in enter order, whichever context entered it. An exit claims one
        # with dict.pop, atomic under the GIL: each entry ends exactly once.
        self._open: dict[_Entry[P], bool] = {}

    def push(self, probe: P, frame: int) -> None:
        """An enter from ``frame`` (see :func:`caller_frame`) opened ``probe``'s job."""
        entry = _Entry(probe, self._entered.get(), frame)
        self._open[entry] = True
        entry.token = self._entered.set(entry)

    def pop(self, frame: int) -> P | None:
        """The probe an exit from ``frame`` ends: None when its job was already ended by an
        exit elsewhere. A RuntimeError when nothing was entered at all."""
        top = self._entered.get()
        opened = self._open
        if top is not None and top.frame == frame and opened.pop(top, False):
            entry: _Entry[P] | None = top
        else:
            entry = self._claim_elsewhere(top, frame)
        if top is not None:
            self._settle(top)
        if entry is None:
            if top is None:
                raise RuntimeError(
                    "with-block exited without a matching enter: this object has no open "
                    "entry (each __exit__/__aexit__ must follow one __enter__/__aenter__)"
                )
            return None
        return entry.probe

    def _claim_elsewhere(self, top: _Entry[P] | None, frame: int) -> _Entry[P] | None:
        opened = self._open
        for entry in reversed(list(opened)):
            if entry.frame == frame and opened.pop(entry, False):
                return entry
        inner = top
        while inner is not None:
            if opened.pop(inner, False):
                return inner
            inner = inner.previous
        for entry in list(opened):
            if opened.pop(entry, False):
                return entry
        return None

    def _settle(self, top: _Entry[P]) -> None:
        """Drop the context's ended entries, innermost first: back to "unset" when none is
        left open, so the context keeps nothing of this object (set() alone would)."""
        entry: _Entry[P] | None = top
        opened = self._open
        try:
            while entry is not None and entry not in opened:
                self._entered.reset(entry.token)
                entry = entry.previous
        except (ValueError, RuntimeError):  # set in a context this one was copied from
            while entry is not None and entry not in opened:
                entry = entry.previous
            self._entered.set(entry)
