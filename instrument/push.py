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
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote_plus, unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    delete_from_gateway,
    push_to_gateway,
    pushadd_to_gateway,
)

from .metrics import Metrics

if TYPE_CHECKING:
    import aiohttp

__all__ = ["PUSH_MODES", "Delivery", "PushTarget", "grouping_path", "mask_url"]

logger = logging.getLogger("instrument")

PushMode = Literal["each", "coalesce", "off"]
PUSH_MODES: tuple[str, ...] = ("each", "coalesce", "off")
_RETRY_BASE = 0.5
_RETRY_CAP = 30.0
_EXIT_FLUSH_TIMEOUT = 5.0


def mask_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, safe to log. Never raises.

    Everything up to the last ``@`` is masked, so a password holding a ``/`` (which URL
    parsers take for the start of the path) is masked too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    host_and_path = rest.rpartition("@")[2]
    return f"{scheme}{sep}***@{host_and_path}"


def _escape(label: str, value: str) -> str:
    # The Pushgateway's rule: an empty value, or one with "/" (or a space), goes base64.
    if value == "":
        return f"{label}@base64/="
    if "/" in value or " " in value:
        encoded = base64.urlsafe_b64encode(value.encode()).decode()
        return f"{label}@base64/{encoded}"
    return f"{label}/{quote_plus(value)}"


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
        if not isinstance(url, str):
            raise TypeError(f"pushgateway must be a URL string, got {type(url).__name__}")
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if "@" in parts.path or "@" in parts.query:
            raise ValueError(
                f"pushgateway URL {mask_url(url)!r} has an '@' after the host: a password "
                "holding '/', '?' or '#' must be percent-encoded (%2F, %3F, %23), or pass "
                "basic_auth=(user, password)"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"pushgateway URL {mask_url(url)!r} is not valid; use http://host:9091 "
                "or https://host"
            )
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ValueError(f"pushgateway URL {mask_url(url)!r} has an invalid port") from None
        if parts.username is not None and basic_auth is None:
            basic_auth = (unquote(parts.username), unquote(parts.password or ""))
        if basic_auth is not None and bearer_token is not None:
            raise ValueError("give either basic_auth or bearer_token for the Pushgateway, not both")
        if method.lower() not in ("put", "post"):
            raise ValueError(f"push_method must be 'put' or 'post', got {method!r}")
        if not isinstance(job, str) or not job:
            raise ValueError("job must be a non-empty string")
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in (parts.hostname or "") and not netloc.startswith("["):
            netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.job = job
        self.grouping_key = dict(grouping_key)
        self.method = method.upper()
        self.timeout = float(timeout)
        self._headers: list[tuple[str, str]] = []
        if basic_auth is not None:
            user, password = basic_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers.append(("Authorization", f"Basic {token}"))
        elif bearer_token is not None:
            self._headers.append(("Authorization", f"Bearer {bearer_token}"))
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=ca_file)
            if not tls_verify:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE

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
            request = urllib.request.Request(url, data=data or None, method=method)
            for name, value in [*headers, *self._headers]:
                request.add_header(name, value)
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                raise PushFailed(f"HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise PushFailed(f"{type(reason).__name__}: {reason}") from None

        return send

    def push(self, registry: CollectorRegistry) -> None:
        """Push the registry's full state now. Raises PushFailed (credentials masked)."""
        gateway_function = push_to_gateway if self.method == "PUT" else pushadd_to_gateway
        gateway_function(
            self.url,
            job=self.job,
            registry=registry,
            grouping_key=self.grouping_key,
            timeout=self.timeout,
            handler=self._handler,
        )

    def delete(self) -> None:
        delete_from_gateway(
            self.url,
            job=self.job,
            grouping_key=self.grouping_key,
            timeout=self.timeout,
            handler=self._handler,
        )

    # -- async transport: aiohttp ------------------------------------------------------------

    async def push_async(self, session: aiohttp.ClientSession, registry: CollectorRegistry) -> None:
        import aiohttp

        body = generate_latest(registry)
        headers = {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, **dict(self._headers)}
        try:
            async with session.request(
                self.method,
                self.group_url,
                data=body,
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
                timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(self.timeout, 3.0)),
            ) as resp:
                await resp.read()
                if resp.status >= 400:
                    raise PushFailed(f"HTTP {resp.status} {resp.reason}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}".replace(self.url, mask_url(self.url))
            raise PushFailed(reason) from None


class PushFailed(Exception):
    """A push attempt failed; the message never contains credentials."""


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
        if self._multiprocess and self.mode == "coalesce":
            # Workers record but never push; the owner pushes what they collected each interval.
            self._mark_dirty()

    def _reset_process_state(self) -> None:
        """State that does not survive a fork: threads, locks, sessions, the instance label."""
        self._pid = os.getpid()
        self._dirty = False
        self._cond = threading.Condition()
        self._push_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._urgent = False
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
    def pushes(self) -> bool:
        """Whether this process delivers at all (workers in multiprocess mode never do)."""
        return self.mode != "off" and not self._closed and not self._is_worker()

    def _is_worker(self) -> bool:
        return self._multiprocess and os.getpid() != self._owner_pid

    # -- the hot path: called at the end of every instrumented job ---------------------------

    def after_call(self) -> None:
        mode = self.mode
        if mode == "coalesce":
            if not self._dirty:
                self._mark_dirty()
        elif mode == "each" and not self._is_worker():
            self.push()

    def after_call_async(self) -> Any:
        """None, or an awaitable push (``each`` mode in async code)."""
        mode = self.mode
        if mode == "coalesce":
            if not self._dirty:
                self._mark_dirty()
            return None
        if mode == "each" and not self._is_worker():
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
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._flusher, name="instrument-flusher", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    # -- the flusher --------------------------------------------------------------------------

    def _flusher(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not (self._dirty or self._stopping or self._multiprocess):
                    cond.wait()
                # Rate limit (and retry backoff): wait for the next slot unless flushed.
                while not (self._stopping or self._urgent):
                    delay = self._next_attempt - time.monotonic()
                    if delay <= 0:
                        break
                    cond.wait(delay)
                if self._stopping:
                    return
                self._urgent = False
            ok = self.deliver_now(timeout=None)
            with cond:
                if ok:
                    self._next_attempt = time.monotonic() + self.interval
                else:
                    backoff = min(_RETRY_CAP, _RETRY_BASE * 2 ** min(self._failures, 16))
                    self._next_attempt = time.monotonic() + backoff * random.uniform(0.5, 1.0)

    def deliver_now(self, timeout: float | None) -> bool:
        """Send the latest full state to every target, serialized with other senders."""
        if self._is_worker():
            return False
        acquired = self._push_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0))
        if not acquired:
            return False
        try:
            # Clear before the snapshot: a job ending after this line marks dirty again.
            self._dirty = False
            ok = self._send()
            if not ok:
                self._dirty = True
            return ok
        finally:
            self._push_lock.release()

    def _send(self) -> bool:
        registry = self._collect()
        previous = self._begin_attempt()
        try:
            if self.gateway is not None:
                self.gateway.push(registry)
            if self.textfile:
                write_to_textfile(self.textfile, registry)
        except Exception as exc:
            self._record_failure(exc, previous)
            return False
        self._record_success()
        return True

    def _begin_attempt(self) -> float:
        """Count the attempt and stamp it as the last success before the snapshot, so the
        pushed state already says when it was pushed; a failure puts the old stamp back."""
        self.metrics.pushes.inc()
        previous = self._last_success
        self._last_success = time.time()
        self.metrics.last_push_success.set(self._last_success)
        return previous

    def _record_failure(self, exc: BaseException, previous_success: float) -> None:
        self.metrics.push_failures.inc()
        self._last_success = previous_success
        self.metrics.last_push_success.set(previous_success)
        self._failures += 1
        if not self._outage:
            self._outage = True
            logger.warning(
                "instrument: push to %s failed (%s); retrying with backoff, counts are kept "
                "and the next successful push carries them",
                self._target_text(),
                exc,
            )
        else:
            logger.debug("instrument: push to %s failed again (%s)", self._target_text(), exc)

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
        if self.gateway is None and not self.textfile:
            return False
        try:
            return self.deliver_now(timeout)
        except Exception:
            logger.exception("instrument: unexpected error while pushing")
            return False

    async def push_async(self) -> bool:
        """Push the full state now over aiohttp (one session per event loop); never raises."""
        if self._is_worker() or (self.gateway is None and not self.textfile):
            return False
        try:
            entry = await self._session()
            session = entry.session
            async with entry.lock:
                registry = self._collect()
                self._dirty = False
                previous = self._begin_attempt()
                try:
                    if self.gateway is not None:
                        await self.gateway.push_async(session, registry)
                    if self.textfile:
                        write_to_textfile(self.textfile, registry)
                except Exception as exc:
                    self._dirty = True
                    self._record_failure(exc, previous)
                    return False
                self._record_success()
                return True
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
        if self._is_worker() or (self.gateway is None and not self.textfile):
            return True
        if self.mode == "off":
            return True
        ok = self.deliver_now(timeout)
        if ok:
            with self._cond:
                self._next_attempt = time.monotonic() + self.interval
        return ok

    async def aflush(self) -> bool:
        if self._is_worker() or self.mode == "off":
            return True
        return await self.push_async()

    def delete(self) -> bool:
        """Delete this group from the Pushgateway; True on success, never raises."""
        if self.gateway is None:
            return False
        try:
            self.gateway.delete()
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

    def close(self, timeout: float = _EXIT_FLUSH_TIMEOUT) -> None:
        """Stop the flusher, deliver the final state, optionally delete the group."""
        if self._closed:
            return
        thread = self._stop_flusher()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self.mode != "off" and not self._is_worker() and self._dirty:
            self.deliver_now(timeout)
        if self._delete_on_exit and not self._is_worker():
            self.delete()
        self._closed = True
        for entry in list(self._sessions.values()):
            entry.close_from_outside()

    async def aclose(self) -> None:
        if self._closed:
            return
        thread = self._stop_flusher()
        if thread is not None:
            await asyncio.to_thread(thread.join, _EXIT_FLUSH_TIMEOUT)
        if self.mode != "off" and not self._is_worker() and self._dirty:
            await self.push_async()
        if self._delete_on_exit and not self._is_worker():
            await asyncio.to_thread(self.delete)
        self._closed = True
        current = self._sessions.get(id(asyncio.get_running_loop()))
        if current is not None:
            await current.close()
        for entry in list(self._sessions.values()):
            entry.close_from_outside()


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
        self.lock = asyncio.Lock()
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

    async def close(self) -> None:
        if self._registry.get(id(self.loop)) is self:
            del self._registry[id(self.loop)]
        if not self.session.closed:
            await self.session.close()

    def close_from_outside(self) -> None:
        """Close from sync code, whatever state the session's loop is in."""
        if self._registry.get(id(self.loop)) is self:
            del self._registry[id(self.loop)]
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
                closer = threading.Thread(
                    target=lambda: loop.run_until_complete(self.session.close()),
                    name="instrument-session-close",
                    daemon=True,
                )
                closer.start()
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


def _close_all_at_exit() -> None:
    for delivery in list(_live):
        try:
            delivery.close(timeout=_EXIT_FLUSH_TIMEOUT)
        except Exception:
            logger.exception("instrument: final flush at exit failed")


def _after_fork_in_child() -> None:
    for delivery in list(_live):
        delivery._reset_process_state()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
