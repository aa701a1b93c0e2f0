"""Per-thread cells: where decorated calls record, folded into the prometheus_client
children before every read.

Every prometheus_client update takes its value's lock; a call's end made five of them.
Here a call writes plain numbers into a cell its own thread owns, and a fold, run before
the registry's families are read (the before-snapshot hooks: every scrape, push, file and
``get_sample_value``), adds what changed since its last look to the real children. What a
user reads stays prometheus_client metrics; only when the numbers get there changes.

Why it is exact, without relying on the GIL or on ``+=`` being atomic:

- A job's start and end are appended to the cell's logs, without a lock and with no
  read-modify-write (``_cell_logs``); its owner compacts them every ``LOG_SIZE`` entries,
  so memory stays bounded. A job that ends in another thread than it started in writes
  its end into that thread's cell (the gauge is summed over cells).
- Every other write (an end with an exemplar, a deferred addition, a compaction) is made
  holding the cell's lock, which the fold holds while it copies the cell and adds the logs
  to the copy: a consistent snapshot (count, sum, bucket and gauge of one end all, or
  none). The fold never writes a cell: what it has applied is kept apart (below), so a log
  it counted and its owner compacted later is not counted twice.
- ``writing`` is set around the owner's read-modify-writes (an end written in place, a
  compaction): code that runs inside them in the same thread (a finalizer, a signal
  handler calling a decorated function) sees it and defers its numbers to the engine's
  deferred work, or leaves the compaction for next time, instead of interleaving with
  them. An append needs no such care.
- The fold keeps what it last applied per number and moves it on number by number, after
  each child accepted the difference: a fold that fails half-way applies the rest later,
  and nothing twice.
- Cells of exited threads are folded one last time and dropped: at the next fold, and
  when a new thread makes its first cell of the series (so thread churn leaves none).
- A fork waits for every cell's lock and the fold's, so the child starts from a
  consistent state at the fork and never inherits a lock held by a thread it lacks.

prometheus_client's multiprocess mode keeps the direct updates: there each process's values
must be in its files when it writes them (``policy.Binding.cells``).
"""

from __future__ import annotations

import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Mapping
from functools import partial
from threading import get_ident
from time import time
from typing import TYPE_CHECKING, Any

from prometheus_client.samples import Exemplar

from ._cell_logs import LOG_SIZE, Cell, Layout
from ._jobs import defer, report_failure

if TYPE_CHECKING:
    from ._cell_logs import Begin, End

__all__ = ["Cell", "CellSeries", "fold_all", "fold_if_changed", "histogram_size"]


class _Owner:
    """Held in the owner thread's local storage beside its cell; it goes with the thread."""

    __slots__ = ("__weakref__",)


def histogram_size(child: Any) -> int:
    """The numbers a histogram child takes in a cell: its sum, then one per bucket."""
    return 1 + len(child._upper_bounds)


