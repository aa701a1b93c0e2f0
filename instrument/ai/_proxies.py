"""What the caller holds instead of a stream: the same object in a transparent wrapt proxy,
whose every step goes through the call's :class:`~instrument.ai._streams.Stream`.

A stream iterated both ways (LiteLLM's) is watched both ways; a stream manager (an SDK's
``messages.stream(...)``) from the caller's ``with`` to the end of the stream it hands out;
a raw HTTP response (``with_raw_response``) through its ``parse()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import wrapt

from .._engine import report_failure

if TYPE_CHECKING:
    from ._streams import Stream

# What a result is, as flags: iterated with for (SYNC), with async for (ASYNC), or both;
# MANAGER: a with-block that hands out the stream (its protocols, SYNC and/or ASYNC).
SYNC, ASYNC, MANAGER = 1, 2, 4


def iterator_kind(value: Any) -> int:
    cls = type(value)
    return (SYNC if hasattr(cls, "__next__") else 0) | (ASYNC if hasattr(cls, "__anext__") else 0)


def stream_kind(result: Any, mode: str | bool) -> int:
    """How ``result`` is watched under the tracker's ``stream`` option (``mode``), as
    ``SYNC`` / ``ASYNC`` / ``MANAGER`` flags; 0: read as a response.

    "auto" watches iterators and async iterators, in every protocol the object has
    (LiteLLM's streams are both), and stream managers: with-blocks that are neither
    iterable nor closable, which exist only to be entered and hand out the stream.
    True also watches iterables.
    """
    if mode is False or result is None:
        return 0
    cls = type(result)
    steps = iterator_kind(result)
    if steps or (mode is True and not isinstance(result, str | bytes)):
        iterable = (SYNC if steps & SYNC or hasattr(cls, "__iter__") else 0) | (
            ASYNC if steps & ASYNC or hasattr(cls, "__aiter__") else 0
        )
        if iterable:
            return iterable
    if isinstance(result, str | bytes) or hasattr(cls, "__iter__") or hasattr(cls, "__aiter__"):
        return 0
    if hasattr(cls, "close") or hasattr(cls, "aclose"):
        return 0
    manager = (SYNC if hasattr(cls, "__enter__") and hasattr(cls, "__exit__") else 0) | (
        ASYNC if hasattr(cls, "__aenter__") and hasattr(cls, "__aexit__") else 0
    )
    return MANAGER | manager if manager else 0


def not_iterable(*args: Any) -> Any:
    """The step of a protocol the stream does not have."""
    raise TypeError("this object is not iterable that way")


if TYPE_CHECKING:
    _ObjectProxy = wrapt.ObjectProxy[Any]
else:  # wrapt 1.x proxies are not subscriptable
    _ObjectProxy = wrapt.ObjectProxy


def _is_generator(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


class _StreamProxy(_ObjectProxy):
    """What the caller gets instead of a stream: the same object, chunks read on the way
    by its :class:`Stream`, which ends the call exactly once."""

    def __init__(self, wrapped: Any, stream: Stream) -> None:
        super().__init__(wrapped)
        self._self_stream = stream

    def __del__(self) -> None:
        try:
            stream = self._self_stream
        except Exception:  # never initialised
            return
        stream.abandon()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_self_"):  # wrapt's own: not set yet
            raise AttributeError(name)
        wrapped = self.__wrapped__
        value = getattr(wrapped, name)
        if name.startswith("_") or value is wrapped or _is_generator(wrapped):
            return value  # a generator's own (gi_yieldfrom) are introspection, not content
        # An iterator the stream hands out over its own events (Anthropic's text_stream)
        # reads the same stream another way: its items are watched for the first token,
        # and its end is the stream's end.
        kind = iterator_kind(value)
        if kind and self._self_stream.open:
            return _SubStream(value, self, kind)
        return value


class _SubStream(_ObjectProxy):
    """An iterator a stream hands out over its own events (``stream.text_stream``).

    It keeps the stream's proxy alive: ``"".join(call.record_response(s).text_stream)``
    drops the proxy at once, and its collection must not abandon a stream still read."""

    def __init__(self, wrapped: Any, proxy: _StreamProxy, kind: int) -> None:
        super().__init__(wrapped)
        self._self_proxy = proxy
        self._self_stream = proxy._self_stream
        self._self_step = wrapped.__next__ if kind & SYNC else not_iterable
        self._self_astep = wrapped.__anext__ if kind & ASYNC else not_iterable

    def __iter__(self) -> _SubStream:
        return self

    def __next__(self) -> Any:
        return self._self_stream.next(self._self_step)

    def __aiter__(self) -> _SubStream:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._self_stream.anext(self._self_astep)


class _SyncStream(_StreamProxy):
    def __iter__(self) -> _SyncStream:
        return self

    def __next__(self) -> Any:
        return self._self_stream.next()

    def send(self, value: Any) -> Any:
        return self._self_stream.next(self.__wrapped__.send, value)

    def throw(self, *args: Any) -> Any:
        return self._self_stream.next(self.__wrapped__.throw, *args)

    def close(self) -> Any:
        close = self.__wrapped__.close
        try:
            return close()
        finally:
            self._self_stream.end_sync(closed=True)

    def __enter__(self) -> Any:
        wrapped = self.__wrapped__
        if not hasattr(type(wrapped), "__enter__"):
            raise TypeError(
                f"'{type(wrapped).__name__}' object does not support the context manager protocol"
            )
        entered = wrapped.__enter__()
        return self if entered is wrapped else entered

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            # Leaving the block before the end cancels the rest, whatever the body raised:
            # the LLM call itself did not fail.
            self._self_stream.end_sync(closed=True)


class _AsyncStream(_StreamProxy):
    def __aiter__(self) -> _AsyncStream:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._self_stream.anext()

    def asend(self, value: Any) -> Awaitable[Any]:
        return self._self_stream.anext(self.__wrapped__.asend, value)

    def athrow(self, *args: Any) -> Awaitable[Any]:
        return self._self_stream.anext(self.__wrapped__.athrow, *args)

    async def _ai_closing(self, closing: Awaitable[Any]) -> Any:
        try:
            return await closing
        finally:
            await self._self_stream.end_async(closed=True)

    def aclose(self) -> Awaitable[Any]:
        aclose = self.__wrapped__.aclose
        return self._ai_closing(aclose())

    def close(self) -> Any:
        # SDK async streams have ``async def close()``; keep whichever kind it is.
        result = self.__wrapped__.close()
        if inspect.isawaitable(result):
            return self._ai_closing(result)
        self._self_stream.end_sync(closed=True)
        return result

    async def __aenter__(self) -> Any:
        wrapped = self.__wrapped__
        if not hasattr(type(wrapped), "__aenter__"):
            raise TypeError(
                f"'{type(wrapped).__name__}' object does not support the asynchronous "
                "context manager protocol"
            )
        entered = await wrapped.__aenter__()
        return self if entered is wrapped else entered

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            await self._self_stream.end_async(closed=True)


class _DualStream(_AsyncStream, _SyncStream):
    """A stream iterated with ``for`` or ``async for`` (LiteLLM's): both are watched.
    Its ``close()`` is the async proxy's, which handles a sync and an async close alike."""


_PROXIES: dict[int, type[_StreamProxy]] = {
    SYNC: _SyncStream,
    ASYNC: _AsyncStream,
    SYNC | ASYNC: _DualStream,
}


def wrap_stream(source: Any, kind: int, stream: Stream) -> Any:
    """``source`` in its proxy, iterated by ``for`` (kind ``SYNC``), ``async for``
    (``ASYNC``) or both: whichever protocol the caller uses goes through ``stream``."""
    if kind & SYNC:
        step = getattr(source, "__next__", None)
        stream.step = step if step is not None else iter(source).__next__
    if kind & ASYNC:
        astep = getattr(source, "__anext__", None)
        stream.astep = astep if astep is not None else source.__aiter__().__anext__
    stream.source = source
    return _PROXIES[kind & (SYNC | ASYNC)](source, stream)


_NOTHING = object()


class Manager(_ObjectProxy):
    """A stream manager (``client.messages.stream(...)``, ``chat.completions.stream(...)``):
    the request starts when the caller enters it, and what it hands out is watched until
    its end. Entered with ``with`` or ``async with``, whichever it supports."""

    def __init__(self, wrapped: Any, stream: Stream, mode: str | bool) -> None:
        super().__init__(wrapped)
        self._self_stream = stream
        self._self_mode = mode  # the tracker's stream option
        self._self_entered = False
        # What the manager handed out, when it is no stream: read before the manager
        # closes it (a raw response whose body the caller parsed).
        self._self_value: Any = _NOTHING

    def __del__(self) -> None:
        try:
            stream, entered = self._self_stream, self._self_entered
        except Exception:  # never initialised
            return
        if not entered:  # once entered, the stream it handed out is watched instead
            stream.abandon()

    def _ai_hand_out(self, entered: Any) -> Any:
        try:
            kind = stream_kind(entered, self._self_mode)
            if kind and not kind & MANAGER:
                return wrap_stream(entered, kind, self._self_stream)
        except Exception:
            report_failure("wrapping a stream")
        self._self_value = entered
        return entered

    def _ai_leave(self) -> bool:
        """Before the manager's own exit: read what it handed out. True when that was no
        stream, whose exit ends the call as a success (the request had completed)."""
        value = self._self_value
        if value is _NOTHING:
            return False
        self._self_value = _NOTHING
        stream = self._self_stream
        if stream.open:
            stream.read_response(value)
        return True

    def __enter__(self) -> Any:
        wrapped = self.__wrapped__
        if not hasattr(type(wrapped), "__enter__"):
            raise TypeError(
                f"'{type(wrapped).__name__}' object does not support the context manager protocol"
            )
        stream = self._self_stream
        self._self_entered = True
        stream.restart()
        try:
            entered = wrapped.__enter__()
        except BaseException as exc:  # the request failed: a 429 is raised here
            stream.end_sync(exc)
            raise
        return self._ai_hand_out(entered)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        done = self._ai_leave()
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_stream.end_sync(closed=not done)

    async def __aenter__(self) -> Any:
        wrapped = self.__wrapped__
        if not hasattr(type(wrapped), "__aenter__"):
            raise TypeError(
                f"'{type(wrapped).__name__}' object does not support the asynchronous "
                "context manager protocol"
            )
        stream = self._self_stream
        self._self_entered = True
        stream.restart()
        try:
            entered = await wrapped.__aenter__()
        except BaseException as exc:
            await stream.end_async(exc)
            raise
        return self._ai_hand_out(entered)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        done = self._ai_leave()
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            await self._self_stream.end_async(closed=not done)


class RawResponse(_ObjectProxy):
    """A raw HTTP response (``with_raw_response``) whose ``parse()`` gives a stream: the
    same object, whose ``parse()`` hands out that stream in its proxy."""

    def __init__(self, wrapped: Any, body: Any, stream: Any) -> None:
        super().__init__(wrapped)
        self._self_body = body
        self._self_proxy = stream

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        parsed = self.__wrapped__.parse(*args, **kwargs)
        return self._self_proxy if parsed is self._self_body else parsed
