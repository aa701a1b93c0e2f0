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
multiprocess mode straight into the children. A chunk appends its time; the call folds
them into the gap histogram's own layout every few hundred chunks and at its end, so a
stream's memory stays bounded whatever its length.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

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
        self._providers: dict[str, _Guard] = {}
        #: By the call's own values (provider, operation, request and response model as
        #: given, error type): the usual lookup, one per call. Only names the guard let
        #: through are keys, so it stays bounded.
        self._by_call: dict[tuple[str, str, str, str, str], _Series] = {}
        #: By label values: what names folded into "other" share.
        self._by_labels: dict[tuple[str, str, str, str, str], _Series] = {}
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
            if status == "success":
                error = ""
            else:
                error = "cancelled" if exc is None else type(exc).__name__
            key = (
                options.provider,
                options.operation,
                call._model or options.model or "",
                call._seen_model or "",
                error,
            )
            series = self._by_call.get(key)
            if series is None:
                series = self._series(key)
            t0 = call._t0
            seconds = now - t0
            usage = call._usage
            if usage is None:
                add = series.calls[0] or series.made(0)
                add(((0, seconds), (1 + bisect_left(_SECONDS, seconds), 1)))
            else:
                # The duration observed by the cells' end (see _Series.ends), the input
                # tokens' bucket as the number it counts one into; one tuple per shape.
                inputs, outputs = usage[0], usage[1]  # Tokens: input, output first
                into = _INPUT + 1 + bisect_left(_TOKENS, inputs)
                if outputs or options.operation != "embeddings":
                    out = _OUTPUT + 1 + bisect_left(_TOKENS, outputs)
                    end = series.ends[2] or series.made_end(2)
                    end(into, seconds, ((_INPUT, inputs), (_OUTPUT, outputs), (out, 1)))
                else:
                    end = series.ends[1] or series.made_end(1)
                    end(into, seconds, ((_INPUT, inputs),))
            if first is not None:
                first = max(first - t0, 0.0)
                add = series.first or series.made("first")
                add(((0, first), (1 + bisect_left(_SECONDS, first), 1)))
            if gaps is not None:
                add = series.gaps or series.made("gaps")
                add(tuple((i, v) for i, v in enumerate(gaps) if v))
        except Exception:
            report_failure("recording the gen_ai metrics")

    def _series(self, key: tuple[str, str, str, str, str]) -> _Series:
        provider, operation, request, response, error = key
        with self._lock:
            guard = self._providers.get(provider)
            if guard is None:
                guard = self._providers[provider] = _Guard(provider, self.max_models)
            labels = (operation, provider, guard.model(request), guard.model(response), error)
            series = self._by_labels.get(labels)
            if series is None:
                series = self._by_labels[labels] = _Series(self, labels)
            if guard.admitted(request) and guard.admitted(response):
                self._by_call[key] = series
            return series


# Where a call's numbers go (``_Series.calls``): the duration's sum and buckets, then the
# input tokens' sum and buckets, then the output tokens'.
_INPUT = 1 + len(_SECONDS)
_OUTPUT = _INPUT + 1 + len(_TOKENS)


class ChunkTimes:
    """One call's chunk times once its first chunk came: that chunk's time, then the times
    of the chunks after it, folded every :data:`_FOLD_AT` chunks (and at the end) into the
    gaps between them as a histogram's numbers (sum, then one per bucket), so a stream's
    memory stays bounded whatever its length.

    A chunk only appends its time (one list append is atomic): streams of one call read in
    two threads lose none, and the per-chunk cost is an append. The fold takes the lock,
    reads the times in order and deletes what it read; a time appended meanwhile waits for
    the next fold."""

    __slots__ = ("first", "gaps", "last", "recorder", "times")

    def __init__(self, recorder: GenAISemconv, now: float) -> None:
        self.recorder = recorder
        self.first = self.last = now
        self.times: list[float] = []
        self.gaps: list[float] | None = None

    def chunk(self, call: AICall, now: float) -> None:
        times = self.times
        times.append(now)
        if len(times) >= _FOLD_AT:
            self.fold()

    def fold(self) -> list[float] | None:
        """Fold the times so far into the gaps; the gaps (None before any)."""
        with _chunk_lock:
            times = self.times
            read = len(times)
            # Sorted: two threads' chunks may have appended in either order.
            batch = sorted(times[:read])
            del times[:read]
            if not batch:
                return self.gaps
            gaps = self.gaps
            if gaps is None:
                gaps = self.gaps = [0.0] * (1 + len(_SECONDS))
            last = self.last
            total = 0.0
            for now in batch:
                if now > last:
                    gap = now - last
                    last = now
                else:
                    gap = 0.0
                total += gap
                gaps[1 + bisect_left(_SECONDS, gap)] += 1
            gaps[0] += total
            self.last = last
            return gaps

    def end(self, call: AICall, status: str, exc: BaseException | None, now: float) -> None:
        gaps = self.fold()
        self.recorder.end(call, status, exc, now, self.first, None if gaps is None else gaps[:])


