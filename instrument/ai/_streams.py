"""The recording side of an LLM call's streams: the chunks each stream reported, merged per
response, and the end of the call a stream brings (exhausted, closed, failed, abandoned)."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._engine import aend_job, defer, end_job, report_failure
from ._content import carries_content, response_identity, stream_finished, stream_snapshot
from ._outcome import Outcome, ToolCallsSeen, extract_outcome
from ._proxies import not_iterable
from ._usage import Tokens, add_tokens, latest_tokens

if TYPE_CHECKING:
    from ._call import AICall


class Chunks:
    """The chunks of one stream, and the usage they reported.

    Providers stream running totals, so the reports on one response are merged
    (``latest_tokens``), never added. What a generator function yields may come from
    several responses (a tool-call round, then the answer): a report on another response
    (another id, or a complete response that is not the one reported so far) starts a new
    running total, and the finished ones add up (``done``). The sum is added to the call's
    total exactly once: when the stream ends, or when the call ends first.
    """

    __slots__ = ("call", "done", "open", "outcomes", "tools_seen", "usage", "usage_id", "wholes")

    def __init__(self, call: AICall, *, ends_call: bool = False) -> None:
        self.call = call
        self.open = True
        self.usage: Tokens | None = None
        # The response the running total ``usage`` is about, when its reports said.
        self.usage_id: str | None = None
        self.done: Tokens | None = None
        # Finish reasons and tool calls: those of the chunks, by the response they are
        # about, and those of whole responses by id (a stream helper's snapshot, the
        # Responses API's completed event), which supersede the chunks of their own
        # response: they tell the same story again. Others' chunks (an agent's streamed
        # tool round before a whole answer) still count.
        self.outcomes: dict[str | None, Outcome] | None = None
        self.wholes: dict[object, Outcome] | None = None
        # The tool calls the chunks opened so far: a call counts once however many of its
        # deltas repeat its id.
        self.tools_seen = ToolCallsSeen()
        if not ends_call:  # the call may end first: it settles what is still open
            with usage_lock:
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
        if call._semconv is not None and timed:  # the gen_ai_* chunk timings
            call._semconv.chunk(call, now)
        call._last = now
        try:
            # The first token is the first chunk with generated content, not the first
            # event: a role-only chunk or a start event comes before the model wrote anything.
            if timed and call._first is None and carries_content(chunk):
                call._first = now - call._t0
            usage = call._tracker._extract(chunk)
            if usage is not None:
                self._report(chunk, usage)
            outcome, whole = extract_outcome(chunk, self.tools_seen)
            if outcome is not None:
                self._outcome(chunk, outcome, whole)
            if call._seek_model:
                call._see_model(chunk)
        except Exception as exc:
            call._note(chunk)
            call._failed(chunk, exc)

    def _outcome(self, chunk: Any, outcome: Outcome, whole: bool) -> None:
        # An id-less chunk (Anthropic's message_delta, content_block_start) is about the
        # response whose reports came last (its message_start's).
        rid = response_identity(chunk)[0]
        with usage_lock:
            if whole:
                wholes = self.wholes if self.wholes is not None else {}
                wholes[object() if rid is None else rid] = outcome
                self.wholes = wholes
            else:
                if rid is None:
                    rid = self.usage_id
                outcomes = self.outcomes if self.outcomes is not None else {}
                found = outcomes.get(rid)
                outcomes[rid] = outcome if found is None else found + outcome
                self.outcomes = outcomes

    def _report(self, chunk: Any, usage: Tokens) -> None:
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
            self.done = latest if self.done is None else add_tokens(self.done, latest)
            self.usage, self.usage_id = usage, rid
        else:
            self.usage = latest_tokens(latest, usage)

    def forget(self) -> None:
        """A new pass over the same chunks (an iterable iterated again) reads them again:
        what the earlier pass reported is replaced, never added."""
        with usage_lock:
            self.usage = self.usage_id = self.done = None
            self.outcomes = self.wholes = None
            self.tools_seen = ToolCallsSeen()

    def settle_open(self) -> None:
        """The call ends while this stream is open: what it reported so far counts."""
        self.settle()

    def settle(self) -> None:
        """Stop recording this stream and add its usage to the call: once, whichever of
        the stream's end and the call's end comes first, in whatever thread."""
        with usage_lock:
            if not self.open:
                return
            self.open = False
            usage, done = self.usage, self.done
            if done is not None:
                usage = done if usage is None else add_tokens(done, usage)
            call = self.call
            if usage is not None:
                call._usage = usage if call._usage is None else add_tokens(call._usage, usage)
            outcome = None
            wholes = self.wholes or {}
            # Chunks that never said which response they are about (nor did a report
            # before them) are taken to be about the whole one: a stream helper's snapshot
            # of a server that sends no chunk ids.
            superseded = set(wholes) | ({None} if wholes else set())
            for rid, part in (self.outcomes or {}).items():
                if rid not in superseded:
                    outcome = part if outcome is None else outcome + part
            for whole in wholes.values():
                outcome = whole if outcome is None else outcome + whole
            if outcome is not None:
                call._outcome = outcome if call._outcome is None else call._outcome + outcome


class Stream(Chunks):
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
            if self.owner:
                defer(self.record_abandoned)
            # Otherwise the call's own end (its with-block's, or its function's) settles it,
            # reading what the stream's helper accumulated until then: settling it here
            # would miss what the helper reads after the proxy was dropped
            # (``call.record_response(s).get_final_completion()``).

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
usage_lock = threading.Lock()
