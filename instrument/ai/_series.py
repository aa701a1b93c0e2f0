"""The label children of AI calls, per (provider, model), and the guard on how many models
one provider may have: at most ``max_models`` get their own series, the rest ``other``."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._cells import CellSeries
from ..delivery import multiprocess_enabled
from ..metrics import ATTRIBUTED, check_label_value
from ._fields import attribute

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation
    from ..metrics import Metrics
    from ._outcome import Outcome
    from ._prices import ModelPrice
    from ._usage import Usage

logger = logging.getLogger("instrument")

#: The model label of calls whose model is neither fixed, nor an argument, nor in the response.
UNKNOWN_MODEL = "unknown"
#: The model label of models beyond ``max_models`` for one provider.
OTHER_MODEL = "other"
_STATUSES = ("success", "error", "cancelled")
# Where a call's numbers go in a model's cells: one counter per status, the input and
# output tokens, then the duration histogram's sum and buckets.
_STATUS_INDEX = {status: i for i, status in enumerate(_STATUSES)}
_INPUT, _OUTPUT, _DURATION = 3, 4, 5


def http_status(exc: BaseException) -> str:
    """The HTTP error status an exception carries (``status_code``, ``response.status_code``,
    aiohttp's ``status``, google-genai's ``code``, the first 4xx or 5xx in that order), or
    "" when it has none. A stream that fails after its 200 raises with that 200 attached
    (Anthropic's error event): no HTTP error, unless the error says its own (Gemini's)."""
    for path in _STATUS_PATHS:
        value: Any = exc
        for name in path:
            value = attribute(value, name)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return str(value)
    return ""


# Read lazily, first valid wins: aiohttp's deprecated ``code`` warns when merely read.
_STATUS_PATHS = (("status_code",), ("response", "status_code"), ("status",), ("code",))


class ModelSeries:
    """The label children of one (provider, model). The ones every call touches are bound
    here; the rest on first use, so a series appears only once it has something to say."""

    __slots__ = (
        "__weakref__",
        "_cells",
        "_lazy",
        "_metrics",
        "_operations",
        "_warned",
        "attrs",
        "calls",
        "inc_input",
        "inc_output",
        "model",
        "observe",
        "provider",
    )

    def __init__(
        self, metrics: Metrics, provider: str, model: str, attrs: tuple[str, ...] = ()
    ) -> None:
        self._metrics = metrics
        self.provider = provider
        self.model = model
        #: The attribution labels' values (the money metrics' last labels): "" when the
        #: call gave none.
        self.attrs = attrs = attrs or ("",) * len(metrics.attribution)
        calls = [metrics.ai_api_calls.labels(provider, model, s, *attrs) for s in _STATUSES]
        duration = metrics.ai_call_duration.labels(provider, model)
        tokens = [
            metrics.ai_tokens.labels(provider, model, kind, *attrs) for kind in ("input", "output")
        ]
        #: The children every call touches, through per-thread cells (``_cells``); None in
        #: prometheus_client's multiprocess mode, where they are updated directly.
        self._cells: CellSeries | None = None
        if not multiprocess_enabled():
            self._cells = CellSeries(
                self,
                counters={**dict(enumerate(calls)), _INPUT: tokens[0], _OUTPUT: tokens[1]},
                gauges={},
                histograms={_DURATION: duration},
                histogram=_DURATION,
            )
        self.calls = {s: child.inc for s, child in zip(_STATUSES, calls, strict=True)}
        self.observe = duration.observe
        self.inc_input, self.inc_output = tokens[0].inc, tokens[1].inc
        # Bound now, so the series reads 0 from the first call: usage coverage (1 - missing
        # / calls) is then a number for a model whose every call reported usage.
        self._lazy: dict[tuple[str, ...], Any] = {
            ("ai_usage_missing",): metrics.ai_usage_missing.labels(provider, model)
        }
        self._warned: set[str] = set()
        #: Per operation, what a call's end adds to ai_operations_total: the status
        #: counters through cells like the calls', or their ``inc``s in multiprocess mode.
        self._operations: dict[str, Any] = {}

    def _child(self, attr: str, *labels: str) -> Any:
        key = (attr, *labels)
        child = self._lazy.get(key)
        if child is None:
            metric = getattr(self._metrics, attr)
            if attr in ATTRIBUTED:
                labels += self.attrs
            child = self._lazy[key] = metric.labels(self.provider, self.model, *labels)
        return child

    def record(
        self,
        status: str,
        seconds: float,
        first_token: float | None,
        usage: Usage | None,
        exc: BaseException | None,
        seen: str | None,
        failure: str | None,
        exemplar: dict[str, str] | None = None,
    ) -> None:
        """One call's end: its ``status``, duration, time to first token, tokens (or that
        they are missing) and error. ``seen``: the type of the first response recorded;
        ``failure``: how reading one failed, warned about once; ``exemplar``: the labels
        its duration, time to first token and tokens link to (a trace, a run)."""
        cells = self._cells
        if cells is None:
            self.observe(seconds)
            self.calls[status]()
            if usage is not None:
                self.tokens(usage)
        elif usage is None:
            cells.end(_STATUS_INDEX[status], seconds, (), exemplar)
        else:
            cells.end(
                _STATUS_INDEX[status],
                seconds,
                ((_INPUT, usage.input_tokens), (_OUTPUT, usage.output_tokens)),
                exemplar,
            )
            if usage.cache_read or usage.cache_creation or usage.reasoning:
                self._details(usage)
        if first_token is not None:
            self._child("ai_time_to_first_token").observe(first_token, exemplar)
        if usage is None and status != "error":
            self._usage_missing(status, seen, failure)
        if failure is not None and (usage is not None or status != "success"):
            self.warn_once("usage", "%s; its usage is not read", failure)
        if exc is not None:
            self._child("ai_api_errors", type(exc).__name__, http_status(exc)).inc()

    def outcome(self, operation: str, status: str, outcome: Outcome | None) -> None:
        """What a call's end adds beside :meth:`record`: its operation, the finish reasons
        and tool calls its responses reported."""
        ops = self._operations.get(operation)
        if ops is None:
            ops = self._operations[operation] = self._operation(operation)
        if isinstance(ops, CellSeries):
            ops.add(((_STATUS_INDEX[status], 1),))
        else:
            ops[status]()
        if outcome is not None:
            lazy = self._lazy
            for reason in outcome.finish_reasons:
                child = lazy.get(("ai_finish_reasons", reason))  # _child's key, looked up inline
                if child is None:
                    child = self._child("ai_finish_reasons", reason)
                child.inc()
            if outcome.tool_calls:
                self._child("ai_tool_calls").inc(outcome.tool_calls)

    def headroom(self, limits: Mapping[str, float], retry_after: float | None) -> None:
        """The rate-limit headroom a call's responses (or error) reported, and the
        retry-after of a 429."""
        for limit, remaining in limits.items():
            self._child("ai_rate_limit_remaining", limit).set(remaining)
        if retry_after is not None:
            self._child("ai_retry_after").set(retry_after)

    def _operation(self, operation: str) -> Any:
        children = [
            self._metrics.ai_operations.labels(self.provider, self.model, operation, s)
            for s in _STATUSES
        ]
        if self._cells is None:
            return {s: child.inc for s, child in zip(_STATUSES, children, strict=True)}
        return CellSeries(self, counters=dict(enumerate(children)), gauges={}, histograms={})

    def tokens(self, usage: Usage) -> None:
        if usage.input_tokens:
            self.inc_input(usage.input_tokens)
        if usage.output_tokens:
            self.inc_output(usage.output_tokens)
        self._details(usage)

    def _details(self, usage: Usage) -> None:
        if not (usage.cache_read or usage.cache_creation or usage.reasoning):
            return  # the usual case: one check
        for detail in ("cache_read", "cache_creation", "reasoning"):
            count = getattr(usage, detail)
            if count:
                self._child("ai_token_details", detail).inc(count)

    def _usage_missing(self, status: str, seen: str | None, failure: str | None) -> None:
        """A call that ran and ended without usage: counted, so a silent 0 shows."""
        self._child("ai_usage_missing").inc()
        if status != "success":
            return  # left before the end: the usage, sent last, never came
        what = f"its response ({seen})" if seen is not None else "no response was recorded"
        self.warn_once(
            "usage",
            "a call ended without readable usage in %s%s, so its tokens are not counted "
            "(%s counts such calls). Pass usage= to track_ai_call for a shape of your own; "
            "OpenAI-compatible streams report usage only with "
            'stream_options={"include_usage": True}',
            what,
            "" if failure is None else f"; {failure}",
            self._metrics.names()["ai_usage_missing"],
        )

    def price(
        self, prices: Mapping[str, ModelPrice], model: str, usage: Usage | None, status: str
    ) -> None:
        """Count the cost of a call to ``model`` (the name its price is looked up by), or
        count it as unpriced."""
        if usage is None:
            # A failed request is usually not billed: only calls that ran count as unpriced.
            if status != "error":
                self._child("ai_unpriced_calls").inc()
            return
        price = prices.get(f"{self.provider}/{model}") or prices.get(model)
        if price is None and self.model != model:
            price = prices.get(self.model)
        dollars = None if price is None else price.cost(usage)
        if dollars is None:
            self._child("ai_unpriced_calls").inc()
        else:
            self._child("ai_cost").inc(dollars)

    def warn_once(self, what: str, message: str, *args: Any) -> None:
        """A warning the first time ``what`` happens to this provider and model: it would
        otherwise repeat on every call (or chunk) of the same shape."""
        if what in self._warned:
            return
        self._warned.add(what)
        logger.warning("instrument: %s/%s: " + message, self.provider, self.model, *args)


class ProviderModels:
    """The model series of one provider, at most ``limit`` of them, then ``other``."""

    def __init__(self, metrics: Metrics, provider: str, limit: int) -> None:
        self._metrics = metrics
        self.provider = provider
        self.limit = limit
        self._series: dict[str, ModelSeries] = {}
        self._other: ModelSeries | None = None
        self._lock = threading.Lock()
        #: The series of (model label, attribution values) other than all "".
        self._attributed: dict[tuple[str, tuple[str, ...]], ModelSeries] = {}

    def attributed(self, model: str, attrs: tuple[str, ...]) -> ModelSeries:
        """The series of ``model`` (through the model guard) for these attribution values."""
        base = self.series(model)
        if attrs == base.attrs:
            return base
        key = (base.model, attrs)
        found = self._attributed.get(key)
        if found is None:
            with self._lock:
                found = self._attributed.get(key)
                if found is None:
                    found = ModelSeries(self._metrics, self.provider, base.model, attrs)
                    self._attributed[key] = found
        return found

    def series(self, model: str) -> ModelSeries:
        found = self._series.get(model)
        if found is not None:
            return found
        with self._lock:
            found = self._series.get(model)
            if found is not None:
                return found
            if len(self._series) < self.limit:
                label = self._label_value(model)
                found = self._series[model] = ModelSeries(self._metrics, self.provider, label)
                return found
            if self._other is None:
                logger.warning(
                    "instrument: provider %r has more than %d models; %r and any further "
                    "ones are reported as model=%r. Raise max_models, or pass "
                    "normalize_model= to fold model versions together",
                    self.provider,
                    self.limit,
                    model,
                    OTHER_MODEL,
                )
                self._other = ModelSeries(self._metrics, self.provider, OTHER_MODEL)
            return self._other

    def _label_value(self, model: str) -> str:
        """``model`` as a label value the exposition can encode. A name seen while a call
        runs (its argument, the response) cannot be refused; one holding a lone surrogate
        (a JSON "\\udc80" escape) would fail every later scrape and push of the registry,
        so it is reported escaped."""
        try:
            return check_label_value("model", model)
        except ValueError:
            label = model.encode("utf-8", "backslashreplace").decode("utf-8")
            logger.warning(
                "instrument: provider %r: the model name %r is not valid UTF-8; it is "
                "reported as model=%r",
                self.provider,
                model,
                label,
            )
            return label


# The model guard is per Instrumentation and provider, shared by all its trackers.
_guards: weakref.WeakKeyDictionary[Instrumentation, dict[str, ProviderModels]] = (
    weakref.WeakKeyDictionary()
)
_guards_lock = threading.Lock()


def provider_models(inst: Instrumentation, provider: str) -> ProviderModels:
    with _guards_lock:
        by_provider = _guards.setdefault(inst, {})
        models = by_provider.get(provider)
        if models is None:
            models = by_provider[provider] = ProviderModels(inst.metrics, provider, inst.max_models)
        return models


class AttributionGuard:
    """The values each attribution label has had on one Instrumentation: at most ``limit``
    per label, then "other" (one warning per label)."""

    def __init__(self, labels: tuple[str, ...], limit: int) -> None:
        self.labels = labels
        self.limit = limit
        self._seen: dict[str, set[str]] = {label: set() for label in labels}
        self._lock = threading.Lock()

    def values(self, given: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The label values of a call that gave ``given``: "" where it gave none."""
        if not given:
            return ("",) * len(self.labels)
        return tuple(self._value(label, given.get(label)) for label in self.labels)

    def _value(self, label: str, value: Any) -> str:
        if value is None:
            return ""
        text = value if isinstance(value, str) else str(value)
        try:
            check_label_value(label, text)
        except ValueError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        if text == "":
            return text
        seen = self._seen[label]
        if text in seen:
            return text
        with self._lock:
            if len(seen) < self.limit:
                seen.add(text)
                return text
            if OTHER_MODEL not in seen:
                seen.add(OTHER_MODEL)  # marks the warning as given
                logger.warning(
                    "instrument: attribution label %r has more than %d values; %r and any "
                    "further ones are reported as %s=%r. Raise max_attribution_values, or "
                    "map the values to a bounded set",
                    label,
                    self.limit,
                    text,
                    label,
                    OTHER_MODEL,
                )
        return OTHER_MODEL


_attribution_guards: weakref.WeakKeyDictionary[Instrumentation, AttributionGuard] = (
    weakref.WeakKeyDictionary()
)


def attribution_guard(inst: Instrumentation) -> AttributionGuard | None:
    """The attribution guard of ``inst``, or None when it declares no attribution."""
    if not inst.attribution:
        return None
    with _guards_lock:
        guard = _attribution_guards.get(inst)
        if guard is None:
            guard = AttributionGuard(inst.attribution, inst.max_attribution_values)
            _attribution_guards[inst] = guard
        return guard
