"""``track_ai_call``: calls, latency, tokens, time to first token, errors and cost of LLM calls.

One call is one job on the wrapping engine: a decorated function (sync, async, generator,
async generator) or a with-block. When the call returns a stream, the caller gets it back
in a transparent proxy and the job ends when the stream does: exhausted (success), failed
(error), closed or left early (cancelled), or garbage collected unfinished (cancelled). A
stream that iterates both ways is watched both ways; a stream manager (an SDK's
``messages.stream(...)``) is watched from the caller's ``with`` to the end of the stream it
hands out; a raw HTTP response (``with_raw_response``) is read through its ``parse()``.

Whatever reading a response does, the call ends and is counted. A call that ran without
readable usage counts in ``ai_usage_missing_total``, with one warning per provider and
model.

A stream garbage collected unfinished is recorded at the next AI call or push, or when
:func:`record_abandoned_streams` is called (pull mode: before a scrape). The collector may
run while its thread holds a lock that recording takes, so it only queues the stream.

Label children are bound once per (provider, model); at most ``max_models`` model names
per provider get their own series, the rest are reported as ``other``.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict, TypeVar, Unpack, cast

import wrapt

from .._wrapping import (
    Probe,
    _adeliver,
    _deliver,
    _guard,
    _probe_end,
    bind_arguments,
    wraps_signature,
)
from ..instrumentation import Binding, Instrumentation, Policy
from ..push import register_before_snapshot
from ._content import carries_content, response_body, stream_finished, stream_snapshot
from ._prices import ModelPrice, load_prices
from ._series import OTHER_MODEL as OTHER_MODEL
from ._series import UNKNOWN_MODEL, ModelSeries, ProviderModels, provider_models
from ._usage import (
    MAX_TOKENS,
    ExtractorFailed,
    Usage,
    extract_usage,
    response_model,
    usage_from,
)

__all__ = [
    "AICall",
    "AICallOptions",
    "AICallTracker",
    "ModelPrice",
    "load_prices",
    "record_abandoned_streams",
    "track_ai_call",
]

logger = logging.getLogger("instrument")

R = TypeVar("R")

_STREAM_VALUES = ("auto", True, False)
# What a result is, as flags: iterated with for (_SYNC), with async for (_ASYNC), or both;
# _MANAGER: a with-block that hands out the stream (its protocols, _SYNC and/or _ASYNC).
_SYNC, _ASYNC, _MANAGER = 1, 2, 4


class AICallOptions(TypedDict, total=False):
    """The keyword options of :func:`track_ai_call`."""

    #: What kind of call this is: chat (default), embeddings, ... Informational only: no
    #: metric has an operation label. Exposed as ``call.operation`` on the with-block
    #: handle (and ``tracker.operation``), for logs and custom ``usage=`` extraction.
    operation: str
    #: Reads usage from responses (and stream chunks) of other shapes: returns a
    #: :class:`~instrument.usage.Usage`, a mapping with its field names, or None.
    usage: Callable[[Any], Any] | None
    #: "auto" wraps results that are iterators or async iterators, and stream managers
    #: (with-blocks that hand out the stream); True also wraps any iterable result; False
    #: never wraps.
    stream: str | bool
    #: The ``active_jobs`` label (default "ai_call").
    job_type: str
    #: Maps a model name to its label, e.g. to fold dated versions together.
    normalize_model: Callable[[str], str] | None


_OPTION_NAMES = frozenset(AICallOptions.__optional_keys__)


class _AIBinding(Binding):
    """What a tracker records into on one Instrumentation, looked up once."""

    active_inc: Callable[[], None]
    active_dec: Callable[[], None]
    models: ProviderModels
    static: ModelSeries | None = None

    def __init__(self, inst: Instrumentation, tracker: AICallTracker) -> None:
        super().__init__(inst)
        if not self.enabled:
            return  # records nothing, so creates no series either
        active = inst.metrics.active_jobs.labels(tracker.job_type)
        self.active_inc = active.inc
        self.active_dec = active.dec
        self.models = provider_models(inst, tracker.provider)
        self.static = None if tracker.label is None else self.models.series(tracker.label)


# -- one call ----------------------------------------------------------------------------------


class AICall(Probe):
    """One LLM call in flight; in a with-block, the handle ``as call`` gives you.

    >>> with inst.track_ai_call("openai", "gpt-4o") as call:
    ...     call.record_response(http_post(...))
    """

    __slots__ = (
        "_b",
        "_done",
        "_failure",
        "_first",
        "_items",
        "_last",
        "_model",
        "_seek_model",
        "_seen",
        "_seen_model",
        "_streams",
        "_t0",
        "_tracker",
        "_usage",
        "deliver",
    )

    deliver: Callable[[], None] | None

    def __init__(
        self, binding: _AIBinding | None, tracker: AICallTracker, model: str | None
    ) -> None:
        self._b = binding
        self._tracker = tracker
        self._model = model
        self._seen_model: str | None = None
        # Whether responses are still read for the model: one check per chunk.
        self._seek_model = binding is not None and binding.static is None and model is None
        self._usage: Usage | None = None
        # The streams whose usage the call's end adds, unless they ended first: those
        # recorded in a with-block, and a generator function's own yields (``_items``).
        self._streams: list[_Chunks] | None = None
        self._items: _Chunks | None = None
        self._first: float | None = None
        self._done = False
        # The type of the first response (or stream, or chunk) recorded, and how reading
        # one failed: for the one warning per provider and model, at the call's end.
        self._seen: str | None = None
        self._failure: str | None = None
        # The binding's (None when nothing is pushed); None too while a stream proxy is
        # out, whose end delivers.
        self.deliver = None if binding is None else binding.deliver
        if binding is not None:
            binding.active_inc()
        self._t0 = self._last = perf_counter()

    # -- the handle ------------------------------------------------------------------------

    def record_response(self, response: R) -> R:
        """Read the usage (and, when the model is not fixed, the model) of ``response``.

        Returns ``response``; a stream comes back in a transparent wrapper whose chunks are
        read as you iterate it (time to first token included). Usage of several responses
        and streams adds up (a stream's own reports are running totals: it counts what it
        reported last). Never raises over the response's shape.
        """
        if self._b is None or self._done:
            return response
        try:
            handed = self._take(response, owner=False)
        except Exception:
            _guard("wrapping a stream")
            handed = None
        if handed is not None:
            return cast(R, handed)
        self._read(response)
        return response

    def add_usage(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read: int = 0,
        cache_creation: int = 0,
        reasoning: int = 0,
    ) -> None:
        """Add token counts by hand: ``input_tokens`` includes cached input (``cache_read``,
        ``cache_creation``) and ``output_tokens`` includes ``reasoning``."""
        counts = (input_tokens, output_tokens, cache_read, cache_creation, reasoning)
        for name, count in zip(
            ("input_tokens", "output_tokens", "cache_read", "cache_creation", "reasoning"),
            counts,
            strict=True,
        ):
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(f"{name} must be an int, got {type(count).__name__}")
            if count < 0:
                raise ValueError(f"{name} must not be negative, got {count}")
            if count > MAX_TOKENS:
                raise ValueError(f"{name} must be at most 2**53 (a token count), got {count}")
        if self._b is None or self._done:
            return
        self._add(Usage(*counts))

    def set_model(self, model: str) -> None:
        """Set this call's model label (for ``model=None``, or to override the fixed one)."""
        if not isinstance(model, str) or not model:
            raise TypeError(f"model must be a non-empty string, got {model!r}")
        if self._b is not None and not self._done:
            self._model = model
            self._seek_model = False

    @property
    def model(self) -> str | None:
        """The model as known so far: set, from the call's argument, fixed, or seen."""
        return self._model or self._tracker.model or self._seen_model

    @property
    def operation(self) -> str:
        """The tracker's ``operation`` ("chat" unless given): informational, for logs and
        custom ``usage=`` extraction; no metric has an operation label."""
        return self._tracker.operation

    # -- the engine's side -----------------------------------------------------------------

    def success(self, result: Any) -> Any:
        if self._b is None:
            return result
        # A generator function's chunks came through item(); its return value is no stream.
        if self._items is None:
            try:
                handed = self._take(result, owner=True)
            except Exception:
                _guard("wrapping a stream")  # recorded as a plain result below
                handed = None
            if handed is not None:
                self.deliver = None  # the stream's end delivers
                self._last = perf_counter()
                return handed
        try:
            self._read(result)
        finally:
            # Whatever reading the response did, the call ended: it is counted.
            self._finish("success", None)
        return result

    def error(self, exc: BaseException) -> None:
        self._finish("error", exc)

    def cancel(self) -> None:
        self._finish("cancelled", None)

    def item(self, value: Any) -> None:
        if self._b is not None and not self._done:
            items = self._items
            if items is None:  # a generator function's yields: one stream, settled at the end
                items = self._items = _Chunks(self)
            items.read(value)

    def deliver_async(self) -> Awaitable[None] | None:
        if self.deliver is not None and self._b is not None:
            waiter: Awaitable[None] | None = self._b.after_call_async()
            return waiter
        return None

    # -- recording -------------------------------------------------------------------------

    def _add(self, usage: Usage) -> None:
        with _usage_lock:  # streams of one call may end in different threads
            self._usage = usage if self._usage is None else self._usage + usage

    def _take(self, result: Any, owner: bool) -> Any:
        """What the caller gets instead of ``result`` when it must be watched on: a stream
        or a stream manager in its proxy, or a raw HTTP response whose ``parse()`` gives a
        stream. None when ``result`` is read as it is (a raw response's body is read here).
        """
        tracker = self._tracker
        kind = tracker._stream_kind(result)
        if kind & _MANAGER:
            return _Manager(result, self, owner)
        if kind:
            self._note(result)
            return _wrap_stream(result, kind, self, owner)
        try:
            body = response_body(result)
        except Exception as exc:
            self._failed(result, exc)
            return None
        if body is None:
            return None
        self._note(result)
        kind = tracker._stream_kind(body)
        if kind and not kind & _MANAGER:
            return _RawResponse(result, body, _wrap_stream(body, kind, self, owner))
        self._read(body)
        return None

    def _note(self, response: Any) -> None:
        if self._seen is None:
            self._seen = type(response).__name__

    def _failed(self, response: Any, exc: BaseException) -> None:
        """Reading ``response`` raised: noted, to be reported once at the call's end. Only
        class names: what a foreign object's exception says may hold anything."""
        if self._failure is None:
            if isinstance(exc, ExtractorFailed):
                self._failure = f"{exc} on a {type(response).__name__}"
            else:
                self._failure = f"reading {type(response).__name__} raised {type(exc).__name__}"

    def _read(self, response: Any) -> None:
        """Read the usage (and the model) of a response; never raises."""
        if response is None:
            return
        self._note(response)
        try:
            usage = self._tracker._extract(response)
            if usage is not None:
                self._add(usage)
            if self._seek_model:
                self._see_model(response)
        except Exception as exc:
            self._failed(response, exc)

    def _see_model(self, response: Any) -> None:
        model = response_model(response)
        if model is not None:
            self._seen_model = model
            self._seek_model = False

    def _finish(self, status: str, exc: BaseException | None, end: float | None = None) -> None:
        if self._done:
            return
        self._done = True
        b = self._b
        if b is None:
            return
        try:
            now = perf_counter() if end is None else end
            with _usage_lock:
                streams, self._streams = self._streams, None
            if streams is not None:
                # Still open at the call's end: what they reported so far counts.
                for stream in streams:
                    stream.settle()
            series, name = self._series(b)
            series.observe(now - self._t0)
            series.calls[status]()
            if self._first is not None:
                series.time_to_first_token(self._first)
            usage = self._usage
            if usage is not None:
                series.tokens(usage)
            elif status != "error":
                series.usage_missing(status, self._seen, self._failure)
            if self._failure is not None and (usage is not None or status != "success"):
                series.warn_once("usage", "%s; its usage is not read", self._failure)
            if exc is not None:
                series.error(exc)
            prices: dict[str, ModelPrice] | None = b.inst._prices
            if prices is not None:
                series.price(prices, name, usage, status)
        finally:
            b.active_dec()

    def _series(self, b: _AIBinding) -> tuple[ModelSeries, str]:
        """This call's series and the model name its price is looked up by."""
        model = self._model
        if model is None:
            if b.static is not None and self._tracker.model is not None:
                return b.static, self._tracker.model
            model = self._seen_model or UNKNOWN_MODEL
        return b.models.series(self._tracker._label(model)), model


