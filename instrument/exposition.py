"""Pull mode: serve the metrics for Prometheus to scrape, reusing prometheus_client's exposition.

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) every handler here collects across
all worker processes.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client.exposition import choose_encoder

from ._threads import signals_blocked
from .push import exit_flush_running

if TYPE_CHECKING:
    from aiohttp import web

    from .instrumentation import Instrumentation

__all__ = ["aiohttp_handler", "install_sigterm_handler", "start_http_server"]


def start_http_server(inst: Instrumentation, port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` from a daemon thread; returns the WSGI server (``.shutdown()``)."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
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


def install_sigterm_handler() -> None:
    """On SIGTERM, exit through ``sys.exit`` so atexit's final flush runs.

    A handler that was installed before is called first. Only the main thread can install it.
    The toolkit's threads never receive the signal, so it reaches the main thread even while
    that sleeps; a SIGTERM that comes while the final flush runs lets it finish.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        if exit_flush_running():
            # A second SystemExit would abort the flush this exit is waiting for; it is
            # bounded (5 s), so the process ends anyway.
            return
        # Children forked after this inherit the handler; they exit the same way.
        sys.exit(128 + signum)

    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, on_sigterm)
