"""The prometheus_client collectors the toolkit makes: its own types, which run the read
hooks as they are collected, and registration all or nothing.

Decorated calls record into per-thread cells (``_cells``), folded into the children before
a read. A whole-registry read runs the fold first (a collector registered ahead of the
metrics); a read of only some names (``registry.restricted_registry``, a scrape with
``?name[]=``) or of one metric (``metric.collect()``) collects in no set order, so each
metric also runs the hooks as it is read: when nothing changed, a flag check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["ReadCounter", "ReadGauge", "ReadHistogram", "before_read", "register_all"]

_before_read: list[Callable[[], None]] = []


def before_read(hook: Callable[[], None]) -> None:
    """Run ``hook`` (which never raises) whenever one of the toolkit's metrics is collected."""
    if hook not in _before_read:
        _before_read.append(hook)


class _Read:
    def collect(self) -> Iterable[Metric]:
        for hook in _before_read:
            hook()
        collected: Iterable[Metric] = super().collect()  # type: ignore[misc]
        return collected


# prometheus_client's own types, each with the read hook: ``labels()`` makes children of the
# same class, and everything else is theirs.
class ReadCounter(_Read, Counter):
    pass


class ReadGauge(_Read, Gauge):
    pass


class ReadHistogram(_Read, Histogram):
    pass


def register_all(registry: CollectorRegistry, collectors: Sequence[Collector]) -> None:
    """Register every collector or none: a clash midway unregisters those before it."""
    done: list[Collector] = []
    try:
        for collector in collectors:
            registry.register(collector)
            done.append(collector)
    except BaseException:
        for collector in reversed(done):
            # The clash is what the caller must see, not a failure to undo.
            with contextlib.suppress(Exception):
                registry.unregister(collector)
        raise