# -- streams -----------------------------------------------------------------------------------


class _Chunks:
    """The chunks of one stream, and the usage they reported.

    Providers stream running totals, so one stream's reports are merged (``Usage.latest``),
    never added. The merged usage is added to the call's total exactly once: when the
    stream ends, or when the call ends first. Several streams of one call thus add up.
    """

    __slots__ = ("call", "open", "usage")

    def __init__(self, call: AICall, *, ends_call: bool = False) -> None:
        self.call = call
        self.open = True
        self.usage: Usage | None = None
        if not ends_call:  # the call may end first: it settles what is still open
            with _usage_lock:
                streams = call._streams
                if streams is None:
                    call._streams = [self]
                else:
                    streams.append(self)

    def read(self, chunk: Any, *, timed: bool = True) -> None:
        """Read one chunk (``timed``: as it arrives, for the first token); never raises (a
        failure is noted on the call, reported once)."""
        call = self.call
        now = perf_counter()
        call._last = now
        try:
            # The first token is the first chunk with generated content, not the first
            # event: a role-only chunk or a start event comes before the model wrote anything.
            if timed and call._first is None and carries_content(chunk):
                call._first = now - call._t0
            usage = call._tracker._extract(chunk)
            if usage is not None:
                latest = self.usage
                self.usage = usage if latest is None else latest.latest(usage)
            if call._seek_model:
                call._see_model(chunk)
        except Exception as exc:
            call._note(chunk)
            call._failed(chunk, exc)

    def settle(self) -> None:
        """Stop recording this stream and add its usage to the call: once, whichever of
        the stream's end and the call's end comes first, in whatever thread."""
        with _usage_lock:
            if not self.open:
                return
            self.open = False
            usage = self.usage
            if usage is not None:
                call = self.call
                call._usage = usage if call._usage is None else call._usage + usage


