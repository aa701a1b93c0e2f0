"""Delivery to a Prometheus Pushgateway and/or a node_exporter textfile.

Three modes: ``each`` pushes at the end of every call and waits; ``coalesce`` marks the
state dirty and lets one daemon flusher thread push at most once per interval (the
caller never waits on the network); ``off`` never pushes. Every push sends the full
cumulative state, so a push that failed loses nothing: the next one carries it all.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import copy
import http.client
import logging
import math
import os
import random
import re
import socket
import ssl
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import quote_plus, urlsplit

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    delete_from_gateway,
    push_to_gateway,
    pushadd_to_gateway,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ._scrub import Scrubber
from ._threads import start_daemon
from ._urls import authorization, mask_url, split_url, ssl_context
from .metrics import SAMPLE_LABELS, Metrics, check_label_value

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "PUSH_MODES",
    "BeforeCollect",
    "Delivery",
    "PushTarget",
    "check_group_value",
    "check_grouping_key",
    "check_job",
    "check_seconds",
    "grouping_path",
    "mask_url",
    "register_before_snapshot",
]

logger = logging.getLogger("instrument")

PushMode = Literal["each", "coalesce", "off"]
PUSH_MODES: tuple[str, ...] = ("each", "coalesce", "off")
_RETRY_BASE = 0.5
_RETRY_CAP = 30.0
_EXIT_FLUSH_TIMEOUT = 5.0
_NO_SECRETS = Scrubber(())


def _escape(label: str, value: str) -> str:
    # The Pushgateway's rule: an empty value, or one with "/" (or a space), goes base64.
    if value == "":
        return f"{label}@base64/="
    if "/" in value or " " in value:
        encoded = base64.urlsafe_b64encode(value.encode()).decode()
        return f"{label}@base64/{encoded}"
    return f"{label}/{quote_plus(value)}"


_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def check_group_value(what: str, value: str) -> str:
    """``value`` if the Pushgateway can take it in a group's URL path, else a ValueError
    saying what to do. ``what`` names it in the message ("job")."""
    # The base64 escape carries "/" and "" (see _escape); "." and ".." stay plain path
    # segments, which the gateway's router cleans away and answers with a 301 redirect.
    if value in (".", ".."):
        raise ValueError(
            f"{what} {value!r} cannot be a Pushgateway path segment (the gateway redirects "
            "it instead of storing the push); use a name with other characters"
        )
    return check_label_value(what, value)


def check_job(job: object) -> str:
    """``job`` if it can name a Pushgateway job, else a ValueError saying what to do."""
    if not isinstance(job, str) or not job:
        raise ValueError(f"job must be a non-empty string, got {job!r}")
    return check_group_value("job", job)


def check_grouping_key(grouping_key: object, *, instance: bool | str = False) -> dict[str, str]:
    """The grouping labels as a dict, or a TypeError/ValueError saying what to do.

    A name must be a valid Prometheus label name, not reserved (``__*``), not ``job``
    (that is the job keyword), not one our own metrics use (the gateway would reject every
    push, or overwrite that label of every sample), and not ``instance`` when
    ``instance=`` adds that label. A string ``instance`` is checked as a label value.
    """
    if not isinstance(instance, bool | str):
        raise TypeError(f"instance must be True, False or a string, got {type(instance).__name__}")
    if isinstance(instance, str) and instance:
        check_group_value("instance", instance)
    if not isinstance(grouping_key, Mapping):
        raise TypeError(
            f"grouping_key must be a mapping of label to value, got {type(grouping_key).__name__}"
        )
    group: dict[str, str] = {}
    for name, value in grouping_key.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"grouping_key label must be a non-empty string, got {name!r}")
        if not isinstance(value, str):
            raise TypeError(f"grouping_key[{name!r}] must be a string, got {type(value).__name__}")
        if not _LABEL_NAME_RE.fullmatch(name):
            raise ValueError(
                f"grouping_key label {name!r} is not a valid label name; use letters, "
                "digits and underscores, not starting with a digit"
            )
        if name.startswith("__"):
            raise ValueError(f"grouping_key label {name!r} is reserved (names starting with __)")
        if name == "job":
            raise ValueError("grouping_key must not hold 'job': pass job= instead")
        if name in SAMPLE_LABELS:
            raise ValueError(
                f"grouping_key label {name!r} is a label of the toolkit's own metrics, which "
                f"the gateway would overwrite or refuse; pick another name (not one of "
                f"{sorted(SAMPLE_LABELS)})"
            )
        if name == "instance" and instance:
            raise ValueError(
                "grouping_key holds 'instance' and instance= adds it too; pass only one"
            )
        group[name] = check_group_value(f"grouping_key[{name!r}]", value)
    return group


def check_seconds(what: str, value: object) -> float:
    """``value`` as a float number of seconds, positive, finite and within what thread
    waits and socket timeouts take; else a TypeError/ValueError saying so."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not 0 < seconds <= threading.TIMEOUT_MAX:
        raise ValueError(
            f"{what} must be a positive number of seconds up to {threading.TIMEOUT_MAX:g}, "
            f"got {value!r}"
        )
    return seconds