class CellSeries:
    """A fixed set of prometheus_client children recorded through per-thread cells.

    ``counters`` and ``gauges`` map a number's index to the child it is added to;
    ``histograms`` map the index of a histogram's sum, followed by its buckets, to the
    histogram child. :meth:`begin` and :meth:`end` are the shape of a job: ``gauge`` up by
    one, then down, the ``status`` counter up, the seconds observed by ``histogram``;
    :meth:`end_usual` is the end with status ``usual`` and nothing else, the cheapest.
    ``keeper`` is what uses the series (a binding): once it is gone and everything is
    folded, so is the series. ``spare`` numbers are left free in every cell for counters
    known only later (:meth:`counter`: a finish reason first seen on the tenth call).
    """

    __slots__ = (
        "_cells",
        "_exemplars",
        "_free",
        "_keeper",
        "_layout",
        "_local",
        "_lock",
        "_targets",
        "begin",
        "end",
        "end_usual",
        "size",
    )

    def __init__(
        self,
        keeper: object,
        *,
        counters: Mapping[int, Any],
        gauges: Mapping[int, Any],
        histograms: Mapping[int, Any],
        gauge: int | None = None,
        histogram: int = 0,
        usual: int = 0,
        spare: int = 0,
    ) -> None:
        # What each number is added to: a child, or a histogram's sum or bucket value (it
        # has no public way to add a count to one bucket).
        self._targets: list[tuple[int, Any]] = [*counters.items(), *gauges.items()]
        # What holds each number's exemplar: a histogram's bucket value, a counter's value.
        self._exemplars: dict[int, Any] = {index: child._value for index, child in counters.items()}
        for index, child in histograms.items():
            self._targets.append((index, child._sum))
            for i, bucket in enumerate(child._buckets):
                self._targets.append((index + 1 + i, bucket))
                self._exemplars[index + 1 + i] = bucket
        self._free = 1 + max(index for index, _ in self._targets)
        # Without a gauge, an end takes 0 from number 0: no branch on the hot path. With
        # one, its ends are a number of their own (added to the same child), counted from
        # the ends' logs as its starts are from theirs.
        ended = 0
        if gauge is not None:
            ended = self._free
            self._free += 1
            self._targets.append((ended, gauges[gauge]))
        self.size = self._free + spare
        self._layout = Layout(
            0 if gauge is None else gauge,
            ended,
            0 if gauge is None else 1,
            usual,
            histogram,
            list(histograms[histogram]._upper_bounds) if histogram in histograms else [],
        )
        self._local = threading.local()
        self._keeper = weakref.ref(keeper)
        #: Every cell not yet dropped; changed under ``_lock``.
        self._cells: list[Cell] = []
        self._lock = threading.RLock()
        self.begin, self.end, self.end_usual = self._hot_paths()
        with _series_lock:
            _series.append(self)

    def counter(self, child: Any) -> int | None:
        """A spare number of every cell, from now on added to counter ``child`` (its
        index, for :meth:`end`'s ``amounts``), or None when none is left: the caller
        then increments ``child`` directly, which is as exact, only not lock-free."""
        with self._lock:
            index = self._free
            if index >= self.size:
                return None
            self._free = index + 1
            # A new list, not an append: a fold iterating the old one stays consistent.
            self._targets = [*self._targets, (index, child)]
        return index

    # -- the owner's side ------------------------------------------------------------------

    def cell(self) -> Cell:
        """The current thread's cell, made on its first use."""
        try:
            cell: Cell = self._local.cell
        except AttributeError:
            return self._new_cell()
        return cell

    def _new_cell(self) -> Cell:
        owner = _Owner()
        cell = Cell(self.size, weakref.ref(owner))
        with self._lock:
            self._cells.append(cell)
        self._local.owner = owner
        self._local.cell = cell
        # A good moment to drop cells of threads gone since the last fold, unless a fold
        # runs (possibly this thread's own, interrupted by whatever is calling now).
        if _fold_lock.acquire(blocking=False):
            try:
                self._fold(dead_only=True)
            except Exception:  # what was not applied stays for the next fold; this call counts
                report_failure("folding recorded values")
            finally:
                _fold_lock.release()
        return cell

    def _end_in_place(
        self,
        status: int,
        seconds: float,
        amounts: tuple[tuple[int, float], ...],
        exemplar: dict[str, str] | None,
    ) -> None:
        """:meth:`end` written into the cell's numbers, holding its lock: an end whose
        exemplar the cell keeps (the latest per bucket) beside them."""
        try:
            cell: Cell = self._local.cell
        except AttributeError:
            cell = self._new_cell()
        if cell.writing:
            defer(partial(self._end_in_place, status, seconds, amounts, exemplar))
            return
        cell.writing = True
        # acquire()/release() rather than ``with``: half the cost of the lock.
        lock = cell.lock
        lock.acquire()
        try:
            values = cell.values
            layout = self._layout
            values[layout.ended] -= layout.step
            values[status] += 1
            values[layout.histogram] += seconds
            bucket = layout.first_bucket + bisect_left(layout.bounds, seconds)
            values[bucket] += 1
            if amounts:
                for index, amount in amounts:
                    values[index] += amount
            if exemplar is not None:
                self._keep(cell, exemplar, bucket, seconds, amounts)
        finally:
            lock.release()
            cell.writing = False
        global _changed
        _changed = True

    def _hot_paths(self) -> tuple[Begin, End, Callable[[float], None]]:
        """:meth:`begin`, :meth:`end` and :meth:`end_usual`, which run once per decorated
        call: closures over what they read, with the lookup of the cell inlined."""
        local, new_cell, compact = self._local, self._new_cell, self._compact_own
        in_place = self._end_in_place

        def begin(step: int = 1) -> None:
            """A job's start: the gauge up by one (``partial(begin, -1)``: down, a job's
            end that records the rest elsewhere)."""
            try:
                cell: Cell = local.cell
            except AttributeError:
                cell = new_cell()
            starts = cell.starts
            starts.append(step)
            if len(starts) >= LOG_SIZE:
                compact(cell)
            global _changed
            _changed = True

        def end(
            status: int,
            seconds: float,
            amounts: tuple[tuple[int, float], ...] = (),
            exemplar: dict[str, str] | None = None,
        ) -> None:
            """A job's end: the gauge down, counter ``status`` up, ``seconds`` observed,
            and each ``(index, amount)`` added; the observation and the amounts carry
            ``exemplar`` (its labels) when given."""
            if exemplar is not None:
                in_place(status, seconds, amounts, exemplar)
                return
            try:
                cell: Cell = local.cell
            except AttributeError:
                cell = new_cell()
            ends = cell.ends
            ends.append((status, seconds, amounts))
            if len(ends) >= LOG_SIZE:
                compact(cell)
            global _changed
            _changed = True

        def end_usual(seconds: float) -> None:
            """:meth:`end` with status ``usual``, no amounts and no exemplar."""
            try:
                cell: Cell = local.cell
            except AttributeError:
                cell = new_cell()
            log = cell.log
            log.append(seconds)
            if len(log) >= LOG_SIZE:
                compact(cell)
            global _changed
            _changed = True

        return begin, end, end_usual

    def _compact_own(self, cell: Cell) -> None:
        """Compact the current thread's cell, unless this runs inside its own write."""
        if cell.writing:  # a read-modify-write of this thread's is under way: next time
            return
        cell.writing = True
        try:
            self._layout.compact(cell)
        except Exception:  # the logs keep what was not compacted, for the fold
            report_failure("folding recorded values")
        finally:
            cell.writing = False

    def _keep(
        self,
        cell: Cell,
        labels: dict[str, str],
        bucket: int,
        seconds: float,
        amounts: tuple[tuple[int, float], ...],
    ) -> None:
        """Keep the exemplars of one end, holding the cell's lock: the latest per number."""
        now = time()
        kept = cell.exemplars
        if kept is None:
            kept = cell.exemplars = {}
        kept[bucket] = Exemplar(labels, seconds, now)
        for index, amount in amounts:
            if amount and index in self._exemplars:
                kept[index] = Exemplar(labels, amount, now)

    def add(self, amounts: tuple[tuple[int, float], ...]) -> None:
        """Add each ``(index, amount)`` at once (the slow paths)."""
        cell = self.cell()
        if cell.writing:
            defer(partial(self.add, amounts))
            return
        cell.writing = True
        try:
            with cell.lock:
                values = cell.values
                for index, amount in amounts:
                    values[index] += amount
        finally:
            cell.writing = False
        global _changed
        _changed = True

    # -- the fold --------------------------------------------------------------------------

    def _fold(self, dead_only: bool) -> None:
        """Apply what each cell gained since the last fold; drop the cells of exited threads.
        Holding ``_fold_lock``."""
        with self._lock:
            cells = list(self._cells)
            targets = self._targets
        gone = []
        own = getattr(self._local, "cell", None)
        for cell in cells:
            # Decided before the copy: a thread that had exited wrote its last already.
            dead = cell.owner() is None
            if dead_only and not dead:
                continue
            if cell is own:
                # This thread's cell, read by this thread: mid-way through its own write
                # (the read is a finalizer's or a signal handler's) its numbers are half
                # changed, so they wait for the next read; else it is marked written while
                # copied, so a finalizer recording meanwhile does not compact under the copy.
                if cell.writing:
                    global _changed
                    _changed = True
                    continue
                cell.writing = True
            try:
                with cell.lock:
                    values = self._layout.contents(cell)
                    exemplars, cell.exemplars = cell.exemplars, None
            finally:
                if cell is own:
                    cell.writing = False
            if dead:
                # Its thread may have added a counter (and counted into it) after
                # ``targets`` was read, and this is the cell's last fold: read them again.
                with self._lock:
                    targets = self._targets
            folded = cell.folded
            if values != folded:
                for index, target in targets:
                    delta = values[index] - folded[index]
                    if delta:
                        target.inc(delta)
                        folded[index] = values[index]
            if exemplars:
                for index, exemplar in exemplars.items():
                    self._exemplars[index].set_exemplar(exemplar)
            if dead:
                gone.append(cell)
        if gone:
            with self._lock:
                self._cells = [cell for cell in self._cells if cell not in gone]

    def retired(self) -> bool:
        """Nothing uses this series any more and every cell is folded."""
        if self._keeper() is not None:
            return False
        with self._lock:
            return all(self._folded(cell) for cell in self._cells)

    def _folded(self, cell: Cell) -> bool:
        with cell.lock:
            return self._layout.contents(cell) == cell.folded

    def cell_count(self) -> int:
        """How many cells the series holds (live threads', and exited ones not yet folded)."""
        with self._lock:
            return len(self._cells)


