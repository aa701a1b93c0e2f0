"""Grafana: an async client for its HTTP API (``client``), its errors in httpx's shape
(``errors``), and the original ``GrafanaIntegration`` (``integration``).

>>> async with GrafanaClient("http://127.0.0.1:3000", token=token) as grafana:
...     result = await grafana.upsert_dashboard(build_dashboard(inst))
...     print(result.url)
"""

from __future__ import annotations

from .client import DashboardResult, GrafanaClient
from .errors import (
    GrafanaAuthError,
    GrafanaBadRequestError,
    GrafanaConflictError,
    GrafanaError,
    GrafanaNotFoundError,
    GrafanaRetryLaterError,
    GrafanaServerError,
    GrafanaStatusError,
    GrafanaTransportError,
    GrafanaUnavailableError,
)
from .integration import GrafanaIntegration

__all__ = [
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
]
