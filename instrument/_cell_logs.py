"""What one thread's cell of a :class:`~instrument._cells.CellSeries` holds, and how its
logs add up to numbers.

A cell's numbers are written in place only holding its lock (an end carrying an exemplar,
a deferred addition). Everything else a decorated call records is appended to one of the
cell's logs, without a lock: a job's gauge step to ``starts``, the usual end's seconds
(the series' own status, nothing else to add, no exemplar) to ``log``, any other end's
(status, seconds, amounts) to ``ends``. A ``list.append`` is atomic in every build (the
free-threaded one locks the list inside), and there is no read-modify-write to interleave
with. The owner compacts the logs into the numbers every ``LOG_SIZE`` entries holding the
cell's lock; a fold copies the numbers under that lock and adds the logs to its copy
(:meth:`Layout.contents`), never changing the cell.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_right
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.samples import Exemplar

__all__ = ["LOG_SIZE", "Cell", "Layout", "LoggedEnd"]

#: How many entries a cell's log holds before its owner compacts it: the logs' memory
#: (a few KiB a cell) against the compaction's fixed cost spread over its entries.
LOG_SIZE = 64

#: A logged end: its status, seconds and amounts.
LoggedEnd = tuple[int, float, tuple[tuple[int, float], ...]]

if TYPE_CHECKING:  # the closures' shapes, for the type checker only (a Protocol costs import time)

    class Begin(Protocol):
        """:meth:`CellSeries.begin`'s shape: a step of the gauge, one up by default."""

        def __call__(self, step: int = 1) -> None: ...

    class End(Protocol):
        """:meth:`CellSeries.end`'s shape."""

        def __call__(
            self,
            status: int,
            seconds: float,
            amounts: tuple[tuple[int, float], ...] = (),
            exemplar: dict[str, str] | None = None,
        ) -> None: ...


class Cell:
    """One thread's numbers for one series."""

    __slots__ = (
        "ends",
        "exemplars",
        "folded",
        "lock",
        "log",
        "owner",
        "starts",
        "values",
        "writing",
    )

    def __init__(self, size: int, owner: weakref.ref[Any]) -> None:
        self.values: list[float] = [0] * size
        #: The seconds of the usual ends not yet compacted into ``values`` (appended by the
        #: owner, taken holding ``lock``).
        self.log: list[float] = []
        #: The gauge's steps (+1 a job's start) not yet compacted, the same way.
        self.starts: list[int] = []
        #: Every other end without an exemplar: (status, seconds, amounts), the same way.
        self.ends: list[LoggedEnd] = []
        #: What the fold has applied so far, number by number (touched by folds only).
        self.folded: list[float] = [0] * size
        # Reentrant: a fold copying its own thread's cell may be interrupted by a
        # finalizer that records into that cell.
        self.lock = threading.RLock()
        #: Set around the owner's read-modify-writes (an end written in place, a
        #: compaction): what runs inside them in the same thread defers its numbers.
        self.writing = False
        #: Alive while the owner thread is: its thread-local storage holds the referent.
        self.owner = owner
        #: The latest exemplar per number (a histogram's bucket, a counter) since the last
        #: fold: what links an observation to its trace.
        self.exemplars: dict[int, Exemplar] | None = None


class Layout:
    """Where a series' numbers sit in its cells: the gauge's starts and ends (``step``
    0 without a gauge), the usual status, the histogram's sum, its first bucket and its
    bounds."""

    __slots__ = ("bounds", "ended", "first_bucket", "gauge", "histogram", "step", "usual")

    def __init__(
        self,
        gauge: int,
        ended: int,
        step: int,
        usual: int,
        histogram: int,
        bounds: list[float],
    ) -> None:
        self.gauge, self.ended, self.step, self.usual = gauge, ended, step, usual
        self.histogram = histogram
        self.first_bucket = histogram + 1  # one addition less per end
        self.bounds = bounds

    def compact(self, cell: Cell) -> None:
        """Move ``cell``'s logs into its numbers: by its owner, marked as writing, holding
        the cell's lock (which a fold's copy holds too).

        The numbers are added up in a copy, then published and the logs trimmed by what
        went in, with no call, jump or finalizer in between, so no Python code (a signal
        handler, a finalizer reading the registry, an exception it raises) runs between
        them: what anything sees is the cell before the compaction or after it, never a
        log emptied into numbers not yet there."""
        with cell.lock:
            starts, log, ends = cell.starts, cell.log, cell.ends
            n_starts, n_log, n_ends = len(starts), len(log), len(ends)
            values = cell.values[:]
            self.add(values, starts[:n_starts], log[:n_log], ends[:n_ends])
            cell.values = values
            del starts[:n_starts]
            del log[:n_log]
            del ends[:n_ends]

    def contents(self, cell: Cell) -> list[float]:
        """What ``cell`` holds: a copy of its numbers with its logs added. Holding its
        lock, so no compaction runs meanwhile; the cell itself is not changed (a fold may
        run in the middle of its owner's write)."""
        values = cell.values[:]
        # Ends before starts: a job that starts and ends in between (its owner appends
        # meanwhile) counts as in flight, which it was, never as an end without a start.
        log, ends, starts = cell.log[:], cell.ends[:], cell.starts[:]
        self.add(values, starts, log, ends)
        return values

    def add(
        self, values: list[float], steps: list[int], usual: list[float], ends: list[LoggedEnd]
    ) -> None:
        """Add logged entries to ``values``: gauge steps, the seconds of usual ends, and
        other ends (status, seconds, amounts)."""
        if steps:
            values[self.gauge] += sum(steps)
        n = len(usual)
        if n:
            values[self.ended] -= self.step * n
            values[self.usual] += n
            values[self.histogram] += sum(usual)
            self._add_buckets(values, usual)
        if ends:
            seconds = []
            for status, second, amounts in ends:
                values[status] += 1
                seconds.append(second)
                for index, amount in amounts:
                    values[index] += amount
            values[self.ended] -= self.step * len(ends)
            values[self.histogram] += sum(seconds)
            self._add_buckets(values, seconds)

    def _add_buckets(self, values: list[float], seconds: list[float]) -> None:
        """Count each of ``seconds`` into its bucket. Sorted once, each bucket's count is
        one bisection (bisect_left of each second into the bounds, an end's own way, costs
        eight times more), up to the bucket that holds the slowest."""
        n = len(seconds)
        ordered = sorted(seconds)
        counted = 0
        index = self.first_bucket
        for bound in self.bounds:
            upto = bisect_right(ordered, bound)
            if upto != counted:
                values[index] += upto - counted
                counted = upto
                if counted == n:
                    break
            index += 1