class _Stream(_Chunks):
    """The recording side of one stream proxy: it reads each chunk on the way and ends the
    call exactly once. Recording runs outside the engine here, so every step is guarded:
    the caller sees the stream's own chunks and exceptions.

    A plain object beside the wrapt proxy: attribute reads on the proxy cost several times
    more, and the per-chunk path would make a few.
    """

    __slots__ = ("astep", "owner", "source", "step")

    def __init__(self, call: AICall, owner: bool) -> None:
        super().__init__(call, ends_call=owner)
        # owner: this stream ends the call (a decorated function's result); otherwise the
        # with-block it was recorded in does.
        self.owner = owner
        #: The stream itself and its own ``__next__`` / ``__anext__``; set by attach(), for
        #: a stream manager once it is entered.
        self.source: Any = None
        self.step: Callable[..., Any] = _not_iterable
        self.astep: Callable[..., Awaitable[Any]] = _not_iterable

    def attach(self, source: Any, kind: int) -> None:
        """Read ``source``, iterated by ``for`` (kind ``_SYNC``), ``async for`` (``_ASYNC``)
        or both: whichever protocol the caller uses goes through this stream."""
        if kind & _SYNC:
            step = getattr(source, "__next__", None)
            self.step = step if step is not None else iter(source).__next__
        if kind & _ASYNC:
            astep = getattr(source, "__anext__", None)
            self.astep = astep if astep is not None else source.__aiter__().__anext__
        self.source = source

    def restart(self) -> None:
        """A manager was entered: its request starts now, so the call's clock does."""
        if self.owner and self.open:
            call = self.call
            call._t0 = call._last = perf_counter()

    def next(self, step: Callable[..., Any] | None = None, *args: Any) -> Any:
        """The next chunk from ``step`` (default: ``__next__``), read on the way."""
        try:
            chunk = (step or self.step)(*args)
        except StopIteration:
            self.end_sync()
            raise
        except BaseException as exc:
            self.end_sync(exc)
            raise
        if self.open:
            self.read(chunk)
        return chunk

    async def anext(self, step: Callable[..., Awaitable[Any]] | None = None, *args: Any) -> Any:
        """The next chunk from ``step`` (default: ``__anext__``), read on the way."""
        try:
            chunk = await (step or self.astep)(*args)
        except StopAsyncIteration:
            await self.end_async()
            raise
        except BaseException as exc:
            await self.end_async(exc)
            raise
        if self.open:
            self.read(chunk)
        return chunk

    def read_response(self, response: Any) -> None:
        """What a stream manager handed out when it is no stream: read as a response (the
        raw response of ``with_streaming_response``, through its body)."""
        call = self.call
        try:
            body = response_body(response)
        except Exception as exc:
            call._failed(response, exc)
            body = None
        call._note(response)
        call._read(response if body is None else body)

    def _read_snapshot(self) -> bool:
        """Read the response the stream helper accumulated (its usage, when the caller
        read the stream through ``text_stream`` or ``get_final_message()``, not through
        this proxy). True when that response says the model finished."""
        source = self.source
        if source is None:
            return False
        snapshot = stream_snapshot(source)
        if snapshot is None:
            return False
        self.read(snapshot, timed=False)  # read at the end: no first token to time
        return stream_finished(snapshot)

    def end(
        self, exc: BaseException | None = None, *, closed: bool = False, abandoned: bool = False
    ) -> bool:
        """End once: exhausted (success), failed with ``exc``, ``closed`` or left before the
        end (cancelled, unless the stream's own record says it finished), or ``abandoned``.
        True when this ended the call, to be delivered."""
        if not self.open:
            return False
        try:
            if self._read_snapshot() and closed:
                closed = False  # read to its end another way, then closed: a success
            self.settle()
        except Exception:
            _guard("recording the usage of a stream")
        self.source = None
        if not self.owner:
            return False
        call = self.call
        if call._b is not None:
            call.deliver = call._b.deliver
        if exc is not None:
            _probe_end(call, exc)  # the engine's rule: error, or cancelled for CancelledError & co
            return True
        try:
            if abandoned:
                # Its duration runs to the last moment it was seen alive, not to collection.
                call._finish("cancelled", None, call._last)
            elif closed:
                call.cancel()
            else:
                call._finish("success", None)
        except Exception:
            _guard("recording the end of a stream")
        return True

    def end_sync(self, exc: BaseException | None = None, *, closed: bool = False) -> None:
        if self.end(exc, closed=closed):
            _deliver(self.call)

    async def end_async(self, exc: BaseException | None = None, *, closed: bool = False) -> None:
        if self.end(exc, closed=closed):
            await _adeliver(self.call)

    def abandon(self) -> None:
        """From the garbage collector, which may run while this thread holds a lock that
        recording takes (prometheus_client's, the model guard's): queue, record nothing."""
        if self.open:
            # Let the SDK stream go now, as collection would.
            self.step = self.astep = _collected
            self.source = None
            _abandoned.put(self)

    def record_abandoned(self) -> None:
        """At a safe point: end the call as cancelled, for the next push to carry."""
        try:
            if self.end(abandoned=True):
                b = self.call._b
                if b is not None:
                    b.inst.delivery.note_change()
        except Exception:
            _guard("recording an abandoned stream")


