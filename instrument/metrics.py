"""Every metric the toolkit records: names, types, labels and buckets, in one place.

The dashboard, the alert rules and the docs are generated from ``METRICS``; a
metric is added here and nowhere else.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "AI_DURATION_BUCKETS",
    "ANALYSIS_DURATION_BUCKETS",
    "DEFAULT_NAMESPACE",
    "METRICS",
    "TIME_TO_FIRST_TOKEN_BUCKETS",
    "MetricSpec",
    "Metrics",
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


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``attr`` is its attribute on :class:`Metrics`, ``suffix`` its name
    after the namespace (counters include ``_total``)."""

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
    # Delivery self-metrics
    MetricSpec("pushes", "pushes_total", "counter", "Push attempts to the Pushgateway"),
    MetricSpec("push_failures", "push_failures_total", "counter",
               "Failed push attempts to the Pushgateway"),
    MetricSpec("last_push_success", "last_push_success_timestamp_seconds", "gauge",
               "Unix time of the last successful push", multiprocess_mode="max"),
)  # fmt: skip

_SPEC_BY_SUFFIX = {spec.suffix: spec for spec in METRICS}
_NAMESPACE_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# One Metrics per (registry, namespace): a second Instrumentation on a shared registry
# reuses the collectors instead of failing with "Duplicated timeseries".
_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Metrics]] = (
    weakref.WeakKeyDictionary()
)
_shared_lock = threading.Lock()


def _bucket_overrides(
    buckets: Sequence[float] | Mapping[str, Sequence[float]] | None,
) -> dict[str, tuple[float, ...]]:
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
        bounds = tuple(float(v) for v in values)
        if not bounds or any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
            raise ValueError(f"buckets for {suffix!r} must be a non-empty increasing sequence")
        out[suffix] = bounds
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
    pushes: Counter
    push_failures: Counter
    last_push_success: Gauge

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str,
        buckets: Mapping[str, tuple[float, ...]],
    ) -> None:
        self.registry = registry
        self.namespace = namespace
        self.buckets = {
            s.suffix: buckets.get(s.suffix, s.buckets) for s in METRICS if s.buckets is not None
        }
        for spec in METRICS:
            setattr(self, spec.attr, self._create(spec))

    def _create(self, spec: MetricSpec) -> Counter | Gauge | Histogram:
        name = spec.name(self.namespace)
        if spec.kind == "counter":
            return Counter(name, spec.documentation, spec.labels, registry=self.registry)
        if spec.kind == "gauge":
            return Gauge(
                name,
                spec.documentation,
                spec.labels,
                registry=self.registry,
                multiprocess_mode=spec.multiprocess_mode,  # type: ignore[arg-type]
            )
        return Histogram(
            name,
            spec.documentation,
            spec.labels,
            registry=self.registry,
            buckets=self.buckets[spec.suffix],
        )

    @classmethod
    def get(
        cls,
        registry: CollectorRegistry,
        namespace: str = DEFAULT_NAMESPACE,
        buckets: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    ) -> Metrics:
        """The metrics of ``namespace`` on ``registry``, created on first use and shared after."""
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise ValueError(
                f"namespace {namespace!r} is not a valid Prometheus metric prefix; "
                "use letters, digits and underscores, not starting with a digit"
            )
        overrides = _bucket_overrides(buckets)
        with _shared_lock:
            by_namespace = _shared.setdefault(registry, {})
            existing = by_namespace.get(namespace)
            if existing is not None:
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
                metrics = cls(registry, namespace, overrides)
            except ValueError as exc:
                raise ValueError(
                    f"metrics of namespace {namespace!r} clash with collectors already on this "
                    f"registry ({exc}); use another namespace or a dedicated registry"
                ) from None
            by_namespace[namespace] = metrics
            return metrics

    def names(self) -> dict[str, str]:
        """Map each metric's attribute name to its full Prometheus name."""
        return {spec.attr: spec.name(self.namespace) for spec in METRICS}
