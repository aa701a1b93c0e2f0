"""What the caller holds instead of a stream manager or a raw HTTP response: the same
object in a transparent wrapt proxy that watches the stream it hands out, entered
(``messages.stream(...)``, ``with_streaming_response``) or parsed (``with_raw_response``,
sync or awaited), through the call's :class:`~instrument.ai._streams.Stream`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import wrapt

from .._engine import report_failure
from ._fields import attribute
from ._proxies import MANAGER, STREAM_PROXIES, Transparent, stream_kind, wrap_stream

if TYPE_CHECKING:
    from ._streams import Stream

    _ObjectProxy = wrapt.ObjectProxy[Any]
else:  # wrapt 1.x proxies are not subscriptable
    _ObjectProxy = wrapt.ObjectProxy


_NOTHING = object()


def is_raw_response(value: Any) -> bool:
    """A raw HTTP response of an SDK (``with_raw_response``, ``with_streaming_response``):
    a ``parse()`` on its class and the ``http_response`` it holds."""
    parse = getattr(type(value), "parse", None)
    if parse is None or not callable(parse) or isinstance(value, type):
        return False
    try:
        return getattr(value, "http_response", None) is not None
    except Exception:  # a property of a foreign object may raise anything
        return False


def unread_raw_response(value: Any) -> bool:
    """A raw response whose ``parse()`` is awaited and whose body has not been read: a
    stream (or a streamed body) the caller reads later, by ``await raw.parse()``."""
    if not is_raw_response(value) or not inspect.iscoroutinefunction(type(value).parse):
        return False
    try:
        content = value.http_response.content  # httpx raises while the body is unread
    except Exception:
        return True
    return not isinstance(content, bytes)


def _streamed_data(value: Any) -> Any:
    """The stream a raw HTTP response holds as its ``data`` (Cohere's ``with_raw_response``
    of a stream: ``headers`` beside a ``data`` that is an iterator), or None."""
    if attribute(value, "headers") is None:
        return None
    data = attribute(value, "data")
    kind = stream_kind(data, "auto")
    return data if kind and not kind & MANAGER else None


class DataResponse(Transparent, _ObjectProxy):
    """A raw HTTP response whose ``data`` is the stream (Cohere's): the same object, whose
    ``data`` is that stream in its proxy."""

    def __init__(self, wrapped: Any, stream: Any) -> None:
        super().__init__(wrapped)
        self._self_data = stream

    @property
    def data(self) -> Any:
        return self._self_data


class Manager(Transparent, _ObjectProxy):
    """A stream manager (``client.messages.stream(...)``, ``chat.completions.stream(...)``,
    ``with_streaming_response.create(...)``): the request starts when the caller enters
    it, and what it hands out is watched until its end. Entered with ``with`` or ``async
    with``, whichever it supports."""

    def __init__(self, wrapped: Any, stream: Stream, mode: str | bool) -> None:
        super().__init__(wrapped)
        self._self_stream = stream
        self._self_mode = mode  # the tracker's stream option
        self._self_entered = False
        # What the manager handed out, when it is no stream: read before the manager
        # closes it (a raw response whose body the caller parsed, or did not).
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
            # The request was sent on entering: the response's headers are there now
            # (the stream's ``response``, a raw response's own ``headers``).
            self._self_stream.call._headers(entered)
            kind = stream_kind(entered, self._self_mode)
            if kind and not kind & MANAGER:
                return wrap_stream(entered, kind, self._self_stream)
            if is_raw_response(entered):
                # ``with_streaming_response``: its parse() may give the stream itself.
                raw = RawResponse(entered, self._self_stream, self._self_mode, ends=False)
                self._self_value = raw
                return raw
            data = _streamed_data(entered)
            if data is not None:
                kind = stream_kind(data, self._self_mode)
                return DataResponse(entered, wrap_stream(data, kind, self._self_stream))
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
        if isinstance(value, RawResponse):
            if value._self_parsed is not _NOTHING:
                # Parsed by the caller: a body already read, or a stream that ends the
                # call itself (leaving the block before its end cancels it).
                return value._self_handed is value._self_parsed
            value = value.__wrapped__
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


class RawResponse(Transparent, _ObjectProxy):
    """A raw HTTP response whose body is (or may be) a stream: the same object, whose
    ``parse()`` (sync, or awaited) hands out that stream in its proxy, the same proxy for
    the SDK's cached body. A body that is no stream is read when parsed.

    ``ends``: this response ends the call when it is parsed into a body that is no
    stream, or is dropped unparsed (cancelled, as an abandoned stream is). A manager that
    handed it out (``with_streaming_response``) ends the call at its exit instead.
    """

    def __init__(
        self,
        wrapped: Any,
        stream: Stream,
        mode: str | bool,
        *,
        ends: bool,
        body: Any = _NOTHING,
        handed: Any = None,
    ) -> None:
        super().__init__(wrapped)
        self._self_stream = stream
        self._self_mode = mode
        self._self_ends = ends
        # The body parse() gave first (``body``, when it was parsed already), and what
        # the caller gets for it (``handed``: its stream's proxy).
        self._self_parsed: Any = body
        self._self_handed: Any = handed

    def __del__(self) -> None:
        try:
            stream, parsed, ends = self._self_stream, self._self_parsed, self._self_ends
        except Exception:  # never initialised
            return
        if ends and parsed is _NOTHING:  # once parsed, the stream's proxy is watched instead
            stream.abandon()

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            parsed = self.__wrapped__.parse(*args, **kwargs)
        except BaseException as exc:
            if self._ai_failed():
                self._self_stream.end_sync(exc)
            raise
        if inspect.isawaitable(parsed):
            return self._ai_parse_async(parsed)
        handed = self._ai_hand(parsed)
        if handed is parsed and self._ai_ends_now():
            self._self_stream.end_sync()
        return handed

    async def _ai_parse_async(self, parsing: Awaitable[Any]) -> Any:
        try:
            parsed = await parsing
        except BaseException as exc:
            if self._ai_failed():
                await self._self_stream.end_async(exc)
            raise
        handed = self._ai_hand(parsed)
        if handed is parsed and self._ai_ends_now():
            await self._self_stream.end_async()
        return handed

    def _ai_ends_now(self) -> bool:
        """Whether a body just read (no stream) ends the call here."""
        return self._self_ends and self._self_handed is self._self_parsed

    def _ai_hand(self, parsed: Any) -> Any:
        """What the caller gets for a parsed body: the first body's proxy when it is a
        stream, else the body itself, read once for its usage. Never raises."""
        if self._self_parsed is not _NOTHING:
            # The SDK's cached body again, or another one (``parse(to=...)``): the call
            # is watched through the first only.
            return self._self_handed if parsed is self._self_parsed else parsed
        self._self_parsed = self._self_handed = parsed
        stream = self._self_stream
        try:
            kind = stream_kind(parsed, self._self_mode)
            if kind and not kind & MANAGER and stream.open:
                self._self_handed = wrap_stream(parsed, kind, stream)
            elif stream.open:
                stream.read_response(parsed)
        except Exception:
            report_failure("wrapping a stream")
        return self._self_handed

    def _ai_failed(self) -> bool:
        """parse() raised before any body: True when the call this response ends fails
        with that error (as it would had the decorated function parsed it)."""
        if self._self_parsed is not _NOTHING or not self._self_ends:
            return False
        self._self_parsed = None  # settled: no abandonment at collection
        return True


def stream_of(value: Any) -> Stream | None:
    """The :class:`Stream` a proxy of ours watches ``value`` through (a stream's, a
    manager's, a raw response's, its data's), or None for anything else: what
    ``record_response`` finds when it is handed a proxy it gave out."""
    if isinstance(value, DataResponse):
        value = value._self_data
    if isinstance(value, _WATCHING):
        proxy: Any = value  # each of them keeps its Stream as _self_stream
        stream: Stream = proxy._self_stream
        return stream
    return None


_WATCHING = (*STREAM_PROXIES, Manager, RawResponse)
