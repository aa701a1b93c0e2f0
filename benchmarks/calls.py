"""Sections 1 and 2: the per-call cost of one instrumented sync call and one coroutine.

Every variant records the same job, ``analyses_total{module, analysis_type, status}``,
one ``analysis_duration_seconds`` sample and the ``active_jobs`` inc/dec, on its own
registry with the toolkit's metric definitions (same labels, same buckets):

- bare: the function alone, the floor of the floor;
- hand-inlined: what a careful engineer writes by hand, label children and their bound
  methods looked up once (the floor for a prometheus_client based design);
- ``@inst.monitored_analysis``;
- the alternative a user would pick instead: prometheus_client's ``Histogram.time()``,
  ``Gauge.track_inprogress()``, ``Counter.count_exceptions()`` stacked (sync), or
  prometheus-async's ``aio.time`` / ``aio.track_inprogress`` / ``aio.count_exceptions``
  (coroutines), on pre-bound children. They count errors only, not successes, so they do
  slightly less work than the others;
- hand-written with ``.labels(...)`` looked up on every call, as the original design did;
- before: instrument 0.1.0's recording path (``before.py``), kept for one release so the
  table shows the step to per-thread cells.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from itertools import repeat
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.metrics import Metrics

from .before import BeforeMonitor, before_async
from .fakes import make_async_work, make_work
from .harness import Batch, Timing, Variant, measure
from .report import Check, Row, Section, Target, ratio
from .settings import Settings

__all__ = ["run_async", "run_sync"]

MODULE = "bench"
KIND = "call"
RATIOS = [("vs_bare", "vs bare"), ("vs_inlined", "vs inlined")]

AsyncFn = Callable[[int], Coroutine[Any, Any, int]]


class Children:
    """Label children and their bound methods, looked up once."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.active = metrics.active_jobs.labels(MODULE)
        self.duration = metrics.analysis_duration.labels(MODULE, KIND)
        self.success = metrics.analyses.labels(MODULE, KIND, "success")
        self.error = metrics.analyses.labels(MODULE, KIND, "error")
        self.active_inc = self.active.inc
        self.active_dec = self.active.dec
        self.observe = self.duration.observe
        self.success_inc = self.success.inc
        self.error_inc = self.error.inc


def fresh_metrics() -> Metrics:
    return Metrics.get(CollectorRegistry())


def successes(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        f"{metrics.namespace}_analyses_total",
        {"module": MODULE, "analysis_type": KIND, "status": "success"},
    )
    return value or 0.0


def observations(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        f"{metrics.namespace}_analysis_duration_seconds_count",
        {"module": MODULE, "analysis_type": KIND},
    )
    return value or 0.0


def active_jobs(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        f"{metrics.namespace}_active_jobs", {"job_type": MODULE}
    )
    return value or 0.0


# -- sync ----------------------------------------------------------------------------------------


def sync_batch(func: Callable[[Any], Any], argument: Any = 1) -> Batch:
    def batch(n: int) -> float:
        calls = repeat(None, n)
        t0 = perf_counter()
        for _ in calls:
            func(argument)
        return perf_counter() - t0

    return batch


def inlined_sync(work: Callable[[int], int], c: Children) -> Callable[[int], int]:
    active_inc, active_dec = c.active_inc, c.active_dec
    observe, success_inc, error_inc = c.observe, c.success_inc, c.error_inc

    def inlined(x: int) -> int:
        active_inc()
        t0 = perf_counter()
        try:
            result = work(x)
        except Exception:
            observe(perf_counter() - t0)
            error_inc()
            active_dec()
            raise
        observe(perf_counter() - t0)
        success_inc()
        active_dec()
        return result

    return inlined


def labels_per_call_sync(work: Callable[[int], int], m: Metrics) -> Callable[[int], int]:
    def per_call(x: int) -> int:
        active = m.active_jobs.labels(MODULE)
        active.inc()
        t0 = perf_counter()
        try:
            result = work(x)
        except Exception:
            m.analysis_duration.labels(MODULE, KIND).observe(perf_counter() - t0)
            m.analyses.labels(MODULE, KIND, "error").inc()
            active.dec()
            raise
        m.analysis_duration.labels(MODULE, KIND).observe(perf_counter() - t0)
        m.analyses.labels(MODULE, KIND, "success").inc()
        active.dec()
        return result

    return per_call


