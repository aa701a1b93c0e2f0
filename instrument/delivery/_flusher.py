"""The delivery of one instrumentation: its push mode, its flusher thread, and the send
that moves the latest full state to every target.

Three modes: ``each`` pushes at the end of every call and waits; ``coalesce`` marks the
state dirty and lets one daemon flusher thread push at most once per interval (the
caller never waits on the network); ``off`` never pushes. Every push sends the full
cumulative state, so a push that failed loses nothing: the next one carries it all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from .._scrub import Scrubber
from .._threads import start_daemon
from ..metrics import Metrics
from ._aiohttp import LoopSessions
from ._flusher_thread import (
    PUSH_MODES,
    FlushState,
    backoff,
    check_mode,
    flusher,
    log_stretch,
    log_undelivered,
    stretched_gap,
    wake,
)
from ._http import PushFailed, describe
from ._lifecycle import EXIT_FLUSH_TIMEOUT, instance_label, multiprocess_enabled, track
from ._pushgateway import PushTarget
from ._snapshot import Snapshot, run_before_snapshot
from ._textfile import TextfileTarget

if TYPE_CHECKING:
    from ._remote_write import RemoteWriteTarget

    _Target = PushTarget | RemoteWriteTarget | TextfileTarget

__all__ = ["PUSH_MODES", "Delivery"]

logger = logging.getLogger("instrument")

_NO_SECRETS = Scrubber(())


class Delivery:
    """Moves the registry's state to its targets according to the push mode."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        gateway: PushTarget | None,
        textfile: str | None,
        mode: str | None,
        interval: float,
        instance: bool | str,
        delete_on_exit: bool,
        collect: Callable[[], CollectorRegistry],
        remote_write: RemoteWriteTarget | None = None,
    ) -> None:
        mode = check_mode(mode, interval, bool(gateway or remote_write or textfile))
        self.metrics = metrics
        self.gateway = gateway
        self.remote_write = remote_write
        self.textfile = textfile
        self.mode = mode
        self.interval = float(interval)
        self._instance = instance
        self._delete_on_exit = delete_on_exit
        self._collect = collect
        self._owner_pid = os.getpid()
        self._multiprocess = multiprocess_enabled()
        self._closed = self._remote_only = False  # remote write alone: set at close
        self._last_success = 0.0
        self._stretch_logged = False
        self._push_seconds = 0.0  # the last push's Snapshot.seconds: it outlives a fork
        #: What a call checks as it starts (``FlushState``); bindings hold it: kept at a fork.
        self.handover = FlushState()
        self.reset_process_state()
        track(self)
        if self._multiprocess and self.mode == "coalesce":
            # Workers record but never push; the owner pushes what they collected each interval.
            self._mark_dirty()

    def reset_process_state(self) -> None:
        """State that does not survive a fork: threads, locks, sessions, the instance label."""
        self._pid = os.getpid()
        self._dirty = False
        self.handover.reset()  # a new condition; no flusher holds the delivery yet
        self._cond = self.handover.cond
        # Sync senders (the flusher, push(), flush(), each mode) go one at a time, so
        # flush() returning True means the latest state is what the gateway holds. Async
        # sends never take it: an event loop must not wait on a thread lock, and a sync
        # send from the loop's own thread would wait forever for an async one.
        self._send_lock = threading.Lock()
        # So an async send can overlap another send, and the older state may land last:
        # snapshots are numbered (under this short lock), and one landing after a newer
        # one marks the state dirty, so the newest goes out again.
        self._snapshot_lock = threading.Lock()
        # Which cannot help once every push returned: so async sends on one loop go one at
        # a time, and the last to return sent the newest state.
        self._loop_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._taken = 0
        self._newest_landed = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failures = 0
        self._outage = False
        self._next_attempt = 0.0
        # Sessions of a parent process belong to its loops: a forked child starts without.
        self._sessions = LoopSessions()
        # Its lock may have been held by a thread of the parent, which the child lacks.
        self._file = TextfileTarget(self.textfile) if self.textfile else None
        mp = self._multiprocess
        label = instance_label(mp) if self._instance in (True, False, "") else str(self._instance)
        if self.gateway is not None and self._instance:
            self.gateway.grouping_key["instance"] = label
        if self.remote_write is not None:  # always labelled: two writers of one series corrupt it
            self.remote_write.reset(label, given=label == self._instance)

    def __repr__(self) -> str:
        remote = "" if self.remote_write is None else f", remote_write={self.remote_write!r}"
        targets = f"gateway={self.gateway!r}{remote}, textfile={self.textfile!r}"
        return f"Delivery(mode={self.mode!r}, {targets})"

    @property
    def _has_target(self) -> bool:
        return self.gateway is not None or self.remote_write is not None or bool(self.textfile)

    def _is_worker(self) -> bool:
        return self._multiprocess and os.getpid() != self._owner_pid

    def _owns_group(self) -> bool:
        """Whether this process may delete the group: the one that configured it, or a forked
        child with a group of its own (its pid as instance), never one sharing its parent's."""
        own_pid = self._instance is True and not self._multiprocess
        return own_pid or os.getpid() == self._owner_pid

    # -- the hot path: called at the end of every instrumented job ---------------------------

    def after_call(self) -> None:
        mode = self.mode
        if mode == "coalesce":
            self.after_coalesced_call()
        elif mode == "each" and not (self._closed or self._is_worker()):
            self.push()

    def after_coalesced_call(self) -> None:
        """``after_call`` for coalesce mode, without asking the mode: what a decorator
        binds when it knows the mode (the usual case: once per interval it does anything)."""
        if not self._dirty:
            self._mark_dirty()

    def call_hook(self) -> Callable[[], None] | None:
        """What to call after each job in sync code: None when nothing is ever pushed."""
        if self.mode == "off":
            return None
        return self.after_coalesced_call if self.mode == "coalesce" else self.after_call

    def note_change(self) -> None:
        """The state changed outside a call (e.g. an abandoned stream was recorded): mark it
        for the next push, whatever the mode, without pushing now."""
        if self.mode == "coalesce":
            self._mark_dirty()
        elif not self._closed:
            self._dirty = True

    def after_call_async(self) -> Any:
        """None, or an awaitable push (``each`` mode in async code)."""
        mode = self.mode
        if mode == "coalesce":
            if not self._dirty:
                self._mark_dirty()
            return None
        if mode == "each" and not (self._closed or self._is_worker()):
            return self.push_async()
        return None

    def _mark_dirty(self) -> None:
        if self._closed or self._is_worker():
            return
        self._dirty = True
        if self._pid != os.getpid():
            self.reset_process_state()
            self._dirty = True
        with self._cond:
            self.handover.pending = self
            if self._thread is None:
                # The thread holds the delivery weakly once it is clean: an instrumentation
                # dropped without close() is pushed, then collected, and its flusher ends.
                # Set once started: a thread that could not start is tried again next time.
                self._thread = start_daemon(
                    flusher, "instrument-flusher", weakref.ref(self), self.handover
                )
                # Bound to this process: a forked child inherits the finalizer with the
                # parent's condition, which a parent thread may have held at the fork.
                weakref.finalize(self, wake, self._cond, os.getpid())
            self.handover.wake()

    def _flush_slot(self) -> float | None:
        """Seconds until the flusher may push, or None when there is nothing to push.
        Called with the condition held."""
        if not (self._dirty or self._multiprocess):
            return None
        return self._next_attempt - time.monotonic()

    def _schedule(self, ok: bool) -> None:
        """After a push: the next slot, an interval or a backoff away, stretched so that
        collecting and serializing (what the last push spent, while the callers wait for
        the GIL) take at most SERIALIZE_SHARE of the time."""
        gap = self.interval if ok else backoff(self._failures)
        stretched = stretched_gap(gap, self._push_seconds)
        if ok and stretched > gap and not self._stretch_logged:
            self._stretch_logged = True
            log_stretch(self._push_seconds, stretched, self.interval)
        with self._cond:
            self._next_attempt = time.monotonic() + stretched

    # -- sending: the same steps on either transport ----------------------------------------

    def deliver_now(self, timeout: float | None) -> bool:
        """Send the latest full state to every target within ``timeout`` seconds in all
        (default: the push timeout); True when it landed."""
        if self._is_worker():
            return False
        limit = self._default_timeout() if timeout is None else timeout
        deadline = time.monotonic() + limit
        held = False
        try:
            # Acquired inside the try: an interrupt once it returned still lets it go.
            held = self._send_lock.acquire(timeout=limit)
            if not held:
                self._dirty = True  # not delivered: the next push must carry it
                return False
            snapshot = self._take_snapshot()
            if snapshot is None:
                return False
            # Each target on its own: a gateway that is down must not keep the textfile
            # stale, nor a failing textfile undo a push that landed.
            ok = True
            for target in self._targets(self.gateway):
                try:
                    target.send(snapshot, deadline - time.monotonic())
                except BaseException as exc:
                    ok = self._failed(exc, target.where)
            return self._ended(snapshot, ok)
        except BaseException:
            # An interrupt (a signal in the main thread) anywhere in the attempt, once the
            # snapshot cleared dirty: the state did not land, the next push must carry it.
            self._dirty = True
            raise
        finally:
            if held:
                self._send_lock.release()

    async def _deliver_async(self, target: PushTarget | None, timeout: float | None) -> bool:
        limit = self._default_timeout() if timeout is None else timeout
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.setdefault(loop, asyncio.Lock())
        deadline = loop.time() + limit  # waiting for the send before counts against it
        try:
            async with asyncio.timeout_at(deadline):
                await lock.acquire()
        except TimeoutError:
            self._dirty = True  # not delivered: the next push must carry it
            return False
        try:
            return await self._send_async(target, max(deadline - loop.time(), 0.001))
        except BaseException:
            self._dirty = True  # interrupted before it landed, as in deliver_now
            raise
        finally:
            lock.release()

    async def _send_async(self, target: PushTarget | None, limit: float) -> bool:
        snapshot = self._take_snapshot()
        if snapshot is None:
            return False
        ok = True  # each target on its own, as in deliver_now
        for each in self._targets(target):
            try:
                await each.asend(self._sessions.session, snapshot, limit)
            except BaseException as exc:  # a cancelled push did not land either
                ok = self._failed(exc, each.where)
        return self._ended(snapshot, ok)

    def _targets(self, gateway: PushTarget | None) -> list[_Target]:
        """Every target of one attempt: ``gateway`` (the usual one, or a job's own), then
        remote write and the textfile; remote write alone at the close of ``off`` mode."""
        if self._remote_only:
            return [self.remote_write] if self.remote_write else []
        targets: list[_Target | None] = [gateway, self.remote_write, self._file]
        return [target for target in targets if target is not None]

    def _default_timeout(self) -> float:
        target = self.gateway or self.remote_write
        return target.timeout if target is not None else EXIT_FLUSH_TIMEOUT

    def _take_snapshot(self) -> Snapshot | None:
        """Clear dirty, count the attempt and take the next numbered snapshot: a job ending
        after this marks dirty again. The snapshot gives its own time as the last successful
        push, so a state that lands says when it was pushed; the registry keeps the last push
        that did land. A registry that cannot be collected (a collector raising) is a failed
        attempt, ended here: None, and the state stays dirty for the next attempt."""
        run_before_snapshot()
        gauge = self.metrics.last_push_success
        with self._snapshot_lock:
            self._dirty = False
            self._taken += 1
            self.metrics.pushes.inc()
            at = time.time()
            gauge.set(at)
            try:
                return Snapshot(self._collect(), self._taken, at)
            except BaseException as exc:
                error = exc
            finally:
                gauge.set(self._last_success)
        text = f"collecting the metrics failed ({describe(error)})"
        for target in (self.gateway, self.remote_write):
            text = (_NO_SECRETS if target is None else target.scrubber).one_line(text)
        self._failures += 1  # an attempt that ends here, before any target
        self._failed(PushFailed(text))
        if not isinstance(error, Exception):
            raise error
        return None

    def _ended(self, snapshot: Snapshot, ok: bool) -> bool:
        """End the attempt that sent ``snapshot``: ``ok`` when every target took it. A
        failed attempt is one backoff step, whichever and however many targets failed."""
        self._push_seconds = snapshot.seconds
        if ok:
            return self._landed(snapshot)
        self._failures += 1
        return False

    def _landed(self, snapshot: Snapshot) -> bool:  # it reached every target
        with self._snapshot_lock:
            if snapshot.number > self._newest_landed:
                self._newest_landed = snapshot.number
            else:  # older than what already landed, and landed after it: push again
                self._dirty = True
            self._last_success = max(self._last_success, snapshot.at)
            self.metrics.last_push_success.set(self._last_success)
        if self._outage:
            logger.info(
                "instrument: push to %s recovered after %d failed attempts",
                self._target_text(),
                self._failures,
            )
        self._outage = False
        self._failures = 0
        return True

    def _failed(self, exc: BaseException, where: str | None = None) -> bool:
        """Record a failed attempt to deliver to ``where`` (default: every target): the
        state stays dirty for the next one. False, or ``exc`` raised again if it is no
        Exception (a cancellation, an interrupt)."""
        where = self._target_text() if where is None else where
        with self._snapshot_lock:
            self._dirty = True
            self.metrics.push_failures.inc()
        # A PushFailed says what failed; anything else (a textfile's OSError) by its type too.
        reason = str(exc) if isinstance(exc, PushFailed) else describe(exc)
        if not self._outage:
            self._outage = True
            logger.warning(
                "instrument: push to %s failed (%s); retrying with backoff, counts are kept "
                "and the next successful push carries them",
                where,
                reason,
            )
        else:
            logger.debug("instrument: push to %s failed again (%s)", where, reason)
        if not isinstance(exc, Exception):
            raise exc
        return False

    def _target_text(self) -> str:
        return " and ".join(target.where for target in self._targets(self.gateway))

    # -- explicit operations -------------------------------------------------------------------

    def push(self, timeout: float | None = None) -> bool:
        """Push the full state now, whatever the mode; True on success. Never raises."""
        if not self._has_target:
            return False
        try:
            return self.deliver_now(timeout)
        except Exception:
            logger.exception("instrument: unexpected error while pushing")
            return False

    async def push_async(self, job: str | None = None, timeout: float | None = None) -> bool:
        """Push the full state now over aiohttp (one session per event loop), under ``job``
        if given; never raises: a ``job`` the gateway cannot take is a failed push, logged."""
        if self._is_worker() or not self._has_target:
            return False
        target = self.gateway
        try:
            if job is not None and target is not None and job != target.job:
                target = target.for_job(job)
        except ValueError as exc:
            self.metrics.push_failures.inc()
            logger.error("instrument: nothing pushed: %s", exc)
            return False
        try:
            return await self._deliver_async(target, timeout)
        except Exception:
            logger.exception("instrument: unexpected error while pushing")
            return False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the latest state is delivered (or ``timeout`` passes); True if it was."""
        if self._is_worker() or not self._has_target or self.mode == "off":
            return True
        if ok := self.deliver_now(timeout):
            self._schedule(True)
        return ok

    async def aflush(self, timeout: float | None = None) -> bool:
        if self._is_worker() or not self._has_target or self.mode == "off":
            return True
        return await self.push_async(timeout=timeout)

    def delete(self, timeout: float | None = None) -> bool:
        """Delete this group from the Pushgateway; True on success, never raises."""
        if self.gateway is None:
            return False
        try:
            self.gateway.delete(timeout)
        except Exception as exc:
            logger.warning("instrument: deleting %s failed (%s)", self._target_text(), exc)
            return False
        return True

    def _stop_flusher(self) -> threading.Thread | None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        return thread

    def _final_pending(self) -> bool:
        """Whether close delivers once more (in ``off`` mode: RemoteWriteTarget.closing)."""
        run_before_snapshot()  # deferred recording may still mark the state dirty
        # In multiprocess mode the workers' records never make the owner dirty: only a
        # push collecting across processes leaves their final totals on the gateway.
        dirty = self._dirty or self._multiprocess
        pending = self.mode != "off" and not self._is_worker() and dirty
        if self.remote_write is not None:
            self._remote_only = self.remote_write.closing(pending, off=self.mode == "off")
        return pending or self._remote_only

    def close(self, timeout: float = EXIT_FLUSH_TIMEOUT) -> None:
        """Stop the flusher, deliver the final state, optionally delete the group: all within
        ``timeout`` seconds."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        thread = self._stop_flusher()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0))
        if self._final_pending() and not self.deliver_now(max(deadline - time.monotonic(), 0.001)):
            log_undelivered(self._target_text())
        if self._delete_on_exit and self._owns_group():
            self.delete(max(deadline - time.monotonic(), 0.001))
        if self.remote_write is not None:  # staleness markers, after the final values
            self.remote_write.end(max(deadline - time.monotonic(), 0.001), self._failed)
        self._closed = True
        self._sessions.close_all()

    async def aclose(self, timeout: float = EXIT_FLUSH_TIMEOUT) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        thread = self._stop_flusher()
        if thread is not None:
            await asyncio.to_thread(thread.join, max(deadline - time.monotonic(), 0))
        limit = max(deadline - time.monotonic(), 0.001)
        if self._final_pending() and not await self.push_async(timeout=limit):
            log_undelivered(self._target_text())
        if self._delete_on_exit and self._owns_group():
            await asyncio.to_thread(self.delete, max(deadline - time.monotonic(), 0.001))
        if self.remote_write is not None:
            limit = max(deadline - time.monotonic(), 0.001)
            await self.remote_write.aend(self._sessions.session, limit, self._failed)
        self._closed = True
        await self._sessions.aclose_all()
