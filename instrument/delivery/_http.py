"""One HTTP request to a gateway, and what its answer means.

The sync transport lives here (http.client, bounded in all by a deadline); the rules both
transports share do too: only a 2xx answer means the push landed, a redirect is never
followed, and every text quoted from the network is scrubbed of the target's credentials.
A failed request raises :class:`PushFailed`.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from urllib.parse import urlsplit

from .._scrub import Scrubber
from .._threads import start_daemon
from .._urls import mask_url

__all__ = ["ANSWER_LIMIT", "PushFailed", "check_answer", "describe", "request"]

#: Bytes of an answer's body ever read: enough for any error text worth quoting, and a
#: gateway (or anything at its address) sending gigabytes, or no end, cannot fill memory.
ANSWER_LIMIT = 64 * 1024


class PushFailed(Exception):
    """A push (or a delete) did not land; the message says why and never holds credentials.

    ``status`` is the HTTP status of the answer (None when none came), ``retry_after`` its
    ``Retry-After`` header as sent: what a target that retries decides by."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def describe(exc: BaseException) -> str:
    """``Type: text`` of an exception, even one whose ``__str__`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = "(its text cannot be shown)"
    return f"{type(exc).__name__}: {text}"


def check_answer(
    status: int,
    reason: str,
    location: str | None,
    body: bytes,
    scrubber: Scrubber,
    retry_after: str | None = None,
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
            "URL at the server itself",
            status=status,
        )
    detail = scrubber.one_line(body.decode("utf-8", errors="replace"))
    raise PushFailed(
        f"{said}: {detail}" if detail else said, status=status, retry_after=retry_after
    )


def request(
    url: str,
    method: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout: float | None,
    context: ssl.SSLContext | None,
    scrubber: Scrubber,
    limit: int = ANSWER_LIMIT,
) -> bytes:
    """One HTTP request that ends within ``timeout`` seconds in all, name lookup included;
    the first ``limit`` bytes of a 2xx answer's body.

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
            outcome.append((response, response.read(limit)))
        except BaseException as exc:
            outcome.append(exc)

    worker = start_daemon(run, "instrument-push-request")
    worker.join(timeout)
    try:
        if not outcome:
            raise PushFailed(f"no complete answer within {timeout:g} s")
        result = outcome[0]
        if isinstance(result, (OSError, http.client.HTTPException)):
            raise PushFailed(scrubber.one_line(describe(result))) from None
        if isinstance(result, BaseException):
            # Never echo it: a value error here may quote a header, credentials included.
            raise PushFailed(f"{type(result).__name__} while sending the request") from None
        response, answer = result
        check_answer(
            response.status,
            response.reason,
            response.getheader("Location"),
            answer,
            scrubber,
            response.getheader("Retry-After"),
        )
        return answer
    finally:
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        conn.close()
