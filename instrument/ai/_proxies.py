"""What the caller holds instead of a stream: the same object in a transparent wrapt proxy,
whose every step goes through the call's :class:`~instrument.ai._streams.Stream`.

A stream iterated both ways (LiteLLM's) is watched both ways; an iterable that is no
iterator (a list, under ``stream=True``) is watched on each pass. Stream managers and raw
HTTP responses, which hand out a stream later, are in ``_managers``.

A proxy has the methods its stream has, and only those: ``send``, ``throw``, ``close``,
``asend``, ``athrow`` and ``aclose`` are watched where the stream's own type defines them,
and absent where it does not, so ``hasattr(proxy, "send")`` answers as the stream does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import wrapt

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
    _StepsProxy = wrapt.ObjectProxy[Any]
else:  # wrapt 1.x proxies are not subscriptable
    _ObjectProxy = wrapt.ObjectProxy
    # wrapt 2's base proxy has no __iter__ of its own: a stream proxy then has one only
    # when its stream does (wrapt 1.x's proxies all have one).
    _StepsProxy = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


class Transparent:
    """Copy and pickle as the wrapped object does: wrapt's proxies refuse both, where the
    stream itself may allow them. What comes out is the wrapped object's own copy or
    pickle, unwatched (a copy read on its own is not this call's: counting it too would
    count the chunks twice)."""

    __slots__ = ()
    __wrapped__: Any

    def __copy__(self) -> Any:
        import copy

        return copy.copy(self.__wrapped__)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        import copy

        return copy.deepcopy(self.__wrapped__, memo)

    def __reduce__(self) -> str | tuple[Any, ...]:
        return self.__wrapped__.__reduce__()  # type: ignore[no-any-return]

    def __reduce_ex__(self, protocol: Any) -> str | tuple[Any, ...]:
        return self.__wrapped__.__reduce_ex__(protocol)  # type: ignore[no-any-return]


def _is_generator(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


class _StreamProxy(Transparent, _StepsProxy):
    """What the caller gets instead of a stream: the same object, chunks read on the way
    by its :class:`Stream`, which ends the call exactly once. Its steps and optional
    methods are added per stream type by :func:`_proxy_class`."""

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

    # The with-block protocol is always there: wrapt's base proxy has it, so these only
    # make leaving the block end the stream, and keep Python's own TypeError otherwise.

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


class _SubStream(Transparent, _StepsProxy):
    """An iterator over a stream's chunks that is not the stream itself: one a stream
    hands out over its own events (``stream.text_stream``), or one pass over an iterable.

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


# -- the steps and optional methods a proxy class is made of ------------------------------------


def _iter_self(self: _StreamProxy) -> _StreamProxy:
    return self


def _next(self: _StreamProxy) -> Any:
    return self._self_stream.next()


def _anext(self: _StreamProxy) -> Awaitable[Any]:
    return self._self_stream.anext()


def _pass(self: _StreamProxy, kind: int) -> Any:
    """A new pass over an iterable: watched while the call is open, the same chunks
    read again (so what an earlier pass read is forgotten, not added); the first pass to
    reach the end ends the call, and later ones only hand out the chunks."""
    wrapped = self.__wrapped__
    stream = self._self_stream
    try:
        steps = iter(wrapped) if kind == SYNC else wrapped.__aiter__()
    except BaseException as exc:  # as a stream failing at its first step
        stream.end_sync(exc)
        raise
    if not stream.open:
        return steps
    stream.forget()
    return _SubStream(steps, self, kind)


def _iter_pass(self: _StreamProxy) -> Any:
    return _pass(self, SYNC)


def _aiter_pass(self: _StreamProxy) -> Any:
    return _pass(self, ASYNC)


def _send(self: _StreamProxy, value: Any) -> Any:
    return self._self_stream.next(self.__wrapped__.send, value)


def _throw(self: _StreamProxy, *args: Any) -> Any:
    return self._self_stream.next(self.__wrapped__.throw, *args)


def _close(self: _StreamProxy) -> Any:
    close = self.__wrapped__.close
    try:
        return close()
    finally:
        self._self_stream.end_sync(closed=True)