def stacked_sync(work: Callable[[int], int], c: Children) -> Callable[[int], int]:
    timed: Callable[[int], int] = c.duration.time()(
        c.active.track_inprogress()(c.error.count_exceptions()(work))
    )
    return timed


def run_sync(settings: Settings) -> Section:
    section = Section("sync", 1, "Sync call: per-call time", ratio_columns=RATIOS)
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    before_inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    inlined_m, stacked_m, per_call_m = fresh_metrics(), fresh_metrics(), fresh_metrics()
    variants = [
        Variant("bare", "bare call", sync_batch(make_work())),
        Variant(
            "inlined",
            "hand-inlined updates (pre-bound children)",
            sync_batch(inlined_sync(make_work(), Children(inlined_m))),
        ),
        Variant(
            "monitored",
            "@inst.monitored_analysis",
            sync_batch(inst.monitored_analysis(MODULE, KIND)(make_work())),
        ),
        Variant(
            "stacked",
            "prometheus_client decorators stacked",
            sync_batch(stacked_sync(make_work(), Children(stacked_m))),
        ),
        Variant(
            "labels_per_call",
            "hand-written, .labels() on every call",
            sync_batch(labels_per_call_sync(make_work(), per_call_m)),
        ),
        Variant(
            "before",
            "before: @monitored_analysis of 0.1.0",
            sync_batch(BeforeMonitor(before_inst, MODULE, KIND)(make_work())),
        ),
    ]
    try:
        timings = measure(variants, rounds=settings.rounds, batch_seconds=settings.batch_seconds)
    finally:
        inst.close()
        before_inst.close()
    fill(section, timings)
    monitored, stacked, inlined, before = (
        section.row(k).median for k in ("monitored", "stacked", "inlined", "before")
    )
    section.targets += [
        Target("@monitored_analysis / hand-inlined", ratio(monitored, inlined), "<=", 0.5),
        Target(
            "@monitored_analysis / hand-inlined (stretch)", ratio(monitored, inlined), "<=", 0.35
        ),
        Target(
            "@monitored_analysis / prometheus_client stacked", ratio(monitored, stacked), "<", 1
        ),
        Target("@monitored_analysis / before (0.1.0)", ratio(monitored, before), "<", 1),
    ]
    check_counts(
        section,
        timings,
        {
            "monitored": inst.metrics,
            "inlined": inlined_m,
            "labels_per_call": per_call_m,
            "before": before_inst.metrics,
        },
        stacked_m,
    )
    return section


# -- async ---------------------------------------------------------------------------------------


def async_batch(loop: asyncio.AbstractEventLoop, func: AsyncFn) -> Batch:
    async def timed(n: int) -> float:
        calls = repeat(None, n)
        t0 = perf_counter()
        for _ in calls:
            await func(1)
        return perf_counter() - t0

    def batch(n: int) -> float:
        return loop.run_until_complete(timed(n))

    return batch


def inlined_async(work: AsyncFn, c: Children) -> AsyncFn:
    active_inc, active_dec = c.active_inc, c.active_dec
    observe, success_inc, error_inc = c.observe, c.success_inc, c.error_inc

    async def inlined(x: int) -> int:
        active_inc()
        t0 = perf_counter()
        try:
            result = await work(x)
        except Exception:
            observe(perf_counter() - t0)
            error_inc()
            active_dec()
            raise
        observe(perf_counter() - t0)
        success_inc()
        active_dec()
        return result

    return inlined


def labels_per_call_async(work: AsyncFn, m: Metrics) -> AsyncFn:
    async def per_call(x: int) -> int:
        active = m.active_jobs.labels(MODULE)
        active.inc()
        t0 = perf_counter()
        try:
            result = await work(x)
        except Exception:
            m.analysis_duration.labels(MODULE, KIND).observe(perf_counter() - t0)
            m.analyses.labels(MODULE, KIND, "error").inc()
            active.dec()
            raise
        m.analysis_duration.labels(MODULE, KIND).observe(perf_counter() - t0)
        m.analyses.labels(MODULE, KIND, "success").inc()
        active.dec()
        return result

    return per_call


