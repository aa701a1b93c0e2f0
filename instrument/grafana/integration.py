"""The original design's ``GrafanaIntegration``, kept working on top of :class:`GrafanaClient`."""

from __future__ import annotations

import logging

from .._urls import mask_url
from ..metrics import DEFAULT_NAMESPACE
from .client import GrafanaClient

__all__ = ["GrafanaIntegration"]

logger = logging.getLogger("instrument")


class GrafanaIntegration:
    """The original ``GrafanaIntegration``, kept working on top of :class:`GrafanaClient`.

    >>> url = await GrafanaIntegration("http://grafana:3000", token).create_codomyrmex_dashboard()

    ``api_key`` is sent as a bearer token, so a service account token works here too.
    """

    def __init__(
        self, grafana_url: str, api_key: str | None, *, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        # Validate now, as the original would have failed on first use; keep the URL without
        # its credentials for the repr (the client takes them from the URL again).
        GrafanaClient(grafana_url, token=api_key or None)
        self.grafana_url = grafana_url.rstrip("/")
        self._shown_url = mask_url(self.grafana_url)
        self.namespace = namespace
        self._api_key = api_key or None

    def __repr__(self) -> str:
        return f"GrafanaIntegration({self._shown_url!r})"

    async def create_codomyrmex_dashboard(self) -> str:
        """Create or update the dashboard; returns its URL."""
        from ..dashboard import build_dashboard

        async with GrafanaClient(self.grafana_url, token=self._api_key) as client:
            result = await client.upsert_dashboard(
                build_dashboard(self.namespace), message="saved by instrument GrafanaIntegration"
            )
        logger.info("instrument: Codomyrmex dashboard saved: %s", result.url)
        return result.url
