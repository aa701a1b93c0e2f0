"""One LLM call in flight (:class:`AICall`, the with-block's handle) and the recording side
of its streams: the chunks each stream reported, and the end of the call a stream brings."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._engine import Probe, aend_job, defer, end_job, report_failure, run_deferred
from ..metrics import check_label_value
from ._content import (
    carries_content,
    response_body,
    response_identity,
    stream_finished,
    stream_snapshot,
)
from ._proxies import MANAGER, Manager, RawResponse, not_iterable, stream_kind, wrap_stream
from ._series import UNKNOWN_MODEL, ModelSeries
from ._usage import ExtractorFailed, Usage, checked_usage, response_model

if TYPE_CHECKING:
    from ._prices import ModelPrice
    from ._tracker import AIBinding, AICallTracker

R = TypeVar("R")


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
        "after_job",
    )

    after_job: Callable[[], None] | None

    def __init__(
        self, binding: AIBinding | None, tracker: AICallTracker, model: str | None
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
        # out, whose end runs it.
        self.after_job = None if binding is None else binding.after_job
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
            report_failure("wrapping a stream")
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
        usage = checked_usage(input_tokens, output_tokens, cache_read, cache_creation, reasoning)
        if self._b is not None and not self._done:
            self._add(usage)

    def set_model(self, model: str) -> None:
        """Set this call's model label (for ``model=None``, or to override the fixed one)."""
        if not isinstance(model, str) or not model:
            raise TypeError(f"model must be a non-empty string, got {model!r}")
        check_label_value("model", model)
        if self._b is not None and not self._done:
            self._model = model
            self._seek_model = False

    @property
    def model(self) -> str | None:
        """The model as known so far: set, from the call's argument, fixed, or seen."""
        return self._model or self._tracker.options.model or self._seen_model

    @property
    def operation(self) -> str:
        """The tracker's ``operation`` ("chat" unless given): informational, for logs and
        custom ``usage=`` extraction; no metric has an operation label."""
        return self._tracker.options.operation

    # -- the engine's side -----------------------------------------------------------------

    def success(self, result: Any) -> Any:
        if self._b is None:
            return result
        # A generator function's chunks came through item(); its return value is no stream.
        if self._items is None:
            try:
                handed = self._take(result, owner=True)
            except Exception:
                report_failure("wrapping a stream")  # recorded as a plain result below
                handed = None
            if handed is not None:
                self.after_job = None  # the stream's end runs it
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

    def after_job_async(self) -> Awaitable[None] | None:
        if self.after_job is not None and self._b is not None:
            waiter: Awaitable[None] | None = self._b.after_job_async()
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
        mode = self._tracker.options.stream
        kind = stream_kind(result, mode)
        if kind & MANAGER:
            return Manager(result, Stream(self, owner), mode)
        if kind:
            self._note(result)
            return wrap_stream(result, kind, Stream(self, owner))
        body = self._body(result)
        if body is None:
            return None
        kind = stream_kind(body, mode)
        if kind and not kind & MANAGER:
            return RawResponse(result, body, wrap_stream(body, kind, Stream(self, owner)))
        self._read(body)
        return None

    def _body(self, response: Any) -> Any:
        """The parsed body of a raw HTTP response, or None; never raises."""
        try:
            body = response_body(response)
        except Exception as exc:
            self._failed(response, exc)
            return None
        if body is not None:
            self._note(response)
        return body

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
                    stream.settle_open()
            series, name = self._series(b)
            usage = self._usage
            series.record(
                status, now - self._t0, self._first, usage, exc, self._seen, self._failure
            )
            prices: dict[str, ModelPrice] | None = b.inst._prices
            if prices is not None:
                series.price(prices, name, usage, status)
        finally:
            b.active_dec()

    def _series(self, b: AIBinding) -> tuple[ModelSeries, str]:
        """This call's series and the model name its price is looked up by."""
        model = self._model
        if model is None:
            fixed = self._tracker.options.model
            if b.static is not None and fixed is not None:
                return b.static, fixed
            model = self._seen_model or UNKNOWN_MODEL
        return b.models.series(self._tracker._label(model)), model


# -- streams -----------------------------------------------------------------------------------


class _Chunks:
    """The chunks of one stream, and the usage they reported.

    Providers stream running totals, so the reports on one response are merged
    (``Usage.latest``), never added. What a generator function yields may come from
    several responses (a tool-call round, then the answer): a report on another response
    (another id, or a complete response that is not the one reported so far) starts a new
    running total, and the finished ones add up (``done``). The sum is added to the call's
    total exactly once: when the stream ends, or when the call ends first.
    """

    __slots__ = ("call", "done", "open", "usage", "usage_id")

    def __init__(self, call: AICall, *, ends_call: bool = False) -> None:
        self.call = call
        self.open = True
        self.usage: Usage | None = None
        # The response the running total ``usage`` is about, when its reports said.
        self.usage_id: str | None = None
        self.done: Usage | None = None
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
                self._report(chunk, usage)
            if call._seek_model:
                call._see_model(chunk)
        except Exception as exc:
            call._note(chunk)
            call._failed(chunk, exc)

    def _report(self, chunk: Any, usage: Usage) -> None:
        """Merge a usage report into the running total of its response, or start the
        next response's (only reports are read for their id: one read per report, not
        per chunk)."""
        rid, complete = response_identity(chunk)
        latest = self.usage
        if latest is None:
            self.usage, self.usage_id = usage, rid
            return
        # An id-less report is a running total of the response so far (Anthropic's
        # message_delta after its message_start), unless it is a whole response.
        if complete if rid is None else rid != self.usage_id:
            self.done = latest if self.done is None else self.done + latest
            self.usage, self.usage_id = usage, rid
        else:
            self.usage = latest.latest(usage)

    def settle_open(self) -> None:
        """The call ends while this stream is open: what it reported so far counts."""
        self.settle()

    def settle(self) -> None:
        """Stop recording this stream and add its usage to the call: once, whichever of
        the stream's end and the call's end comes first, in whatever thread."""
        with _usage_lock:
            if not self.open:
                return
            self.open = False
            usage, done = self.usage, self.done
            if done is not None:
                usage = done if usage is None else done + usage
            if usage is not None:
                call = self.call
                call._usage = usage if call._usage is None else call._usage + usage


