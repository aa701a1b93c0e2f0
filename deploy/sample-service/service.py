"""The compose file's sample service: a long-running process in pull mode, so Prometheus's
analysis-service target is up and the dashboard has numbers from the first minute.

It serves prometheus_client's global registry, which the module-level decorators record on:
the same two lines make any existing /metrics endpoint show them.
"""

from __future__ import annotations

import contextlib
import random
import time

from prometheus_client import start_http_server

from instrument import monitored_analysis


@monitored_analysis("static_analysis", "codebase", quality=lambda score: score)
def analyze(files: int) -> float:
    """A stand-in for real work: takes a moment, fails now and then, returns a score."""
    time.sleep(random.uniform(0.05, 0.5))
    if random.random() < 0.1:
        raise ValueError(f"could not parse one of {files} files")
    return round(random.uniform(60, 95), 1)


def main() -> None:
    # All interfaces: Prometheus reaches it from its own container.
    start_http_server(9464, addr="0.0.0.0")
    while True:
        with contextlib.suppress(ValueError):  # counted as an error by the decorator
            analyze(random.randint(1, 50))
        time.sleep(2)


if __name__ == "__main__":
    main()