#: Chunk times a stream keeps before folding them into its gaps.
_FOLD_AT = 256


Adder = Callable[[tuple[tuple[int, float], ...]], None]
#: ``end(index, seconds, amounts)``, :meth:`CellSeries.end`'s shape: ``seconds`` into the
#: duration histogram (its sum and bucket), one into number ``index``, then the amounts.
Ender = Callable[[int, float, tuple[tuple[int, float], ...]], None]


class _Series:
    """The gen_ai_* children of one label set (operation, provider, request and response
    model, error type), made on first use, each group recorded at once: the duration with
    0, 1 or 2 token histograms (``calls``), the first chunk's, the chunk gaps'. A group
    with token histograms is also recorded the way a job's end is (``ends``): the duration
    observed as the cells observe a job's, its bucket found by them, and one counted into
    the input tokens' bucket, the one number every such call adds one to."""

    __slots__ = ("__weakref__", "_lock", "_metrics", "calls", "ends", "first", "gaps", "labels")

    def __init__(self, recorder: GenAISemconv, labels: tuple[str, str, str, str, str]) -> None:
        self._metrics = recorder.metrics
        self.labels = labels
        self.calls: list[Adder | None] = [None, None, None]
        self.ends: list[Ender | None] = [None, None, None]
        self.first: Adder | None = None
        self.gaps: Adder | None = None
        self._lock = threading.Lock()

    def made(self, what: int | str) -> Adder:
        with self._lock:
            found = self.calls[what] if isinstance(what, int) else getattr(self, what)
            if found is None:
                found, end = self._adder(what)
                if isinstance(what, int):
                    self.ends[what] = end
                    self.calls[what] = found
                else:
                    setattr(self, what, found)
            return found

    def made_end(self, tokens: int) -> Ender:
        self.made(tokens)
        return cast(Ender, self.ends[tokens])  # made with its adder

    def _adder(self, what: int | str) -> tuple[Adder, Ender]:
        m = self._metrics
        *labels, error = self.labels
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

            bounds = list(children[0]._upper_bounds)

            def end(index: int, seconds: float, amounts: tuple[tuple[int, float], ...]) -> None:
                add(((0, seconds), (1 + bisect_left(bounds, seconds), 1), (index, 1), *amounts))

            return add, end
        cells = CellSeries(self, counters={}, gauges={}, histograms=histograms, histogram=0)
        return cells.add, cells.end


class _Guard:
    """The model names of one provider's gen_ai_* series: at most ``limit``, the rest
    ``other`` (one warning). Called under the recorder's lock."""

    def __init__(self, provider: str, limit: int) -> None:
        self.provider = provider
        self.limit = limit
        #: Name -> label value ("" is no name, and no label to Prometheus).
        self._models: dict[str, str] = {"": ""}
        self._warned = False

    def admitted(self, name: str) -> bool:
        return name in self._models

    def model(self, name: str) -> str:
        label = self._models.get(name)
        if label is not None:
            return label
        if len(self._models) <= self.limit:  # "" is not one of them
            label = self._models[name] = _label_value(name)
            return label
        if not self._warned:
            self._warned = True
            logger.warning(
                "instrument: gen_ai_* metrics of provider %r: more than %d models; %r and any "
                "further ones are reported as %r. Raise max_models",
                self.provider,
                self.limit,
                name,
                OTHER_MODEL,
            )
        return OTHER_MODEL


def _label_value(name: str) -> str:
    """``name`` as a label value the exposition can encode (a lone surrogate, from a JSON
    "\\udc80" escape, would fail every later scrape): escaped when it is not."""
    try:
        return check_label_value("model", name)
    except ValueError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
