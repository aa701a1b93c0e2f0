"""Pull mode: serve the metrics for Prometheus to scrape, reusing prometheus_client's exposition.

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) every handler here collects across
all worker processes. ``install_sigterm_handler`` lives in :mod:`instrument.delivery` now,
beside the exit flush it serves; it stays importable from here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client.exposition import choose_encoder

from ._threads import signals_blocked
from .delivery import install_sigterm_handler

if TYPE_CHECKING:
    from aiohttp import web

    from .instrumentation import Instrumentation

__all__ = ["aiohttp_handler", "install_sigterm_handler", "start_http_server"]


def start_http_server(inst: Instrumentation, port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` from a daemon thread; returns the WSGI server (``.shutdown()``)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
    # Its threads (and the ones they start per request) leave signals to the main thread, as
    # the toolkit's own do: a SIGTERM landing on them would not wake a sleeping main thread.
    with signals_blocked():
        server, _thread = prometheus_client.start_http_server(
            port, addr=addr, registry=inst.collect_registry()
        )
    return server


def aiohttp_handler(inst: Instrumentation) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler with content negotiation (text format or OpenMetrics)."""
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(inst.collect_registry())
        return web.Response(body=body, headers={"Content-Type": content_type})

    return metrics
