"""One HTTP request to a gateway, and what its answer means.

The sync transport lives here (http.client, bounded in all by a deadline); the rules both
transports share do too: only a 2xx answer means the push landed, a redirect is never
followed, and every text quoted from the network is scrubbed of the target's credentials.
A failed request raises :class:`PushFailed`.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .._scrub import Scrubber
from .._threads import start_daemon
from .._urls import mask_url

__all__ = ["ANSWER_LIMIT", "PushFailed", "check_answer", "describe", "request"]

#: Bytes of an answer's body ever read: enough for any error text worth quoting, and a
#: gateway (or anything at its address) sending gigabytes, or no end, cannot fill memory.
ANSWER_LIMIT = 64 * 1024

_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


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


class _Deadline:
    """The moment a request must have ended by (None: never); each step asks what is left."""

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        return left


class _BoundedReader(io.RawIOBase):
    """The answer's bytes as http.client reads them: each read gets what is left of the
    deadline as its timeout, so a gateway trickling a byte at a time cannot outlast it."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer)


class _BoundedSocket:
    """What http.client uses as its socket: every send and read ends by the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        while view:
            self._sock.settimeout(self._deadline.left())
            view = view[self._sock.send(view) :]

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_BoundedReader(self._sock, self._deadline))

    def close(self) -> None:
        # http.client closes a connection that will close as soon as the answer's head is
        # read, relying on its socket's reference count to keep the body readable; the
        # request closes the socket itself once it read what it needs.
        pass


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection whose every step, name lookup and TLS handshake included, ends
    by one deadline, run in the calling thread."""

    def __init__(
        self, host: str, port: int, deadline: _Deadline, context: ssl.SSLContext | None
    ) -> None:
        super().__init__(host, port)
        self._deadline = deadline
        self._tls = context
        self.sockets: list[socket.socket] = []  # the request closes them when it ends

    def connect(self) -> None:
        deadline = self._deadline
        error: OSError = OSError(f"{self.host} has no address")
        for family, kind, proto, _, address in _addresses(self.host, self.port, deadline):
            sock = socket.socket(family, kind, proto)
            self.sockets.append(sock)
            try:
                sock.settimeout(deadline.left())
                sock.connect(address)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls is not None:
                    sock.settimeout(deadline.left())
                    sock = self._tls.wrap_socket(sock, server_hostname=self.host)
                    self.sockets.append(sock)
            except TimeoutError:  # the deadline passed: no time for another address
                raise
            except OSError as exc:
                error = exc
                continue
            self.sock = _BoundedSocket(sock, deadline)
            return
        raise error


def _addresses(host: str, port: int, deadline: _Deadline) -> Sequence[_AddrInfo]:
    """The addresses to try for ``host``. A literal address needs no lookup; a name's
    lookup cannot be given a timeout, so it alone runs in a short-lived thread that the
    caller stops waiting for at the deadline."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    found: list[Sequence[_AddrInfo] | Exception] = []

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except Exception as exc:  # a name IDNA cannot encode raises UnicodeError
            found.append(exc)

    start_daemon(look_up, "instrument-name-lookup").join(deadline.left())
    if not found:
        raise TimeoutError(f"looking up {host} took too long")
    if isinstance(found[0], Exception):
        raise found[0]
    return found[0]


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
    second holds it as long as it likes): each step gets what is left of one deadline as
    its timeout instead. The request runs in the calling thread, the flusher's usually: a
    helper thread per request would add a thread start and a join to every push, each a
    wait for the GIL, which a main thread that drops and retakes it more often than the
    switch interval (frequent short I/O) hardly ever lets a waiting thread win.
    """
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    https = parts.scheme == "https"
    if https and context is None:
        context = ssl.create_default_context()
    port = parts.port or (443 if https else 80)
    conn = _Connection(parts.hostname or "", port, _Deadline(timeout), context if https else None)
    try:
        conn.request(method, target, body=body or None, headers=dict(headers))
        response = conn.getresponse()
        answer = response.read(limit)
    except TimeoutError as exc:
        if timeout is None:  # the system's own connect timeout, not ours
            raise PushFailed(scrubber.one_line(describe(exc))) from None
        raise PushFailed(f"no complete answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise PushFailed(scrubber.one_line(describe(exc))) from None
    except Exception as exc:
        # Never echo it: a value error here may quote a header, credentials included.
        raise PushFailed(f"{type(exc).__name__} while sending the request") from None
    finally:
        conn.close()
        for sock in conn.sockets:
            sock.close()
    check_answer(
        response.status,
        response.reason,
        response.getheader("Location"),
        answer,
        scrubber,
        response.getheader("Retry-After"),
    )
    return answer
