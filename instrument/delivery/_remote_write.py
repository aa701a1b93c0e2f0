"""The remote-write target: the registry's state written as Prometheus Remote-Write 1.0 to a
receiver (Prometheus's own, Mimir, Thanos Receive, Cortex, VictoriaMetrics).

Every write is the full cumulative state, one sample per series, so a failed write loses
nothing: the next one carries the newest values. A receiver rejects a sample older than
the last one it stored for that series, so writes go one at a time, never with an older
state than the last one sent, and their timestamps strictly increase even when the clock
steps back or two writes fall in the same millisecond. 5xx and 429 answers are retried with
capped, jittered backoff within the push timeout, after the ``Retry-After`` the receiver
asked for; any other 4xx is the receiver refusing this request, which is never retried.

Only an instrumentation with ``remote_write=`` imports this module, and with it the
encoders (``_prompb``, ``_snappy``).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from prometheus_client import CollectorRegistry

from .._scrub import Scrubber
from .._urls import authorization, ssl_context
from ._aiohttp import arequest
from ._flusher_thread import backoff
from ._http import PushFailed, request
from ._prompb import STALE_NAN, Sample, Series, encode_write_request, series_of
from ._pushgateway import check_seconds
from ._remote_write_checks import (
    check_external_labels,
    check_headers,
    check_remote_write_url,
    claim_series,
    parse_headers,
    refuse_clashes,
    release_series,
)
from ._snappy import compress
from ._snapshot import Snapshot

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "RemoteWriteTarget",
    "check_external_labels",
    "check_headers",
    "check_remote_write_url",
    "parse_headers",
    "remote_write_target",
]

logger = logging.getLogger("instrument")

_RETRY_BASE = 0.1
_RETRY_CAP = 5.0
#: The longest Retry-After honoured: a receiver asking for days must not silence a worker.
_RETRY_AFTER_CAP = 300.0


def remote_write_target(
    url: str,
    *,
    headers: Mapping[str, str] | None,
    job: str,
    grouping_key: Mapping[str, str],
    external_labels: Mapping[str, str] | None,
    registry: CollectorRegistry | None,
    tls_verify: bool,
    ca_file: str | None,
    timeout: float,
    stale_on_exit: bool,
) -> RemoteWriteTarget:
    """The target of ``Instrumentation(remote_write=...)``: every series labelled with the
    job, the grouping key and the external labels (the delivery adds the instance), each
    of them checked against the labels the metrics already carry."""
    external = check_external_labels(external_labels or {}, grouping_key)
    if "instance" in grouping_key:
        raise ValueError(
            "grouping_key holds 'instance', and remote write labels every series with its "
            "own (host-pid); pass instance='...' instead"
        )
    labels = {**grouping_key, **external, "job": job}
    if registry is not None:
        refuse_clashes(registry, {*labels, "instance"})
    return RemoteWriteTarget(
        url,
        headers=headers,
        labels=labels,
        tls_verify=tls_verify,
        ca_file=ca_file,
        timeout=timeout,
        stale_on_exit=stale_on_exit,
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number or an HTTP date), capped;
    None when it says nothing usable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text) if text.isdigit() else None
    except ValueError:
        seconds = None
    if seconds is None:
        try:
            seconds = email.utils.parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), _RETRY_AFTER_CAP)


def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        # The distribution's name, not the import name (instrument on PyPI is another project).
        return f"instrument/{version('codomyrmex-instrument')} (remote write)"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "instrument (remote write)"


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429  # the spec's 5xx MUST, and its 429 MAY


class RemoteWriteTarget:
    """Where and how to write: the receiver's URL, headers, TLS, and the labels every
    series carries. Never shows a header's value or a credential."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        labels: Mapping[str, str],
        tls_verify: bool = True,
        ca_file: str | None = None,
        timeout: float = 5.0,
        stale_on_exit: bool = True,
        instance: str = "",
    ) -> None:
        self.url, query, credentials = check_remote_write_url(url)
        #: Where writes go: the URL with its query, which logs never show (it may hold a key).
        self._endpoint = f"{self.url}?{query}" if query else self.url
        given = check_headers(headers or {})
        secrets: list[str] = [value for _, value in parse_qsl(query) if len(value) > 3]
        for value in given.values():
            # "Bearer abc" may come back as "abc" alone, in a proxy's complaint.
            secrets += [value, *value.split()[1:2]]
        if credentials is not None:
            if any(name.lower() == "authorization" for name in given):
                raise ValueError(
                    "the remote write URL holds user:password and remote_write_headers an "
                    "Authorization header; pass only one of them"
                )
            header, auth_secrets = authorization(token=None, basic_auth=credentials)
            assert header is not None
            given["Authorization"] = header
            secrets += auth_secrets
        self.header_names = tuple(given)
        self.timeout = check_seconds("push_timeout", timeout)
        self.stale_on_exit = stale_on_exit
        self.labels = dict(labels)
        self._headers = [
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ("User-Agent", _user_agent()),
            *given.items(),
        ]
        #: Removes this target's header values and credentials from texts sent back.
        self.scrubber = Scrubber(secrets)
        self._ssl = ssl_context(self.url, tls_verify=tls_verify, ca_file=ca_file)
        self._born = os.getpid()
        self.reset(instance)

    def reset(self, instance: str, *, given: bool = False) -> None:
        """Start writing as ``instance``: state that belongs to one process, as a forked
        child writes series of its own (the delivery resets it at its start and in a child).
        A forked child's ``given`` instance (not a host-pid) gets its pid after it, or it
        would write its parent's series and end them at its exit. A ValueError if another
        live target of this process writes the same series."""
        if given and os.getpid() != self._born:
            instance = f"{instance}-{os.getpid()}"
        self.labels["instance"] = instance
        # Refused where it is configured; in a forked child every inherited target resets
        # at once (a dead one among them), and nothing there may raise.
        claim_series(self, refuse=os.getpid() == self._born)
        self._pid = os.getpid()
        # Held for a whole write, retries included: writes to one receiver never overlap.
        self._lock = threading.Lock()
        self._last_ms = 0
        self._newest = 0
        self._not_before = 0.0
        #: The series of the last write built: what the markers at the end are for.
        self._written: dict[tuple[tuple[str, str], ...], None] = {}
        #: Series the registry dropped whose staleness marker has not landed yet.
        self._unended: dict[tuple[tuple[str, str], ...], None] = {}
        self._sending: tuple[tuple[tuple[str, str], ...], ...] = ()
        #: The encoded labels of the series last written, for the next write.
        self._encoded: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._current = False
        self._final = False
        self._clashes_logged: set[str] = set()

    def closing(self, pending: bool, *, off: bool) -> bool:
        """At close, whether to write the final values to this target alone: in ``off``
        mode when a write landed before (``pending``: the delivery writes every target).
        The staleness markers follow, and a marker after an older value would end the
        series short of the final counts. From now on every write is tried at least once,
        even when a ``Retry-After`` asked to wait past the exit's budget: the receiver may
        refuse it again, but a worker's final counts are not dropped without asking."""
        self._final = True
        return off and not pending and bool(self._written) and self._current

    def identity(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Where this target writes and the labels every series of it carries."""
        return self._endpoint, tuple(sorted(self.labels.items()))

    def __repr__(self) -> str:
        headers = f", headers={list(self.header_names)}" if self.header_names else ""
        return f"RemoteWriteTarget({self.url!r}{headers})"

    # -- what goes out ----------------------------------------------------------------------

    def _timestamp_ms(self) -> int:
        # Strictly after the last write's: a sample not newer than the stored one is refused.
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        return self._last_ms

    def _state_body(self, snapshot: Snapshot) -> bytes | None:
        """The write of ``snapshot``'s values, or None if a newer state was sent already
        (sending the older one after it would take counters back). Lock held. Its time
        counts in the snapshot's: encoding is the flusher's cost as much as collecting."""
        with snapshot.timing():
            return self._encode_state(snapshot)

    def _encode_state(self, snapshot: Snapshot) -> bytes | None:
        if snapshot.number < self._newest:
            return None
        self._newest = snapshot.number
        at = self._timestamp_ms()
        clashed: set[str] = set()
        series, metadata = series_of(snapshot.families, self.labels, at, clashed=clashed)
        self._log_clashes(clashed)
        written = dict.fromkeys(one.labels for one in series)
        # A series the registry no longer has (a child removed, a dead process's gauge in
        # multiprocess mode) ends now, as a scrape that misses it would end it; its marker
        # is sent again with every write until one lands.
        self._unended.update(dict.fromkeys(k for k in self._written if k not in written))
        for labels in [k for k in self._unended if k in written]:
            del self._unended[labels]  # back in the registry: its new value ends nothing
        marker = (Sample(STALE_NAN, at),)
        self._sending = tuple(self._unended)
        series += [Series(labels, marker) for labels in self._sending]
        self._written = written
        # Only the series of this write are kept: a dropped one's labels go with it.
        cache = {labels: self._encoded[labels] for labels in written if labels in self._encoded}
        self._encoded = cache
        return compress(encode_write_request(series, metadata, cache))

    def _log_clashes(self, clashed: set[str]) -> None:
        """Say once per metric that its own label gave way to one remote write adds: a
        metric registered after the configuration check could not be refused then."""
        for name in sorted(clashed - self._clashes_logged):
            self._clashes_logged.add(name)
            logger.warning(
                "instrument: the metric %r has a label that remote write adds to every series "
                "(job, instance, grouping_key, external_labels); its own value is replaced in "
                "what is written to %s: rename the label",
                name,
                self.url,
            )

    def _stale_body(self) -> bytes | None:
        """Staleness markers for every series last written, or None when there is nothing to
        end: none written, opted out, the last values never landed (a marker after an
        older value would hide the final one's loss behind a clean end), or the series are
        another process's (a forked child's copy of its parent's). Lock held."""
        if os.getpid() != self._pid:
            return None
        if not (self.stale_on_exit and (self._written or self._unended) and self._current):
            return None
        marker = (Sample(STALE_NAN, self._timestamp_ms()),)
        self._sending = tuple({**self._written, **self._unended})
        series = [Series(labels, marker) for labels in self._sending]
        self._written = {}
        return compress(encode_write_request(series))

    def _landed(self) -> None:
        self._current = True
        for labels in self._sending:
            self._unended.pop(labels, None)
        self._sending = ()

    # -- sync transport --------------------------------------------------------------------

    def push(self, snapshot: Snapshot, timeout: float | None = None) -> None:
        """Write ``snapshot`` within ``push_timeout`` (or ``timeout`` if shorter) in all,
        retries included. Raises PushFailed, whose message never holds a secret."""
        self._send_sync(lambda: self._state_body(snapshot), timeout)

    def end(self, timeout: float, failed: _Failed) -> None:
        """Write staleness markers for every series (at close and exit); a failure goes to
        ``failed`` (the delivery's count and log) with where it happened."""
        try:
            self._send_sync(self._stale_body, timeout)
        except BaseException as exc:
            failed(exc, self.url)
        finally:
            release_series(self)  # it writes no more: another may take its series

    def _send_sync(self, build: _Build, timeout: float | None) -> None:
        deadline = time.monotonic() + self._limit(timeout)
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise PushFailed("another write to the receiver is still running")
        try:
            body = build()
            attempt = 0
            while body is not None:
                self._current = False  # until it landed: not if cancelled, or interrupted
                wait = self._wait(deadline)
                if wait > 0:
                    time.sleep(wait)
                try:
                    request(self._endpoint, "POST", self._headers, body, self._left(deadline),
                            self._ssl, self.scrubber)  # fmt: skip
                except PushFailed as exc:
                    time.sleep(self._after_failure(exc, attempt, deadline))
                    attempt += 1
                    continue
                self._landed()
                return
        finally:
            self._lock.release()

    @property
    def where(self) -> str:
        return self.url

    def send(self, snapshot: Snapshot, timeout: float) -> None:
        """One delivery target's step, as the flusher calls every target's."""
        self.push(snapshot, timeout)

    async def asend(self, session: _Session, snapshot: Snapshot, timeout: float) -> None:
        """The async twin of :meth:`send`."""
        await self.push_async(session, snapshot, timeout)

    # -- async transport: aiohttp ----------------------------------------------------------

    async def push_async(
        self, session: _Session, snapshot: Snapshot, timeout: float | None = None
    ) -> None:
        """The async twin of :meth:`push`, on the aiohttp session ``session()`` gives (asked
        for only when there is something to send)."""
        await self._send_async(session, lambda: self._state_body(snapshot), timeout)

    async def aend(self, session: _Session, timeout: float, failed: _Failed) -> None:
        """The async twin of :meth:`end`."""
        try:
            await self._send_async(session, self._stale_body, timeout)
        except BaseException as exc:
            failed(exc, self.url)
        finally:
            release_series(self)

    async def _send_async(self, session: _Session, build: _Build, timeout: float | None) -> None:
        deadline = time.monotonic() + self._limit(timeout)
        # A thread lock, polled: an event loop must never block on one, and a sync write
        # from another thread may hold it.
        while not self._lock.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise PushFailed("another write to the receiver is still running")
            await asyncio.sleep(0.005)
        try:
            body = build()
            attempt = 0
            headers = dict(self._headers)
            while body is not None:
                self._current = False  # until it landed: not if cancelled, or interrupted
                wait = self._wait(deadline)
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    await arequest(await session(), self._endpoint, "POST", headers, body,
                                   self._left(deadline), self._ssl, self.scrubber)  # fmt: skip
                except PushFailed as exc:
                    await asyncio.sleep(self._after_failure(exc, attempt, deadline))
                    attempt += 1
                    continue
                self._landed()
                return
        finally:
            self._lock.release()

    # -- retries: the same rules on either transport ---------------------------------------

    def _limit(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else max(0.001, min(self.timeout, timeout))

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.001)

    def _wait(self, deadline: float) -> float:
        """Seconds to wait before the next request for the ``Retry-After`` asked earlier;
        raises when it would pass the deadline, except for a final write, which goes now:
        the next write that would carry the counts will never come."""
        wait = self._not_before - time.monotonic()
        if wait <= 0:
            return 0.0
        if time.monotonic() + wait < deadline:
            return wait
        if self._final:
            return 0.0
        raise PushFailed(
            f"the receiver asked to wait {wait:.1f} s more (Retry-After) before the "
            "next write; the first write after that carries the newest state"
        )

    def _after_failure(self, exc: PushFailed, attempt: int, deadline: float) -> float:
        """Seconds to wait before retrying the write that failed with ``exc``; raises (the
        write failed) when it is not to be retried or the wait would pass the deadline."""
        if exc.status is None:
            # No answer (refused, reset, timed out): fail now, as a gateway push does, and
            # leave the retry to the flusher's backoff; a caller in each mode never spends
            # its whole timeout on a receiver that is down.
            raise exc
        if not _retryable(exc.status):
            raise PushFailed(
                f"{exc} (the receiver refused this write, which is not retried; the next "
                "write sends the newest state)",
                status=exc.status,
            ) from None
        asked = _retry_after(exc.retry_after)
        step = backoff(attempt, _RETRY_BASE, _RETRY_CAP)
        delay = step if asked is None else max(asked, step)
        if asked is not None:
            self._not_before = time.monotonic() + asked  # for the next write too
        if time.monotonic() + delay >= deadline:
            raise exc
        return delay


if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    _Build = Callable[[], bytes | None]
    _Failed = Callable[[BaseException, str], object]
    _Session = Callable[[], Awaitable[aiohttp.ClientSession]]