def grouping_path(job: str, grouping_key: Mapping[str, str]) -> str:
    """The URL path of a group: ``/metrics/job/<job>{/<label>/<value>}``, values escaped."""
    labels = "".join("/" + _escape(k, v) for k, v in sorted(grouping_key.items()))
    return f"/metrics/{_escape('job', job)}{labels}"


class PushTarget:
    """Where and how to push: URL, group, method, auth and TLS. Never shows credentials."""

    def __init__(
        self,
        url: str,
        *,
        job: str,
        grouping_key: Mapping[str, str],
        method: str = "put",
        basic_auth: tuple[str, str] | None = None,
        bearer_token: str | None = None,
        tls_verify: bool = True,
        ca_file: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url, credentials = split_url(
            url, what="pushgateway URL", example="http://127.0.0.1:9091", bare_host=True
        )
        if credentials is not None and basic_auth is None:
            basic_auth = credentials
        if not isinstance(method, str) or method.lower() not in ("put", "post"):
            raise ValueError(f"push_method must be 'put' or 'post', got {method!r}")
        self.job = check_job(job)
        self.grouping_key = check_grouping_key(grouping_key)
        self.method = method.upper()
        self.timeout = check_seconds("push_timeout", timeout)
        header, secrets = authorization(
            token=bearer_token, basic_auth=basic_auth, token_name="bearer_token"
        )
        self._headers: list[tuple[str, str]] = [] if header is None else [("Authorization", header)]
        #: Removes this target's credentials from texts the network sent back.
        self.scrubber = Scrubber(secrets)
        self._ssl = ssl_context(self.url, tls_verify=tls_verify, ca_file=ca_file)

    def __repr__(self) -> str:
        auth = ", auth=***" if self._headers else ""
        return f"PushTarget({self.url!r}, job={self.job!r}, method={self.method}{auth})"

    @property
    def group_url(self) -> str:
        return self.url + grouping_path(self.job, self.grouping_key)

    # -- sync transport: prometheus_client's gateway functions with our handler --------------

    def _handler(
        self,
        url: str,
        method: str,
        timeout: float | None,
        headers: list[tuple[str, str]],
        data: bytes,
    ) -> Callable[[], None]:
        def send() -> None:
            _request(
                url, method, [*headers, *self._headers], data, timeout, self._ssl, self.scrubber
            )

        return send

    def _timeout(self, limit: float | None) -> float:
        return self.timeout if limit is None else max(0.001, min(self.timeout, limit))

    def push(self, registry: Collector, timeout: float | None = None) -> None:
        """Push the registry's full state now, within ``push_timeout`` (or ``timeout`` if
        shorter) in all. Raises PushFailed, whose message never holds credentials."""
        gateway_function = push_to_gateway if self.method == "PUT" else pushadd_to_gateway
        gateway_function(
            self.url,
            job=self.job,
            registry=registry,
            grouping_key=self.grouping_key,
            timeout=self._timeout(timeout),
            handler=self._handler,
        )

    def delete(self, timeout: float | None = None) -> None:
        delete_from_gateway(
            self.url,
            job=self.job,
            grouping_key=self.grouping_key,
            timeout=self._timeout(timeout),
            handler=self._handler,
        )

    def for_job(self, job: str) -> PushTarget:
        """The same target, pushing under another job name."""
        other = copy.copy(self)
        other.job = check_job(job)
        other.grouping_key = dict(self.grouping_key)
        return other

    # -- async transport: aiohttp ------------------------------------------------------------

    async def push_async(
        self,
        session: aiohttp.ClientSession,
        registry: Collector,
        timeout: float | None = None,
    ) -> None:
        import aiohttp

        total = self._timeout(timeout)
        body = generate_latest(registry)
        headers = {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, **dict(self._headers)}
        try:
            async with session.request(
                self.method,
                self.group_url,
                data=body,
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
                timeout=aiohttp.ClientTimeout(total=total, connect=min(total, 3.0)),
                # A redirected PUT lands somewhere else, or nowhere: never follow one.
                allow_redirects=False,
            ) as resp:
                answer = await resp.read()
                status, reason, location = resp.status, resp.reason, resp.headers.get("Location")
        except Exception as exc:  # aiohttp's errors, timeouts, and whatever a bad answer raises
            raise PushFailed(self.scrubber.one_line(_describe(exc))) from None
        _check_answer(status, reason or "", location, answer, self.scrubber)


class PushFailed(Exception):
    """A push attempt failed; the message never contains credentials."""


def _describe(exc: BaseException) -> str:
    """``Type: text`` of an exception, even one whose ``__str__`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = "(its text cannot be shown)"
    return f"{type(exc).__name__}: {text}"


def _check_answer(
    status: int, reason: str, location: str | None, body: bytes, scrubber: Scrubber
) -> None:
    """Raise PushFailed unless the gateway answered 2xx: only then did the push land.

    Everything quoted from the answer is scrubbed of the target's credentials: a proxy may
    echo the Authorization header in its reason phrase or body, and a Location may carry
    credentials of its own (masked like any URL)."""
    if 200 <= status < 300:
        return
    said = scrubber.one_line(f"HTTP {status} {reason}".rstrip())
    if 300 <= status < 400:
        where = (
            f"a redirect to {scrubber.one_line(mask_url(location))}"
            if location
            else "a redirect without a Location"
        )
        raise PushFailed(
            f"{said}, {where}: a push is never redirected, so nothing landed; point the "
            "pushgateway URL at the gateway itself"
        )
    detail = scrubber.one_line(body.decode("utf-8", errors="replace"))
    raise PushFailed(f"{said}: {detail}" if detail else said)


def _request(
    url: str,
    method: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout: float | None,
    context: ssl.SSLContext | None,
    scrubber: Scrubber,
) -> None:
    """One HTTP request that ends within ``timeout`` seconds in all, name lookup included.

    A socket timeout alone bounds each read, not the request (a gateway trickling a byte a
    second holds it as long as it likes), and does not bound the name lookup. The request
    runs in a short-lived thread; at the deadline the caller stops waiting and shuts the
    socket down, which ends that thread too.
    """
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    outcome: list[BaseException | tuple[http.client.HTTPResponse, bytes]] = []

    def run() -> None:
        try:
            conn.request(method, target, body=body or None, headers=dict(headers))
            response = conn.getresponse()
            outcome.append((response, response.read()))
        except BaseException as exc:
            outcome.append(exc)

    worker = start_daemon(run, "instrument-push-request")
    worker.join(timeout)
    try:
        if not outcome:
            raise PushFailed(f"no complete answer within {timeout:g} s")
        result = outcome[0]
        if isinstance(result, (OSError, http.client.HTTPException)):
            raise PushFailed(scrubber.one_line(_describe(result))) from None
        if isinstance(result, BaseException):
            # Never echo it: a value error here may quote a header, credentials included.
            raise PushFailed(f"{type(result).__name__} while sending the request") from None
        response, answer = result
        _check_answer(
            response.status, response.reason, response.getheader("Location"), answer, scrubber
        )
    finally:
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        conn.close()


def _instance_label() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


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
    ) -> None:
        if mode is None:
            mode = "coalesce" if gateway is not None or textfile else "off"
        if mode not in PUSH_MODES:
            raise ValueError(f"push_mode must be one of {', '.join(PUSH_MODES)}; got {mode!r}")
        if not interval > 0:
            raise ValueError(
                f"push_interval must be a positive number of seconds, got {interval!r}"
            )
        if mode != "off" and gateway is None and not textfile:
            raise ValueError(
                f"push_mode={mode!r} needs a target: pass pushgateway=URL or textfile=PATH"
            )
        self.metrics = metrics
        self.gateway = gateway
        self.textfile = textfile
        self.mode = mode
        self.interval = float(interval)
        self._instance = instance
        self._delete_on_exit = delete_on_exit
        self._collect = collect
        self._owner_pid = os.getpid()
        self._multiprocess = _multiprocess_enabled()
        self._closed = False
        self._last_success = 0.0
        self._reset_process_state()
        _live.add(self)
        _hook_multiprocessing()
        if self._multiprocess and self.mode == "coalesce":
            # Workers record but never push; the owner pushes what they collected each interval.
            self._mark_dirty()

    def _reset_process_state(self) -> None:
        """State that does not survive a fork: threads, locks, sessions, the instance label."""
        self._pid = os.getpid()
        self._dirty = False
        self._cond = threading.Condition()
        # Snapshots are numbered under a short lock; an older one that lands after a newer
        # one (an async and a sync send overlapping) marks the state dirty, so the newer
        # state is pushed again.
        self._snapshot_lock = threading.Lock()
        # Sync senders (the flusher, push(), flush(), each mode) still go one at a time, so
        # flush() returning True means the latest state is what the gateway holds. Async
        # sends never take it: an event loop must not wait on a thread lock.
        self._send_lock = threading.Lock()
        self._taken = 0
        self._landed = 0
        # While dirty, the flusher keeps the delivery alive until it has pushed.
        self._flush_state = _FlushState(self._cond)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failures = 0
        self._outage = False
        self._next_attempt = 0.0
        # Sessions of a parent process belong to its loops: a forked child starts without.
        self._sessions: dict[int, _LoopSession] = {}
        if self.gateway is not None and self._instance:
            label = _instance_label() if self._instance is True else str(self._instance)
            self.gateway.grouping_key["instance"] = label

    def __repr__(self) -> str:
        return f"Delivery(mode={self.mode!r}, gateway={self.gateway!r}, textfile={self.textfile!r})"

    @property
    def _has_target(self) -> bool:
        return self.gateway is not None or bool(self.textfile)

    def _is_worker(self) -> bool:
        return self._multiprocess and os.getpid() != self._owner_pid

    # -- the hot path: called at the end of every instrumented job ---------------------------

    def after_call(self) -> None:
        mode = self.mode
        if mode == "coalesce":
            if not self._dirty:
                self._mark_dirty()
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
            self._reset_process_state()
            self._dirty = True
        with self._cond:
            self._flush_state.pending = self
            if self._thread is None:
                # The thread holds the delivery weakly once it is clean: an instrumentation
                # dropped without close() is pushed, then collected, and its flusher ends.
                # Set once started: a thread that could not start is tried again next time.
                self._thread = start_daemon(
                    _flusher, "instrument-flusher", weakref.ref(self), self._flush_state
                )
                weakref.finalize(self, _wake, self._cond)
            self._cond.notify()

    def _flush_slot(self) -> float | None:
        """Seconds until the flusher may push, or None when there is nothing to push.
        Called with the condition held."""
        if not (self._dirty or self._multiprocess):
            return None
        return self._next_attempt - time.monotonic()

    def _schedule(self, ok: bool) -> None:
        """After a flusher push: the next slot, an interval away or a backoff away."""
        with self._cond:
            if ok:
                self._next_attempt = time.monotonic() + self.interval
            else:
                backoff = min(_RETRY_CAP, _RETRY_BASE * 2 ** min(self._failures, 16))
                self._next_attempt = time.monotonic() + backoff * random.uniform(0.5, 1.0)

    # -- sending: one path for both transports ------------------------------------------------

    def deliver_now(self, timeout: float | None) -> bool:
        """Send the latest full state to every target within ``timeout`` seconds in all
        (default: the push timeout); True when it landed."""
        if self._is_worker():
            return False
        limit = self._default_timeout() if timeout is None else timeout
        deadline = time.monotonic() + limit
        if not self._send_lock.acquire(timeout=limit):
            self._dirty = True  # not delivered: the next push must carry it
            return False
        try:
            snapshot, attempt = self._start_attempt()
            if snapshot is None:
                return False
            try:
                if self.gateway is not None:
                    self.gateway.push(snapshot, deadline - time.monotonic())
            except BaseException as exc:
                self._end_attempt(snapshot, attempt, exc)
                if not isinstance(exc, Exception):
                    raise
                return False
            return self._end_attempt(snapshot, attempt, None)
        finally:
            self._send_lock.release()

    async def _deliver_async(self, target: PushTarget | None, timeout: float | None) -> bool:
        limit = self._default_timeout() if timeout is None else timeout
        entry = await self._session()
        snapshot, attempt = self._start_attempt()
        if snapshot is None:
            return False
        try:
            if target is not None:
                await target.push_async(entry.session, snapshot, limit)
        except BaseException as exc:  # a cancelled push did not land either
            self._end_attempt(snapshot, attempt, exc)
            if not isinstance(exc, Exception):
                raise
            return False
        return self._end_attempt(snapshot, attempt, None)

    def _default_timeout(self) -> float:
        return self.gateway.timeout if self.gateway is not None else _EXIT_FLUSH_TIMEOUT

    def _start_attempt(self) -> tuple[_Snapshot | None, _Attempt]:
        """Clear dirty, then take a numbered snapshot: a job ending after this marks dirty
        again. The attempt is counted and stamped as the last success before the snapshot,
        so the pushed state already says when it was pushed; a failure puts it back.

        A registry that cannot be collected (a collector raising) is a failed attempt,
        ended here: the snapshot is None, the state stays dirty for the next attempt."""
        _run_before_snapshot()
        error: BaseException | None = None
        with self._snapshot_lock:
            self._dirty = False
            self._taken += 1
            attempt = _Attempt(self._taken, self._last_success)
            self.metrics.pushes.inc()
            self._last_success = time.time()
            self.metrics.last_push_success.set(self._last_success)
            try:
                return _Snapshot(self._collect()), attempt
            except BaseException as exc:
                error = exc
        scrubber = _NO_SECRETS if self.gateway is None else self.gateway.scrubber
        failure = PushFailed(
            scrubber.one_line(f"collecting the metrics failed ({_describe(error)})")
        )
        self._end_attempt(None, attempt, failure)
        if not isinstance(error, Exception):
            raise error
        return None, attempt

    def _end_attempt(
        self, snapshot: _Snapshot | None, attempt: _Attempt, exc: BaseException | None
    ) -> bool:
        if exc is None and self.textfile and snapshot is not None:
            try:
                write_to_textfile(self.textfile, snapshot)
            except Exception as error:
                exc = error
        with self._snapshot_lock:
            if exc is None:
                if attempt.number > self._landed:
                    self._landed = attempt.number
                else:  # older than what already landed, and landed after it: push again
                    self._dirty = True
            else:
                self._dirty = True
                self.metrics.push_failures.inc()
                if attempt.number == self._taken:  # no later attempt stamped since
                    self._last_success = attempt.previous_success
                    self.metrics.last_push_success.set(attempt.previous_success)
        if exc is None:
            self._record_success()
            return True
        self._record_failure(exc)
        return False

    def _record_failure(self, exc: BaseException) -> None:
        self._failures += 1
        # A PushFailed says what failed; anything else (a textfile's OSError) by its type too.
        reason = str(exc) if isinstance(exc, PushFailed) else _describe(exc)
        if not self._outage:
            self._outage = True
            logger.warning(
                "instrument: push to %s failed (%s); retrying with backoff, counts are kept "
                "and the next successful push carries them",
                self._target_text(),
                reason,
            )
        else:
            logger.debug("instrument: push to %s failed again (%s)", self._target_text(), reason)

    def _record_success(self) -> None:
        if self._outage:
            logger.info(
                "instrument: push to %s recovered after %d failed attempts",
                self._target_text(),
                self._failures,
            )
        self._outage = False
        self._failures = 0

    def _target_text(self) -> str:
        parts = []
        if self.gateway is not None:
            parts.append(mask_url(self.gateway.group_url))
        if self.textfile:
            parts.append(self.textfile)
        return " and ".join(parts)

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
        if given; never raises."""
        if self._is_worker() or not self._has_target:
            return False
        target = self.gateway
        if job is not None and target is not None and job != target.job:
            target = target.for_job(job)
        try:
            return await self._deliver_async(target, timeout)
        except Exception:
            logger.exception("instrument: unexpected error while pushing")
            return False

    async def _session(self) -> _LoopSession:
        loop = asyncio.get_running_loop()
        entry = self._sessions.get(id(loop))
        if entry is None or entry.session.closed:
            entry = await _LoopSession.open(loop, self._sessions)
        return entry

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the latest state is delivered (or ``timeout`` passes); True if it was."""
        if self._is_worker() or not self._has_target or self.mode == "off":
            return True
        ok = self.deliver_now(timeout)
        if ok:
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
        _run_before_snapshot()  # deferred recording may still mark the state dirty
        # In multiprocess mode the workers' records never make the owner dirty: only a
        # push collecting across processes leaves their final totals on the gateway.
        return self.mode != "off" and not self._is_worker() and (self._dirty or self._multiprocess)

    def close(self, timeout: float = _EXIT_FLUSH_TIMEOUT) -> None:
        """Stop the flusher, deliver the final state, optionally delete the group: all within
        ``timeout`` seconds."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        thread = self._stop_flusher()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0))
        if self._final_pending():
            self.deliver_now(max(deadline - time.monotonic(), 0.001))
        if self._delete_on_exit and not self._is_worker():
            self.delete(max(deadline - time.monotonic(), 0.001))
        self._closed = True
        for entry in list(self._sessions.values()):
            entry.close_from_outside()

    async def aclose(self, timeout: float = _EXIT_FLUSH_TIMEOUT) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        thread = self._stop_flusher()
        if thread is not None:
            await asyncio.to_thread(thread.join, max(deadline - time.monotonic(), 0))
        if self._final_pending():
            await self.push_async(timeout=max(deadline - time.monotonic(), 0.001))
        if self._delete_on_exit and not self._is_worker():
            await asyncio.to_thread(self.delete, max(deadline - time.monotonic(), 0.001))
        self._closed = True
        current = self._sessions.get(id(asyncio.get_running_loop()))
        if current is not None:
            await current.close()
        for entry in list(self._sessions.values()):
            entry.close_from_outside()


#: Called before every snapshot that is pushed: recording deferred to a safe point (an
#: abandoned stream, noticed by the garbage collector) happens there.
_before_snapshot: list[Callable[[], None]] = []


def register_before_snapshot(hook: Callable[[], None]) -> None:
    """Run ``hook`` before each snapshot is taken for a push or a scrape (never raises)."""
    if hook not in _before_snapshot:
        _before_snapshot.append(hook)


def _run_before_snapshot() -> None:
    for hook in _before_snapshot:
        try:
            hook()
        except Exception:
            logger.exception("instrument: a before-push hook failed")


class BeforeCollect(Collector):
    """Registered on an instrumentation's registry: a scrape runs the before-snapshot
    hooks too, so pull mode sees deferred recording. It exposes no metrics."""

    def collect(self) -> Iterator[Metric]:
        _run_before_snapshot()
        return iter(())

    def describe(self) -> list[Metric]:
        return []


class _FlushState:
    """What the flusher thread shares with its delivery: the condition it waits on, and
    the delivery itself while it has something to push (a strong reference, so a dirty
    instrumentation dropped without close() is still pushed)."""

    __slots__ = ("cond", "pending")

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self.pending: Delivery | None = None


class _Attempt(NamedTuple):
    number: int
    previous_success: float


class _Snapshot(Collector):
    """The metric families of one moment, a collector that pushes and files can read."""

    __slots__ = ("families",)

    def __init__(self, registry: CollectorRegistry) -> None:
        self.families = list(registry.collect())

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _flusher(ref: weakref.ref[Delivery], state: _FlushState) -> None:
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


def _wake(cond: threading.Condition) -> None:
    with cond:
        cond.notify_all()


class _LoopSession:
    """The one aiohttp session of one event loop, closed inside that loop when it shuts down.

    ``asyncio.run()`` closes every open async generator before closing its loop
    (``loop.shutdown_asyncgens()``); a parked generator per session turns that into a
    proper ``await session.close()``, so no "Unclosed client session" is left behind.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        session: aiohttp.ClientSession,
        registry: dict[int, _LoopSession],
    ) -> None:
        self.loop = loop
        self.session = session
        self._registry = registry
        self._keeper: Any = None

    @classmethod
    async def open(
        cls, loop: asyncio.AbstractEventLoop, registry: dict[int, _LoopSession]
    ) -> _LoopSession:
        import aiohttp

        entry = cls(loop, aiohttp.ClientSession(), registry)
        registry[id(loop)] = entry
        entry._keeper = entry._keep()
        await entry._keeper.__anext__()  # parks it; the loop now tracks it
        return entry

    async def _keep(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.close()

    def _unregister(self) -> None:
        if self._registry.get(id(self.loop)) is self:
            del self._registry[id(self.loop)]

    async def close(self) -> None:
        self._unregister()
        if not self.session.closed:
            await self.session.close()

    def close_from_outside(self) -> None:
        """Close from sync code, whatever state the session's loop is in."""
        self._unregister()
        if self.session.closed:
            return
        loop = self.loop
        current = _running_loop()
        try:
            if loop.is_closed():
                self.session.detach()  # its sockets went with the loop
            elif loop.is_running():
                if current is loop:
                    loop.create_task(self.session.close())
                else:
                    asyncio.run_coroutine_threadsafe(self.session.close(), loop).result(2.0)
            elif current is None:
                loop.run_until_complete(self.session.close())
            else:
                # Another loop runs in this thread, so the session's loop cannot run here:
                # run it to close the session in a short-lived thread of its own.
                closer = start_daemon(
                    lambda: loop.run_until_complete(self.session.close()),
                    "instrument-session-close",
                )
                closer.join(2.0)
        except Exception:
            logger.debug("instrument: closing an aiohttp session failed", exc_info=True)
            self.session.detach()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _multiprocess_enabled() -> bool:
    return bool(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112
    )


_live: weakref.WeakSet[Delivery] = weakref.WeakSet()
_exit_flush_running = False


def exit_flush_running() -> bool:
    """True while the final flush at exit runs: a SIGTERM handler lets it finish."""
    return _exit_flush_running


def _close_all_at_exit() -> None:
    global _exit_flush_running
    _exit_flush_running = True
    try:
        # One bound for the whole exit, however many instrumentations there are.
        deadline = time.monotonic() + _EXIT_FLUSH_TIMEOUT
        for delivery in list(_live):
            try:
                delivery.close(timeout=max(deadline - time.monotonic(), 0.001))
            except Exception:
                logger.exception("instrument: final flush at exit failed")
    finally:
        _exit_flush_running = False


# -- multiprocessing children: they end with os._exit, so atexit never runs there ---------------

_after_fork_hooked = False
_child_finalizer: Any = None


def _hook_multiprocessing(_: object = None) -> None:
    """Deliver the final state when a multiprocessing child ends normally.

    multiprocessing ends a child (fork and forkserver start methods) with ``os._exit``
    after running its own finalizers (``multiprocessing.util.Finalize``), never the atexit
    handlers; and it clears the finalizers a child inherited before running the after-fork
    hooks (``register_after_fork``). So the final flush is registered as a finalizer from
    such a hook in each child, or when a delivery is created in one. Nothing is imported:
    without multiprocessing loaded, no multiprocessing child can start.
    """
    global _after_fork_hooked, _child_finalizer
    util = sys.modules.get("multiprocessing.util")
    multiprocessing = sys.modules.get("multiprocessing")
    if util is None or multiprocessing is None:
        return
    if not _after_fork_hooked:  # inherited by children, with multiprocessing's registry
        _after_fork_hooked = True
        util.register_after_fork(_hook_multiprocessing, _hook_multiprocessing)
    if multiprocessing.parent_process() is None:
        return  # not a multiprocessing child: atexit delivers
    if _child_finalizer is not None and _child_finalizer.still_active():
        return
    # Below zero: run after the child has joined its own children, so an owner in
    # multiprocess mode collects their final totals too.
    _child_finalizer = util.Finalize(None, _close_all_at_exit, exitpriority=-10)


def _after_fork_in_child() -> None:
    for delivery in list(_live):
        delivery._reset_process_state()
    # Runs inside os.fork(): multiprocessing's own after-fork hooks run later, in the child.
    _hook_multiprocessing()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
