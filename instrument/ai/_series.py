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
from ._outcome import KNOWN_REASONS
from ._usage import Usage

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation
    from ..metrics import Metrics
    from ._outcome import Outcome
    from ._prices import ModelPrice
    from ._usage import Tokens

logger = logging.getLogger("instrument")

#: The model label of calls whose model is neither fixed, nor an argument, nor in the response.
UNKNOWN_MODEL = "unknown"
#: The model label of models beyond ``max_models`` for one provider.
OTHER_MODEL = "other"
_STATUSES = ("success", "error", "cancelled")
# Where a call's numbers go in a model's cells: one counter per status, the input and
# output tokens, then the duration histogram's sum and buckets.
_STATUS_INDEX = {status: i for i, status in enumerate(_STATUSES)}
_INPUT, _OUTPUT, _MISSING, _DURATION = 3, 4, 5, 6
_MISSING_PAIR = (_MISSING, 1)
#: Numbers each cell keeps free for the counters a model's calls name as they come:
#: ai_operations_total per operation (3 each), ai_finish_reasons_total per reason, and
#: ai_tool_calls_total. Past them, a counter is incremented directly (as exact).
_SPARE = 24
#: The key of the tool calls' counter beside the finish reasons'.
_TOOL_CALLS = "\x00tool calls"
#: ai_token_details' ``detail`` of Tokens' last three counts, in their order.
_DETAILS = ("cache_read", "cache_creation", "reasoning")

#: How a call's end counts into one counter: ``((index, 1),)`` of the model's cells, or
#: the counter child itself when the cells had no spare number left for it.
Counted = Any


