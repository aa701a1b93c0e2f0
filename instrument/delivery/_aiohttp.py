"""The async transport: one aiohttp request to a gateway, on one session per event loop.

aiohttp is imported only when an async push first runs, so ``import instrument`` never
loads it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .._scrub import Scrubber
from .._threads import start_daemon
from ._http import ANSWER_LIMIT, PushFailed, check_answer, describe

if TYPE_CHECKING:
    import aiohttp

__all__ = ["LoopSession", "LoopSessions", "arequest", "read_capped"]

logger = logging.getLogger("instrument")


async def arequest(
    session: aiohttp.ClientSession,
    url: str,
    method: str,
    headers: dict[str, str],
    body: bytes,
    timeout: float,
    context: ssl.SSLContext | None,
    scrubber: Scrubber,
) -> None:
    """The async twin of :func:`._http.request`: one request within ``timeout`` seconds in
    all, never redirected; PushFailed unless the answer is 2xx."""
    import aiohttp

    try:
        async with session.request(
            method,
            url,
            data=body,
            headers=headers,
            ssl=context if context is not None else True,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 3.0)),
            # A redirected PUT lands somewhere else, or nowhere: never follow one.
            allow_redirects=False,
        ) as resp:
            answer = await read_capped(resp, ANSWER_LIMIT)
            status, reason, location = resp.status, resp.reason, resp.headers.get("Location")
            retry_after = resp.headers.get("Retry-After")
    except Exception as exc:  # aiohttp's errors, timeouts, and whatever a bad answer raises
        raise PushFailed(scrubber.one_line(describe(exc))) from None
    check_answer(status, reason or "", location, answer, scrubber, retry_after)


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of ``response``'s body: ``resp.read()`` would hold all of it
    (gigabytes, or no end) in memory. The rest is left unread; closing the response then
    drops its connection."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


class LoopSessions(dict[int, "LoopSession"]):
    """A delivery's aiohttp sessions, by ``id()`` of their event loop: one per loop.

    A session belongs to the loop it was made in (reusing it in another fails), so each
    loop gets its own, opened on its first push and closed with that loop.
    """

    async def session(self) -> aiohttp.ClientSession:
        """The running loop's session, opened on first use."""
        loop = asyncio.get_running_loop()
        entry = self.get(id(loop))
        if entry is None or entry.session.closed:
            entry = await LoopSession.open(loop, self)
        return entry.session

    def close_all(self) -> None:
        """Close every session, from sync code, whatever state its loop is in."""
        for entry in list(self.values()):
            entry.close_from_outside()

    async def aclose_all(self) -> None:
        """Close the running loop's session (awaited), then every other one."""
        current = self.get(id(asyncio.get_running_loop()))
        if current is not None:
            await current.close()
        self.close_all()


class LoopSession:
    """The one aiohttp session of one event loop, closed inside that loop when it shuts down.

    ``asyncio.run()`` closes every open async generator before closing its loop
    (``loop.shutdown_asyncgens()``); a parked generator per session turns that into a
    proper ``await session.close()``, so no "Unclosed client session" is left behind.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession, owner: LoopSessions
    ) -> None:
        self.loop = loop
        self.session = session
        self._owner = owner
        self._keeper: Any = None

    @classmethod
    async def open(cls, loop: asyncio.AbstractEventLoop, owner: LoopSessions) -> LoopSession:
        import aiohttp

        entry = cls(loop, aiohttp.ClientSession(), owner)
        owner[id(loop)] = entry
        entry._keeper = entry._keep()
        await entry._keeper.__anext__()  # parks it; the loop now tracks it
        return entry

    async def _keep(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.close()

    def _unregister(self) -> None:
        if self._owner.get(id(self.loop)) is self:
            del self._owner[id(self.loop)]

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
        try:
            if loop.is_closed():
                self.session.detach()  # its sockets went with the loop
            elif not loop.is_running():
                # Run the loop just long enough to close the session, in a short-lived
                # thread: this one may be running a loop of its own, which forbids it here.
                start_daemon(self._close_in_idle_loop, "instrument-session-close").join(2.0)
            elif _running_loop() is loop:
                loop.create_task(self.session.close())  # cannot wait here: it runs next
            else:
                asyncio.run_coroutine_threadsafe(self.session.close(), loop).result(2.0)
        except Exception:
            self._give_up()

    def _close_in_idle_loop(self) -> None:
        try:
            self.loop.run_until_complete(self.session.close())
        except Exception:
            self._give_up()

    def _give_up(self) -> None:
        logger.debug("instrument: closing an aiohttp session failed", exc_info=True)
        self.session.detach()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