_series: list[CellSeries] = []
_series_lock = threading.Lock()
# One fold at a time: two at once would both apply the same difference.
_fold_lock = threading.Lock()
#: The thread holding ``_fold_lock`` (None: none), so a read nested in its fold returns
#: rather than waiting for itself.
_folding: int | None = None
#: Set after every write to a cell, cleared as a fold starts: a read that finds it clear
#: has nothing to fold (once a fold in progress is done).
_changed = False


def fold_all() -> None:
    """Fold every series' cells into its children: a before-snapshot hook. Never raises."""
    global _changed, _folding
    if _folding == get_ident():
        return  # a read inside this thread's own fold (a finalizer's): that fold goes on
    with _fold_lock:
        _folding = get_ident()
        try:
            _changed = False
            with _series_lock:
                every = list(_series)
            for series in every:
                try:
                    series._fold(dead_only=False)
                except Exception:  # what was not applied stays in the cells for the next
                    # fold, which the next read makes even if nothing is written meanwhile
                    _changed = True
                    report_failure("folding recorded values")
            done = [series for series in every if series.retired()]
            if done:
                with _series_lock:
                    _series[:] = [series for series in _series if series not in done]
        finally:
            _folding = None


def fold_if_changed() -> None:
    """:func:`fold_all` when a cell was written since the last fold; else wait for a fold
    in progress (another read's), so what it applies is in the children. Never raises."""
    if _changed:
        fold_all()
    elif _folding != get_ident():
        with _fold_lock:
            pass


# -- fork: the child starts from a consistent state, with no lock held by a thread it lacks ----

_held: list[Any] = []
#: What else a fork waits for, after the cells' own locks: functions giving more locks. A
#: fold holds the fold lock while it updates prometheus_client's values, never the other
#: way round, so those come last (``delivery._lifecycle`` adds their multiprocess lock).
more_fork_locks: list[Callable[[], list[Any]]] = []


def _before_fork() -> None:
    for lock in (_fold_lock, _series_lock):
        lock.acquire()
        _held.append(lock)
    for series in _series:
        series._lock.acquire()
        _held.append(series._lock)
        for cell in series._cells:
            cell.lock.acquire()
            _held.append(cell.lock)
    for more in more_fork_locks:
        for lock in more():
            lock.acquire()
            _held.append(lock)


def _after_fork() -> None:
    while _held:
        _held.pop().release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)
