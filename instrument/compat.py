"""The original design's names, as thin shims: the ``PrometheusIntegration`` class over
Instrumentation, and its methods as module-level functions on the default instrumentation.
``instrument`` re-exports them all, so the seed's imports keep working."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from .defaults import get_instrumentation
from .instrumentation import Instrumentation

__all__ = [
    "PrometheusIntegration",
    "push_metrics",
    "record_ai_api_call",
    "record_analysis",
    "record_quality_score",
    "update_active_jobs",
]

logger = logging.getLogger("instrument")


class PrometheusIntegration(Instrumentation):
    """``PrometheusIntegration(pushgateway_url)`` as the original design used it.

    The original POSTed on each explicit ``push_metrics()``; this keeps POST and pushes
    only when asked (``push_mode="off"`` for the background), so old code behaves the same.
    """

    def __init__(self, pushgateway_url: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("push_method", "post")
        kwargs.setdefault("push_mode", "off")
        super().__init__(pushgateway=pushgateway_url, **kwargs)
        self.pushgateway_url = pushgateway_url

    async def push_metrics(self, job_name: str | None = None) -> bool:
        """Push now, under ``job_name`` if given (the original's signature); never raises."""
        if self.delivery.gateway is None:
            logger.warning("instrument: no Pushgateway URL configured; nothing pushed")
            return False
        return await self.delivery.push_async(job=job_name)

    # The original attribute names.
    @property
    def analysis_counter(self) -> Counter:
        return self.metrics.analyses

    @property
    def analysis_duration(self) -> Histogram:
        return self.metrics.analysis_duration

    @property
    def active_jobs(self) -> Gauge:
        return self.metrics.active_jobs

    @property
    def code_quality_score(self) -> Gauge:
        return self.metrics.code_quality_score

    @property
    def ai_api_calls(self) -> Counter:
        return self.metrics.ai_api_calls

    @property
    def ai_token_usage(self) -> Counter:
        return self.metrics.ai_tokens


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
    """Count one AI API call and its tokens on the default instrumentation, under the
    same ``max_models`` guard as tracked calls (models beyond it report as ``other``)."""
    get_instrumentation().record_ai_api_call(provider, model, success, input_tokens, output_tokens)


async def push_metrics() -> bool:
    """Push the default instrumentation's state now over aiohttp: the seed's name for
    :func:`instrument.apush`."""
    return await get_instrumentation().apush()
