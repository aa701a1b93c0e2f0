"""Prometheus and Grafana instrumentation for code-analysis pipelines and LLM calls."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .ai import AICall, AICallTracker, track_ai_call
from .analysis import AnalysisJob, AnalysisMonitor, monitored_analysis
from .compat import PrometheusIntegration
from .instrumentation import Instrumentation, configure, get_instrumentation
from .metrics import METRICS, Metrics

try:
    __version__ = version("instrument")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "METRICS",
    "AICall",
    "AICallTracker",
    "AnalysisJob",
    "AnalysisMonitor",
    "DashboardResult",
    "GrafanaAuthError",
    "GrafanaBadRequestError",
    "GrafanaClient",
    "GrafanaConflictError",
    "GrafanaError",
    "GrafanaIntegration",
    "GrafanaNotFoundError",
    "GrafanaRetryLaterError",
    "GrafanaServerError",
    "GrafanaStatusError",
    "GrafanaTransportError",
    "GrafanaUnavailableError",
    "Instrumentation",
    "Metrics",
    "PrometheusIntegration",
    "__version__",
    "build_dashboard",
    "build_rules",
    "configure",
    "flush",
    "get_instrumentation",
    "monitored_analysis",
    "push",
    "push_metrics",
    "record_ai_api_call",
    "record_analysis",
    "record_quality_score",
    "rules_yaml",
    "track_ai_call",
    "update_active_jobs",
]


def record_quality_score(project: str, module: str, score: float) -> None:
    """Set the latest code quality score on the default instrumentation."""
    get_instrumentation().record_quality_score(project, module, score)


def record_analysis(module: str, analysis_type: str, duration: float, success: bool = True) -> None:
    """Count one finished analysis on the default instrumentation (the original method)."""
    get_instrumentation().record_analysis(module, analysis_type, duration, success)


def update_active_jobs(job_type: str, count: int) -> None:
    """Set the active-jobs gauge on the default instrumentation, as the original did."""
    get_instrumentation().update_active_jobs(job_type, count)


def record_ai_api_call(
    provider: str,
    model: str,
    success: bool = True,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> None:
    """Count one AI API call and its tokens on the default instrumentation."""
    get_instrumentation().record_ai_api_call(provider, model, success, input_tokens, output_tokens)


def flush(timeout: float = 5.0) -> bool:
    """Wait until the default instrumentation's latest state is delivered."""
    return get_instrumentation().flush(timeout)


def push(timeout: float | None = None) -> bool:
    """Push the default instrumentation's state now; True on success."""
    return get_instrumentation().push(timeout)


async def push_metrics() -> bool:
    """Push the default instrumentation's state now over aiohttp."""
    return await get_instrumentation().push_metrics()


def __getattr__(name: str) -> Any:
    # The Grafana client pulls in aiohttp: import it only when it is asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'instrument' has no attribute {name!r}")


_LAZY: dict[str, str] = {
    "DashboardResult": ".grafana",
    "GrafanaAuthError": ".grafana",
    "GrafanaBadRequestError": ".grafana",
    "GrafanaClient": ".grafana",
    "GrafanaConflictError": ".grafana",
    "GrafanaError": ".grafana",
    "GrafanaIntegration": ".grafana",
    "GrafanaNotFoundError": ".grafana",
    "GrafanaRetryLaterError": ".grafana",
    "GrafanaServerError": ".grafana",
    "GrafanaStatusError": ".grafana",
    "GrafanaTransportError": ".grafana",
    "GrafanaUnavailableError": ".grafana",
    "build_dashboard": ".dashboard",
    "build_rules": ".rules",
    "rules_yaml": ".rules",
}