def stacked_async(work: AsyncFn, c: Children) -> AsyncFn:
    from prometheus_async import aio

    timed: AsyncFn = aio.time(c.duration)(
        aio.track_inprogress(c.active)(aio.count_exceptions(c.error)(work))
    )
    return timed


def run_async(settings: Settings) -> Section:
    section = Section("async", 2, "Async call (coroutine): per-call time", ratio_columns=RATIOS)
    try:
        import prometheus_async  # noqa: F401
    except ImportError:
        section.skipped.append(
            "prometheus-async is not installed: pip install -e '.[dev]' (the dev extra)"
        )
        return section
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    before_inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    before_monitor = BeforeMonitor(before_inst, MODULE, KIND)
    inlined_m, stacked_m, per_call_m = fresh_metrics(), fresh_metrics(), fresh_metrics()
    loop = asyncio.new_event_loop()
    variants = [
        Variant("bare", "bare coroutine", async_batch(loop, make_async_work())),
        Variant(
            "inlined",
            "hand-inlined updates (pre-bound children)",
            async_batch(loop, inlined_async(make_async_work(), Children(inlined_m))),
        ),
        Variant(
            "monitored",
            "@inst.monitored_analysis",
            async_batch(loop, inst.monitored_analysis(MODULE, KIND)(make_async_work())),
        ),
        Variant(
            "stacked",
            "prometheus-async aio decorators stacked",
            async_batch(loop, stacked_async(make_async_work(), Children(stacked_m))),
        ),
        Variant(
            "labels_per_call",
            "hand-written, .labels() on every call",
            async_batch(loop, labels_per_call_async(make_async_work(), per_call_m)),
        ),
        Variant(
            "before",
            "before: @monitored_analysis of 0.1.0",
            async_batch(loop, before_async(before_monitor, make_async_work())),
        ),
    ]
    try:
        timings = measure(variants, rounds=settings.rounds, batch_seconds=settings.batch_seconds)
    finally:
        loop.close()
        inst.close()
        before_inst.close()
    fill(section, timings)
    bare, monitored, stacked, inlined, before = (
        section.row(k).median for k in ("bare", "monitored", "stacked", "inlined", "before")
    )
    section.targets += [
        Target("@monitored_analysis / hand-inlined async", ratio(monitored, inlined), "<=", 0.6),
        Target(
            "overhead of @monitored_analysis / overhead of prometheus-async stacked",
            ratio(monitored - bare, stacked - bare),
            "<",
            1,
        ),
        Target("@monitored_analysis / before (0.1.0)", ratio(monitored, before), "<", 1),
    ]
    check_counts(
        section,
        timings,
        {
            "monitored": inst.metrics,
            "inlined": inlined_m,
            "labels_per_call": per_call_m,
            "before": before_inst.metrics,
        },
        stacked_m,
    )
    return section


# -- shared --------------------------------------------------------------------------------------


def fill(section: Section, timings: dict[str, Timing]) -> None:
    """Rows for every timing, with ratios against the bare call and the hand-inlined one."""
    bare = timings["bare"].median
    inlined = timings["inlined"].median
    for timing in timings.values():
        row = Row.from_timing(timing)
        row.ratios = {"vs_bare": ratio(row.median, bare), "vs_inlined": ratio(row.median, inlined)}
        row.info["overhead_over_bare"] = row.median - bare
        if timing.key != "bare":
            row.detail = f"+{(row.median - bare) * 1e6:.2f} µs over bare"
        section.rows.append(row)


def check_counts(
    section: Section, timings: dict[str, Timing], counting: dict[str, Metrics], stacked: Metrics
) -> None:
    """Every timed call was recorded, and no job was left active."""
    for key, metrics in counting.items():
        calls = timings[key].calls
        section.checks.append(
            Check(
                f"{key}: {calls} calls counted as successes, none left active",
                successes(metrics) == calls and active_jobs(metrics) == 0,
            )
        )
    calls = timings["stacked"].calls
    section.checks.append(
        Check(
            f"stacked: {calls} calls observed by the histogram, none left active",
            observations(stacked) == calls and active_jobs(stacked) == 0,
        )
    )