def _collected(*args: Any) -> Any:
    raise RuntimeError("this stream was garbage collected")


def _not_iterable(*args: Any) -> Any:
    raise TypeError("this object is not iterable that way")


# Abandoned streams waiting to be recorded. SimpleQueue.put takes no lock that the
# collector could find held: it is safe in a finalizer.
_abandoned: queue.SimpleQueue[_Stream] = queue.SimpleQueue()
# Guards the usage a call adds up from its streams, which may end in different threads.
_usage_lock = threading.Lock()


def record_abandoned_streams() -> None:
    """Record the streams garbage collected before their end, as cancelled calls.

    This happens by itself at the next AI call and before every push; call it to record
    them now, e.g. before a scrape in pull mode, or in a test after ``gc.collect()``.
    """
    while True:
        try:
            stream = _abandoned.get_nowait()
        except queue.Empty:
            return
        stream.record_abandoned()


register_before_snapshot(record_abandoned_streams)


if TYPE_CHECKING:
    _ObjectProxy = wrapt.ObjectProxy[Any]
else:  # wrapt 1.x proxies are not subscriptable
    _ObjectProxy = wrapt.ObjectProxy


def _is_generator(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def _iterator_kind(value: Any) -> int:
    cls = type(value)
    return (_SYNC if hasattr(cls, "__next__") else 0) | (_ASYNC if hasattr(cls, "__anext__") else 0)


class _StreamProxy(_ObjectProxy):
    """What the caller gets instead of a stream: the same object, chunks read on the way
    by its :class:`_Stream`, which ends the call exactly once."""

    def __init__(self, wrapped: Any, stream: _Stream) -> None:
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
        kind = _iterator_kind(value)
        if kind and self._self_stream.open:
            return _SubStream(value, self._self_stream, kind)
        return value


class _SubStream(_ObjectProxy):
    """An iterator a stream hands out over its own events (``stream.text_stream``)."""

    def __init__(self, wrapped: Any, stream: _Stream, kind: int) -> None:
        super().__init__(wrapped)
        self._self_stream = stream
        self._self_step = wrapped.__next__ if kind & _SYNC else _not_iterable
        self._self_astep = wrapped.__anext__ if kind & _ASYNC else _not_iterable

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
    _SYNC: _SyncStream,
    _ASYNC: _AsyncStream,
    _SYNC | _ASYNC: _DualStream,
}


