"""Every metric the toolkit records: names, types, labels and buckets, in one place.

The dashboard, the alert rules and the docs are generated from ``METRICS``; a
metric is added here and nowhere else.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Literal, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._families import ReadCounter, ReadGauge, ReadHistogram, before_read, register_all

__all__ = [
    "AI_DURATION_BUCKETS",
    "ANALYSIS_DURATION_BUCKETS",
    "ATTRIBUTED",
    "BUILD_INFO_KEYS",
    "DEFAULT_NAMESPACE",
    "GENAI_LABELS",
    "GENAI_METRICS",
    "GENAI_SECONDS_BUCKETS",
    "GENAI_TOKEN_BUCKETS",
    "METRICS",
    "SAMPLE_LABELS",
    "TIME_TO_FIRST_TOKEN_BUCKETS",
    "MetricSpec",
    "Metrics",
    "before_read",
    "check_attribution",
    "check_buckets",
    "check_build_info",
    "check_label_value",
    "check_namespace",
    "metric_names",
]

DEFAULT_NAMESPACE = "codomyrmex"

#: The original design's buckets for analysis durations (seconds).
ANALYSIS_DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600)
#: OpenTelemetry's gen_ai.client.operation.duration buckets, extended for long reasoning calls.
AI_DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    163.84, 327.68, 600,
)  # fmt: skip
#: OpenTelemetry's gen_ai.client.operation.time_to_first_chunk buckets: 0.01 doubling to 81.92.
TIME_TO_FIRST_TOKEN_BUCKETS: tuple[float, ...] = tuple(round(0.01 * 2**i, 2) for i in range(14))

Kind = Literal["counter", "gauge", "histogram"]

#: The labels of build_info, the keys of ``build_info=``.
BUILD_INFO_KEYS = ("version", "commit", "branch")


class MetricSpec(NamedTuple):
    """One metric: ``attr`` is its attribute on :class:`Metrics`, ``suffix`` its name
    after the namespace (counters include ``_total``)."""

    # A NamedTuple, not a frozen dataclass: as immutable and comparable, and about a
    # millisecond less on every ``import instrument`` (dataclasses is not loaded for it).

    attr: str
    suffix: str
    kind: Kind
    documentation: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    #: How a gauge is aggregated across processes in prometheus_client's multiprocess mode.
    multiprocess_mode: str = "all"

    def name(self, namespace: str) -> str:
        return f"{namespace}_{self.suffix}"


METRICS: tuple[MetricSpec, ...] = (
    # Analyses (the original design's metrics, kept exactly)
    MetricSpec("analyses", "analyses_total", "counter", "Total number of analyses performed",
               ("module", "analysis_type", "status")),
    MetricSpec("analysis_duration", "analysis_duration_seconds", "histogram",
               "Time spent on analyses", ("module", "analysis_type"), ANALYSIS_DURATION_BUCKETS),
    MetricSpec("active_jobs", "active_jobs", "gauge", "Number of currently active jobs",
               ("job_type",), multiprocess_mode="livesum"),
    MetricSpec("code_quality_score", "code_quality_score", "gauge", "Latest code quality score",
               ("project", "module"), multiprocess_mode="mostrecent"),
    MetricSpec("analysis_errors", "analysis_errors_total", "counter",
               "Analyses that raised, by exception class",
               ("module", "analysis_type", "error_type")),
    # AI calls
    MetricSpec("ai_api_calls", "ai_api_calls_total", "counter", "Total AI API calls",
               ("provider", "model", "status")),
    MetricSpec("ai_tokens", "ai_tokens_used_total", "counter",
               "Total AI tokens consumed (input includes cached input, output includes reasoning)",
               ("provider", "model", "token_type")),
    MetricSpec("ai_token_details", "ai_token_details_total", "counter",
               "AI tokens by detail: cache_read, cache_creation, reasoning",
               ("provider", "model", "detail")),
    MetricSpec("ai_call_duration", "ai_call_duration_seconds", "histogram",
               "Duration of AI API calls, streams included", ("provider", "model"),
               AI_DURATION_BUCKETS),
    MetricSpec("ai_time_to_first_token", "ai_time_to_first_token_seconds", "histogram",
               "Time from the start of a streamed AI call to its first chunk",
               ("provider", "model"), TIME_TO_FIRST_TOKEN_BUCKETS),
    MetricSpec("ai_api_errors", "ai_api_errors_total", "counter",
               "AI API calls that raised, by exception class and HTTP status",
               ("provider", "model", "error_type", "http_status")),
    MetricSpec("ai_cost", "ai_cost_usd_total", "counter",
               "Cost of AI API calls in US dollars, from the configured price table",
               ("provider", "model")),
    MetricSpec("ai_unpriced_calls", "ai_unpriced_calls_total", "counter",
               "AI API calls that could not be priced (no price or no usage)",
               ("provider", "model")),
    MetricSpec("ai_usage_missing", "ai_usage_missing_total", "counter",
               "AI API calls whose response or stream ended without readable usage",
               ("provider", "model")),
    MetricSpec("ai_operations", "ai_operations_total", "counter",
               "AI API calls by operation (chat, embeddings, execute_tool, ...)",
               ("provider", "model", "operation", "status")),
    MetricSpec("ai_finish_reasons", "ai_finish_reasons_total", "counter",
               "Why responses ended, one per choice or candidate (length: truncated)",
               ("provider", "model", "finish_reason")),
    MetricSpec("ai_tool_calls", "ai_tool_calls_total", "counter",
               "Tool or function calls requested by AI responses and streams",
               ("provider", "model")),
    MetricSpec("ai_rate_limit_remaining", "ai_rate_limit_remaining", "gauge",
               "Requests or tokens left in the provider's rate limit, from the last response's "
               "headers", ("provider", "model", "limit"), multiprocess_mode="mostrecent"),
    MetricSpec("ai_retry_after", "ai_retry_after_seconds", "gauge",
               "The retry-after of the last rate-limited (429) AI call", ("provider", "model"),
               multiprocess_mode="mostrecent"),
    # Delivery self-metrics
    MetricSpec("pushes", "pushes_total", "counter", "Push attempts to the Pushgateway"),
    MetricSpec("push_failures", "push_failures_total", "counter",
               "Failed push attempts to the Pushgateway"),
    MetricSpec("last_push_success", "last_push_success_timestamp_seconds", "gauge",
               "Unix time of the last successful push", multiprocess_mode="max"),
    # Build
    MetricSpec("build_info", "build_info", "gauge",
               "The running build (always 1): its version, commit and branch", BUILD_INFO_KEYS,
               multiprocess_mode="max"),
)  # fmt: skip

# -- the OpenTelemetry GenAI client metrics (genai_semconv=True) -------------------------------
# Named as OTel's Prometheus exporter names these instruments (dots to underscores, unit "s"
# as "_seconds", "{token}" as nothing): no namespace, so ``suffix`` is the whole name, and
# one set per registry. Recorded beside the metrics above, which they leave unchanged.

#: gen_ai.client.token.usage's buckets: 1, then 4 times the last, to 4**13.
GENAI_TOKEN_BUCKETS: tuple[float, ...] = tuple(4**i for i in range(14))
#: gen_ai.client.operation.duration's buckets, also the two chunk timings': 0.01 doubling to 81.92.
GENAI_SECONDS_BUCKETS = TIME_TO_FIRST_TOKEN_BUCKETS
#: The labels of every gen_ai_* family (the token type or error type comes last).
GENAI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
)
_TIMED = (*GENAI_LABELS, "error_type")

GENAI_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("token_usage", "gen_ai_client_token_usage", "histogram",
               "Number of input and output tokens used (input includes cached input)",
               (*GENAI_LABELS, "gen_ai_token_type"), GENAI_TOKEN_BUCKETS),
    MetricSpec("operation_duration", "gen_ai_client_operation_duration_seconds", "histogram",
               "GenAI operation duration", _TIMED, GENAI_SECONDS_BUCKETS),
    MetricSpec("time_to_first_chunk", "gen_ai_client_operation_time_to_first_chunk_seconds",
               "histogram", "Time to receive the first chunk in a streaming operation", _TIMED,
               GENAI_SECONDS_BUCKETS),
    MetricSpec("time_per_output_chunk", "gen_ai_client_operation_time_per_output_chunk_seconds",
               "histogram", "Time between consecutive chunks of a stream, after the first",
               _TIMED, GENAI_SECONDS_BUCKETS),
)  # fmt: skip

_SPEC_BY_SUFFIX = {spec.suffix: spec for spec in METRICS}
_NAMESPACE_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _sample_labels() -> frozenset[str]:
    names = {label for spec in (*METRICS, *GENAI_METRICS) for label in spec.labels}
    if any(spec.kind == "histogram" for spec in METRICS):
        names.add("le")
    # prometheus_client's multiprocess collector labels these gauges' samples by process.
    per_process = ("all", "liveall")
    if any(spec.kind == "gauge" and spec.multiprocess_mode in per_process for spec in METRICS):
        names.add("pid")
    return frozenset(names)


#: The money metrics: what ``attribution=`` labels split (histograms never are).
ATTRIBUTED = frozenset({"ai_api_calls", "ai_tokens", "ai_token_details", "ai_cost"})


def check_attribution(labels: object) -> tuple[str, ...]:
    """``attribution=`` as label names the money metrics can take, else a TypeError or
    ValueError saying what to pass."""
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise TypeError("attribution must be a tuple of label names, e.g. ('tenant',)")
    names = tuple(labels)
    taken = {label for spec in METRICS for label in spec.labels} | {"le", "job", "instance"}
    for name in names:
        # A label name has a metric prefix's syntax; "__" starts Prometheus' own.
        if not isinstance(name, str) or not _NAMESPACE_RE.fullmatch(name) or name[:2] == "__":
            raise ValueError(f"attribution label {name!r} is not a valid label name, e.g. 'tenant'")
        if name in taken:
            raise ValueError(f"attribution label {name!r} is one of the toolkit's; pick another")
    if len(set(names)) != len(names):
        raise ValueError(f"attribution names a label twice: {names!r}")
    return names


#: Every label name a sample of ours can carry, "le" of histogram buckets included: a
#: Pushgateway grouping label of the same name would clash with it or overwrite it.
SAMPLE_LABELS: frozenset[str] = _sample_labels()

# One Metrics per (registry, namespace): a second Instrumentation on a shared registry
# reuses the collectors instead of failing with "Duplicated timeseries". The table lives on
# the registry itself, not in a module-level mapping keyed by it: a Metrics holds its
# registry, so any such mapping (even a WeakKeyDictionary, whose values are strong) would
# keep every registry alive. On the registry it is an ordinary cycle, freed with it.
_SHARED_ATTR = "_instrument_metrics"
_shared_lock = threading.Lock()


def check_namespace(namespace: object) -> str:
    """``namespace`` if it can prefix a Prometheus metric name, else a ValueError saying so."""
    # fullmatch: "$" would also match before a final newline, letting "a\n" through.
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is not a valid Prometheus metric prefix; "
            "use letters, digits and underscores, not starting with a digit"
        )
    return namespace


def metric_names(namespace: str) -> dict[str, str]:
    """Each metric's attribute on :class:`Metrics` mapped to its full Prometheus name in
    ``namespace`` (a ValueError if it cannot prefix one); no collector is made.

    >>> metric_names("acme")["analyses"]
    'acme_analyses_total'
    """
    check_namespace(namespace)
    return {spec.attr: spec.name(namespace) for spec in METRICS}


def check_label_value(what: str, value: str) -> str:
    """``value`` if it can be a label value, else a ValueError saying what to do.

    Exposition encodes UTF-8: one value holding a lone surrogate (text decoded with
    ``surrogateescape``, say) would make every later scrape and push of the registry fail.
    """
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{what} holds a lone surrogate, which is not valid UTF-8; decode the text "
                "it comes from properly"
            ) from None
    return value


def check_build_info(build_info: object) -> dict[str, str] | None:
    """``build_info`` (a mapping of version, commit, branch; None: no build_info series) as
    the labels of build_info, a key not given read as "unknown"; else a TypeError or
    ValueError saying what to pass."""
    if build_info is None:
        return None
    example = "{'version': '1.4.0', 'commit': 'a1b2c3d', 'branch': 'main'}"
    if not isinstance(build_info, Mapping):
        raise TypeError(f"build_info must be a mapping such as {example}")
    unknown = sorted(map(repr, set(build_info) - set(BUILD_INFO_KEYS)))
    if unknown:
        raise ValueError(
            f"build_info has unknown key(s) {', '.join(unknown)}; use version, commit and branch, "
            f"e.g. {example}"
        )
    labels = {}
    for key in BUILD_INFO_KEYS:
        value = build_info.get(key, "unknown")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"build_info[{key!r}] must be a non-empty string, got {value!r}")
        labels[key] = check_label_value(f"build_info[{key!r}]", value)
    return labels


def _bounds(suffix: str, values: object) -> tuple[float, ...]:
    """One histogram's bucket bounds, checked as prometheus_client and Prometheus need
    them: finite, strictly increasing, at least one. A last +Inf is implied, so it is
    dropped here and two spellings of the same buckets compare equal."""
    import numbers  # here: buckets are checked at configure time, the import is paid by all

    what = f"buckets for {suffix!r}"
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a sequence of numbers, got {type(values).__name__}")
    bounds: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{what} must hold numbers, got a {type(value).__name__}")
        try:
            bounds.append(float(value))
        except (OverflowError, ValueError):
            raise ValueError(f"{what}: a bound is too large for a float") from None
    if bounds and bounds[-1] == math.inf:
        bounds.pop()
    if not bounds:
        raise ValueError(f"{what} need at least one finite bound (+Inf is always added)")
    if not all(math.isfinite(b) for b in bounds):
        raise ValueError(f"{what} must be finite numbers (no NaN or -Inf; a last +Inf is implied)")
    if any(b <= a for a, b in pairwise(bounds)):
        raise ValueError(f"{what} must be a strictly increasing sequence")
    return tuple(bounds)


def check_buckets(
    buckets: Sequence[float] | Mapping[str, Sequence[float]] | None,
) -> dict[str, tuple[float, ...]]:
    """The bucket bounds of each histogram given, by metric suffix, or a TypeError or
    ValueError saying what to change. A bare sequence is for analysis durations."""
    if buckets is None:
        return {}
    if isinstance(buckets, Mapping):
        items = dict(buckets)
    elif isinstance(buckets, str | bytes):
        raise TypeError("buckets must be a sequence of numbers or a mapping of metric to buckets")
    else:
        items = {"analysis_duration_seconds": buckets}
    out: dict[str, tuple[float, ...]] = {}
    for suffix, values in items.items():
        spec = _SPEC_BY_SUFFIX.get(suffix)
        if spec is None or spec.kind != "histogram":
            histograms = sorted(s.suffix for s in METRICS if s.kind == "histogram")
            raise ValueError(f"buckets: {suffix!r} is not a histogram; use one of {histograms}")
        out[suffix] = _bounds(suffix, values)
    return out


class Metrics:
    """The collectors for one namespace on one registry. Use :meth:`get`, not the constructor."""

    analyses: Counter
    analysis_duration: Histogram
    active_jobs: Gauge
    code_quality_score: Gauge
    analysis_errors: Counter
    ai_api_calls: Counter
    ai_tokens: Counter
    ai_token_details: Counter
    ai_call_duration: Histogram
    ai_time_to_first_token: Histogram
    ai_api_errors: Counter
    ai_cost: Counter
    ai_unpriced_calls: Counter
    ai_usage_missing: Counter
    ai_operations: Counter
    ai_finish_reasons: Counter
    ai_tool_calls: Counter
    ai_rate_limit_remaining: Gauge
    ai_retry_after: Gauge
    pushes: Counter
    push_failures: Counter
    last_push_success: Gauge
    build_info: Gauge

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str,
        buckets: Mapping[str, tuple[float, ...]],
        attribution: tuple[str, ...] = (),
    ) -> None:
        self.registry = registry
        self.namespace = namespace
        #: The labels ``attribution=`` adds to the money metrics (:data:`ATTRIBUTED`).
        self.attribution = attribution
        self.buckets = {
            s.suffix: buckets.get(s.suffix, s.buckets) for s in METRICS if s.buckets is not None
        }
        # Built unregistered first, so a collector prometheus_client refuses leaves the
        # registry untouched; then registered all or nothing.
        collectors = {spec.attr: self._create(spec) for spec in METRICS}
        register_all(registry, list(collectors.values()))
        for attr, collector in collectors.items():
            setattr(self, attr, collector)

    def _create(self, spec: MetricSpec) -> Counter | Gauge | Histogram:
        name = spec.name(self.namespace)
        if spec.kind == "counter":
            labels = spec.labels
            if spec.attr in ATTRIBUTED:
                labels += self.attribution
            return ReadCounter(name, spec.documentation, labels, registry=None)
        if spec.kind == "gauge":
            return ReadGauge(
                name,
                spec.documentation,
                spec.labels,
                registry=None,
                multiprocess_mode=spec.multiprocess_mode,  # type: ignore[arg-type]
            )
        return ReadHistogram(
            name, spec.documentation, spec.labels, registry=None, buckets=self.buckets[spec.suffix]
        )

    @classmethod
    def get(
        cls,
        registry: CollectorRegistry,
        namespace: str = DEFAULT_NAMESPACE,
        buckets: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
        attribution: tuple[str, ...] = (),
    ) -> Metrics:
        """The metrics of ``namespace`` on ``registry``, created on first use and shared after.

        Everything is checked before anything is registered, and the collectors are
        registered all or none: a refused call leaves ``registry`` as it was.
        """
        if not isinstance(registry, CollectorRegistry):
            raise TypeError(f"registry must be a CollectorRegistry, got {type(registry).__name__}")
        check_namespace(namespace)
        overrides = check_buckets(buckets)
        with _shared_lock:
            by_namespace: dict[str, Metrics] = vars(registry).setdefault(_SHARED_ATTR, {})
            existing = by_namespace.get(namespace)
            if existing is not None:
                if existing.attribution != attribution:
                    raise ValueError(
                        f"the metrics of namespace {namespace!r} are already registered on this "
                        f"registry with attribution={existing.attribution!r}; pass the same "
                        "attribution, or use another namespace or registry"
                    )
                for suffix, bounds in overrides.items():
                    if existing.buckets[suffix] != bounds:
                        raise ValueError(
                            f"{_SPEC_BY_SUFFIX[suffix].name(namespace)} is already registered on "
                            "this registry with "
                            f"buckets {existing.buckets[suffix]}; pass the same buckets, or use "
                            "another namespace or registry"
                        )
                return existing
            try:
                metrics = cls(registry, namespace, overrides, attribution)
            except ValueError as exc:
                raise ValueError(
                    f"metrics of namespace {namespace!r} clash with collectors already on this "
                    f"registry ({exc}); use another namespace or a dedicated registry"
                ) from None
            by_namespace[namespace] = metrics
            return metrics

    @classmethod
    def shared(
        cls, registry: CollectorRegistry, namespace: str = DEFAULT_NAMESPACE
    ) -> Metrics | None:
        """The metrics :meth:`get` made for ``namespace`` on ``registry``, or None."""
        with _shared_lock:
            table: dict[str, Metrics] = vars(registry).get(_SHARED_ATTR, {})
            return table.get(namespace)

    def unregister(self) -> None:
        """Take these collectors off their registry and forget them, leaving the registry as
        it was before :meth:`get` made them (what a constructor refused after it called
        :meth:`get` undoes). Anything still recording into them is no longer exported."""
        with _shared_lock:
            table: dict[str, Metrics] = vars(self.registry).get(_SHARED_ATTR, {})
            if table.get(self.namespace) is self:
                del table[self.namespace]
            for spec in METRICS:
                with contextlib.suppress(KeyError):
                    self.registry.unregister(getattr(self, spec.attr))

    def names(self) -> dict[str, str]:
        """Map each metric's attribute name to its full Prometheus name."""
        return metric_names(self.namespace)
