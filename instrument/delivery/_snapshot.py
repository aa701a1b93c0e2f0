"""The state of one moment, as every push and every file is made of, and the work that must
run before it is taken.

Recording deferred to a safe point (a job end the engine could not record at the recursion
limit, an abandoned stream noticed by the garbage collector) happens in the hooks
registered here: before each snapshot a push or a file takes, and before each scrape.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["BeforeCollect", "Snapshot", "register_before_snapshot", "run_before_snapshot"]

logger = logging.getLogger("instrument")

_before_snapshot: list[Callable[[], None]] = []


def register_before_snapshot(hook: Callable[[], None]) -> None:
    """Run ``hook`` before each snapshot is taken for a push or a scrape (never raises)."""
    if hook not in _before_snapshot:
        _before_snapshot.append(hook)


def run_before_snapshot() -> None:
    """Run the registered hooks; one that fails is logged and the others still run."""
    for hook in _before_snapshot:
        try:
            hook()
        except Exception:
            logger.exception("instrument: a before-push hook failed")


class BeforeCollect(Collector):
    """Registered on an instrumentation's registry: a scrape runs the before-snapshot
    hooks too, so pull mode sees deferred recording. It exposes no metrics."""

    def collect(self) -> Iterator[Metric]:
        run_before_snapshot()
        return iter(())

    def describe(self) -> list[Metric]:
        return []


class Snapshot(Collector):
    """The metric families of one moment, a collector that pushes and files can read.

    ``number`` orders the snapshots of one delivery; ``at`` is when it was taken (the
    wall-clock time the pushed state gives as its last successful push). ``seconds`` is
    the wall time spent collecting it and reading it through: each target serializes it
    by iterating :meth:`collect`, so whatever the format, that time is counted and the
    time on the network is not.
    """

    __slots__ = ("at", "families", "number", "seconds")

    def __init__(self, registry: CollectorRegistry, number: int, at: float) -> None:
        started = time.monotonic()
        self.families = list(registry.collect())
        self.seconds = time.monotonic() - started
        self.number = number
        self.at = at

    def collect(self) -> Iterator[Metric]:
        with self.timing():
            yield from self.families  # the reader's work on each family runs in between

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Count the time of the block in :attr:`seconds`: for a reader that takes
        :attr:`families` directly and encodes them in its own steps (remote write)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds += time.monotonic() - started