def _wrap_stream(
    source: Any, kind: int, call: AICall, owner: bool, stream: _Stream | None = None
) -> Any:
    if stream is None:
        stream = _Stream(call, owner)
    stream.attach(source, kind)
    return _PROXIES[kind & (_SYNC | _ASYNC)](source, stream)


_NOTHING = object()


class _Manager(_ObjectProxy):
    """A stream manager (``client.messages.stream(...)``, ``chat.completions.stream(...)``):
    the request starts when the caller enters it, and what it hands out is watched until
    its end. Entered with ``with`` or ``async with``, whichever it supports."""

    def __init__(self, wrapped: Any, call: AICall, owner: bool) -> None:
        super().__init__(wrapped)
        self._self_stream = _Stream(call, owner)
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
        stream = self._self_stream
        try:
            kind = stream.call._tracker._stream_kind(entered)
            if kind and not kind & _MANAGER:
                return _wrap_stream(entered, kind, stream.call, stream.owner, stream)
        except Exception:
            _guard("wrapping a stream")
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


class _RawResponse(_ObjectProxy):
    """A raw HTTP response (``with_raw_response``) whose ``parse()`` gives a stream: the
    same object, whose ``parse()`` hands out that stream in its proxy."""

    def __init__(self, wrapped: Any, body: Any, stream: Any) -> None:
        super().__init__(wrapped)
        self._self_body = body
        self._self_proxy = stream

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        parsed = self.__wrapped__.parse(*args, **kwargs)
        return self._self_proxy if parsed is self._self_body else parsed


