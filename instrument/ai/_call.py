"""One LLM call in flight (:class:`AICall`, the with-block's handle): what it read, and its
end; the recording side of its streams is in ``_streams``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._engine import Probe, report_failure, run_deferred
from .._tracing import (
    MODULES,
    PROVIDER,
    QUIET,
    TRACE_MODULE,
    end_span,
    exemplar_labels,
    run_exemplar,
)
from ..metrics import check_label_value
from ._chat_dict import read_chat_dict
from ._content import response_body
from ._managers import Manager, RawResponse, stream_of, unread_raw_response
from ._outcome import Outcome, extract_outcome, headers_of, rate_limits, retry_after
from ._proxies import MANAGER, stream_kind, wrap_stream
from ._series import UNKNOWN_MODEL, ModelSeries, http_status
from ._spans import end_attributes, span_name, start_call_span
from ._streams import Chunks, Stream, usage_lock
from ._usage import (
    USAGE_READERS,
    ExtractorFailed,
    Tokens,
    add_tokens,
    as_usage,
    checked_tokens,
    read_tokens,
    response_model,
    usage_reader,
)

if TYPE_CHECKING:
    from ._semconv import ChunkTimes, GenAISemconv
    from ._tracker import AIBinding, AICallTracker

R = TypeVar("R")


# -- one call ----------------------------------------------------------------------------------


class AICall(Probe):
    """One LLM call in flight; in a with-block, the handle ``as call`` gives you.

    >>> with inst.track_ai_call("openai", "gpt-4o") as call:
    ...     call.record_response(http_post(...))
    """

    __slots__ = (
        "_attrs",
        "_b",
        "_done",
        "_failure",
        "_first",
        "_items",
        "_last",
        "_limits",
        "_model",
        "_outcome",
        "_retry",
        "_seek_model",
        "_seen",
        "_seen_model",
        "_semconv",
        "_streams",
        "_t0",
        "_tracker",
        "_usage",
        "after_job",
        "span",
    )

    after_job: Callable[[], None] | None

    def __init__(
        self, binding: AIBinding | None, tracker: AICallTracker, model: str | None
    ) -> None:
        self._b = binding
        self._tracker = tracker
        self._model = model
        self._seen_model: str | None = None
        # The gen_ai_* recorder (genai_semconv=True) or None; it needs the response's model.
        self._semconv: GenAISemconv | ChunkTimes | None = None if binding is None else binding.genai
        # Whether responses are still read for the model: one check per chunk.
        self._seek_model = binding is not None and (
            (binding.static is None and model is None) or self._semconv is not None
        )
        self._usage: Tokens | None = None
        self._outcome: Outcome | None = None  # finish reasons and tool calls
        self._limits: dict[str, float] | None = None  # rate-limit headroom, by limit
        self._retry: float | None = None  # a 429's retry-after, in seconds
        self._attrs: dict[str, Any] | None = None  # attribution values given
        # The streams whose usage the call's end adds, unless they ended first: those
        # recorded in a with-block, and a generator function's own yields (``_items``).
        self._streams: list[Chunks] | None = None
        self._items: Chunks | None = None
        self._first: float | None = None
        self._done = False
        # The type of the first response (or stream, or chunk) recorded, and how reading
        # one failed: for the one warning per provider and model, at the call's end.
        self._seen: type | None = None
        self._failure: str | None = None
        # The binding's (None when nothing is pushed, or while a stream proxy runs it).
        self.after_job = None if binding is None else binding.after_job
        self.span = None
        if binding is not None and binding.tracing and TRACE_MODULE in MODULES:
            try:  # _tracing.QUIET: no provider set since the last look, so no span
                quiet = MODULES[TRACE_MODULE] is QUIET.module and QUIET.globals[PROVIDER] is None
            except KeyError:  # unloaded meanwhile: no tracer
                quiet = True
            if not quiet:
                options = tracker.options
                self.span = start_call_span(
                    options.operation, options.provider, model or options.model
                )
                if self.span is not None:  # the responses' model, for the span
                    self._seek_model = True
        self._t0 = self._last = t0 = perf_counter()
        if binding is not None:
            if t0 > binding.handover.overdue:  # before the gauge's step, as in analysis
                binding.handover.hand_over()
            binding.active_step(1)

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
        usage = checked_tokens(input_tokens, output_tokens, cache_read, cache_creation, reasoning)
        if self._b is not None and not self._done:
            self._add(usage)

    def set_model(self, model: str) -> None:
        """Set this call's model label (for ``model=None``, or to override the fixed one)."""
        if not isinstance(model, str) or not model:
            raise TypeError(f"model must be a non-empty string, got {model!r}")
        check_label_value("model", model)
        if self._b is not None and not self._done:
            self._model = model
            self._seek_model = self._semconv is not None and self._seen_model is None

    def attribute(self, **values: str | bytes) -> None:
        """Set this call's attribution labels (declared by the Instrumentation's
        ``attribution=``), e.g. ``call.attribute(tenant="acme")``. A value is made a label
        value as a callable's is (bytes decoded, invalid UTF-8 escaped, a long one
        "other"); a label the Instrumentation does not declare is warned about once."""
        for label, value in values.items():
            if not isinstance(value, str | bytes):
                raise TypeError(
                    f"attribute({label}=...) takes a string, got {type(value).__name__}"
                )
        b = self._b
        if b is None or self._done:
            return
        declared = () if b.attribution is None else b.attribution.labels
        unknown = [label for label in values if label not in declared]
        if unknown:
            self._tracker.undeclared(unknown, declared)
        self._attrs = values if self._attrs is None else {**self._attrs, **values}

    @property
    def model(self) -> str | None:
        """The model as known so far: set, from the call's argument, fixed, or seen."""
        return self._model or self._tracker.options.model or self._seen_model

    @property
    def operation(self) -> str:
        """The tracker's ``operation`` ("chat" unless given): the ``operation`` label of
        ai_operations_total."""
        return self._tracker.options.operation

    # -- the engine's side -----------------------------------------------------------------

    def success(self, result: Any) -> Any:
        if self._b is None:
            return result
        # A generator function's chunks came through item(); its return value is no stream.
        # Nor is a result of a type already found plain (see _take): one set lookup.
        if self._items is None and type(result) not in self._tracker.plain_types:
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
            # The decorated function's own result: nothing else holds this call (no handle
            # is given out), so only a stream it recorded could write its totals meanwhile.
            self._read(result, alone=self._streams is None)
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
                items = self._items = Chunks(self)
            items.read(value)

    def after_job_async(self) -> Awaitable[None] | None:
        if self.after_job is not None and self._b is not None:
            step = self._b.after_job_async
            if step is not None:
                waiter: Awaitable[None] | None = step()
                return waiter
        return None

    def note_change(self) -> None:
        if self._b is not None:
            self._b.note_change()

    # -- recording -------------------------------------------------------------------------

    def _add(self, usage: Tokens) -> None:
        with usage_lock:  # streams of one call may end in different threads
            self._usage = usage if self._usage is None else add_tokens(self._usage, usage)

    def _take(self, result: Any, owner: bool) -> Any:
        """What the caller gets instead of ``result`` when it must be watched on: a stream
        or a stream manager in its proxy, or a raw HTTP response whose ``parse()`` gives a
        stream. None when ``result`` is read as it is (a raw response's body is read here).
        """
        watched = stream_of(result)
        if watched is not None and watched.call is self:
            return result  # a proxy this call gave out, recorded again: watched already
        mode = self._tracker.options.stream
        kind = stream_kind(result, mode)
        if kind & MANAGER:
            return Manager(result, Stream(self, owner), mode)
        if kind:
            self._note(result)
            self._headers(result)
            return wrap_stream(result, kind, Stream(self, owner))
        body = self._body(result)
        if body is None:
            if unread_raw_response(result):  # its awaited parse() may give a stream
                self._note(result)
                return RawResponse(result, Stream(self, owner), mode, ends=True)
            if getattr(type(result), "parse", None) is None:
                # Neither a stream nor a raw response, by its type alone (``stream_kind``
                # and ``is_raw_response`` read the class): every result of it is plain.
                remember_plain(self._tracker.plain_types, type(result))
            return None
        kind = stream_kind(body, mode)
        if kind and not kind & MANAGER:
            stream = Stream(self, owner)
            handed = wrap_stream(body, kind, stream)
            return RawResponse(result, stream, mode, ends=True, body=body, handed=handed)
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
            self._headers(response)
        return body

    def _headers(self, source: Any) -> None:
        """Note the rate-limit headroom the headers of ``source`` report, and the
        retry-after of a 429 (raised, or returned: an httpx response recorded as it is);
        never raises."""
        if type(source) is dict:
            return  # a parsed body: no headers (the usual case, one check)
        try:
            headers = headers_of(source)
            if headers is None:
                return
            limits = rate_limits(headers)
            retry = retry_after(headers) if http_status(source) == "429" else None
        except Exception:
            report_failure("reading rate-limit headers")
            return
        if limits:
            self._limits = limits if self._limits is None else {**self._limits, **limits}
        if retry is not None:
            self._retry = retry

    def _note(self, response: Any) -> None:
        if self._seen is None:
            self._seen = type(response)

    def _failed(self, response: Any, exc: BaseException) -> None:
        """Reading ``response`` raised: noted, to be reported once at the call's end. Only
        class names: what a foreign object's exception says may hold anything."""
        if self._failure is None:
            if isinstance(exc, ExtractorFailed):
                self._failure = f"{exc} on a {type(response).__name__}"
            else:
                self._failure = f"reading {type(response).__name__} raised {type(exc).__name__}"

    def _read(self, response: Any, alone: bool = False) -> None:
        """Read the usage (and the model) of a response; never raises. ``alone``: no other
        thread can write the call's totals meanwhile, so they are merged without the lock."""
        if response is None:
            return
        kind = type(response)
        if self._seen is None:  # _note, inlined: this runs for every response and chunk
            self._seen = kind
        if kind is not dict:  # a parsed body has no headers: one check
            self._headers(response)
        try:
            extract = self._tracker._extract
            # The usual response, a plain chat completion dict: read in one pass.
            read = read_chat_dict(response) if kind is dict and extract is read_tokens else None
            usage: Tokens | None
            if read is not None:
                usage, outcome = read
            else:
                if extract is read_tokens:  # its type's reader straight away: a call less
                    usage = (USAGE_READERS.get(kind) or usage_reader(response))(response)
                else:
                    usage = extract(response)
                outcome = extract_outcome(response)[0]
            # One lock for both (streams of one call may end in other threads), unless
            # alone; acquire/release rather than ``with``: half the cost.
            locked = not alone and (usage is not None or outcome is not None)
            if locked:
                usage_lock.acquire()
            try:
                if usage is not None:
                    had_usage = self._usage
                    self._usage = usage if had_usage is None else add_tokens(had_usage, usage)
                if outcome is not None:
                    had = self._outcome
                    self._outcome = outcome if had is None else had + outcome
            finally:
                if locked:
                    usage_lock.release()
            if self._seek_model:  # _see_model, inlined: gen_ai_* calls read it every time
                model = response.get("model") if read is not None else None
                if type(model) is not str or not model:  # response_model's first field
                    self._see_model(response)
                else:
                    self._seen_model, self._seek_model = model, False
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
            if self._streams is not None:  # the usual call had none: no lock taken
                with usage_lock:
                    streams, self._streams = self._streams, None
                # Still open at the call's end: what they reported so far counts.
                for stream in streams or ():
                    stream.settle_open()
            # The fixed model's series, bound at the binding: the usual case, no call.
            options = self._tracker.options
            if self._model is None and b.plain is not None:
                series, name = b.plain
            elif self._model is None and b.fixed_attributed is not None:
                series = b.fixed_attributed.series(self._attrs)
                name = b.fixed_attributed.model
            else:
                series, name = self._series(b)
            usage = self._usage
            series.record(
                status,
                now - self._t0,
                self._first,
                usage,
                exc,
                self._seen,
                self._failure,
                options.operation,
                self._outcome,
                # No span with tracing on: no tracer, so only a run's id (see analysis).
                run_exemplar() if self.span is None and b.tracing else exemplar_labels(self.span),
            )
            if self._semconv is not None:
                self._semconv.end(self, status, exc, now)
            if exc is not None:  # an SDK error keeps the response it failed with
                self._headers(exc)
            if self._limits is not None or self._retry is not None:
                series.headroom(self._limits or {}, self._retry)
            prices = b.inst.prices
            if prices is not None:
                series.price(prices, name, usage, status)
        finally:
            b.active_step(-1)
            if self.span is not None:
                self._end_span(status, exc)

    def _end_span(self, status: str, exc: BaseException | None) -> None:
        span = self.span
        try:
            # The model as the call ends: set_model() may have changed the one it started
            # with; unknown until the response, the response's names the span.
            requested = self._model or self._tracker.options.model
            named = requested or self._seen_model
            if named is not None:
                span.update_name(span_name(self._tracker.options.operation, named))
            attributes = end_attributes(
                self._seen_model, as_usage(self._usage), self._outcome, self._first
            )
            if requested is not None:
                attributes["gen_ai.request.model"] = requested
        except Exception:
            report_failure("ending a span")
            attributes = None
        end_span(span, exc, cancelled=status == "cancelled", attributes=attributes)

    def _series(self, b: AIBinding) -> tuple[ModelSeries, str]:
        """This call's series and the model name its price is looked up by, when it is not
        the fixed model's (which the binding holds: ``plain``, ``fixed_attributed``)."""
        model = self._model
        if model is None:
            model = self._seen_model or UNKNOWN_MODEL
        label = self._tracker._label(model)
        if b.attribution is not None:
            return b.models.attributed(label, b.attribution.values(self._attrs)), model
        return b.models.series(label), model


#: How many result types one tracker remembers as plain: a bound, as a program may make
#: types as it runs.
PLAIN_TYPES_KEPT = 64


def remember_plain(plain: set[type], cls: type) -> None:
    if len(plain) < PLAIN_TYPES_KEPT:
        plain.add(cls)


def record_abandoned_streams() -> None:
    """Record the streams garbage collected before their end, as cancelled calls.

    This happens by itself at the next AI call and before every push and scrape; call it
    to record them now, e.g. in a test after ``gc.collect()``. (It runs all of the engine's
    deferred work: ``run_deferred``.)
    """
    run_deferred()
