"""What an Instrumentation registers on its registry: the before-snapshot hook, the metrics
of its namespace and (``genai_semconv=True``) the gen_ai_* families, all or nothing."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from .delivery import BeforeCollect, Delivery
from .metrics import Metrics

if TYPE_CHECKING:
    from .ai import GenAIMetrics

__all__ = ["register_collectors"]

_registering = threading.Lock()
_hooked_registries: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()


def register_collectors(
    registry: CollectorRegistry,
    namespace: str,
    buckets: Sequence[float] | Mapping[str, Sequence[float]] | None,
    make_delivery: Callable[[Metrics], Delivery],
    attribution: tuple[str, ...] = (),
    genai_semconv: bool = False,
) -> tuple[Metrics, GenAIMetrics | None, Delivery]:
    """Register the before-snapshot hook and the metrics of ``namespace`` on ``registry``,
    then build the delivery with them: all or nothing.

    The hook goes first, so a scrape records deferred work (abandoned streams) before the
    metrics are read; once per registry, however many instrumentations share it. If the
    metrics clash or the delivery settings are refused, what this call registered is taken
    back, so the registry is as it was. Under a lock, so no other Instrumentation picks up
    metrics that are about to be taken back.
    """
    if genai_semconv:
        # Imported only for the families that need it, and before the lock is taken: an
        # import waits for any other thread importing the same module.
        from .ai import GenAIMetrics
    with _registering:
        hook = None
        if registry not in _hooked_registries:
            hook = BeforeCollect()
            registry.register(hook)
            _hooked_registries.add(registry)
        existed = Metrics.shared(registry, namespace) is not None
        metrics = genai = None
        made = False
        try:
            metrics = Metrics.get(registry, namespace, buckets, attribution)
            if genai_semconv:  # the gen_ai_* families: one set per registry, no namespace
                genai, made = GenAIMetrics.get(registry)
            return metrics, genai, make_delivery(metrics)
        except BaseException:
            if metrics is not None and not existed:
                metrics.unregister()
            if genai is not None and made:
                genai.unregister()
            if hook is not None:
                _hooked_registries.discard(registry)
                registry.unregister(hook)
            raise
