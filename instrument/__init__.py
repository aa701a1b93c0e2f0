"""Prometheus and Grafana instrumentation for code-analysis pipelines and LLM calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._tracing import run_id
from .ai import AICall, AICallTracker, track_ai_call
from .analysis import AnalysisJob, AnalysisMonitor, monitored_analysis

if TYPE_CHECKING:
    # The seed's names stay importable from here (``from instrument import
    # PrometheusIntegration``), re-exported explicitly, but they are compatibility, not the
    # toolkit's API, so __all__ leaves them out; imported on first use (``_LAZY``).
    from .compat import PrometheusIntegration as PrometheusIntegration
    from .compat import push_metrics as push_metrics
    from .compat import record_ai_api_call as record_ai_api_call
    from .compat import record_analysis as record_analysis
    from .compat import record_quality_score as record_quality_score
    from .compat import update_active_jobs as update_active_jobs
from .defaults import apush, configure, flush, get_instrumentation, push
from .instrumentation import Instrumentation
from .metrics import METRICS, Metrics
from .objectives import Objective

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
    "GrafanaNotFoundError",
    "GrafanaRetryLaterError",
    "GrafanaServerError",
    "GrafanaStatusError",
    "GrafanaTransportError",
    "GrafanaUnavailableError",
    "Instrumentation",
    "Metrics",
    "Objective",
    "__version__",
    "apush",
    "build_dashboard",
    "build_rules",
    "configure",
    "flush",
    "get_instrumentation",
    "monitored_analysis",
    "push",
    "rules_yaml",
    "run_id",
    "track_ai_call",
]


def __getattr__(name: str) -> Any:
    # The Grafana client pulls in aiohttp: import it only when it is asked for. The seed's
    # GrafanaIntegration is found here too, outside __all__ as the other shims are.
    if name == "__version__":
        # Looked up on first use: finding the installed distribution scans sys.path, a
        # few ms that every ``import instrument`` would otherwise pay.
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("codomyrmex-instrument")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            found = "0.0.0"
        globals()["__version__"] = found
        return found
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
    "PrometheusIntegration": ".compat",
    "push_metrics": ".compat",
    "record_ai_api_call": ".compat",
    "record_analysis": ".compat",
    "record_quality_score": ".compat",
    "update_active_jobs": ".compat",
    "build_dashboard": ".dashboard",
    "build_rules": ".rules",
    "rules_yaml": ".rules",
}
