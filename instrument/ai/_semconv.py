"""The OpenTelemetry GenAI client metrics (``genai_semconv=True``): the four gen_ai_client_*
histograms, recorded beside the codomyrmex_* metrics at a call's end and on its stream's
chunks.

What goes in, per the conventions: the call's duration with ``error_type`` ("" on success,
the exception's class name on an error, "cancelled" for a call cancelled or a stream left
before its end, which did not complete and raised nothing we see); the billable tokens
when the call reported usage (input including cached input, output including reasoning;
nothing at all without usage, and no output for an embeddings call that reported none);
for streams, the time to the first chunk (any chunk: the conventions time the first chunk
received, where ai_time_to_first_token waits for generated content) and one gap per chunk
after the first. ``gen_ai_request_model`` is the requested model (the call's argument,
``set_model``, or the fixed one: "" when none is known), ``gen_ai_response_model`` the
model the first response named ("" when none did). An empty label is no label to
Prometheus, as an attribute left out is to OTel's exporter: the same series either way.

Model names are raw (``normalize_model`` is for the toolkit's own label) and bounded like
the toolkit's: at most ``max_models`` per provider, the rest ``other``.

A call's numbers go through per-thread cells (``_cells``), like the toolkit's own; in
multiprocess mode straight into the children. Chunk gaps are added up per call in the
histogram's own layout, so a stream costs the same memory whatever its length.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.samples import Sample

from .._cells import CellSeries, histogram_size
from .._engine import report_failure
from .._families import ReadHistogram, register_all
from ..delivery import multiprocess_enabled
from ..metrics import GENAI_METRICS, GENAI_SECONDS_BUCKETS, GENAI_TOKEN_BUCKETS, check_label_value
from ._series import OTHER_MODEL

if TYPE_CHECKING:
    from ._call import AICall
    from ._usage import Usage

__all__ = ["GenAIMetrics", "GenAISemconv"]

logger = logging.getLogger("instrument")

# The upper bounds as prometheus_client keeps them (+Inf last): bisect_left gives the
# bucket a value falls in (value <= bound), and a histogram's numbers in a cell are its
# sum, then one per bucket.
_SECONDS = [*GENAI_SECONDS_BUCKETS, float("inf")]
_TOKENS = [*GENAI_TOKEN_BUCKETS, float("inf")]


class _Histogram(ReadHistogram):
    """A gen_ai_* histogram exposes what OTel's exporter exposes for it: buckets, count and
    sum. prometheus_client adds a ``_created`` sample, which Prometheus scrapes as one more
    series of a name the exporter never shows."""

    def _child_samples(self) -> Iterable[Sample]:
        return tuple(s for s in super()._child_samples() if s.name != "_created")


class GenAIMetrics:
    """The gen_ai_client_* histograms on one registry, shared by every Instrumentation on
    it (their names carry no namespace). Use :meth:`get`."""

    token_usage: Histogram
    operation_duration: Histogram
    time_to_first_chunk: Histogram
    time_per_output_chunk: Histogram

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        collectors = {
            spec.attr: _Histogram(
                spec.suffix,
                spec.documentation,
                spec.labels,
                registry=None,
                buckets=spec.buckets or (),  # every one has its buckets
            )
            for spec in GENAI_METRICS
        }
        register_all(registry, list(collectors.values()))
        for attr, collector in collectors.items():
            setattr(self, attr, collector)

    @classmethod
    def get(cls, registry: CollectorRegistry) -> tuple[GenAIMetrics, bool]:
        """The families on ``registry``, and whether this call registered them."""
        with _shared_lock:
            existing: GenAIMetrics | None = vars(registry).get(_SHARED_ATTR)
            if existing is not None:
                return existing, False
            try:
                made = cls(registry)
            except ValueError as exc:
                raise ValueError(
                    f"genai_semconv=True: the gen_ai_client_* families clash with collectors "
                    f"already on this registry ({exc}), such as an OpenTelemetry "
                    "PrometheusMetricReader's; give the Instrumentation a registry of its own"
                ) from None
            vars(registry)[_SHARED_ATTR] = made
            return made, True

    def unregister(self) -> None:
        """Take the families off their registry (what a refused Instrumentation undoes)."""
        with _shared_lock:
            if vars(self.registry).get(_SHARED_ATTR) is self:
                del vars(self.registry)[_SHARED_ATTR]
            for spec in GENAI_METRICS:
                self.registry.unregister(getattr(self, spec.attr))


# On the registry, as metrics.Metrics keeps its own: freed with it.
_SHARED_ATTR = "_instrument_genai"
_shared_lock = threading.Lock()
# Chunks of one call may come from streams read in different threads.
_chunk_lock = threading.Lock()


class GenAISemconv:
    """What one Instrumentation with ``genai_semconv=True`` records the gen_ai_* metrics
    with. A call holds it (``AICall._semconv``) until its first chunk, then its own
    :class:`ChunkTimes`; both end the call with :meth:`end`."""

    def __init__(self, metrics: GenAIMetrics, max_models: int) -> None:
        self.metrics = metrics
        self.max_models = max_models
        self._providers: dict[str, _Provider] = {}
        self._lock = threading.Lock()

    def chunk(self, call: AICall, now: float) -> None:
        """The call's first chunk (at ``now``): from here on the call keeps its chunk times."""
        with _chunk_lock:
            state = call._semconv
            if state is self:
                call._semconv = ChunkTimes(self, now)
                return
        if state is not None:
            state.chunk(call, now)

    def end(
        self,
        call: AICall,
        status: str,
        exc: BaseException | None,
        now: float,
        first: float | None = None,
        gaps: list[float] | None = None,
    ) -> None:
        """Record a call's end; never raises."""
        try:
            options = call._tracker.options
            provider = self._providers.get(options.provider)
            if provider is None:
                provider = self._provider(options.provider)
            if status == "success":
                error = ""
            else:
                error = "cancelled" if exc is None else type(exc).__name__
            t0 = call._t0
            provider.record(
                (
                    options.operation,
                    provider.model(call._model or options.model or ""),
                    provider.model(call._seen_model or ""),
                    error,
                ),
                now - t0,
                call._usage,
                None if first is None else max(first - t0, 0.0),
                gaps,
            )
        except Exception:
            report_failure("recording the gen_ai metrics")

    def _provider(self, name: str) -> _Provider:
        with self._lock:
            found = self._providers.get(name)
            if found is None:
                found = self._providers[name] = _Provider(self, name)
            return found