def _counted(found: Counted, amount: float) -> tuple[tuple[int, float], ...]:
    """The numbers to add for ``amount`` counted into ``found``; a counter outside the
    cells is incremented here, and adds none."""
    if type(found) is tuple:
        return found if amount == 1 else ((found[0][0], amount),)
    found.inc(amount)
    return ()


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
        "_reasons",
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
        # Bound now, so the series reads 0 from the first call: usage coverage (1 - missing
        # / calls) is then a number for a model whose every call reported usage.
        missing = metrics.ai_usage_missing.labels(provider, model)
        #: The children every call touches, through per-thread cells (``_cells``); None in
        #: prometheus_client's multiprocess mode, where they are updated directly.
        self._cells: CellSeries | None = None
        if not multiprocess_enabled():
            self._cells = CellSeries(
                self,
                counters={
                    **dict(enumerate(calls)),
                    _INPUT: tokens[0],
                    _OUTPUT: tokens[1],
                    _MISSING: missing,
                },
                gauges={},
                histograms={_DURATION: duration},
                histogram=_DURATION,
                spare=_SPARE,
            )
        self.calls = {s: child.inc for s, child in zip(_STATUSES, calls, strict=True)}
        self.observe = duration.observe
        self.inc_input, self.inc_output = tokens[0].inc, tokens[1].inc
        self._lazy: dict[tuple[str, ...], Any] = {("ai_usage_missing",): missing}
        self._warned: set[str] = set()
        #: Per operation, how a call's end counts into ai_operations_total, by status
        #: index; per finish reason (and ``_TOOL_CALLS``), into its counter (see Counted).
        self._operations: dict[str, tuple[Counted, ...]] = {}
        self._reasons: dict[str, Counted] = {}

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
        usage: Tokens | None,
        exc: BaseException | None,
        seen: type | None,
        failure: str | None,
        operation: str,
        outcome: Outcome | None,
        exemplar: dict[str, str] | None = None,
    ) -> None:
        """One call's end: its ``status``, duration, time to first token, tokens (or that
        they are missing), error, ``operation`` and the finish reasons and tool calls its
        responses reported. ``seen``: the type of the first response recorded;
        ``failure``: how reading one failed, warned about once; ``exemplar``: the labels
        its duration, time to first token and tokens link to (a trace, a run)."""
        cells = self._cells
        if cells is None:
            self._record_direct(status, seconds, usage, operation, outcome)
        else:
            # One write into this thread's cell for everything a call's end counts.
            index = _STATUS_INDEX[status]
            counted = (self._operations.get(operation) or self._operation(operation))[index]
            if type(counted) is not tuple:
                counted = _counted(counted, 1)
            if outcome is not None:
                # The usual response, one reason whose slot is known and no tool call:
                # its slot straight away (what _outcome looks up first, without the call).
                reasons = outcome.finish_reasons
                found = (
                    self._reasons.get(reasons[0])
                    if len(reasons) == 1 and not outcome.tool_calls
                    else None
                )
                counted += found if type(found) is tuple else self._outcome(outcome)
            if usage is not None:
                tokens = ((_INPUT, usage[0]), (_OUTPUT, usage[1]))  # Tokens: input, output
                cells.end(index, seconds, tokens + counted, exemplar)
            elif status != "error":
                cells.end(index, seconds, (_MISSING_PAIR, *counted), exemplar)
            else:
                cells.end(index, seconds, counted, exemplar)
        if usage is not None:
            if usage[2] or usage[3] or usage[4]:  # cache_read, cache_creation, reasoning
                self._details(usage)
        elif status == "success":
            self._usage_missing(seen, failure)
        if first_token is not None:
            self._child("ai_time_to_first_token").observe(first_token, exemplar)
        if failure is not None and (usage is not None or status != "success"):
            self.warn_once("usage", "%s; its usage is not read", failure)
        if exc is not None:
            self._child("ai_api_errors", type(exc).__name__, http_status(exc)).inc()

    def _record_direct(
        self,
        status: str,
        seconds: float,
        usage: Tokens | None,
        operation: str,
        outcome: Outcome | None,
    ) -> None:
        """:meth:`record`'s counters in multiprocess mode: each child updated directly."""
        self.observe(seconds)
        self.calls[status]()
        if usage is not None:
            if usage[0]:
                self.inc_input(usage[0])
            if usage[1]:
                self.inc_output(usage[1])
        elif status != "error":
            self._child("ai_usage_missing").inc()
        self._child("ai_operations", operation, status).inc()
        if outcome is not None:
            for reason in outcome.finish_reasons:
                label = reason_guard(self._metrics, self.provider).label(reason)
                self._child("ai_finish_reasons", label).inc()
            if outcome.tool_calls:
                self._child("ai_tool_calls").inc(outcome.tool_calls)

    def _operation(self, operation: str) -> tuple[Counted, ...]:
        """What a call's end of ``operation`` adds to ai_operations_total, by status
        index (looked up once per operation)."""
        counted = tuple(
            self._slot(self._child("ai_operations", operation, status)) for status in _STATUSES
        )
        self._operations[operation] = counted
        return counted

    def _outcome(self, outcome: Outcome) -> tuple[tuple[int, float], ...]:
        """The numbers a call's finish reasons and tool calls add (looked up once per
        reason; :meth:`record` takes the usual response's one known reason itself)."""
        reasons = self._reasons
        tools = outcome.tool_calls
        finish_reasons = outcome.finish_reasons
        counted: tuple[tuple[int, float], ...] = ()
        for reason in finish_reasons:
            found = reasons.get(reason)
            if found is None:
                found = self._reason_slot(reason)
            counted += _counted(found, 1)
        if tools:
            found = reasons.get(_TOOL_CALLS)
            if found is None:
                found = reasons[_TOOL_CALLS] = self._slot(self._child("ai_tool_calls"))
            counted += _counted(found, tools)
        return counted

    def _reason_slot(self, reason: str) -> Counted:
        """The slot of a reason not looked up before, through the provider's bound on
        reasons: only the reasons it lets through are remembered by name, so a server
        sending a new reason per call grows nothing but the count of "other"."""
        label = reason_guard(self._metrics, self.provider).label(reason)
        found = self._reasons.get(label)
        if found is None:
            found = self._reasons[label] = self._slot(self._child("ai_finish_reasons", label))
        return found

    def _slot(self, child: Any) -> Counted:
        """``((index, 1),)``: ``child`` counted through a spare number of the cells; or,
        when none is left, ``child`` itself, then incremented directly (``_counted``)."""
        assert self._cells is not None
        index = self._cells.counter(child)
        return child if index is None else ((index, 1),)

    def headroom(self, limits: Mapping[str, float], retry_after: float | None) -> None:
        """The rate-limit headroom a call's responses (or error) reported, and the
        retry-after of a 429."""
        for limit, remaining in limits.items():
            self._child("ai_rate_limit_remaining", limit).set(remaining)
        if retry_after is not None:
            self._child("ai_retry_after").set(retry_after)

    def tokens(self, usage: Tokens) -> None:
        input_tokens, output_tokens = usage[0], usage[1]
        if input_tokens:
            self.inc_input(input_tokens)
        if output_tokens:
            self.inc_output(output_tokens)
        self._details(usage)

    def _details(self, usage: Tokens) -> None:
        """The token details: ``usage``'s last three counts."""
        for detail, count in zip(_DETAILS, usage[2:], strict=True):
            if count:
                self._child("ai_token_details", detail).inc(count)

    def _usage_missing(self, seen: type | None, failure: str | None) -> None:
        """A call that ended successfully without usage (counted by :meth:`record`, so a
        silent 0 shows): warned about once. A call that failed or was cancelled is not
        warned about: the usage, sent last, never came."""
        if "usage" in self._warned:
            return  # the usual repeat: the message (and the metric's name) is not built
        what = f"its response ({seen.__name__})" if seen is not None else "no response was recorded"
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
        self, prices: Mapping[str, ModelPrice], model: str, usage: Tokens | None, status: str
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
        dollars = None if price is None else price.cost(Usage(*usage))
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


#: How many finish reasons outside :data:`KNOWN_REASONS` one provider may report.
MAX_OTHER_REASONS = 16


class ReasonGuard:
    """The finish reasons of one provider: the known ones as they are, at most
    ``MAX_OTHER_REASONS`` others (a foreign OpenAI-compatible server's), then "other"
    with one warning."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._others: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()

    def label(self, reason: str) -> str:
        if reason in KNOWN_REASONS:
            return reason
        with self._lock:
            if reason in self._others:
                return reason
            if len(self._others) < MAX_OTHER_REASONS:
                self._others.add(reason)
                return reason
            if not self._warned:
                self._warned = True
                logger.warning(
                    "instrument: provider %r reported more than %d finish reasons the "
                    "providers do not document; any further ones are reported as "
                    "finish_reason=%r",
                    self.provider,
                    MAX_OTHER_REASONS,
                    OTHER_MODEL,
                )
        return OTHER_MODEL


# Per Metrics (one per Instrumentation's registry and namespace) and provider: a series
# finds its guard only when it meets a reason for the first time.
_reason_guards: weakref.WeakKeyDictionary[Metrics, dict[str, ReasonGuard]] = (
    weakref.WeakKeyDictionary()
)


def reason_guard(metrics: Metrics, provider: str) -> ReasonGuard:
    with _guards_lock:
        by_provider = _reason_guards.setdefault(metrics, {})
        guard = by_provider.get(provider)
        if guard is None:
            guard = by_provider[provider] = ReasonGuard(provider)
        return guard
