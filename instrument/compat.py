"""The original design's ``PrometheusIntegration`` class, as a thin shim over Instrumentation."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from .instrumentation import Instrumentation

__all__ = ["PrometheusIntegration"]

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