class ChunkTimes:
    """One call's chunk times once its first chunk came: that chunk's time, the last one's,
    and the gaps between them as a histogram's numbers (sum, then one per bucket)."""

    __slots__ = ("first", "gaps", "last", "recorder")

    def __init__(self, recorder: GenAISemconv, now: float) -> None:
        self.recorder = recorder
        self.first = self.last = now
        self.gaps: list[float] | None = None

    def chunk(self, call: AICall, now: float) -> None:
        with _chunk_lock:
            # Taken before the lock: two threads' chunks may come in either order.
            gap = now - self.last if now > self.last else 0.0
            self.last = max(self.last, now)
            gaps = self.gaps
            if gaps is None:
                gaps = self.gaps = [0.0] * len(_SECONDS) + [0.0]
            gaps[0] += gap
            gaps[1 + bisect_left(_SECONDS, gap)] += 1

    def end(self, call: AICall, status: str, exc: BaseException | None, now: float) -> None:
        with _chunk_lock:
            gaps = self.gaps
        self.recorder.end(call, status, exc, now, self.first, gaps)


Key = tuple[str, str, str, str]  # operation, request model, response model, error type


class _Provider:
    """The gen_ai_* series of one provider, made on first use: per label set, the histogram
    children a call's end records together."""

    def __init__(self, recorder: GenAISemconv, provider: str) -> None:
        self._metrics = recorder.metrics
        self.provider = provider
        self._limit = recorder.max_models
        #: Model name -> label value: at most ``limit`` names, the rest ``other``.
        self._models: dict[str, str] = {"": ""}
        self._warned = False
        # Duration with 0, 1 or 2 token histograms; time to first chunk; chunk gaps.
        self._calls: dict[tuple[Key, int], Callable[[Any], None]] = {}
        self._firsts: dict[Key, Callable[[Any], None]] = {}
        self._gaps: dict[Key, Callable[[Any], None]] = {}
        self._lock = threading.Lock()

    def model(self, name: str) -> str:
        label = self._models.get(name)
        if label is not None:
            return label
        with self._lock:
            label = self._models.get(name)
            if label is None:
                if len(self._models) <= self._limit:  # "" is not one of them
                    label = self._models[name] = _label_value(name)
                else:
                    label = OTHER_MODEL
                    if not self._warned:
                        self._warned = True
                        logger.warning(
                            "instrument: gen_ai_* metrics of provider %r: more than %d models; "
                            "%r and any further ones are reported as %r. Raise max_models",
                            self.provider,
                            self._limit,
                            name,
                            OTHER_MODEL,
                        )
            return label

    def record(
        self,
        key: Key,
        seconds: float,
        usage: Usage | None,
        first: float | None,
        gaps: list[float] | None,
    ) -> None:
        duration = (0, seconds), (1 + bisect_left(_SECONDS, seconds), 1)
        amounts: tuple[tuple[int, float], ...] = duration
        tokens = 0
        if usage is not None:
            tokens = 1
            at = len(_SECONDS) + 1
            inputs = usage.input_tokens
            amounts += ((at, inputs), (at + 1 + bisect_left(_TOKENS, inputs), 1))
            outputs = usage.output_tokens
            if outputs or key[0] != "embeddings":
                tokens = 2
                at += len(_TOKENS) + 1
                amounts += ((at, outputs), (at + 1 + bisect_left(_TOKENS, outputs), 1))
        add = self._calls.get((key, tokens))
        if add is None:
            add = self._made(self._calls, (key, tokens), key, tokens)
        add(amounts)
        if first is not None:
            add = self._firsts.get(key)
            if add is None:
                add = self._made(self._firsts, key, key, "first")
            add(((0, first), (1 + bisect_left(_SECONDS, first), 1)))
        if gaps is not None:
            add = self._gaps.get(key)
            if add is None:
                add = self._made(self._gaps, key, key, "gaps")
            add(tuple((i, v) for i, v in enumerate(gaps) if v))

    def _made(self, table: dict[Any, Any], at: Any, key: Key, what: int | str) -> Any:
        with self._lock:
            found = table.get(at)
            if found is None:
                found = table[at] = self._adder(key, what)
            return found

    def _adder(self, key: Key, what: int | str) -> Callable[[Any], None]:
        """The children of ``key`` a call's end adds to at once: the duration and ``what``
        token histograms (0, 1: input, 2: input and output), or the "first" chunk's or the
        chunk "gaps" histogram."""
        m = self._metrics
        operation, request, response, error = key
        labels = (operation, self.provider, request, response)
        children: list[Any]
        if what == "first":
            children = [m.time_to_first_chunk.labels(*labels, error)]
        elif what == "gaps":
            children = [m.time_per_output_chunk.labels(*labels, error)]
        else:
            children = [m.operation_duration.labels(*labels, error)]
            kinds = ("input", "output")[: int(what)]
            children += [m.token_usage.labels(*labels, kind) for kind in kinds]
        histograms: dict[int, Any] = {}
        index = 0
        for child in children:
            histograms[index] = child
            index += histogram_size(child)
        if multiprocess_enabled():
            # A process's values must be in its files as it records them: no cells.
            targets: dict[int, Any] = {}
            for start, child in histograms.items():
                targets[start] = child._sum
                for i, bucket in enumerate(child._buckets):
                    targets[start + 1 + i] = bucket

            def add(amounts: tuple[tuple[int, float], ...]) -> None:
                for i, amount in amounts:
                    targets[i].inc(amount)

            return add
        return CellSeries(self, counters={}, gauges={}, histograms=histograms).add


def _label_value(name: str) -> str:
    """``name`` as a label value the exposition can encode (a lone surrogate, from a JSON
    "\\udc80" escape, would fail every later scrape): escaped when it is not."""
    try:
        return check_label_value("model", name)
    except ValueError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