# -- the decorator -----------------------------------------------------------------------------


class _ModelParameter(NamedTuple):
    """How to find the ``model`` argument of one decorated function."""

    signature: inspect.Signature | None  # set when ``model`` can be passed by position
    default: str | None


class AICallTracker(Policy[AICall, _AIBinding]):
    """What ``track_ai_call(...)`` returns: a decorator and a (async) with-block."""

    observes_items = True

    def __init__(
        self,
        inst: Instrumentation | None,
        provider: str,
        model: str | None = None,
        **options: Unpack[AICallOptions],
    ) -> None:
        if callable(provider) and not isinstance(provider, str):
            raise TypeError(
                "track_ai_call needs arguments: use @track_ai_call('openai', 'gpt-4o') "
                "(or model=None to take the call's model argument), not @track_ai_call"
            )
        if not isinstance(provider, str) or not provider:
            raise TypeError(
                f"provider must be a non-empty string such as 'openai', got {provider!r}"
            )
        if model is not None and (not isinstance(model, str) or not model):
            raise TypeError(
                "model must be a model name such as 'gpt-4o', or None to take it from the "
                f"call's `model` argument or the response; got {model!r}"
            )
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"track_ai_call got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join(sorted(_OPTION_NAMES))}"
            )
        operation = options.get("operation", "chat")
        if not isinstance(operation, str) or not operation:
            raise TypeError(
                f"operation must be a non-empty string such as 'chat' or 'embeddings', "
                f"got {operation!r}"
            )
        usage = options.get("usage")
        if usage is not None and not callable(usage):
            raise TypeError(
                "usage must be a callable taking a response (or stream chunk) and returning "
                "a Usage, a mapping such as {'input_tokens': 10, 'output_tokens': 5}, or "
                f"None; got {type(usage).__name__}"
            )
        stream = options.get("stream", "auto")
        if not any(
            stream is v or (isinstance(stream, str) and stream == v) for v in _STREAM_VALUES
        ):
            raise ValueError(
                "stream must be 'auto' (wrap results that are iterators or async iterators), "
                f"True (wrap any iterable result) or False (never wrap); got {stream!r}"
            )
        job_type = options.get("job_type", "ai_call")
        if not isinstance(job_type, str) or not job_type:
            raise TypeError(f"job_type must be a non-empty string, got {job_type!r}")
        normalize = options.get("normalize_model")
        if normalize is not None and not callable(normalize):
            raise TypeError(
                "normalize_model must be a callable taking a model name and returning its "
                "label, e.g. lambda m: re.sub(r'-\\d{4}-\\d{2}-\\d{2}$', '', m) to drop a "
                f"date suffix; got {type(normalize).__name__}"
            )
        super().__init__(inst)
        self.provider = provider
        self.model = model
        self.operation = operation
        self.usage = usage
        #: Reads usage from a response or chunk: picked once, as it runs for every chunk.
        self._extract: Callable[[Any], Usage | None] = (
            extract_usage if usage is None else self._extract_with
        )
        self.stream = stream
        self.job_type = job_type
        self.normalize_model = normalize
        self._warned: set[str] = set()
        self.label: str | None = None
        if model is not None:
            self.label = model
            if normalize is not None:
                label = normalize(model)
                if not isinstance(label, str) or not label:
                    raise TypeError(
                        f"normalize_model({model!r}) returned {label!r}; it must return a "
                        "non-empty string"
                    )
                self.label = label
        self._null = AICall(None, self, None)

    def __repr__(self) -> str:
        return f"track_ai_call({self.provider!r}, {self.model!r})"

    def bind(self, inst: Instrumentation) -> _AIBinding:
        return _AIBinding(inst, self)

    def null_probe(self) -> AICall:
        return self._null

    def starter(self, func: Callable[..., Any]) -> Callable[..., AICall]:
        if self.model is not None:
            return self.start
        # model=None: the call's ``model`` argument, found by this function's signature (one
        # tracker may decorate several functions), else its default.
        parameter = _model_parameter(func)
        signature = parameter.signature if parameter is not None else None
        default = parameter.default if parameter is not None else None

        def start_with_model(
            wrapped: Callable[..., Any],
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> AICall:
            value = kwargs.get("model")
            if value is None:
                if signature is not None and args:
                    value = bind_arguments(signature, wrapped, args, kwargs).get("model")
                if value is None:
                    value = default
            model = value if isinstance(value, str) and value else None
            return self.start(wrapped, args, kwargs, model)

        return start_with_model

    def start(
        self,
        wrapped: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        model: str | None = None,
    ) -> AICall:
        if not _abandoned.empty():
            record_abandoned_streams()
        b = self._binding
        if b is None or b.stale:
            b = self.binding()
            if not b.enabled:
                return self._null
        return AICall(b, self, model)

    def _stream_kind(self, result: Any) -> int:
        """How ``result`` is watched, as ``_SYNC`` / ``_ASYNC`` / ``_MANAGER`` flags; 0: read
        as a response.

        "auto" watches iterators and async iterators, in every protocol the object has
        (LiteLLM's streams are both), and stream managers: with-blocks that are neither
        iterable nor closable, which exist only to be entered and hand out the stream.
        True also watches iterables.
        """
        mode = self.stream
        if mode is False or result is None:
            return 0
        cls = type(result)
        steps = _iterator_kind(result)
        if steps or (mode is True and not isinstance(result, str | bytes)):
            iterable = (_SYNC if steps & _SYNC or hasattr(cls, "__iter__") else 0) | (
                _ASYNC if steps & _ASYNC or hasattr(cls, "__aiter__") else 0
            )
            if iterable:
                return iterable
        if isinstance(result, str | bytes) or hasattr(cls, "__iter__") or hasattr(cls, "__aiter__"):
            return 0
        if hasattr(cls, "close") or hasattr(cls, "aclose"):
            return 0
        manager = (_SYNC if hasattr(cls, "__enter__") and hasattr(cls, "__exit__") else 0) | (
            _ASYNC if hasattr(cls, "__aenter__") and hasattr(cls, "__aexit__") else 0
        )
        return _MANAGER | manager if manager else 0

    def _extract_with(self, response: Any) -> Usage | None:
        """Usage read by the ``usage=`` extractor. Its failure is the call's to report, once
        per provider and model, like any response that cannot be read."""
        extractor = cast(Callable[[Any], Any], self.usage)  # installed only when it is set
        try:
            return usage_from(extractor(response))
        except Exception as exc:
            raise ExtractorFailed(
                f"the usage extractor of {self!r} raised {type(exc).__name__}"
            ) from None

    def _label(self, model: str) -> str:
        normalize = self.normalize_model
        if normalize is None:
            return model
        try:
            label = normalize(model)
        except Exception as exc:
            self._complain(
                "normalize",
                "normalize_model(%r) failed (%s: %s); the name is used as is",
                model,
                type(exc).__name__,
                exc,
            )
            return model
        if not isinstance(label, str) or not label:
            self._complain(
                "normalize",
                "normalize_model(%r) returned %r, not a non-empty string; the name is used as is",
                model,
                label,
            )
            return model
        return label

    def _complain(self, what: str, message: str, *args: Any) -> None:
        """A warning the first time a user callable of this tracker fails, then debug logs:
        one written for whole responses may fail on every chunk of a stream."""
        log = logger.debug if what in self._warned else logger.warning
        self._warned.add(what)
        log("instrument: " + message, *args)


def _model_parameter(func: Callable[..., Any]) -> _ModelParameter | None:
    # Through functools.wraps decorators (tenacity's @retry, caches): their ``*args``
    # pass the call on to the function that names ``model``.
    signature = wraps_signature(func)
    if signature is None:
        return None
    parameter = signature.parameters.get("model")
    if parameter is None:
        return None
    default = parameter.default if isinstance(parameter.default, str) else None
    positional = parameter.kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    return _ModelParameter(signature if positional else None, default)


def track_ai_call(
    provider: str, model: str | None = None, **options: Unpack[AICallOptions]
) -> AICallTracker:
    """Track each call (or with-block) as one LLM call, on the default instrumentation.

    >>> @track_ai_call("openai", "gpt-4o")
    ... def ask(prompt):
    ...     return client.chat.completions.create(model="gpt-4o", messages=[...])

    ``model=None`` takes the call's ``model`` argument, else the response's model, else
    "unknown". Options: ``operation``, ``usage``, ``stream``, ``job_type``, ``normalize_model``
    (see :class:`AICallOptions`).

    ``operation`` ("chat" by default, or "embeddings", ...) is informational: no metric has
    an operation label, so it never splits a series. It is exposed as ``call.operation`` on
    the with-block handle (and ``tracker.operation``), for logs and for code that reads
    usage itself (a ``usage=`` extractor, ``call.add_usage``).
    """
    return AICallTracker(None, provider, model, **options)