def _asend(self: _StreamProxy, value: Any) -> Awaitable[Any]:
    return self._self_stream.anext(self.__wrapped__.asend, value)


def _athrow(self: _StreamProxy, *args: Any) -> Awaitable[Any]:
    return self._self_stream.anext(self.__wrapped__.athrow, *args)


async def _closing(self: _StreamProxy, closing: Awaitable[Any]) -> Any:
    try:
        return await closing
    finally:
        await self._self_stream.end_async(closed=True)


def _aclose(self: _StreamProxy) -> Awaitable[Any]:
    aclose = self.__wrapped__.aclose
    return _closing(self, aclose())


def _close_either(self: _StreamProxy) -> Any:
    # SDK async streams have ``async def close()``; keep whichever kind it is.
    result = self.__wrapped__.close()
    if inspect.isawaitable(result):
        return _closing(self, result)
    self._self_stream.end_sync(closed=True)
    return result


#: The methods a stream may have, and what its proxy does for each, by the protocols the
#: proxy watches: a method the stream lacks is left out of its proxy's class.
_OPTIONAL: dict[int, dict[str, Callable[..., Any]]] = {
    SYNC: {"send": _send, "throw": _throw, "close": _close},
    ASYNC: {"asend": _asend, "athrow": _athrow, "aclose": _aclose, "close": _close_either},
    SYNC | ASYNC: {
        "send": _send,
        "throw": _throw,
        "asend": _asend,
        "athrow": _athrow,
        "aclose": _aclose,
        "close": _close_either,
    },
}
_OPTIONAL_NAMES = ("send", "throw", "close", "asend", "athrow", "aclose")
_classes: dict[tuple[int, tuple[bool, ...], tuple[str, ...]], type[_StreamProxy]] = {}


def _proxy_class(source: Any, kind: int) -> type[_StreamProxy]:
    """The proxy class for a stream of ``source``'s type watched as ``kind``: its steps
    (an iterator's own, or a new pass for each ``iter()`` of an iterable) and exactly the
    optional methods the type has; made once per shape."""
    cls = type(source)
    steps = tuple(hasattr(cls, name) for name in ("__iter__", "__next__", "__aiter__", "__anext__"))
    present = tuple(name for name in _OPTIONAL_NAMES if hasattr(cls, name))
    key = (kind, steps, present)
    made = _classes.get(key)
    if made is None:
        namespace: dict[str, Any] = {}
        iterable, iterator, aiterable, aiterator = steps
        if kind & SYNC:
            if iterator:  # its own steps, and iter() of it only if the stream has one
                namespace["__next__"] = _next
                if iterable:
                    namespace["__iter__"] = _iter_self
            else:
                namespace["__iter__"] = _iter_pass
        if kind & ASYNC:
            if aiterator:
                namespace["__anext__"] = _anext
                if aiterable:
                    namespace["__aiter__"] = _iter_self
            else:
                namespace["__aiter__"] = _aiter_pass
        methods = _OPTIONAL[kind]
        namespace.update((name, methods[name]) for name in present if name in methods)
        name = {SYNC: "_SyncStream", ASYNC: "_AsyncStream"}.get(kind, "_DualStream")
        made = _classes.setdefault(key, type(name, (_StreamProxy,), namespace))
    return made


#: The proxies a stream's chunks go through (``stream_of`` in ``_managers`` finds theirs).
STREAM_PROXIES: tuple[type, ...] = (_StreamProxy, _SubStream)


def wrap_stream(source: Any, kind: int, stream: Stream) -> Any:
    """``source`` in its proxy, iterated by ``for`` (kind ``SYNC``), ``async for``
    (``ASYNC``) or both: whichever protocol the caller uses goes through ``stream``."""
    kind &= SYNC | ASYNC
    if kind & SYNC:
        stream.step = getattr(source, "__next__", not_iterable)
    if kind & ASYNC:
        stream.astep = getattr(source, "__anext__", not_iterable)
    stream.source = source
    return _proxy_class(source, kind)(source, stream)
