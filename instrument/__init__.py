"""Prometheus and Grafana instrumentation for code-analysis pipelines and LLM calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._tracing import run_id
from .analysis import AnalysisJob, AnalysisMonitor, monitored_analysis
from .defaults import apush, configure, flush, get_instrumentation, push
from .instrumentation import Instrumentation
from .metrics import METRICS, Metrics

if TYPE_CHECKING:
    # Imported on first use (``_LAZY``): the AI tracker and the objectives are a few
    # thousand lines that a program recording only analyses never runs.
    from .ai import AICall as AICall
    from .ai import AICallTracker as AICallTracker
    from .ai import track_ai_call as track_ai_call

    # The seed's names stay importable from here (``from instrument import
    # PrometheusIntegration``), re-exported explicitly, but they are compatibility, not the
    # toolkit's API, so __all__ leaves them out; imported on first use (``_LAZY``).
    from .compat import PrometheusIntegration as PrometheusIntegration
    from .compat import push_metrics as push_metrics
    from .compat import record_ai_api_call as record_ai_api_call
    from .compat import record_analysis as record_analysis
    from .compat import record_quality_score as record_quality_score
    from .compat import update_active_jobs as update_active_jobs
    from .objectives import Objective as Objective

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
    # What a program may never use is imported when it is first asked for: the AI tracker,
    # the objectives, the Grafana client (it pulls in aiohttp), the generated artifacts and
    # the seed's shims (GrafanaIntegration is found here too, outside __all__ as the other
    # shims are). Threads racing to a first use import it once (importlib's module locks)
    # and all get the same objects.
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
    if name in _LAZY or name in _SUBMODULES:
        import importlib

        if name in _SUBMODULES:  # ``instrument.ai`` after a plain ``import instrument``
            return importlib.import_module(f".{name}", __name__)
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    raise AttributeError(f"module 'instrument' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})


#: Subpackages and modules that ``import instrument`` used to load and now leaves to first
#: use, still reachable as attributes of the package.
_SUBMODULES = frozenset({"ai", "config", "objectives"})

_LAZY: dict[str, str] = {
    "AICall": ".ai",
    "AICallTracker": ".ai",
    "track_ai_call": ".ai",
    "Objective": ".objectives",
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
