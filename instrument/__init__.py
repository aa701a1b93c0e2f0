"""Prometheus and Grafana instrumentation for code-analysis pipelines and LLM calls."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

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
    "AnalysisJob",
    "AnalysisMonitor",
    "Instrumentation",
    "Metrics",
    "PrometheusIntegration",
    "__version__",
    "configure",
    "get_instrumentation",
    "monitored_analysis",
    "push",
    "push_metrics",
    "record_quality_score",
]


def record_quality_score(project: str, module: str, score: float) -> None:
    """Set the latest code quality score on the default instrumentation."""
    get_instrumentation().record_quality_score(project, module, score)


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


_LAZY: dict[str, str] = {}