class Stream(_Chunks):
    """The recording side of one stream proxy: it reads each chunk on the way and ends the
    call exactly once. Recording runs outside the engine here, so every step is guarded:
    the caller sees the stream's own chunks and exceptions.

    A plain object beside the wrapt proxy: attribute reads on the proxy cost several times
    more, and the per-chunk path would make a few.
    """

    __slots__ = ("astep", "gone", "owner", "source", "step")

    def __init__(self, call: AICall, owner: bool) -> None:
        super().__init__(call, ends_call=owner)
        # owner: this stream ends the call (a decorated function's result); otherwise the
        # with-block it was recorded in does.
        self.owner = owner
        #: The stream itself and its own ``__next__`` / ``__anext__``; set by wrap_stream(),
        #: for a stream manager once it is entered.
        self.source: Any = None
        self.step: Callable[..., Any] = not_iterable
        self.astep: Callable[..., Awaitable[Any]] = not_iterable
        #: The stream, weakly, once its proxy was collected: the caller may still read it
        #: (``call.record_response(s).get_final_message()`` drops the proxy at once).
        self.gone: weakref.ref[Any] | None = None

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
        body = self.call._body(response)
        self.call._read(response if body is None else body)

    def end(
        self, exc: BaseException | None = None, *, closed: bool = False, abandoned: bool = False
    ) -> bool:
        """End once: exhausted (success), failed with ``exc``, ``closed`` or left before the
        end (cancelled, unless the stream's own record says it finished), or ``abandoned``.
        True when this ended the call: ``end_job`` then records ``exc`` and runs the
        post-job step."""
        if not self.open:
            return False
        try:
            snapshot = self._read_snapshot()
            if closed and snapshot is not None and stream_finished(snapshot):
                closed = False  # read to its end another way, then closed: a success
            self.settle()
        except Exception:
            report_failure("recording the usage of a stream")
        self.source = self.gone = None
        if not self.owner:
            return False
        call = self.call
        if call._b is not None:
            call.after_job = call._b.after_job
        if exc is not None:
            return True  # the engine's rule: error, or cancelled for CancelledError & co
        try:
            if abandoned:
                # Its duration runs to the last moment it was seen alive, not to collection.
                call._finish("cancelled", None, call._last)
            elif closed:
                call.cancel()
            else:
                call._finish("success", None)
        except Exception:
            report_failure("recording the end of a stream")
        return True

    def _read_snapshot(self) -> Any:
        """Read the response the stream helper accumulated, and return it (or None): it
        has the usage when the caller read the stream another way (``text_stream``,
        ``get_final_message()``, ``until_done()``), whose chunks never passed here."""
        source = self.source
        if source is None and self.gone is not None:
            source = self.gone()
        snapshot = None if source is None else stream_snapshot(source)
        if snapshot is not None:
            self.read(snapshot, timed=False)  # read at the end: no first token to time
        return snapshot

    def settle_open(self) -> None:
        if self.open:
            try:
                self._read_snapshot()
            except Exception:
                report_failure("recording the usage of a stream")
        self.settle()

    def end_sync(self, exc: BaseException | None = None, *, closed: bool = False) -> None:
        if self.end(exc, closed=closed):
            end_job(self.call, exc)

    async def end_async(self, exc: BaseException | None = None, *, closed: bool = False) -> None:
        if self.end(exc, closed=closed):
            await aend_job(self.call, exc)

    def abandon(self) -> None:
        """From the garbage collector, which may run while this thread holds a lock that
        recording takes (prometheus_client's, the model guard's): queue, record nothing."""
        if self.open:
            # Let the SDK stream go now, as collection would; while the caller still
            # holds it, its helper's snapshot is read when the call ends.
            self.step = self.astep = _collected
            source, self.source = self.source, None
            if source is not None:
                # Not weakly referenceable: nothing to read later.
                with contextlib.suppress(TypeError):
                    self.gone = weakref.ref(source)
            defer(self.record_abandoned)

    def record_abandoned(self) -> None:
        """At a safe point: end the call as cancelled, for the next push to carry."""
        try:
            if self.end(abandoned=True):
                b = self.call._b
                if b is not None:
                    b.inst.delivery.note_change()
        except Exception:
            report_failure("recording an abandoned stream")


def _collected(*args: Any) -> Any:
    raise RuntimeError("this stream was garbage collected")


# Guards the usage a call adds up from its streams, which may end in different threads.
_usage_lock = threading.Lock()


def record_abandoned_streams() -> None:
    """Record the streams garbage collected before their end, as cancelled calls.

    This happens by itself at the next AI call and before every push and scrape; call it
    to record them now, e.g. in a test after ``gc.collect()``. (It runs all of the engine's
    deferred work: ``run_deferred``.)
    """
    run_deferred()
